package fakecrm_test

import (
	"testing"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/contact"
)

func byKey(srv *fakecrm.Server) map[string]contact.Contact {
	m := map[string]contact.Contact{}
	for _, c := range srv.Contacts() {
		m[c.ExternalID] = c.Contact
	}
	return m
}

// HubSpot's batch/update sets the given properties, clears those given
// as "", keeps the rest, and names ids it does not hold in one
// OBJECT_NOT_FOUND error of a 207; a 503 changes nothing.
func TestHubSpotBatchUpdatePartial(t *testing.T) {
	srv, base := startHubSpot(t, fakecrm.Config{})
	a := mustSend(t, "POST", base+pUpsert, map[string]any{"inputs": []map[string]any{{"idProperty": "external_id", "id": "C-1",
		"properties": map[string]string{"email": "ada@example.com", "firstname": "Ada", "lastname": "Lovelace", "phone": "+44", "company": "AE"}}}}, hsAuth...)
	if a.status != 200 {
		t.Fatalf("upsert: %d %s", a.status, a.body)
	}
	id := decode[struct {
		Results []struct{ ID string } `json:"results"`
	}](t, a).Results[0].ID
	a = mustSend(t, "POST", base+pUpdate, map[string]any{"inputs": []map[string]any{
		{"id": id, "properties": map[string]string{"phone": "", "company": "", "firstname": "Augusta", "external_id": "C-1"}, "objectWriteTraceId": "0"},
		{"id": "424242", "properties": map[string]string{"firstname": "X"}, "objectWriteTraceId": "1"},
	}}, hsAuth...)
	if a.status != 207 {
		t.Fatalf("update: got %d %s, want 207", a.status, a.body)
	}
	got := decode[struct {
		Results []struct{ ID string } `json:"results"`
		Errors  []struct {
			Category string              `json:"category"`
			Context  map[string][]string `json:"context"`
		} `json:"errors"`
	}](t, a)
	if len(got.Results) != 1 || got.Results[0].ID != id || len(got.Errors) != 1 || got.Errors[0].Category != "OBJECT_NOT_FOUND" || got.Errors[0].Context["ids"][0] != "424242" {
		t.Fatalf("update answer %s", a.body)
	}
	h := byKey(srv)["C-1"]
	if h.FirstName != "Augusta" || h.Phone != "" || h.Attributes.Map()["company"] != "" || h.Email != "ada@example.com" || h.LastName != "Lovelace" {
		t.Fatalf("C-1 holds %+v", h)
	}
	srv.SetFaults(fakecrm.Faults{FailRate: 1})
	if a := mustSend(t, "POST", base+pUpdate, map[string]any{"inputs": []map[string]any{{"id": id, "properties": map[string]string{"firstname": "Nope"}}}}, hsAuth...); a.status != 503 {
		t.Fatalf("with fail rate 1: %d %s", a.status, a.body)
	}
	if h := byKey(srv)["C-1"]; h.FirstName != "Augusta" {
		t.Fatalf("a 503 changed C-1: %+v", h)
	}
	if au := srv.Audit(); au.Updates != 1 || au.Contacts != 1 || au.Creates != 1 {
		t.Errorf("audit %+v: want 1 update, 1 contact, 1 create", au)
	}
}

// Salesforce's collections update (PATCH /composite/sobjects) writes the
// fields each record carries, null clears one, the Id names the record
// and is required, an Id the org does not hold fails that record alone,
// and nothing is ever created. The upsert by the External ID field
// updates an existing record partially too.
func TestSalesforceCollectionsUpdate(t *testing.T) {
	srv, base := startSalesforce(t, fakecrm.Config{})
	a := mustSend(t, "PATCH", base+sfUpsert, records(false, rec("External_Id__c", "C-1", "Email", "ada@example.com", "FirstName", "Ada", "LastName", "Lovelace", "Phone", "+44")), sfAuth...)
	res := decode[[]sfResult](t, a)
	if a.status != 200 || !res[0].Success || res[0].ID == nil {
		t.Fatalf("upsert: %d %s", a.status, a.body)
	}
	id := *res[0].ID
	upd := rec("Id", id, "FirstName", "Augusta")
	upd["Phone"] = nil
	a = mustSend(t, "PATCH", base+sfCreate, records(false, upd, rec("Id", "003000000009999AAA", "FirstName", "X"), rec("FirstName", "no id")), sfAuth...)
	if a.status != 200 {
		t.Fatalf("update: %d %s", a.status, a.body)
	}
	res = decode[[]sfResult](t, a)
	if len(res) != 3 || !res[0].Success || *res[0].ID != id || res[0].Created != nil ||
		res[1].Success || res[1].Errors[0].StatusCode != "ENTITY_IS_DELETED" ||
		res[2].Success || res[2].Errors[0].StatusCode != "MISSING_ARGUMENT" {
		t.Fatalf("update results %s", a.body)
	}
	if h := byKey(srv)["C-1"]; h.FirstName != "Augusta" || h.Phone != "" || h.LastName != "Lovelace" || h.Email != "ada@example.com" {
		t.Fatalf("C-1 holds %+v", h)
	}
	// The upsert finds the record and writes only what it carries.
	partial := rec("External_Id__c", "C-1")
	partial["Email"] = nil
	a = mustSend(t, "PATCH", base+sfUpsert, records(false, partial), sfAuth...)
	if res := decode[[]sfResult](t, a); a.status != 200 || !res[0].Success || *res[0].Created {
		t.Fatalf("partial upsert: %d %s", a.status, a.body)
	}
	if h := byKey(srv)["C-1"]; h.Email != "" || h.FirstName != "Augusta" || h.LastName != "Lovelace" {
		t.Fatalf("after the partial upsert C-1 holds %+v", h)
	}
	if au := srv.Audit(); au.Updates != 2 || au.Contacts != 1 || au.Creates != 1 {
		t.Errorf("audit %+v: want 2 updates, 1 contact, 1 create", au)
	}
}
