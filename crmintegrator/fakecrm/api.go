package fakecrm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// MaxBodyBytes caps a request body; larger bodies get 413 body_too_large.
const MaxBodyBytes = 16 << 20

// Preallocated header values: net/http does not modify them.
var (
	jsonContentType = []string{"application/json"}
	headerTrue      = []string{"true"}
	headerOne       = []string{"1"}
)

// writeBody writes a complete JSON response.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	writeBodyType(w, status, jsonContentType, body)
}

// writeBodyType writes a complete response of the content type ctype.
func writeBodyType(w http.ResponseWriter, status int, ctype []string, body []byte) {
	h := w.Header()
	h["Content-Type"] = ctype
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client left; nothing to do
}

// marshal encodes v with a trailing newline, as json.Encoder would.
func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own wire types get here; they always encode.
		panic("fakecrm: encode response: " + err.Error())
	}
	return append(b, '\n')
}

func errorBody(code, msg string) []byte {
	return marshal(crmapi.ErrorResponse{Error: crmapi.ErrorDetail{Code: code, Message: msg}})
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeBody(w, status, errorBody(code, msg))
}

// op is what a /v1 request asks for.
type op int

const (
	opNone op = iota
	opCreate
	opBatch
	opList
	opLookup
	opUpdate
)

// route maps a /v1 request to its op; for a known path with the wrong
// method it returns opNone and the methods allowed.
func route(r *http.Request) (o op, allow string) {
	switch r.URL.Path {
	case crmapi.PathContacts:
		switch r.Method {
		case http.MethodPost:
			return opCreate, ""
		case http.MethodGet:
			return opList, ""
		}
		return opNone, "GET, POST"
	case crmapi.PathBatch:
		if r.Method == http.MethodPost {
			return opBatch, ""
		}
		return opNone, "POST"
	case crmapi.PathLookup:
		if r.Method == http.MethodPost {
			return opLookup, ""
		}
		return opNone, "POST"
	case crmapi.PathBatchUpdate:
		if r.Method == http.MethodPost {
			return opUpdate, ""
		}
		return opNone, "POST"
	}
	return opNone, ""
}

// call is one /v1 request on its way through: it applies the request's
// latency exactly once, before the answer or while holding its key.
type call struct {
	s      *Server
	w      http.ResponseWriter
	r      *http.Request
	f      *faultState
	delay  time.Duration
	paused bool
	// ctype and errBody, when set, answer in another API's content type
	// and error shape (HubSpot's).
	ctype   []string
	errBody func(status int, code, msg string) []byte
}

func (c *call) wait() {
	if !c.paused {
		c.paused = true
		c.s.pause(c.delay)
	}
}

func (c *call) reply(status int, body []byte) {
	c.wait()
	ctype := c.ctype
	if ctype == nil {
		ctype = jsonContentType
	}
	writeBodyType(c.w, status, ctype, body)
	c.s.audit.status(status)
}

func (c *call) fail(status int, code, msg string) {
	if c.errBody != nil {
		c.reply(status, c.errBody(status, code, msg))
		return
	}
	c.reply(status, errorBody(code, msg))
}

func (s *Server) serveV1(w http.ResponseWriter, r *http.Request) {
	s.audit.requests.Add(1)
	c := &call{s: s, w: w, r: r, f: s.faults.Load()}
	o, allow := route(r)
	switch {
	case o == opNone && allow != "":
		w.Header().Set("Allow", allow)
		c.fail(http.StatusMethodNotAllowed, crmapi.CodeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path+"; use "+allow)
		return
	case o == opNone:
		c.fail(http.StatusNotFound, crmapi.CodeNotFound, "no such endpoint: "+r.URL.Path)
		return
	}
	var d decision
	if o == opList || o == opLookup {
		c.delay = jitter(c.f)
	} else {
		d = decide(s.seed, s.postSeq.Add(1), c.f)
		c.delay = d.delay
	}

	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="crm"`)
		c.fail(http.StatusUnauthorized, crmapi.CodeUnauthorized, "missing or wrong bearer token in the Authorization header")
		return
	}
	if c.f.Rate > 0 {
		// Every answer past the token check states the bucket (a caller
		// without the token learns nothing of others' traffic); one that
		// spends no token states it as it is.
		s.limiter.setHeaders(w.Header(), s.now())
	}
	if c.f.Down {
		s.audit.failed.Add(1)
		w.Header()[crmapi.HeaderRetryAfter] = headerOne
		c.fail(http.StatusServiceUnavailable, crmapi.CodeUnavailable, "the CRM is down for maintenance; nothing was created, retry later")
		return
	}
	if c.f.Rate > 0 {
		now := s.now()
		ok, after := s.limiter.take(now)
		s.limiter.setHeaders(w.Header(), now)
		if !ok {
			s.audit.rateLimited.Add(1)
			w.Header().Set(crmapi.HeaderRetryAfter, strconv.Itoa(after))
			c.fail(http.StatusTooManyRequests, crmapi.CodeRateLimited, "rate limit exceeded; nothing was created, retry after "+strconv.Itoa(after)+"s")
			return
		}
	}
	switch o {
	case opList:
		s.list(c)
		return
	case opLookup:
		s.lookupBatch(c)
		return
	}
	s.post(c, o, d)
}

// list answers GET /v1/contacts?external_id=X.
func (s *Server) list(c *call) {
	ext := c.r.URL.Query().Get("external_id")
	if ext == "" {
		c.fail(http.StatusBadRequest, crmapi.CodeMalformed, "the external_id query parameter is required")
		return
	}
	if !utf8.ValidString(ext) {
		c.fail(http.StatusBadRequest, contact.CodeInvalidUTF8, "the external_id query parameter is not valid UTF-8")
		return
	}
	c.reply(http.StatusOK, marshal(crmapi.ListResponse{Contacts: s.store.lookup(ext)}))
}

// lookupBatch answers POST /v1/contacts/lookup: the contacts of up to
// max-batch external ids in one request, as a real CRM's batch read does.
func (s *Server) lookupBatch(c *call) {
	body, err := readBody(c.w, c.r)
	if err != nil {
		c.fail(http.StatusRequestEntityTooLarge, crmapi.CodeBodyTooLarge, "the body exceeds the size limit")
		return
	}
	var req crmapi.LookupRequest
	if err := json.Unmarshal(body, &req); err != nil {
		c.fail(http.StatusBadRequest, crmapi.CodeMalformed, "the body is not a lookup request: "+err.Error())
		return
	}
	switch n := len(req.ExternalIDs); {
	case n == 0:
		c.fail(http.StatusBadRequest, crmapi.CodeEmptyBatch, "external_ids is empty or absent")
		return
	case n > s.maxBatch:
		c.fail(http.StatusRequestEntityTooLarge, crmapi.CodeBatchTooLarge, fmt.Sprintf("%d external ids, at most %d per lookup", n, s.maxBatch))
		return
	}
	out := crmapi.LookupResponse{Results: make([]crmapi.LookupResult, len(req.ExternalIDs))}
	for i, id := range req.ExternalIDs {
		if id == "" {
			c.fail(http.StatusBadRequest, crmapi.CodeMalformed, fmt.Sprintf("external_ids[%d] is empty", i))
			return
		}
		out.Results[i] = crmapi.LookupResult{ExternalID: id, Contacts: s.store.lookup(id)}
	}
	c.reply(http.StatusOK, marshal(out))
}

// post answers the writing endpoints (the creates and the batch update): faults first, then the
// Idempotency-Key, then the work, then maybe an ambiguous answer.
func (s *Server) post(c *call, o op, d decision) {
	w, r := c.w, c.r
	if d.fail {
		s.audit.failed.Add(1)
		if d.failRetryAfter {
			w.Header()[crmapi.HeaderRetryAfter] = headerOne
		}
		c.fail(http.StatusServiceUnavailable, crmapi.CodeUnavailable, "service temporarily unavailable; nothing was created, retry later")
		return
	}

	var key string
	useKey := false
	if vals, ok := r.Header[crmapi.HeaderIdempotencyKey]; ok && !s.idemOff.Load() {
		key, useKey = vals[0], true
		if key == "" || len(key) > MaxIdempotencyKeyLen || !utf8.ValidString(key) {
			c.fail(http.StatusBadRequest, crmapi.CodeInvalidIdempotency,
				"Idempotency-Key must be 1 to "+strconv.Itoa(MaxIdempotencyKeyLen)+" characters of UTF-8")
			return
		}
	}

	body, err := readBody(w, r)
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			c.fail(http.StatusRequestEntityTooLarge, crmapi.CodeBodyTooLarge, "the body exceeds "+strconv.Itoa(MaxBodyBytes)+" bytes")
			return
		}
		c.fail(http.StatusBadRequest, crmapi.CodeMalformed, "reading the body: "+err.Error())
		return
	}
	// JSON decoding would turn every invalid byte into U+FFFD, folding
	// different keys into one external id.
	if !utf8.Valid(body) || loneSurrogate(body) {
		c.fail(http.StatusBadRequest, contact.CodeInvalidUTF8, "the body is not valid UTF-8 (or escapes half a surrogate pair)")
		return
	}

	var rec *idemRecord
	finished := false
	if useKey {
		var out idemOutcome
		var status int
		var stored []byte
		rec, out, status, stored = s.idem.begin(key, fingerprintOf(r.Method, r.URL.Path, body), s.now())
		switch out {
		case idemReused:
			c.fail(http.StatusUnprocessableEntity, crmapi.CodeIdempotencyKeyReused, "this Idempotency-Key was used with a different request; use a new key")
			return
		case idemInProgress:
			w.Header()[crmapi.HeaderRetryAfter] = headerOne
			c.fail(http.StatusConflict, crmapi.CodeRequestInProgress, "a request with this Idempotency-Key is still in progress; retry later")
			return
		case idemReplay:
			if d.ambiguous != modeNone {
				s.ambiguous(c, d.ambiguous)
				return
			}
			s.audit.replays.Add(1)
			w.Header()[crmapi.HeaderReplayed] = headerTrue
			c.reply(status, stored)
			return
		}
		// Free the key if the work below panics, so a retry is not stuck
		// at 409 forever.
		defer func() {
			if !finished {
				s.idem.finish(key, rec, 0, nil)
			}
		}()
		if s.afterReserve != nil {
			s.afterReserve()
		}
	}

	c.wait() // the CRM's processing time, with the key held in progress
	var status int
	var resp []byte
	switch o {
	case opBatch:
		status, resp = s.createBatch(body, c.f)
	case opUpdate:
		status, resp = s.updateBatch(body, c.f)
	default:
		status, resp = s.createOne(body, c.f)
	}
	if useKey {
		// Stored before any ambiguous answer: that is what makes a retry
		// with the same key safe.
		s.idem.finish(key, rec, status, resp)
		finished = true
	}
	if d.ambiguous != modeNone && status/100 == 2 {
		s.ambiguous(c, d.ambiguous)
		return
	}
	c.reply(status, resp)
}

// readBody reads the whole body, at most MaxBodyBytes, counted as the
// bytes arrive. Content-Length is a claim: it may refuse a body early, and
// sizes the first buffer only up to claimedBodyBytes, so a false claim
// costs no more than that (io.ReadAll's growth from 512 bytes copied and
// cleared each batch's body several times over).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > MaxBodyBytes {
		return nil, &http.MaxBytesError{Limit: MaxBodyBytes}
	}
	size := int64(bytes.MinRead)
	if r.ContentLength > 0 {
		// ReadFrom wants MinRead bytes free before each read, the last
		// one (which finds the end) included.
		size = min(r.ContentLength, claimedBodyBytes) + bytes.MinRead
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	return buf.Bytes(), err
}

// claimedBodyBytes is how much of a body's Content-Length readBody takes
// on trust.
const claimedBodyBytes = 256 << 10

func (s *Server) createdAt() string { return s.now().UTC().Format(time.RFC3339Nano) }

// createOne is POST /v1/contacts.
func (s *Server) createOne(body []byte, f *faultState) (int, []byte) {
	var ct contact.Contact
	if err := json.Unmarshal(body, &ct); err != nil {
		return http.StatusBadRequest, errorBody(crmapi.CodeMalformed, "the body is not a contact: "+err.Error())
	}
	p := ct.Validate()
	if p == nil {
		p = f.blockedProblem(&ct)
	}
	if p != nil {
		return http.StatusBadRequest, errorBody(p.Code, p.Message)
	}
	var ids [1]string
	s.store.create([]*contact.Contact{&ct}, s.createdAt(), ids[:])
	return http.StatusCreated, marshal(crmapi.CreateResponse{ID: ids[0], ExternalID: ct.ExternalID})
}

// batchSize answers a batch of n contacts that is empty or over max-batch
// (docs/crm-api.md): nothing is written.
func (s *Server) batchSize(n int) (status int, body []byte, bad bool) {
	switch {
	case n == 0:
		return http.StatusBadRequest, errorBody(crmapi.CodeEmptyBatch, "the batch holds no contacts"), true
	case n > s.maxBatch:
		return http.StatusRequestEntityTooLarge, errorBody(crmapi.CodeBatchTooLarge,
			"the batch holds "+strconv.Itoa(n)+" contacts, at most "+strconv.Itoa(s.maxBatch)+" allowed; split it"), true
	}
	return 0, nil, false
}

// createBatch is POST /v1/contacts/batch: valid contacts are created,
// invalid ones rejected one by one.
func (s *Server) createBatch(body []byte, f *faultState) (int, []byte) {
	var req crmapi.BatchRequest
	if err := crmapi.UnmarshalBatchRequest(body, &req); err != nil {
		return http.StatusBadRequest, errorBody(crmapi.CodeMalformed, "the body is not a batch: "+err.Error())
	}
	n := len(req.Contacts)
	if status, body, bad := s.batchSize(n); bad {
		return status, body
	}
	results := make([]crmapi.BatchResult, n)
	valid := make([]*contact.Contact, 0, n)
	where := make([]int, 0, n)
	for i := range req.Contacts {
		ct := &req.Contacts[i]
		results[i].ExternalID = ct.ExternalID
		// post refused a body that is not valid UTF-8 or escapes half a
		// surrogate pair, so every string decoded from it is valid.
		p := ct.ValidateChecked()
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
	return http.StatusOK, crmapi.AppendBatchResponse(nil, crmapi.BatchResponse{Results: results})
}

// ambiguous answers a request whose contacts were created as if they might
// not have been.
func (s *Server) ambiguous(c *call, m ambiguousMode) {
	s.audit.ambiguous.Add(1)
	s.log.Debug("ambiguous answer", "mode", m.String(), "path", c.r.URL.Path)
	switch m {
	case mode500:
		c.fail(http.StatusInternalServerError, crmapi.CodeInternal, "internal error")
	case mode502:
		c.fail(http.StatusBadGateway, crmapi.CodeBadGateway, "bad gateway")
	case mode504:
		c.fail(http.StatusGatewayTimeout, crmapi.CodeGatewayTimeout, "gateway timeout")
	case modeReset:
		c.wait()
		s.drop(c.w, true)
	case modeHang:
		c.wait()
		s.hang(c.r.Context(), c.f.Hang)
		s.drop(c.w, false)
	}
}

// drop closes the connection without an answer: with an RST when reset is
// set, else with a plain close.
func (s *Server) drop(w http.ResponseWriter, reset bool) {
	s.audit.dropped.Add(1)
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 or a recorder: abort the response instead.
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		tc.SetLinger(0) //nolint:errcheck // best effort: a plain close still drops
	}
	conn.Close()
}

// loneSurrogate reports a \uD800-\uDFFF escape that is not half of a
// pair: JSON decoding turns it into U+FFFD, as it does invalid bytes.
func loneSurrogate(body []byte) bool {
	hex4 := func(i int) (rune, bool) {
		if i+6 > len(body) || body[i] != '\\' || body[i+1] != 'u' {
			return 0, false
		}
		v, err := strconv.ParseUint(string(body[i+2:i+6]), 16, 16)
		return rune(v), err == nil
	}
	for i := 0; i < len(body); i++ {
		j := bytes.IndexByte(body[i:], '\\')
		if j < 0 {
			return false
		}
		i += j
		if i+1 < len(body) && body[i+1] != 'u' {
			i++ // an escaped character, maybe a backslash
			continue
		}
		r, ok := hex4(i)
		if !ok {
			continue
		}
		switch {
		case r >= 0xdc00 && r <= 0xdfff:
			return true
		case r >= 0xd800 && r <= 0xdbff:
			lo, ok := hex4(i + 6)
			if !ok || lo < 0xdc00 || lo > 0xdfff {
				return true
			}
			i += 11
		default:
			i += 5
		}
	}
	return false
}
