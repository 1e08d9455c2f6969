package crmapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestParseRateLimit(t *testing.T) {
	sec := time.Second
	tests := []struct {
		name          string
		policy, limit []string
		want          RateLimit
		ok            bool
	}{
		{"the draft's example", []string{`"default";q=100;w=10`}, []string{`"default";r=50;t=30`},
			RateLimit{Policy: "default", Quota: 100, Window: 10 * sec, Burst: 100, Remaining: 50, Reset: 30 * sec}, true},
		{"fakecrm at 40/s", []string{`"default";q=40;w=1`}, []string{`"default";r=17;t=1`},
			RateLimit{Policy: "default", Quota: 40, Window: sec, Burst: 40, Remaining: 17, Reset: sec}, true},
		{"our burst parameter", []string{`"default";q=5;w=2;crmsync-burst=4`}, []string{`"default";r=3`},
			RateLimit{Policy: "default", Quota: 5, Window: 2 * sec, Burst: 4, Remaining: 3}, true},
		{"a token name, as drafts before -08 had", []string{`default;q=10;w=1`}, []string{`default;r=0;t=1`},
			RateLimit{Policy: "default", Quota: 10, Window: sec, Burst: 10, Remaining: 0, Reset: sec}, true},
		{"whitespace, comments, a partition key, other parameters", []string{`  "peruser"; q=60; w=60;pk=:cHsdsRa894==:;acme-x="y";flag  `},
			[]string{`"peruser";r=12;t=5;pk=:cHsdsRa894==:;comment="hi \"there\""`},
			RateLimit{Policy: "peruser", Quota: 60, Window: 60 * sec, Burst: 60, Remaining: 12, Reset: 5 * sec}, true},
		// Several policies: the least allowance left wins — 40/s with a
		// quarter left (10/s) against a day's 100000 with 90% left (1/s).
		{"the most restrictive of several", []string{`"burst";q=40;w=1, "daily";q=100000;w=86400`},
			[]string{`"burst";r=10;t=1, "daily";r=90000;t=3600`},
			RateLimit{Policy: "daily", Quota: 100000, Window: 86400 * sec, Burst: 100000, Remaining: 90000, Reset: 3600 * sec}, true},
		{"an empty policy is most restrictive", []string{`"a";q=40;w=1`, `"b";q=1000;w=60`},
			[]string{`"a";r=39`, `"b";r=0;t=7`},
			RateLimit{Policy: "b", Quota: 1000, Window: 60 * sec, Burst: 1000, Remaining: 0, Reset: 7 * sec}, true},
		{"fields over several lines", []string{`"a";q=10;w=1`, `"b";q=20;w=1`}, []string{`"b";r=2`},
			RateLimit{Policy: "b", Quota: 20, Window: sec, Burst: 20, Remaining: 2}, true},
		{"remaining above the quota is capped", []string{`"default";q=10;w=1`}, []string{`"default";r=99`},
			RateLimit{Policy: "default", Quota: 10, Window: sec, Burst: 10, Remaining: 10}, true},
		{"an item without r is skipped, not the field", []string{`"a";q=10;w=1,"b";q=10;w=1`}, []string{`"a";t=1, "b";r=4`},
			RateLimit{Policy: "b", Quota: 10, Window: sec, Burst: 10, Remaining: 4}, true},
		{"a bytes policy is not ours to pace", []string{`"bw";q=65535;qu="content-bytes";w=10, "req";q=10;w=1;qu="requests"`},
			[]string{`"bw";r=0, "req";r=5`},
			RateLimit{Policy: "req", Quota: 10, Window: sec, Burst: 10, Remaining: 5}, true},

		{"no fields", nil, nil, RateLimit{}, false},
		{"policy only", []string{`"default";q=40;w=1`}, nil, RateLimit{}, false},
		{"remaining only", nil, []string{`"default";r=3`}, RateLimit{}, false},
		{"no window: no rate to pace at", []string{`"default";q=40`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"zero window", []string{`"default";q=40;w=0`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"decimal quota", []string{`"default";q=40.5;w=1`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"string quota", []string{`"default";q="40";w=1`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"negative remaining", []string{`"default";q=40;w=1`}, []string{`"default";r=-1`}, RateLimit{}, false},
		{"no such policy", []string{`"default";q=40;w=1`}, []string{`"other";r=3`}, RateLimit{}, false},
		{"garbage policy field", []string{`default q=40 w=1`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"garbage limit field", []string{`"default";q=40;w=1`}, []string{`limit=40, remaining=3`}, RateLimit{}, false},
		{"the old draft-06 numbers", []string{`100;w=60`}, []string{`50`}, RateLimit{}, false},
		{"unterminated string", []string{`"default;q=40;w=1`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"trailing comma", []string{`"default";q=40;w=1,`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"space before a parameter", []string{`"default" ;q=40;w=1`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"upper-case key", []string{`"default";Q=40;W=1`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"integer too long", []string{`"default";q=1234567890123456;w=1`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"one bad line spoils the field", []string{`"default";q=40;w=1`, `;;`}, []string{`"default";r=3`}, RateLimit{}, false},
		{"an inner list is valid but no policy", []string{`("a" "b");q=1;w=1, "default";q=40;w=1`}, []string{`"default";r=8`},
			RateLimit{Policy: "default", Quota: 40, Window: sec, Burst: 40, Remaining: 8}, true},
		{"non-ASCII", []string{"\"d\u00e9faut\";q=40;w=1"}, []string{`"default";r=3`}, RateLimit{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ParseRateLimit(tc.policy, tc.limit)
			if ok != tc.ok || got != tc.want {
				t.Errorf("ParseRateLimit(%q, %q) = %+v, %v; want %+v, %v", tc.policy, tc.limit, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestRateLimitRate(t *testing.T) {
	if r := (RateLimit{Quota: 5, Window: 2 * time.Second}).Rate(); r != 2.5 {
		t.Errorf("rate = %v, want 2.5", r)
	}
}

// Every answer with the fields reaches Limits, the refused ones too, before
// the call returns; answers without them, or with garbage, do not.
func TestClientReportsRateLimits(t *testing.T) {
	answers := []struct {
		status        int
		policy, limit string
	}{
		{200, `"default";q=40;w=1`, `"default";r=39`},
		{429, `"default";q=40;w=1`, `"default";r=0;t=1`},
		{200, "", ""},
		{200, `"default";q=40;w=1`, `r=`},
	}
	var i int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := answers[i]
		i++
		if a.policy != "" {
			w.Header().Set(HeaderRateLimitPolicy, a.policy)
			w.Header().Set(HeaderRateLimit, a.limit)
		}
		w.Header().Set("Content-Type", "application/json")
		if a.status == 429 {
			w.Header().Set(HeaderRetryAfter, "1")
			w.WriteHeader(429)
			w.Write([]byte(`{"error":{"code":"rate_limited","message":"slow down"}}`))
			return
		}
		w.Write([]byte(`{"contacts":[]}`))
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, "", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	c.Limits = func(l RateLimit) { got = append(got, l.Remaining) }
	for range answers {
		err := c.Ping(context.Background())
		if len(got) > 0 && i == 2 && ClassOf(err) != ClassRateLimited {
			t.Errorf("the 429 answered %v", err)
		}
	}
	if len(got) != 2 || got[0] != 39 || got[1] != 0 {
		t.Errorf("Limits saw remaining %v, want [39 0]", got)
	}
}

// Whatever a CRM or a middlebox sends, parsing neither panics nor yields
// a policy that cannot be paced at.
func FuzzParseRateLimit(f *testing.F) {
	f.Add(`"default";q=40;w=1`, `"default";r=17;t=1`)
	f.Add(`"a";q=5;w=2;crmsync-burst=4, ("x" y);z`, `"a";r=3;pk=:AA==:, b;r=?1`)
	f.Add(`%"x";q=1;w=1`, `@12;r=1`)
	f.Fuzz(func(t *testing.T, policy, limit string) {
		l, ok := ParseRateLimit([]string{policy}, []string{limit})
		if ok && (l.Window <= 0 || l.Burst <= 0 || l.Remaining < 0 || l.Remaining > l.Burst || l.Quota < 0) {
			t.Errorf("ParseRateLimit(%q, %q) = %+v", policy, limit, l)
		}
	})
}
