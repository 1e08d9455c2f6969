package fakecrm_test

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
)

// startServer serves an already built srv, for tests that must reach into
// it before the first request; it is closed when the test ends.
func startServer(t *testing.T, srv *fakecrm.Server) (*httptest.Server, string) {
	t.Helper()
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		srv.Close()
		ts.Close()
	})
	return ts, ts.URL
}

func TestStateFileRoundTrip(t *testing.T) {
	file := filepath.Join(t.TempDir(), "crm.json")
	cfg := fakecrm.Config{StateFile: file}
	hdr := []string{crmapi.HeaderIdempotencyKey, "k-1"}

	srv1, err := fakecrm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, base1 := startServer(t, srv1)
	first := mustSend(t, "POST", base1+crmapi.PathBatch, batchOf("C-1", "C-2"), hdr...)
	mustSend(t, "POST", base1+crmapi.PathContacts, ada("C-1"))
	if err := srv1.Close(); err != nil {
		t.Fatal(err)
	}
	want := srv1.Contacts()

	srv2, err := fakecrm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, base2 := startServer(t, srv2)
	got := srv2.Contacts()
	if len(got) != 3 {
		t.Fatalf("got %d contacts after restart, want 3", len(got))
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].Email != want[i].Email || got[i].CreatedAt != want[i].CreatedAt ||
			got[i].Attributes.Map()["company"] != want[i].Attributes.Map()["company"] {
			t.Errorf("contact %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if a := srv2.Audit(); a.Contacts != 3 || a.DistinctExternalIDs != 2 || a.DuplicateContacts != 1 || a.Creates != 0 {
		t.Errorf("audit after restart: %+v", a)
	}
	// The key survived: the same request is replayed, not created again.
	again := mustSend(t, "POST", base2+crmapi.PathBatch, batchOf("C-1", "C-2"), hdr...)
	if again.header.Get(crmapi.HeaderReplayed) != "true" || string(again.body) != string(first.body) {
		t.Errorf("after restart: got %d %s, want the replay of %s", again.status, again.body, first.body)
	}
	// New ids do not collide with loaded ones.
	next := decode[crmapi.CreateResponse](t, mustSend(t, "POST", base2+crmapi.PathContacts, ada("C-3")))
	for _, c := range want {
		if c.ID == next.ID {
			t.Errorf("new id %s collides with a loaded contact", next.ID)
		}
	}
	if n := len(decode[crmapi.ListResponse](t, mustSend(t, "GET", base2+crmapi.PathContacts+"?external_id=C-1", nil)).Contacts); n != 2 {
		t.Errorf("lookup after restart found %d contacts for C-1, want 2", n)
	}
}

func TestStateFileSavedPeriodically(t *testing.T) {
	file := filepath.Join(t.TempDir(), "crm.json")
	_, base := fakecrmtest.Start(t, fakecrm.Config{StateFile: file, SaveInterval: 10 * time.Millisecond})
	mustSend(t, "POST", base+crmapi.PathContacts, ada("C-periodic"))
	waitFor(t, func() bool {
		b, _ := os.ReadFile(file)
		return strings.Contains(string(b), "C-periodic")
	})
	if leftovers, _ := filepath.Glob(file + ".tmp*"); len(leftovers) != 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

func TestStateFileErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
	}{
		{"not JSON", "{"},
		{"wrong version", `{"version":99}`},
		{"bad fingerprint", `{"version":1,"idempotency_keys":[{"key":"k","fingerprint":"zz"}]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, tc.name+".json")
			if err := os.WriteFile(file, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if srv, err := fakecrm.New(fakecrm.Config{StateFile: file}); err == nil {
				srv.Close()
				t.Fatal("New succeeded on a bad state file, want an error")
			}
		})
	}
	t.Run("missing file starts empty", func(t *testing.T) {
		srv, err := fakecrm.New(fakecrm.Config{StateFile: filepath.Join(dir, "absent.json")})
		if err != nil {
			t.Fatal(err)
		}
		if n := srv.Audit().Contacts; n != 0 {
			t.Errorf("got %d contacts, want 0", n)
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "absent.json")); err != nil {
			t.Errorf("Close did not write the state file: %v", err)
		}
	})
}
