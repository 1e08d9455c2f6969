package fakecrmtest_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
)

func TestStart(t *testing.T) {
	var srv *fakecrm.Server
	var base string
	t.Run("serve", func(t *testing.T) {
		srv, base = fakecrmtest.Start(t, fakecrm.Config{Token: "t"})
		if !strings.HasPrefix(base, "http://127.0.0.1:") {
			t.Errorf("base URL %q, want http://127.0.0.1:PORT", base)
		}
		req, _ := http.NewRequest("POST", base+crmapi.PathContacts, strings.NewReader(`{"external_id":"C-1","email":"a@b.co"}`))
		req.Header.Set("Authorization", "Bearer t")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 || srv.Audit().Contacts != 1 {
			t.Fatalf("got %d and %d contacts, want 201 and 1", resp.StatusCode, srv.Audit().Contacts)
		}
		// A request hanging for an hour must not hold up cleanup.
		srv.SetFaults(fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "hang", Hang: time.Hour})
		go func() {
			req, _ := http.NewRequest("POST", base+crmapi.PathContacts, strings.NewReader(`{"external_id":"C-2","email":"a@b.co"}`))
			req.Header.Set("Authorization", "Bearer t")
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		for deadline := time.Now().Add(5 * time.Second); srv.Audit().Contacts != 2; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the hanging request never arrived")
			}
		}
	})
	// The subtest's cleanup has run: the listener is gone.
	if _, err := http.Get(base + fakecrm.PathAdminAudit); err == nil {
		t.Error("the server still answers after cleanup")
	}
}
