package integrator

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/crmrpc"
)

// TestCallsAnswerWithinBound: whatever the CRM does, every Deliver and
// Lookup call answers within the CallTimeout Hello advertises — the bound
// readers wait out before they resend what an abandoned call carried. A
// call that outlived it could create a contact after the reader's lookup
// said "not found".
func TestCallsAnswerWithinBound(t *testing.T) {
	maybe := func(recs []crmrpc.Record) []crmrpc.Record {
		for i := range recs {
			recs[i].MaybeSent = true
		}
		return recs
	}
	rateLimited := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"error":{"code":"rate_limited","message":"slow down"}}`)
	}
	hang := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		<-r.Context().Done() // the client gives up first
	}
	tests := []struct {
		name    string
		handler http.HandlerFunc // nil: fakecrm with faults
		faults  fakecrm.Faults
		calls   int // concurrent Deliver calls of 1000 records
		maybe   bool
		conc    int // CRM concurrency; default 2
		// wantDelivered: every record delivered; else only some progress
		// (or none, for a CRM that never accepts) is expected.
		wantDelivered bool
	}{
		{name: "429 with Retry-After 120", handler: rateLimited, calls: 2},
		{name: "1000 MaybeSent records, 200ms lookups", faults: fakecrm.Faults{LookupLatency: 200 * time.Millisecond}, calls: 1, maybe: true, conc: 8, wantDelivered: true},
		{name: "12 calls of MaybeSent records, lookups slower than the budget allows", faults: fakecrm.Faults{LookupLatency: 400 * time.Millisecond}, calls: 12, maybe: true},
		{name: "CRM down", faults: fakecrm.Faults{Down: true}, calls: 2},
		{name: "CRM hangs", handler: hang, calls: 2, maybe: true},
	}
	for n, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var url string
			if tc.handler != nil {
				srv := httptest.NewServer(tc.handler)
				t.Cleanup(srv.Close)
				url = srv.URL
			} else {
				_, url = startCRM(t, fakecrm.Config{Faults: tc.faults})
			}
			cfg := testConfig(url)
			cfg.CRMTimeout = 500 * time.Millisecond
			cfg.CallBudget = 2 * time.Second
			cfg.CRMConcurrency = cmp.Or(tc.conc, 2)
			cfg.MaxCallWait = -1 // sleep inside the call whenever the budget allows: the worst case
			s, addr := startDaemon(t, cfg)
			c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
			hello, err := c.Hello(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			bound := hello.CallTimeout
			if bound != cfg.CallBudget+2*cfg.CRMTimeout {
				t.Fatalf("Hello's CallTimeout is %v, want budget + 2 CRM timeouts", bound)
			}

			var wg sync.WaitGroup
			var delivered, resolved, notAttempted atomic.Int64
			for i := range tc.calls {
				recs := makeRecords(fmt.Sprintf("bound%d-%d", n, i), 1000)
				if tc.maybe {
					maybe(recs)
				}
				wg.Go(func() {
					start := time.Now()
					vs, err := c.Deliver(context.Background(), recs)
					if el := time.Since(start); el > bound {
						t.Errorf("Deliver answered after %v, past the advertised bound %v", el, bound)
					}
					if err != nil {
						t.Errorf("Deliver: %v", err)
						return
					}
					for _, v := range vs {
						if v.Outcome == crmrpc.Delivered || (v.Outcome == crmrpc.Retry && !v.Ambiguous) {
							resolved.Add(1) // its fate is known: no lookup needed next time
						}
						switch {
						case v.Outcome == crmrpc.Delivered:
							delivered.Add(1)
						case v.Outcome == crmrpc.Retry && v.NotAttempted:
							notAttempted.Add(1)
						case v.Outcome != crmrpc.Retry:
							t.Errorf("got %+v, want Delivered or Retry", v)
						}
					}
				})
				wg.Go(func() {
					ids := make([]string, 1000)
					for j := range ids {
						ids[j] = recs[j].Contact.ExternalID
					}
					start := time.Now()
					_, err := c.Lookup(context.Background(), ids)
					if el := time.Since(start); el > bound {
						t.Errorf("Lookup answered after %v, past the advertised bound %v (err %v)", el, bound, err)
					}
				})
			}
			wg.Wait()
			total := int64(1000 * tc.calls)
			t.Logf("delivered %d of %d, resolved %d, %d answered retry without an attempt", delivered.Load(), total, resolved.Load(), notAttempted.Load())
			if tc.wantDelivered && delivered.Load() != total {
				t.Errorf("delivered %d of %d, want all", delivered.Load(), total)
			}
			// Overloaded: lookups went on within the bound (for the Deliver
			// or the Lookup calls, first come first served) and the rest
			// was answered at the bound.
			if tc.calls > 1 && tc.maybe && tc.handler == nil && (s.met.lookups.Load() == 0 || notAttempted.Load() == 0) {
				t.Errorf("want lookups made within the bound and the rest answered retry at it, got %d lookups, %d not attempted",
					s.met.lookups.Load(), notAttempted.Load())
			}
		})
	}
}

// TestOverlappingCallsWait: a record sent in a second call while the first
// call carrying it is still running is not touched (no lookup, no create)
// but answered Retry, Ambiguous, until the first call's bound.
func TestOverlappingCallsWait(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 300 * time.Millisecond}})
	cfg := testConfig(url)
	s, addr := startDaemon(t, cfg)
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	recs := makeRecords("overlap", 5)
	first := make(chan []crmrpc.Verdict, 1)
	go func() {
		vs, err := c.Deliver(context.Background(), recs)
		if err != nil {
			t.Error(err)
		}
		first <- vs
	}()
	// Wait until the first call holds the keys.
	deadline := time.Now().Add(5 * time.Second)
	for crm.Audit().Requests == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	again := append([]crmrpc.Record(nil), recs...)
	for i := range again {
		again[i].MaybeSent = true
	}
	vs, err := c.Deliver(context.Background(), again)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Outcome != crmrpc.Retry || v.Code != CodeInFlight || !v.Ambiguous || v.RetryAfter <= 0 {
			t.Fatalf("second call: got %+v, want Retry %s, ambiguous, with a delay", v, CodeInFlight)
		}
	}
	for _, v := range <-first {
		if v.Outcome != crmrpc.Delivered {
			t.Fatalf("first call: got %+v, want delivered", v)
		}
	}
	if n := s.met.overlapping.Load(); n != 5 {
		t.Errorf("overlapping records counted %d, want 5", n)
	}
	// Once the first call is over, the same records settle from what the
	// daemon saw: no lookup at all.
	lookups := s.met.lookups.Load()
	vs, err = c.Deliver(context.Background(), again)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Outcome != crmrpc.Delivered {
			t.Fatalf("after the first call: got %+v, want delivered", v)
		}
	}
	if n := s.met.lookups.Load() - lookups; n != 0 {
		t.Errorf("%d lookups for records the daemon had created itself, want 0", n)
	}
	checkAudit(t, crm, 5)
}
