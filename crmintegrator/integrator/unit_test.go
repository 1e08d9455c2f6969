package integrator

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/shared/contact"
)

// fakeClock advances only when a test or a timer wait says so.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After fires at once and moves the clock forward, so waits take no time.
func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.Advance(d)
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch, func() {}
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestBreakerTransitions(t *testing.T) {
	clk := newFakeClock()
	var changes []string
	b := NewBreaker(3, 10*time.Second, clk, func(from, to BreakerState) { changes = append(changes, to.String()) })
	steps := []struct {
		name      string
		do        func()
		wantState BreakerState
		wantAllow bool
	}{
		{"closed allows", func() {}, BreakerClosed, true},
		{"two failures keep it closed", func() { b.Done(Ticket{}, ResultFailure); b.Done(Ticket{}, ResultFailure) }, BreakerClosed, true},
		{"a success resets the count", func() {
			b.Done(Ticket{}, ResultSuccess)
			b.Done(Ticket{}, ResultFailure)
			b.Done(Ticket{}, ResultFailure)
		}, BreakerClosed, true},
		{"third consecutive failure opens", func() { b.Done(Ticket{}, ResultFailure) }, BreakerOpen, false},
		{"still open before the cooldown", func() { clk.Advance(9 * time.Second) }, BreakerOpen, false},
	}
	for _, st := range steps {
		st.do()
		if got := b.State(); got != st.wantState {
			t.Fatalf("%s: got %v, want %v", st.name, got, st.wantState)
		}
		if ok, _, _ := b.Allow(); ok != st.wantAllow {
			t.Fatalf("%s: Allow got %v, want %v", st.name, ok, st.wantAllow)
		}
		if ok, tk, _ := b.Allow(); ok && st.wantAllow {
			b.Done(tk, ResultIgnore)
		}
	}
	_, _, wait := b.Allow()
	if wait != time.Second {
		t.Fatalf("open: got wait %v, want the remaining 1s", wait)
	}
	clk.Advance(time.Second)
	ok, tk, _ := b.Allow()
	if !ok || !tk.Probe() || b.State() != BreakerHalfOpen {
		t.Fatalf("after the cooldown: got ok %v probe %v state %v, want a half-open probe", ok, tk.Probe(), b.State())
	}
	if ok, _, _ := b.Allow(); ok {
		t.Fatal("half-open let a second request through")
	}
	b.Done(tk, ResultFailure)
	if b.State() != BreakerOpen {
		t.Fatalf("failed probe: got %v, want open", b.State())
	}
	clk.Advance(10 * time.Second)
	ok, tk, _ = b.Allow()
	if !ok || !tk.Probe() {
		t.Fatal("no probe after the cooldown following a failed probe")
	}
	b.Done(tk, ResultIgnore) // a cancelled probe frees the slot
	ok, tk, _ = b.Allow()
	if !ok || !tk.Probe() {
		t.Fatal("no new probe after a cancelled one")
	}
	b.Done(tk, ResultSuccess)
	if b.State() != BreakerClosed {
		t.Fatalf("successful probe: got %v, want closed", b.State())
	}
	want := "open half-open open half-open closed"
	if got := strings.Join(changes, " "); got != want {
		t.Fatalf("got changes %q, want %q", got, want)
	}
}

// TestBreakerStaleAnswer: a request admitted before the breaker tripped
// answers late, while the half-open probe is out. Its success must not
// close the breaker (the CRM may still be failing), nor its failure reopen
// it; only the probe decides.
func TestBreakerStaleAnswer(t *testing.T) {
	for _, late := range []Result{ResultSuccess, ResultFailure} {
		clk := newFakeClock()
		b := NewBreaker(2, 10*time.Second, clk, nil)
		_, old, _ := b.Allow() // sent while closed; its answer is slow
		for range 2 {
			_, tk, _ := b.Allow()
			b.Done(tk, ResultFailure)
		}
		if b.State() != BreakerOpen {
			t.Fatalf("got %v after two failures, want open", b.State())
		}
		clk.Advance(10 * time.Second)
		ok, probe, _ := b.Allow()
		if !ok || !probe.Probe() {
			t.Fatal("no probe after the cooldown")
		}
		b.Done(old, late) // the pre-trip answer arrives during half-open
		if b.State() != BreakerHalfOpen {
			t.Fatalf("a pre-trip %v moved a half-open breaker to %v", late, b.State())
		}
		if ok, _, _ := b.Allow(); ok {
			t.Fatal("a pre-trip answer freed the probe's slot")
		}
		b.Done(probe, ResultSuccess)
		if b.State() != BreakerClosed {
			t.Fatalf("the probe's success: got %v, want closed", b.State())
		}
	}
}

func TestLimiterAIMD(t *testing.T) {
	clk := newFakeClock()
	l := NewLimiter(0, clk)
	ctx := context.Background()
	// Unlimited at first: 100 requests take no time.
	start := clk.Now()
	for range 100 {
		l.Wait(ctx)
	}
	if el := clk.Now().Sub(start); el != 0 {
		t.Fatalf("unlimited limiter waited %v", el)
	}
	clk.Advance(time.Second)
	cut, rate := l.RateLimited(clk.Now(), 2*time.Second)
	if !cut || rate != 50 {
		t.Fatalf("first 429: got cut %v rate %v, want a cut to half of the 100/s sent", cut, rate)
	}
	if cut, _ := l.RateLimited(clk.Now().Add(-time.Millisecond), time.Second); cut {
		t.Fatal("a 429 of a request sent before the cut cut again")
	}
	// The pause: the next request waits for the Retry-After.
	before := clk.Now()
	l.Wait(ctx)
	if el := clk.Now().Sub(before); el < 2*time.Second {
		t.Fatalf("waited %v after a 429 with Retry-After 2s", el)
	}
	// Paced at 50/s: 50 more requests take about a second (minus the burst).
	before = clk.Now()
	for range 50 {
		l.Wait(ctx)
	}
	if el := clk.Now().Sub(before); el < 900*time.Millisecond || el > 1100*time.Millisecond {
		t.Fatalf("50 requests at 50/s took %v", el)
	}
	// Successes creep the rate up, by about 1/s each second.
	for range 10 {
		clk.Advance(time.Second)
		l.Succeeded()
	}
	if r := l.Rate(); r < 58 || r > 66 { // the first step also counts the pause
		t.Fatalf("after 10s of success: got rate %v, want about 60-65", r)
	}
}

func TestLimiterHardCap(t *testing.T) {
	clk := newFakeClock()
	l := NewLimiter(10, clk)
	for range 100 {
		clk.Advance(time.Second)
		l.Succeeded()
	}
	if r := l.Rate(); r != 10 {
		t.Fatalf("got rate %v, want the cap 10", r)
	}
	start := clk.Now()
	for range 24 {
		l.Wait(context.Background())
	}
	if el := clk.Now().Sub(start); el < 1900*time.Millisecond {
		t.Fatalf("24 requests at 10/s took %v, want about 2s", el)
	}
}

// A 429 after the CRM accepted 40 requests a second settles the rate just
// under 40/s, and the rate then probes above it only slowly.
func TestLimiterLearnsQuota(t *testing.T) {
	clk := newFakeClock()
	l := NewLimiter(0, clk)
	ctx := context.Background()
	for range 3 * 40 { // 3s of answers at 40/s, unlimited sending
		l.Wait(ctx)
		clk.Advance(25 * time.Millisecond)
		l.Succeeded()
	}
	cut, rate := l.RateLimited(clk.Now(), time.Second)
	if !cut || rate < 38 || rate > 40 {
		t.Fatalf("429 after 40/s accepted: got cut %v rate %v, want about 38.8", cut, rate)
	}
	for range 20 {
		clk.Advance(time.Second)
		l.Succeeded()
	}
	if r := l.Rate(); r > 40.5 {
		t.Fatalf("after 20s of success: got rate %v, want it near the learnt 40/s", r)
	}
}

func TestLongestField(t *testing.T) {
	tests := []struct {
		c    contact.Contact
		name string
		n    int
	}{
		{contact.Contact{ExternalID: "C1", Email: "ada@example.com"}, "email", 15},
		{contact.Contact{ExternalID: "C1", Email: "a@b.c", Attributes: contact.AttrsOf(map[string]string{"company": "Initech Ltd"})}, "attribute company", 11},
		{contact.Contact{ExternalID: "C1", Email: "a@b.c", Attributes: contact.AttrsOf(map[string]string{"a-very-long-key": "x"})}, "attribute name", 15},
	}
	for _, tc := range tests {
		name, n := longestField(&tc.c)
		if name != tc.name || n != tc.n {
			t.Errorf("longestField(%+v) = %q, %d; want %q, %d", tc.c, name, n, tc.name, tc.n)
		}
		if got := longestFieldLen(&tc.c); got != tc.n {
			t.Errorf("longestFieldLen(%+v) = %d, want %d", tc.c, got, tc.n)
		}
	}
}

// Label values are escaped as the Prometheus text format says: backslash,
// double quote and line feed, and nothing else (Go's %q escaped tabs and
// non-ASCII too, which scrapers then read literally).
func TestMetricsLabelEscaping(t *testing.T) {
	tests := []struct{ in, want string }{
		{`plain`, `plain`},
		{`a\b`, `a\\b`},
		{`say "hi"`, `say \"hi\"`},
		{"two\nlines", `two\nlines`},
		{"tab\there", "tab\there"},
		{"café ✓", "café ✓"},
	}
	for _, tc := range tests {
		if got := labelValue(tc.in); got != tc.want {
			t.Errorf("labelValue(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	m := newMetrics()
	m.breakerState = func() BreakerState { return BreakerClosed }
	m.rate = func() float64 { return 0 }
	m.rpcCall("Deliver", "odd \"code\"\n")
	m.retry(`back\slash`)
	var b strings.Builder
	m.WriteTo(&b)
	for _, want := range []string{
		`crmintegrator_rpc_calls_total{method="Deliver",result="odd \"code\"\n"} 1`,
		`crmintegrator_retries_total{reason="back\\slash"} 1`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// A rolling window's gate (SetWindow) holds a daemon that owns little of a
// full window until its share of the refill frees room: seconds. With a
// request of its own in flight, the answer will say more, so it waits;
// with nothing in flight it would hear nothing, so after winProbe one
// request goes to ask.
func TestWindowGateProbesWhenSilent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		inFlight bool
		min, max time.Duration
	}{
		{"nothing in flight: a probe after winProbe", false, winProbe - shareHorizon, winProbe + shareHorizon},
		{"a request in flight: wait for its answer", true, 2 * time.Second, 4 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			l := NewLimiter(0, clk)
			l.SetWindow(400, 1, 10*time.Second, clk.Now())
			clk.Advance(11 * time.Second) // past the first window's booking
			// Another daemon filled the window: none of its 400 are ours.
			l.SetWindow(400, 400, 10*time.Second, time.Time{})
			if tc.inFlight {
				l.mu.Lock()
				l.pending = 1 // booked before the statement, not answered yet
				l.mu.Unlock()
			}
			before := clk.Now()
			if err := l.Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			if el := clk.Now().Sub(before); el < tc.min || el > tc.max {
				t.Fatalf("waited %v, want %v to %v", el, tc.min, tc.max)
			}
		})
	}
}

// A rolling window frees a request's place exactly an interval after it
// came, so the gate waits for this daemon's own requests to leave, to the
// millisecond, rather than for an even refill that promises room too early
// (a full window frees nothing until its oldest request leaves). A request
// answered 429 was not counted, so it frees nothing either.
func TestWindowGateWaitsForOwnRequestsToLeave(t *testing.T) {
	const per = 10 * time.Second
	for _, tc := range []struct {
		name    string
		refused bool // a 429 came first, for a request sent before the others
	}{
		{"the oldest own request leaves first", false},
		{"a request answered 429 frees no place", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			at := func(tm time.Time) { clk.Advance(tm.Sub(clk.Now())) }
			l := NewLimiter(0, clk)
			l.SetWindow(190, 1, per, clk.Now())
			clk.Advance(per + time.Second) // past the first window's booking
			t0 := clk.Now()
			if tc.refused {
				at(t0.Add(-40 * time.Millisecond))
				l.SetWindow(190, 190, per, time.Time{})
			}
			// 190 requests, 50 ms apart, each answered 10 ms later; the last
			// answer comes at 9.9 s and states a full window.
			for i := range 190 {
				sent := t0.Add(time.Duration(i) * 50 * time.Millisecond)
				at(sent.Add(10 * time.Millisecond))
				if i == 189 {
					at(t0.Add(9900 * time.Millisecond))
				}
				l.SetWindow(190, i+1, per, sent)
			}
			if err := l.Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			want := t0.Add(per + winSlack)
			if d := clk.Now().Sub(want); d < -time.Millisecond || d > time.Millisecond {
				t.Fatalf("the slot came %v after the oldest request left (%v), want it then", d, want.Sub(t0))
			}
		})
	}
}

// A request that must start before the gate's slot is refused with a
// wait of at most winProbe, whatever the estimate: the estimate is revised
// by the next answer, and the Retry verdict built from the wait must not
// keep records away from a window that drains meanwhile.
func TestWindowGateRefusesWithAShortWait(t *testing.T) {
	clk := newFakeClock()
	l := NewLimiter(0, clk)
	l.SetWindow(400, 1, 10*time.Second, clk.Now())
	clk.Advance(11 * time.Second)
	l.SetWindow(400, 400, 10*time.Second, time.Time{}) // another daemon filled it
	l.mu.Lock()
	l.pending = 1 // its slot seconds away (TestWindowGateProbesWhenSilent)
	l.mu.Unlock()
	err := l.WaitUntil(context.Background(), clk.Now().Add(50*time.Millisecond))
	var we *WaitError
	if !errors.As(err, &we) || we.Wait <= 50*time.Millisecond || we.Wait > winProbe {
		t.Fatalf("got %v, want a WaitError of at most %v", err, winProbe)
	}
	// Not the gate: a paced slot past the deadline reports its full wait.
	p := NewLimiter(1, clk)
	if err := p.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range limiterBurst {
		_ = p.WaitUntil(context.Background(), clk.Now().Add(time.Hour))
	}
	err = p.WaitUntil(context.Background(), clk.Now().Add(10*time.Millisecond))
	if !errors.As(err, &we) || we.Wait <= winProbe {
		t.Fatalf("paced: got %v, want a WaitError over %v", err, winProbe)
	}
}
