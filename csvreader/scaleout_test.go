package main

import (
	"cmp"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/integrator"
	"crmsync/csvreader/importer"
	"crmsync/shared/pgtest"
)

// Two readers, each listing two integrators, on one export, against one
// CRM that states its limit with every answer: no coordinator of our own,
// yet the daemons share the quota — every key once, nothing lost, the busy
// period at the quota, hardly any 429.
//
//   - generic: 40 requests a second, the bucket stated in the IETF
//     RateLimit fields (Limiter.SetShared). Best possible: the bucket's 40
//     plus 40 a second.
//   - hubspot: 400 requests in any rolling 10 seconds, stated in
//     X-HubSpot-RateLimit-Max/-Remaining/-Interval-Milliseconds
//     (Limiter.SetWindow and its gate). Best possible: 40 a second (a
//     daemon paces its requests rather than spend a whole window at once).
//
// The target (>= 95% of the best possible, < 2% 429s) holds under -race
// with three such runs and a CPU burner on two cores (generic: 97.5%, no
// 429); SCALEOUT_MIN_SHARE lowers the floor for a slower machine. Without
// the fields (the adaptive limiter alone) the generic run reaches 93.7%;
// without the gate, two daemons on HubSpot's window had 19% of their
// requests answered 429.
func TestScaleOutSharesTheQuota(t *testing.T) {
	const (
		rate  = 40
		batch = 10   // records a CRM request: keeps the ledger's work small next to the quota's
		rows  = 8000 // 800 requests: 20 s at the quota
	)
	for _, tc := range []struct {
		name     string
		crm      fakecrm.Config
		api      string
		burst    float64
		minShare float64 // 0: 95%
	}{
		{"generic", fakecrm.Config{Faults: fakecrm.Faults{Rate: rate}}, "", rate, 0},
		{"hubspot", fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Window: 10 * rate}}, "hubspot", 0, 0},
		// A remote CRM: every answer 100-200 ms late, so each statement of
		// the window is older and more of the other daemon's requests are
		// unseen when the gate reads it. 0-1.35% answered 429 in eight runs,
		// three beside a CPU burner (2.6-3.1% when the gate counted on an
		// even refill); 94.0-95.4% of the best possible, as before that change: the first window's
		// turnover and the run's last answers cost a second of the 20, so
		// the floor is lower.
		{"hubspot, 100-200 ms answers", fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Window: 10 * rate},
			Faults: fakecrm.Faults{Latency: 100 * time.Millisecond, Jitter: 100 * time.Millisecond}}, "hubspot", 0, 0.90},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &stack{t: t, dsn: pgtest.DSN(t, true)}
			tap := startTappedCRM(t, s, tc.crm)
			icfg := integrator.Config{API: tc.api, MaxBatch: batch, CallBudget: 10 * time.Second}
			a, b := s.extraIntegrator(icfg).addr, s.extraIntegrator(icfg).addr

			file := exportFile(t, rows)
			var wg sync.WaitGroup
			reps := make([]*importer.Report, 2)
			errs := make([]error, 2)
			outs := make([]string, 2)
			for i, list := range []string{a + "," + b, b + "," + a} {
				wg.Go(func() {
					reps[i], outs[i], errs[i] = s.reader(context.Background(), s.dsn, "-integrator", list, "-workers", "4", "-block-size", "100", file)
				})
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("reader %d: %v\n%s", i, err, outs[i])
				}
			}
			if got := reps[0].Delivered + reps[1].Delivered; got != rows {
				t.Errorf("readers delivered %d + %d, want %d in all", reps[0].Delivered, reps[1].Delivered, rows)
			}
			s.assertExactlyOnce(rows)

			au := s.crm.Audit()
			share, span := tap.share(rate, tc.burst)
			steady, window := tap.steadyShare(rate)
			pct429 := 100 * float64(au.RateLimited) / float64(au.Requests)
			t.Logf("%d requests, %d answered 429 (%.2f %%); busy %.1fs at %.1f %% of the best possible; steady %.1fs at %.1f %% of the rate",
				au.Requests, au.RateLimited, pct429, span.Seconds(), 100*share, window.Seconds(), 100*steady)
			minShare := cmp.Or(tc.minShare, 0.95)
			if v, err := strconv.ParseFloat(os.Getenv("SCALEOUT_MIN_SHARE"), 64); err == nil {
				minShare = min(minShare, v)
			}
			if share < minShare {
				t.Errorf("the busy period ran at %.1f %% of the quota's best possible, want >= %.0f %%; requests accepted a second: %v", 100*share, 100*minShare, tap.perSecond())
			}
			if pct429 >= 2 {
				t.Errorf("%.2f %% of requests answered 429, want < 2 %%", pct429)
			}
		})
	}
}

// tappedCRM records when the CRM accepted each API request.
type tappedCRM struct {
	mu       sync.Mutex
	accepted []time.Time
}

// startTappedCRM serves a fakecrm for s behind a tap.
func startTappedCRM(t *testing.T, s *stack, cfg fakecrm.Config) *tappedCRM {
	t.Helper()
	srv, err := fakecrm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tap := &tappedCRM{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/admin/") {
			srv.ServeHTTP(w, r)
			return
		}
		at := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		srv.ServeHTTP(sw, r)
		if sw.status != http.StatusTooManyRequests {
			tap.mu.Lock()
			tap.accepted = append(tap.accepted, at)
			tap.mu.Unlock()
		}
	}))
	t.Cleanup(func() { srv.Close(); ts.Close() })
	s.crm, s.crmURL = srv, ts.URL
	return tap
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// sorted is the times the CRM accepted requests at, in order.
func (c *tappedCRM) sorted() []time.Time {
	c.mu.Lock()
	ts := slices.Clone(c.accepted)
	c.mu.Unlock()
	slices.SortFunc(ts, time.Time.Compare)
	return ts
}

// steadyShare is the accepted requests a second in the steady state, as a
// share of rate: from the first accepted request plus two seconds (the
// bucket's initial burst is spent by then, and would flatter the figure)
// to the last one less two (the runs' tails, when not every block is in
// flight any more).
func (c *tappedCRM) steadyShare(rate float64) (share float64, window time.Duration) {
	ts := c.sorted()
	if len(ts) < 2 {
		return 0, 0
	}
	from, to := ts[0].Add(2*time.Second), ts[len(ts)-1].Add(-2*time.Second)
	if !to.After(from) {
		return 0, 0
	}
	n := 0
	for _, at := range ts {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	window = to.Sub(from)
	return float64(n) / window.Seconds() / rate, window
}

// share is the requests accepted over the busy period, from the first to
// the last, as a share of the most the bucket could accept in that time:
// its burst plus rate a second. Idle time before and after is not counted;
// a slow start or tail is.
func (c *tappedCRM) share(rate, burst float64) (share float64, span time.Duration) {
	ts := c.sorted()
	if len(ts) < 2 {
		return 0, 0
	}
	span = ts[len(ts)-1].Sub(ts[0])
	return float64(len(ts)) / (burst + rate*span.Seconds()), span
}

// perSecond counts the accepted requests in each second from the first:
// where a run lost its share (a slow start, a gap, a tail).
func (c *tappedCRM) perSecond() []int {
	var out []int
	ts := c.sorted()
	for _, at := range ts {
		i := int(at.Sub(ts[0]) / time.Second)
		for len(out) <= i {
			out = append(out, 0)
		}
		out[i]++
	}
	return out
}
