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
//
// Every trip starts a new generation. A request admitted in an earlier
// generation tells nothing about the CRM since the trip — its answer may
// have been on its way for a whole cooldown — so its result moves the
// breaker no more: a late success cannot close a half-open breaker whose
// probe is still out, nor a late failure count towards the next trip.
type Breaker struct {
	mu        sync.Mutex
	clock     backoff.Clock
	threshold int
	cooldown  time.Duration
	state     BreakerState
	failures  int
	openUntil time.Time
	probing   bool
	gen       uint64 // trips so far
	onChange  func(from, to BreakerState)
}

// Ticket is what Allow hands to a request it lets through; pass it back to
// Done with the request's result.
type Ticket struct {
	probe bool   // the half-open trial
	gen   uint64 // the generation it was admitted in
}

// Probe reports whether the ticket is the half-open trial.
func (t Ticket) Probe() bool { return t.probe }

// NewBreaker returns a closed breaker. onChange, if set, is called (with
// the breaker locked: keep it short) on every state change.
func NewBreaker(threshold int, cooldown time.Duration, clock backoff.Clock, onChange func(from, to BreakerState)) *Breaker {
	if clock == nil {
		clock = backoff.RealClock{}
	}
	return &Breaker{clock: clock, threshold: max(1, threshold), cooldown: cooldown, onChange: onChange}
}

// Allow reports whether a request may go to the CRM now. When it may not,
// wait says how long the breaker stays open. Call it when the request is
// about to be sent — after waiting for a slot and for the rate limiter —
// so that its ticket belongs to the generation it is really sent in.
func (b *Breaker) Allow() (ok bool, t Ticket, wait time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t.gen = b.gen
	switch b.state {
	case BreakerOpen:
		now := b.clock.Now()
		if now.Before(b.openUntil) {
			return false, t, b.openUntil.Sub(now)
		}
		b.set(BreakerHalfOpen)
		fallthrough
	case BreakerHalfOpen:
		if b.probing {
			return false, t, max(b.cooldown/4, 100*time.Millisecond)
		}
		b.probing = true
		t.probe = true
		return true, t, 0
	}
	return true, t, 0
}

// Open reports whether the breaker refuses requests right now, and for how
// long, without admitting anything: a cheap check before a request queues
// for a slot.
func (b *Breaker) Open() (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == BreakerOpen {
		if now := b.clock.Now(); now.Before(b.openUntil) {
			return true, b.openUntil.Sub(now)
		}
	}
	return false, 0
}

// Done records the result of a request Allow let through.
func (b *Breaker) Done(t Ticket, r Result) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.probe {
		b.probing = false
	}
	if t.gen != b.gen {
		return // admitted before the last trip: stale news
	}
	switch r {
	case ResultSuccess:
		b.failures = 0
		if b.state != BreakerClosed && (t.probe || b.state == BreakerHalfOpen) {
			b.set(BreakerClosed)
		}
	case ResultFailure:
		b.failures++
		if (t.probe && b.state == BreakerHalfOpen) || (b.state == BreakerClosed && b.failures >= b.threshold) {
			b.openUntil = b.clock.Now().Add(b.cooldown)
			b.gen++
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
