package importer

import (
	"testing"
	"time"
)

func TestRetryWait(t *testing.T) {
	for _, tc := range []struct {
		name       string
		attempts   int
		retryAfter time.Duration
		crmSaid    bool
		lo, hi     time.Duration // the reader's backoff has ±20% jitter
	}{
		{"first retry, the daemon's 100ms: the reader's 200ms", 1, 100 * time.Millisecond, false, 160 * time.Millisecond, 240 * time.Millisecond},
		{"the daemon's backoff above the floor wins", 1, 250 * time.Millisecond, false, 250 * time.Millisecond, 250 * time.Millisecond},
		{"third retry doubles twice", 3, 100 * time.Millisecond, false, 640 * time.Millisecond, 960 * time.Millisecond},
		{"the daemon's longer wait wins", 1, 5 * time.Second, false, 5 * time.Second, 5 * time.Second},
		{"the CRM's Retry-After, taken as said", 4, time.Second, true, time.Second, time.Second},
		{"the CRM's short Retry-After too", 1, 200 * time.Millisecond, true, 200 * time.Millisecond, 200 * time.Millisecond},
		{"no wait given: the reader's own", 2, 0, true, 320 * time.Millisecond, 480 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := retryWait(tc.attempts, tc.retryAfter, tc.crmSaid); d < tc.lo || d > tc.hi {
				t.Errorf("retryWait(%d, %v, %v) = %v, want within [%v, %v]", tc.attempts, tc.retryAfter, tc.crmSaid, d, tc.lo, tc.hi)
			}
		})
	}
}
