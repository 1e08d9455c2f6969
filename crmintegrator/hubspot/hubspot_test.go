package hubspot

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// The bodies below are HubSpot's documented answers (docs/crm/hubspot.md
// cites where each comes from); the connector must read each into the
// right class and results.

func contacts(keys ...string) []contact.Contact {
	out := make([]contact.Contact, len(keys))
	for i, k := range keys {
		out[i] = contact.Contact{ExternalID: k, Email: strings.ToLower(k) + "@example.com", FirstName: "Ada",
			Attributes: contact.AttrsOf(map[string]string{"company": "Acme"})}
	}
	return out
}

func serve(t *testing.T, h http.HandlerFunc) *Connector {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := New(Config{BaseURL: srv.URL, Token: "pat-secret", Timeout: 2 * time.Second,
		QuotaReset: func(now time.Time) time.Time { return now.Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEncodeUpsertAndCreate(t *testing.T) {
	up, _ := New(Config{BaseURL: "http://x", IDProperty: "ext"})
	req := up.Encode(contacts("K1"))
	want := `{"inputs":[{"idProperty":"ext","id":"K1","properties":{"company":"Acme","email":"k1@example.com","ext":"K1","firstname":"Ada"}}]}`
	if string(req.Body) != want {
		t.Errorf("upsert body:\n got %s\nwant %s", req.Body, want)
	}
	if again := up.Encode(contacts("K1")); string(again.Body) != string(req.Body) {
		t.Error("the same batch encodes to other bytes")
	}
	cr, _ := New(Config{BaseURL: "http://x", IDProperty: "ext", Create: true})
	want = `{"inputs":[{"properties":{"company":"Acme","email":"k1@example.com","ext":"K1","firstname":"Ada"},"objectWriteTraceId":"0"}]}`
	if got := cr.Encode(contacts("K1")).Body; string(got) != want {
		t.Errorf("create body:\n got %s\nwant %s", got, want)
	}
}

func TestWriteAnswers(t *testing.T) {
	tests := []struct {
		name    string
		create  bool
		status  int
		body    string
		class   crmapi.Class // of the error; ClassOK: results
		code    string
		results []crmapi.BatchResult
	}{
		{name: "upsert, results out of order", status: 200,
			body:    `{"status":"COMPLETE","results":[{"id":"502","new":false,"properties":{"external_id":"K2","hs_object_id":"502"},"createdAt":"2024-01-17T19:55:04.281Z","updatedAt":"2024-01-17T19:55:04.281Z","archived":false},{"id":"501","new":true,"properties":{"external_id":"K1"}}],"startedAt":"2024-01-17T19:55:04.281Z","completedAt":"2024-01-17T19:55:04.300Z"}`,
			results: []crmapi.BatchResult{{ExternalID: "K1", Status: crmapi.StatusCreated, ID: "501"}, {ExternalID: "K2", Status: crmapi.StatusCreated, ID: "502"}}},
		{name: "create 207: one input refused", create: true, status: 207,
			body: `{"status":"COMPLETE","results":[{"id":"1145814089","properties":{"external_id":"K1"}}],"numErrors":1,"errors":[{"status":"error","category":"VALIDATION_ERROR","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"Email address k2 is invalid\",\"error\":\"INVALID_EMAIL\",\"name\":\"email\"}]","context":{"objectWriteTraceId":["1"]}}],"startedAt":"2024-08-15T17:09:13.610Z","completedAt":"2024-08-15T17:09:13.910Z"}`,
			results: []crmapi.BatchResult{{ExternalID: "K1", Status: crmapi.StatusCreated, ID: "1145814089"},
				{ExternalID: "K2", Status: crmapi.StatusRejected, Error: &crmapi.ErrorDetail{Code: "INVALID_EMAIL"}}}},
		{name: "an input without result or error stays unknown", status: 200,
			body:    `{"status":"COMPLETE","results":[{"id":"501","properties":{"external_id":"K1"}}]}`,
			results: []crmapi.BatchResult{{ExternalID: "K1", Status: crmapi.StatusCreated, ID: "501"}, {ExternalID: "K2"}}},
		{name: "409 conflict: split", status: 409,
			body:  `{"status":"error","message":"Contact already exists. Existing ID: 37765128953","correlationId":"2dea5219-07f2-40ce-82ec-9c2e302317a4","category":"CONFLICT"}`,
			class: crmapi.ClassSplit, code: "CONFLICT"},
		{name: "400 unknown property: split", status: 400,
			body:  `{"status":"error","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"Property \\\"testproperty\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"testproperty\"}]","correlationId":"8a3f6c3a-8296-4002-b0a6-2a06fecf7c0c","errors":[{"message":"Property \"testproperty\" does not exist","code":"PROPERTY_DOESNT_EXIST","context":{"propertyName":["testproperty"]}}],"category":"VALIDATION_ERROR"}`,
			class: crmapi.ClassSplit, code: "PROPERTY_DOESNT_EXIST"},
		{name: "429 ten-secondly", status: 429,
			body:  `{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId":"c033cdaa-2c40-4a64-ae48-b4cec88dad24","policyName":"TEN_SECONDLY_ROLLING"}`,
			class: crmapi.ClassRateLimited, code: "TEN_SECONDLY_ROLLING"},
		{name: "429 daily: quota", status: 429,
			body:  `{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","correlationId":"c033cdaa-2c40-4a64-ae48-b4cec88dad24","policyName":"DAILY","requestId":"3d3e35b7-0dae-4b9f-a6e3-9c230cbcf8dd"}`,
			class: crmapi.ClassQuota, code: "DAILY"},
		{name: "401", status: 401,
			body:  `{"status":"error","message":"Authentication credentials not found.","correlationId":"f0ee980f-a446-4189-b004-ff06d08bf4e3","category":"INVALID_AUTHENTICATION"}`,
			class: crmapi.ClassUnauthorized},
		{name: "502", status: 502, body: `bad gateway`, class: crmapi.ClassAmbiguous},
		{name: "503", status: 503, body: `{}`, class: crmapi.ClassUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				want := pathUpsert
				if tc.create {
					want = pathCreate
				}
				if r.URL.Path != want || r.Header.Get("Authorization") != "Bearer pat-secret" {
					t.Errorf("got %s %s with %q", r.Method, r.URL.Path, r.Header.Get("Authorization"))
				}
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/json;charset=utf-8")
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			c.cfg.Create = tc.create
			resp, err := c.Write(context.Background(), c.Encode(contacts("K1", "K2")))
			if tc.class != crmapi.ClassOK {
				var ce *crmapi.Error
				if !errors.As(err, &ce) || ce.Class != tc.class || (tc.code != "" && ce.Code != tc.code) {
					t.Fatalf("got %v (%#v), want class %v code %q", err, ce, tc.class, tc.code)
				}
				if tc.class == crmapi.ClassQuota && (ce.RetryAfter < 59*time.Minute || ce.RetryAfter > time.Hour) {
					t.Errorf("quota comes back in %v, want the configured reset (1h)", ce.RetryAfter)
				}
				if strings.Contains(err.Error(), "pat-secret") {
					t.Error("the token is in the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.results {
				got, want := resp.Results[i], tc.results[i]
				if got.ExternalID != want.ExternalID || got.Status != want.Status || got.ID != want.ID ||
					(want.Error != nil && (got.Error == nil || got.Error.Code != want.Error.Code)) {
					t.Errorf("result %d: got %+v, want %+v", i, got, want)
				}
			}
		})
	}
}

func TestReadByIDProperty(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			IDProperty string              `json:"idProperty"`
			Inputs     []map[string]string `json:"inputs"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		if r.URL.Path != pathRead || req.IDProperty != "external_id" || len(req.Inputs) != 3 {
			t.Errorf("got %s %+v", r.URL.Path, req)
		}
		w.WriteHeader(207)
		io.WriteString(w, `{"status":"COMPLETE","results":[{"id":"9","properties":{"external_id":"K3"}},{"id":"7","properties":{"external_id":"K1"}}],"numErrors":1,"errors":[{"status":"error","category":"OBJECT_NOT_FOUND","message":"Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.","context":{"ids":["K2"]}}]}`)
	})
	found, err := c.Read(context.Background(), []string{"K1", "K2", "K3"})
	if err != nil {
		t.Fatal(err)
	}
	if len(found[0]) != 1 || found[0][0] != "7" || len(found[1]) != 0 || len(found[2]) != 1 || found[2][0] != "9" {
		t.Errorf("found %v, want [[7] [] [9]]", found)
	}

	// Any other error item may hide a contact: never read as absent.
	c = serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(207)
		io.WriteString(w, `{"status":"COMPLETE","results":[],"errors":[{"status":"error","category":"VALIDATION_ERROR","message":"Unable to perform read by non-unique property"}]}`)
	})
	if _, err := c.Read(context.Background(), []string{"K1"}); crmapi.ClassOf(err) != crmapi.ClassUnexpected {
		t.Errorf("got %v, want an unexpected answer, never not-found", err)
	}
}

func TestCheckIDProperty(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		wantErr string
	}{
		{"unique", 200, `{"name":"external_id","type":"string","hasUniqueValue":true}`, ""},
		{"missing", 404, `{"status":"error","message":"Unable to find property external_id","category":"OBJECT_NOT_FOUND"}`, `does not exist: create it: POST`},
		{"not unique", 200, `{"name":"external_id","type":"string","hasUniqueValue":false}`, "does not have unique values"},
		{"token refused", 401, `{"status":"error","message":"Authentication credentials not found.","category":"INVALID_AUTHENTICATION"}`, "401"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == pathProperties {
					io.WriteString(w, `{"results":[{"name":"email","type":"string"},{"name":"external_id","type":"string","hasUniqueValue":true}]}`)
					return
				}
				if r.URL.Path != pathProperties+"/external_id" {
					t.Errorf("got %s", r.URL.Path)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			props, err := c.Check(context.Background())
			if tc.wantErr == "" {
				if err != nil || len(props) != 2 {
					t.Fatalf("got %v, %v; want the two properties", props, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error saying %q", err, tc.wantErr)
			}
		})
	}
}

func TestRateLimitHeaders(t *testing.T) {
	var got Limits
	var status atomic.Int32 // 0: 200
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-HubSpot-RateLimit-Max", "190")
		h.Set("X-HubSpot-RateLimit-Remaining", "187")
		h.Set("X-HubSpot-RateLimit-Interval-Milliseconds", "10000")
		h.Set("X-HubSpot-RateLimit-Daily", "650000")
		h.Set("X-HubSpot-RateLimit-Daily-Remaining", "649000")
		if s := int(status.Load()); s != 0 {
			w.WriteHeader(s)
			io.WriteString(w, `{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","policyName":"TEN_SECONDLY_ROLLING"}`)
			return
		}
		io.WriteString(w, `{"name":"external_id","hasUniqueValue":true}`)
	}))
	defer srv.Close()
	// A slow dial (a TLS handshake, to the real HubSpot) comes before the
	// request reaches the window: Sent is when it was written, after it.
	const dial = 50 * time.Millisecond
	var d net.Dialer
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		time.Sleep(dial)
		return d.DialContext(ctx, network, addr)
	}}}
	c, _ := New(Config{BaseURL: srv.URL, HTTP: hc, Limits: func(l Limits) { got = l }})
	before := time.Now()
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got.Sent.Before(before.Add(dial)) || got.Sent.After(time.Now()) {
		t.Errorf("Sent %v after the call began, want when the request was written, past the %v dial", got.Sent.Sub(before), dial)
	}
	want := Limits{Max: 190, Remaining: 187, Interval: 10 * time.Second, Daily: 650000, DailyRemaining: 649000, Sent: got.Sent}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	// A 429 states the window too, but its request is not taken as counted.
	status.Store(http.StatusTooManyRequests)
	if err := c.Ping(context.Background()); err == nil {
		t.Fatal("a 429 came back as no error")
	}
	if want.Sent = (time.Time{}); got != want {
		t.Errorf("after a 429: got %+v, want %+v", got, want)
	}
}
