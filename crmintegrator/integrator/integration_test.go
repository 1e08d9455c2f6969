package integrator

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

func TestDeliverHappyPath(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{})
	cfg := testConfig(url)
	cfg.MaxBatch = 40
	_, addr := startDaemon(t, cfg)
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})

	h, err := c.Hello(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != Version || h.MaxRecords != crmrpc.DefaultMaxRecords || h.Idempotency || h.CallTimeout <= 0 {
		t.Fatalf("got hello %+v", h)
	}

	recs := makeRecords("happy", 250)
	recs[7].Contact.Email = "not-an-address"
	recs[9].Contact.ExternalID = ""
	vs, err := c.Deliver(context.Background(), recs)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vs {
		switch i {
		case 7, 9:
			want := map[int]string{7: contact.CodeInvalidEmail, 9: contact.CodeMissingExternalID}[i]
			if v.Outcome != crmrpc.Rejected || v.Code != want {
				t.Errorf("record %d: got %v %q, want rejected %q", i, v.Outcome, v.Code, want)
			}
		default:
			if v.Outcome != crmrpc.Delivered || v.CRMID == "" {
				t.Errorf("record %d: got %+v, want delivered", i, v)
			}
		}
	}
	a := checkAudit(t, crm, 248)
	if a.Requests != 7 { // ceil(248/40)
		t.Errorf("got %d CRM requests, want 7", a.Requests)
	}

	// Resending with MaybeSent finds them and creates nothing.
	for i := range recs {
		recs[i].MaybeSent = true
	}
	vs2, err := c.Deliver(context.Background(), recs[:50])
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vs2 {
		if i != 7 && i != 9 && (v.Outcome != crmrpc.Delivered || v.CRMID != vs[i].CRMID) {
			t.Errorf("record %d resent: got %+v, want delivered as %s", i, v, vs[i].CRMID)
		}
	}
	checkAudit(t, crm, 248)

	res, err := c.Lookup(context.Background(), []string{"happy-00000", "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res[0].CRMIDs) != 1 || res[0].CRMIDs[0] != vs[0].CRMID || len(res[1].CRMIDs) != 0 {
		t.Fatalf("got lookup %+v", res)
	}
}

func TestCallLimits(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{})
	cfg := testConfig(url)
	cfg.MaxRecords = 10
	cfg.MaxFieldBytes = 64
	_, addr := startDaemon(t, cfg)
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	big := makeRecords("big", 1)
	big[0].Contact.Attributes = contact.AttrsOf(map[string]string{"note": strings.Repeat("x", 65)})
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"too many records", func() error { _, err := c.Deliver(context.Background(), makeRecords("n", 11)); return err }, crmrpc.CodeTooManyRecords},
		{"field too large", func() error { _, err := c.Deliver(context.Background(), big); return err }, crmrpc.CodeFieldTooLarge},
		{"too many ids", func() error { _, err := c.Lookup(context.Background(), make([]string, 11)); return err }, crmrpc.CodeTooManyRecords},
		{"id too large", func() error { _, err := c.Lookup(context.Background(), []string{strings.Repeat("x", 65)}); return err }, crmrpc.CodeFieldTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e *crmrpc.Error
			if err := tc.call(); !errors.As(err, &e) || e.Code != tc.want || !e.Fatal() {
				t.Fatalf("got %v, want a fatal *crmrpc.Error %s", err, tc.want)
			}
		})
	}
}

// TestOutcomesAgainstFakeCRM covers the rows of the outcome table that
// fakecrm can produce, over real TCP and HTTP.
func TestOutcomesAgainstFakeCRM(t *testing.T) {
	t.Run("413 splits the batch", func(t *testing.T) {
		crm, url := startCRM(t, fakecrm.Config{MaxBatch: 30})
		_, addr := startDaemon(t, testConfig(url))
		c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
		vs, err := c.Deliver(context.Background(), makeRecords("split", 100))
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vs {
			if v.Outcome != crmrpc.Delivered {
				t.Fatalf("record %d: got %+v", i, v)
			}
		}
		a := checkAudit(t, crm, 100)
		if a.ResponsesByStatus[413] == 0 {
			t.Fatalf("got no 413 (audit %+v)", a)
		}
	})
	t.Run("401 fails the call", func(t *testing.T) {
		_, url := startCRM(t, fakecrm.Config{Token: "another-token"})
		_, addr := startDaemon(t, testConfig(url))
		c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
		_, err := c.Deliver(context.Background(), makeRecords("unauth", 3))
		var e *crmrpc.Error
		if !errors.As(err, &e) || e.Code != crmrpc.CodeCRMUnauthorized || !e.Fatal() {
			t.Fatalf("got %v, want %s", err, crmrpc.CodeCRMUnauthorized)
		}
		_, err = c.Lookup(context.Background(), []string{"x"})
		if !errors.As(err, &e) || e.Code != crmrpc.CodeCRMUnauthorized {
			t.Fatalf("lookup: got %v, want %s", err, crmrpc.CodeCRMUnauthorized)
		}
	})
	t.Run("503 retried inside the call", func(t *testing.T) {
		crm, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{FailRate: 0.5}, Seed: 3})
		cfg := testConfig(url)
		cfg.MaxBatch = 10
		cfg.CallBudget = 5 * time.Second
		cfg.MaxAttempts = 8
		_, addr := startDaemon(t, cfg)
		c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
		deliverAll(t, c, makeRecords("busy", 100), 100, 20*time.Second)
		a := checkAudit(t, crm, 100)
		if a.Failed == 0 {
			t.Fatalf("got no 503 (audit %+v)", a)
		}
	})
	t.Run("503 beyond the budget answers Retry", func(t *testing.T) {
		_, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{FailRate: 1}})
		cfg := testConfig(url)
		cfg.CallBudget = 100 * time.Millisecond
		_, addr := startDaemon(t, cfg)
		c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
		vs, err := c.Deliver(context.Background(), makeRecords("down", 2))
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if v.Outcome != crmrpc.Retry || v.Ambiguous || v.RetryAfter <= 0 || v.Code != CodeUnavailable {
				t.Fatalf("got %+v, want a plain Retry", v)
			}
		}
	})
	t.Run("429 answers Retry with Retry-After", func(t *testing.T) {
		// Silent: a CRM that states its bucket is paced from its first
		// answer, and whether any 429 comes then depends on whether the
		// four requests left before that answer (CI's load decided).
		crm, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{Rate: 1, Burst: 1, SilentRate: true}})
		cfg := testConfig(url)
		cfg.CallBudget = 100 * time.Millisecond
		cfg.MaxBatch = 1
		s, addr := startDaemon(t, cfg)
		c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
		vs, err := c.Deliver(context.Background(), makeRecords("rl", 4))
		if err != nil {
			t.Fatal(err)
		}
		var retries int
		for _, v := range vs {
			if v.Outcome == crmrpc.Retry {
				retries++
				// The 429's Retry-After, or what is left of its pause.
				if v.RetryAfter < 500*time.Millisecond || v.Ambiguous || v.Code != CodeRateLimited {
					t.Fatalf("got %+v, want Retry after about 1s", v)
				}
			}
		}
		if retries == 0 || crm.Audit().RateLimited == 0 {
			t.Fatalf("got %d retries, audit %+v; want some 429s", retries, crm.Audit())
		}
		if s.limiter.Rate() == 0 {
			t.Fatal("the limiter did not slow down after 429")
		}
	})
}

// TestAmbiguousNeverDuplicates makes the CRM create and then fail a third
// of the batches, in every ambiguous way, and checks that a reader
// delivering through the daemon ends with every contact exactly once.
func TestAmbiguousNeverDuplicates(t *testing.T) {
	tests := []struct {
		name        string
		idempotency bool // the daemon's -crm-idempotency, and the CRM honouring keys
		latency     time.Duration
	}{
		{"lookup, CRM ignores keys", false, 5 * time.Millisecond},
		{"same key, CRM honours keys", true, 5 * time.Millisecond},
		// A remote CRM: the lookups are slow, and the same-key resend
		// waits in the call (MaxCallWait) while the others' batches answer.
		{"lookup, 120 ms CRM", false, 120 * time.Millisecond},
		{"same key, 120 ms CRM", true, 120 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			crm, url := startCRM(t, fakecrm.Config{
				Faults:             fakecrm.Faults{AmbiguousRate: 0.3, Hang: 400 * time.Millisecond, Latency: tc.latency},
				DisableIdempotency: !tc.idempotency,
				Seed:               11,
			})
			cfg := testConfig(url)
			cfg.CRMTimeout = 250 * time.Millisecond
			cfg.Idempotency = tc.idempotency
			cfg.MaxBatch = 20
			cfg.BreakerThreshold = 1000 // this test is about resolution, not the breaker
			_, addr := startDaemon(t, cfg)
			c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
			ids := deliverAll(t, c, makeRecords("amb", 400), 200, 40*time.Second)
			if len(ids) != 400 {
				t.Fatalf("got %d delivered, want 400", len(ids))
			}
			a := checkAudit(t, crm, 400)
			if a.Ambiguous == 0 {
				t.Fatalf("no ambiguous answer happened (audit %+v)", a)
			}
			if tc.idempotency && a.IdempotentReplays == 0 {
				t.Errorf("no idempotent replay happened (audit %+v)", a)
			}
			// Every id the reader got is the one the CRM holds.
			for _, sc := range crm.Contacts() {
				if ids[sc.ExternalID] != sc.ID {
					t.Fatalf("%s: reader has %s, CRM has %s", sc.ExternalID, ids[sc.ExternalID], sc.ID)
				}
			}
		})
	}
}

// TestRateLimitStorm pushes more than the CRM's rate: the daemon slows all
// its traffic down and the work completes.
func TestRateLimitStorm(t *testing.T) {
	// Silent: the adaptive path, from 429s alone (a CRM that states its
	// bucket is paced from the fields instead).
	crm, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{Rate: 25, Burst: 5, SilentRate: true}})
	cfg := testConfig(url)
	cfg.MaxBatch = 5
	cfg.CallBudget = 3 * time.Second
	s, addr := startDaemon(t, cfg)
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	start := time.Now()
	deliverAll(t, c, makeRecords("storm", 400), 200, 30*time.Second)
	a := checkAudit(t, crm, 400)
	if a.RateLimited == 0 {
		t.Fatalf("no 429 happened (audit %+v)", a)
	}
	// The first second finds the CRM's rate (a wave of 429s from the
	// requests in flight per cut); after that the pace stays under it.
	if a.RateLimited*2 > a.Requests || s.met.rateCuts.Load() > 6 {
		t.Errorf("got %d of %d requests rate limited, %d cuts: the daemon did not slow down", a.RateLimited, a.Requests, s.met.rateCuts.Load())
	}
	if s.limiter.Rate() == 0 || s.met.rateCuts.Load() == 0 {
		t.Errorf("the limiter never cut its rate")
	}
	t.Logf("%d requests, %d rate limited, %v, final rate %.1f/s", a.Requests, a.RateLimited, time.Since(start), s.limiter.Rate())
}

// TestCRMDownAndBack opens the breaker while the CRM is down and closes it
// through a half-open probe once the CRM is back.
func TestCRMDownAndBack(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{Down: true}})
	cfg := testConfig(url)
	cfg.BreakerThreshold = 3
	cfg.BreakerCooldown = 500 * time.Millisecond
	cfg.CallBudget = 50 * time.Millisecond
	cfg.MaxBatch = 1
	s, addr := startDaemon(t, cfg)
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})

	vs, err := c.Deliver(context.Background(), makeRecords("down", 5))
	if err != nil {
		t.Fatal(err)
	}
	if st := s.breaker.State(); st != BreakerOpen {
		t.Fatalf("breaker %v after 5 failing batches, want open", st)
	}
	for _, v := range vs {
		if v.Outcome != crmrpc.Retry {
			t.Fatalf("got %+v, want Retry", v)
		}
	}
	before := crm.Audit().Requests
	start := time.Now()
	vs, err = c.Deliver(context.Background(), makeRecords("down", 5))
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Errorf("open breaker answered in %v, want at once", el)
	}
	for _, v := range vs {
		if v.Outcome != crmrpc.Retry || v.Code != CodeCircuitOpen || v.RetryAfter <= 0 || v.RetryAfter > cfg.BreakerCooldown {
			t.Fatalf("got %+v, want Retry %s within the cooldown", v, CodeCircuitOpen)
		}
	}
	if after := crm.Audit().Requests; after != before {
		t.Fatalf("the CRM got %d requests while the breaker was open", after-before)
	}
	if err := s.Ready(context.Background()); err == nil {
		t.Fatal("ready while the breaker is open")
	}

	crm.SetFaults(fakecrm.Faults{})
	waitUntil(t, func() bool { open, _ := s.breaker.Open(); return !open }) // the cooldown is over
	vs, err = c.Deliver(context.Background(), makeRecords("down", 5))
	if err != nil {
		t.Fatal(err)
	}
	delivered := 0
	for _, v := range vs {
		if v.Outcome == crmrpc.Delivered {
			delivered++
		}
	}
	if delivered == 0 || s.breaker.State() != BreakerClosed {
		t.Fatalf("got %d delivered, breaker %v; want some delivered and closed", delivered, s.breaker.State())
	}
	if err := s.Ready(context.Background()); err != nil {
		t.Fatalf("not ready once the CRM is back: %v", err)
	}
}

// TestOutcomeTable drives the daemon against handlers answering each
// status of the contract, including those fakecrm never sends (400, 422,
// a per-contact rejection), and checks the verdict.
func TestOutcomeTable(t *testing.T) {
	type answer func(w http.ResponseWriter, r *http.Request)
	status := func(code int, errCode, retryAfter string) answer {
		return func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			io.WriteString(w, `{"error":{"code":"`+errCode+`","message":"m"}}`)
		}
	}
	created := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"results":[{"external_id":"t-00000","status":"created","id":"c1"}]}`)
	}
	reset := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
			c.Close()
		}
	}
	tests := []struct {
		name        string
		idempotency bool
		posts       []answer // answers to successive POSTs; the last repeats
		lookup      string   // contacts a lookup finds, as JSON; "" = none; "fail" = 503
		want        crmrpc.Verdict
		wantPosts   int
	}{
		{"created", false, []answer{created}, "", crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "c1"}, 1},
		{"contact rejected", false, []answer{func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"results":[{"external_id":"t-00000","status":"rejected","error":{"code":"invalid_email","message":"bad"}}]}`)
		}}, "", crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: "invalid_email", Message: "bad"}, 1},
		{"400", false, []answer{status(400, "malformed_request", "")}, "", crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: "malformed_request", Message: "m"}, 1},
		{"422", false, []answer{status(422, "idempotency_key_reused", "")}, "", crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: "idempotency_key_reused", Message: "m"}, 1},
		{"429", false, []answer{status(429, "rate_limited", "7")}, "", crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: 7 * time.Second, Code: CodeRateLimited, NotAttempted: true}, 1},
		// The CRM's own Retry-After, too long to wait inside the call: the
		// reader is told it is the CRM's, to wait exactly that.
		{"503 with Retry-After", false, []answer{status(503, "unavailable", "7")}, "", crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: 7 * time.Second, Code: CodeUnavailable, CRMRetryAfter: true}, 1},
		{"503 then created", false, []answer{status(503, "unavailable", ""), created}, "", crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "c1"}, 2},
		{"409 in progress then created", false, []answer{status(409, "request_in_progress", ""), created}, "", crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "c1"}, 2},
		{"500 then found by lookup", false, []answer{status(500, "internal_error", "")}, `[{"id":"c9"},{"id":"c10"}]`, crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "c9"}, 1},
		{"502 then not found, created", false, []answer{status(502, "", ""), created}, "", crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "c1"}, 2},
		{"504 with idempotency resends", true, []answer{status(504, "", ""), created}, "", crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "c1"}, 2},
		{"reset then found", false, []answer{reset}, `[{"id":"c7"}]`, crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "c7"}, 1},
		{"timeout then found", false, []answer{func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			time.Sleep(300 * time.Millisecond)
		}}, `[{"id":"c8"}]`, crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "c8"}, 1},
		{"ambiguous, lookup fails", false, []answer{status(500, "", "")}, "fail", crmrpc.Verdict{Outcome: crmrpc.Retry, Ambiguous: true}, 1},
		{"always 500 with idempotency", true, []answer{status(500, "", "")}, "", crmrpc.Verdict{Outcome: crmrpc.Retry, Ambiguous: true, Code: CodeAmbiguous}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var posts atomic.Int64 // handlers of timed-out requests may still run
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == crmapi.PathLookup {
					if tc.lookup == "fail" {
						status(503, "unavailable", "")(w, r)
						return
					}
					io.Copy(io.Discard, r.Body)
					io.WriteString(w, `{"results":[{"external_id":"t-00000","contacts":`+cmp.Or(tc.lookup, `[]`)+`}]}`)
					return
				}
				n := int(posts.Add(1))
				tc.posts[min(n, len(tc.posts))-1](w, r)
			}))
			defer srv.Close()
			cfg := testConfig(srv.URL)
			cfg.CRMTimeout = 150 * time.Millisecond
			cfg.CallBudget = 3 * time.Second
			cfg.MaxAttempts = 3
			cfg.MaxCallWait = -1 // the table pins the rounds; TestMaxCallWait the cut-off
			cfg.Idempotency = tc.idempotency
			_, addr := startDaemon(t, cfg)
			c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
			vs, err := c.Deliver(context.Background(), makeRecords("t", 1))
			if err != nil {
				t.Fatal(err)
			}
			got := vs[0]
			if got.Outcome == crmrpc.Retry && got.RetryAfter > 0 && tc.want.RetryAfter == 0 {
				got.RetryAfter = 0 // any positive delay will do
			}
			if tc.want.Code == "" && tc.want.Outcome == crmrpc.Retry {
				got.Code = ""
			}
			if tc.want.Message == "" {
				got.Message = ""
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", vs[0], tc.want)
			}
			if n := int(posts.Load()); n != tc.wantPosts {
				t.Fatalf("got %d POSTs, want %d", n, tc.wantPosts)
			}
		})
	}
}

func TestIdleConnectionsClosed(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 400 * time.Millisecond}})
	cfg := testConfig(url)
	cfg.IdleTimeout = 150 * time.Millisecond
	_, addr := startDaemon(t, cfg)

	// A slow call outlives the idle timeout: it is not idleness.
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	vs, err := c.Deliver(context.Background(), makeRecords("slow", 1))
	if err != nil || vs[0].Outcome != crmrpc.Delivered {
		t.Fatalf("slow call: got %v %+v", err, vs)
	}

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := crmrpc.ClientHandshake(conn, "", time.Now().Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	start := time.Now()
	if _, err := conn.Read(make([]byte, 1)); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("idle connection: got %v after %v, want closed after ~150ms", err, time.Since(start))
	}
}

// A wait after a failure is the caller's, however short, and so is a 429's
// pause longer than MaxCallWait: the call answers Retry with the CRM's
// Retry-After at once instead of sleeping through it.
func TestMaxCallWait(t *testing.T) {
	tests := []struct {
		name      string
		status    int // what the CRM answers every POST, with Retry-After: 1
		maxWait   time.Duration
		wantPosts int
		wantSlept int64 // rounds the call slept before
	}{
		{"a 503, default: answered at once", http.StatusServiceUnavailable, 0, 1, 0},
		{"a 503 within MaxCallWait: answered at once too", http.StatusServiceUnavailable, 5 * time.Second, 1, 0},
		{"a 503, no limit: retried inside the call", http.StatusServiceUnavailable, -1, 3, 2},
		{"a 429, default: answered at once", http.StatusTooManyRequests, 0, 1, 0},
		{"a 429 within MaxCallWait: retried inside the call", http.StatusTooManyRequests, 5 * time.Second, 3, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var posts atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost {
					posts.Add(1)
				}
				w.Header().Set("Retry-After", "1")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				w.Write([]byte(`{"error":{"code":"unavailable","message":"busy"}}`))
			}))
			defer srv.Close()
			cfg := testConfig(srv.URL)
			cfg.CallBudget = 5 * time.Second
			cfg.MaxAttempts = 3
			cfg.MaxCallWait = tc.maxWait
			s, addr := startDaemon(t, cfg)
			c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
			vs, err := c.Deliver(context.Background(), makeRecords("w", 3))
			if err != nil {
				t.Fatal(err)
			}
			// A 503's Retry-After is the CRM's word on when it is ready
			// (CRMRetryAfter); a 429's is a pace, which the daemon keeps.
			unavailable := tc.status == http.StatusServiceUnavailable
			for _, v := range vs {
				if v.Outcome != crmrpc.Retry || v.RetryAfter != time.Second || v.Ambiguous || v.CRMRetryAfter != unavailable {
					t.Fatalf("verdict %+v, want Retry after the CRM's 1s, not ambiguous", v)
				}
			}
			if n := int(posts.Load()); n != tc.wantPosts {
				t.Errorf("%d POSTs, want %d", n, tc.wantPosts)
			}
			reason := reasonRateLimited
			if unavailable {
				reason = "unavailable"
			}
			s.met.mu.Lock()
			slept := s.met.retries[reason]
			s.met.mu.Unlock()
			if slept != tc.wantSlept {
				t.Errorf("the call slept before %d rounds, want %d", slept, tc.wantSlept)
			}
		})
	}
}

// A batch answered 503 goes back to the caller at once, however short the
// wait the daemon would make: the call's other batches are delivered, and
// the call does not hold them for a resend, against a CRM with latency.
func TestFailedBatchAnsweredAtOnce(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 80 * time.Millisecond}})
	target, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var posts, refused atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && posts.Add(1) == 1 {
			// The first batch: 503 without Retry-After, so the wait is
			// the daemon's own backoff (140–260 ms), under MaxCallWait.
			refused.Add(1)
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":{"code":"unavailable","message":"busy"}}`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	cfg := testConfig(srv.URL)
	cfg.MaxBatch = 10
	cfg.MaxCallWait = time.Second // a 429's pause would be slept; a failure's is not
	s, addr := startDaemon(t, cfg)
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	vs, err := c.Deliver(context.Background(), makeRecords("f", 50))
	if err != nil {
		t.Fatal(err)
	}
	retry := 0
	for i, v := range vs {
		switch v.Outcome {
		case crmrpc.Delivered:
		case crmrpc.Retry:
			retry++
			if v.Code != CodeUnavailable || v.Ambiguous || v.NotAttempted || v.CRMRetryAfter || v.RetryAfter < minRetryWait || v.RetryAfter > 5*time.Second {
				t.Errorf("record %d: %+v, want Retry after the daemon's backoff, not ambiguous, attempted", i, v)
			}
		default:
			t.Errorf("record %d: %+v", i, v)
		}
	}
	if retry != 10 || refused.Load() != 1 {
		t.Fatalf("%d records answered Retry after %d refused batches, want the refused batch's 10", retry, refused.Load())
	}
	if n := posts.Load(); n != 5 {
		t.Errorf("%d POSTs for 5 batches, want 5: the refused one is the caller's to resend", n)
	}
	if a := crm.Audit(); a.Contacts != 40 {
		t.Errorf("the CRM holds %d contacts, want the 40 of the other batches", a.Contacts)
	}
	s.met.mu.Lock()
	slept := s.met.retries["unavailable"]
	s.met.mu.Unlock()
	if slept != 0 {
		t.Errorf("the call slept before %d rounds, want none", slept)
	}
}
