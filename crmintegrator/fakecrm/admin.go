package fakecrm

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"

	"crmsync/crmintegrator/crmapi"
)

// Admin paths. They are not behind the token: the admin API belongs to
// whoever runs the fake, not to the integrator under test.
const (
	PathAdminAudit    = "/admin/audit"
	PathAdminContacts = "/admin/contacts"
	PathAdminReset    = "/admin/reset"
	PathAdminFaults   = "/admin/faults"
)

// adminFaults is the body of GET and PUT /admin/faults: the fault knobs
// plus the idempotency switch.
type adminFaults struct {
	faultsJSON
	Idempotency bool `json:"idempotency"`
}

var adminFaultKeys = []string{
	"fail_rate", "ambiguous_rate", "ambiguous_modes", "latency", "jitter", "hang",
	"rate", "burst", "down", "blocked_domains", "idempotency",
}

func (s *Server) adminFaults() adminFaults {
	f := s.Faults()
	return adminFaults{
		f.wire(),
		s.Idempotency(),
	}
}

func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	method := func(want string) bool {
		if r.Method == want {
			return true
		}
		w.Header().Set("Allow", want)
		writeError(w, http.StatusMethodNotAllowed, crmapi.CodeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path+"; use "+want)
		return false
	}
	switch r.URL.Path {
	case PathAdminAudit:
		if method(http.MethodGet) {
			writeBody(w, http.StatusOK, marshal(s.Audit()))
		}
	case PathAdminContacts:
		if !method(http.MethodGet) {
			return
		}
		var cs []crmapi.StoredContact
		if ext := r.URL.Query().Get("external_id"); s.hs != nil || s.sf != nil {
			cs = s.Contacts()
			if ext != "" {
				cs = slices.DeleteFunc(cs, func(c crmapi.StoredContact) bool { return c.ExternalID != ext })
			}
		} else if ext != "" {
			cs = s.store.lookup(ext)
		} else {
			cs, _, _ = s.store.snapshot()
		}
		writeBody(w, http.StatusOK, marshal(crmapi.ListResponse{Contacts: cs}))
	case PathAdminReset:
		if method(http.MethodPost) {
			s.Reset()
			w.WriteHeader(http.StatusNoContent)
		}
	case PathAdminFaults:
		switch r.Method {
		case http.MethodGet:
			writeBody(w, http.StatusOK, marshal(s.adminFaults()))
		case http.MethodPut:
			s.putFaults(w, r)
		default:
			w.Header().Set("Allow", "GET, PUT")
			writeError(w, http.StatusMethodNotAllowed, crmapi.CodeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path+"; use GET or PUT")
		}
	default:
		writeError(w, http.StatusNotFound, crmapi.CodeNotFound, "no such endpoint: "+r.URL.Path)
	}
}

// putFaults changes the knobs present in the body and leaves the others.
func (s *Server) putFaults(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(w, http.StatusBadRequest, crmapi.CodeMalformed, "reading the body: "+err.Error())
		return
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(body, &keys); err != nil {
		writeError(w, http.StatusBadRequest, crmapi.CodeMalformed, "the body is not a JSON object: "+err.Error())
		return
	}
	for k := range keys {
		if !slices.Contains(adminFaultKeys, k) {
			writeError(w, http.StatusBadRequest, crmapi.CodeMalformed, "unknown knob "+k)
			return
		}
	}
	f := s.Faults()
	var idem struct {
		Idempotency *bool `json:"idempotency"`
	}
	if err := json.Unmarshal(body, &f); err != nil {
		writeError(w, http.StatusBadRequest, crmapi.CodeMalformed, "bad knob value: "+err.Error())
		return
	}
	if err := json.Unmarshal(body, &idem); err != nil {
		writeError(w, http.StatusBadRequest, crmapi.CodeMalformed, "bad idempotency value: "+err.Error())
		return
	}
	if err := f.validate(); err != nil {
		writeError(w, http.StatusBadRequest, crmapi.CodeMalformed, err.Error())
		return
	}
	s.SetFaults(f)
	if idem.Idempotency != nil {
		s.SetIdempotency(*idem.Idempotency)
	}
	writeBody(w, http.StatusOK, marshal(s.adminFaults()))
}
