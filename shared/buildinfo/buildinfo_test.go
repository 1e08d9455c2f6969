package buildinfo

import "testing"

func TestString(t *testing.T) {
	tests := []struct {
		in   Info
		want string
	}{
		{Info{Version: "(devel)", Go: "go1.26"}, "x (devel) go1.26"},
		{Info{Version: "v1.2.0", Commit: "0123456789abcdef0123", Time: "2026-12-02T18:00:00Z", Go: "go1.26"},
			"x v1.2.0 commit 0123456789ab (2026-12-02T18:00:00Z) go1.26"},
		{Info{Version: "(devel)", Commit: "abc", Modified: true, Go: "go1.26"}, "x (devel) commit abc (modified) go1.26"},
	}
	for _, tc := range tests {
		if got := tc.in.String("x"); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if r := Read(); r.Go == "" || r.Version == "" {
		t.Errorf("Read() = %+v, want a version and a Go version", r)
	}
}
