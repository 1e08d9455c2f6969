package logging

import (
	"bytes"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	tests := []struct {
		format, level string
		ok            bool
		want          string // in the output of one Info line
	}{
		{"text", "info", true, "msg=hello"},
		{"json", "debug", true, `"msg":"hello"`},
		{"json", "error", true, ""}, // info is below the level
		{"xml", "info", false, ""},
		{"text", "loud", false, ""},
	}
	for _, tc := range tests {
		var buf bytes.Buffer
		l, err := New(tc.format, tc.level, &buf)
		if (err == nil) != tc.ok {
			t.Errorf("New(%q, %q) err = %v, want ok=%v", tc.format, tc.level, err, tc.ok)
			continue
		}
		if l == nil {
			continue
		}
		l.Info("hello")
		if got := buf.String(); (tc.want == "" && got != "") || !strings.Contains(got, tc.want) {
			t.Errorf("New(%q, %q) logged %q, want %q", tc.format, tc.level, got, tc.want)
		}
	}
}
