package fakecrm_test

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/contact"
)

// Invalid UTF-8 in a key (an external id, an Idempotency-Key) is refused:
// JSON decoding would fold it into U+FFFD, and two different keys into one
// external id.
func TestInvalidUTF8Refused(t *testing.T) {
	tests := []struct {
		name    string
		path    string
		body    string
		headers []string
		want    int
	}{
		{"invalid byte in an external id", crmapi.PathBatch, `{"contacts":[{"external_id":"C-` + "\xff" + `","email":"a@example.com"}]}`, nil, 400},
		{"lone high surrogate", crmapi.PathBatch, `{"contacts":[{"external_id":"C-\ud800","email":"a@example.com"}]}`, nil, 400},
		{"lone low surrogate", crmapi.PathContacts, `{"external_id":"C-\udfff","email":"a@example.com"}`, nil, 400},
		{"escaped backslash then u", crmapi.PathContacts, `{"external_id":"C-\\ud800","email":"a@example.com"}`, nil, 201},
		{"surrogate pair", crmapi.PathContacts, `{"external_id":"C-\ud83d\ude00","email":"b@example.com"}`, nil, 201},
		{"literal U+FFFD", crmapi.PathContacts, `{"external_id":"C-` + "\uFFFD" + `","email":"c@example.com"}`, nil, 201},
		{"invalid Idempotency-Key", crmapi.PathContacts, `{"external_id":"C-k","email":"d@example.com"}`, []string{crmapi.HeaderIdempotencyKey, "k-\xfe"}, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, base := fakecrmtest.Start(t, fakecrm.Config{})
			a := mustSend(t, "POST", base+tc.path, tc.body, tc.headers...)
			if a.status != tc.want {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.want)
			}
			if tc.want == 400 {
				if n := srv.Audit().Contacts; n != 0 {
					t.Errorf("created %d contacts", n)
				}
				if code := errCode(t, a); code != contact.CodeInvalidUTF8 && code != crmapi.CodeInvalidIdempotency {
					t.Errorf("code %q", code)
				}
			}
		})
	}
	_, base := fakecrmtest.Start(t, fakecrm.Config{})
	a := mustSend(t, "GET", base+crmapi.PathContacts+"?external_id="+url.QueryEscape("C-\xff"), nil)
	if a.status != 400 {
		t.Errorf("lookup of an invalid external id: got %d, want 400", a.status)
	}
}

// A body is counted as it arrives: a Content-Length over the limit is
// refused before a byte is read, and a body that claims less than the
// limit but sends nothing costs at most a 256 KiB buffer (it runs into
// the read timeout of the binary's server, tested there).
func TestBodyLimits(t *testing.T) {
	_, base := fakecrmtest.Start(t, fakecrm.Config{})
	u, _ := url.Parse(base)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", crmapi.PathBatch, int64(1)<<40)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	if !strings.Contains(string(buf[:n]), "413") {
		t.Fatalf("a 1 TiB Content-Length: got %q, want 413 at once", buf[:n])
	}
	// Chunked, with no length: counted as it arrives.
	big := `{"contacts":[` + strings.Repeat(" ", fakecrm.MaxBodyBytes) + `]}`
	req, _ := http.NewRequest("POST", base+crmapi.PathBatch, struct{ *strings.Reader }{strings.NewReader(big)})
	resp, err := defaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Errorf("an oversized chunked body: got %d, want 413", resp.StatusCode)
		}
	}
}

// The idempotency store keeps at most IdempotencyKeys keys, each for
// IdempotencyTTL: an evicted key is a new key again.
func TestIdempotencyStoreBounded(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{IdempotencyKeys: 3})
	post := func(key, id string) answer {
		return mustSend(t, "POST", base+crmapi.PathContacts, ada(id), crmapi.HeaderIdempotencyKey, key)
	}
	for i := range 4 {
		if a := post(fmt.Sprint("k", i), fmt.Sprint("C-", i)); a.status != 201 {
			t.Fatalf("key %d: %d %s", i, a.status, a.body)
		}
	}
	// k3 is kept: a replay. k0 was evicted: the same request creates again.
	if a := post("k3", "C-3"); a.header.Get(crmapi.HeaderReplayed) != "true" {
		t.Errorf("k3: got %d %v, want a replay", a.status, a.header)
	}
	if a := post("k0", "C-0"); a.status != 201 || a.header.Get(crmapi.HeaderReplayed) == "true" {
		t.Errorf("k0: got %d %v, want created anew", a.status, a.header)
	}
	if n := srv.Audit().Contacts; n != 5 {
		t.Errorf("%d contacts, want 5", n)
	}
}
