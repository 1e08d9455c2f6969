package salesforce

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// The bodies under testdata/ and below are Salesforce's documented answers
// (docs/crm/salesforce.md cites where each comes from); the connector must
// read each into the right class and results.

const api = "/services/data/v60.0"

func contacts(keys ...string) []contact.Contact {
	out := make([]contact.Contact, len(keys))
	for i, k := range keys {
		out[i] = contact.Contact{ExternalID: k, Email: strings.ToLower(k) + "@example.com", LastName: "Lovelace",
			Attributes: contact.AttrsOf(map[string]string{"company": "Acme"})}
	}
	return out
}

func testdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// serve starts h as the org and returns a connector to it, with the
// reserve at 10%.
func serve(t *testing.T, h http.HandlerFunc) *Connector {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := New(Config{BaseURL: srv.URL, Token: "00Dxx!secret", Timeout: 2 * time.Second, Reserve: -1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func answer(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func TestNewRefuses(t *testing.T) {
	for _, cfg := range []Config{
		{BaseURL: "ftp://x"},
		{BaseURL: "https://x.my.salesforce.com/services/data"},
		{BaseURL: "https://x", APIVersion: "v60"},
		{BaseURL: "https://x", Object: "Contact; DELETE"},
		{BaseURL: "https://x", IDField: "Ext Id"},
		{BaseURL: "https://x", IDField: "a' OR Name != '"},
		{BaseURL: "https://x", Reserve: 1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted it", cfg)
		}
	}
}

func TestEncodeGolden(t *testing.T) {
	c, _ := New(Config{BaseURL: "https://x"})
	cs := contacts("K1", "K2")
	cs[1].Phone, cs[1].FirstName, cs[1].LastName = "+1 555 0100", "Ada", ""
	req := c.Encode(cs)
	if *update {
		os.WriteFile("testdata/upsert-request.golden", req.Body, 0o644)
	}
	if want := testdata(t, "upsert-request.golden"); string(req.Body) != want {
		t.Errorf("upsert body:\n got %s\nwant %s", req.Body, want)
	}
	if again := c.Encode(cs); !bytes.Equal(again.Body, req.Body) {
		t.Error("the same batch encodes to other bytes")
	}
	if !reflect.DeepEqual(req.Keys, []string{"K1", "K2"}) {
		t.Errorf("keys %q", req.Keys)
	}
}

func TestWriteAnswers(t *testing.T) {
	keys := []string{"K1", "K2", "K3", "K4", "K5", "K6", "K7", "K8"}
	tests := []struct {
		name    string
		status  int
		body    string
		class   crmapi.Class // of the error; ClassOK: results
		code    string
		msg     string // in the error's message
		results []crmapi.BatchResult
	}{
		{name: "mixed results in input order", status: 200, body: testdata(t, "upsert-mixed.json"),
			results: []crmapi.BatchResult{
				{ExternalID: "K1", Status: crmapi.StatusCreated, ID: "003RM0000068xV6YAI"},
				{ExternalID: "K2", Status: crmapi.StatusCreated, ID: "003RM0000068xVCYAY"},
				{ExternalID: "K3", Status: crmapi.StatusRejected, Error: &crmapi.ErrorDetail{Code: "REQUIRED_FIELD_MISSING", Message: "Required fields are missing: [LastName] (fields: LastName)"}},
				{ExternalID: "K4", Status: crmapi.StatusRejected, Error: &crmapi.ErrorDetail{Code: "INVALID_EMAIL_ADDRESS", Message: "Email: invalid email address: not-an-email (fields: Email)"}},
				{ExternalID: "K5"}, // UNABLE_TO_LOCK_ROW: resent
				{ExternalID: "K6"}, // DUPLICATE_VALUE on the key: a race with our own insert, resent
				{ExternalID: "K7", Status: crmapi.StatusRejected, Error: &crmapi.ErrorDetail{Code: "DUPLICATE_EXTERNAL_ID", Message: "Ext ID: more than one record found for external id field: [003RM0000068xV6YAI, 003RM0000068xVCYAY]"}},
				// The key twice in one request: a resend cannot cure it.
				{ExternalID: "K8", Status: crmapi.StatusRejected, Error: &crmapi.ErrorDetail{Code: "DUPLICATE_VALUE", Message: "Duplicate external id specified: K8 (fields: External_Id__c)"}},
			}},
		{name: "fewer results than records: ambiguous", status: 200,
			body: `[{"id":"003RM0000068xV6YAI","success":true,"errors":[],"created":true}]`, class: crmapi.ClassAmbiguous},
		{name: "400 for the whole request: split", status: 400,
			body: `[{"message":"No such column 'shoeSize' on sobject of type Contact","errorCode":"INVALID_FIELD"}]`, class: crmapi.ClassSplit, code: "INVALID_FIELD"},
		{name: "401 expired token", status: 401,
			body: `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`, class: crmapi.ClassUnauthorized, code: "INVALID_SESSION_ID", msg: "expired"},
		{name: "403 concurrent requests: rate limited", status: 403,
			body: `[{"message":"ConcurrentRequests (Concurrent API Requests) Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]`, class: crmapi.ClassRateLimited, code: "REQUEST_LIMIT_EXCEEDED"},
		{name: "403 daily allocation: quota", status: 403,
			body: `[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]`, class: crmapi.ClassQuota, code: "REQUEST_LIMIT_EXCEEDED", msg: "24 hours"},
		{name: "403 no access", status: 403,
			body: `[{"message":"The REST API is not enabled for this Organization.","errorCode":"API_DISABLED_FOR_ORG"}]`, class: crmapi.ClassUnauthorized, code: "API_DISABLED_FOR_ORG"},
		{name: "414", status: 414, body: ``, class: crmapi.ClassTooLarge},
		{name: "431", status: 431, body: ``, class: crmapi.ClassTooLarge},
		{name: "500", status: 500, body: `[{"message":"An unexpected error occurred.","errorCode":"UNKNOWN_EXCEPTION"}]`, class: crmapi.ClassAmbiguous, code: "UNKNOWN_EXCEPTION"},
		{name: "503", status: 503, body: `[{"message":"Server unavailable","errorCode":"SERVER_UNAVAILABLE"}]`, class: crmapi.ClassUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == api+"/limits" {
					answer(w, 200, `{"DailyApiRequests":{"Max":5000,"Remaining":0}}`)
					return
				}
				if r.Method != http.MethodPatch || r.URL.Path != api+"/composite/sobjects/Contact/External_Id__c" ||
					r.Header.Get("Authorization") != "Bearer 00Dxx!secret" || r.Header.Get("Content-Type") != "application/json" {
					t.Errorf("got %s %s with %q", r.Method, r.URL.Path, r.Header.Get("Authorization"))
				}
				io.Copy(io.Discard, r.Body)
				answer(w, tc.status, tc.body)
			})
			resp, err := c.Write(context.Background(), c.Encode(contacts(keys...)))
			if tc.class != crmapi.ClassOK {
				var ce *crmapi.Error
				if !errors.As(err, &ce) || ce.Class != tc.class || (tc.code != "" && ce.Code != tc.code) || !strings.Contains(ce.Message, tc.msg) {
					t.Fatalf("got %v (%#v), want class %v code %q", err, ce, tc.class, tc.code)
				}
				if tc.class == crmapi.ClassQuota && (ce.RetryAfter < time.Minute || ce.RetryAfter > time.Hour) {
					t.Errorf("quota wait %v, want within [1m, 1h]", ce.RetryAfter)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(resp.Results, tc.results) {
				t.Errorf("results\n got %+v\nwant %+v", resp.Results, tc.results)
			}
		})
	}
}

// The reserve: once an answer says less than 10% of the daily allocation is
// left, nothing more is sent until the limits resource says otherwise.
func TestReserve(t *testing.T) {
	var writes, limitReads atomic.Int64
	var remaining atomic.Int64
	remaining.Store(650)
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == api+"/limits" {
			limitReads.Add(1)
			answer(w, 200, `{"DailyApiRequests":{"Max":5000,"Remaining":`+itoa(remaining.Load())+`}}`)
			return
		}
		writes.Add(1)
		left := remaining.Add(-50) // other integrations spend too
		w.Header().Set("Sforce-Limit-Info", "api-usage="+itoa(5000-left)+"/5000")
		answer(w, 200, `[{"id":"003RM0000068xV6YAI","success":true,"errors":[],"created":true}]`)
	})
	var lastUsed, lastMax atomic.Int64
	c.cfg.Usage = func(u, m int) { lastUsed.Store(int64(u)); lastMax.Store(int64(m)) }
	ctx := context.Background()
	req := c.Encode(contacts("K1"))
	for i := 0; i < 3; i++ { // 650 → 600 → 550 → 500 left (10%)
		if _, err := c.Write(ctx, req); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if lastUsed.Load() != 4500 || lastMax.Load() != 5000 {
		t.Errorf("usage told %d/%d, want the header's 4500/5000", lastUsed.Load(), lastMax.Load())
	}
	// 500 left: one more would leave 499, below the 500 kept.
	_, err := c.Write(ctx, req)
	var ce *crmapi.Error
	if !errors.As(err, &ce) || ce.Class != crmapi.ClassQuota || ce.Code != "RESERVE" || !strings.Contains(ce.Message, "-crm-reserve") {
		t.Fatalf("at the reserve: got %v", err)
	}
	if writes.Load() != 3 {
		t.Errorf("%d writes reached the org, want 3: the one that would cross the reserve must not be sent", writes.Load())
	}
	// Until the time it told, nothing is sent at all.
	if _, err := c.Read(ctx, []string{"K1"}); !errors.As(err, &ce) || ce.Class != crmapi.ClassQuota {
		t.Fatalf("read below the reserve: got %v", err)
	}
	if writes.Load() != 3 || limitReads.Load() != 0 {
		t.Errorf("writes %d, limit reads %d; want 3 and 0", writes.Load(), limitReads.Load())
	}
	// Then one limits read; still short, so no write.
	c.recheck.Store(1)
	if _, err := c.Read(ctx, []string{"K1"}); !errors.As(err, &ce) || ce.Class != crmapi.ClassQuota {
		t.Fatalf("read below the reserve: got %v", err)
	}
	if writes.Load() != 3 || limitReads.Load() != 1 {
		t.Errorf("writes %d, limit reads %d; want 3 and 1", writes.Load(), limitReads.Load())
	}
	c.recheck.Store(1)
	remaining.Store(2000) // the rolling 24 hours moved on
	if _, err := c.Write(ctx, req); err != nil {
		t.Fatalf("after the allocation recovered: %v", err)
	}
	if writes.Load() != 4 || limitReads.Load() != 2 {
		t.Errorf("writes %d, limit reads %d; want 4 and 2", writes.Load(), limitReads.Load())
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestLimitInfo(t *testing.T) {
	tests := []struct {
		header     string
		used, max_ int
	}{
		{"api-usage=25/5000", 25, 5000},
		{"api-usage=25/5000; per-app-api-usage=17/250(appName=sample-connected-app)", 25, 5000},
		{"api-usage=10018/100000; api-bursts=1/750", 10018, 100000},
		{"api-usage=18/5000, per-app-api-usage=17/250(appName=sample-connected-app)", 18, 5000},
		{"per-app-api-usage=17/250(appName=x), api-usage=30/15000", 30, 15000},
		{"api-usage=garbage", 0, 0},
		{"", 0, 0},
	}
	for _, tc := range tests {
		c, _ := New(Config{BaseURL: "https://x"})
		c.limitInfo(tc.header)
		if u, m := c.Usage(); u != tc.used || m != tc.max_ {
			t.Errorf("%q: usage %d/%d, want %d/%d", tc.header, u, m, tc.used, tc.max_)
		}
	}
}

func TestQuote(t *testing.T) {
	tests := map[string]string{
		`plain`:      `'plain'`,
		`O'Brien`:    `'O\'Brien'`,
		`back\slash`: `'back\\slash'`,
		`say "hi"`:   `'say \"hi\"'`,
		"tab\tnl\n":  `'tab\tnl\n'`,
		`%_ü`:        `'%_ü'`, // IN is not LIKE: % and _ stand for themselves
	}
	for in, want := range tests {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %s, want %s", in, got, want)
		}
	}
}

// Read: one query for the batch, results placed by the id field's value
// (case folded, as the field is case-insensitive), pages followed.
func TestRead(t *testing.T) {
	var queries []string
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == api+"/query":
			queries = append(queries, r.URL.Query().Get("q"))
			answer(w, 200, `{"totalSize":3,"done":false,"nextRecordsUrl":"/services/data/v60.0/query/01gRM000000B1xXYAS-2000","records":[
				{"attributes":{"type":"Contact","url":"/services/data/v60.0/sobjects/Contact/003A"},"Id":"003A","External_Id__c":"k1"}]}`)
		case r.URL.Path == api+"/query/01gRM000000B1xXYAS-2000":
			answer(w, 200, `{"totalSize":3,"done":true,"records":[
				{"attributes":{"type":"Contact"},"Id":"003B","External_Id__c":"O'Brien"},
				{"attributes":{"type":"Contact"},"Id":"003C","External_Id__c":"O'BRIEN"}]}`)
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
			answer(w, 404, `[{"errorCode":"NOT_FOUND","message":"The requested resource does not exist"}]`)
		}
	})
	found, err := c.Read(context.Background(), []string{"K1", "O'Brien", "missing"})
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"003A"}, {"003B", "003C"}, nil}
	if !reflect.DeepEqual(found, want) {
		t.Errorf("found %q, want %q", found, want)
	}
	if len(queries) != 1 || queries[0] != `SELECT Id, External_Id__c FROM Contact WHERE External_Id__c IN ('K1', 'O\'Brien', 'missing')` {
		t.Errorf("queries %q", queries)
	}
	// A case-sensitive field matches exactly.
	c.caseSensitive.Store(true)
	queries = nil
	if found, _ = c.Read(context.Background(), []string{"O'Brien"}); !reflect.DeepEqual(found, [][]string{{"003B"}}) {
		t.Errorf("case-sensitive: found %q", found)
	}
}

func TestReadNeverReadsAnErrorAsAbsent(t *testing.T) {
	for _, body := range []string{
		`{"totalSize":1,"done":true,"records":[{"attributes":{"type":"Contact"},"Id":"003A"}]}`,
		`{"totalSize":1,"done":false,"records":[]}`,
		`not json`,
	} {
		c := serve(t, func(w http.ResponseWriter, r *http.Request) { answer(w, 200, body) })
		if found, err := c.Read(context.Background(), []string{"K1"}); err == nil {
			t.Errorf("%s: read as %q", body, found)
		}
	}
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		answer(w, 400, `[{"message":"unexpected token: 'IN'","errorCode":"MALFORMED_QUERY"}]`)
	})
	var ce *crmapi.Error
	if _, err := c.Read(context.Background(), []string{"K1"}); !errors.As(err, &ce) || ce.Class != crmapi.ClassUnexpected {
		t.Errorf("400 MALFORMED_QUERY: got %v", err)
	}
}

// Keys that would make the URL too long are read with several queries,
// every one within the bound, and none lost.
func TestReadSplitsLongQueries(t *testing.T) {
	keys := make([]string, MaxBatch)
	for i := range keys {
		keys[i] = "customer-" + strings.Repeat("x", 40) + "-" + strconv.Itoa(i)
	}
	seen := map[string]bool{}
	calls := 0
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		calls++
		if n := len(r.URL.RequestURI()); n > maxQueryURL {
			t.Errorf("URL of %d bytes", n)
		}
		q := r.URL.Query().Get("q")
		in := q[strings.Index(q, "IN (")+4 : len(q)-1]
		var recs []string
		for lit := range strings.SplitSeq(in, ", ") {
			k := strings.Trim(lit, "'")
			seen[k] = true
			recs = append(recs, `{"Id":"003`+k+`","External_Id__c":"`+k+`"}`)
		}
		answer(w, 200, `{"totalSize":1,"done":true,"records":[`+strings.Join(recs, ",")+`]}`)
	})
	found, err := c.Read(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	if calls < 2 || len(seen) != len(keys) {
		t.Errorf("%d queries covering %d keys", calls, len(seen))
	}
	for i, f := range found {
		if len(f) != 1 || f[0] != "003"+keys[i] {
			t.Fatalf("key %d found as %q", i, f)
		}
	}
}

func TestCheck(t *testing.T) {
	good := testdata(t, "describe-contact.json")
	tests := []struct {
		name     string
		idField  string
		status   int
		describe string
		err      string // in the error; "" : accepted
	}{
		{name: "ok", describe: good},
		{name: "field named in another case", idField: "external_id__c", describe: good},
		{name: "no such object", status: 404, describe: `[{"errorCode":"NOT_FOUND","message":"The requested resource does not exist"}]`, err: "does not exist"},
		{name: "no such field", idField: "Customer_Key__c", describe: good, err: "Object Manager"},
		{name: "not an External ID", describe: strings.Replace(good, `"externalId": true`, `"externalId": false`, 1), err: "not an External ID"},
		{name: "not unique", describe: strings.Replace(good, `"externalId": true, "unique": true`, `"externalId": true, "unique": false`, 1), err: "unique"},
		{name: "expired token", status: 401, describe: `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`, err: "expired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case api + "/sobjects/Contact/describe":
					answer(w, max(tc.status, 200), tc.describe)
				case api + "/limits":
					answer(w, 200, testdata(t, "limits.json"))
				default:
					t.Errorf("unexpected %s", r.URL)
				}
			})
			if tc.idField != "" {
				c.cfg.IDField = tc.idField
			}
			fields, err := c.Check(context.Background())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"LastName", "FirstName", "Email", "Phone", "Company__c", "External_Id__c"}
			if !reflect.DeepEqual(fields, want) {
				t.Errorf("fields %q, want the writable ones %q", fields, want)
			}
			if u, m := c.Usage(); u != 25 || m != 5000 {
				t.Errorf("usage %d/%d after the check, want the limits' 25/5000", u, m)
			}
		})
	}
}

func TestEncodeUsesDescribeNames(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == api+"/limits" {
			answer(w, 200, testdata(t, "limits.json"))
			return
		}
		answer(w, 200, testdata(t, "describe-contact.json"))
	})
	if _, err := c.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	cs := contacts("K1")
	cs[0].Attributes = contact.AttrsOf(map[string]string{"company__c": "Acme"})
	if body := string(c.Encode(cs).Body); !strings.Contains(body, `"Company__c":"Acme"`) {
		t.Errorf("body %s: want the column company__c written to Company__c", body)
	}
}

// The token goes in the Authorization header only: never in a URL.
func TestTokenOnlyInHeader(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.String(), "secret") || strings.Contains(url.QueryEscape(r.URL.RawQuery), "secret") {
			t.Errorf("token in URL %s", r.URL)
		}
		answer(w, 401, `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`)
	})
	err := c.Ping(context.Background())
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("ping: %v", err)
	}
}

// Ping spends no call while a recent answer vouches for the token, and
// reports a refused token from that answer.
func TestPingCostsLittle(t *testing.T) {
	var calls atomic.Int64
	var status atomic.Int64
	status.Store(200)
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if status.Load() == 401 {
			answer(w, 401, `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`)
			return
		}
		answer(w, 200, testdata(t, "limits.json"))
	})
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 {
		t.Errorf("5 pings made %d calls, want 1", calls.Load())
	}
	status.Store(401)
	c.last.Store(nil) // as if the last answer were old
	if err := c.Ping(ctx); crmapi.ClassOf(err) != crmapi.ClassUnauthorized {
		t.Fatalf("ping with an expired token: %v", err)
	}
	if err := c.Ping(ctx); crmapi.ClassOf(err) != crmapi.ClassUnauthorized || calls.Load() != 2 {
		t.Errorf("second ping: %v after %d calls; want the refusal remembered, 2 calls", err, calls.Load())
	}
}

// Many writes in flight at once: none crosses the reserve, though each
// learns the usage only from answers that are not in yet.
func TestReserveHoldsUnderConcurrency(t *testing.T) {
	const limit = 100
	var used atomic.Int64
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		n := used.Add(1)
		w.Header().Set("Sforce-Limit-Info", "api-usage="+itoa(n)+"/"+itoa(limit))
		if r.URL.Path == api+"/limits" {
			answer(w, 200, `{"DailyApiRequests":{"Max":100,"Remaining":`+itoa(limit-n)+`}}`)
			return
		}
		time.Sleep(5 * time.Millisecond) // keep many in flight
		answer(w, 200, `[{"id":"003RM0000068xV6YAI","success":true,"errors":[],"created":true}]`)
	})
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil { // the daemon's start-up check reads the limits
		t.Fatal(err)
	}
	req := c.Encode(contacts("K1"))
	done := make(chan struct{})
	for g := 0; g < 16; g++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < 20; i++ {
				c.Write(ctx, req)
			}
		}()
	}
	for g := 0; g < 16; g++ {
		<-done
	}
	// Answers counted but not yet released make the count err on the safe
	// side, by at most the requests in flight.
	if n := used.Load(); n > limit-limit/10 || n < limit-limit/10-16 {
		t.Errorf("the org counted %d of %d requests; want the writes to stop at, never past, the 90%% the reserve leaves", n, limit)
	}
}
