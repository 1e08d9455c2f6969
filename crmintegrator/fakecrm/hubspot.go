package fakecrm

// hubspot.go serves HubSpot's CRM v3 contacts API (Config.API "hubspot"):
// batch create, upsert, read and update, search, get one, and the contact
// property definitions, with HubSpot's status codes, error bodies and
// rate-limit headers. docs/crm/hubspot-fake.md says what is served and
// where the fake differs from HubSpot; the facts and their sources are in
// the OpenAPI spec (HubSpot/HubSpot-public-api-spec-collection) and
// HubSpot's error-handling and usage-guidelines pages.
//
// The fault knobs, the per-k-th-write decisions and the audit are the
// generic API's (faults.go, audit.go); only the store differs, because
// HubSpot updates contacts in place where the generic API only appends.

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// API names for Config.API.
const (
	APIGeneric = "generic"
	APIHubSpot = "hubspot"
)

// HubSpot paths served under Config.API "hubspot".
const (
	HubSpotPathContacts   = "/crm/v3/objects/contacts"
	HubSpotPathProperties = "/crm/v3/properties/contacts"
)

// HubSpot defaults.
const (
	DefaultHubSpotIDProperty = "external_id"
	DefaultHubSpotSearchLag  = time.Second
	// HubSpotMaxBatch is HubSpot's limit of inputs per batch request.
	HubSpotMaxBatch = 100
	// HubSpotMaxSearchLimit is the largest search page.
	HubSpotMaxSearchLimit = 200
	// hubSpotSearchPerSecond is the search endpoint's own limit ("five
	// requests per second per account", search-the-crm page).
	hubSpotSearchPerSecond = 5
	hubSpotInterval        = 10 * time.Second
	hubSpotPortalID        = 891936587
)

// DefaultHubSpotProperties are the custom properties a fresh fake portal
// has beyond HubSpot's own (email, firstname, lastname, phone) and the id
// property; "name:type" gives a type other than string.
var DefaultHubSpotProperties = []string{"company", "city", "country", "created_at:datetime"}

// HubSpotConfig configures the HubSpot API; its zero value is usable.
type HubSpotConfig struct {
	// IDProperty is a contact property with hasUniqueValue true that the
	// fake portal has from the start; "" means DefaultHubSpotIDProperty.
	IDProperty string
	// Properties are extra custom properties ("name" or "name:type", type
	// one of string, number, date, datetime); nil means
	// DefaultHubSpotProperties.
	Properties []string
	// Daily is the daily request allocation; 0 is unlimited (and then the
	// X-HubSpot-RateLimit-Daily headers are not sent). It never resets but
	// on Reset.
	Daily int
	// Window is the number of requests allowed in any rolling 10 seconds;
	// 0 is unlimited (and then the burst headers are not sent).
	Window int
	// SearchLag is how long a written contact stays invisible to search;
	// 0 means DefaultHubSpotSearchLag, negative means none.
	SearchLag time.Duration
}

// hubspot is the state of the HubSpot API.
type hubspot struct {
	idProp    string
	props     []hsProperty // in definition order
	byName    map[string]*hsProperty
	daily     int64
	dailyUsed atomic.Int64
	window    rollingWindow
	search    bucket
	lag       time.Duration
	store     *hsStore
}

var hsPropertyTypes = map[string]string{"string": "text", "number": "number", "date": "date", "datetime": "date"}

func newHubSpot(cfg HubSpotConfig, now time.Time) (*hubspot, error) {
	h := &hubspot{idProp: cfg.IDProperty, daily: int64(cfg.Daily), lag: cfg.SearchLag, byName: map[string]*hsProperty{}}
	if h.idProp == "" {
		h.idProp = DefaultHubSpotIDProperty
	}
	if cfg.Daily < 0 || cfg.Window < 0 {
		return nil, errors.New("hubspot daily and window must not be negative")
	}
	switch {
	case h.lag == 0:
		h.lag = DefaultHubSpotSearchLag
	case h.lag < 0:
		h.lag = 0
	}
	h.window.configure(cfg.Window, hubSpotInterval)
	h.search.configure(hubSpotSearchPerSecond, hubSpotSearchPerSecond, true)
	extra := cfg.Properties
	if extra == nil {
		extra = DefaultHubSpotProperties
	}
	stamp := formatHSTime(now)
	add := func(name, typ, label string, unique, hubspotDefined, readOnly bool) error {
		if _, dup := h.byName[name]; dup {
			return nil
		}
		ft, ok := hsPropertyTypes[typ]
		if !ok {
			return fmt.Errorf("hubspot property %s: type %q, want string, number, date or datetime", name, typ)
		}
		if name == "phone" {
			ft = "phonenumber"
		}
		h.props = append(h.props, hsProperty{
			Name: name, Label: label, Type: typ, FieldType: ft, GroupName: "contactinformation",
			Options: []struct{}{}, DisplayOrder: -1, HasUniqueValue: unique, HubspotDefined: hubspotDefined,
			ModificationMetadata: hsModificationMetadata{Archivable: !hubspotDefined, ReadOnlyDefinition: hubspotDefined, ReadOnlyValue: readOnly},
			FormField:            !readOnly, CreatedAt: stamp, UpdatedAt: stamp,
		})
		return nil
	}
	for _, p := range []struct{ name, typ, label string }{
		{"email", "string", "Email"}, {"firstname", "string", "First Name"},
		{"lastname", "string", "Last Name"}, {"phone", "string", "Phone Number"},
	} {
		add(p.name, p.typ, p.label, false, true, false)
	}
	add("hs_object_id", "number", "Record ID", false, true, true)
	add("createdate", "datetime", "Create Date", false, true, true)
	add("lastmodifieddate", "datetime", "Last Modified Date", false, true, true)
	if _, taken := h.find(h.idProp); taken {
		return nil, fmt.Errorf("hubspot id property %s is one of HubSpot's own properties; pick a custom name", h.idProp)
	}
	add(h.idProp, "string", h.idProp, true, false, false)
	for _, spec := range extra {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		name, typ, ok := strings.Cut(spec, ":")
		if !ok {
			typ = "string"
		}
		if !validPropertyName(name) {
			return nil, fmt.Errorf("hubspot property %q: want lower-case letters, digits and _", name)
		}
		if err := add(name, typ, name, false, false, false); err != nil {
			return nil, err
		}
	}
	for i := range h.props {
		h.byName[h.props[i].Name] = &h.props[i]
	}
	h.store = newHSStore(h.idProp)
	return h, nil
}

func (h *hubspot) find(name string) (*hsProperty, bool) {
	for i := range h.props {
		if h.props[i].Name == name {
			return &h.props[i], true
		}
	}
	return nil, false
}

func validPropertyName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// unique reports whether name may serve as an idProperty.
func (h *hubspot) unique(name string) bool {
	if name == "email" || name == "hs_object_id" {
		return true
	}
	p := h.byName[name]
	return p != nil && p.HasUniqueValue
}

// reset forgets contacts and restores every allocation.
func (h *hubspot) reset() {
	h.store.reset()
	h.dailyUsed.Store(0)
	h.window.reset()
	h.search.refill()
}

// rollingWindow allows max requests in any interval: HubSpot's
// TEN_SECONDLY_ROLLING policy, exactly, where a token bucket would let
// twice the limit through in the first window.
type rollingWindow struct {
	mu       sync.Mutex
	max      int
	interval time.Duration
	times    []time.Time // a ring of the accepted requests' times
	head, n  int
}

func (w *rollingWindow) configure(max int, interval time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.max, w.interval, w.times, w.head, w.n = max, interval, make([]time.Time, max), 0, 0
}

func (w *rollingWindow) reset() {
	w.mu.Lock()
	w.head, w.n = 0, 0
	w.mu.Unlock()
}

// take counts a request at now; it reports whether the window had room
// and how many requests remain in it.
func (w *rollingWindow) take(now time.Time) (ok bool, remaining int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.max == 0 {
		return true, 0
	}
	for w.n > 0 && now.Sub(w.times[w.head]) >= w.interval {
		w.head = (w.head + 1) % w.max
		w.n--
	}
	if w.n >= w.max {
		return false, 0
	}
	w.times[(w.head+w.n)%w.max] = now
	w.n++
	return true, w.max - w.n
}

// hsEndpoint is what a /crm/v3 request asks for.
type hsEndpoint int

const (
	hsNone hsEndpoint = iota
	hsCreate
	hsUpsert
	hsUpdate
	hsRead
	hsSearch
	hsGet
	hsProps
	hsProp
)

func (e hsEndpoint) write() bool { return e == hsCreate || e == hsUpsert || e == hsUpdate }

func hsRoute(r *http.Request) (e hsEndpoint, arg, allow string) {
	p := r.URL.Path
	post := func(e hsEndpoint) (hsEndpoint, string, string) {
		if r.Method == http.MethodPost {
			return e, "", ""
		}
		return hsNone, "", "POST"
	}
	get := func(e hsEndpoint, arg string) (hsEndpoint, string, string) {
		if r.Method == http.MethodGet {
			return e, arg, ""
		}
		return hsNone, "", "GET"
	}
	switch {
	case p == HubSpotPathContacts+"/batch/create":
		return post(hsCreate)
	case p == HubSpotPathContacts+"/batch/upsert":
		return post(hsUpsert)
	case p == HubSpotPathContacts+"/batch/update":
		return post(hsUpdate)
	case p == HubSpotPathContacts+"/batch/read":
		return post(hsRead)
	case p == HubSpotPathContacts+"/search":
		return post(hsSearch)
	case p == HubSpotPathProperties:
		return get(hsProps, "")
	case strings.HasPrefix(p, HubSpotPathProperties+"/") && !strings.Contains(p[len(HubSpotPathProperties)+1:], "/"):
		return get(hsProp, p[len(HubSpotPathProperties)+1:])
	case strings.HasPrefix(p, HubSpotPathContacts+"/") && !strings.Contains(p[len(HubSpotPathContacts)+1:], "/") &&
		p != HubSpotPathContacts+"/batch":
		return get(hsGet, p[len(HubSpotPathContacts)+1:])
	}
	return hsNone, "", ""
}

var hsContentType = []string{"application/json;charset=utf-8"}

// correlationID is a random UUID, as HubSpot sends in
// X-HubSpot-Correlation-Id and every error body.
func correlationID() string {
	a, b := rand.Uint64(), rand.Uint64()
	a = a&^0xf000 | 0x4000     // version 4
	b = b&^(0xc<<60) | 0x8<<60 // RFC 4122 variant
	return fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", a>>32, a>>16&0xffff, a&0xffff, b>>48, b&0xffffffffffff)
}

// hsCall is a call answered in HubSpot's shapes.
type hsCall struct {
	*call
	cid string
}

func (c *hsCall) error(status int, category, msg string, ctx map[string][]string, details ...hsErrorDetail) {
	c.reply(status, marshal(hsError{Status: "error", Message: msg, CorrelationID: c.cid, Errors: details, Context: ctx, Category: category}))
}

func (c *hsCall) validation(msg string) { c.error(http.StatusBadRequest, "VALIDATION_ERROR", msg, nil) }

// hsFaultCategories name the categories of the fake's fault answers.
var hsFaultCategories = map[int]string{
	http.StatusInternalServerError: "INTERNAL_ERROR",
	http.StatusBadGateway:          "BAD_GATEWAY",
	http.StatusServiceUnavailable:  "SERVICE_UNAVAILABLE",
	http.StatusGatewayTimeout:      "GATEWAY_TIMEOUT",
}

func (s *Server) serveHubSpot(w http.ResponseWriter, r *http.Request) {
	s.audit.requests.Add(1)
	h := s.hs
	c := &hsCall{call: &call{s: s, w: w, r: r, f: s.faults.Load(), ctype: hsContentType}, cid: correlationID()}
	c.errBody = func(status int, _, msg string) []byte {
		return marshal(hsError{Status: "error", Message: msg, CorrelationID: c.cid, Category: hsFaultCategories[status]})
	}
	w.Header().Set("X-HubSpot-Correlation-Id", c.cid)
	e, arg, allow := hsRoute(r)
	switch {
	case e == hsNone && allow != "":
		w.Header().Set("Allow", allow)
		c.error(http.StatusMethodNotAllowed, "VALIDATION_ERROR", "HTTP "+r.Method+" is not supported by this endpoint; use "+allow, nil)
		return
	case e == hsNone:
		// HubSpot answers unknown paths with an empty 404.
		c.reply(http.StatusNotFound, nil)
		return
	}
	var d decision
	if e.write() {
		d = decide(s.seed, s.postSeq.Add(1), c.f)
		c.delay = d.delay
	} else {
		c.delay = jitter(c.f)
	}
	if !s.authorized(r) {
		w.Header().Set("X-Hubspot-Auth-Failure", "401 Unauthorized")
		c.error(http.StatusUnauthorized, "INVALID_AUTHENTICATION",
			"Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview", nil)
		return
	}
	if !s.hubSpotAllow(c, e) {
		return
	}
	if c.f.Down {
		s.audit.failed.Add(1)
		c.fail(http.StatusServiceUnavailable, "", "The service is temporarily unavailable; nothing was written. Retry later.")
		return
	}
	if d.fail {
		s.audit.failed.Add(1)
		c.fail(http.StatusServiceUnavailable, "", "The service is temporarily unavailable; nothing was written. Retry later.")
		return
	}
	var body []byte
	if r.Method == http.MethodPost {
		var err error
		if body, err = readBody(w, r); err != nil {
			c.error(http.StatusRequestEntityTooLarge, "VALIDATION_ERROR", "the request body is too large", nil)
			return
		}
	}
	var status int
	var resp []byte
	switch e {
	case hsProps:
		status, resp = http.StatusOK, marshal(hsPropertyList{Results: h.props})
	case hsProp:
		p, ok := h.byName[arg]
		if !ok {
			c.error(http.StatusNotFound, "OBJECT_NOT_FOUND", "Unable to find property "+arg+" for object type 0-1", nil)
			return
		}
		status, resp = http.StatusOK, marshal(p)
	case hsGet:
		s.hubSpotGet(c, arg)
		return
	case hsRead:
		s.hubSpotRead(c, body)
		return
	case hsSearch:
		s.hubSpotSearch(c, body)
		return
	default:
		var ok bool
		if status, resp, ok = s.hubSpotWrite(c, e, body); !ok {
			return
		}
	}
	if d.ambiguous != modeNone && status/100 == 2 {
		s.ambiguous(c.call, d.ambiguous)
		return
	}
	c.reply(status, resp)
}

// hubSpotAllow spends the request's daily and 10-second allocations and
// sets the rate-limit headers; it answers 429 and returns false when one
// is exhausted. Search is exempt from the 10-second window (the spec's
// x-hubspot-rate-limit-exemptions) and has its own 5 a second, and its
// answers carry only the daily headers.
func (s *Server) hubSpotAllow(c *hsCall, e hsEndpoint) bool {
	h, hd, now := s.hs, c.w.Header(), s.now()
	limited := func(policy, msg string) bool {
		s.audit.rateLimited.Add(1)
		c.reply(http.StatusTooManyRequests, marshal(hsRateLimitError{Status: "error", Message: msg, ErrorType: "RATE_LIMIT", CorrelationID: c.cid, PolicyName: policy}))
		return false
	}
	if h.daily > 0 {
		used := h.dailyUsed.Add(1)
		hd.Set("X-HubSpot-RateLimit-Daily", strconv.FormatInt(h.daily, 10))
		hd.Set("X-HubSpot-RateLimit-Daily-Remaining", strconv.FormatInt(max(h.daily-used, 0), 10))
		if used > h.daily {
			return limited("DAILY", "You have reached your daily limit.")
		}
	}
	if e == hsSearch {
		if ok, _ := h.search.take(now); !ok {
			return limited("SECONDLY", "You have reached your secondly limit.")
		}
		return true
	}
	if h.window.max > 0 {
		ok, left := h.window.take(now)
		hd.Set("X-HubSpot-RateLimit-Interval-Milliseconds", strconv.FormatInt(hubSpotInterval.Milliseconds(), 10))
		hd.Set("X-HubSpot-RateLimit-Max", strconv.Itoa(h.window.max))
		hd.Set("X-HubSpot-RateLimit-Remaining", strconv.Itoa(left))
		if !ok {
			return limited("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")
		}
	}
	// The generic -rate/-burst knobs apply too, answered as the window.
	if c.f.Rate > 0 {
		if ok, _ := s.limiter.take(now); !ok {
			return limited("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")
		}
	}
	return true
}

// decodeHS decodes a request body, answering HubSpot's 400 when it is not
// JSON of the right shape.
func decodeHS(c *hsCall, body []byte, v any) bool {
	err := json.Unmarshal(body, v)
	if err == nil {
		return true
	}
	off := int64(len(body))
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	line, col := 1, 1
	for _, b := range body[:min(int(off), len(body))] {
		if b == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	c.validation(fmt.Sprintf("Invalid input JSON on line %d, column %d: %s", line, col, err.Error()))
	return false
}

func formatHSTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// problem is one invalid property value of an input.
type problem struct{ code, name, msg string }

// checkProperties validates an input's properties against the portal's
// definitions and normalises date values, as HubSpot does before writing.
func (h *hubspot) checkProperties(props map[string]string) (map[string]string, []problem) {
	var out map[string]string
	var probs []problem
	names := make([]string, 0, len(props))
	for k := range props {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		v := props[name]
		p, ok := h.byName[name]
		switch {
		case !ok:
			probs = append(probs, problem{"PROPERTY_DOESNT_EXIST", name, fmt.Sprintf("Property %q does not exist", name)})
			continue
		case p.ModificationMetadata.ReadOnlyValue:
			// HubSpot keeps its own hs_object_id and dates.
			continue
		}
		if v != "" {
			var pr *problem
			v, pr = checkValue(p, v)
			if pr != nil {
				probs = append(probs, *pr)
				continue
			}
		}
		if out == nil {
			out = make(map[string]string, len(props))
		}
		out[name] = v
	}
	return out, probs
}

func checkValue(p *hsProperty, v string) (string, *problem) {
	switch {
	case p.Name == "email":
		if !validEmail(v) {
			return v, &problem{"INVALID_EMAIL", p.Name, "Email address " + v + " is invalid"}
		}
	case p.Type == "number":
		if _, err := strconv.ParseFloat(v, 64); err != nil || strings.Contains(v, ",") {
			return v, &problem{"INVALID_LONG", p.Name, v + " was not a valid long."}
		}
	case p.Type == "date" || p.Type == "datetime":
		t, ok := parseHSTime(v)
		if !ok {
			return v, &problem{"INVALID_LONG", p.Name, v + " was not a valid long."}
		}
		if p.Type == "date" {
			if t.Hour() != 0 || t.Minute() != 0 || t.Second() != 0 || t.Nanosecond() != 0 {
				return v, &problem{"INVALID_DATE", p.Name, fmt.Sprintf("%d is at %s UTC, not midnight!", t.UnixMilli(), t.Format("15:04:05.000"))}
			}
			return t.Format("2006-01-02"), nil
		}
		return formatHSTime(t), nil
	}
	return v, nil
}

// parseHSTime reads epoch milliseconds or ISO 8601 (a date, or a date and
// time with a zone).
func parseHSTime(v string) (time.Time, bool) {
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.UnixMilli(ms).UTC(), true
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

// validEmail is HubSpot's shape of an address: local@domain.tld, no
// spaces. The shared contact rules are stricter than HubSpot's own.
func validEmail(v string) bool {
	at := strings.LastIndexByte(v, '@')
	if at <= 0 || strings.ContainsAny(v, " \t\r\n,;<>") {
		return false
	}
	dom := v[at+1:]
	dot := strings.LastIndexByte(dom, '.')
	return dot > 0 && dot < len(dom)-2 && !strings.Contains(dom, "..")
}

// propertyError is HubSpot's 400 for invalid property values: a message
// embedding the problems as a JSON array, repeated in errors[].
func propertyError(probs []problem) (string, []hsErrorDetail) {
	items := make([]hsPropertyProblem, len(probs))
	details := make([]hsErrorDetail, len(probs))
	for i, p := range probs {
		items[i] = hsPropertyProblem{Message: p.msg, Error: p.code, Name: p.name, LocalizedErrorMessage: p.msg, PortalID: hubSpotPortalID}
		details[i] = hsErrorDetail{Message: p.msg, Code: p.code, Context: map[string][]string{"propertyName": {p.name}}}
	}
	b, _ := json.Marshal(items)
	return "Property values were not valid: " + string(b), details
}

// hubSpotWrite answers batch/create, batch/upsert and batch/update. An
// input whose properties are invalid fails the whole batch (400), unless
// every input carries an objectWriteTraceId: then it is one errors[] item
// of a 207. A conflict on a unique value fails the whole batch with 409.
func (s *Server) hubSpotWrite(c *hsCall, e hsEndpoint, body []byte) (int, []byte, bool) {
	h := s.hs
	started := formatHSTime(s.now())
	var req hsBatchRequest
	if !decodeHS(c, body, &req) {
		return 0, nil, false
	}
	if len(req.Inputs) > HubSpotMaxBatch {
		c.validation(hsTooManyInputs)
		return 0, nil, false
	}
	traced := len(req.Inputs) > 0
	for _, in := range req.Inputs {
		traced = traced && in.ObjectWriteTraceID != ""
	}
	var errs []hsStandardError
	ops := make([]hsOp, 0, len(req.Inputs))
	seen := map[string]bool{}
	for i, in := range req.Inputs {
		props, probs := h.checkProperties(in.Properties)
		if len(probs) > 0 {
			msg, details := propertyError(probs)
			if !traced {
				c.error(http.StatusBadRequest, "VALIDATION_ERROR", msg, nil, details...)
				return 0, nil, false
			}
			errs = append(errs, hsStandardError{Status: "error", Category: "VALIDATION_ERROR", Message: msg,
				Context: map[string][]string{"objectWriteTraceId": {in.ObjectWriteTraceID}}})
			continue
		}
		op := hsOp{input: i, props: props, by: in.IDProperty, key: in.ID}
		switch e {
		case hsCreate:
			op.by, op.key = "", ""
		case hsUpsert, hsUpdate:
			if op.by == "" {
				op.by = "hs_object_id"
			}
			if !h.unique(op.by) {
				c.validation("Unable to perform update/upsert by non-unique 0-1 property " + op.by)
				return 0, nil, false
			}
			if seen[op.key] {
				c.error(http.StatusBadRequest, "VALIDATION_ERROR", "Duplicate IDs found in batch input: ["+op.key+"]. IDs must be unique",
					map[string][]string{"ids": {op.key}})
				return 0, nil, false
			}
			seen[op.key] = true
			op.upsert = e == hsUpsert
		}
		ops = append(ops, op)
	}
	res := h.store.apply(ops, s.now())
	s.audit.updates.Add(int64(res.updated))
	if res.conflict != "" {
		c.error(http.StatusConflict, "CONFLICT", "Contact already exists. Existing ID: "+res.conflict, nil)
		return 0, nil, false
	}
	if len(res.missing) > 0 {
		errs = append(errs, notFound(res.missing))
	}
	out := hsBatchResponse{Status: "COMPLETE", Results: res.objects, StartedAt: started, CompletedAt: formatHSTime(s.now())}
	if out.Results == nil {
		out.Results = []hsObject{}
	}
	status := http.StatusOK
	if e == hsCreate {
		status = http.StatusCreated
	}
	if len(errs) > 0 {
		status, out.NumErrors, out.Errors = http.StatusMultiStatus, len(errs), errs
	}
	return status, marshal(out), true
}

// hsTooManyInputs is HubSpot's answer to a batch of more than 100 inputs.
const hsTooManyInputs = "The maximum number of inputs supported in a batch is 100. Please reduce the number of items and try again"

// notFound is the one 207 item that names every id a batch did not find.
func notFound(ids []string) hsStandardError {
	return hsStandardError{Status: "error", Category: "OBJECT_NOT_FOUND",
		Message: "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
		Context: map[string][]string{"ids": ids}}
}

// defaultHSProperties are what reads and search return when no properties
// are asked for (search-the-crm page).
var defaultHSProperties = []string{"createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"}

// view is a contact as a client sees it, with the properties asked for:
// nil means all it has (a write's answer). Asked-for properties that the
// portal has but the contact lacks are null; others are ignored.
func (h *hubspot) view(c hsContact, asked []string) hsObject {
	if asked == nil {
		return viewAll(c)
	}
	props := map[string]*string{}
	str := func(v string) *string { return &v }
	for _, name := range asked {
		if _, ok := h.byName[name]; !ok {
			continue
		}
		if v, ok := c.props[name]; ok {
			props[name] = str(v)
		} else {
			props[name] = nil
		}
	}
	id, created, updated := strconv.FormatUint(c.id, 10), formatHSTime(c.created), formatHSTime(c.updated)
	props["hs_object_id"], props["createdate"], props["lastmodifieddate"] = &id, &created, &updated
	return hsObject{ID: id, Properties: props, CreatedAt: created, UpdatedAt: updated}
}

// hubSpotGet answers GET /crm/v3/objects/contacts/{id}[?idProperty=].
func (s *Server) hubSpotGet(c *hsCall, id string) {
	h := s.hs
	q := c.r.URL.Query()
	by := q.Get("idProperty")
	if by == "" {
		by = "hs_object_id"
		if _, err := strconv.ParseUint(id, 10, 64); err != nil {
			c.error(http.StatusNotFound, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric.", map[string][]string{"id": {id}})
			return
		}
	}
	if !h.unique(by) {
		c.validation("Unable to perform get by non-unique 0-1 property " + by)
		return
	}
	ct, ok := h.store.get(by, id)
	if !ok {
		c.error(http.StatusNotFound, "OBJECT_NOT_FOUND", "resource not found", nil)
		return
	}
	c.reply(http.StatusOK, marshal(h.view(ct, askedProperties(splitList(q.Get("properties"))))))
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func askedProperties(asked []string) []string {
	if len(asked) == 0 {
		return defaultHSProperties
	}
	return asked
}

// hubSpotRead answers POST batch/read: 200, or 207 with one
// OBJECT_NOT_FOUND item naming every id not found.
func (s *Server) hubSpotRead(c *hsCall, body []byte) {
	h := s.hs
	started := formatHSTime(s.now())
	var req hsBatchReadRequest
	if !decodeHS(c, body, &req) {
		return
	}
	if len(req.Inputs) > HubSpotMaxBatch {
		c.validation(hsTooManyInputs)
		return
	}
	by := req.IDProperty
	if by == "" {
		by = "hs_object_id"
	}
	if !h.unique(by) {
		c.validation("Unable to perform read by non-unique 0-1 property " + by)
		return
	}
	asked := askedProperties(req.Properties)
	out := hsBatchResponse{Status: "COMPLETE", Results: []hsObject{}, StartedAt: started}
	var missing []string
	for _, in := range req.Inputs {
		if ct, ok := h.store.get(by, in.ID); ok {
			out.Results = append(out.Results, h.view(ct, asked))
		} else {
			missing = append(missing, in.ID)
		}
	}
	status := http.StatusOK
	if len(missing) > 0 {
		status, out.NumErrors = http.StatusMultiStatus, 1
		out.Errors = []hsStandardError{notFound(missing)}
	}
	out.CompletedAt = formatHSTime(s.now())
	c.reply(status, marshal(out))
}

var hsOperators = []string{"EQ", "NEQ", "IN", "NOT_IN", "HAS_PROPERTY", "NOT_HAS_PROPERTY"}

// hubSpotSearch answers POST search. Contacts written less than the
// search lag ago are not found: HubSpot's index lags behind writes.
func (s *Server) hubSpotSearch(c *hsCall, body []byte) {
	h := s.hs
	var req hsSearchRequest
	if !decodeHS(c, body, &req) {
		return
	}
	limit := 10
	if req.Limit != nil {
		limit = *req.Limit
	}
	if limit < 0 || limit > HubSpotMaxSearchLimit {
		c.validation(fmt.Sprintf("limit %d is out of range: it must be between 0 and %d", limit, HubSpotMaxSearchLimit))
		return
	}
	offset := 0
	if req.After != "" {
		n, err := strconv.Atoi(req.After)
		if err != nil || n < 0 {
			c.validation("after must be a non-negative integer, got " + strconv.Quote(req.After))
			return
		}
		offset = n
	}
	for _, g := range req.FilterGroups {
		for _, f := range g.Filters {
			if !slices.Contains(hsOperators, f.Operator) {
				c.validation("Unsupported filter operator " + strconv.Quote(f.Operator) + "; the fake supports " + strings.Join(hsOperators, ", "))
				return
			}
		}
	}
	match := func(ct *hsContact) bool {
		if len(req.FilterGroups) == 0 {
			return true
		}
		for _, g := range req.FilterGroups {
			ok := true
			for _, f := range g.Filters {
				if !filterMatch(f, ct) {
					ok = false
					break
				}
			}
			if ok {
				return true
			}
		}
		return false
	}
	found := h.store.search(s.now().Add(-h.lag), match)
	out := hsSearchResponse{Total: len(found), Results: []hsObject{}}
	asked := askedProperties(req.Properties)
	for i := offset; i < len(found) && i < offset+limit; i++ {
		out.Results = append(out.Results, h.view(found[i], asked))
	}
	if offset+limit < len(found) {
		out.Paging = &hsPaging{}
		out.Paging.Next.After = strconv.Itoa(offset + limit)
	}
	c.reply(http.StatusOK, marshal(out))
}

// filterMatch compares values without regard to case, as HubSpot does for
// strings.
func filterMatch(f hsFilter, ct *hsContact) bool {
	v, has := ct.prop(f.PropertyName)
	want := ""
	if f.Value != nil {
		want = *f.Value
	}
	in := func() bool {
		return slices.ContainsFunc(f.Values, func(x string) bool { return strings.EqualFold(x, v) })
	}
	switch f.Operator {
	case "EQ":
		return has && strings.EqualFold(v, want)
	case "NEQ":
		return !has || !strings.EqualFold(v, want)
	case "IN":
		return has && in()
	case "NOT_IN":
		return !has || !in()
	case "HAS_PROPERTY":
		return has
	case "NOT_HAS_PROPERTY":
		return !has
	}
	return false
}

// HubSpot's contact values that Contacts returns as contact fields.
var hsContactFields = []string{"email", "firstname", "lastname", "phone"}

// contacts returns the contacts as the generic API's type: the id
// property as ExternalID, the other custom properties as Attributes.
func (h *hubspot) contacts() []crmapi.StoredContact {
	cs := h.store.all()
	out := make([]crmapi.StoredContact, len(cs))
	for i, c := range cs {
		sc := crmapi.StoredContact{ID: strconv.FormatUint(c.id, 10), CreatedAt: formatHSTime(c.created)}
		sc.Contact = contact.Contact{ExternalID: c.props[h.idProp], Email: c.props["email"], FirstName: c.props["firstname"],
			LastName: c.props["lastname"], Phone: c.props["phone"]}
		var attrs []contact.Attr
		for k, v := range c.props {
			if k != h.idProp && !slices.Contains(hsContactFields, k) {
				attrs = append(attrs, contact.Attr{Name: k, Value: v})
			}
		}
		sc.Attributes = contact.SortAttrs(attrs)
		out[i] = sc
	}
	return out
}
