package runtimecfg

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestSetGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	tests := []struct {
		name      string
		env       map[string]string
		limit     int64
		wantGC    int
		wantLimit int64
	}{
		{"defaults", nil, 64 << 20, 300, 64 << 20},
		{"no limit asked", nil, 0, 300, math.MaxInt64},
		{"GOGC set: left to the runtime", map[string]string{"GOGC": "50"}, 64 << 20, 100, 64 << 20},
		{"GOMEMLIMIT set: left to the runtime", map[string]string{"GOMEMLIMIT": "1GiB"}, 64 << 20, 300, math.MaxInt64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(100)
			debug.SetMemoryLimit(math.MaxInt64)
			SetGC(func(k string) string { return tc.env[k] }, 300, tc.limit)
			if p := debug.SetGCPercent(100); p != tc.wantGC {
				t.Errorf("GC percent %d, want %d", p, tc.wantGC)
			}
			if l := debug.SetMemoryLimit(-1); l != tc.wantLimit {
				t.Errorf("memory limit %d, want %d", l, tc.wantLimit)
			}
		})
	}
}
