package fakecrm

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// createBatchWithJSON is createBatch as it was before crmapi's batch
// codec: encoding/json both ways. The codec must not change a byte.
func (s *Server) createBatchWithJSON(body []byte, f *faultState) (int, []byte) {
	var req crmapi.BatchRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return 400, errorBody(crmapi.CodeMalformed, "the body is not a batch: "+err.Error())
	}
	n := len(req.Contacts)
	switch {
	case n == 0:
		return 400, errorBody(crmapi.CodeEmptyBatch, "the batch holds no contacts")
	case n > s.maxBatch:
		return 413, errorBody(crmapi.CodeBatchTooLarge,
			"the batch holds "+strconv.Itoa(n)+" contacts, at most "+strconv.Itoa(s.maxBatch)+" allowed; split it")
	}
	results := make([]crmapi.BatchResult, n)
	var valid []*contact.Contact
	var where []int
	for i := range req.Contacts {
		ct := &req.Contacts[i]
		results[i].ExternalID = ct.ExternalID
		p := ct.Validate()
		if p == nil {
			p = f.blockedProblem(ct)
		}
		if p != nil {
			results[i].Status = crmapi.StatusRejected
			results[i].Error = &crmapi.ErrorDetail{Code: p.Code, Message: p.Message}
			continue
		}
		valid = append(valid, ct)
		where = append(where, i)
	}
	if len(valid) > 0 {
		ids := make([]string, len(valid))
		s.store.create(valid, s.createdAt(), ids)
		for j, i := range where {
			results[i].Status, results[i].ID = crmapi.StatusCreated, ids[j]
		}
	}
	return 200, marshal(crmapi.BatchResponse{Results: results})
}

func TestCreateBatchLikeEncodingJSON(t *testing.T) {
	var many bytes.Buffer
	many.WriteString(`{"contacts":[`)
	for i := range 101 {
		if i > 0 {
			many.WriteByte(',')
		}
		many.WriteString(`{"external_id":"m` + strconv.Itoa(i) + `","email":"m@example.com"}`)
	}
	many.WriteString(`]}`)
	bodies := []string{
		`{"contacts":[{"external_id":"a","email":"a@example.com","first_name":"Ada","attributes":{"k":"v & <w>"}}]}`,
		`{"contacts":[{"external_id":"a","email":"not an email"},{"external_id":"","email":"b@example.com"},{"external_id":"c","email":"c@example.com"}]}`,
		`{"contacts":[{"external_id":"blocked","email":"x@blocked.example"}]}`,
		`{"contacts":[{"external_id":"\u2028\ud83c\udf89\u003c","email":"e@example.com"}]}`,
		`{"contacts":[{"External_ID":"folded","EMAIL":"f@example.com"}]}`,
		"{\"contacts\":[{\"external_id\":\"bad \xff utf8\",\"email\":\"u@example.com\"}]}",
		`{"contacts":[{"external_id":"a","email":"a@example.com","email":"twice@example.com"}]}`,
		`{"contacts":[{"external_id":1}]}`,
		`{"contacts":[]}`,
		`{"contacts":null}`,
		`{}`,
		`{"contacts":[{"external_id":"a"}]} trailing`,
		`{"contacts":[{"external_id":"a"`,
		``,
		many.String(),
	}
	at := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	newServer := func() *Server {
		s, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		s.now = func() time.Time { return at }
		return s
	}
	fast, slow := newServer(), newServer()
	f := newFaultState(Faults{BlockedDomains: "blocked.example"})
	var all []byte
	for _, body := range bodies {
		gotStatus, got := fast.createBatch([]byte(body), f)
		all = append(all, got...)
		wantStatus, want := slow.createBatchWithJSON([]byte(body), f)
		if gotStatus != wantStatus || !bytes.Equal(got, want) {
			t.Errorf("%.60q: got %d %s, want %d %s", body, gotStatus, got, wantStatus, want)
		}
	}
	for _, code := range []string{CodeEmailDomainBlocked, contact.CodeInvalidEmail, crmapi.CodeMalformed, crmapi.CodeEmptyBatch, crmapi.CodeBatchTooLarge, crmapi.StatusCreated} {
		if !bytes.Contains(all, []byte(code)) {
			t.Errorf("no answer holds %q; the bodies no longer cover it", code)
		}
	}
	gotStore, _, _ := fast.store.snapshot()
	wantStore, _, _ := slow.store.snapshot()
	if len(gotStore) == 0 || !reflect.DeepEqual(gotStore, wantStore) {
		t.Errorf("got store %+v, want %+v", gotStore, wantStore)
	}
}
