package runtimecfg

import (
	"runtime/debug"
	"testing"
)

func TestSetGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	tests := []struct {
		env     string
		want    string
		percent int
	}{
		{"", "200", DefaultGCPercent},
		{"50", "50", 100}, // left to the runtime, which read GOGC at start (100 here)
		{"off", "off", 100},
	}
	for _, tc := range tests {
		debug.SetGCPercent(100)
		got := SetGC(func(k string) string {
			if k == "GOGC" {
				return tc.env
			}
			return ""
		})
		if got != tc.want {
			t.Errorf("GOGC=%q: SetGC = %q, want %q", tc.env, got, tc.want)
		}
		if p := debug.SetGCPercent(100); p != tc.percent {
			t.Errorf("GOGC=%q: GC percent %d, want %d", tc.env, p, tc.percent)
		}
	}
}
