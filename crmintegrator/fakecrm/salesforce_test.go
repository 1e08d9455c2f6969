package fakecrm_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
)

const sfToken = "00DRO0000000001!AQ4AQFakeToken"

var sfAuth = []string{"Authorization", "Bearer " + sfToken}

const (
	sfData     = "/services/data/v60.0"
	sfUpsert   = sfData + "/composite/sobjects/Contact/External_Id__c"
	sfCreate   = sfData + "/composite/sobjects"
	sfRetrieve = sfData + "/composite/sobjects/Contact"
)

func startSalesforce(t *testing.T, cfg fakecrm.Config) (*fakecrm.Server, string) {
	t.Helper()
	cfg.API, cfg.Token = fakecrm.APISalesforce, sfToken
	return fakecrmtest.Start(t, cfg)
}

// rec is one input record of type Contact with the given fields.
func rec(kv ...string) map[string]any {
	m := map[string]any{"attributes": map[string]string{"type": "Contact"}}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func records(allOrNone bool, rs ...map[string]any) map[string]any {
	return map[string]any{"allOrNone": allOrNone, "records": rs}
}

type sfResult struct {
	ID      *string `json:"id"`
	Success bool    `json:"success"`
	Created *bool   `json:"created"`
	Errors  []struct {
		StatusCode string   `json:"statusCode"`
		Message    string   `json:"message"`
		Fields     []string `json:"fields"`
	} `json:"errors"`
}

type sfErr struct {
	Message   string   `json:"message"`
	ErrorCode string   `json:"errorCode"`
	Fields    []string `json:"fields"`
}

func sfQueryPath(q string) string { return sfData + "/query?q=" + url.QueryEscape(q) }

// TestSalesforceEndpoints walks one org through the endpoints and their
// errors, in order: each case sees what the earlier ones wrote.
func TestSalesforceEndpoints(t *testing.T) {
	_, base := startSalesforce(t, fakecrm.Config{Salesforce: fakecrm.SalesforceConfig{Fields: []string{"company", "City"}}})
	over := make([]map[string]any, 201)
	for i := range over {
		over[i] = rec("External_Id__c", fmt.Sprint("K-", i), "LastName", "X")
	}
	cases := []struct {
		name, method, path string
		body               any
		status             int
		want               []string // substrings of the body
	}{
		{"upsert creates", "PATCH", sfUpsert, records(false,
			rec("External_Id__c", "C-1", "LastName", "Lovelace", "FirstName", "Ada", "Email", "ada@example.com", "company", "Engines"),
			rec("External_Id__c", "C-2", "LastName", "Hopper", "CITY", "Arlington")),
			200, []string{`"id":"003RO0000000001YAA","success":true,"errors":[],"created":true`, `"id":"003RO0000000002YAA"`}},
		{"upsert by other case updates", "PATCH", sfUpsert, records(false, rec("external_id__c", "c-1", "Phone", "+1 555 0100")),
			200, []string{`[{"id":"003RO0000000001YAA","success":true,"errors":[],"created":false}]`}},
		{"required field missing", "PATCH", sfUpsert, records(false, rec("External_Id__c", "C-3", "FirstName", "Nobody")),
			200, []string{`[{"success":false,"errors":[{"statusCode":"REQUIRED_FIELD_MISSING","message":"Required fields are missing: [LastName]","fields":["LastName"]}]}]`}},
		{"update may omit LastName but not blank it", "PATCH", sfUpsert, records(false, rec("External_Id__c", "C-2", "LastName", " ")),
			200, []string{`REQUIRED_FIELD_MISSING`}},
		{"bad email", "PATCH", sfUpsert, records(false, rec("External_Id__c", "C-4", "LastName", "X", "Email", "not-an-email")),
			200, []string{`"statusCode":"INVALID_EMAIL_ADDRESS","message":"Email: invalid email address: not-an-email","fields":["Email"]`}},
		{"missing external id value", "PATCH", sfUpsert, records(false, rec("LastName", "X")),
			200, []string{`"statusCode":"MISSING_ARGUMENT","message":"External_Id__c not specified"`}},
		{"one external id twice fails both", "PATCH", sfUpsert, records(false, rec("External_Id__c", "D-1", "LastName", "X"), rec("External_Id__c", "d-1", "LastName", "Y")),
			200, []string{`[{"success":false,"errors":[{"statusCode":"DUPLICATE_EXTERNAL_ID","message":"Duplicate external id specified: D-1","fields":[]}]},{"success":false,"errors":[{"statusCode":"DUPLICATE_EXTERNAL_ID","message":"Duplicate external id specified: d-1","fields":[]}]}]`}},
		{"read-only field", "PATCH", sfUpsert, records(false, rec("External_Id__c", "C-5", "LastName", "X", "Name", "X")),
			200, []string{`"statusCode":"INVALID_FIELD_FOR_INSERT_UPDATE","message":"Unable to create/update fields: Name.`}},
		{"too long", "PATCH", sfUpsert, records(false, rec("External_Id__c", "C-6", "LastName", strings.Repeat("x", 81))),
			200, []string{`"statusCode":"STRING_TOO_LONG","message":"Last Name: data value too large: `, `(max length=80)"`}},
		{"unknown field fails the request", "PATCH", sfUpsert, records(false, rec("External_Id__c", "C-7", "LastName", "X", "shoe_size", "9")),
			400, []string{`[{"message":"No such column 'shoe_size' on sobject of type Contact","errorCode":"INVALID_FIELD"}]`}},
		{"over 200 records", "PATCH", sfUpsert, records(false, over...),
			400, []string{`[{"message":"record limit reached. cannot submit more than 200 records into this call","errorCode":"EXCEEDED_ID_LIMIT"}]`}},
		{"no type", "PATCH", sfUpsert, map[string]any{"records": []any{map[string]any{"External_Id__c": "C-8", "LastName": "X"}}},
			400, []string{`"errorCode":"INVALID_TYPE"`, `Must send a concrete entity type.`}},
		{"other type", "PATCH", sfUpsert, map[string]any{"records": []any{map[string]any{"attributes": map[string]string{"type": "Account"}, "External_Id__c": "C-8"}}},
			400, []string{`"errorCode":"INVALID_TYPE"`}},
		{"malformed JSON", "PATCH", sfUpsert, `{"records": [`, 400, []string{`"errorCode":"JSON_PARSER_ERROR"`}},
		{"upsert by a non-external field", "PATCH", sfData + "/composite/sobjects/Contact/LastName", records(false, rec("LastName", "X")),
			400, []string{`Invalid field for upsert, must be an External Id custom or standard indexed field: LastName (Contact)`, `"errorCode":"INVALID_FIELD"`}},
		{"upsert by Id", "PATCH", sfData + "/composite/sobjects/Contact/Id", records(false, rec("LastName", "X")), 400, []string{`INVALID_FIELD`}},
		{"upsert by an unknown field", "PATCH", sfData + "/composite/sobjects/Contact/Nope__c", records(false), 404, []string{`"errorCode":"NOT_FOUND"`}},
		{"upsert of an unknown object", "PATCH", sfData + "/composite/sobjects/Deal__c/External_Id__c", records(false), 404, []string{`"errorCode":"NOT_FOUND"`}},
		{"create", "POST", sfCreate, records(false, rec("External_Id__c", "C-9", "LastName", "Curie"), rec("LastName", "Unkeyed")),
			200, []string{`[{"id":"003RO0000000003YAA","success":true,"errors":[]},{"id":"003RO0000000004YAA","success":true,"errors":[]}]`}},
		{"create a taken external id", "POST", sfCreate, records(false, rec("External_Id__c", "c-9", "LastName", "Again")),
			200, []string{`"statusCode":"DUPLICATE_VALUE","message":"duplicate value found: External_Id__c duplicates value on record with id: 003RO0000000003YAA"`}},
		{"create with an Id", "POST", sfCreate, records(false, rec("Id", "003RO0000000003YAA", "LastName", "X")),
			200, []string{`"statusCode":"INVALID_FIELD_FOR_INSERT_UPDATE","message":"cannot specify Id in an insert call"`}},
		{"retrieve", "GET", sfRetrieve + "?ids=003RO0000000001YAA,003RO0000000099AAA,003RO0000000002&fields=Id,External_Id__c,LastName,company", nil,
			200, []string{`[{"attributes":{"type":"Contact","url":"/services/data/v60.0/sobjects/Contact/003RO0000000001YAA"},"Id":"003RO0000000001YAA","External_Id__c":"c-1","LastName":"Lovelace","company":"Engines"},null,{"attributes":`, `"External_Id__c":"C-2","LastName":"Hopper","company":null}]`}},
		{"retrieve an unknown field", "GET", sfRetrieve + "?ids=003RO0000000001YAA&fields=Shoe", nil, 400, []string{`"errorCode":"INVALID_FIELD"`}},
		{"get by id", "GET", sfData + "/sobjects/Contact/003RO0000000001YAA", nil,
			200, []string{`{"attributes":{"type":"Contact","url":"/services/data/v60.0/sobjects/Contact/003RO0000000001YAA"},"Id":"003RO0000000001YAA","FirstName":"Ada","LastName":"Lovelace","Name":"Ada Lovelace","Email":"ada@example.com","Phone":"+1 555 0100","CreatedDate":"`}},
		{"get by external id", "GET", sfData + "/sobjects/Contact/External_Id__c/c-2?fields=Id,City", nil,
			200, []string{`"Id":"003RO0000000002YAA","City":"Arlington"}`}},
		{"get missing", "GET", sfData + "/sobjects/Contact/003RO0000000099AAA", nil,
			404, []string{`[{"message":"The requested resource does not exist","errorCode":"NOT_FOUND"}]`}},
		{"upsert one creates", "PATCH", sfData + "/sobjects/Contact/External_Id__c/S-1", map[string]string{"LastName": "Single"},
			201, []string{`{"id":"003RO0000000005YAA","success":true,"errors":[],"created":true}`}},
		{"upsert one updates", "PATCH", sfData + "/sobjects/Contact/External_Id__c/S-1", map[string]string{"FirstName": "Only"},
			200, []string{`{"id":"003RO0000000005YAA","success":true,"errors":[],"created":false}`}},
		{"upsert one updates, API 45", "PATCH", "/services/data/v45.0/sobjects/Contact/External_Id__c/S-1", map[string]string{"FirstName": "Only"}, 204, nil},
		{"upsert one invalid", "PATCH", sfData + "/sobjects/Contact/External_Id__c/S-2", map[string]string{"Email": "x"},
			400, []string{`[{"message":"Email: invalid email address: x","errorCode":"INVALID_EMAIL_ADDRESS","fields":["Email"]}]`}},
		{"query", "GET", sfQueryPath("SELECT Id, External_Id__c FROM Contact WHERE External_Id__c IN ('c-1','C-2', 'none') LIMIT 10"), nil,
			200, []string{`{"totalSize":2,"done":true,"records":[{"attributes":{"type":"Contact","url":"/services/data/v60.0/sobjects/Contact/003RO0000000001YAA"},"Id":"003RO0000000001YAA","External_Id__c":"c-1"},{"attributes"`}},
		{"describe", "GET", sfData + "/sobjects/Contact/describe", nil,
			200, []string{`"name":"Contact"`, `"keyPrefix":"003"`, `{"name":"External_Id__c","label":"External_Id__c","type":"string","length":255,"custom":true,"externalId":true,"unique":true,"caseSensitive":false,"idLookup":true,"createable":true,"updateable":true,"nillable":true`, `{"name":"LastName","label":"Last Name","type":"string","length":80,"custom":false,"externalId":false,"unique":false,"caseSensitive":false,"idLookup":false,"createable":true,"updateable":true,"nillable":false`, `"name":"Email","label":"Email","type":"email"`, `"name":"Phone","label":"Business Phone","type":"phone"`, `"name":"City"`, `"name":"company"`}},
		{"describe an unknown object", "GET", sfData + "/sobjects/Deal__c/describe", nil, 404, []string{`"errorCode":"NOT_FOUND"`}},
		{"limits", "GET", sfData + "/limits", nil, 200, []string{`"DailyApiRequests":{"Max":5000000,"Remaining":49999`}},
		{"wrong method", "DELETE", sfUpsert, nil, 405, []string{`"errorCode":"METHOD_NOT_ALLOWED"`}},
		{"unknown resource", "GET", sfData + "/sobjects/Contact/003RO0000000001YAA/Notes/x", nil, 404, []string{`"errorCode":"NOT_FOUND"`}},
		{"bad version", "GET", "/services/data/60/limits", nil, 404, []string{`"errorCode":"NOT_FOUND"`}},
		{"versions", "GET", "/services/data/", nil, 200, []string{`{"label":"Spring '24","url":"/services/data/v60.0","version":"60.0"}`}},
		{"generic API is not served", "GET", "/v1/contacts?external_id=C-1", nil, 404, []string{`"errorCode":"NOT_FOUND"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := mustSend(t, tc.method, base+tc.path, tc.body, sfAuth...)
			if a.status != tc.status {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.status)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(a.body), w) {
					t.Errorf("body %s\nlacks %s", a.body, w)
				}
			}
			if ct := a.header.Get("Content-Type"); len(a.body) > 0 && ct != "application/json;charset=UTF-8" {
				t.Errorf("Content-Type %q, want application/json;charset=UTF-8", ct)
			}
			if !strings.HasPrefix(a.header.Get("Sforce-Limit-Info"), "api-usage=") && tc.name != "versions" {
				t.Errorf("Sforce-Limit-Info %q", a.header.Get("Sforce-Limit-Info"))
			}
			if a.status >= 400 {
				if es := decode[[]sfErr](t, a); len(es) == 0 || es[0].ErrorCode == "" || es[0].Message == "" {
					t.Errorf("error body %s: want an array of {message, errorCode}", a.body)
				}
			}
		})
	}
}

func TestSalesforceUpsertThenUpdate(t *testing.T) {
	srv, base := startSalesforce(t, fakecrm.Config{})
	var ids []string
	for i, want := range []bool{true, false, false} {
		a := mustSend(t, "PATCH", base+sfUpsert, records(false, rec("External_Id__c", "K-1", "LastName", fmt.Sprint("L", i), "company", "Acme")), sfAuth...)
		rs := decode[[]sfResult](t, a)
		if a.status != 200 || len(rs) != 1 || !rs[0].Success || rs[0].Created == nil || *rs[0].Created != want || rs[0].ID == nil {
			t.Fatalf("upsert %d: got %d %s, want success with created %v", i, a.status, a.body, want)
		}
		ids = append(ids, *rs[0].ID)
	}
	if ids[0] != ids[1] || ids[1] != ids[2] || len(ids[0]) != 18 || !strings.HasPrefix(ids[0], "003") {
		t.Errorf("ids %v: want one 18-character id starting 003", ids)
	}
	a := srv.Audit()
	if a.Creates != 1 || a.Contacts != 1 || a.DistinctExternalIDs != 1 || a.DuplicateContacts != 0 || a.Requests != 3 {
		t.Errorf("audit %+v: want 1 create, 1 contact, 1 distinct, no duplicate, 3 requests", a)
	}
	cs := srv.Contacts()
	if len(cs) != 1 || cs[0].ExternalID != "K-1" || cs[0].LastName != "L2" || cs[0].Attributes.Map()["company"] != "Acme" || cs[0].ID != ids[0] {
		t.Errorf("contacts %+v", cs)
	}
}

func TestSalesforceAllOrNone(t *testing.T) {
	srv, base := startSalesforce(t, fakecrm.Config{})
	for _, tc := range []struct {
		allOrNone bool
		created   int64
		second    string // the valid record's outcome
	}{
		{true, 0, `{"success":false,"errors":[{"statusCode":"ALL_OR_NONE_OPERATION_ROLLED_BACK","message":"Record rolled back because not all records were valid and the request was using AllOrNone header","fields":[]}]}`},
		{false, 1, `"success":true`},
	} {
		t.Run(fmt.Sprint("allOrNone=", tc.allOrNone), func(t *testing.T) {
			srv.Reset()
			a := mustSend(t, "PATCH", base+sfUpsert, records(tc.allOrNone, rec("External_Id__c", "A-1"), rec("External_Id__c", "A-2", "LastName", "Fine")), sfAuth...)
			rs := decode[[]sfResult](t, a)
			if a.status != 200 || len(rs) != 2 || rs[0].Errors[0].StatusCode != "REQUIRED_FIELD_MISSING" || !strings.Contains(string(a.body), tc.second) {
				t.Fatalf("got %d %s, want the first REQUIRED_FIELD_MISSING and the second %s", a.status, a.body, tc.second)
			}
			if got := srv.Audit().Creates; got != tc.created {
				t.Errorf("created %d, want %d", got, tc.created)
			}
		})
	}
	t.Run("rolled back ids are not spent", func(t *testing.T) {
		a := mustSend(t, "POST", base+sfCreate, records(true, rec("LastName", "Next")), sfAuth...)
		if !strings.Contains(string(a.body), `"id":"003RO0000000002YAA"`) {
			t.Errorf("got %s, want the second id after one create and one rollback", a.body)
		}
	})
}

func TestSalesforceAuth(t *testing.T) {
	_, base := startSalesforce(t, fakecrm.Config{})
	for _, tc := range []struct {
		name    string
		headers []string
		status  int
	}{
		{"none", nil, 401},
		{"wrong", []string{"Authorization", "Bearer 00Dwrong"}, 401},
		{"OAuth scheme", []string{"Authorization", "OAuth " + sfToken}, 401},
		{"right", sfAuth, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := mustSend(t, "GET", base+sfData+"/limits", nil, tc.headers...)
			if a.status != tc.status {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.status)
			}
			if tc.status == 401 && string(a.body) != `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`+"\n" {
				t.Errorf("body %s", a.body)
			}
			if tc.status == 401 && a.header.Get("Sforce-Limit-Info") != "" {
				t.Errorf("an unauthenticated answer reports usage %q", a.header.Get("Sforce-Limit-Info"))
			}
		})
	}
}

// TestSalesforceDaily spends a daily allocation of 3: each answer reports
// its own request, the fourth is refused without being counted, and only
// Reset restores the allocation.
func TestSalesforceDaily(t *testing.T) {
	srv, base := startSalesforce(t, fakecrm.Config{Salesforce: fakecrm.SalesforceConfig{Daily: 3}})
	steps := []struct {
		path   string
		status int
		usage  string
	}{
		{sfData + "/sobjects/Contact/describe", 200, "api-usage=1/3"},
		{sfData + "/sobjects/Contact/003RO0000000001YAA", 404, "api-usage=2/3"},
		{sfData + "/limits", 200, "api-usage=3/3"},
		{sfData + "/limits", 403, "api-usage=3/3"},
		{sfQueryPath("SELECT Id FROM Contact"), 403, "api-usage=3/3"},
	}
	for i, st := range steps {
		a := mustSend(t, "GET", base+st.path, nil, sfAuth...)
		if a.status != st.status || a.header.Get("Sforce-Limit-Info") != st.usage {
			t.Fatalf("step %d: got %d %s with %q, want %d with %q", i, a.status, a.body, a.header.Get("Sforce-Limit-Info"), st.status, st.usage)
		}
		if i == 2 && !strings.Contains(string(a.body), `"DailyApiRequests":{"Max":3,"Remaining":0}`) {
			t.Errorf("limits %s: want Max 3, Remaining 0", a.body)
		}
		if st.status == 403 {
			if string(a.body) != `[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]`+"\n" || a.header.Get("Retry-After") != "" {
				t.Errorf("step %d: body %s, Retry-After %q", i, a.body, a.header.Get("Retry-After"))
			}
		}
	}
	if got := srv.Audit().RateLimited; got != 2 {
		t.Errorf("audit rate_limited %d, want 2", got)
	}
	mustSend(t, "POST", base+fakecrm.PathAdminReset, nil)
	if a := mustSend(t, "GET", base+sfData+"/limits", nil, sfAuth...); a.status != 200 || a.header.Get("Sforce-Limit-Info") != "api-usage=1/3" {
		t.Errorf("after reset: %d %q, want 200 api-usage=1/3", a.status, a.header.Get("Sforce-Limit-Info"))
	}
}

func TestSalesforceQuery(t *testing.T) {
	_, base := startSalesforce(t, fakecrm.Config{})
	mustSend(t, "PATCH", base+sfUpsert, records(false,
		rec("External_Id__c", `O'Brien\1`, "LastName", "OBrien", "Email", "ob@example.com"),
		rec("External_Id__c", "Tab\tKey", "LastName", "Tab"),
		rec("External_Id__c", "ABC", "LastName", "Upper"),
		rec("LastName", "NoKey"),
	), sfAuth...)
	mustSend(t, "POST", base+sfCreate, records(false, rec("LastName", "NoKey")), sfAuth...)
	cases := []struct {
		name, q string
		status  int
		want    []string
	}{
		{"IN with escapes", `SELECT Id, External_Id__c FROM Contact WHERE External_Id__c IN ('O\'Brien\\1', 'tab\tkey')`, 200,
			[]string{`"totalSize":2`, `"External_Id__c":"O'Brien\\1"`, `"External_Id__c":"Tab\tKey"`}},
		{"equals ignores case", `select id, lastname from contact where external_id__c = 'abc'`, 200, []string{`"totalSize":1`, `"Id":"003RO0000000003YAA","LastName":"Upper"`}},
		{"unicode escape", `SELECT Id FROM Contact WHERE External_Id__c = '\u0041BC'`, 200, []string{`"totalSize":1`}},
		{"by Id, 15 characters", `SELECT LastName FROM Contact WHERE Id = '003RO0000000002'`, 200, []string{`"LastName":"Tab"`}},
		{"null", `SELECT Id FROM Contact WHERE External_Id__c = null`, 200, []string{`"totalSize":1`}},
		{"limit", `SELECT Id FROM Contact LIMIT 2`, 200, []string{`"totalSize":2,"done":true`}},
		{"blank field is null", `SELECT Email FROM Contact WHERE LastName = 'Tab'`, 200, []string{`"Email":null`}},
		{"unknown field", `SELECT Id, Shoe FROM Contact`, 400, []string{`"errorCode":"INVALID_FIELD"`, `No such column 'Shoe' on entity 'Contact'`, `ERROR at Row:1:Column:12`}},
		{"unknown object", `SELECT Id FROM Deal__c`, 400, []string{`"errorCode":"INVALID_TYPE"`, `sObject type 'Deal__c' is not supported.`}},
		{"bad escape", `SELECT Id FROM Contact WHERE LastName = 'a\qb'`, 400, []string{`"errorCode":"MALFORMED_QUERY"`}},
		{"double quotes", `SELECT Id FROM Contact WHERE LastName = "Tab"`, 400, []string{`"errorCode":"MALFORMED_QUERY"`}},
		{"unclosed", `SELECT Id FROM Contact WHERE LastName = 'Tab`, 400, []string{`"errorCode":"MALFORMED_QUERY"`}},
		{"no FROM", `SELECT Id`, 400, []string{`"errorCode":"MALFORMED_QUERY"`, `unexpected token: <EOF>`}},
		{"unsupported clause", `SELECT Id FROM Contact ORDER BY Id`, 400, []string{`"errorCode":"MALFORMED_QUERY"`, `unexpected token: ORDER`}},
		{"empty", ``, 400, []string{`"errorCode":"MALFORMED_QUERY"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := mustSend(t, "GET", base+sfQueryPath(tc.q), nil, sfAuth...)
			if a.status != tc.status {
				t.Fatalf("got %d %s, want %d", a.status, a.body, tc.status)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(a.body), w) {
					t.Errorf("body %s\nlacks %s", a.body, w)
				}
			}
		})
	}
}

func TestSalesforceQueryPaging(t *testing.T) {
	_, base := startSalesforce(t, fakecrm.Config{Salesforce: fakecrm.SalesforceConfig{QueryBatch: 2}})
	var rs []map[string]any
	for i := range 5 {
		rs = append(rs, rec("External_Id__c", fmt.Sprint("P-", i), "LastName", "P"))
	}
	mustSend(t, "PATCH", base+sfUpsert, records(false, rs...), sfAuth...)
	type page struct {
		TotalSize      int    `json:"totalSize"`
		Done           bool   `json:"done"`
		NextRecordsURL string `json:"nextRecordsUrl"`
		Records        []struct {
			ExternalID string `json:"External_Id__c"`
		} `json:"records"`
	}
	path := sfQueryPath("SELECT External_Id__c FROM Contact WHERE LastName = 'p'")
	var got []string
	for n := 0; path != ""; n++ {
		if n > 5 {
			t.Fatal("more pages than records")
		}
		a := mustSend(t, "GET", base+path, nil, sfAuth...)
		p := decode[page](t, a)
		if a.status != 200 || p.TotalSize != 5 || p.Done != (p.NextRecordsURL == "") || len(p.Records) > 2 {
			t.Fatalf("page %d: %d %s", n, a.status, a.body)
		}
		if p.NextRecordsURL != "" && !strings.HasPrefix(p.NextRecordsURL, sfData+"/query/01g") {
			t.Errorf("nextRecordsUrl %q", p.NextRecordsURL)
		}
		for _, r := range p.Records {
			got = append(got, r.ExternalID)
		}
		path = p.NextRecordsURL
	}
	if strings.Join(got, ",") != "P-0,P-1,P-2,P-3,P-4" {
		t.Errorf("records %v", got)
	}
	if a := mustSend(t, "GET", base+sfData+"/query/01gRO0000000099YAA-2", nil, sfAuth...); a.status != 400 || !strings.Contains(string(a.body), "INVALID_QUERY_LOCATOR") {
		t.Errorf("unknown locator: %d %s", a.status, a.body)
	}
}

func TestSalesforceDescribeIDField(t *testing.T) {
	for _, tc := range []struct {
		name             string
		cfg              fakecrm.SalesforceConfig
		external, unique bool
		upsert           int
	}{
		{"default", fakecrm.SalesforceConfig{}, true, true, 200},
		{"plain", fakecrm.SalesforceConfig{IDFieldPlain: true}, false, false, 400},
		{"not unique", fakecrm.SalesforceConfig{IDFieldNotUnique: true}, true, false, 200},
		{"other names", fakecrm.SalesforceConfig{Object: "Lead", IDField: "Sync_Key__c"}, true, true, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, base := startSalesforce(t, fakecrm.Config{Salesforce: tc.cfg})
			obj, field := "Contact", "External_Id__c"
			if tc.cfg.Object != "" {
				obj, field = tc.cfg.Object, tc.cfg.IDField
			}
			a := mustSend(t, "GET", base+sfData+"/sobjects/"+obj+"/describe", nil, sfAuth...)
			var d struct {
				Name   string `json:"name"`
				Fields []struct {
					Name       string `json:"name"`
					ExternalID bool   `json:"externalId"`
					Unique     bool   `json:"unique"`
				} `json:"fields"`
			}
			if err := json.Unmarshal(a.body, &d); err != nil || d.Name != obj {
				t.Fatalf("describe: %d %s", a.status, a.body)
			}
			found := false
			for _, f := range d.Fields {
				if f.Name == field {
					found = f.ExternalID == tc.external && f.Unique == tc.unique
				}
			}
			if !found {
				t.Errorf("describe %s: want %s with externalId %v, unique %v", a.body, field, tc.external, tc.unique)
			}
			r := rec(field, "K", "LastName", "X")
			r["attributes"] = map[string]string{"type": obj}
			if a := mustSend(t, "PATCH", base+sfData+"/composite/sobjects/"+obj+"/"+field, records(false, r), sfAuth...); a.status != tc.upsert {
				t.Errorf("upsert: %d %s, want %d", a.status, a.body, tc.upsert)
			}
		})
	}
}

// TestSalesforceNotUnique: an External ID without Unique lets creates
// duplicate a value; the audit counts the duplicate, and upserts and gets
// of that value are refused as ambiguous.
func TestSalesforceNotUnique(t *testing.T) {
	srv, base := startSalesforce(t, fakecrm.Config{Salesforce: fakecrm.SalesforceConfig{IDFieldNotUnique: true}})
	a := mustSend(t, "POST", base+sfCreate, records(false, rec("External_Id__c", "N-1", "LastName", "A"), rec("External_Id__c", "n-1", "LastName", "B"), rec("LastName", "C")), sfAuth...)
	if strings.Count(string(a.body), `"success":true`) != 3 {
		t.Fatalf("create: %s", a.body)
	}
	if au := srv.Audit(); au.Contacts != 3 || au.DistinctExternalIDs != 1 || au.DuplicateContacts != 1 || au.ContactsWithoutKey != 1 || au.Creates != 3 {
		t.Errorf("audit %+v: want 3 contacts, 1 distinct, 1 duplicate, 1 without key", au)
	}
	a = mustSend(t, "PATCH", base+sfUpsert, records(false, rec("External_Id__c", "N-1", "LastName", "Z")), sfAuth...)
	if !strings.Contains(string(a.body), `"statusCode":"DUPLICATE_EXTERNAL_ID","message":"External_Id__c: more than one record found for external id field: [003RO0000000001YAA, 003RO0000000002YAA]"`) {
		t.Errorf("upsert of an ambiguous value: %s", a.body)
	}
	for _, tc := range []struct{ method, path string }{
		{"GET", sfData + "/sobjects/Contact/External_Id__c/N-1"},
		{"PATCH", sfData + "/sobjects/Contact/External_Id__c/N-1"},
	} {
		a := mustSend(t, tc.method, base+tc.path, map[string]string{"LastName": "Z"}, sfAuth...)
		if a.status != 300 || decode[[]string](t, a)[1] != sfData+"/sobjects/Contact/003RO0000000002YAA" {
			t.Errorf("%s: %d %s, want 300 with both urls", tc.method, a.status, a.body)
		}
	}
}

func TestSalesforceFaults(t *testing.T) {
	write := func(base, key string) (answer, error) {
		return send(t, freshClient(5*time.Second), "PATCH", base+sfUpsert, records(false, rec("External_Id__c", key, "LastName", "F")), sfAuth...)
	}
	for _, tc := range []struct {
		name    string
		faults  fakecrm.Faults
		status  int // 0: the connection drops
		code    string
		created int64
	}{
		{"fail-rate", fakecrm.Faults{FailRate: 1}, 503, "SERVER_UNAVAILABLE", 0},
		{"down", fakecrm.Faults{Down: true}, 503, "SERVER_UNAVAILABLE", 0},
		{"ambiguous 500", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "500"}, 500, "UNKNOWN_EXCEPTION", 1},
		{"ambiguous 502", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "502"}, 502, "UNKNOWN_EXCEPTION", 1},
		{"ambiguous 504", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "504"}, 504, "UNKNOWN_EXCEPTION", 1},
		{"ambiguous reset", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "reset"}, 0, "", 1},
		{"ambiguous hang", fakecrm.Faults{AmbiguousRate: 1, AmbiguousModes: "hang", Hang: 10 * time.Millisecond}, 0, "", 1},
		{"latency", fakecrm.Faults{Latency: 50 * time.Millisecond}, 200, "", 1},
		{"rate", fakecrm.Faults{Rate: 0.001, Burst: 1}, 200, "", 1},
		{"blocked domain", fakecrm.Faults{BlockedDomains: "Spam.Example"}, 200, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, base := startSalesforce(t, fakecrm.Config{Faults: tc.faults})
			start := time.Now()
			var a answer
			var err error
			if tc.faults.BlockedDomains != "" {
				a, err = send(t, defaultClient, "PATCH", base+sfUpsert, records(false, rec("External_Id__c", "B-1", "LastName", "F", "Email", "x@spam.example")), sfAuth...)
				if !strings.Contains(string(a.body), `"statusCode":"FIELD_CUSTOM_VALIDATION_EXCEPTION"`) || !strings.Contains(string(a.body), "spam.example") {
					t.Errorf("blocked: %s", a.body)
				}
			} else {
				a, err = write(base, "F-1")
			}
			switch {
			case tc.status == 0 && err == nil:
				t.Fatalf("got %d %s, want a dropped connection", a.status, a.body)
			case tc.status != 0 && (err != nil || a.status != tc.status):
				t.Fatalf("got %d %s %v, want %d", a.status, a.body, err, tc.status)
			}
			if tc.code != "" {
				if es := decode[[]sfErr](t, a); es[0].ErrorCode != tc.code || es[0].Message == "" {
					t.Errorf("body %s, want errorCode %s", a.body, tc.code)
				}
			}
			if got := srv.Audit().Creates; got != tc.created {
				t.Errorf("created %d, want %d", got, tc.created)
			}
			if tc.faults.Latency > 0 && time.Since(start) < tc.faults.Latency {
				t.Errorf("answered in %v, before the latency %v", time.Since(start), tc.faults.Latency)
			}
			if tc.faults.Rate > 0 {
				a, _ := write(base, "F-2")
				if a.status != 403 || a.header.Get("Retry-After") != "" ||
					string(a.body) != `[{"message":"ConcurrentRequests (Concurrent API Requests) Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]`+"\n" {
					t.Errorf("second write under -rate: %d %s, want 403 REQUEST_LIMIT_EXCEEDED without Retry-After", a.status, a.body)
				}
				if got := srv.Audit().RateLimited; got != 1 {
					t.Errorf("rate_limited %d, want 1", got)
				}
			}
		})
	}
	t.Run("lookup latency on reads", func(t *testing.T) {
		_, base := startSalesforce(t, fakecrm.Config{Faults: fakecrm.Faults{LookupLatency: 60 * time.Millisecond}})
		start := time.Now()
		mustSend(t, "GET", base+sfQueryPath("SELECT Id FROM Contact"), nil, sfAuth...)
		mustSend(t, "GET", base+sfData+"/sobjects/Contact/External_Id__c/x", nil, sfAuth...)
		if d := time.Since(start); d < 120*time.Millisecond {
			t.Errorf("two reads took %v, want at least 120ms", d)
		}
	})
	t.Run("fail-rate spares reads", func(t *testing.T) {
		_, base := startSalesforce(t, fakecrm.Config{Faults: fakecrm.Faults{FailRate: 1}})
		if a := mustSend(t, "GET", base+sfData+"/limits", nil, sfAuth...); a.status != 200 {
			t.Errorf("limits under fail-rate 1: %d", a.status)
		}
	})
}

// TestSalesforceAudit races creates of one external id and upserts of
// another: the Unique index leaves one record each and no duplicate.
func TestSalesforceAudit(t *testing.T) {
	srv, base := startSalesforce(t, fakecrm.Config{})
	const racers = 8
	var wg sync.WaitGroup
	results := make([]string, racers*2)
	for i := range racers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			a, _ := send(t, defaultClient, "POST", base+sfCreate, records(false, rec("External_Id__c", "R-1", "LastName", fmt.Sprint(i))), sfAuth...)
			results[i] = string(a.body)
		}()
		go func() {
			defer wg.Done()
			a, _ := send(t, defaultClient, "PATCH", base+sfUpsert, records(false, rec("External_Id__c", "R-2", "LastName", fmt.Sprint(i))), sfAuth...)
			results[racers+i] = string(a.body)
		}()
	}
	wg.Wait()
	ok, dup := 0, 0
	for _, b := range results[:racers] {
		switch {
		case strings.Contains(b, `"success":true`):
			ok++
		case strings.Contains(b, "DUPLICATE_VALUE"):
			dup++
		}
	}
	if ok != 1 || dup != racers-1 {
		t.Errorf("creates: %d succeeded, %d DUPLICATE_VALUE; want 1 and %d", ok, dup, racers-1)
	}
	for i, b := range results[racers:] {
		if !strings.Contains(b, `"success":true`) {
			t.Errorf("upsert %d: %s", i, b)
		}
	}
	a := srv.Audit()
	if a.Contacts != 2 || a.Creates != 2 || a.DistinctExternalIDs != 2 || a.DuplicateContacts != 0 || a.ResponsesByStatus[200] != 2*racers {
		t.Errorf("audit %+v: want 2 contacts and creates, 2 distinct, no duplicate, %d 200s", a, 2*racers)
	}
	var list struct {
		Contacts []struct {
			ExternalID string `json:"external_id"`
		} `json:"contacts"`
	}
	resp := mustSend(t, "GET", base+fakecrm.PathAdminContacts+"?external_id=R-2", nil)
	if err := json.Unmarshal(resp.body, &list); err != nil || len(list.Contacts) != 1 {
		t.Errorf("admin contacts for R-2: %s", resp.body)
	}
	srv.Reset()
	if a := srv.Audit(); a.Contacts != 0 || a.Requests != 0 || len(srv.Contacts()) != 0 {
		t.Errorf("after Reset: %+v", a)
	}
}

func TestSalesforceConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  fakecrm.SalesforceConfig
		file bool
		want string
	}{
		{"state file", fakecrm.SalesforceConfig{}, true, "state file"},
		{"id field taken", fakecrm.SalesforceConfig{IDField: "email"}, false, "Salesforce's own"},
		{"bad field name", fakecrm.SalesforceConfig{Fields: []string{"Shoe Size"}}, false, "letters"},
		{"field twice", fakecrm.SalesforceConfig{Fields: []string{"city", "City"}}, false, "twice"},
		{"bad object", fakecrm.SalesforceConfig{Object: "a/b"}, false, "object"},
		{"negative daily", fakecrm.SalesforceConfig{Daily: -1}, false, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fakecrm.Config{API: fakecrm.APISalesforce, Salesforce: tc.cfg}
			if tc.file {
				cfg.StateFile = t.TempDir() + "/s.json"
			}
			srv, err := fakecrm.New(cfg)
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

// TestSalesforceManyFields: any number of custom fields, each writable and
// readable under the name it was configured with.
func TestSalesforceManyFields(t *testing.T) {
	var fields []string
	for i := range 40 {
		fields = append(fields, fmt.Sprintf("Attr_%d", i))
	}
	srv, base := startSalesforce(t, fakecrm.Config{Salesforce: fakecrm.SalesforceConfig{Fields: fields}})
	a := mustSend(t, "PATCH", base+sfUpsert, records(false, rec("External_Id__c", "M-1", "LastName", "M", "attr_39", "last", "Attr_0", "first")), sfAuth...)
	if !strings.Contains(string(a.body), `"success":true`) {
		t.Fatalf("upsert: %s", a.body)
	}
	if cs := srv.Contacts(); len(cs) != 1 || cs[0].Attributes.Map()["Attr_39"] != "last" || cs[0].Attributes.Map()["Attr_0"] != "first" || len(cs[0].Attributes) != 2 {
		t.Errorf("contacts %+v", cs)
	}
	if a := mustSend(t, "PATCH", base+sfUpsert, records(false, rec("External_Id__c", "M-1", "company", "x")), sfAuth...); a.status != 400 {
		t.Errorf("a default field when Fields is set: %d %s, want 400", a.status, a.body)
	}
}

// TestSalesforceRequestSize: 16,384 bytes of URI and headers at most. An
// IN list of 200 long keys does not fit in a query's URI.
func TestSalesforceRequestSize(t *testing.T) {
	srv, base := startSalesforce(t, fakecrm.Config{})
	in := func(n, size int) string {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = "'" + fmt.Sprintf("%0*d", size, i) + "'"
		}
		return sfQueryPath("SELECT Id FROM Contact WHERE External_Id__c IN (" + strings.Join(keys, ",") + ")")
	}
	for _, tc := range []struct {
		name    string
		path    string
		headers []string
		status  int
	}{
		{"fits", in(100, 100), sfAuth, 200},
		{"URI too long", in(200, 100), sfAuth, 414},
		{"headers too large", in(100, 100), append([]string{"X-Padding", strings.Repeat("p", 6000)}, sfAuth...), 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := mustSend(t, "GET", base+tc.path, nil, tc.headers...)
			if a.status != tc.status {
				t.Fatalf("%d bytes of URI: got %d %s, want %d", len(tc.path), a.status, a.body, tc.status)
			}
		})
	}
	if got := srv.Audit().ResponsesByStatus; got[414] != 1 || got[431] != 1 {
		t.Errorf("responses by status %v", got)
	}
}

// A test moves the org on: a larger allocation (the rolling 24 hours
// freeing usage), a new token (the old session timed out).
func TestSalesforceSetDailyAndToken(t *testing.T) {
	srv, base := startSalesforce(t, fakecrm.Config{Salesforce: fakecrm.SalesforceConfig{Daily: 1}})
	limits := base + sfData + "/limits"
	if a := mustSend(t, "GET", limits, nil, sfAuth...); a.status != 200 {
		t.Fatalf("first: %d", a.status)
	}
	if a := mustSend(t, "GET", limits, nil, sfAuth...); a.status != 403 {
		t.Fatalf("allocation spent: %d, want 403", a.status)
	}
	srv.SetSalesforceDaily(5)
	if a := mustSend(t, "GET", limits, nil, sfAuth...); a.status != 200 || a.header.Get("Sforce-Limit-Info") != "api-usage=2/5" {
		t.Fatalf("after the allocation grew: %d %q, want 200 api-usage=2/5", a.status, a.header.Get("Sforce-Limit-Info"))
	}
	srv.SetToken("00Dnew!token")
	if a := mustSend(t, "GET", limits, nil, sfAuth...); a.status != 401 {
		t.Errorf("old token after SetToken: %d, want 401", a.status)
	}
	if a := mustSend(t, "GET", limits, nil, "Authorization", "Bearer 00Dnew!token"); a.status != 200 {
		t.Errorf("new token: %d, want 200", a.status)
	}
}
