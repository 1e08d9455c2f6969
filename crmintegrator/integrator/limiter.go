package integrator

import (
	"context"
	"fmt"
	"math"
	"slices"
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
	// The rolling window as the last SetWindow stated it (see gate).
	win         bool
	winMax      int
	winPer      time.Duration
	winUsed     int         // requests the window held then
	winLevel    float64     // requests left then, less this daemon's in flight
	winAt       time.Time   // when it was stated
	winBooked   int         // slots this daemon booked since
	own         []time.Time // when this daemon's requests in that window were sent, oldest first
	shared      bool        // paced by SetShared: the CRM states its bucket
	pending     int         // requests booked by WaitUntil and not yet Done
	shareRate   float64     // under SetShared: the bucket's refill rate,
	scale       float64     // this daemon's share of it (see SetShared),
	lastShare   time.Time   // and when the last statement came
	lastSlot    time.Time   // the last slot booked
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
	// Shared pacing (SetShared): how fast a daemon's share learns, by
	// factor and by addend, per second of full error; the longest step
	// one statement learns for (a pause says nothing of the others); the
	// least share and the most pace, in rates.
	shareLearn    = 1.0
	shareEven     = 0.05
	shareMaxStep  = 250 * time.Millisecond
	shareMinScale = 0.01
	shareMaxPace  = 2.0
	// shareHorizon: how far ahead a slot is booked under SetShared (and
	// under a rolling window's gate).
	shareHorizon = 100 * time.Millisecond
	// A rolling window's gate (SetWindow): requests kept free for other
	// daemons' requests this one has not heard of yet (their sends between
	// two answers), the least share of the window's refill a daemon
	// counts on, how long a daemon waiting with nothing in flight goes
	// without an answer before one request goes to ask, and how much later
	// than an interval after it was sent a request is taken to leave the
	// window (its way to the CRM, which may take longer than the next
	// one's; see gate).
	winMargin   = 12.0
	winMinShare = 0.1
	winProbe    = 500 * time.Millisecond
	winSlack    = 25 * time.Millisecond
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
		d, booked, ok := l.reserve(deadline)
		if !ok {
			return &WaitError{Wait: d}
		}
		if !booked {
			// Shared pacing: look again soon, the pace may have moved.
			if err := backoff.Sleep(ctx, l.clock, d); err != nil {
				return err
			}
			continue
		}
		if err := backoff.Sleep(ctx, l.clock, d); err != nil {
			l.Done()
			return err
		}
		// A 429 while we slept pauses everybody, booked or not.
		if !l.paused() {
			return nil
		}
		l.Done()
	}
}

// Done says a request WaitUntil let go has its answer, or was not sent
// after all: the CRM's next statement of its level no longer owes it.
func (l *Limiter) Done() {
	l.mu.Lock()
	l.pending = max(0, l.pending-1)
	l.mu.Unlock()
}

func (l *Limiter) paused() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pausedUntil.After(l.clock.Now())
}

// reserve books the next slot and returns how long to wait for it. A slot
// past deadline (when set) is not booked: ok is false. Under SetShared a
// slot further than shareHorizon away is not booked either (booked is
// false, wait is how long to look away): a slot booked at one pace must
// not hold when the next answer states another, or every daemon's pace
// lags by as many slots as it has waiting requests.
func (l *Limiter) reserve(deadline time.Time) (wait time.Duration, booked, ok bool) {
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
	}
	switch {
	case l.shared:
		// One interval of the current pace after the last slot, no burst:
		// a pace just cut must bite at once, and one just raised too.
		if next := l.lastSlot.Add(interval); next.After(at) {
			at = next
		}
	case l.rate > 0:
		tolerance := time.Duration(float64(interval) * (limiterBurst - 1))
		if earliest := l.tat.Add(-tolerance); earliest.After(at) {
			at = earliest
		}
	}
	gated := false
	if l.win {
		if g := l.gate(now); g.After(at) {
			at, gated = g, true
		}
	}
	if !deadline.IsZero() && at.After(deadline) {
		// The gate's slot is a guess that the next answer of the window
		// revises: a caller told to come back then (a Retry verdict) kept
		// the window idle for seconds at a scale-out's tail, once the
		// other daemon's requests had drained it. Ask again soon instead.
		if gated {
			return min(at.Sub(now), winProbe), false, false
		}
		return at.Sub(now), false, false
	}
	if (l.shared || l.win) && at.Sub(now) > shareHorizon {
		return min(at.Sub(now)-shareHorizon/2, shareHorizon), false, true
	}
	l.lastSlot = at
	if l.rate > 0 {
		if l.tat.Before(at) {
			l.tat = at
		}
		l.tat = l.tat.Add(interval)
	}
	l.sent.add(at)
	l.pending++
	if l.win {
		l.winBooked++
	}
	return at.Sub(now), true, true
}

// gate is the earliest a request may start by a rolling window shared with
// other daemons (HubSpot's, stated with every answer; SetWindow). Its pace
// alone keeps one daemon inside the window; beside others, each would
// take the whole allowance. So a request also waits until the window
// should hold room for it: what the last answer left (the others'
// requests included), less this daemon's requests since, plus this
// daemon's own requests that left the window since — known to the
// millisecond, since it sent them: a rolling window frees a request's
// place exactly one interval after it came, so its refill is as uneven as
// the traffic an interval ago, and an even refill guessed from a share
// promised room that was not there (most of a scale-out's 429s). The
// others' requests that leave are theirs to refill; a daemon that owns
// less than winMinShare of the window counts on that share of its refill
// instead. It keeps up to winMargin free for the others' requests not
// seen yet, the more the larger their share. When the level is off, a 429
// pauses and the next answer corrects it.
func (l *Limiter) gate(now time.Time) time.Time {
	share := 1.0
	if l.winUsed > 0 {
		share = max(winMinShare, min(1, float64(len(l.own))/float64(l.winUsed)))
	}
	need := 1 + winMargin*(1-share) // alone (share 1) nothing is kept free
	short := need - (l.winLevel - float64(l.winBooked))
	if short <= 0 {
		return now
	}
	// The earliest of: enough own requests gone, or the least share of the
	// refill (for a daemon that owns little of the window).
	least := float64(l.winMax) / l.winPer.Seconds() * winMinShare
	at := l.winAt.Add(time.Duration(short / least * float64(time.Second)))
	if k := int(math.Ceil(short)); k <= len(l.own) {
		if gone := l.leaves(l.own[k-1]); gone.Before(at) {
			at = gone
		}
	}
	if !at.After(now) {
		return now
	}
	// A daemon waiting with nothing in flight hears nothing more of the
	// window, and its estimate counts on its own requests leaving only:
	// once the others fall silent (their work ended) the window empties
	// while the estimate stands still, which idled the CRM for seconds at
	// an import's tail. After winProbe without an answer one request goes
	// to ask; its answer states the window as it is (a 429, if the others
	// still fill it, pauses briefly).
	if probe := l.winAt.Add(winProbe); l.pending == 0 && probe.Before(at) {
		at = probe
	}
	return at
}

// leaves is when an own request sent at sent leaves the window: an
// interval after it came, and it came a little after it was sent (winSlack
// covers one way there taking longer than the next).
func (l *Limiter) leaves(sent time.Time) time.Time { return sent.Add(l.winPer + winSlack) }

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
	// comes from jitter at the window's edge, and only pauses. One that
	// states its bucket (SetShared): the daemons sharing it all asked
	// too much, and all halve their shares, once a wave.
	wave := !start.Before(l.lastCut) && now.Sub(l.lastCut) >= minCutSpacing
	if l.shared && wave {
		l.scale = max(l.shareRate*shareMinScale, l.scale*cutFactor)
		l.lastCut, cut = now, true
	}
	if l.windowStart.IsZero() && !l.shared && wave {
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
// which used are spent already; sent is when the request answered went
// out (zero: the window did not count it, a 429). GCRA lets
// limiterBurst−1 requests through ahead of the pace, so the pace is
// (max − limiterBurst + 1) per interval: then no interval ever holds more
// than max. Requests sent before the allowance was known went out in a
// burst: for the first interval after the first answer, what the answers
// say is spent is booked from that moment on, so that window is not
// overrun either.
func (l *Limiter) SetWindow(max, used int, interval time.Duration, sent time.Time) {
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
	// The level for gate: this answer's request is counted in used, this
	// daemon's others in flight may not be yet.
	l.win, l.winMax, l.winPer, l.winUsed = true, max, interval, used
	l.winLevel = float64(max - used)
	if l.pending > 1 {
		l.winLevel -= float64(l.pending - 1)
	}
	l.winAt, l.winBooked = now, 0
	// The own requests this window holds: those gone before now are in
	// neither used nor the refill to come. Answers come out of order.
	for len(l.own) > 0 && !l.leaves(l.own[0]).After(now) {
		l.own = l.own[1:]
	}
	if !sent.IsZero() && l.leaves(sent).After(now) {
		i := len(l.own)
		for i > 0 && l.own[i-1].After(sent) {
			i--
		}
		l.own = slices.Insert(l.own, i, sent)
	}
}

// SetShared paces all requests by a CRM's token bucket that other clients
// may share (the IETF RateLimit fields): it refills at rate requests a
// second, holds burst, and remaining are left. No daemon sees the others'
// traffic, only the level they all leave, and the bucket is used to the
// full exactly while that level stays off both ends: neither full (quota
// lost) nor empty (429s). So each daemon steers the level to half the
// bucket, with
//
//	pace = scale × level / (burst/2)
//
// The proportional part answers within a few requests. scale, this
// daemon's share of the rate, learns slowly from the same error, e =
// level/(burst/2) − 1 within ±1: by the factor 1 + shareLearn·e a second
// (plus, upwards, shareEven·e·rate a second, which evens unequal shares
// out). The factor is common to all daemons, so the sum of n shares moves
// as one share would: as they settle near rate/n, the loop's gain stays
// that of one daemon alone, however many share the bucket. level counts
// this daemon's own requests booked or in flight, beside the one
// answered, as spent already: they were paced before this statement. A
// 429 pauses for its Retry-After and halves the share (RateLimited); the
// pace never creeps (Succeeded).
func (l *Limiter) SetShared(rate float64, burst, remaining int) {
	if rate <= 0 || burst <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	half := float64(burst) / 2
	raw := float64(min(max(remaining, 0), burst))
	level := raw - float64(max(0, l.pending-1))
	if !l.shared || l.shareRate != rate {
		l.shared, l.shareRate, l.scale = true, rate, rate
	} else {
		// A long silence (a pause) says nothing of the others meanwhile.
		dt := min(now.Sub(l.lastShare).Seconds(), shareMaxStep.Seconds())
		// The share learns from the level all daemons see alike, so their
		// shares agree on when to stop; by factors, so that the sum of n
		// shares moves as one share would. A little more up by the same
		// amount for all than down by the same factor evens them out.
		switch e := max(-1, min(1, raw/half-1)); {
		case e < 0:
			l.scale *= 1 + shareLearn*dt*e
		case l.sentRate(now) >= 0.8*l.rate: // a daemon short of work does not grow a share it leaves unused
			l.scale *= 1 + shareLearn*dt*e
			l.scale += shareEven * dt * e * rate
		}
		l.scale = max(rate*shareMinScale, min(l.scale, rate*shareMaxPace))
	}
	l.lastShare = now
	pace := max(minRate, min(l.scale*max(level, 0)/half, rate*shareMaxPace))
	if l.maxRate > 0 {
		pace = min(pace, l.maxRate) // -crm-rate still caps
	}
	l.rate = pace
}

// Rate reports the current pace in requests per second (0: unlimited).
func (l *Limiter) Rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rate
}
