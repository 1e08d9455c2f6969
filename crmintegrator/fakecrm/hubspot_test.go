package fakecrm_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
)

const hsToken = "pat-na1-test"

var hsAuth = []string{"Authorization", "Bearer " + hsToken}

// startHubSpot serves the HubSpot API with a token and no search lag
// unless cfg says otherwise.
func startHubSpot(t *testing.T, cfg fakecrm.Config) (*fakecrm.Server, string) {
	t.Helper()
	cfg.API, cfg.Token = fakecrm.APIHubSpot, hsToken
	if cfg.HubSpot.SearchLag == 0 {
		cfg.HubSpot.SearchLag = -1
	}
	return fakecrmtest.Start(t, cfg)
}

// clock is a settable clock for fakecrm.SetClock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type hsErr struct {
	Status        string              `json:"status"`
	Message       string              `json:"message"`
	CorrelationID string              `json:"correlationId"`
	Category      string              `json:"category"`
	ErrorType     string              `json:"errorType"`
	PolicyName    string              `json:"policyName"`
	Context       map[string][]string `json:"context"`
	Errors        []struct {
		Code    string              `json:"code"`
		Context map[string][]string `json:"context"`
	} `json:"errors"`
}

type hsObj struct {
	ID         string             `json:"id"`
	Properties map[string]*string `json:"properties"`
	CreatedAt  string             `json:"createdAt"`
	UpdatedAt  string             `json:"updatedAt"`
	Archived   *bool              `json:"archived"`
	New        *bool              `json:"new"`
}

type hsBatch struct {
	Status    string  `json:"status"`
	Results   []hsObj `json:"results"`
	NumErrors int     `json:"numErrors"`
	Errors    []struct {
		Status   string              `json:"status"`
		Category string              `json:"category"`
		Message  string              `json:"message"`
		Context  map[string][]string `json:"context"`
	} `json:"errors"`
	StartedAt   string `json:"startedAt"`
	CompletedAt string `json:"completedAt"`
}

const (
	pCreate = fakecrm.HubSpotPathContacts + "/batch/create"
	pUpsert = fakecrm.HubSpotPathContacts + "/batch/upsert"
	pUpdate = fakecrm.HubSpotPathContacts + "/batch/update"
	pRead   = fakecrm.HubSpotPathContacts + "/batch/read"
	pSearch = fakecrm.HubSpotPathContacts + "/search"
)

func createBody(props ...map[string]string) map[string]any {
	in := make([]map[string]any, len(props))
	for i, p := range props {
		in[i] = map[string]any{"properties": p}
	}
	return map[string]any{"inputs": in}
}

func manyInputs(n int) map[string]any {
	in := make([]map[string]any, n)
	for i := range in {
		in[i] = map[string]any{"idProperty": "external_id", "id": fmt.Sprint("K-", i), "properties": map[string]string{}}
	}
	return map[string]any{"inputs": in}
}

// TestHubSpotEndpoints walks one portal through every endpoint and error,
// in order: each case sees what the earlier ones wrote.
func TestHubSpotEndpoints(t *testing.T) {
	_, base := startHubSpot(t, fakecrm.Config{HubSpot: fakecrm.HubSpotConfig{Properties: []string{"company", "created_at:datetime", "score:number", "birthday:date"}}})
	cases := []struct {
		name, method, path string
		body               any
		status             int
		want               []string // substrings of the body
		category           string
	}{
		{"create", "POST", pCreate, createBody(map[string]string{"email": "ada@example.com", "firstname": "Ada", "external_id": "C-1", "created_at": "2024-01-05T10:00:00Z"}),
			201, []string{`"id":"1001"`, `"hs_object_id":"1001"`, `"archived":false`, `"status":"COMPLETE"`, `"created_at":"2024-01-05T10:00:00.000Z"`, `"createdate":"`, `"lastmodifieddate":"`}, ""},
		{"create existing email, other case", "POST", pCreate, createBody(map[string]string{"email": "ADA@example.com"}),
			409, []string{`"message":"Contact already exists. Existing ID: 1001"`}, "CONFLICT"},
		{"create existing id property value", "POST", pCreate, createBody(map[string]string{"email": "other@example.com", "external_id": "C-1"}),
			409, []string{`Existing ID: 1001`}, "CONFLICT"},
		{"create two inputs with one email", "POST", pCreate, createBody(map[string]string{"email": "twin@example.com"}, map[string]string{"email": "twin@example.com"}),
			409, []string{`Contact already exists. Existing ID: `}, "CONFLICT"},
		{"unknown property", "POST", pCreate, createBody(map[string]string{"email": "x@example.com", "shoe_size": "9"}),
			400, []string{`"message":"Property values were not valid: [{\"isValid\":false,\"message\":\"Property \\\"shoe_size\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"shoe_size\"`, `"code":"PROPERTY_DOESNT_EXIST"`, `"propertyName":["shoe_size"]`}, "VALIDATION_ERROR"},
		{"invalid email", "POST", pCreate, createBody(map[string]string{"email": "example.lcom"}),
			400, []string{`Email address example.lcom is invalid`, `INVALID_EMAIL`}, "VALIDATION_ERROR"},
		{"datetime free text", "POST", pCreate, createBody(map[string]string{"created_at": "last tuesday"}),
			400, []string{`last tuesday was not a valid long.`, `INVALID_LONG`}, "VALIDATION_ERROR"},
		{"number free text", "POST", pCreate, createBody(map[string]string{"score": "lots"}),
			400, []string{`INVALID_LONG`}, "VALIDATION_ERROR"},
		{"date not at midnight", "POST", pCreate, createBody(map[string]string{"birthday": "1521225089103"}),
			400, []string{`1521225089103 is at 18:31:29.103 UTC, not midnight!`, `INVALID_DATE`}, "VALIDATION_ERROR"},
		{"over 100 inputs", "POST", pUpsert, manyInputs(101),
			400, []string{`"message":"The maximum number of inputs supported in a batch is 100. Please reduce the number of items and try again"`}, "VALIDATION_ERROR"},
		{"malformed JSON", "POST", pCreate, `{"inputs": [`,
			400, []string{`Invalid input JSON on line 1, column `}, "VALIDATION_ERROR"},
		{"upsert updates and creates", "POST", pUpsert, map[string]any{"inputs": []map[string]any{
			{"idProperty": "external_id", "id": "C-1", "properties": map[string]string{"lastname": "Lovelace"}},
			{"idProperty": "external_id", "id": "C-2", "properties": map[string]string{"email": "grace@example.com"}},
		}}, 200, []string{`"id":"1001"`, `"new":false`, `"lastname":"Lovelace"`, `"id":"1002"`, `"new":true`, `"external_id":"C-2"`}, ""},
		{"upsert by a non-unique property", "POST", pUpsert, map[string]any{"inputs": []map[string]any{{"idProperty": "firstname", "id": "Ada", "properties": map[string]string{}}}},
			400, []string{`Unable to perform update/upsert by non-unique 0-1 property firstname`}, "VALIDATION_ERROR"},
		{"upsert with a repeated id", "POST", pUpsert, map[string]any{"inputs": []map[string]any{
			{"idProperty": "external_id", "id": "C-9", "properties": map[string]string{}}, {"idProperty": "external_id", "id": "C-9", "properties": map[string]string{}}}},
			400, []string{`Duplicate IDs found in batch input: [C-9]. IDs must be unique`}, "VALIDATION_ERROR"},
		{"update by record id", "POST", pUpdate, map[string]any{"inputs": []map[string]any{{"id": "1002", "properties": map[string]string{"firstname": "Grace"}}, {"id": "999999", "properties": map[string]string{}}}},
			207, []string{`"firstname":"Grace"`, `"category":"OBJECT_NOT_FOUND"`, `"ids":["999999"]`}, ""},
		{"update to another contact's email", "POST", pUpdate, map[string]any{"inputs": []map[string]any{{"id": "1002", "properties": map[string]string{"email": "ada@example.com"}}}},
			409, []string{`Existing ID: 1001`}, "CONFLICT"},
		{"read by id property", "POST", pRead, map[string]any{"idProperty": "external_id", "inputs": []map[string]string{{"id": "C-1"}, {"id": "C-404"}}, "properties": []string{"email", "company"}},
			207, []string{`"email":"ada@example.com"`, `"company":null`, `"hs_object_id":"1001"`, `"numErrors":1`, `"message":"Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid."`, `"ids":["C-404"]`}, ""},
		{"read all found", "POST", pRead, map[string]any{"inputs": []map[string]string{{"id": "1001"}}, "properties": []string{"lastname"}},
			200, []string{`"lastname":"Lovelace"`}, ""},
		{"search EQ", "POST", pSearch, map[string]any{"filterGroups": []any{map[string]any{"filters": []any{map[string]any{"propertyName": "email", "operator": "EQ", "value": "GRACE@example.com"}}}}},
			200, []string{`"total":1`, `"id":"1002"`, `"lastname":null`}, ""},
		{"search IN with paging", "POST", pSearch, map[string]any{"filterGroups": []any{map[string]any{"filters": []any{map[string]any{"propertyName": "external_id", "operator": "IN", "values": []string{"C-1", "C-2"}}}}}, "limit": 1, "properties": []string{"external_id"}},
			200, []string{`"total":2`, `"external_id":"C-1"`, `"paging":{"next":{"after":"1"}}`}, ""},
		{"search second page", "POST", pSearch, map[string]any{"filterGroups": []any{map[string]any{"filters": []any{map[string]any{"propertyName": "external_id", "operator": "IN", "values": []string{"C-1", "C-2"}}}}}, "limit": 1, "after": "1"},
			200, []string{`"total":2`, `"id":"1002"`}, ""},
		{"search limit over 200", "POST", pSearch, map[string]any{"limit": 201}, 400, nil, "VALIDATION_ERROR"},
		{"get by id", "GET", fakecrm.HubSpotPathContacts + "/1001", nil, 200, []string{`"id":"1001"`, `"email":"ada@example.com"`, `"archived":false`}, ""},
		{"get by id property", "GET", fakecrm.HubSpotPathContacts + "/C-2?idProperty=external_id&properties=email,external_id", nil, 200, []string{`"id":"1002"`, `"external_id":"C-2"`}, ""},
		{"get missing", "GET", fakecrm.HubSpotPathContacts + "/424242", nil, 404, []string{`"message":"resource not found"`}, "OBJECT_NOT_FOUND"},
		{"get non-numeric id", "GET", fakecrm.HubSpotPathContacts + "/C-1", nil, 404, []string{`"message":"Object not found.  objectId are usually numeric."`, `"context":{"id":["C-1"]}`}, "OBJECT_NOT_FOUND"},
		{"properties", "GET", fakecrm.HubSpotPathProperties, nil, 200, []string{`"name":"email"`, `"name":"firstname"`, `"name":"lastname"`, `"name":"phone"`, `"name":"score","label":"score","type":"number"`, `"name":"created_at","label":"created_at","type":"datetime"`}, ""},
		{"id property", "GET", fakecrm.HubSpotPathProperties + "/external_id", nil, 200, []string{`"name":"external_id"`, `"type":"string"`, `"fieldType":"text"`, `"groupName":"contactinformation"`, `"hasUniqueValue":true`}, ""},
		{"unknown property definition", "GET", fakecrm.HubSpotPathProperties + "/shoe_size", nil, 404, nil, "OBJECT_NOT_FOUND"},
		{"wrong method", "GET", pCreate, nil, 405, nil, "VALIDATION_ERROR"},
		{"unknown path", "GET", "/crm/v3/objects/deals/1", nil, 404, nil, ""},
		{"generic API is not served", "GET", "/v1/contacts?external_id=C-1", nil, 404, nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := mustSend(t, tc.method, base+tc.path, tc.body, hsAuth...)
			if a.status != tc.status {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.status)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(a.body), w) {
					t.Errorf("body %s\nlacks %s", a.body, w)
				}
			}
			if ct := a.header.Get("Content-Type"); len(a.body) > 0 && ct != "application/json;charset=utf-8" {
				t.Errorf("Content-Type %q, want application/json;charset=utf-8", ct)
			}
			cid := a.header.Get("X-HubSpot-Correlation-Id")
			if cid == "" {
				t.Error("no X-HubSpot-Correlation-Id")
			}
			if a.status >= 400 && len(a.body) > 0 {
				e := decode[hsErr](t, a)
				if e.Status != "error" || e.CorrelationID != cid || e.Category != tc.category {
					t.Errorf("error %s: want status error, correlationId %s, category %q", a.body, cid, tc.category)
				}
			}
		})
	}
}

func TestHubSpotShapes(t *testing.T) {
	_, base := startHubSpot(t, fakecrm.Config{})
	a := mustSend(t, "POST", base+pCreate, createBody(map[string]string{"email": "a@example.com", "external_id": "K"}), hsAuth...)
	b := decode[hsBatch](t, a)
	if len(b.Results) != 1 {
		t.Fatalf("got %s", a.body)
	}
	r := b.Results[0]
	for _, ts := range []string{r.CreatedAt, r.UpdatedAt, b.StartedAt, b.CompletedAt} {
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", ts); err != nil {
			t.Errorf("time %q is not ISO-8601 with milliseconds and Z", ts)
		}
	}
	if r.Archived == nil || *r.Archived || *r.Properties["hs_object_id"] != r.ID || *r.Properties["createdate"] != r.CreatedAt ||
		*r.Properties["lastmodifieddate"] != r.UpdatedAt || r.New != nil {
		t.Errorf("result %s: want archived false, hs_object_id = id, createdate = createdAt, lastmodifieddate = updatedAt, no new", a.body)
	}
}

func TestHubSpotObjectWriteTraceID(t *testing.T) {
	srv, base := startHubSpot(t, fakecrm.Config{})
	in := func(trace, email string) map[string]any {
		m := map[string]any{"properties": map[string]string{"email": email}}
		if trace != "" {
			m["objectWriteTraceId"] = trace
		}
		return m
	}
	t.Run("traced: 207 names the failing input", func(t *testing.T) {
		a := mustSend(t, "POST", base+pCreate, map[string]any{"inputs": []any{in("t-1", "ok@example.com"), in("t-2", "not-an-email")}}, hsAuth...)
		b := decode[hsBatch](t, a)
		if a.status != 207 || len(b.Results) != 1 || b.NumErrors != 1 || b.Errors[0].Category != "VALIDATION_ERROR" ||
			strings.Join(b.Errors[0].Context["objectWriteTraceId"], ",") != "t-2" || !strings.Contains(b.Errors[0].Message, "INVALID_EMAIL") {
			t.Fatalf("got %d %s, want 207 with one result and one error for t-2", a.status, a.body)
		}
	})
	t.Run("untraced: one bad input fails the batch", func(t *testing.T) {
		before := srv.Audit().Contacts
		a := mustSend(t, "POST", base+pCreate, map[string]any{"inputs": []any{in("", "ok2@example.com"), in("", "not-an-email")}}, hsAuth...)
		if a.status != 400 || srv.Audit().Contacts != before {
			t.Fatalf("got %d %s and %d contacts, want 400 and %d", a.status, a.body, srv.Audit().Contacts, before)
		}
	})
	t.Run("traced conflict still fails the batch", func(t *testing.T) {
		a := mustSend(t, "POST", base+pCreate, map[string]any{"inputs": []any{in("t-3", "new@example.com"), in("t-4", "ok@example.com")}}, hsAuth...)
		if a.status != 409 || decode[hsErr](t, a).Category != "CONFLICT" {
			t.Fatalf("got %d %s, want 409 CONFLICT", a.status, a.body)
		}
	})
}

func TestHubSpotAuth(t *testing.T) {
	_, base := startHubSpot(t, fakecrm.Config{})
	for _, tc := range []struct {
		name    string
		headers []string
		status  int
	}{
		{"none", nil, 401},
		{"wrong", []string{"Authorization", "Bearer pat-na1-wrong"}, 401},
		{"right", hsAuth, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := mustSend(t, "GET", base+fakecrm.HubSpotPathProperties, nil, tc.headers...)
			if a.status != tc.status {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.status)
			}
			if tc.status != 401 {
				return
			}
			e := decode[hsErr](t, a)
			if e.Category != "INVALID_AUTHENTICATION" || !strings.HasPrefix(e.Message, "Authentication credentials not found.") || e.CorrelationID == "" {
				t.Errorf("body %s", a.body)
			}
		})
	}
}

func TestHubSpotRateLimits(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}
	srv, err := fakecrm.New(fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Window: 3, Daily: 6, SearchLag: -1}})
	if err != nil {
		t.Fatal(err)
	}
	fakecrm.SetClock(srv, clk.now)
	_, base := startServer(t, srv)
	get := func() answer { return mustSend(t, "GET", base+fakecrm.HubSpotPathProperties+"/email", nil) }
	steps := []struct {
		name             string
		advance          time.Duration
		search           bool
		status           int
		remaining, daily string // "" means the header is absent
		policy           string
	}{
		{"first", 0, false, 200, "2", "5", ""},
		{"second", 0, false, 200, "1", "4", ""},
		{"third", 0, false, 200, "0", "3", ""},
		{"window full", time.Second, false, 429, "0", "2", "TEN_SECONDLY_ROLLING"},
		{"search is exempt from the window", 0, true, 200, "", "1", ""},
		{"window rolled", 9 * time.Second, false, 200, "2", "0", ""},
		{"daily exhausted", 0, false, 429, "", "0", "DAILY"},
		{"daily exhausted for search", 0, true, 429, "", "0", "DAILY"},
	}
	for _, st := range steps {
		clk.add(st.advance)
		var a answer
		if st.search {
			a = mustSend(t, "POST", base+pSearch, map[string]any{})
		} else {
			a = get()
		}
		if a.status != st.status {
			t.Fatalf("%s: got %d %s, want %d", st.name, a.status, a.body, st.status)
		}
		h := a.header
		if got := h.Get("X-HubSpot-RateLimit-Remaining"); got != st.remaining {
			t.Errorf("%s: Remaining %q, want %q", st.name, got, st.remaining)
		}
		if got := h.Get("X-HubSpot-RateLimit-Daily-Remaining"); got != st.daily {
			t.Errorf("%s: Daily-Remaining %q, want %q", st.name, got, st.daily)
		}
		if h.Get("X-HubSpot-RateLimit-Daily") != "6" {
			t.Errorf("%s: Daily %q, want 6", st.name, h.Get("X-HubSpot-RateLimit-Daily"))
		}
		if st.remaining != "" && (h.Get("X-HubSpot-RateLimit-Max") != "3" || h.Get("X-HubSpot-RateLimit-Interval-Milliseconds") != "10000") {
			t.Errorf("%s: Max %q Interval %q, want 3 and 10000", st.name, h.Get("X-HubSpot-RateLimit-Max"), h.Get("X-HubSpot-RateLimit-Interval-Milliseconds"))
		}
		if st.search && h.Get("X-HubSpot-RateLimit-Max") != "" {
			t.Errorf("%s: search answers carry burst headers", st.name)
		}
		if h.Get("Retry-After") != "" {
			t.Errorf("%s: Retry-After %q; HubSpot sends none", st.name, h.Get("Retry-After"))
		}
		if st.status == 429 {
			e := decode[hsErr](t, a)
			if e.ErrorType != "RATE_LIMIT" || e.PolicyName != st.policy || e.Category != "" || e.Status != "error" {
				t.Errorf("%s: body %s, want errorType RATE_LIMIT, policyName %s, no category", st.name, a.body, st.policy)
			}
		}
	}
	if got := srv.Audit().RateLimited; got != 3 {
		t.Errorf("audit rate_limited %d, want 3", got)
	}
}

func TestHubSpotSearchLag(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}
	srv, err := fakecrm.New(fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{SearchLag: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	fakecrm.SetClock(srv, clk.now)
	_, base := startServer(t, srv)
	mustSend(t, "POST", base+pCreate, createBody(map[string]string{"email": "lag@example.com", "external_id": "L-1"}))
	search := map[string]any{"filterGroups": []any{map[string]any{"filters": []any{map[string]any{"propertyName": "external_id", "operator": "EQ", "value": "L-1"}}}}}
	for _, st := range []struct {
		advance time.Duration
		total   string
	}{{0, `"total":0`}, {1999 * time.Millisecond, `"total":0`}, {time.Millisecond, `"total":1`}} {
		clk.add(st.advance)
		if a := mustSend(t, "POST", base+pSearch, search); a.status != 200 || !strings.Contains(string(a.body), st.total) {
			t.Errorf("after %v more: got %d %s, want %s", st.advance, a.status, a.body, st.total)
		}
	}
	// batch/read is not lagged: it is how a client resolves its writes.
	if a := mustSend(t, "POST", base+pRead, map[string]any{"idProperty": "external_id", "inputs": []map[string]string{{"id": "L-1"}}, "properties": []string{}}); a.status != 200 {
		t.Errorf("batch/read right after a write: %d %s, want 200", a.status, a.body)
	}
}

func TestHubSpotFaults(t *testing.T) {
	write := func(base, key string) (answer, error) {
		return send(t, freshClient(5*time.Second), "POST", base+pUpsert, map[string]any{"inputs": []map[string]any{
			{"idProperty": "external_id", "id": key, "properties": map[string]string{}}}}, hsAuth...)
	}
	for _, tc := range []struct {
		name    string
		faults  fakecrm.Faults
		status  int // 0: the connection drops
		created int64
	}{
		{"fail-rate", fakecrm.Faults{FailRate: 1}, 503, 0},
		{"down", fakecrm.Faults{Down: true}, 503, 0},
		{"ambiguous 500", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "500"}, 500, 1},
		{"ambiguous 502", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "502"}, 502, 1},
		{"ambiguous 504", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "504"}, 504, 1},
		{"ambiguous reset", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "reset"}, 0, 1},
		{"ambiguous hang", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "hang", Hang: 10 * time.Millisecond}, 0, 1},
		{"latency", fakecrm.Faults{Latency: 50 * time.Millisecond}, 200, 1},
		{"rate", fakecrm.Faults{Rate: 0.001, Burst: 1}, 200, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, base := startHubSpot(t, fakecrm.Config{Faults: tc.faults})
			start := time.Now()
			a, err := write(base, "F-1")
			switch {
			case tc.status == 0 && err == nil:
				t.Fatalf("got %d %s, want a dropped connection", a.status, a.body)
			case tc.status != 0 && (err != nil || a.status != tc.status):
				t.Fatalf("got %d %s %v, want %d", a.status, a.body, err, tc.status)
			}
			if tc.status >= 500 {
				if e := decode[hsErr](t, a); e.Status != "error" || e.Category == "" || e.CorrelationID == "" {
					t.Errorf("fault body %s is not HubSpot's shape", a.body)
				}
			}
			if got := srv.Audit().Creates; got != tc.created {
				t.Errorf("created %d, want %d", got, tc.created)
			}
			if tc.faults.Latency > 0 && time.Since(start) < tc.faults.Latency {
				t.Errorf("answered in %v, before the latency %v", time.Since(start), tc.faults.Latency)
			}
			if tc.faults.Rate > 0 {
				if a, _ := write(base, "F-2"); a.status != 429 || decode[hsErr](t, a).PolicyName != "TEN_SECONDLY_ROLLING" {
					t.Errorf("second write under -rate: %d %s, want 429 TEN_SECONDLY_ROLLING", a.status, a.body)
				}
			}
		})
	}
	t.Run("lookup latency on reads", func(t *testing.T) {
		_, base := startHubSpot(t, fakecrm.Config{Faults: fakecrm.Faults{LookupLatency: 60 * time.Millisecond}})
		start := time.Now()
		mustSend(t, "POST", base+pSearch, map[string]any{}, hsAuth...)
		mustSend(t, "POST", base+pRead, map[string]any{"inputs": []any{}}, hsAuth...)
		if d := time.Since(start); d < 120*time.Millisecond {
			t.Errorf("search and read took %v, want at least 120ms", d)
		}
	})
	t.Run("seed gives the same faults to the k-th write", func(t *testing.T) {
		run := func() string {
			_, base := startHubSpot(t, fakecrm.Config{Seed: 42, Faults: fakecrm.Faults{FailRate: 0.3, AmbiguousRate: 0.3, AmbiguousModes: "500"}})
			var got []string
			for i := range 30 {
				a, _ := write(base, fmt.Sprint("S-", i))
				got = append(got, fmt.Sprint(a.status))
			}
			return strings.Join(got, ",")
		}
		if a, b := run(), run(); a != b || !strings.Contains(a, "503") || !strings.Contains(a, "500") {
			t.Errorf("two runs with one seed: %s and %s, want equal with 503s and 500s", a, b)
		}
	})
}

// TestHubSpotAudit checks the audit's duplicate counting under
// concurrency: HubSpot refuses a second contact with an id property's
// value, so racing creates leave one contact and no duplicate.
func TestHubSpotAudit(t *testing.T) {
	srv, base := startHubSpot(t, fakecrm.Config{})
	const racers = 8
	var wg sync.WaitGroup
	statuses := make([]int, racers*2)
	for i := range racers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			a, _ := send(t, defaultClient, "POST", base+pCreate, createBody(map[string]string{"external_id": "D-1", "email": fmt.Sprintf("r%d@example.com", i)}), hsAuth...)
			statuses[i] = a.status
		}()
		go func() {
			defer wg.Done()
			a, _ := send(t, defaultClient, "POST", base+pUpsert, map[string]any{"inputs": []map[string]any{
				{"idProperty": "external_id", "id": "D-2", "properties": map[string]string{"firstname": fmt.Sprint(i)}}}}, hsAuth...)
			statuses[racers+i] = a.status
		}()
	}
	wg.Wait()
	created := 0
	for i, s := range statuses[:racers] {
		switch s {
		case 201:
			created++
		case 409:
		default:
			t.Errorf("create %d: status %d, want 201 or 409", i, s)
		}
	}
	for i, s := range statuses[racers:] {
		if s != 200 {
			t.Errorf("upsert %d: status %d, want 200", i, s)
		}
	}
	mustSend(t, "POST", base+pCreate, createBody(map[string]string{"email": "nokey@example.com"}), hsAuth...)
	a := srv.Audit()
	if created != 1 || a.Contacts != 3 || a.DistinctExternalIDs != 2 || a.DuplicateContacts != 0 || a.ContactsWithoutKey != 1 || a.Creates != 3 {
		t.Errorf("created %d, audit %+v: want 1 created, 3 contacts, 2 distinct, 0 duplicates, 1 without key", created, a)
	}
	var list struct {
		Contacts []struct {
			ExternalID string `json:"external_id"`
			ID         string `json:"id"`
		} `json:"contacts"`
	}
	resp := mustSend(t, "GET", base+fakecrm.PathAdminContacts+"?external_id=D-2", nil)
	if err := json.Unmarshal(resp.body, &list); err != nil || len(list.Contacts) != 1 || list.Contacts[0].ID == "" {
		t.Errorf("admin contacts for D-2: %s", resp.body)
	}
	// Clearing the id property's value ("" clears) leaves a contact without a key.
	if a := mustSend(t, "POST", base+pUpdate, map[string]any{"inputs": []map[string]any{
		{"idProperty": "external_id", "id": "D-2", "properties": map[string]string{"external_id": ""}}}}, hsAuth...); a.status != 200 {
		t.Fatalf("clearing the key: %d %s", a.status, a.body)
	}
	if a := srv.Audit(); a.Contacts != 3 || a.DistinctExternalIDs != 1 || a.DuplicateContacts != 0 || a.ContactsWithoutKey != 2 {
		t.Errorf("after clearing a key: %+v, want 3 contacts, 1 distinct, 0 duplicates, 2 without key", a)
	}
	srv.Reset()
	if a := srv.Audit(); a.Contacts != 0 || a.Requests != 0 {
		t.Errorf("after Reset: %+v", a)
	}
}

func TestHubSpotConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  fakecrm.Config
		want string
	}{
		{"unknown API", fakecrm.Config{API: "soap"}, `API "soap"`},
		{"state file", fakecrm.Config{API: fakecrm.APIHubSpot, StateFile: t.TempDir() + "/s.json"}, "state file"},
		{"id property taken", fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{IDProperty: "email"}}, "HubSpot's own"},
		{"bad type", fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Properties: []string{"x:blob"}}}, "type"},
		{"bad name", fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Properties: []string{"Shoe Size"}}}, "lower-case"},
		{"negative daily", fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Daily: -1}}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := fakecrm.New(tc.cfg)
			if err == nil {
				srv.Close()
				t.Fatalf("New succeeded, want an error about %s", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to mention %q", err, tc.want)
			}
		})
	}
}
