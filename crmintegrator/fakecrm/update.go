package fakecrm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// updateBatch is POST /v1/contacts/batch/update: each entry names a
// contact by its id and sets the fields it carries; the others are kept.
// Entries are answered one by one, in input order.
func (s *Server) updateBatch(body []byte, f *faultState) (int, []byte) {
	var req struct {
		Contacts []map[string]json.RawMessage `json:"contacts"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		return http.StatusBadRequest, errorBody(crmapi.CodeMalformed, "the body is not a batch update: "+err.Error())
	}
	n := len(req.Contacts)
	if status, body, bad := s.batchSize(n); bad {
		return status, body
	}
	entries := make([]updateEntry, n)
	for i, raw := range req.Contacts {
		e, err := parseUpdateEntry(raw)
		if err != nil {
			return http.StatusBadRequest, errorBody(crmapi.CodeMalformed, fmt.Sprintf("contacts[%d]: %v", i, err))
		}
		entries[i] = e
	}
	results := make([]crmapi.BatchResult, n)
	for i := range entries {
		results[i] = s.updateOne(&entries[i], f)
	}
	return http.StatusOK, marshal(crmapi.BatchResponse{Results: results})
}

// updateEntry is one entry of a batch update: the fields it carries.
type updateEntry struct {
	id    string
	ext   *string           // external_id, when given
	own   map[string]string // own fields by name (contact.Fields)
	attrs map[string]string // attributes to set; "" removes one
}

// parseUpdateEntry reads an entry: "id", "external_id", the names of
// contact.Fields and "attributes", all strings (attributes an object of
// strings). Anything else is malformed: a field the CRM does not know
// would otherwise be dropped in silence.
func parseUpdateEntry(raw map[string]json.RawMessage) (updateEntry, error) {
	e := updateEntry{own: map[string]string{}}
	str := func(name string, v json.RawMessage) (string, error) {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", fmt.Errorf("%s is not a string", name)
		}
		return s, nil
	}
	for k, v := range raw {
		switch k {
		case "id":
			id, err := str(k, v)
			if err != nil {
				return e, err
			}
			e.id = id
		case "attributes":
			if err := json.Unmarshal(v, &e.attrs); err != nil {
				return e, fmt.Errorf("attributes is not an object of strings")
			}
		default:
			f, ok := contact.FieldByName(k)
			if !ok {
				return e, fmt.Errorf("unknown field %q", k)
			}
			val, err := str(k, v)
			if err != nil {
				return e, err
			}
			if f.Name == contact.Fields[0].Name {
				e.ext = &val
				continue
			}
			e.own[f.Name] = val
		}
	}
	if e.id == "" {
		return e, fmt.Errorf("id is missing or empty")
	}
	return e, nil
}

// updateOne applies one entry to the store: the merged contact must pass
// the rules a created one does.
func (s *Server) updateOne(e *updateEntry, f *faultState) crmapi.BatchResult {
	res := crmapi.BatchResult{ID: e.id, Status: crmapi.StatusRejected}
	var problem *crmapi.ErrorDetail
	found := s.store.update(e.id, func(c *crmapi.StoredContact) bool {
		res.ExternalID = c.ExternalID
		if e.ext != nil && *e.ext != c.ExternalID {
			problem = &crmapi.ErrorDetail{Code: crmapi.CodeExternalIDImmutable,
				Message: fmt.Sprintf("contact %s has external_id %q; an update cannot change it to %q", e.id, c.ExternalID, *e.ext)}
			return false
		}
		next := c.Contact
		for name, v := range e.own {
			fd, _ := contact.FieldByName(name)
			fd.Set(&next, v)
		}
		for k, v := range e.attrs {
			if v == "" {
				next.Attributes.Delete(k)
			} else {
				next.Attributes.Set(k, v)
			}
		}
		p := next.Validate()
		if p == nil {
			p = f.blockedProblem(&next)
		}
		if p != nil {
			problem = &crmapi.ErrorDetail{Code: p.Code, Message: p.Message}
			return false
		}
		c.Contact = next
		return true
	})
	switch {
	case !found:
		if e.ext != nil {
			res.ExternalID = *e.ext
		}
		res.Error = &crmapi.ErrorDetail{Code: crmapi.CodeNotFound, Message: "no contact has id " + e.id}
	case problem != nil:
		res.Error = problem
	default:
		res.Status = crmapi.StatusUpdated
		s.audit.updates.Add(1)
	}
	return res
}
