package fakecrm_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/contact"
)

// createdIDs creates ada(id) for each id and returns their CRM ids.
func createdIDs(t *testing.T, base string, ids ...string) []string {
	t.Helper()
	a := mustSend(t, "POST", base+crmapi.PathBatch, batchOf(ids...))
	resp := decode[crmapi.BatchResponse](t, a)
	out := make([]string, len(ids))
	for i, r := range resp.Results {
		if r.Status != crmapi.StatusCreated {
			t.Fatalf("create %s: %+v", ids[i], r)
		}
		out[i] = r.ID
	}
	return out
}

func updateBody(entries ...map[string]any) map[string]any {
	return map[string]any{"contacts": entries}
}

// One batch update: each entry sets what it carries and keeps the rest;
// results come in input order.
func TestBatchUpdate(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{})
	ids := createdIDs(t, base, "C-1", "C-2", "C-3")
	a := mustSend(t, "POST", base+crmapi.PathBatchUpdate, updateBody(
		map[string]any{"id": ids[1], "email": "new@example.com", "phone": "", "attributes": map[string]string{"company": "", "city": "Paris"}},
		map[string]any{"id": "ct_09999999", "external_id": "C-9", "email": "x@example.com"},
		map[string]any{"id": ids[0], "external_id": "C-1", "first_name": "Augusta"},
		map[string]any{"id": ids[2], "external_id": "C-other"},
		map[string]any{"id": ids[2], "email": ""},
		map[string]any{"id": ids[2], "email": "not an email"},
	))
	if a.status != 200 {
		t.Fatalf("got %d %s, want 200", a.status, a.body)
	}
	got := decode[crmapi.BatchResponse](t, a).Results
	want := []struct{ id, ext, status, code string }{
		{ids[1], "C-2", "updated", ""},
		{"ct_09999999", "C-9", "rejected", crmapi.CodeNotFound},
		{ids[0], "C-1", "updated", ""},
		{ids[2], "C-3", "rejected", crmapi.CodeExternalIDImmutable},
		{ids[2], "C-3", "rejected", contact.CodeMissingEmail},
		{ids[2], "C-3", "rejected", contact.CodeInvalidEmail},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d results, want %d: %s", len(got), len(want), a.body)
	}
	for i, w := range want {
		r := got[i]
		code := ""
		if r.Error != nil {
			code = r.Error.Code
		}
		if r.ID != w.id || r.ExternalID != w.ext || r.Status != w.status || code != w.code {
			t.Errorf("result %d: got %+v, want %+v", i, r, w)
		}
	}
	byKey := map[string]contact.Contact{}
	for _, c := range srv.Contacts() {
		byKey[c.ExternalID] = c.Contact
	}
	c2 := ada("C-2")
	c2.Email, c2.Phone, c2.Attributes = "new@example.com", "", contact.AttrsOf(map[string]string{"city": "Paris"})
	c1 := ada("C-1")
	c1.FirstName = "Augusta"
	for _, w := range []contact.Contact{c1, c2, ada("C-3")} {
		h := byKey[w.ExternalID]
		if h.Email != w.Email || h.FirstName != w.FirstName || h.LastName != w.LastName || h.Phone != w.Phone ||
			len(h.Attributes) != len(w.Attributes) || h.Attributes.Map()["city"] != w.Attributes.Map()["city"] || h.Attributes.Map()["company"] != w.Attributes.Map()["company"] {
			t.Errorf("%s: holds %+v, want %+v", w.ExternalID, h, w)
		}
	}
	// The lookup, the admin listing and the audit see the update.
	if l := decode[crmapi.ListResponse](t, mustSend(t, "GET", base+crmapi.PathContacts+"?external_id=C-2", nil)); len(l.Contacts) != 1 || l.Contacts[0].Email != "new@example.com" {
		t.Errorf("lookup: %+v", l)
	}
	adm := mustSend(t, "GET", base+fakecrm.PathAdminContacts, nil)
	if !strings.Contains(string(adm.body), "new@example.com") || !strings.Contains(string(adm.body), "Augusta") {
		t.Errorf("/admin/contacts does not show the updated fields: %d %s", adm.status, adm.body)
	}
	if au := srv.Audit(); au.Updates != 2 || au.Contacts != 3 || au.Creates != 3 {
		t.Errorf("audit %+v: want 2 updates, 3 contacts, 3 creates", au)
	}
}

func TestBatchUpdateRefuses(t *testing.T) {
	_, base := fakecrmtest.Start(t, fakecrm.Config{MaxBatch: 2})
	ids := createdIDs(t, base, "C-1")
	one := map[string]any{"id": ids[0], "email": "a@example.com"}
	for _, tc := range []struct {
		name   string
		body   any
		status int
		code   string
	}{
		{"empty", updateBody(), 400, crmapi.CodeEmptyBatch},
		{"too many", updateBody(one, one, one), 413, crmapi.CodeBatchTooLarge},
		{"not json", "{", 400, crmapi.CodeMalformed},
		{"unknown field", updateBody(map[string]any{"id": ids[0], "shoe_size": "9"}), 400, crmapi.CodeMalformed},
		{"no id", updateBody(map[string]any{"email": "a@example.com"}), 400, crmapi.CodeMalformed},
		{"number", updateBody(map[string]any{"id": ids[0], "phone": 5}), 400, crmapi.CodeMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := mustSend(t, "POST", base+crmapi.PathBatchUpdate, tc.body)
			if a.status != tc.status || errCode(t, a) != tc.code {
				t.Fatalf("got %d %s, want %d %s", a.status, a.body, tc.status, tc.code)
			}
		})
	}
	if a := mustSend(t, "GET", base+crmapi.PathBatchUpdate, nil); a.status != 405 || a.header.Get("Allow") != "POST" {
		t.Errorf("GET: got %d Allow %q, want 405 POST", a.status, a.header.Get("Allow"))
	}
}

// The batch update takes Idempotency-Key as batch create does: a replay
// answers the stored result (even after the contact changed since), a
// reused key with another body is 422; and it has the same faults.
func TestBatchUpdateIdempotencyAndFaults(t *testing.T) {
	t.Run("replay", func(t *testing.T) {
		srv, base := fakecrmtest.Start(t, fakecrm.Config{})
		ids := createdIDs(t, base, "C-1")
		body := updateBody(map[string]any{"id": ids[0], "email": "one@example.com"})
		hdr := []string{crmapi.HeaderIdempotencyKey, "u-1"}
		first := mustSend(t, "POST", base+crmapi.PathBatchUpdate, body, hdr...)
		again := mustSend(t, "POST", base+crmapi.PathBatchUpdate, body, hdr...)
		if first.status != 200 || again.status != 200 || string(again.body) != string(first.body) || again.header.Get(crmapi.HeaderReplayed) != "true" {
			t.Fatalf("first %d %s; again %d %s replayed=%q", first.status, first.body, again.status, again.body, again.header.Get(crmapi.HeaderReplayed))
		}
		other := mustSend(t, "POST", base+crmapi.PathBatchUpdate, updateBody(map[string]any{"id": ids[0], "email": "two@example.com"}), hdr...)
		if other.status != 422 || errCode(t, other) != crmapi.CodeIdempotencyKeyReused {
			t.Fatalf("reused key: got %d %s", other.status, other.body)
		}
		if a := srv.Audit(); a.Updates != 1 || a.IdempotentReplays != 1 {
			t.Errorf("audit %+v: want 1 update, 1 replay", a)
		}
	})
	for _, tc := range []struct {
		name    string
		faults  fakecrm.Faults
		status  int // 0: no answer
		updated bool
	}{
		{"503", fakecrm.Faults{FailRate: 1}, 503, false},
		{"down", fakecrm.Faults{Down: true}, 503, false},
		{"500", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "500"}, 500, true},
		{"504", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "504"}, 504, true},
		{"reset", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "reset"}, 0, true},
		{"429", fakecrm.Faults{Rate: 0.001, Burst: 1}, 429, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, base := fakecrmtest.Start(t, fakecrm.Config{})
			ids := createdIDs(t, base, "C-1")
			srv.SetFaults(tc.faults)
			body := updateBody(map[string]any{"id": ids[0], "email": "new@example.com"})
			if tc.name == "429" {
				mustSend(t, "POST", base+crmapi.PathBatchUpdate, body) // spends the one token
			}
			a, err := send(t, freshClient(5*time.Second), "POST", base+crmapi.PathBatchUpdate, body)
			switch {
			case tc.status == 0 && err == nil:
				t.Fatalf("got %d %s, want no answer", a.status, a.body)
			case tc.status != 0 && (err != nil || a.status != tc.status):
				t.Fatalf("got %d %s %v, want %d", a.status, a.body, err, tc.status)
			}
			if tc.status == 429 && (a.header.Get(crmapi.HeaderRetryAfter) == "" || a.header.Get(crmapi.HeaderRateLimit) == "") {
				t.Errorf("429 without Retry-After or RateLimit: %v", a.header)
			}
			srv.SetFaults(fakecrm.Faults{})
			email := srv.Contacts()[0].Email
			if updated := email == "new@example.com"; updated != tc.updated && tc.name != "429" {
				t.Errorf("email %q after %s: updated %v, want %v", email, tc.name, updated, tc.updated)
			}
			if a := srv.Audit(); a.Contacts != 1 {
				t.Errorf("%d contacts: an update never creates", a.Contacts)
			}
		})
	}
}

// Updating a store of many contacts keeps every other contact, and a
// snapshot (state file, admin) sees the current fields.
func TestBatchUpdateManyContacts(t *testing.T) {
	srv, base := fakecrmtest.Start(t, fakecrm.Config{})
	var all []string
	for b := range 50 {
		keys := make([]string, 100)
		for i := range keys {
			keys[i] = "K-" + strconv.Itoa(b*100+i)
		}
		all = append(all, createdIDs(t, base, keys...)...)
	}
	var entries []map[string]any
	for i := 0; i < len(all); i += 97 {
		entries = append(entries, map[string]any{"id": all[i], "last_name": "Updated"})
	}
	a := mustSend(t, "POST", base+crmapi.PathBatchUpdate, updateBody(entries...))
	var resp crmapi.BatchResponse
	if err := json.Unmarshal(a.body, &resp); err != nil || a.status != http.StatusOK {
		t.Fatalf("%d %s", a.status, a.body)
	}
	n := 0
	for i, c := range srv.Contacts() {
		if c.ID != all[i] {
			t.Fatalf("contact %d is %s, want %s", i, c.ID, all[i])
		}
		if want := map[bool]string{true: "Updated", false: "Lovelace"}[i%97 == 0]; c.LastName != want {
			t.Fatalf("contact %d: last name %q, want %q", i, c.LastName, want)
		}
		if c.LastName == "Updated" {
			n++
		}
	}
	if n != len(entries) {
		t.Errorf("%d updated, want %d", n, len(entries))
	}
}
