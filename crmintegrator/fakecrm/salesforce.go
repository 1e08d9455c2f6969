package fakecrm

// salesforce.go serves a slice of Salesforce's REST API (Config.API
// "salesforce"): sObject Collections upsert, create and retrieve, one
// record by id or external id, SOQL queries of one simple shape, describe
// and limits, under /services/data/vXX.X. This file routes, authenticates,
// counts the daily allocation and applies the fault knobs; the store is in
// salesforce_store.go, the handlers in salesforce_handlers.go and the SOQL
// subset in salesforce_soql.go. docs/crm/salesforce-fake.md says what is
// served, which Salesforce page each answer follows and what is simplified.
//
// The fault knobs, the per-k-th-write decisions and the audit are the
// generic API's (faults.go, audit.go), applied as for HubSpot.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// APISalesforce is Config.API for Salesforce's REST API.
const APISalesforce = "salesforce"

// SalesforcePathPrefix is where every Salesforce resource lives, followed by
// a version such as v60.0.
const SalesforcePathPrefix = "/services/data/"

// Salesforce defaults.
const (
	DefaultSalesforceObject  = "Contact"
	DefaultSalesforceIDField = "External_Id__c"
	// SalesforceMaxRecords is sObject Collections' limit of records per
	// request.
	SalesforceMaxRecords = 200
	// DefaultSalesforceQueryBatch is the most records a query answer holds
	// before it pages with nextRecordsUrl (the Query resource's 2,000).
	DefaultSalesforceQueryBatch = 2000
	// SalesforceMaxSOQL is the longest SOQL statement accepted, in
	// characters (the SOQL and SOSL Limits page's 100,000).
	SalesforceMaxSOQL = 100_000
	// SalesforceMaxRequestHead is the most bytes of URI plus headers a
	// request may have: a longer URI is 414, longer headers 431 (Salesforce
	// Help 000386264, "Maximum number of rows returned by SOQL queries over
	// the REST API"). Long IN lists in a query hit it long before the SOQL
	// length limit.
	SalesforceMaxRequestHead = 16384
	// SalesforceUnlimitedDaily is the allocation Sforce-Limit-Info and
	// /limits report when SalesforceConfig.Daily is 0, which enforces none.
	SalesforceUnlimitedDaily = 5_000_000
	// salesforceVersion is the version the fake writes into the URLs it
	// makes up (record urls, nextRecordsUrl) when the request named none.
	salesforceVersion = "v60.0"
	// salesforceCursors bounds the query locators kept; the oldest goes
	// first, as an expired locator would.
	salesforceCursors = 1000
)

// DefaultSalesforceFields are the custom fields a fresh fake org has on the
// object beyond Salesforce's own and the id field. They are named as the
// integrator's contact attributes, without the __c a real org would add.
var DefaultSalesforceFields = []string{"company", "city", "country", "created_at"}

// SalesforceConfig configures the Salesforce API; its zero value is usable.
type SalesforceConfig struct {
	// Object is the sObject served; "" means DefaultSalesforceObject. Any
	// name gets Contact's standard fields.
	Object string
	// IDField is a custom text field, External ID and Unique (case
	// insensitive) unless IDFieldPlain or IDFieldNotUnique says otherwise;
	// "" means DefaultSalesforceIDField.
	IDField string
	// Fields are the extra custom text fields; nil means
	// DefaultSalesforceFields. Names are compared without regard to case,
	// as Salesforce's API names are.
	Fields []string
	// Daily is the daily API request allocation, enforced with 403
	// REQUEST_LIMIT_EXCEEDED; 0 enforces none and reports
	// SalesforceUnlimitedDaily. The usage never resets but on Reset.
	Daily int
	// QueryBatch is the query page size; 0 means DefaultSalesforceQueryBatch.
	QueryBatch int
	// IDFieldPlain makes IDField an ordinary text field: neither External
	// ID nor Unique, so upserts by it are refused and describe says so.
	IDFieldPlain bool
	// IDFieldNotUnique keeps IDField an External ID but drops Unique, so
	// creates may give two records one value, and upserts of that value
	// then fail with DUPLICATE_EXTERNAL_ID.
	IDFieldNotUnique bool
}

// salesforce is the state of the Salesforce API.
type salesforce struct {
	object    string
	prefix    string // the object's three-character key prefix
	idField   string
	external  bool // idField is an External ID
	unique    bool // idField is Unique
	fields    []sfField
	byName    map[string]*sfField // by lower-case name
	daily     atomic.Int64        // 0: unlimited; SetSalesforceDaily changes it
	dailyUsed atomic.Int64
	batch     int
	store     *sfStore
	cursors   *sfCursors
}

// sfField is one field of the object, as describe reports it.
type sfField struct {
	name     string
	label    string
	typ      string // id, string, email, phone, datetime
	length   int
	custom   bool
	readOnly bool
	required bool // on create: nillable false
	external bool
	unique   bool
}

var sfFieldName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,39}$`)

// sfKeyPrefixes are the key prefixes of the standard objects a fake may
// serve; any other object gets a custom object's.
var sfKeyPrefixes = map[string]string{"contact": "003", "lead": "00Q", "account": "001"}

func newSalesforce(cfg SalesforceConfig) (*salesforce, error) {
	sf := &salesforce{object: cfg.Object, idField: cfg.IDField, batch: cfg.QueryBatch, byName: map[string]*sfField{}}
	sf.daily.Store(int64(cfg.Daily))
	if sf.object == "" {
		sf.object = DefaultSalesforceObject
	}
	if sf.idField == "" {
		sf.idField = DefaultSalesforceIDField
	}
	if cfg.Daily < 0 || cfg.QueryBatch < 0 {
		return nil, errors.New("salesforce daily and query batch must not be negative")
	}
	if sf.batch == 0 {
		sf.batch = DefaultSalesforceQueryBatch
	}
	if !sfFieldName.MatchString(sf.object) {
		return nil, fmt.Errorf("salesforce object %q: want an API name like Contact", sf.object)
	}
	sf.prefix = sfKeyPrefixes[strings.ToLower(sf.object)]
	if sf.prefix == "" {
		sf.prefix = "a01"
	}
	sf.external = !cfg.IDFieldPlain
	sf.unique = !cfg.IDFieldPlain && !cfg.IDFieldNotUnique
	add := func(f sfField) error {
		if !sfFieldName.MatchString(f.name) {
			return fmt.Errorf("salesforce field %q: want letters, digits and _, starting with a letter, at most 40", f.name)
		}
		if _, dup := sf.byName[strings.ToLower(f.name)]; dup {
			return fmt.Errorf("salesforce field %q is defined twice (names are compared without regard to case)", f.name)
		}
		if f.length == 0 && f.typ != "datetime" && f.typ != "id" {
			f.length = 255
		}
		sf.fields = append(sf.fields, f)
		sf.byName[strings.ToLower(f.name)] = nil // pointed at the slice once it is complete
		return nil
	}
	standard := []sfField{
		{name: "Id", label: "Contact ID", typ: "id", length: 18, readOnly: true},
		{name: "FirstName", label: "First Name", typ: "string", length: 40},
		{name: "LastName", label: "Last Name", typ: "string", length: 80, required: true},
		{name: "Name", label: "Full Name", typ: "string", length: 121, readOnly: true},
		{name: "Email", label: "Email", typ: "email", length: 80},
		{name: "Phone", label: "Business Phone", typ: "phone", length: 40},
		{name: "CreatedDate", label: "Created Date", typ: "datetime", readOnly: true},
		{name: "LastModifiedDate", label: "Last Modified Date", typ: "datetime", readOnly: true},
	}
	for _, f := range standard {
		if err := add(f); err != nil {
			return nil, err
		}
	}
	if _, taken := sf.byName[strings.ToLower(sf.idField)]; taken {
		return nil, fmt.Errorf("salesforce id field %s is one of Salesforce's own fields; pick a custom name", sf.idField)
	}
	if err := add(sfField{name: sf.idField, label: sf.idField, typ: "string", custom: true, external: sf.external, unique: sf.unique}); err != nil {
		return nil, err
	}
	extra := cfg.Fields
	if extra == nil {
		extra = DefaultSalesforceFields
	}
	for _, name := range extra {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if err := add(sfField{name: name, label: name, typ: "string", custom: true}); err != nil {
			return nil, err
		}
	}
	for i := range sf.fields {
		sf.byName[strings.ToLower(sf.fields[i].name)] = &sf.fields[i]
	}
	sf.store = newSFStore(sf.prefix, sf.idField, sf.unique)
	sf.cursors = newSFCursors(salesforceCursors)
	return sf, nil
}

// field returns the field named name, compared without regard to case.
func (sf *salesforce) field(name string) *sfField { return sf.byName[strings.ToLower(name)] }

// SetSalesforceDaily changes the Salesforce API's daily allocation (0:
// unlimited), as an org's does when it buys more; the usage stays. A test
// lowers the usage's weight with it, as the rolling 24 hours moving on
// would. Without the Salesforce API it does nothing.
func (s *Server) SetSalesforceDaily(n int) {
	if s.sf != nil {
		s.sf.daily.Store(int64(max(0, n)))
	}
}

// reset forgets records and cursors and restores the daily allocation.
func (sf *salesforce) reset() {
	sf.store.reset()
	sf.cursors.reset()
	sf.dailyUsed.Store(0)
}

// max is the allocation Sforce-Limit-Info reports.
func (sf *salesforce) max() int64 {
	if n := sf.daily.Load(); n > 0 {
		return n
	}
	return SalesforceUnlimitedDaily
}

// spend counts one request against the daily allocation; it reports false,
// counting nothing, when the allocation is spent.
func (sf *salesforce) spend() bool {
	for {
		used := sf.dailyUsed.Load()
		if n := sf.daily.Load(); n > 0 && used >= n {
			return false
		}
		if sf.dailyUsed.CompareAndSwap(used, used+1) {
			return true
		}
	}
}

func (sf *salesforce) limitInfo() string {
	return "api-usage=" + strconv.FormatInt(sf.dailyUsed.Load(), 10) + "/" + strconv.FormatInt(sf.max(), 10)
}

// sfEndpoint is what a /services/data request asks for.
type sfEndpoint int

const (
	sfNone sfEndpoint = iota
	sfUpsertMany
	sfCreateMany
	sfRetrieveMany
	sfGet
	sfGetByExternal
	sfUpsertOne
	sfQuery
	sfQueryMore
	sfDescribe
	sfLimits
	sfUpdateMany
)

func (e sfEndpoint) write() bool {
	return e == sfUpsertMany || e == sfCreateMany || e == sfUpsertOne || e == sfUpdateMany
}

// sfRoute is a routed request: the endpoint and the path's parts.
type sfRoute struct {
	e       sfEndpoint
	version string // "v60.0"
	object  string // as the path spells it
	field   string // the external id field of an upsert or get
	arg     string // record id, external id value or query locator
	allow   string // the methods allowed, when the path is known but not the method
}

var sfVersion = regexp.MustCompile(`^v[0-9]{2,3}\.[0-9]$`)

func routeSalesforce(r *http.Request) sfRoute {
	p, ok := strings.CutPrefix(r.URL.Path, SalesforcePathPrefix)
	if !ok {
		return sfRoute{}
	}
	parts := strings.Split(strings.TrimSuffix(p, "/"), "/")
	if !sfVersion.MatchString(parts[0]) {
		return sfRoute{}
	}
	rt := sfRoute{version: parts[0]}
	parts = parts[1:]
	m := r.Method
	if m == http.MethodHead {
		m = http.MethodGet
	}
	for _, s := range parts {
		if s == "" {
			return sfRoute{}
		}
	}
	pick := func(e sfEndpoint, allowed ...string) sfRoute {
		for _, a := range allowed {
			if m == a {
				rt.e = e
				return rt
			}
		}
		rt.allow = strings.Join(allowed, ",")
		return rt
	}
	switch {
	case len(parts) == 1 && parts[0] == "limits":
		return pick(sfLimits, http.MethodGet)
	case len(parts) == 1 && parts[0] == "query":
		return pick(sfQuery, http.MethodGet)
	case len(parts) == 2 && parts[0] == "query":
		rt.arg = parts[1]
		return pick(sfQueryMore, http.MethodGet)
	case len(parts) == 2 && parts[0] == "composite" && parts[1] == "sobjects":
		if m == http.MethodPatch {
			rt.e = sfUpdateMany
			return rt
		}
		rt = pick(sfCreateMany, http.MethodPost)
		if rt.allow != "" {
			rt.allow = "PATCH,POST"
		}
		return rt
	case len(parts) == 3 && parts[0] == "composite" && parts[1] == "sobjects":
		rt.object = parts[2]
		return pick(sfRetrieveMany, http.MethodGet)
	case len(parts) == 4 && parts[0] == "composite" && parts[1] == "sobjects":
		rt.object, rt.field = parts[2], parts[3]
		return pick(sfUpsertMany, http.MethodPatch)
	case len(parts) == 3 && parts[0] == "sobjects" && parts[2] == "describe":
		rt.object = parts[1]
		return pick(sfDescribe, http.MethodGet)
	case len(parts) == 3 && parts[0] == "sobjects":
		rt.object, rt.arg = parts[1], parts[2]
		return pick(sfGet, http.MethodGet)
	case len(parts) == 4 && parts[0] == "sobjects":
		rt.object, rt.field, rt.arg = parts[1], parts[2], parts[3]
		if m == http.MethodPatch {
			rt.e = sfUpsertOne
			return rt
		}
		return pick(sfGetByExternal, http.MethodGet, http.MethodPatch)
	}
	return sfRoute{}
}

var sfContentType = []string{"application/json;charset=UTF-8"}

// sfVersions is the Versions resource's answer: a few recent releases.
var sfVersions = sfMarshal([]struct {
	Label   string `json:"label"`
	URL     string `json:"url"`
	Version string `json:"version"`
}{
	{"Summer '23", "/services/data/v58.0", "58.0"},
	{"Winter '24", "/services/data/v59.0", "59.0"},
	{"Spring '24", "/services/data/v60.0", "60.0"},
	{"Summer '24", "/services/data/v61.0", "61.0"},
	{"Winter '25", "/services/data/v62.0", "62.0"},
})

// sfError is one item of Salesforce's error array.
type sfError struct {
	Message   string   `json:"message"`
	ErrorCode string   `json:"errorCode"`
	Fields    []string `json:"fields,omitempty"`
}

func sfErrorBody(code, msg string, fields ...string) []byte {
	return sfMarshal([]sfError{{Message: msg, ErrorCode: code, Fields: fields}})
}

// sfMarshal is marshal without HTML escaping: Salesforce writes < and &
// as they are.
func sfMarshal(v any) []byte {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	if err := e.Encode(v); err != nil {
		panic("fakecrm: encode response: " + err.Error())
	}
	return b.Bytes()
}

// sfCall is a call answered in Salesforce's shapes.
type sfCall struct {
	*call
	rt sfRoute
}

func (c *sfCall) error(status int, code, msg string, fields ...string) {
	c.reply(status, sfErrorBody(code, msg, fields...))
}

// Error codes of the fake's fault answers.
var sfFaultCodes = map[int]string{
	http.StatusInternalServerError: "UNKNOWN_EXCEPTION",
	http.StatusBadGateway:          "UNKNOWN_EXCEPTION",
	http.StatusServiceUnavailable:  "SERVER_UNAVAILABLE",
	http.StatusGatewayTimeout:      "UNKNOWN_EXCEPTION",
}

const (
	sfNotFound          = "The requested resource does not exist"
	sfUnknownException  = "An unexpected error occurred. Please include this ErrorId if you contact support: 1732495126-104763 (-1218442375)"
	sfServerUnavailable = "The server is temporarily unavailable; nothing was written. Retry later."
	sfTotalRequests     = "TotalRequests Limit exceeded."
	sfConcurrent        = "ConcurrentRequests (Concurrent API Requests) Limit exceeded."
)

func (s *Server) serveSalesforce(w http.ResponseWriter, r *http.Request) {
	s.audit.requests.Add(1)
	sf := s.sf
	c := &sfCall{call: &call{s: s, w: w, r: r, f: s.faults.Load(), ctype: sfContentType}, rt: routeSalesforce(r)}
	c.errBody = func(status int, _, msg string) []byte {
		if status == http.StatusInternalServerError {
			msg = sfUnknownException
		}
		return sfErrorBody(sfFaultCodes[status], msg)
	}
	if n := len(r.RequestURI); n > SalesforceMaxRequestHead {
		c.error(http.StatusRequestURITooLong, "URI_TOO_LONG", "URI Too Long: "+strconv.Itoa(n)+" bytes, at most "+strconv.Itoa(SalesforceMaxRequestHead)+" with the headers")
		return
	} else if n += headerBytes(r); n > SalesforceMaxRequestHead {
		c.error(http.StatusRequestHeaderFieldsTooLarge, "REQUEST_HEADER_FIELDS_TOO_LARGE", "Request Header Fields Too Large: "+strconv.Itoa(n)+" bytes of URI and headers, at most "+strconv.Itoa(SalesforceMaxRequestHead))
		return
	}
	if strings.TrimSuffix(r.URL.Path, "/") == strings.TrimSuffix(SalesforcePathPrefix, "/") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		// The Versions resource needs no session and costs no request.
		c.reply(http.StatusOK, sfVersions)
		return
	}
	if !s.authorized(r) {
		c.error(http.StatusUnauthorized, "INVALID_SESSION_ID", "Session expired or invalid")
		return
	}
	rt := c.rt
	var d decision
	switch {
	case rt.e.write():
		d = decide(s.seed, s.postSeq.Add(1), c.f)
		c.delay = d.delay
	case rt.e != sfNone:
		c.delay = jitter(c.f)
	}
	hd := w.Header()
	if c.f.Down {
		s.audit.failed.Add(1)
		hd.Set("Sforce-Limit-Info", sf.limitInfo())
		c.error(http.StatusServiceUnavailable, "SERVER_UNAVAILABLE", "The server is down for maintenance; nothing was written. Retry later.")
		return
	}
	if c.f.Rate > 0 {
		if ok, _ := s.limiter.take(s.now()); !ok {
			// Salesforce sends no Retry-After with its 403s.
			s.audit.rateLimited.Add(1)
			hd.Set("Sforce-Limit-Info", sf.limitInfo())
			c.error(http.StatusForbidden, "REQUEST_LIMIT_EXCEEDED", sfConcurrent)
			return
		}
	}
	if !sf.spend() {
		s.audit.rateLimited.Add(1)
		hd.Set("Sforce-Limit-Info", sf.limitInfo())
		c.error(http.StatusForbidden, "REQUEST_LIMIT_EXCEEDED", sfTotalRequests)
		return
	}
	// Set after spending, so the answer reports its own request.
	hd.Set("Sforce-Limit-Info", sf.limitInfo())
	switch {
	case rt.e == sfNone && rt.allow != "":
		hd.Set("Allow", rt.allow)
		c.error(http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "HTTP Method '"+r.Method+"' not allowed. Allowed are "+rt.allow)
		return
	case rt.e == sfNone:
		c.error(http.StatusNotFound, "NOT_FOUND", sfNotFound)
		return
	}
	if d.fail {
		s.audit.failed.Add(1)
		c.error(http.StatusServiceUnavailable, "SERVER_UNAVAILABLE", sfServerUnavailable)
		return
	}
	var body []byte
	if r.Method == http.MethodPost || r.Method == http.MethodPatch {
		var err error
		if body, err = readBody(w, r); err != nil {
			c.error(http.StatusRequestEntityTooLarge, "JSON_PARSER_ERROR", "the request body is too large")
			return
		}
	}
	var status int
	var resp []byte
	switch rt.e {
	case sfLimits:
		status, resp = http.StatusOK, s.salesforceLimits()
	case sfDescribe:
		status, resp = s.salesforceDescribe(c)
	case sfQuery:
		status, resp = s.salesforceQuery(c)
	case sfQueryMore:
		status, resp = s.salesforceQueryMore(c)
	case sfGet, sfGetByExternal:
		status, resp = s.salesforceGet(c)
	case sfRetrieveMany:
		status, resp = s.salesforceRetrieve(c)
	case sfUpsertMany, sfCreateMany, sfUpdateMany:
		status, resp = s.salesforceWriteMany(c, body)
	case sfUpsertOne:
		status, resp = s.salesforceUpsertOne(c, body)
	}
	if d.ambiguous != modeNone && status/100 == 2 {
		s.ambiguous(c.call, d.ambiguous)
		return
	}
	c.reply(status, resp)
}

// headerBytes is the size of r's headers as sent: "Name: value\r\n" each,
// Host included.
func headerBytes(r *http.Request) int {
	n := len("Host: \r\n") + len(r.Host)
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// salesforceLimits answers GET /limits: the daily API requests, and a few
// other limits at their Developer Edition values, untouched.
func (s *Server) salesforceLimits() []byte {
	sf := s.sf
	type limit struct {
		Max       int64 `json:"Max"`
		Remaining int64 `json:"Remaining"`
	}
	n := sf.max()
	out := map[string]limit{
		"DailyApiRequests":     {n, max(0, n-sf.dailyUsed.Load())},
		"DailyBulkApiBatches":  {15000, 15000},
		"DailyBulkV2QueryJobs": {10000, 10000},
		"DataStorageMB":        {5, 5},
		"FileStorageMB":        {20, 20},
		"SingleEmail":          {15, 15},
	}
	return sfMarshal(out)
}

// decodeSF decodes a request body; on failure it returns Salesforce's 400.
func decodeSF(body []byte, v any) (int, []byte, bool) {
	d := json.NewDecoder(strings.NewReader(string(body)))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return http.StatusBadRequest, sfErrorBody("JSON_PARSER_ERROR", "Cannot deserialize instance of "+te.Value+" at ["+te.Field+"]"), false
		}
		return http.StatusBadRequest, sfErrorBody("JSON_PARSER_ERROR", "The request body is not valid JSON: "+err.Error()), false
	}
	return 0, nil, true
}

// recordURL is a record's attributes.url.
func (c *sfCall) recordURL(object, id string) string {
	v := c.rt.version
	if v == "" {
		v = salesforceVersion
	}
	return SalesforcePathPrefix + v + "/sobjects/" + object + "/" + id
}

func formatSFTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000+0000") }
