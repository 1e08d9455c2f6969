package integrator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"crmsync/shared/backoff"
)

// Limiter paces every request the daemon sends to the CRM. It is adaptive,
// AIMD-like: a 429 pauses all traffic for the Retry-After and cuts the rate;
// each successful answer lets the rate creep back up by one request/second
// every second (2% when the rate is above 50/s). MaxRate, when set, is a
// hard cap. Until the first 429 the rate is unlimited unless MaxRate says
// otherwise.
//
// The cut learns the CRM's quota from what it accepted between 429s (see
// quota), so the rate settles just under it (97%) and then probes above it
// only slowly (0.2% a second), instead of halving and climbing back into
// the limit every few seconds — each 429 costs a whole Retry-After second
// of traffic, because CRMs send it in whole seconds. Without a measure (no
// success seen lately) the cut halves what was being sent.
//
// Limiter is safe for concurrent use.
type Limiter struct {
	mu      sync.Mutex
	clock   backoff.Clock
	maxRate float64 // hard cap, requests/second; 0 = none
	rate    float64 // current pace; 0 = unlimited

	tat         time.Time // GCRA theoretical arrival time
	windowStart time.Time // when SetWindow first learnt the CRM's allowance
	shared      bool      // paced by SetShared: the CRM states its bucket
	pausedUntil time.Time
	lastCut     time.Time
	lastRaise   time.Time

	// Requests started lately: what was really sent, so a cut bites even
	// when rate is unlimited.
	sent perSecond

	// Requests the CRM accepted, by the time of their answers, and the
	// quota learnt from them at the last cut (0: none yet).
	ok      perSecond
	ceiling float64
	// The last 429 (the CRM's bucket was empty then) and the requests
	// accepted since.
	emptyAt      time.Time
	okSinceEmpty int
}

const (
	minRate      = 1.0  // never slower than one request a second
	cutFactor    = 0.5  // multiplicative decrease on 429
	creepPerSec  = 0.02 // additive increase: 1/s, or 2% of the rate a second when faster
	limiterBurst = 4
	// minCutSpacing keeps one burst of 429s, answered together, from
	// cutting more than once.
	minCutSpacing = 250 * time.Millisecond
	// settleFactor: after a cut, the share of the learnt quota to pace at;
	// probePerSec: how fast to probe above it once there.
	settleFactor = 0.97
	probePerSec  = 0.002
	// shareGain: the pace at a full shared bucket, in refill rates (and
	// the slope of pace over level); shareFloor: the pace at an empty one,
	// so answers keep coming to say it refilled.
	shareGain  = 2.0
	shareFloor = 0.1
)

// NewLimiter returns a Limiter with an optional hard cap (0: none).
func NewLimiter(maxRate float64, clock backoff.Clock) *Limiter {
	if clock == nil {
		clock = backoff.RealClock{}
	}
	return &Limiter{clock: clock, maxRate: maxRate, rate: maxRate}
}

// Wait blocks until a request may start, or ctx is done.
func (l *Limiter) Wait(ctx context.Context) error { return l.WaitUntil(ctx, time.Time{}) }

// WaitError is WaitUntil's answer when the request's slot lies past the
// deadline: nothing was booked, and Wait is how long it would have waited.
type WaitError struct{ Wait time.Duration }

func (e *WaitError) Error() string {
	return fmt.Sprintf("crm rate limit: next slot in %v, past the call's deadline", e.Wait.Round(time.Millisecond))
}

// WaitUntil is Wait for a request that must start by deadline (on the
// limiter's clock; zero: none). When its slot lies past the deadline it
// fails at once with a *WaitError, booking nothing, so a call never sleeps
// through a pause it cannot outlast and its slot goes to a call that can.
func (l *Limiter) WaitUntil(ctx context.Context, deadline time.Time) error {
	for {
		d, ok := l.reserve(deadline)
		if !ok {
			return &WaitError{Wait: d}
		}
		if err := backoff.Sleep(ctx, l.clock, d); err != nil {
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

// reserve books the next slot and returns how long to wait for it. A slot
// past deadline (when set) is not booked: ok is false.
func (l *Limiter) reserve(deadline time.Time) (wait time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	at := now
	if l.pausedUntil.After(at) {
		at = l.pausedUntil
	}
	var interval time.Duration
	if l.rate > 0 {
		interval = time.Duration(float64(time.Second) / l.rate)
		tolerance := time.Duration(float64(interval) * (limiterBurst - 1))
		if earliest := l.tat.Add(-tolerance); earliest.After(at) {
			at = earliest
		}
	}
	if !deadline.IsZero() && at.After(deadline) {
		return at.Sub(now), false
	}
	if l.rate > 0 {
		if l.tat.Before(at) {
			l.tat = at
		}
		l.tat = l.tat.Add(interval)
	}
	l.sent.add(at)
	return at.Sub(now), true
}

// perSecond counts events in the current one-second window and the one
// before it.
type perSecond struct {
	start     time.Time
	cur, prev int
}

func (w *perSecond) add(t time.Time) {
	switch el := t.Sub(w.start); {
	case el < time.Second:
		// this window; a booking in a later window counts here too
	case el < 2*time.Second:
		w.prev, w.cur, w.start = w.cur, 0, w.start.Add(time.Second)
	default:
		w.prev, w.cur, w.start = 0, 0, t
	}
	w.cur++
}

// sentRate estimates the requests per second really sent lately.
func (l *Limiter) sentRate(now time.Time) float64 {
	if l.sent.prev > 0 && now.Sub(l.sent.start) < 2*time.Second {
		return float64(l.sent.prev)
	}
	el := now.Sub(l.sent.start).Seconds()
	if el < 0.1 {
		el = 0.1
	}
	return float64(l.sent.cur) / el
}

// RateLimited records a 429 for a request that started at start: it cuts
// the rate — once per wave: requests started before the last cut were
// paced by the old rate and say nothing new — and pauses all traffic for
// retryAfter. start is when the limiter let the request go.
func (l *Limiter) RateLimited(start time.Time, retryAfter time.Duration) (cut bool, rate float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	// A CRM that states its window (SetWindow) is paced by it: a 429 then
	// comes from jitter at the window's edge, and only pauses.
	if l.windowStart.IsZero() && !l.shared && !start.Before(l.lastCut) && now.Sub(l.lastCut) >= minCutSpacing {
		cur := l.rate
		if sent := l.sentRate(now); cur == 0 || (sent > 0 && sent < cur) {
			cur = sent
		}
		next := cur * cutFactor
		if est := l.quota(now); est >= minRate {
			l.ceiling = est
			next = est * settleFactor
		}
		l.rate = max(minRate, next)
		l.lastCut, l.lastRaise, cut = now, now, true
	}
	// A 429 says the CRM's bucket is empty right now.
	l.emptyAt, l.okSinceEmpty = now, 0
	if until := now.Add(retryAfter); until.After(l.pausedUntil) {
		l.pausedUntil = until
	}
	return cut, l.rate
}

// Succeeded lets the rate creep back up after a request the CRM accepted.
func (l *Limiter) Succeeded() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.ok.add(now)
	l.okSinceEmpty++
	if l.rate == 0 || l.shared {
		return
	}
	el := now.Sub(l.lastRaise)
	if el < 100*time.Millisecond {
		return
	}
	l.lastRaise = now
	step := max(1, l.rate*creepPerSec)
	if l.ceiling > 0 && l.rate >= l.ceiling*settleFactor {
		step = l.rate * probePerSec
	}
	l.rate += step * el.Seconds()
	if l.maxRate > 0 && l.rate > l.maxRate {
		l.rate = l.maxRate
	}
}

// quota estimates the CRM's quota in requests per second at a 429. Between
// two 429s at least a second apart the CRM's bucket went from empty to
// empty, so what it accepted in between is what it refilled: its rate,
// whatever the pauses and bursts. Before the second 429 there is only what
// it accepted lately, which its initial burst inflates; the next cut
// corrects that. 0: nothing to go by.
func (l *Limiter) quota(now time.Time) float64 {
	if l.emptyAt.IsZero() {
		return l.okRate(now)
	}
	if el := now.Sub(l.emptyAt); el >= time.Second {
		return float64(l.okSinceEmpty) / el.Seconds()
	}
	return 0
}

// okRate estimates the requests per second the CRM accepted lately: the
// last full second, or the current one once half of it has passed.
func (l *Limiter) okRate(now time.Time) float64 {
	el := now.Sub(l.ok.start)
	if l.ok.prev > 0 && el < 2*time.Second {
		return float64(max(l.ok.prev, l.ok.cur))
	}
	if el >= 500*time.Millisecond && el < 2*time.Second {
		return float64(l.ok.cur) / min(el.Seconds(), 1)
	}
	return 0
}

// SetWindow paces all requests by a CRM's stated allowance: at most max
// requests in any rolling interval (HubSpot's rate-limit headers), of
// which used are spent already. GCRA lets limiterBurst−1 requests through
// ahead of the pace, so the pace is (max − limiterBurst + 1) per interval:
// then no interval ever holds more than max. Requests sent before the
// allowance was known went out in a burst: for the first interval after
// the first answer, what the answers say is spent is booked from that
// moment on, so that window is not overrun either.
func (l *Limiter) SetWindow(max, used int, interval time.Duration) {
	if max <= limiterBurst || interval <= 0 {
		return
	}
	rate := float64(max-limiterBurst+1) / interval.Seconds()
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if l.maxRate != rate {
		if l.maxRate == 0 {
			l.windowStart = now
		}
		l.maxRate = rate
		if l.rate == 0 || l.rate > rate {
			l.rate = rate
		}
	}
	if used > 0 && now.Sub(l.windowStart) < interval {
		if booked := l.windowStart.Add(time.Duration(float64(used) / rate * float64(time.Second))); booked.After(l.tat) {
			l.tat = booked
		}
	}
}

// SetShared paces all requests by a CRM's token bucket that other clients
// may share (the IETF RateLimit fields): it refills at rate requests a
// second, holds burst, and remaining are left. No daemon sees the others'
// traffic, only the level they all leave, so each paces at
//
//	rate × shareGain × remaining/burst   (within [shareFloor, shareGain] × rate)
//
// Then n daemons settle where together they take exactly the refill rate:
// the level stops moving only there. Alone at half a bucket, two at a
// quarter, n at 1/(2n) of it: never full (quota unused) while there is
// work, and never empty (429s) in the steady state. Every answer restates
// the level, so each pace follows the others within a few requests. A 429
// then only pauses for its Retry-After; the pace never creeps.
func (l *Limiter) SetShared(rate float64, burst, remaining int) {
	if rate <= 0 || burst <= 0 {
		return
	}
	pace := rate * shareGain * float64(min(max(remaining, 0), burst)) / float64(burst)
	pace = max(pace, rate*shareFloor, minRate)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maxRate > 0 {
		pace = min(pace, l.maxRate) // -crm-rate still caps
	}
	l.shared, l.rate = true, pace
}

// Rate reports the current pace in requests per second (0: unlimited).
func (l *Limiter) Rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rate
}
