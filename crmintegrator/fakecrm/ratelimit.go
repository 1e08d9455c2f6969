package fakecrm

import (
	"math"
	"sync"
	"time"
)

// bucket is a token bucket: rate tokens a second, at most burst saved up.
// A rate of 0 lets everything through.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

// configure sets the limits and refills the bucket when they change, so a
// test that turns a 429 storm off gets a CRM that answers at once.
func (b *bucket) configure(rate float64, burst int) {
	if burst <= 0 {
		burst = max(1, int(math.Ceil(rate)))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rate == rate && b.burst == float64(burst) {
		return
	}
	b.rate, b.burst, b.tokens, b.last = rate, float64(burst), float64(burst), time.Time{}
}

// refill fills the bucket to the brim.
func (b *bucket) refill() {
	b.mu.Lock()
	b.tokens, b.last = b.burst, time.Time{}
	b.mu.Unlock()
}

// take spends a token at now. When none is left it returns false and the
// whole seconds until one will be (at least 1, as Retry-After wants).
func (b *bucket) take(now time.Time) (ok bool, retryAfter int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rate <= 0 {
		return true, 0
	}
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := (1 - b.tokens) / b.rate
	return false, max(1, int(math.Ceil(wait)))
}
