// Package salesforce is the integrator's connector to Salesforce's REST API
// (docs/crm/salesforce.md): upsert of records by an External ID field with
// sObject Collections, reads by that field with one SOQL query, the object
// checks at start (describe), the org's daily allocation from
// Sforce-Limit-Info and the limits resource, and the classification of
// every answer into crmapi's classes. It follows Salesforce's public REST
// API documentation; fakecrm -api salesforce implements the same
// documentation independently.
package salesforce

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// Defaults of Config.
const (
	DefaultAPIVersion = "60.0"
	DefaultObject     = "Contact"
	DefaultIDField    = "External_Id__c"
	DefaultReserve    = 0.10
)

// MaxBatch: "The list can contain up to 200 objects" (sObject Collections).
const MaxBatch = 200

// Config configures a Connector.
type Config struct {
	BaseURL    string // the org's instance URL, https://MyDomainName.my.salesforce.com
	Token      string // OAuth access token; never logged
	Object     string // default DefaultObject
	IDField    string // an External ID field of Object; default DefaultIDField
	APIVersion string // default DefaultAPIVersion
	// Reserve is the share of the org's daily allocation left to its other
	// integrations: below it the connector sends nothing and answers
	// ClassQuota. 0 keeps nothing back; negative means DefaultReserve.
	Reserve float64
	Timeout time.Duration // per request; 0: the caller's context only
	HTTP    *http.Client  // default: one on crmapi.NewTransport(8)
	// Observe, when set, is called after every request with the operation,
	// the HTTP status (0: no answer) and the latency.
	Observe func(op string, status int, d time.Duration)
	// Usage, when set, is told the org's daily API usage from every answer
	// that carries Sforce-Limit-Info (and from the limits resource).
	Usage func(used, max int)
}

// Connector speaks Salesforce's REST API. Safe for concurrent use.
type Connector struct {
	cfg      Config
	instance string // the instance URL, without a trailing slash
	api      string // /services/data/vNN.N
	hc       *http.Client
	// used and max are the org's daily API usage as the last answer said
	// (0, 0: not known yet).
	used, max atomic.Int64
	usageMu   sync.Mutex // orders the headers' updates of used
	// recheck is set (unix nanoseconds) once the connector answered
	// ClassQuota: until then requests are refused without a call, and the
	// first one after it reads the limits resource, since usage only falls
	// as the rolling 24 hours move on and no other answer tells it.
	recheck atomic.Int64
	// caseSensitive: the id field compares case-sensitively (describe);
	// SOQL's = and IN do not.
	caseSensitive atomic.Bool
	// names maps the lower-case name of every writable field to its API
	// name (describe), so that a column "company" goes to Company; nil
	// before Check.
	names atomic.Pointer[map[string]string]
	last  atomic.Pointer[answered] // for Ping
	// inflight counts writes and reads sent whose answer (and its usage)
	// is not in yet, so that the reserve holds with many in flight.
	inflight atomic.Int64
}

var versionRE = regexp.MustCompile(`^[0-9]{2,3}\.0$`)

// New checks cfg and returns a Connector. It makes no request: Check does.
func New(cfg Config) (*Connector, error) {
	if cfg.Object == "" {
		cfg.Object = DefaultObject
	}
	if cfg.IDField == "" {
		cfg.IDField = DefaultIDField
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = DefaultAPIVersion
	}
	if cfg.Reserve < 0 {
		cfg.Reserve = DefaultReserve
	}
	if cfg.Reserve >= 1 {
		return nil, fmt.Errorf("salesforce: -crm-reserve %g: want a share below 1 (0.10 keeps 10%% of the daily allocation for other integrations)", cfg.Reserve)
	}
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, errors.New("salesforce: -crm-url: want the org's instance URL, https://MyDomainName.my.salesforce.com")
	}
	if !versionRE.MatchString(cfg.APIVersion) {
		return nil, fmt.Errorf("salesforce: -crm-api-version %q: want a version such as %s", cfg.APIVersion, DefaultAPIVersion)
	}
	for _, n := range []struct{ flag, v string }{{"-crm-object", cfg.Object}, {"-crm-id-field", cfg.IDField}} {
		if !nameRE.MatchString(n.v) {
			return nil, fmt.Errorf("salesforce: %s %q: want an API name such as Contact or External_Id__c", n.flag, n.v)
		}
	}
	return &Connector{cfg: cfg, instance: strings.TrimRight(cfg.BaseURL, "/"), api: "/services/data/v" + cfg.APIVersion,
		hc: crmapi.NoRedirects(cfg.HTTP)}, nil
}

// nameRE is an API name: letters, digits and underscores, from a letter.
// Field names go into SOQL and paths unquoted, so nothing else is allowed.
var nameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,79}$`)

// MaxBatch is sObject Collections' limit of records per request.
func (c *Connector) MaxBatch() int { return MaxBatch }

// Object and IDField are the sObject and its External ID field.
func (c *Connector) Object() string  { return c.cfg.Object }
func (c *Connector) IDField() string { return c.cfg.IDField }

// salesforceNames are a Contact's standard fields for a contact's fields.
var salesforceNames = crmapi.FieldNames{Email: "Email", FirstName: "FirstName", LastName: "LastName", Phone: "Phone"}

// fields are a contact as field values (crmapi.PutFields): attributes go
// to the field of their name in any case, as describe spells it.
func (c *Connector) fields(ct *contact.Contact) map[string]any {
	f := make(map[string]any, 6+len(ct.Attributes))
	crmapi.PutFields(ct, salesforceNames, c.cfg.IDField, c.rename(), func(k, v string) { f[k] = v })
	// "Each object in the request body must contain an attributes map. The
	// map must contain a value for type."
	f["attributes"] = map[string]string{"type": c.cfg.Object}
	return f
}

// rename maps an attribute to the field of its name in any case, as
// describe spells it (nil before Check).
func (c *Connector) rename() func(string) string {
	p := c.names.Load()
	if p == nil {
		return nil
	}
	names := *p
	return func(k string) string {
		if n, ok := names[strings.ToLower(k)]; ok {
			return n
		}
		return k
	}
}

// Encode builds the upsert body once; encoding/json sorts the maps, so a
// resend is byte for byte the same.
func (c *Connector) Encode(contacts []contact.Contact) *crmapi.WriteRequest {
	records := make([]map[string]any, len(contacts))
	keys := make([]string, len(contacts))
	for i := range contacts {
		records[i] = c.fields(&contacts[i])
		keys[i] = contacts[i].ExternalID
	}
	// allOrNone false: one record's error must not roll back the others.
	body, _ := json.Marshal(struct {
		AllOrNone bool             `json:"allOrNone"`
		Records   []map[string]any `json:"records"`
	}{false, records})
	return &crmapi.WriteRequest{Body: body, Keys: keys}
}

// EncodeUpdate builds the body of an sObject Collections update (PATCH
// /composite/sobjects): each record names its contact by Id (the CRM id
// the integrator returned) and carries only the listed fields. A cleared
// field is JSON null: "Field values provided in the request body replace
// the existing values in the record" (Update Records Using sObject Rows),
// and "" is no value for most field types. An update by Id, unlike the
// upsert by the External ID field, never creates: a contact deleted in
// the org comes back ENTITY_IS_DELETED instead of being made again.
func (c *Connector) EncodeUpdate(updates []crmapi.Update) *crmapi.WriteRequest {
	records := make([]map[string]any, len(updates))
	keys := make([]string, len(updates))
	rename := c.rename()
	for i := range updates {
		u := &updates[i]
		f := make(map[string]any, len(u.Fields)+2)
		crmapi.PutUpdate(u, salesforceNames, rename, func(k, v string) {
			if v == "" {
				f[k] = nil
				return
			}
			f[k] = v
		})
		f["Id"] = u.CRMID
		f["attributes"] = map[string]string{"type": c.cfg.Object}
		records[i] = f
		keys[i] = u.Contact.ExternalID
	}
	body, _ := json.Marshal(struct {
		AllOrNone bool             `json:"allOrNone"`
		Records   []map[string]any `json:"records"`
	}{false, records})
	return &crmapi.WriteRequest{Body: body, Keys: keys, IDs: crmapi.UpdateIDs(updates)}
}

// goneCodes are an update's errors for an Id the org does not hold.
var goneCodes = map[string]bool{"ENTITY_IS_DELETED": true, "INVALID_CROSS_REFERENCE_KEY": true, "MALFORMED_ID": true, "NOT_FOUND": true}

// WriteUpdate sends the update: "The SaveResult objects are returned in
// the order in which the update requests were specified."
func (c *Connector) WriteUpdate(ctx context.Context, req *crmapi.WriteRequest) (*crmapi.BatchResponse, error) {
	release, err := c.take(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	var out []saveResult
	if err := c.send(ctx, "update", http.MethodPatch, c.api+"/composite/sobjects", req.Body, &out); err != nil {
		return nil, err
	}
	if len(out) != len(req.IDs) {
		return nil, &crmapi.Error{Class: crmapi.ClassAmbiguous, Status: http.StatusOK,
			Message: fmt.Sprintf("salesforce answered %d results for %d records", len(out), len(req.IDs))}
	}
	res := make([]crmapi.BatchResult, len(req.IDs))
	for i, r := range out {
		res[i].ExternalID, res[i].ID = req.Keys[i], req.IDs[i]
		switch {
		case r.Success:
			res[i].Status = crmapi.StatusUpdated
		case len(r.Errors) == 0 || transientCodes[r.Errors[0].StatusCode]:
			// Left without status: the daemon resends it.
		default:
			e := r.Errors[0]
			msg := e.Message
			if len(e.Fields) > 0 {
				msg += " (fields: " + strings.Join(e.Fields, ", ") + ")"
			}
			res[i].Status, res[i].Gone = crmapi.StatusRejected, goneCodes[e.StatusCode]
			res[i].Error = &crmapi.ErrorDetail{Code: e.StatusCode, Message: msg}
		}
	}
	return &crmapi.BatchResponse{Results: res}, nil
}

// saveResult is an UpsertResult of sObject Collections.
type saveResult struct {
	ID      string      `json:"id"`
	Success bool        `json:"success"`
	Created bool        `json:"created"`
	Errors  []saveError `json:"errors"`
}

type saveError struct {
	StatusCode string   `json:"statusCode"`
	Message    string   `json:"message"`
	Fields     []string `json:"fields"`
}

// transientCodes are per-record errors that say nothing about the record:
// it is left without status, so the daemon resends it (an upsert is safe
// to resend).
var transientCodes = map[string]bool{
	"UNABLE_TO_LOCK_ROW":                true, // another transaction held the row
	"REQUEST_LIMIT_EXCEEDED":            true,
	"SERVER_UNAVAILABLE":                true,
	"UNKNOWN_EXCEPTION":                 true,
	"ALL_OR_NONE_OPERATION_ROLLED_BACK": true, // never with allOrNone false, but harmless
}

// Write upserts the batch by the External ID field. "Objects are created or
// updated in the order they're listed in the request body. The
// UpsertResult objects are returned in the same order."
func (c *Connector) Write(ctx context.Context, req *crmapi.WriteRequest) (*crmapi.BatchResponse, error) {
	release, err := c.take(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	var out []saveResult
	path := c.api + "/composite/sobjects/" + c.cfg.Object + "/" + c.cfg.IDField
	if err := c.send(ctx, "upsert", http.MethodPatch, path, req.Body, &out); err != nil {
		return nil, err
	}
	if len(out) != len(req.Keys) {
		// Not the documented shape: what was written is unknown.
		return nil, &crmapi.Error{Class: crmapi.ClassAmbiguous, Status: http.StatusOK,
			Message: fmt.Sprintf("salesforce answered %d results for %d records", len(out), len(req.Keys))}
	}
	res := make([]crmapi.BatchResult, len(req.Keys))
	for i, r := range out {
		res[i].ExternalID = req.Keys[i]
		switch {
		case r.Success && r.ID != "":
			res[i].Status, res[i].ID = crmapi.StatusCreated, r.ID
		case r.Success || len(r.Errors) == 0:
			// Success without an id is not the documented shape: leave it
			// ambiguous.
		case transientCodes[r.Errors[0].StatusCode] || c.raceOnKey(r.Errors[0]):
			// Left without status: the daemon resends it.
		default:
			e := r.Errors[0]
			msg := e.Message
			if len(e.Fields) > 0 {
				msg += " (fields: " + strings.Join(e.Fields, ", ") + ")"
			}
			res[i].Status = crmapi.StatusRejected
			res[i].Error = &crmapi.ErrorDetail{Code: e.StatusCode, Message: msg}
		}
	}
	return &crmapi.BatchResponse{Results: res}, nil
}

// raceOnKey: DUPLICATE_VALUE "duplicate value found: F duplicates value
// on record with id: …" on the id field itself means another request
// inserted the same key between the upsert's match and its insert (our own
// earlier attempt, still running when it timed out): the record exists now,
// and the resent upsert updates it. Salesforce documents no such race;
// integrators report it for upserts a second apart. The same code with
// "Duplicate external id specified" is a key twice in one request, which a
// resend cannot cure: that one is rejected.
func (c *Connector) raceOnKey(e saveError) bool {
	if e.StatusCode != "DUPLICATE_VALUE" || !strings.Contains(e.Message, "duplicates value on record with id") {
		return false
	}
	for _, f := range e.Fields {
		if strings.EqualFold(f, c.cfg.IDField) {
			return true
		}
	}
	return strings.Contains(e.Message, c.cfg.IDField+" duplicates value")
}

// pingEvery is how long an answer of the org vouches for the token: every
// call but the versions list counts against the daily allocation, so a
// readiness probe every few seconds must not become one call each.
const pingEvery = 5 * time.Minute

// Ping says whether the org answers and takes the token: from the last
// answer when it is recent, else by reading the limits resource (which
// refreshes the daily usage too). An idle daemon's probes cost at most one
// call per pingEvery.
func (c *Connector) Ping(ctx context.Context) error {
	if p := c.last.Load(); p != nil && time.Since(p.at) < pingEvery {
		return p.err
	}
	_, err := c.limits(ctx, "ping")
	return err
}

// answered is the latest answer that says whether the token works: nil
// err, or the Unauthorized error.
type answered struct {
	at  time.Time
	err error
}

// noteAnswer records an answer of the org for Ping.
func (c *Connector) noteAnswer(err error) {
	var ce *crmapi.Error
	switch {
	case err == nil:
	case errors.As(err, &ce) && ce.Class == crmapi.ClassUnauthorized:
	default:
		if !errors.As(err, &ce) || ce.Status == 0 {
			return // no answer: says nothing of the token
		}
		err = nil // an answer that is not about the token
	}
	c.last.Store(&answered{time.Now(), err})
}

// send makes one request to path (from the instance's root, as
// nextRecordsUrl is) and decodes a 2xx answer into out.
func (c *Connector) send(ctx context.Context, op, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.instance+path, rd)
	if err != nil {
		return &crmapi.Error{Class: crmapi.ClassUnexpected, Message: "build request", Err: err}
	}
	// As crmapi does: a body the Transport could rewind would let it resend
	// a write by itself on a dead keep-alive connection.
	req.GetBody = nil
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	resp, done, err := crmapi.Exchange(c.hc, req, op, c.cfg.Timeout, c.cfg.Observe)
	if err != nil {
		return err
	}
	defer done()
	c.limitInfo(resp.Header.Get("Sforce-Limit-Info"))
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		err := c.statusError(ctx, resp, op)
		c.noteAnswer(err)
		return err
	}
	c.noteAnswer(nil)
	return crmapi.DecodeJSON(resp, out)
}
