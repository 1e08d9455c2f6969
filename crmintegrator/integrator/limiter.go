package integrator

import (
	"context"
	"sync"
	"time"

	"crmsync/shared/backoff"
)

// Limiter paces every request the daemon sends to the CRM. It is adaptive,
// AIMD-like: a 429 cuts the rate to half of what was actually being sent
// (and pauses all traffic for the Retry-After), each successful answer lets
// the rate creep back up by one request/second every second (2% when the
// rate is above 50/s). MaxRate, when set, is a hard cap.
// Until the first 429 the rate is unlimited unless MaxRate says otherwise.
//
// Limiter is safe for concurrent use.
type Limiter struct {
	mu      sync.Mutex
	clock   backoff.Clock
	maxRate float64 // hard cap, requests/second; 0 = none
	rate    float64 // current pace; 0 = unlimited
	burst   float64

	tat         time.Time // GCRA theoretical arrival time
	pausedUntil time.Time
	lastCut     time.Time
	lastRaise   time.Time

	// Requests started in the current and the previous one-second window:
	// what was really sent, so a cut bites even when rate is unlimited.
	winStart  time.Time
	winCount  int
	prevCount int
}

const (
	minRate      = 1.0  // never slower than one request a second
	cutFactor    = 0.5  // multiplicative decrease on 429
	creepPerSec  = 0.02 // additive increase: 1/s, or 2% of the rate a second when faster
	limiterBurst = 4
	// minCutSpacing keeps one burst of 429s, answered together, from
	// cutting more than once.
	minCutSpacing = 250 * time.Millisecond
)

// NewLimiter returns a Limiter with an optional hard cap (0: none).
func NewLimiter(maxRate float64, clock backoff.Clock) *Limiter {
	if clock == nil {
		clock = backoff.RealClock{}
	}
	return &Limiter{clock: clock, maxRate: maxRate, rate: maxRate, burst: limiterBurst}
}

// Wait blocks until a request may start, or ctx is done.
func (l *Limiter) Wait(ctx context.Context) error {
	for {
		if err := backoff.Sleep(ctx, l.clock, l.reserve()); err != nil {
			return err
		}
		// A 429 while we slept pauses everybody, booked or not.
		if !l.paused() {
			return nil
		}
	}
}

func (l *Limiter) paused() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pausedUntil.After(l.clock.Now())
}

// reserve books the next slot and returns how long to wait for it.
func (l *Limiter) reserve() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	at := now
	if l.pausedUntil.After(at) {
		at = l.pausedUntil
	}
	if l.rate > 0 {
		interval := time.Duration(float64(time.Second) / l.rate)
		tolerance := time.Duration(float64(interval) * (l.burst - 1))
		if earliest := l.tat.Add(-tolerance); earliest.After(at) {
			at = earliest
		}
		if l.tat.Before(at) {
			l.tat = at
		}
		l.tat = l.tat.Add(interval)
	}
	l.count(at)
	return at.Sub(now)
}

func (l *Limiter) count(t time.Time) {
	switch el := t.Sub(l.winStart); {
	case el < 0:
		// a booking in a later window than now; count it in this one
	case el < time.Second:
	case el < 2*time.Second:
		l.prevCount, l.winCount, l.winStart = l.winCount, 0, l.winStart.Add(time.Second)
	default:
		l.prevCount, l.winCount, l.winStart = 0, 0, t
	}
	l.winCount++
}

// sentRate estimates the requests per second really sent lately.
func (l *Limiter) sentRate(now time.Time) float64 {
	if l.prevCount > 0 && now.Sub(l.winStart) < 2*time.Second {
		return float64(l.prevCount)
	}
	el := now.Sub(l.winStart).Seconds()
	if el < 0.1 {
		el = 0.1
	}
	return float64(l.winCount) / el
}

// RateLimited records a 429 for a request that started at start: it cuts
// the rate — once per wave: requests started before the last cut were
// paced by the old rate and say nothing new — and pauses all traffic for
// retryAfter. start is when the limiter let the request go.
func (l *Limiter) RateLimited(start time.Time, retryAfter time.Duration) (cut bool, rate float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if !start.Before(l.lastCut) && now.Sub(l.lastCut) >= minCutSpacing {
		cur := l.rate
		if sent := l.sentRate(now); cur == 0 || (sent > 0 && sent < cur) {
			cur = sent
		}
		l.rate = max(minRate, cur*cutFactor)
		l.lastCut, l.lastRaise, cut = now, now, true
	}
	if until := now.Add(retryAfter); until.After(l.pausedUntil) {
		l.pausedUntil = until
	}
	return cut, l.rate
}

// Succeeded lets the rate creep back up after a request the CRM accepted.
func (l *Limiter) Succeeded() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rate == 0 {
		return
	}
	now := l.clock.Now()
	el := now.Sub(l.lastRaise)
	if el < 100*time.Millisecond {
		return
	}
	l.lastRaise = now
	l.rate += max(1, l.rate*creepPerSec) * el.Seconds()
	if l.maxRate > 0 && l.rate > l.maxRate {
		l.rate = l.maxRate
	}
}

// Rate reports the current pace in requests per second (0: unlimited).
func (l *Limiter) Rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rate
}
