package integrator

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// SetShared's first pace from the level a shared bucket states: the
// refill rate at half a bucket, in proportion to the level, at least one
// a second, at most twice the rate, never above -crm-rate.
func TestSetSharedPace(t *testing.T) {
	tests := []struct {
		cap              float64
		rate             float64
		burst, remaining int
		want             float64
	}{
		{0, 40, 40, 20, 40},
		{0, 40, 40, 40, 80},
		{0, 40, 40, 10, 20},
		{0, 40, 40, 0, minRate},
		{0, 40, 40, 99, 80}, // more than it holds: full
		{0, 2.5, 4, 4, 5},
		{30, 40, 40, 40, 30}, // -crm-rate caps
	}
	for _, tc := range tests {
		l := NewLimiter(tc.cap, newFakeClock())
		l.SetShared(tc.rate, tc.burst, tc.remaining)
		if got := l.Rate(); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("cap %v, SetShared(%v, %d, %d): pace %v, want %v", tc.cap, tc.rate, tc.burst, tc.remaining, got, tc.want)
		}
	}
	// Not a statement: nothing changes.
	l := NewLimiter(0, newFakeClock())
	l.SetShared(0, 40, 10)
	l.SetShared(40, 0, 0)
	if l.Rate() != 0 {
		t.Errorf("pace %v after unusable statements, want 0 (unlimited)", l.Rate())
	}
}

// The daemon's own requests booked beside the one answered count as spent:
// five booked, one answered at 20 left, is a level of 16.
func TestSetSharedCountsOwnRequests(t *testing.T) {
	l := NewLimiter(0, newFakeClock())
	l.SetShared(40, 40, 40) // 80/s: five slots within the horizon
	for i := range 5 {
		if _, booked, _ := l.reserve(time.Time{}); !booked {
			t.Fatalf("slot %d not booked", i)
		}
	}
	l.SetShared(40, 40, 20)
	if got := l.Rate(); math.Abs(got-32) > 1e-9 {
		t.Errorf("pace %v, want 32 (40 × 16/20)", got)
	}
	for range 5 {
		l.Done()
	}
	l.SetShared(40, 40, 20)
	if got := l.Rate(); math.Abs(got-40) > 1e-9 {
		t.Errorf("pace %v once all are done, want 40", got)
	}
}

// Under SetShared a 429 halves the daemon's share (once a wave) and
// pauses; successes do not creep: the pace is the statements' alone.
func TestSetSharedOwnsThePace(t *testing.T) {
	clk := newFakeClock()
	l := NewLimiter(0, clk)
	l.SetShared(40, 40, 20)
	if cut, _ := l.RateLimited(clk.Now(), time.Second); !cut || !l.paused() {
		t.Errorf("429: cut %v, paused %v; want both", cut, l.paused())
	}
	if cut, _ := l.RateLimited(clk.Now(), time.Second); cut {
		t.Error("a second 429 of the same wave cut again")
	}
	l.SetShared(40, 40, 20)
	if l.Rate() != 20 {
		t.Errorf("pace %v after the 429, want 20 (half the share at half a bucket)", l.Rate())
	}
	for range 50 {
		clk.Advance(200 * time.Millisecond)
		l.Succeeded()
	}
	if l.Rate() != 20 {
		t.Errorf("pace %v after successes, want 20", l.Rate())
	}
}

// A slot under SetShared is booked only within shareHorizon, one pace
// interval after the last, without a burst: a pace just cut bites at once.
func TestSetSharedBooksClose(t *testing.T) {
	clk := newFakeClock()
	l := NewLimiter(0, clk)
	l.SetShared(40, 40, 20) // 40/s: 25 ms apart
	var waits []time.Duration
	for {
		w, booked, ok := l.reserve(time.Time{})
		if !ok || !booked {
			if w <= 0 || w > shareHorizon {
				t.Errorf("not booked: look again in %v, want (0, %v]", w, shareHorizon)
			}
			break
		}
		waits = append(waits, w)
	}
	want := []time.Duration{0, 25 * time.Millisecond, 50 * time.Millisecond, 75 * time.Millisecond, 100 * time.Millisecond}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("booked at %v, want %v", waits, want)
	}
}

// daemons share one CRM bucket, each pacing from the level the answers
// state, and nothing else: no coordinator, no knowledge of the others.
// The simulation runs their limiters on one fake clock, each with its
// own workers (every worker books a slot, sends, waits for the answer,
// books again), as crmDo does. All start at once, unpaced until the
// first answer, the worst start: a 429 a daemon then is allowed, none
// after the first seconds. Shares are even unless such a 429 halved one
// (four and eight daemons): the evening out is slow, and the sum is what
// the quota asks for.
func TestSetSharedConverges(t *testing.T) {
	const rate, burst = 40, 40
	ms := time.Millisecond
	d := func(workers int, latency time.Duration) simDaemon {
		return simDaemon{workers: workers, latency: latency}
	}
	tests := []struct {
		name    string
		daemons []simDaemon
		// measured from here to the end: the steady state
		from time.Duration
		// wantShare: each daemon's share of what was accepted then, ±0.05.
		wantShare []float64
	}{
		{"one daemon", []simDaemon{d(8, 5*ms)}, 5 * time.Second, []float64{1}},
		{"two daemons", []simDaemon{d(8, 5*ms), d(8, 5*ms)}, 5 * time.Second, []float64{0.5, 0.5}},
		{"three daemons, unlike latencies", []simDaemon{d(8, 5*ms), d(8, 20*ms), d(8, 50*ms)}, 5 * time.Second, []float64{1. / 3, 1. / 3, 1. / 3}},
		{"four daemons", []simDaemon{d(8, 5*ms), d(8, 5*ms), d(8, 5*ms), d(8, 5*ms)}, 10 * time.Second, nil},
		{"eight daemons", []simDaemon{d(4, 5*ms), d(4, 5*ms), d(4, 5*ms), d(4, 5*ms), d(4, 5*ms), d(4, 5*ms), d(4, 5*ms), d(4, 5*ms)}, 10 * time.Second, nil},
		// One daemon has little work (a worker at 200 ms: 5/s at most): the
		// other takes the rest of the quota.
		{"one daemon short of work", []simDaemon{d(1, 200*ms), d(8, 5*ms)}, 5 * time.Second, []float64{0.125, 0.875}},
		{"slow answers", []simDaemon{d(8, 150*ms), d(8, 150*ms)}, 5 * time.Second, []float64{0.5, 0.5}},
		{"one joins late", []simDaemon{d(8, 5*ms), {workers: 8, latency: 5 * ms, start: 10 * time.Second}}, 20 * time.Second, []float64{0.5, 0.5}},
		{"one leaves", []simDaemon{d(8, 5*ms), {workers: 8, latency: 5 * ms, stop: 10 * time.Second}}, 15 * time.Second, []float64{1, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := simulateShared(rate, burst, tc.daemons, tc.from, 40*time.Second)
			steady := float64(res.steadyOK) / (res.steady.Seconds() * rate)
			t.Logf("steady %.1f %% of the rate; %d 429s of %d requests, %d in the steady state; shares %.3f",
				100*steady, res.limited, res.requests, res.steadyLimited, res.shares)
			// Above 100% only by what the bucket held at the start of it.
			if most := 1 + burst/(rate*res.steady.Seconds()); steady < 0.98 || steady > most {
				t.Errorf("steady state at %.1f %% of the rate, want 98 %% to %.1f %%", 100*steady, 100*most)
			}
			if res.steadyLimited > 0 || res.limited > len(tc.daemons) {
				t.Errorf("%d of %d requests answered 429, %d of them in the steady state; want at most %d, none then",
					res.limited, res.requests, res.steadyLimited, len(tc.daemons))
			}
			for i, want := range tc.wantShare {
				if math.Abs(res.shares[i]-want) > 0.05 {
					t.Errorf("daemon %d took %.3f of the quota, want %.3f", i, res.shares[i], want)
				}
			}
		})
	}
}

// simDaemon is one daemon of the simulation: its workers, the CRM's
// latency to it (varying ±50%), and when it starts and stops (0: never).
type simDaemon struct {
	workers     int
	latency     time.Duration
	start, stop time.Duration
}

type simResult struct {
	requests, limited int
	steadyOK          int           // accepted in the steady state
	steadyLimited     int           // 429s then
	steady            time.Duration // how long it lasted
	shares            []float64     // each daemon's share of steadyOK
}

// simulateShared runs the daemons for d on one fake clock against a token
// bucket of rate and burst that answers with its level, as fakecrm does;
// the steady state is from from on.
func simulateShared(rate, burst float64, daemons []simDaemon, from, d time.Duration) simResult {
	clk := newFakeClock()
	start := clk.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	tokens, last := burst, start
	take := func(now time.Time) (bool, int) {
		tokens = math.Min(burst, tokens+now.Sub(last).Seconds()*rate)
		last = now
		if tokens >= 1 {
			tokens--
			return true, int(tokens)
		}
		return false, 0
	}
	lims := make([]*Limiter, len(daemons))
	var q simQueue
	for i, dm := range daemons {
		lims[i] = NewLimiter(0, clk)
		for range dm.workers {
			heap.Push(&q, simEvent{at: start.Add(dm.start), daemon: i, kind: simWant})
		}
	}
	res := simResult{shares: make([]float64, len(daemons))}
	okBy := make([]int, len(daemons))
	for q.Len() > 0 {
		ev := heap.Pop(&q).(simEvent)
		if ev.at.Sub(start) > d {
			break
		}
		clk.mu.Lock()
		clk.now = ev.at
		clk.mu.Unlock()
		l, dm := lims[ev.daemon], daemons[ev.daemon]
		steady := ev.at.Sub(start) >= from
		switch ev.kind {
		case simWant:
			if dm.stop > 0 && ev.at.Sub(start) >= dm.stop {
				continue
			}
			wait, booked, _ := l.reserve(time.Time{})
			if !booked { // WaitUntil looks again after wait
				heap.Push(&q, simEvent{at: ev.at.Add(wait), daemon: ev.daemon, kind: simWant})
				continue
			}
			heap.Push(&q, simEvent{at: ev.at.Add(wait), daemon: ev.daemon, kind: simSend})
		case simSend:
			if l.paused() { // WaitUntil books again after a pause
				l.Done()
				heap.Push(&q, simEvent{at: ev.at, daemon: ev.daemon, kind: simWant})
				continue
			}
			ok, left := take(ev.at)
			res.requests++
			switch {
			case ok && steady:
				okBy[ev.daemon]++
				res.steadyOK++
			case !ok:
				res.limited++
				if steady {
					res.steadyLimited++
				}
			}
			lat := time.Duration(float64(dm.latency) * (0.5 + rng.Float64()))
			heap.Push(&q, simEvent{at: ev.at.Add(lat), daemon: ev.daemon, kind: simAnswer, ok: ok, left: left, sent: ev.at})
		case simAnswer:
			l.SetShared(rate, int(burst), ev.left)
			if ev.ok {
				l.Succeeded()
			} else {
				l.RateLimited(ev.sent, time.Second)
			}
			l.Done()
			heap.Push(&q, simEvent{at: ev.at, daemon: ev.daemon, kind: simWant})
		}
	}
	res.steady = d - from
	for i, n := range okBy {
		res.shares[i] = float64(n) / float64(max(1, res.steadyOK))
	}
	return res
}

type simKind uint8

const (
	simWant simKind = iota
	simSend
	simAnswer
)

type simEvent struct {
	at     time.Time
	seq    int
	daemon int
	kind   simKind
	ok     bool
	left   int
	sent   time.Time
}

func (e simEvent) String() string { return fmt.Sprintf("%v d%d k%d", e.at, e.daemon, e.kind) }

// simQueue orders events by time, then by when they were pushed.
type simQueue struct {
	evs []simEvent
	n   int
}

func (q *simQueue) Len() int { return len(q.evs) }
func (q *simQueue) Less(i, j int) bool {
	if !q.evs[i].at.Equal(q.evs[j].at) {
		return q.evs[i].at.Before(q.evs[j].at)
	}
	return q.evs[i].seq < q.evs[j].seq
}
func (q *simQueue) Swap(i, j int) { q.evs[i], q.evs[j] = q.evs[j], q.evs[i] }
func (q *simQueue) Push(x any) {
	e := x.(simEvent)
	q.n++
	e.seq = q.n
	q.evs = append(q.evs, e)
}
func (q *simQueue) Pop() any {
	e := q.evs[len(q.evs)-1]
	q.evs = q.evs[:len(q.evs)-1]
	return e
}
