package fakecrm

import (
	"fmt"
	"testing"
	"time"
)

// Keys live IdempotencyTTL after their first use, at most max of them.
func TestIdemStoreRetention(t *testing.T) {
	t0 := time.Unix(1000, 0)
	is := newIdemStore(2, time.Hour)
	fp := fingerprintOf("POST", "/x", nil)
	use := func(key string, at time.Duration) idemOutcome {
		rec, out, _, _ := is.begin(key, fp, t0.Add(at))
		if out == idemFresh {
			is.finish(key, rec, 201, []byte("{}"))
		}
		return out
	}
	tests := []struct {
		key  string
		at   time.Duration
		want idemOutcome
	}{
		{"a", 0, idemFresh},
		{"a", 59 * time.Minute, idemReplay},
		{"b", 30 * time.Minute, idemFresh},
		{"a", 61 * time.Minute, idemFresh}, // expired
		{"c", 62 * time.Minute, idemFresh}, // evicts b, the oldest
		{"b", 63 * time.Minute, idemFresh},
		{"c", 64 * time.Minute, idemReplay},
	}
	for i, tc := range tests {
		if got := use(tc.key, tc.at); got != tc.want {
			t.Errorf("%d: %s at %v: got %d, want %d", i, tc.key, tc.at, got, tc.want)
		}
	}
	if n := len(is.m); n > 2 {
		t.Errorf("%d keys kept, want at most 2", n)
	}
	// The queue does not grow with keys used again and again.
	for i := range 10_000 {
		use(fmt.Sprint("k", i%3), 2*time.Hour+time.Duration(i)*time.Second)
	}
	if n := len(is.order); n > 100 {
		t.Errorf("queue of %d entries for 2 keys", n)
	}
}
