package fakecrm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/contact"
)

// answer is one HTTP exchange as the tests see it.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// freshClient opens a new connection per request: Go's transport silently
// resends a keyed POST once when a reused connection breaks, which would
// hide the fault under test.
func freshClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
}

var defaultClient = freshClient(10 * time.Second)

// send does one request; headers come in name, value pairs. It never
// fails the test itself, so goroutines may call it.
func send(t testing.TB, c *http.Client, method, url string, body any, headers ...string) (answer, error) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return answer{}, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header[http.CanonicalHeaderKey(headers[i])] = []string{headers[i+1]}
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, b}, err
}

// mustSend is send that fails the test on a transport error.
func mustSend(t testing.TB, method, url string, body any, headers ...string) answer {
	t.Helper()
	a, err := send(t, defaultClient, method, url, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return a
}

func decode[T any](t testing.TB, a answer) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Fatalf("decode %T from %d %s: %v", v, a.status, a.body, err)
	}
	return v
}

func errCode(t testing.TB, a answer) string {
	t.Helper()
	return decode[crmapi.ErrorResponse](t, a).Error.Code
}

func ada(id string) contact.Contact {
	return contact.Contact{ExternalID: id, Email: id + "@example.com", FirstName: "Ada", LastName: "Lovelace",
		Phone: "+44 20 7946 0000", Attributes: contact.AttrsOf(map[string]string{"company": "Analytical Engines"})}
}

func batchOf(ids ...string) crmapi.BatchRequest {
	var b crmapi.BatchRequest
	for _, id := range ids {
		b.Contacts = append(b.Contacts, ada(id))
	}
	return b
}

func TestAuth(t *testing.T) {
	_, base := fakecrmtest.Start(t, fakecrm.Config{Token: "s3cret"})
	tests := []struct {
		name   string
		method string
		path   string
		auth   []string
		want   int
	}{
		{"no header", "POST", crmapi.PathContacts, nil, 401},
		{"wrong token", "POST", crmapi.PathContacts, []string{"Authorization", "Bearer nope"}, 401},
		{"token prefix", "POST", crmapi.PathContacts, []string{"Authorization", "Bearer s3cre"}, 401},
		{"token with suffix", "POST", crmapi.PathContacts, []string{"Authorization", "Bearer s3cretX"}, 401},
		{"wrong scheme", "POST", crmapi.PathContacts, []string{"Authorization", "Basic s3cret"}, 401},
		{"bare token", "POST", crmapi.PathContacts, []string{"Authorization", "s3cret"}, 401},
		{"right token", "POST", crmapi.PathContacts, []string{"Authorization", "Bearer s3cret"}, 201},
		{"scheme is case-insensitive", "POST", crmapi.PathContacts, []string{"Authorization", "bearer s3cret"}, 201},
		{"GET needs it too", "GET", crmapi.PathContacts + "?external_id=C-1", nil, 401},
		{"batch needs it too", "POST", crmapi.PathBatch, nil, 401},
		{"GET with token", "GET", crmapi.PathContacts + "?external_id=C-1", []string{"Authorization", "Bearer s3cret"}, 200},
		{"admin is open", "GET", fakecrm.PathAdminAudit, nil, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body any
			if tc.method == "POST" {
				body = ada("C-1")
			}
			a := mustSend(t, tc.method, base+tc.path, body, tc.auth...)
			if a.status != tc.want {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.want)
			}
			if tc.want == 401 {
				if code := errCode(t, a); code != crmapi.CodeUnauthorized {
					t.Errorf("got code %q, want %q", code, crmapi.CodeUnauthorized)
				}
				if a.header.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			}
		})
	}

	t.Run("no token configured", func(t *testing.T) {
		_, open := fakecrmtest.Start(t, fakecrm.Config{})
		if a := mustSend(t, "POST", open+crmapi.PathContacts, ada("C-1")); a.status != 201 {
			t.Fatalf("got %d %s, want 201", a.status, a.body)
		}
	})
}

func TestCreateValidation(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{})
	long := strings.Repeat("x", contact.MaxExternalIDLen)
	tests := []struct {
		name     string
		body     string
		want     int
		wantCode string
	}{
		{"valid", `{"external_id":"C-1","email":"ada@example.com"}`, 201, ""},
		{"valid with every field", `{"external_id":"C-2","email":"a@b.co","first_name":"A","last_name":"L","phone":"1","attributes":{"k":"v"}}`, 201, ""},
		{"external id of 128 chars", `{"external_id":"` + long + `","email":"a@b.co"}`, 201, ""},
		{"external id of 128 multibyte chars", `{"external_id":"` + strings.Repeat("é", 128) + `","email":"a@b.co"}`, 201, ""},
		{"missing external id", `{"email":"a@b.co"}`, 400, contact.CodeMissingExternalID},
		{"external id of 129 chars", `{"external_id":"` + long + `x","email":"a@b.co"}`, 400, contact.CodeExternalIDTooLong},
		{"missing email", `{"external_id":"C-3"}`, 400, contact.CodeMissingEmail},
		{"email without @", `{"external_id":"C-3","email":"ada.example.com"}`, 400, contact.CodeInvalidEmail},
		{"email with two @", `{"external_id":"C-3","email":"ada@home@example.com"}`, 400, contact.CodeInvalidEmail},
		{"email with empty local part", `{"external_id":"C-3","email":"@example.com"}`, 400, contact.CodeInvalidEmail},
		{"email domain without dot", `{"external_id":"C-3","email":"ada@localhost"}`, 400, contact.CodeInvalidEmail},
		{"email with empty domain", `{"external_id":"C-3","email":"ada@"}`, 400, contact.CodeInvalidEmail},
		{"email with space", `{"external_id":"C-3","email":"ada lovelace@example.com"}`, 400, contact.CodeInvalidEmail},
		{"email with tab", `{"external_id":"C-3","email":"ada@exa\tmple.com"}`, 400, contact.CodeInvalidEmail},
		{"not JSON", `{"external_id":`, 400, crmapi.CodeMalformed},
		{"trailing garbage", `{"external_id":"C-3","email":"a@b.co"} x`, 400, crmapi.CodeMalformed},
		{"array", `[]`, 400, crmapi.CodeMalformed},
		{"number as external id", `{"external_id":7,"email":"a@b.co"}`, 400, crmapi.CodeMalformed},
		{"non-string attribute", `{"external_id":"C-3","email":"a@b.co","attributes":{"n":1}}`, 400, crmapi.CodeMalformed},
		{"empty body", ``, 400, crmapi.CodeMalformed},
	}
	created := 0
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := mustSend(t, "POST", base+crmapi.PathContacts, tc.body)
			if a.status != tc.want {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.want)
			}
			if tc.want == 201 {
				created++
				got := decode[crmapi.CreateResponse](t, a)
				if got.ID == "" {
					t.Errorf("created without an id: %s", a.body)
				}
				return
			}
			if code := errCode(t, a); code != tc.wantCode {
				t.Errorf("got code %q, want %q", code, tc.wantCode)
			}
		})
	}
	if got := srv.Audit().Contacts; got != int64(created) {
		t.Errorf("got %d contacts, want %d: invalid contacts must not be stored", got, created)
	}
}

func TestBatchPartialRejection(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{})
	req := batchOf("C-1", "C-2", "C-3", "C-4")
	req.Contacts[1].Email = "not-an-email"
	req.Contacts[3].ExternalID = ""
	a := mustSend(t, "POST", base+crmapi.PathBatch, req)
	if a.status != 200 {
		t.Fatalf("got %d %s, want 200", a.status, a.body)
	}
	got := decode[crmapi.BatchResponse](t, a).Results
	want := []struct{ ext, status, code string }{
		{"C-1", crmapi.StatusCreated, ""},
		{"C-2", crmapi.StatusRejected, contact.CodeInvalidEmail},
		{"C-3", crmapi.StatusCreated, ""},
		{"", crmapi.StatusRejected, contact.CodeMissingExternalID},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d results, want %d: %s", len(got), len(want), a.body)
	}
	for i, w := range want {
		r := got[i]
		if r.ExternalID != w.ext || r.Status != w.status {
			t.Errorf("result %d: got %s/%s, want %s/%s", i, r.ExternalID, r.Status, w.ext, w.status)
		}
		switch {
		case w.code == "" && (r.ID == "" || r.Error != nil):
			t.Errorf("result %d: created needs an id and no error: %+v", i, r)
		case w.code != "" && (r.ID != "" || r.Error == nil || r.Error.Code != w.code || r.Error.Message == ""):
			t.Errorf("result %d: got %+v, want rejection %s with a message", i, r, w.code)
		}
	}
	if c := srv.Audit(); c.Contacts != 2 || c.Creates != 2 {
		t.Errorf("got %d contacts and %d creates, want 2 and 2", c.Contacts, c.Creates)
	}
}

// Blocked domains are a policy, not a fault: the same contacts are
// rejected on every send, by both endpoints, and nothing of them is stored.
func TestBlockedDomains(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{Faults: fakecrm.Faults{BlockedDomains: " spam.example, Junk.Example ,"}})
	req := batchOf("C-1", "C-2", "C-3", "C-4")
	req.Contacts[1].Email = "x@SPAM.example"
	req.Contacts[2].Email = "y@junk.example"
	req.Contacts[3].Email = "not-an-email" // the contact's own rules come first
	for range 2 {
		a := mustSend(t, "POST", base+crmapi.PathBatch, req)
		if a.status != 200 {
			t.Fatalf("got %d %s, want 200", a.status, a.body)
		}
		got := decode[crmapi.BatchResponse](t, a).Results
		want := []string{"", fakecrm.CodeEmailDomainBlocked, fakecrm.CodeEmailDomainBlocked, contact.CodeInvalidEmail}
		for i, w := range want {
			var code string
			if got[i].Error != nil {
				code = got[i].Error.Code
			}
			if code != w || (w == "") != (got[i].Status == crmapi.StatusCreated) {
				t.Errorf("result %d: got %+v, want code %q", i, got[i], w)
			}
		}
	}
	one := ada("C-9")
	one.Email = "z@spam.example"
	a := mustSend(t, "POST", base+crmapi.PathContacts, one)
	if a.status != 400 || errCode(t, a) != fakecrm.CodeEmailDomainBlocked {
		t.Errorf("single create: got %d %s, want 400 %s", a.status, a.body, fakecrm.CodeEmailDomainBlocked)
	}
	// Subdomains and look-alikes are not blocked.
	for _, email := range []string{"a@mail.spam.example", "a@spam.example.org"} {
		ok := ada("C-" + email)
		ok.Email = email
		if a := mustSend(t, "POST", base+crmapi.PathContacts, ok); a.status != 201 {
			t.Errorf("%s: got %d %s, want 201", email, a.status, a.body)
		}
	}
	if c := srv.Audit().Contacts; c != 2+2 {
		t.Errorf("got %d contacts, want 4: blocked contacts must not be stored", c)
	}

	// The admin API sets and clears the list.
	if a := mustSend(t, "PUT", base+fakecrm.PathAdminFaults, `{"blocked_domains":"example.com"}`); a.status != 200 || !bytes.Contains(a.body, []byte(`"blocked_domains":"example.com"`)) {
		t.Fatalf("PUT blocked_domains: got %d %s", a.status, a.body)
	}
	if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-10")); a.status != 400 {
		t.Errorf("after PUT: got %d %s, want 400", a.status, a.body)
	}
	if a := mustSend(t, "PUT", base+fakecrm.PathAdminFaults, `{"blocked_domains":"a@b.example"}`); a.status != 400 {
		t.Errorf("PUT of an address: got %d %s, want 400", a.status, a.body)
	}
	mustSend(t, "PUT", base+fakecrm.PathAdminFaults, `{"blocked_domains":""}`)
	if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-10")); a.status != 201 {
		t.Errorf("after clearing: got %d %s, want 201", a.status, a.body)
	}
}

func TestBatchLimits(t *testing.T) {
	ids := func(n int) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("C-%d", i)
		}
		return s
	}
	tests := []struct {
		name     string
		maxBatch int
		body     any
		want     int
		wantCode string
	}{
		{"100 fits the default", 0, batchOf(ids(100)...), 200, ""},
		{"101 is too many", 0, batchOf(ids(101)...), 413, crmapi.CodeBatchTooLarge},
		{"configured max fits", 5, batchOf(ids(5)...), 200, ""},
		{"configured max exceeded", 5, batchOf(ids(6)...), 413, crmapi.CodeBatchTooLarge},
		{"empty list", 0, `{"contacts":[]}`, 400, crmapi.CodeEmptyBatch},
		{"no contacts field", 0, `{}`, 400, crmapi.CodeEmptyBatch},
		{"malformed", 0, `{"contacts":[{]}`, 400, crmapi.CodeMalformed},
		{"contacts not a list", 0, `{"contacts":{}}`, 400, crmapi.CodeMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, base := fakecrmtest.Start(t, fakecrm.Config{MaxBatch: tc.maxBatch})
			a := mustSend(t, "POST", base+crmapi.PathBatch, tc.body)
			if a.status != tc.want {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.want)
			}
			if tc.wantCode != "" {
				if code := errCode(t, a); code != tc.wantCode {
					t.Errorf("got code %q, want %q", code, tc.wantCode)
				}
				if n := srv.Audit().Contacts; n != 0 {
					t.Errorf("a refused batch created %d contacts", n)
				}
			}
		})
	}
}

func TestLookup(t *testing.T) {
	_, base := fakecrmtest.Start(t, fakecrm.Config{})
	list := func(ext string) []crmapi.StoredContact {
		t.Helper()
		a := mustSend(t, "GET", base+crmapi.PathContacts+"?external_id="+ext, nil)
		if a.status != 200 {
			t.Fatalf("got %d %s, want 200", a.status, a.body)
		}
		if !bytes.Contains(a.body, []byte(`"contacts":[`)) {
			t.Errorf("contacts must be a list, even empty: %s", a.body)
		}
		return decode[crmapi.ListResponse](t, a).Contacts
	}
	if got := list("C-1"); len(got) != 0 {
		t.Fatalf("got %d contacts before any create, want 0", len(got))
	}
	first := decode[crmapi.CreateResponse](t, mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1")))
	mustSend(t, "POST", base+crmapi.PathContacts, ada("C-2"))
	dup := ada("C-1")
	dup.FirstName = "Augusta"
	second := decode[crmapi.CreateResponse](t, mustSend(t, "POST", base+crmapi.PathContacts, dup))

	got := list("C-1")
	if len(got) != 2 {
		t.Fatalf("got %d contacts for a duplicated external id, want 2", len(got))
	}
	if got[0].ID != first.ID || got[1].ID != second.ID || first.ID == second.ID {
		t.Errorf("got ids %s, %s; want %s then %s, oldest first", got[0].ID, got[1].ID, first.ID, second.ID)
	}
	if got[0].FirstName != "Ada" || got[1].FirstName != "Augusta" || got[0].Attributes.Map()["company"] == "" || got[0].CreatedAt == "" {
		t.Errorf("stored contacts lost fields: %+v", got)
	}
	if _, err := time.Parse(time.RFC3339Nano, got[0].CreatedAt); err != nil {
		t.Errorf("created_at %q: %v", got[0].CreatedAt, err)
	}

	for _, q := range []string{"", "?external_id=", "?other=1"} {
		a := mustSend(t, "GET", base+crmapi.PathContacts+q, nil)
		if a.status != 400 || errCode(t, a) != crmapi.CodeMalformed {
			t.Errorf("GET %q: got %d %s, want 400 %s", q, a.status, a.body, crmapi.CodeMalformed)
		}
	}
}

func TestRouting(t *testing.T) {
	_, base := fakecrmtest.Start(t, fakecrm.Config{})
	tests := []struct {
		method, path string
		want         int
		wantAllow    string
	}{
		{"DELETE", crmapi.PathContacts, 405, "GET, POST"},
		{"GET", crmapi.PathBatch, 405, "POST"},
		{"GET", "/v1/nope", 404, ""},
		{"GET", "/", 404, ""},
		{"GET", "/admin/nope", 404, ""},
		{"POST", fakecrm.PathAdminAudit, 405, "GET"},
		{"GET", fakecrm.PathAdminReset, 405, "POST"},
		{"DELETE", fakecrm.PathAdminFaults, 405, "GET, PUT"},
	}
	for _, tc := range tests {
		a := mustSend(t, tc.method, base+tc.path, nil)
		if a.status != tc.want || a.header.Get("Allow") != tc.wantAllow {
			t.Errorf("%s %s: got %d Allow=%q, want %d Allow=%q", tc.method, tc.path, a.status, a.header.Get("Allow"), tc.want, tc.wantAllow)
		}
		if a.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: error is not JSON: %s", tc.method, tc.path, a.body)
		}
	}
}

func TestIdempotency(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{})
	key := func(k string) []string { return []string{crmapi.HeaderIdempotencyKey, k} }

	t.Run("replay", func(t *testing.T) {
		first := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1"), key("k-1")...)
		again := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1"), key("k-1")...)
		if first.status != 201 || again.status != 201 {
			t.Fatalf("got %d then %d, want 201 twice", first.status, again.status)
		}
		if first.header.Get(crmapi.HeaderReplayed) != "" || again.header.Get(crmapi.HeaderReplayed) != "true" {
			t.Errorf("got Idempotent-Replayed %q then %q, want \"\" then \"true\"",
				first.header.Get(crmapi.HeaderReplayed), again.header.Get(crmapi.HeaderReplayed))
		}
		if !bytes.Equal(first.body, again.body) {
			t.Errorf("replayed body %s differs from %s", again.body, first.body)
		}
	})
	t.Run("batch replay", func(t *testing.T) {
		first := mustSend(t, "POST", base+crmapi.PathBatch, batchOf("C-2", "C-3"), key("k-2")...)
		again := mustSend(t, "POST", base+crmapi.PathBatch, batchOf("C-2", "C-3"), key("k-2")...)
		if first.status != 200 || again.status != 200 || !bytes.Equal(first.body, again.body) ||
			again.header.Get(crmapi.HeaderReplayed) != "true" {
			t.Fatalf("got %d %s then %d %s, want the same 200 replayed", first.status, first.body, again.status, again.body)
		}
	})
	t.Run("same key, other body", func(t *testing.T) {
		a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-9"), key("k-1")...)
		if a.status != 422 || errCode(t, a) != crmapi.CodeIdempotencyKeyReused {
			t.Fatalf("got %d %s, want 422 %s", a.status, a.body, crmapi.CodeIdempotencyKeyReused)
		}
	})
	t.Run("same key, other endpoint", func(t *testing.T) {
		a := mustSend(t, "POST", base+crmapi.PathBatch, ada("C-1"), key("k-1")...)
		if a.status != 422 {
			t.Fatalf("got %d %s, want 422", a.status, a.body)
		}
	})
	t.Run("failed request frees its key", func(t *testing.T) {
		bad := ada("C-5")
		bad.Email = "nope"
		if a := mustSend(t, "POST", base+crmapi.PathContacts, bad, key("k-5")...); a.status != 400 {
			t.Fatalf("got %d, want 400", a.status)
		}
		if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-5"), key("k-5")...); a.status != 201 || a.header.Get(crmapi.HeaderReplayed) != "" {
			t.Fatalf("got %d replayed=%q, want a fresh 201", a.status, a.header.Get(crmapi.HeaderReplayed))
		}
	})
	if a := srv.Audit(); a.Contacts != 4 || a.DuplicateContacts != 0 || a.IdempotentReplays != 2 {
		t.Errorf("got %d contacts, %d duplicates, %d replays; want 4, 0, 2", a.Contacts, a.DuplicateContacts, a.IdempotentReplays)
	}

	t.Run("key length", func(t *testing.T) {
		tests := []struct {
			key  string
			want int
		}{
			{"", 400},
			{strings.Repeat("k", 256), 400},
			{strings.Repeat("k", 255), 201},
			{"k", 201},
		}
		for i, tc := range tests {
			a := mustSend(t, "POST", base+crmapi.PathContacts, ada(fmt.Sprintf("L-%d", i)), key(tc.key)...)
			if a.status != tc.want {
				t.Errorf("key of %d chars: got %d %s, want %d", len(tc.key), a.status, a.body, tc.want)
			}
			if tc.want == 400 && errCode(t, a) != crmapi.CodeInvalidIdempotency {
				t.Errorf("key of %d chars: got %s, want %s", len(tc.key), a.body, crmapi.CodeInvalidIdempotency)
			}
		}
	})
}

func TestIdempotencyInProgress(t *testing.T) {
	srv, err := fakecrm.New(fakecrm.Config{})
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fakecrm.SetAfterReserve(srv, func() {
		once.Do(func() { // only the first request waits
			close(entered)
			<-release
		})
	})
	_, base := startServer(t, srv)

	hdr := []string{crmapi.HeaderIdempotencyKey, "k-slow"}
	done := make(chan answer)
	go func() {
		a, err := send(t, defaultClient, "POST", base+crmapi.PathContacts, ada("C-1"), hdr...)
		if err != nil {
			t.Error(err)
		}
		done <- a
	}()
	<-entered
	a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1"), hdr...)
	if a.status != 409 || errCode(t, a) != crmapi.CodeRequestInProgress || a.header.Get(crmapi.HeaderRetryAfter) == "" {
		t.Errorf("while in progress: got %d %v %s, want 409 %s with Retry-After", a.status, a.header, a.body, crmapi.CodeRequestInProgress)
	}
	close(release)
	if first := <-done; first.status != 201 {
		t.Fatalf("first request: got %d %s, want 201", first.status, first.body)
	}
	if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1"), hdr...); a.status != 201 || a.header.Get(crmapi.HeaderReplayed) != "true" {
		t.Errorf("after: got %d replayed=%q, want a replayed 201", a.status, a.header.Get(crmapi.HeaderReplayed))
	}
	if n := srv.Audit().Contacts; n != 1 {
		t.Errorf("got %d contacts, want 1", n)
	}
}

// TestIdempotencyConcurrent races many identical keyed requests: exactly one
// creates, the others see 409 or a replay.
func TestIdempotencyConcurrent(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 20 * time.Millisecond}})
	const n = 16
	answers := make([]answer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a, err := send(t, defaultClient, "POST", base+crmapi.PathBatch, batchOf("C-1", "C-2"), crmapi.HeaderIdempotencyKey, "k-race")
			if err != nil {
				t.Error(err)
			}
			answers[i] = a
		})
	}
	wg.Wait()
	fresh := 0
	for _, a := range answers {
		switch {
		case a.status == 200 && a.header.Get(crmapi.HeaderReplayed) == "":
			fresh++
		case a.status == 200, a.status == 409:
		default:
			t.Errorf("got %d %s, want 200 or 409", a.status, a.body)
		}
	}
	if fresh != 1 {
		t.Errorf("got %d fresh answers, want exactly 1", fresh)
	}
	if a := srv.Audit(); a.Contacts != 2 || a.DuplicateContacts != 0 {
		t.Errorf("got %d contacts, %d duplicates; want 2, 0", a.Contacts, a.DuplicateContacts)
	}
}

func TestIdempotencyDisabled(t *testing.T) {
	tests := []struct {
		name string
		turn func(srv *fakecrm.Server, base string)
	}{
		{"config", nil},
		{"SetIdempotency", func(srv *fakecrm.Server, _ string) { srv.SetIdempotency(false) }},
		{"admin", func(_ *fakecrm.Server, base string) {
			mustSend(t, "PUT", base+fakecrm.PathAdminFaults, `{"idempotency":false}`)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, base := fakecrmtest.Start(t, fakecrm.Config{DisableIdempotency: tc.turn == nil})
			if tc.turn != nil {
				tc.turn(srv, base)
			}
			for range 2 {
				// Even an invalid key is ignored when the CRM ignores the header.
				for _, k := range []string{"k-1", ""} {
					a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1"), crmapi.HeaderIdempotencyKey, k)
					if a.status != 201 || a.header.Get(crmapi.HeaderReplayed) != "" {
						t.Fatalf("got %d replayed=%q, want a fresh 201", a.status, a.header.Get(crmapi.HeaderReplayed))
					}
				}
			}
			if a := srv.Audit(); a.Contacts != 4 || a.DuplicateContacts != 3 || a.IdempotentReplays != 0 {
				t.Errorf("got %d contacts, %d duplicates, %d replays; want 4, 3, 0", a.Contacts, a.DuplicateContacts, a.IdempotentReplays)
			}
		})
	}
}

func TestFailRateCreatesNothing(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{Faults: fakecrm.Faults{FailRate: 1}})
	hdr := []string{crmapi.HeaderIdempotencyKey, "k-1"}
	for _, path := range []string{crmapi.PathContacts, crmapi.PathBatch} {
		for range 5 {
			a := mustSend(t, "POST", base+path, batchOf("C-1"), hdr...)
			if a.status != 503 || errCode(t, a) != crmapi.CodeUnavailable {
				t.Fatalf("got %d %s, want 503 %s", a.status, a.body, crmapi.CodeUnavailable)
			}
			if ra := a.header.Get(crmapi.HeaderRetryAfter); ra != "" && ra != "1" {
				t.Errorf("got Retry-After %q, want none or 1", ra)
			}
		}
	}
	a := srv.Audit()
	if a.Contacts != 0 || a.Failed != 10 || a.ResponsesByStatus[503] != 10 {
		t.Errorf("got %d contacts, %d failed, %d 503s; want 0, 10, 10", a.Contacts, a.Failed, a.ResponsesByStatus[503])
	}
	// GETs are not failed by the fail rate.
	if a := mustSend(t, "GET", base+crmapi.PathContacts+"?external_id=C-1", nil); a.status != 200 {
		t.Errorf("GET: got %d, want 200", a.status)
	}
	// The key was not stored: it works once the CRM recovers.
	srv.SetFaults(fakecrm.Faults{})
	if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1"), hdr...); a.status != 201 || a.header.Get(crmapi.HeaderReplayed) != "" {
		t.Errorf("after recovery: got %d replayed=%q, want a fresh 201", a.status, a.header.Get(crmapi.HeaderReplayed))
	}
}

// TestAmbiguous checks every ambiguous answer: the contact WAS created, and
// a retry with the same key is replayed instead of creating it again.
func TestAmbiguous(t *testing.T) {
	tests := []struct {
		mode       string
		wantStatus int // 0: no answer at all
		wantCode   string
		hang       time.Duration
	}{
		{"500", 500, crmapi.CodeInternal, 0},
		{"502", 502, crmapi.CodeBadGateway, 0},
		{"504", 504, crmapi.CodeGatewayTimeout, 0},
		{"reset", 0, "", 0},
		{"hang", 0, "", 50 * time.Millisecond},
	}
	for _, tc := range tests {
		for _, path := range []string{crmapi.PathContacts, crmapi.PathBatch} {
			t.Run(tc.mode+path, func(t *testing.T) {
				srv, base := fakecrmtest.Start(t, fakecrm.Config{Faults: fakecrm.Faults{
					AmbiguousRate: 1, AmbiguousModes: tc.mode, Hang: tc.hang}})
				var body any = ada("C-1")
				if path == crmapi.PathBatch {
					body = batchOf("C-1")
				}
				hdr := []string{crmapi.HeaderIdempotencyKey, "k-1"}
				start := time.Now()
				a, err := send(t, freshClient(10*time.Second), "POST", base+path, body, hdr...)
				switch {
				case tc.wantStatus == 0 && err == nil:
					t.Fatalf("got %d %s, want no answer", a.status, a.body)
				case tc.wantStatus != 0 && err != nil:
					t.Fatal(err)
				case tc.wantStatus != 0 && (a.status != tc.wantStatus || errCode(t, a) != tc.wantCode):
					t.Fatalf("got %d %s, want %d %s", a.status, a.body, tc.wantStatus, tc.wantCode)
				}
				if elapsed := time.Since(start); elapsed < tc.hang {
					t.Errorf("answered after %v, want a hang of at least %v", elapsed, tc.hang)
				}
				if a := srv.Audit(); a.Contacts != 1 || a.Ambiguous != 1 {
					t.Fatalf("got %d contacts, %d ambiguous; want 1, 1: an ambiguous answer must create", a.Contacts, a.Ambiguous)
				}
				// While the CRM still misbehaves the replay is ambiguous too,
				// and still creates nothing.
				send(t, freshClient(10*time.Second), "POST", base+path, body, hdr...) //nolint:errcheck
				srv.SetFaults(fakecrm.Faults{})
				again := mustSend(t, "POST", base+path, body, hdr...)
				if again.status/100 != 2 || again.header.Get(crmapi.HeaderReplayed) != "true" {
					t.Fatalf("retry: got %d replayed=%q %s, want a replayed 2xx", again.status, again.header.Get(crmapi.HeaderReplayed), again.body)
				}
				au := srv.Audit()
				if au.Contacts != 1 || au.DuplicateContacts != 0 || au.IdempotentReplays != 1 {
					t.Errorf("got %d contacts, %d duplicates, %d replays; want 1, 0, 1", au.Contacts, au.DuplicateContacts, au.IdempotentReplays)
				}
				wantDropped := int64(0)
				if tc.wantStatus == 0 {
					wantDropped = 2
				}
				if au.Dropped != wantDropped {
					t.Errorf("got %d dropped connections, want %d", au.Dropped, wantDropped)
				}
			})
		}
	}
}

// TestHangOutlastsClient: the client gives up first, the contact exists,
// and closing the server does not wait for the hang.
func TestHangOutlastsClient(t *testing.T) {
	srv, err := fakecrm.New(fakecrm.Config{Faults: fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "hang", Hang: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	_, base := startServer(t, srv)
	_, err = send(t, freshClient(300*time.Millisecond), "POST", base+crmapi.PathContacts, ada("C-1"))
	if err == nil {
		t.Fatal("got an answer, want a client timeout")
	}
	waitFor(t, func() bool { return srv.Audit().Contacts == 1 })
	// A second request stays hung until Close releases it.
	go send(t, freshClient(time.Minute), "POST", base+crmapi.PathContacts, ada("C-2")) //nolint:errcheck
	waitFor(t, func() bool { return srv.Audit().Contacts == 2 })
	start := time.Now()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with a request hanging, want prompt", d)
	}
}

func TestDown(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{})
	mustSend(t, "PUT", base+fakecrm.PathAdminFaults, `{"down":true}`)
	for _, r := range []struct{ method, path string }{
		{"POST", crmapi.PathContacts}, {"POST", crmapi.PathBatch}, {"GET", crmapi.PathContacts + "?external_id=C-1"},
	} {
		a := mustSend(t, r.method, base+r.path, batchOf("C-1"))
		if a.status != 503 || errCode(t, a) != crmapi.CodeUnavailable || a.header.Get(crmapi.HeaderRetryAfter) != "1" {
			t.Errorf("%s %s while down: got %d %v %s, want 503 with Retry-After 1", r.method, r.path, a.status, a.header, a.body)
		}
	}
	if a := mustSend(t, "GET", base+fakecrm.PathAdminAudit, nil); a.status != 200 {
		t.Errorf("admin while down: got %d, want 200", a.status)
	}
	mustSend(t, "PUT", base+fakecrm.PathAdminFaults, `{"down":false}`)
	if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1")); a.status != 201 {
		t.Errorf("back up: got %d, want 201", a.status)
	}
	if a := srv.Audit(); a.Contacts != 1 || a.Failed != 3 {
		t.Errorf("got %d contacts, %d failed; want 1, 3", a.Contacts, a.Failed)
	}
}

func TestRateLimit(t *testing.T) {
	tests := []struct {
		name           string
		rate           float64
		burst          int
		wantRetryAfter string
	}{
		{"1 per second", 1, 1, "1"},
		{"burst of 3", 1, 3, "1"},
		{"one every 4s", 0.25, 2, "4"},
		{"fast rate still says 1", 50, 5, "1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := fakecrm.New(fakecrm.Config{Faults: fakecrm.Faults{Rate: tc.rate, Burst: tc.burst}})
			if err != nil {
				t.Fatal(err)
			}
			// A frozen clock: however slow the requests, no token refills.
			frozen := time.Now()
			fakecrm.SetClock(srv, func() time.Time { return frozen })
			_, base := startServer(t, srv)
			for i := range tc.burst {
				if a := mustSend(t, "POST", base+crmapi.PathContacts, ada(fmt.Sprint("C-", i))); a.status != 201 {
					t.Fatalf("request %d within the burst: got %d, want 201", i, a.status)
				}
			}
			for _, r := range []struct{ method, path string }{
				{"POST", crmapi.PathContacts}, {"GET", crmapi.PathContacts + "?external_id=C-0"},
			} {
				a := mustSend(t, r.method, base+r.path, ada("C-x"))
				if a.status != 429 || errCode(t, a) != crmapi.CodeRateLimited || a.header.Get(crmapi.HeaderRetryAfter) != tc.wantRetryAfter {
					t.Errorf("%s beyond the burst: got %d Retry-After=%q %s, want 429 Retry-After=%s",
						r.method, a.status, a.header.Get(crmapi.HeaderRetryAfter), a.body, tc.wantRetryAfter)
				}
			}
			if a := srv.Audit(); a.Contacts != int64(tc.burst) || a.RateLimited != 2 || a.ResponsesByStatus[429] != 2 {
				t.Errorf("got %d contacts, %d rate limited; want %d, 2", a.Contacts, a.RateLimited, tc.burst)
			}
			// Lifting the limit takes effect at once.
			srv.SetFaults(fakecrm.Faults{})
			if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-y")); a.status != 201 {
				t.Errorf("after lifting: got %d, want 201", a.status)
			}
		})
	}
}

func TestLatency(t *testing.T) {
	_, base := fakecrmtest.Start(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 30 * time.Millisecond, Jitter: 10 * time.Millisecond}})
	for _, r := range []struct{ method, path string }{
		{"POST", crmapi.PathContacts}, {"GET", crmapi.PathContacts + "?external_id=C-1"},
	} {
		start := time.Now()
		mustSend(t, r.method, base+r.path, ada("C-1"))
		if d := time.Since(start); d < 30*time.Millisecond {
			t.Errorf("%s answered in %v, want at least the 30ms latency", r.method, d)
		}
	}
}

// statuses sends n numbered POSTs one after another and returns the
// status of each.
func statuses(t *testing.T, base string, n int) []int {
	t.Helper()
	out := make([]int, n)
	for i := range out {
		out[i] = mustSend(t, "POST", base+crmapi.PathContacts, ada(fmt.Sprint("C-", i))).status
	}
	return out
}

func TestSeedReproducible(t *testing.T) {
	faults := fakecrm.Faults{FailRate: 0.3, AmbiguousRate: 0.3, AmbiguousModes: "500,502,504"}
	const n = 40
	srvA, a := fakecrmtest.Start(t, fakecrm.Config{Seed: 7, Faults: faults})
	_, b := fakecrmtest.Start(t, fakecrm.Config{Seed: 7, Faults: faults})
	_, c := fakecrmtest.Start(t, fakecrm.Config{Seed: 8, Faults: faults})
	runA, runB, runC := statuses(t, a, n), statuses(t, b, n), statuses(t, c, n)
	if fmt.Sprint(runA) != fmt.Sprint(runB) {
		t.Errorf("same seed, different faults:\n%v\n%v", runA, runB)
	}
	if fmt.Sprint(runA) == fmt.Sprint(runC) {
		t.Errorf("different seeds, same faults: %v", runA)
	}
	kinds := map[int]bool{}
	for _, s := range runA {
		kinds[s] = true
	}
	if !kinds[201] || !kinds[503] || !(kinds[500] || kinds[502] || kinds[504]) {
		t.Errorf("40 requests at 30%%/30%% faults gave only %v", runA)
	}
	// Reset restarts the sequence.
	srvA.Reset()
	if again := statuses(t, a, n); fmt.Sprint(again) != fmt.Sprint(runA) {
		t.Errorf("after Reset:\n%v\nwant\n%v", again, runA)
	}
}

func TestAdmin(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{})
	mustSend(t, "POST", base+crmapi.PathBatch, batchOf("C-1", "C-2"))
	mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1"))
	mustSend(t, "POST", base+crmapi.PathContacts, "{", crmapi.HeaderIdempotencyKey, "k")

	t.Run("audit", func(t *testing.T) {
		a := mustSend(t, "GET", base+fakecrm.PathAdminAudit, nil)
		var raw map[string]any
		if err := json.Unmarshal(a.body, &raw); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"requests", "creates", "contacts", "distinct_external_ids", "duplicate_contacts",
			"idempotent_replays", "responses_by_status", "rate_limited", "failed", "ambiguous", "dropped"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("audit lacks %q: %s", k, a.body)
			}
		}
		got := decode[fakecrm.Audit](t, a)
		want := fakecrm.Audit{Requests: 3, Creates: 3, Contacts: 3, DistinctExternalIDs: 2, DuplicateContacts: 1,
			ResponsesByStatus: map[int]int64{200: 1, 201: 1, 400: 1}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
		if fmt.Sprint(srv.Audit()) != fmt.Sprint(want) {
			t.Errorf("Audit() = %+v, want %+v", srv.Audit(), want)
		}
	})
	t.Run("contacts", func(t *testing.T) {
		all := decode[crmapi.ListResponse](t, mustSend(t, "GET", base+fakecrm.PathAdminContacts, nil)).Contacts
		one := decode[crmapi.ListResponse](t, mustSend(t, "GET", base+fakecrm.PathAdminContacts+"?external_id=C-2", nil)).Contacts
		if len(all) != 3 || len(one) != 1 || one[0].ExternalID != "C-2" {
			t.Errorf("got %d contacts and %v for C-2, want 3 and one", len(all), one)
		}
		if got := srv.Contacts(); len(got) != 3 || got[0].ID != all[0].ID {
			t.Errorf("Contacts() = %v, want the same three", got)
		}
	})
	t.Run("faults", func(t *testing.T) {
		got := mustSend(t, "PUT", base+fakecrm.PathAdminFaults, `{"fail_rate":0.5,"latency":"250ms","hang":1000000,"rate":10}`)
		if got.status != 200 {
			t.Fatalf("got %d %s, want 200", got.status, got.body)
		}
		want := fakecrm.Faults{FailRate: 0.5, Latency: 250 * time.Millisecond, Hang: time.Millisecond, Rate: 10}
		if f := srv.Faults(); f != want {
			t.Errorf("Faults() = %+v, want %+v", f, want)
		}
		// A second PUT changes only what it names.
		mustSend(t, "PUT", base+fakecrm.PathAdminFaults, `{"burst":3,"ambiguous_modes":"reset"}`)
		want.Burst, want.AmbiguousModes = 3, "reset"
		if f := srv.Faults(); f != want {
			t.Errorf("after a partial PUT: Faults() = %+v, want %+v", f, want)
		}
		view := mustSend(t, "GET", base+fakecrm.PathAdminFaults, nil)
		for _, s := range []string{`"latency":"250ms"`, `"fail_rate":0.5`, `"idempotency":true`, `"down":false`, `"hang":"1ms"`} {
			if !bytes.Contains(view.body, []byte(s)) {
				t.Errorf("GET faults lacks %s: %s", s, view.body)
			}
		}
		for _, bad := range []string{`{"fail_rate":2}`, `{"fail_rat":0.1}`, `{"latency":"soon"}`, `{"ambiguous_modes":"418"}`, `[]`, `{"rate":-1}`} {
			if a := mustSend(t, "PUT", base+fakecrm.PathAdminFaults, bad); a.status != 400 {
				t.Errorf("PUT %s: got %d, want 400", bad, a.status)
			}
		}
		if f := srv.Faults(); f != want {
			t.Errorf("a refused PUT changed the faults: %+v", f)
		}
		srv.SetFaults(fakecrm.Faults{})
	})
	t.Run("reset", func(t *testing.T) {
		if a := mustSend(t, "POST", base+fakecrm.PathAdminReset, nil); a.status != 204 {
			t.Fatalf("got %d, want 204", a.status)
		}
		a := srv.Audit()
		if a.Requests != 0 || a.Contacts != 0 || a.Creates != 0 || len(a.ResponsesByStatus) != 0 {
			t.Errorf("after reset: %+v", a)
		}
		// The idempotency store is gone too: a known key creates again.
		if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1"), crmapi.HeaderIdempotencyKey, "k"); a.status != 201 || a.header.Get(crmapi.HeaderReplayed) != "" {
			t.Errorf("got %d replayed=%q, want a fresh 201", a.status, a.header.Get(crmapi.HeaderReplayed))
		}
		if c := srv.Contacts(); len(c) != 1 || c[0].ID != "ct_00000001" {
			t.Errorf("after reset ids restart: %v", c)
		}
	})
}

func TestAuditExactUnderConcurrency(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{})
	const workers, batches = 8, 10
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for b := range batches {
				ids := make([]string, 10)
				for i := range ids {
					ids[i] = fmt.Sprintf("W%d-B%d-%d", w, b, i)
				}
				if a, err := send(t, http.DefaultClient, "POST", base+crmapi.PathBatch, batchOf(ids...)); err != nil || a.status != 200 {
					t.Errorf("got %d %v", a.status, err)
				}
			}
		})
	}
	wg.Wait()
	a := srv.Audit()
	if want := int64(workers * batches * 10); a.Contacts != want || a.Creates != want || a.DistinctExternalIDs != want || a.DuplicateContacts != 0 {
		t.Errorf("got %+v, want %d distinct contacts", a, want)
	}
	if a.Requests != workers*batches || a.ResponsesByStatus[200] != workers*batches {
		t.Errorf("got %d requests, %d 200s; want %d", a.Requests, a.ResponsesByStatus[200], workers*batches)
	}
	ids := map[string]bool{}
	for _, c := range srv.Contacts() {
		if ids[c.ID] {
			t.Fatalf("id %s given twice", c.ID)
		}
		ids[c.ID] = true
	}
}

func TestClosedServerAnswers503(t *testing.T) {
	srv, err := fakecrm.New(fakecrm.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, base := startServer(t, srv)
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if a := mustSend(t, "POST", base+crmapi.PathContacts, ada("C-1")); a.status != 503 {
		t.Errorf("got %d, want 503", a.status)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []fakecrm.Config{
		{MaxBatch: -1},
		{Faults: fakecrm.Faults{FailRate: 1.5}},
		{Faults: fakecrm.Faults{AmbiguousRate: -0.1}},
		{Faults: fakecrm.Faults{Latency: -time.Second}},
		{Faults: fakecrm.Faults{AmbiguousModes: "boom"}},
		{Faults: fakecrm.Faults{BlockedDomains: "ok.example,me@bad.example"}},
	} {
		if _, err := fakecrm.New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded, want an error", cfg)
		}
	}
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
