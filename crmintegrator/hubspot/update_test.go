package hubspot

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

// everyField is a contact with a distinct value in every field of
// contact.Fields, and the names of its own fields but the key.
func everyField() (contact.Contact, []string) {
	var c contact.Contact
	var names []string
	for i, f := range &contact.Fields {
		f.Set(&c, "v"+strings.Repeat("x", i)+"@example.com")
		if i > 0 {
			names = append(names, f.Name)
		}
	}
	return c, names
}

// Both encoders carry every field of contact.Fields: a field added there
// that the connector does not map fails here.
func TestEncodersCarryEveryField(t *testing.T) {
	c, names := everyField()
	for _, create := range []bool{false, true} {
		conn, _ := New(Config{BaseURL: "http://x", IDProperty: "ext", Create: create})
		for name, body := range map[string][]byte{
			"create": conn.Encode([]contact.Contact{c}).Body,
			"update": conn.EncodeUpdate([]crmapi.Update{{CRMID: "501", Fields: names, Contact: c}}).Body,
		} {
			var got struct {
				Inputs []struct {
					ID         string            `json:"id"`
					Properties map[string]string `json:"properties"`
				} `json:"inputs"`
			}
			if err := json.Unmarshal(body, &got); err != nil || len(got.Inputs) != 1 {
				t.Fatalf("%s: %s: %v", name, body, err)
			}
			for _, f := range &contact.Fields {
				prop := hubspotNames.Of(f.Name)
				if f.Name == contact.Fields[0].Name {
					prop = "ext"
				}
				if prop == "" || got.Inputs[0].Properties[prop] != f.Get(&c) {
					t.Errorf("%s (create mode %v): field %s is not in property %q: %s", name, create, f.Name, prop, body)
				}
			}
		}
	}
}

// An update writes only the listed properties and the id property,
// clears with "" (HubSpot: "Properties values can be cleared by passing
// an empty string"), names the contact by its HubSpot id, and encodes the
// same bytes every time.
func TestEncodeUpdate(t *testing.T) {
	c, _ := New(Config{BaseURL: "http://x", IDProperty: "ext"})
	u := crmapi.Update{CRMID: "501", Fields: []string{"email", "phone", "attributes.company", "attributes.city"},
		Contact: contact.Contact{ExternalID: "K1", Email: "new@example.com", FirstName: "not listed", Attributes: contact.AttrsOf(map[string]string{"company": "Acme"})}}
	req := c.EncodeUpdate([]crmapi.Update{u})
	want := `{"inputs":[{"id":"501","properties":{"city":"","company":"Acme","email":"new@example.com","ext":"K1","phone":""},"objectWriteTraceId":"0"}]}`
	if string(req.Body) != want {
		t.Errorf("body:\n got %s\nwant %s", req.Body, want)
	}
	if again := c.EncodeUpdate([]crmapi.Update{u}); string(again.Body) != string(req.Body) {
		t.Error("the same update encodes to other bytes")
	}
	if !reflect.DeepEqual(req.IDs, []string{"501"}) || !reflect.DeepEqual(req.Keys, []string{"K1"}) {
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
		{name: "200, results out of order", status: 200,
			body: `{"status":"COMPLETE","results":[{"id":"502","properties":{"ext":"K2"}},{"id":"501","properties":{"ext":"K1"}}]}`,
			results: []crmapi.BatchResult{{ExternalID: "K1", Status: crmapi.StatusUpdated, ID: "501"},
				{ExternalID: "K2", Status: crmapi.StatusUpdated, ID: "502"}}},
		{name: "207: one id not found", status: 207,
			body: `{"status":"COMPLETE","results":[{"id":"501","properties":{}}],"numErrors":1,"errors":[{"status":"error","category":"OBJECT_NOT_FOUND","message":"Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.","context":{"ids":["502"]}}]}`,
			results: []crmapi.BatchResult{{ExternalID: "K1", Status: crmapi.StatusUpdated, ID: "501"},
				{ExternalID: "K2", Status: crmapi.StatusRejected, ID: "502", Gone: true, Error: &crmapi.ErrorDetail{Code: "OBJECT_NOT_FOUND"}}}},
		{name: "207: one input invalid", status: 207,
			body: `{"status":"COMPLETE","results":[{"id":"502"}],"numErrors":1,"errors":[{"status":"error","category":"VALIDATION_ERROR","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"Email address x is invalid\",\"error\":\"INVALID_EMAIL\",\"name\":\"email\"}]","context":{"objectWriteTraceId":["0"]}}]}`,
			results: []crmapi.BatchResult{{ExternalID: "K1", Status: crmapi.StatusRejected, ID: "501", Error: &crmapi.ErrorDetail{Code: "INVALID_EMAIL"}},
				{ExternalID: "K2", Status: crmapi.StatusUpdated, ID: "502"}}},
		{name: "an input without result or error stays unknown", status: 200,
			body:    `{"status":"COMPLETE","results":[{"id":"501"}]}`,
			results: []crmapi.BatchResult{{ExternalID: "K1", Status: crmapi.StatusUpdated, ID: "501"}, {ExternalID: "K2"}}},
		{name: "409 conflict: split", status: 409, body: `{"status":"error","message":"Contact already exists. Existing ID: 9","category":"CONFLICT"}`, class: crmapi.ClassSplit},
		{name: "504", status: 504, body: ``, class: crmapi.ClassAmbiguous},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != pathUpdate {
					t.Errorf("got %s %s, want POST %s", r.Method, r.URL.Path, pathUpdate)
				}
				io.Copy(io.Discard, r.Body)
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			ups := []crmapi.Update{{CRMID: "501", Fields: []string{"email"}, Contact: contact.Contact{ExternalID: "K1", Email: "a@example.com"}},
				{CRMID: "502", Fields: []string{"email"}, Contact: contact.Contact{ExternalID: "K2", Email: "b@example.com"}}}
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
					e.Message = "" // compared by code
				}
			}
			if !reflect.DeepEqual(resp.Results, tc.results) {
				t.Errorf("got %+v\nwant %+v", resp.Results, tc.results)
			}
		})
	}
}
