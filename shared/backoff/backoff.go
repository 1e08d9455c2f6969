// Package backoff provides the one retry delay policy of crmsync: exponential
// growth from a base delay, a cap, random jitter, a reset on success, and a
// context-aware sleep on an injectable clock so tests need not sleep.
//
// A Backoff is not safe for concurrent use; give each retry loop its own.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Clock is the time source of a Backoff. Tests substitute a fake.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has elapsed and a
	// function that releases the timer early.
	After(d time.Duration) (<-chan time.Time, func())
}

// RealClock is the wall clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// After starts a real timer.
func (RealClock) After(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTimer(d)
	return t.C, func() { t.Stop() }
}

// Backoff computes growing delays between attempts. The zero value is
// usable: 100ms doubling up to 30s with 20% jitter on the real clock.
type Backoff struct {
	Base   time.Duration // first delay; default 100ms
	Max    time.Duration // cap on any delay; default 30s
	Factor float64       // growth per attempt; default 2
	// Jitter is the fraction of each delay that is randomised: with 0.2 a
	// delay d becomes a random value in [0.8d, d]. Default 0.2; a negative
	// value disables jitter.
	Jitter float64
	Clock  Clock          // default RealClock
	Rand   func() float64 // uniform in [0,1); default math/rand/v2

	attempt int
}

// Next returns the delay before the next attempt and counts the attempt.
func (b *Backoff) Next() time.Duration {
	base, maxD, factor, jitter := b.Base, b.Max, b.Factor, b.Jitter
	if base <= 0 {
		base = 100 * time.Millisecond
	}
	if maxD <= 0 {
		maxD = 30 * time.Second
	}
	if factor < 1 {
		factor = 2
	}
	if jitter == 0 {
		jitter = 0.2
	}
	d := float64(base)
	for i := 0; i < b.attempt && d < float64(maxD); i++ {
		d *= factor
	}
	if d > float64(maxD) {
		d = float64(maxD)
	}
	b.attempt++
	if jitter > 0 {
		if jitter > 1 {
			jitter = 1
		}
		r := b.Rand
		if r == nil {
			r = rand.Float64
		}
		d -= d * jitter * r()
	}
	return time.Duration(d)
}

// Attempts reports how many delays Next has handed out since the last Reset.
func (b *Backoff) Attempts() int { return b.attempt }

// Reset starts over from Base, typically after a success.
func (b *Backoff) Reset() { b.attempt = 0 }

// Wait sleeps for Next(), or until ctx is done.
func (b *Backoff) Wait(ctx context.Context) error {
	return Sleep(ctx, b.Clock, b.Next())
}

// Sleep waits for d on clock (nil means the real clock) and returns early
// with ctx.Err() when ctx is done first.
func Sleep(ctx context.Context, clock Clock, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	if clock == nil {
		clock = RealClock{}
	}
	c, stop := clock.After(d)
	defer stop()
	select {
	case <-c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
