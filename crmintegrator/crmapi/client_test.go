package crmapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"crmsync/shared/contact"
)

func batchBody(t *testing.T, ids ...string) []byte {
	t.Helper()
	var req BatchRequest
	for _, id := range ids {
		req.Contacts = append(req.Contacts, contact.Contact{ExternalID: id, Email: id + "@example.com"})
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newTestClient(t *testing.T, url string) *Client {
	t.Helper()
	c, err := NewClient(url, "tok-123", 2*time.Second, &http.Client{Transport: NewTransport(2)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClassifyStatus(t *testing.T) {
	tests := []struct {
		status int
		code   string
		want   Class
	}{
		{200, "", ClassOK},
		{201, "", ClassOK},
		{400, CodeMalformed, ClassRejected},
		{422, CodeIdempotencyKeyReused, ClassRejected},
		{401, CodeUnauthorized, ClassUnauthorized},
		{403, "", ClassUnauthorized},
		{413, CodeBatchTooLarge, ClassTooLarge},
		{429, CodeRateLimited, ClassRateLimited},
		{503, CodeUnavailable, ClassUnavailable},
		{409, CodeRequestInProgress, ClassInProgress},
		{409, "conflict", ClassUnexpected},
		{500, CodeInternal, ClassAmbiguous},
		{502, "", ClassAmbiguous},
		{504, "", ClassAmbiguous},
		{507, "", ClassAmbiguous},
		{404, CodeNotFound, ClassUnexpected},
		{405, CodeMethodNotAllowed, ClassUnexpected},
		{302, "", ClassUnexpected},
	}
	for _, tc := range tests {
		if got := Classify(tc.status, tc.code); got != tc.want {
			t.Errorf("Classify(%d, %q): got %v, want %v", tc.status, tc.code, got, tc.want)
		}
	}
}

// TestCreateBatchAnswers runs the client against handlers answering every
// status of the contract and checks the class, code and Retry-After.
func TestCreateBatchAnswers(t *testing.T) {
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		wantClass  Class
		wantCode   string
		wantRetry  time.Duration
		wantReplay bool
	}{
		{"created", func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(BatchResponse{Results: []BatchResult{{ExternalID: "a", Status: StatusCreated, ID: "c1"}}})
		}, ClassOK, "", 0, false},
		{"replayed", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(HeaderReplayed, "true")
			json.NewEncoder(w).Encode(BatchResponse{Results: []BatchResult{{ExternalID: "a", Status: StatusCreated, ID: "c1"}}})
		}, ClassOK, "", 0, true},
		{"429 retry-after seconds", errorHandler(429, CodeRateLimited, "3"), ClassRateLimited, CodeRateLimited, 3 * time.Second, false},
		{"503 no retry-after", errorHandler(503, CodeUnavailable, ""), ClassUnavailable, CodeUnavailable, 0, false},
		{"503 retry-after", errorHandler(503, CodeUnavailable, "2"), ClassUnavailable, CodeUnavailable, 2 * time.Second, false},
		{"400", errorHandler(400, CodeMalformed, ""), ClassRejected, CodeMalformed, 0, false},
		{"401", errorHandler(401, CodeUnauthorized, ""), ClassUnauthorized, CodeUnauthorized, 0, false},
		{"409 in progress", errorHandler(409, CodeRequestInProgress, ""), ClassInProgress, CodeRequestInProgress, 0, false},
		{"413", errorHandler(413, CodeBatchTooLarge, ""), ClassTooLarge, CodeBatchTooLarge, 0, false},
		{"422", errorHandler(422, CodeIdempotencyKeyReused, ""), ClassRejected, CodeIdempotencyKeyReused, 0, false},
		{"500", errorHandler(500, CodeInternal, ""), ClassAmbiguous, CodeInternal, 0, false},
		{"502 html body", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(502)
			io.WriteString(w, "<html>bad gateway</html>")
		}, ClassAmbiguous, "", 0, false},
		{"504", errorHandler(504, "", ""), ClassAmbiguous, "", 0, false},
		{"200 truncated body", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"results":[{"external_id":"a","sta`)
		}, ClassAmbiguous, "", 0, false},
		{"connection reset", func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		}, ClassAmbiguous, "", 0, false},
		{"timeout", func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(500 * time.Millisecond) // past the client's 300ms
		}, ClassAmbiguous, "", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			c, err := NewClient(srv.URL, "tok-123", 300*time.Millisecond, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, replayed, err := c.CreateBatch(context.Background(), batchBody(t, "a"), "k")
			if got := ClassOf(err); got != tc.wantClass {
				t.Fatalf("got class %v (err %v), want %v", got, err, tc.wantClass)
			}
			if err != nil {
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("got %T, want *Error", err)
				}
				if e.Code != tc.wantCode || e.RetryAfter != tc.wantRetry {
					t.Fatalf("got code %q retry %v, want %q %v", e.Code, e.RetryAfter, tc.wantCode, tc.wantRetry)
				}
				if strings.Contains(err.Error(), "tok-123") {
					t.Fatalf("error %q leaks the token", err)
				}
				return
			}
			if replayed != tc.wantReplay || len(resp.Results) != 1 {
				t.Fatalf("got replayed %v, %d results; want %v, 1", replayed, len(resp.Results), tc.wantReplay)
			}
		})
	}
}

func errorHandler(status int, code, retryAfter string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if retryAfter != "" {
			w.Header().Set(HeaderRetryAfter, retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if code != "" {
			json.NewEncoder(w).Encode(ErrorResponse{Error: ErrorDetail{Code: code, Message: "test"}})
		}
	}
}

func TestCreateBatchSendsHeaders(t *testing.T) {
	body := batchBody(t, "a", "b")
	var gotAuth, gotKey, gotCT string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotKey, gotCT = r.Header.Get("Authorization"), r.Header.Get(HeaderIdempotencyKey), r.Header.Get("Content-Type")
		if r.URL.Path != PathBatch || r.Method != http.MethodPost {
			t.Errorf("got %s %s, want POST %s", r.Method, r.URL.Path, PathBatch)
		}
		json.NewEncoder(w).Encode(BatchResponse{})
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL)
	if _, _, err := c.CreateBatch(context.Background(), body, IdempotencyKey(body)); err != nil {
		t.Fatal(err)
	}
	if gotAuth != "Bearer tok-123" || gotCT != "application/json" {
		t.Fatalf("got Authorization %q Content-Type %q", gotAuth, gotCT)
	}
	if want := IdempotencyKey(body); gotKey != want || !strings.HasPrefix(gotKey, "crmsync-") || len(gotKey) != len("crmsync-")+64 {
		t.Fatalf("got key %q, want %q", gotKey, want)
	}
	if IdempotencyKey(body) == IdempotencyKey(batchBody(t, "a")) {
		t.Fatal("different bodies got the same key")
	}
}

// dropSecond answers the first request on each connection and, on the
// second, reads the whole request (so the CRM "acted") and then closes the
// connection without an answer — a keep-alive connection dying under a
// request. It counts the requests it received.
func dropSecond(n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if n.Add(1) == 2 {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		json.NewEncoder(w).Encode(BatchResponse{})
	})
}

// TestCreateBatchNoSilentResend proves that the client, unlike a plain
// net/http request carrying an Idempotency-Key, does not let the Transport
// resend a POST on its own when a reused connection dies: the resend would
// create the contacts twice at a CRM that ignores keys.
func TestCreateBatchNoSilentResend(t *testing.T) {
	body := batchBody(t, "a")

	t.Run("plain net/http resends (the hazard)", func(t *testing.T) {
		var n atomic.Int64
		srv := httptest.NewServer(dropSecond(&n))
		defer srv.Close()
		hc := &http.Client{Transport: NewTransport(1)}
		for i := 0; i < 2; i++ {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+PathBatch, strings.NewReader(string(body)))
			req.Header.Set(HeaderIdempotencyKey, "k")
			resp, err := hc.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		if got := n.Load(); got != 3 {
			t.Fatalf("server saw %d requests, want 3 (the transport's silent resend); did net/http change?", got)
		}
	})

	t.Run("client does not resend", func(t *testing.T) {
		var n atomic.Int64
		srv := httptest.NewServer(dropSecond(&n))
		defer srv.Close()
		c := newTestClient(t, srv.URL)
		if _, _, err := c.CreateBatch(context.Background(), body, "k"); err != nil {
			t.Fatalf("first request: %v", err)
		}
		_, _, err := c.CreateBatch(context.Background(), body, "k")
		if ClassOf(err) != ClassAmbiguous {
			t.Fatalf("second request: got %v (%v), want an ambiguous failure", ClassOf(err), err)
		}
		if got := n.Load(); got != 2 {
			t.Fatalf("server saw %d requests, want 2", got)
		}
	})
}

func TestLookup(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch id := r.URL.Query().Get("external_id"); id {
		case "two":
			json.NewEncoder(w).Encode(ListResponse{Contacts: []StoredContact{{ID: "c1"}, {ID: "c2"}}})
		case "gone":
			errorHandler(404, CodeNotFound, "")(w, r)
		case "busy":
			errorHandler(503, CodeUnavailable, "1")(w, r)
		default:
			json.NewEncoder(w).Encode(ListResponse{})
		}
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL)
	tests := []struct {
		id        string
		wantN     int
		wantClass Class
	}{
		{"two", 2, ClassOK},
		{"none", 0, ClassOK},
		{"gone", 0, ClassUnexpected}, // a wrong URL must not read as "not found"
		{"busy", 0, ClassUnavailable},
	}
	for _, tc := range tests {
		got, err := c.Lookup(context.Background(), tc.id)
		if len(got) != tc.wantN || ClassOf(err) != tc.wantClass {
			t.Errorf("Lookup(%q): got %d contacts, class %v; want %d, %v", tc.id, len(got), ClassOf(err), tc.wantN, tc.wantClass)
		}
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-1", 0},
		{"7", 7 * time.Second},
		{" 2 ", 2 * time.Second},
		{"soon", 0},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second},
		{now.Add(-10 * time.Second).Format(http.TimeFormat), 0},
	}
	for _, tc := range tests {
		if got := ParseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("ParseRetryAfter(%q): got %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestNewClientRejectsBadURL(t *testing.T) {
	for _, u := range []string{"", "localhost:8080", "ftp://x", "http://"} {
		if _, err := NewClient(u, "", 0, nil); err == nil {
			t.Errorf("NewClient(%q): got nil error", u)
		}
	}
}
