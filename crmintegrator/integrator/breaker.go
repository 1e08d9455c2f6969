package integrator

import (
	"sync"
	"time"

	"crmsync/shared/backoff"
)

// BreakerState is the state of the circuit breaker in front of the CRM.
type BreakerState int32

const (
	BreakerClosed   BreakerState = 0 // requests flow
	BreakerOpen     BreakerState = 1 // requests are refused without calling the CRM
	BreakerHalfOpen BreakerState = 2 // one probe request decides
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// Result is what a request told the breaker about the CRM's health.
type Result uint8

const (
	ResultSuccess Result = iota // the CRM answered (any non-5xx status)
	ResultFailure               // 5xx, timeout, connection failure
	ResultIgnore                // the request never reached a verdict (cancelled)
)

// Breaker opens after Threshold consecutive failures, refuses requests for
// Cooldown, then lets one probe through: success closes it, failure opens
// it again. Safe for concurrent use.
type Breaker struct {
	mu        sync.Mutex
	clock     backoff.Clock
	threshold int
	cooldown  time.Duration
	state     BreakerState
	failures  int
	openUntil time.Time
	probing   bool
	onChange  func(from, to BreakerState)
}

// NewBreaker returns a closed breaker. onChange, if set, is called (with
// the breaker locked: keep it short) on every state change.
func NewBreaker(threshold int, cooldown time.Duration, clock backoff.Clock, onChange func(from, to BreakerState)) *Breaker {
	if clock == nil {
		clock = backoff.RealClock{}
	}
	return &Breaker{clock: clock, threshold: max(1, threshold), cooldown: cooldown, onChange: onChange}
}

// Allow reports whether a request may go to the CRM. When it may not, wait
// says how long the breaker stays open. probe marks the half-open trial;
// pass it back to Done.
func (b *Breaker) Allow() (ok, probe bool, wait time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerOpen:
		now := b.clock.Now()
		if now.Before(b.openUntil) {
			return false, false, b.openUntil.Sub(now)
		}
		b.set(BreakerHalfOpen)
		fallthrough
	case BreakerHalfOpen:
		if b.probing {
			return false, false, max(b.cooldown/4, 100*time.Millisecond)
		}
		b.probing = true
		return true, true, 0
	}
	return true, false, 0
}

// Done records the result of a request Allow let through.
func (b *Breaker) Done(probe bool, r Result) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
	switch r {
	case ResultSuccess:
		b.failures = 0
		if b.state != BreakerClosed && (probe || b.state == BreakerHalfOpen) {
			b.set(BreakerClosed)
		}
	case ResultFailure:
		b.failures++
		if (probe && b.state == BreakerHalfOpen) || (b.state == BreakerClosed && b.failures >= b.threshold) {
			b.openUntil = b.clock.Now().Add(b.cooldown)
			b.set(BreakerOpen)
		}
	}
}

// State reports the current state.
func (b *Breaker) State() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *Breaker) set(s BreakerState) {
	if s == b.state {
		return
	}
	from := b.state
	b.state = s
	if s == BreakerClosed {
		b.failures = 0
	}
	if b.onChange != nil {
		b.onChange(from, s)
	}
}
