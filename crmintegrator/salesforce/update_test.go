package salesforce

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// Both encoders carry every field of contact.Fields: a field added there
// that the connector does not map fails here. An update's empty value is
// null.
func TestEncodersCarryEveryField(t *testing.T) {
	var c contact.Contact
	var names []string
	for i, f := range &contact.Fields {
		f.Set(&c, "v"+strings.Repeat("x", i))
		if i > 0 {
			names = append(names, f.Name)
		}
	}
	conn, _ := New(Config{BaseURL: "https://x.my.salesforce.com"})
	for name, body := range map[string][]byte{
		"create": conn.Encode([]contact.Contact{c}).Body,
		"update": conn.EncodeUpdate([]crmapi.Update{{CRMID: "003A", Fields: names, Contact: c}}).Body,
	} {
		var got struct {
			Records []map[string]any `json:"records"`
		}
		if err := json.Unmarshal(body, &got); err != nil || len(got.Records) != 1 {
			t.Fatalf("%s: %s: %v", name, body, err)
		}
		for _, f := range &contact.Fields {
			field := salesforceNames.Of(f.Name)
			if f.Name == contact.Fields[0].Name {
				if name == "update" {
					continue // an update names the record by Id
				}
				field = DefaultIDField
			}
			if field == "" || got.Records[0][field] != f.Get(&c) {
				t.Errorf("%s: field %s is not in %q: %s", name, f.Name, field, body)
			}
		}
	}
	var empty contact.Contact
	empty.ExternalID = "K"
	body := conn.EncodeUpdate([]crmapi.Update{{CRMID: "003A", Fields: names, Contact: empty}}).Body
	for _, f := range contact.Fields[1:] {
		if n := `"` + salesforceNames.Of(f.Name) + `":null`; !strings.Contains(string(body), n) {
			t.Errorf("a cleared %s is not %s: %s", f.Name, n, body)
		}
	}
}

func TestEncodeUpdate(t *testing.T) {
	c, _ := New(Config{BaseURL: "https://x.my.salesforce.com"})
	u := crmapi.Update{CRMID: "003A", Fields: []string{"email", "phone"},
		Contact: contact.Contact{ExternalID: "K1", Email: "new@example.com", LastName: "not listed"}}
	req := c.EncodeUpdate([]crmapi.Update{u})
	want := `{"allOrNone":false,"records":[{"Email":"new@example.com","Id":"003A","Phone":null,"attributes":{"type":"Contact"}}]}`
	if string(req.Body) != want {
		t.Errorf("body:\n got %s\nwant %s", req.Body, want)
	}
	if !reflect.DeepEqual(req.IDs, []string{"003A"}) || !reflect.DeepEqual(req.Keys, []string{"K1"}) {
		t.Errorf("ids %v keys %v", req.IDs, req.Keys)
	}
}

func TestWriteUpdateAnswers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		class   crmapi.Class
		results []crmapi.BatchResult
	}{
		{name: "updated, deleted, locked", status: 200,
			body: `[{"id":"003A","success":true,"errors":[]},{"success":false,"errors":[{"statusCode":"ENTITY_IS_DELETED","message":"entity is deleted","fields":[]}]},{"success":false,"errors":[{"statusCode":"UNABLE_TO_LOCK_ROW","message":"unable to obtain exclusive access to this record","fields":[]}]}]`,
			results: []crmapi.BatchResult{{ExternalID: "K1", ID: "003A", Status: crmapi.StatusUpdated},
				{ExternalID: "K2", ID: "003B", Status: crmapi.StatusRejected, Gone: true, Error: &crmapi.ErrorDetail{Code: "ENTITY_IS_DELETED"}},
				{ExternalID: "K3", ID: "003C"}}},
		{name: "invalid email", status: 200,
			body: `[{"id":"003A","success":true,"errors":[]},{"success":false,"errors":[{"statusCode":"INVALID_EMAIL_ADDRESS","message":"Email: invalid email address: x","fields":["Email"]}]},{"id":"003C","success":true,"errors":[]}]`,
			results: []crmapi.BatchResult{{ExternalID: "K1", ID: "003A", Status: crmapi.StatusUpdated},
				{ExternalID: "K2", ID: "003B", Status: crmapi.StatusRejected, Error: &crmapi.ErrorDetail{Code: "INVALID_EMAIL_ADDRESS"}},
				{ExternalID: "K3", ID: "003C", Status: crmapi.StatusUpdated}}},
		{name: "too few results", status: 200, body: `[]`, class: crmapi.ClassAmbiguous},
		{name: "500", status: 500, body: `[{"errorCode":"UNKNOWN_EXCEPTION","message":"x"}]`, class: crmapi.ClassAmbiguous},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPatch || r.URL.Path != "/services/data/v60.0/composite/sobjects" {
					t.Errorf("got %s %s, want PATCH /services/data/v60.0/composite/sobjects", r.Method, r.URL.Path)
				}
				io.Copy(io.Discard, r.Body)
				answer(w, tc.status, tc.body)
			})
			var ups []crmapi.Update
			for _, k := range []string{"A", "B", "C"} {
				ups = append(ups, crmapi.Update{CRMID: "003" + k, Fields: []string{"email"},
					Contact: contact.Contact{ExternalID: "K" + string(rune('1'+len(ups))), Email: "a@example.com"}})
			}
			resp, err := c.WriteUpdate(context.Background(), c.EncodeUpdate(ups))
			if tc.class != crmapi.ClassOK {
				var ce *crmapi.Error
				if !errors.As(err, &ce) || ce.Class != tc.class {
					t.Fatalf("got %v, want class %v", err, tc.class)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range resp.Results {
				if e := resp.Results[i].Error; e != nil {
					e.Message = ""
				}
			}
			if !reflect.DeepEqual(resp.Results, tc.results) {
				t.Errorf("got %+v\nwant %+v", resp.Results, tc.results)
			}
		})
	}
}
