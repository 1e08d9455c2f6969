package fakecrm_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/fakecrm"
)

// The policy states the bucket exactly: q/w is its rate, and it holds q
// unless crmsync-burst says otherwise. The client's parser reads it back.
func TestRateLimitPolicy(t *testing.T) {
	tests := []struct {
		rate  float64
		burst int
		want  string
	}{
		{40, 40, `"default";q=40;w=1`},
		{40, 0, `"default";q=40;w=1`}, // burst 0: one second's worth
		{10, 20, `"default";q=20;w=2`},
		{0.25, 2, `"default";q=2;w=8`},
		{1, 3, `"default";q=3;w=3`},
		{2.5, 4, `"default";q=5;w=2;crmsync-burst=4`},
		{0.5, 0, `"default";q=1;w=2`}, // burst 0: at least 1
		{40, 5, `"default";q=40;w=1;crmsync-burst=5`},
		{1.0 / 3, 1, `"default";q=1;w=3`},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("rate %v burst %d", tc.rate, tc.burst), func(t *testing.T) {
			srv, err := fakecrm.New(fakecrm.Config{Faults: fakecrm.Faults{Rate: tc.rate, Burst: tc.burst}})
			if err != nil {
				t.Fatal(err)
			}
			_, base := startServer(t, srv)
			a := mustSend(t, "GET", base+crmapi.PathContacts+"?external_id=x", nil)
			if got := a.header.Get(crmapi.HeaderRateLimitPolicy); got != tc.want {
				t.Fatalf("RateLimit-Policy = %q, want %q", got, tc.want)
			}
			l, ok := crmapi.ParseRateLimit(a.header.Values(crmapi.HeaderRateLimitPolicy), a.header.Values(crmapi.HeaderRateLimit))
			burst := tc.burst
			if burst == 0 {
				burst = max(1, int(tc.rate+0.999))
			}
			if !ok || l.Rate() < tc.rate*(1-1e-9) || l.Rate() > tc.rate*(1+1e-9) || l.Burst != burst {
				t.Errorf("parsed back %+v (ok %v, rate %v), want rate %v, burst %d", l, ok, l.Rate(), tc.rate, burst)
			}
		})
	}
}

// RateLimit follows the bucket request by request on a frozen clock, and
// then as it refills: r is the whole tokens left after the request, t the
// seconds until the next one (absent when full), equal to Retry-After on a
// 429. Refusals before the limiter state it without spending; a caller
// without the token learns nothing.
func TestRateLimitRemaining(t *testing.T) {
	srv, err := fakecrm.New(fakecrm.Config{Token: "s3cret", Faults: fakecrm.Faults{Rate: 10, Burst: 3}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now()
	fakecrm.SetClock(srv, func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	_, base := startServer(t, srv)
	auth := []string{"Authorization", "Bearer s3cret"}
	lookup := base + crmapi.PathContacts + "?external_id=x"
	steps := []struct {
		name        string
		before      time.Duration
		method, url string
		headers     []string
		status      int
		want        string // RateLimit; "" for none
		retryAfter  string
	}{
		{"no token", 0, "GET", lookup, nil, 401, "", ""},
		{"full bucket", 0, "GET", lookup, auth, 200, `"default";r=2;t=1`, ""},
		{"wrong method: nothing spent", 0, "DELETE", lookup, auth, 405, "", ""},
		{"second", 0, "POST", base + crmapi.PathContacts, auth, 201, `"default";r=1;t=1`, ""},
		{"last", 0, "GET", lookup, auth, 200, `"default";r=0;t=1`, ""},
		{"empty", 0, "GET", lookup, auth, 429, `"default";r=0;t=1`, "1"},
		{"refilled 2.5", 250 * time.Millisecond, "GET", lookup, auth, 200, `"default";r=1;t=1`, ""},
		{"refilled to the brim", time.Hour, "GET", lookup, auth, 200, `"default";r=2;t=1`, ""},
	}
	for _, st := range steps {
		advance(st.before)
		var body any
		if st.method == "POST" {
			body = ada("R-1")
		}
		a, err := send(t, defaultClient, st.method, st.url, body, st.headers...)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		got := a.header.Get(crmapi.HeaderRateLimit)
		if a.status != st.status || got != st.want || a.header.Get(crmapi.HeaderRetryAfter) != st.retryAfter {
			t.Errorf("%s: %d RateLimit=%q Retry-After=%q, want %d %q %q", st.name, a.status, got,
				a.header.Get(crmapi.HeaderRetryAfter), st.status, st.want, st.retryAfter)
		}
		if (a.header.Get(crmapi.HeaderRateLimitPolicy) != "") != (st.want != "") {
			t.Errorf("%s: RateLimit-Policy %q beside RateLimit %q", st.name, a.header.Get(crmapi.HeaderRateLimitPolicy), got)
		}
	}

	// Down: stated as it is, nothing spent; full, so no t.
	advance(time.Hour)
	srv.SetFaults(fakecrm.Faults{Rate: 10, Burst: 3, Down: true})
	a := mustSend(t, "GET", lookup, nil, auth...)
	if a.status != 503 || a.header.Get(crmapi.HeaderRateLimit) != `"default";r=3` {
		t.Errorf("down: %d RateLimit=%q, want 503 %q", a.status, a.header.Get(crmapi.HeaderRateLimit), `"default";r=3`)
	}
	// Silent: limited, but nothing stated.
	srv.SetFaults(fakecrm.Faults{Rate: 10, Burst: 3, SilentRate: true})
	a = mustSend(t, "GET", lookup, nil, auth...)
	if a.status != 200 || a.header.Get(crmapi.HeaderRateLimit) != "" || a.header.Get(crmapi.HeaderRateLimitPolicy) != "" {
		t.Errorf("silent: %d RateLimit=%q RateLimit-Policy=%q, want 200 and neither", a.status, a.header.Get(crmapi.HeaderRateLimit), a.header.Get(crmapi.HeaderRateLimitPolicy))
	}
	// No rate, no fields.
	srv.SetFaults(fakecrm.Faults{})
	a = mustSend(t, "GET", lookup, nil, auth...)
	if a.header.Get(crmapi.HeaderRateLimit) != "" || a.header.Get(crmapi.HeaderRateLimitPolicy) != "" {
		t.Errorf("unlimited: RateLimit=%q RateLimit-Policy=%q, want neither", a.header.Get(crmapi.HeaderRateLimit), a.header.Get(crmapi.HeaderRateLimitPolicy))
	}
}
