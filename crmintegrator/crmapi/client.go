package crmapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"crmsync/shared/redact"
)

// Class is what an answer of the CRM (or the lack of one) means for the
// records of the request. The integrator decides every verdict from it.
type Class uint8

const (
	// ClassOK: a 2xx answer that was read completely.
	ClassOK Class = iota
	// ClassRejected: 400 or 422; the CRM refused the request for good.
	ClassRejected
	// ClassTooLarge: 413; nothing was created, a smaller batch may pass.
	ClassTooLarge
	// ClassUnauthorized: 401 or 403; the daemon's credentials are wrong.
	ClassUnauthorized
	// ClassRateLimited: 429; nothing was created, slow down.
	ClassRateLimited
	// ClassUnavailable: 503; nothing was created, try again later.
	ClassUnavailable
	// ClassInProgress: 409 request_in_progress; the same idempotency key is
	// being processed; ask again with the same key shortly.
	ClassInProgress
	// ClassAmbiguous: 500, 502, 504, any other 5xx, a timeout, a reset
	// connection, an unreadable 2xx body. The CRM may have acted.
	ClassAmbiguous
	// ClassUnexpected: any other answer (3xx, 404, 405, other 4xx): the CRM
	// did not act; most likely a misconfigured URL.
	ClassUnexpected
	// ClassSplit: the CRM refused the whole batch for what some of its
	// records hold (HubSpot's 409 for an email another contact has, a 400
	// naming one input): nothing was created; split the batch to find them,
	// and reject only those.
	ClassSplit
	// ClassQuota: the CRM's daily allocation is spent (or below the
	// reserve the operator keeps for other integrations): nothing was
	// created; Error.RetryAfter says when it comes back.
	ClassQuota
)

var classNames = [...]string{"ok", "rejected", "too_large", "unauthorized", "rate_limited", "unavailable", "in_progress", "ambiguous", "unexpected", "split", "quota"}

func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// Error is an unsuccessful request: an HTTP status the CRM answered, or a
// transport failure (Status 0, Err set). It never carries the token.
type Error struct {
	Class      Class
	Status     int           // HTTP status; 0 when no answer was read
	Code       string        // the CRM's error code, when it sent one
	Message    string        // the CRM's message, or the transport error
	RetryAfter time.Duration // from the Retry-After header; 0 if absent
	Err        error         // the transport error, if any
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("crm %s: %s", e.Class, e.Message)
	}
	if e.Code != "" {
		return fmt.Sprintf("crm status %d (%s): %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("crm status %d: %s", e.Status, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// ClassOf returns the class of an error returned by the Client: ClassOK for
// nil, the Error's class, and ClassAmbiguous for anything else.
func ClassOf(err error) Class {
	if err == nil {
		return ClassOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	return ClassAmbiguous
}

// Classify maps an HTTP status (and the CRM's error code) to a Class.
func Classify(status int, code string) Class {
	switch {
	case status >= 200 && status < 300:
		return ClassOK
	case status == http.StatusBadRequest, status == http.StatusUnprocessableEntity:
		return ClassRejected
	case status == http.StatusRequestEntityTooLarge:
		return ClassTooLarge
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return ClassUnauthorized
	case status == http.StatusTooManyRequests:
		return ClassRateLimited
	case status == http.StatusServiceUnavailable:
		return ClassUnavailable
	case status == http.StatusConflict && code == CodeRequestInProgress:
		return ClassInProgress
	case status >= 500:
		return ClassAmbiguous
	}
	return ClassUnexpected
}

// IdempotencyKey derives the Idempotency-Key of a request body: an
// identical resend carries the same key, any other body another one.
func IdempotencyKey(body []byte) string {
	sum := sha256.Sum256(body)
	return "crmsync-" + hex.EncodeToString(sum[:])
}

// NewTransport returns a keep-alive transport whose idle pool holds conns
// connections to the CRM, so that conns concurrent requests reuse their
// connections instead of opening (and leaving in TIME_WAIT) new ones.
func NewTransport(conns int) *http.Transport {
	if conns < 1 {
		conns = 1
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          conns + 4,
		MaxIdleConnsPerHost:   conns + 2, // +2: the readiness probe and lookups racing creates
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		// A batch's body (about 13 KiB for 100 contacts) goes out with its
		// headers in one write. With the default 4 KiB buffer the body went
		// in several, and over plain TCP net/http handed it to the socket's
		// ReadFrom, which allocated a 32 KiB copy buffer per request.
		WriteBufferSize: 64 << 10,
		ReadBufferSize:  16 << 10, // an answer to 100 contacts in one read
	}
}

// Client calls the CRM's JSON API. It is safe for concurrent use. It does
// not retry: every retry decision belongs to the caller, which knows whether
// a resend could create a contact twice.
type Client struct {
	base    string
	token   string
	http    *http.Client
	timeout time.Duration
	// Observe, when set, is called after every request with the operation
	// ("create", "update", "lookup", "ping"), the HTTP status (0 when no answer was
	// read) and the latency. Set it before the first request.
	Observe func(op string, status int, d time.Duration)
	// Limits, when set, is called with what every answer that carries the
	// IETF rate-limit fields says (ParseRateLimit), before its outcome is
	// returned. Set it before the first request.
	Limits func(RateLimit)
}

// NewClient returns a Client for the API at baseURL authenticated with the
// bearer token. Each request is abandoned after timeout (0: no limit other
// than the caller's context). hc may be nil: a client on NewTransport(8).
func NewClient(baseURL, token string, timeout time.Duration, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("crm url: %w", redact.Error(err, baseURL))
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("crm url %q: want http://host[:port] or https://host[:port]", redact.URL(baseURL))
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), token: token, http: NoRedirects(hc), timeout: timeout}, nil
}

// NoRedirects returns a copy of hc (nil: a client on NewTransport(8)) that
// follows no redirect: a redirect of a POST would need the body again, and
// every resend is the integrator's decision. Every connector uses it.
func NoRedirects(hc *http.Client) *http.Client {
	if hc == nil {
		hc = &http.Client{Transport: NewTransport(8)}
	}
	c := *hc
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

// CreateBatch sends POST /v1/contacts/batch with an encoded BatchRequest as
// body and key as Idempotency-Key. replayed reports that the CRM answered
// from its idempotency store. Errors are *Error.
func (c *Client) CreateBatch(ctx context.Context, body []byte, key string) (resp *BatchResponse, replayed bool, err error) {
	return c.postBatch(ctx, "create", PathBatch, body, key)
}

// UpdateBatch sends POST /v1/contacts/batch/update with an encoded update
// request (AppendUpdateRequest) as body and key as Idempotency-Key: one
// result per entry, in order, "updated" or "rejected". An update is
// resend-safe; the key spares the CRM the work twice. Errors are *Error.
func (c *Client) UpdateBatch(ctx context.Context, body []byte, key string) (resp *BatchResponse, replayed bool, err error) {
	return c.postBatch(ctx, "update", PathBatchUpdate, body, key)
}

func (c *Client) postBatch(ctx context.Context, op, path string, body []byte, key string) (resp *BatchResponse, replayed bool, err error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, false, &Error{Class: ClassUnexpected, Message: "build request", Err: err}
	}
	// net/http's Transport silently sends a request a second time when a
	// reused keep-alive connection dies before the answer, provided it can
	// rewind the body (GetBody) and the request looks idempotent — which an
	// Idempotency-Key header claims. Against a CRM that ignores keys, that
	// resend creates the contacts twice, and we would never know. Without
	// GetBody the transport resends nothing it has started to write; every
	// resend decision stays with the integrator, which resolves ambiguity
	// first. TestCreateBatchNoSilentResend covers this.
	req.GetBody = nil
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderIdempotencyKey, key)
	var out BatchResponse
	h, err := c.do(req, op, &out)
	if err != nil {
		return nil, false, err
	}
	return &out, h.Get(HeaderReplayed) == "true", nil
}

// Lookup returns the contacts holding externalID (GET /v1/contacts). An
// empty list means the CRM holds none. Errors are *Error.
func (c *Client) Lookup(ctx context.Context, externalID string) ([]StoredContact, error) {
	return c.lookup(ctx, "lookup", externalID)
}

// LookupBatch returns, for each external id (at most MaxBatch), the
// contacts holding it (POST /v1/contacts/lookup), in the order of ids.
// Errors are *Error; an answer with another number of results is
// ClassUnexpected, never read as "not found".
func (c *Client) LookupBatch(ctx context.Context, ids []string) ([]LookupResult, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	body, err := json.Marshal(LookupRequest{ExternalIDs: ids})
	if err != nil {
		return nil, &Error{Class: ClassUnexpected, Message: "encode lookup", Err: err}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+PathLookup, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Class: ClassUnexpected, Message: "build request", Err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	var out LookupResponse
	if _, err := c.do(req, "lookup", &out); err != nil {
		return nil, err
	}
	if len(out.Results) != len(ids) {
		return nil, &Error{Class: ClassUnexpected, Status: http.StatusOK,
			Message: fmt.Sprintf("lookup answered %d results for %d external ids", len(out.Results), len(ids))}
	}
	for i := range ids {
		if out.Results[i].ExternalID != ids[i] {
			return nil, &Error{Class: ClassUnexpected, Status: http.StatusOK,
				Message: fmt.Sprintf("lookup result %d is for %q, not the requested id", i, out.Results[i].ExternalID)}
		}
	}
	return out.Results, nil
}

// Ping checks that the CRM answers and accepts the token with a lookup of
// an external id that does not exist.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.lookup(ctx, "ping", "crmsync-readiness-probe")
	return err
}

func (c *Client) lookup(ctx context.Context, op, externalID string) ([]StoredContact, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	u := c.base + PathContacts + "?external_id=" + url.QueryEscape(externalID)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, &Error{Class: ClassUnexpected, Message: "build request", Err: err}
	}
	var out ListResponse
	// A 404 is an error, not "no such contact": it means a wrong base URL,
	// and reading it as "not found" would make the caller create again.
	if _, err := c.do(req, op, &out); err != nil {
		return nil, err
	}
	return out.Contacts, nil
}

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return context.WithCancel(ctx)
}

// do sends req and decodes a 2xx JSON body into out.
func (c *Client) do(req *http.Request, op string, out any) (http.Header, error) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Accept", "application/json")
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.observe(op, 0, start)
		return nil, TransportError(err)
	}
	defer func() {
		// Drain a little so the connection goes back to the pool.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	if c.Limits != nil {
		if l, ok := ParseRateLimit(resp.Header.Values(HeaderRateLimitPolicy), resp.Header.Values(HeaderRateLimit)); ok {
			c.Limits(l)
		}
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		c.observe(op, resp.StatusCode, start)
		return nil, statusError(resp)
	}
	if br, ok := out.(*BatchResponse); ok {
		err = decodeBatchResponse(resp.Body, resp.ContentLength, br)
	} else {
		err = json.NewDecoder(resp.Body).Decode(out)
	}
	c.observe(op, resp.StatusCode, start)
	if err != nil {
		// The CRM acted but we cannot tell what it answered.
		return nil, &Error{Class: ClassAmbiguous, Status: resp.StatusCode, Message: "unreadable answer: " + err.Error(), Err: err}
	}
	return resp.Header, nil
}

func (c *Client) observe(op string, status int, start time.Time) {
	if c.Observe != nil {
		c.Observe(op, status, time.Since(start))
	}
}

// TransportError is a request that got no answer (timeout, reset, refused
// connection): ambiguous, since the CRM may have acted. Every connector
// classifies these alike.
func TransportError(err error) *Error {
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		msg = ue.Err.Error() // the URL is known to the operator; keep lines short
	}
	return &Error{Class: ClassAmbiguous, Message: msg, Err: err}
}

func statusError(resp *http.Response) *Error {
	e := &Error{Status: resp.StatusCode, RetryAfter: ParseRetryAfter(resp.Header.Get(HeaderRetryAfter), time.Now())}
	var body ErrorResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err == nil {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	e.Class = Classify(resp.StatusCode, e.Code)
	return e
}

// ParseRetryAfter reads a Retry-After header: delay seconds or an HTTP
// date. It returns 0 when the header is absent or unreadable.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > 24*3600 {
			n = 24 * 3600
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// The IETF rate-limit fields, draft-ietf-httpapi-ratelimit-headers-10
// (docs/crm-api.md, "Rate limits"): RateLimit-Policy states each quota
// policy ("default";q=40;w=1: 40 requests a second), RateLimit what is
// left of it now ("default";r=17;t=1).
const (
	HeaderRateLimitPolicy = "RateLimit-Policy"
	HeaderRateLimit       = "RateLimit"
	// ParamBurst is our vendor parameter of a policy whose bucket holds
	// another amount than q.
	ParamBurst = "crmsync-burst"
)

// RateLimit is the most restrictive policy an answer states in the IETF
// fields: Quota requests per Window refill it, it holds Burst, Remaining
// are left now, more are due in Reset (0: not said).
type RateLimit struct {
	Policy    string
	Quota     int
	Window    time.Duration
	Burst     int
	Remaining int
	Reset     time.Duration
}

// Rate is the policy's long-run allowance in requests per second.
func (l RateLimit) Rate() float64 { return float64(l.Quota) / l.Window.Seconds() }

// ParseRateLimit reads an answer's RateLimit-Policy and RateLimit fields
// (each possibly over several lines). Of the policies both name, counted in
// requests and with a window, it returns the most restrictive: the one
// whose allowance left, Rate × Remaining/Burst, is least. A field that is
// not a valid structured-field List is ignored whole, as the draft says; a
// member with missing or wrong parameters is ignored alone. ok is false
// when no policy is usable.
func ParseRateLimit(policyLines, limitLines []string) (l RateLimit, ok bool) {
	policies, err := parseSFList(strings.Join(policyLines, ","))
	if err != nil || len(policies) == 0 {
		return RateLimit{}, false
	}
	limits, err := parseSFList(strings.Join(limitLines, ","))
	if err != nil {
		return RateLimit{}, false
	}
	type policy struct{ q, w, burst int }
	known := map[string]policy{}
	for _, m := range policies {
		q, okQ := m.intParam("q")
		w, okW := m.intParam("w")
		if m.kind != sfString && m.kind != sfToken || !okQ || !okW || q < 0 || w <= 0 {
			continue
		}
		if u, has := m.params["qu"]; has && (u.kind != sfString || u.s != "requests" && u.s != "request") {
			continue // content-bytes, concurrent-requests: not what we pace
		}
		p := policy{q: q, w: w, burst: q}
		if b, has := m.intParam(ParamBurst); has && b > 0 {
			p.burst = b
		}
		known[m.s] = p
	}
	best := -1.0
	for _, m := range limits {
		p, has := known[m.s]
		r, okR := m.intParam("r")
		if m.kind != sfString && m.kind != sfToken || !has || !okR || r < 0 || p.burst == 0 {
			continue
		}
		cand := RateLimit{Policy: m.s, Quota: p.q, Window: time.Duration(p.w) * time.Second, Burst: p.burst, Remaining: min(r, p.burst)}
		if t, has := m.intParam("t"); has && t >= 0 {
			cand.Reset = time.Duration(min(t, 24*3600)) * time.Second
		}
		if left := cand.Rate() * float64(cand.Remaining) / float64(cand.Burst); best < 0 || left < best {
			l, best, ok = cand, left, true
		}
	}
	return l, ok
}

// A structured-field Item (RFC 9651) as ParseRateLimit needs it: its bare
// item's kind and value, and its parameters.
type sfItem struct {
	kind   sfKind
	s      string // string, token, or the text of any other kind
	n      int64  // integer
	params map[string]sfItem
}

type sfKind uint8

const (
	sfInteger sfKind = iota + 1
	sfDecimal
	sfString
	sfToken
	sfBytes
	sfBoolean
	sfOther // date, display string: valid, unused here
)

func (it sfItem) intParam(key string) (int, bool) {
	p, ok := it.params[key]
	if !ok || p.kind != sfInteger || p.n > 1<<31-1 || p.n < -(1<<31) {
		return 0, false
	}
	return int(p.n), true
}

var errSF = errors.New("invalid structured field")

// parseSFList parses a List of Items (RFC 9651 §4.2.1). Inner lists are
// valid syntax, kept as sfOther members.
func parseSFList(v string) ([]sfItem, error) {
	p := sfParser{s: strings.TrimLeft(v, " \t")}
	var out []sfItem
	for p.s = strings.TrimRight(p.s, " \t"); p.s != ""; {
		var it sfItem
		var err error
		if p.s[0] == '(' {
			it, err = p.innerList()
		} else {
			it, err = p.item()
		}
		if err != nil {
			return nil, err
		}
		out = append(out, it)
		p.s = strings.TrimLeft(p.s, " \t")
		if p.s == "" {
			break
		}
		if p.s[0] != ',' {
			return nil, errSF
		}
		p.s = strings.TrimLeft(p.s[1:], " \t")
		if p.s == "" {
			return nil, errSF // a trailing comma
		}
	}
	return out, nil
}

type sfParser struct{ s string }

func (p *sfParser) innerList() (sfItem, error) {
	p.s = p.s[1:]
	for {
		p.s = strings.TrimLeft(p.s, " ")
		if p.s == "" {
			return sfItem{}, errSF
		}
		if p.s[0] == ')' {
			p.s = p.s[1:]
			params, err := p.params()
			return sfItem{kind: sfOther, params: params}, err
		}
		if _, err := p.item(); err != nil {
			return sfItem{}, err
		}
		if p.s != "" && p.s[0] != ' ' && p.s[0] != ')' {
			return sfItem{}, errSF
		}
	}
}

func (p *sfParser) item() (sfItem, error) {
	it, err := p.bare()
	if err != nil {
		return sfItem{}, err
	}
	it.params, err = p.params()
	return it, err
}

func (p *sfParser) params() (map[string]sfItem, error) {
	var m map[string]sfItem
	for p.s != "" && p.s[0] == ';' {
		p.s = strings.TrimLeft(p.s[1:], " ")
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		val := sfItem{kind: sfBoolean, s: "?1"}
		if p.s != "" && p.s[0] == '=' {
			p.s = p.s[1:]
			if val, err = p.bare(); err != nil {
				return nil, err
			}
		}
		if m == nil {
			m = map[string]sfItem{}
		}
		m[key] = val // a repeated key: the last wins
	}
	return m, nil
}

func (p *sfParser) key() (string, error) {
	if p.s == "" || !(p.s[0] >= 'a' && p.s[0] <= 'z' || p.s[0] == '*') {
		return "", errSF
	}
	i := 1
	for i < len(p.s) && (p.s[i] >= 'a' && p.s[i] <= 'z' || p.s[i] >= '0' && p.s[i] <= '9' || strings.IndexByte("_-.*", p.s[i]) >= 0) {
		i++
	}
	k := p.s[:i]
	p.s = p.s[i:]
	return k, nil
}

func (p *sfParser) bare() (sfItem, error) {
	if p.s == "" {
		return sfItem{}, errSF
	}
	switch c := p.s[0]; {
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case c == '"':
		return p.str()
	case c == '*' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z':
		i := 1
		for i < len(p.s) && isTokenChar(p.s[i]) {
			i++
		}
		it := sfItem{kind: sfToken, s: p.s[:i]}
		p.s = p.s[i:]
		return it, nil
	case c == ':':
		end := strings.IndexByte(p.s[1:], ':')
		if end < 0 {
			return sfItem{}, errSF
		}
		for _, b := range []byte(p.s[1 : 1+end]) {
			if !(b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '+' || b == '/' || b == '=') {
				return sfItem{}, errSF
			}
		}
		it := sfItem{kind: sfBytes, s: p.s[1 : 1+end]}
		p.s = p.s[2+end:]
		return it, nil
	case c == '?':
		if len(p.s) < 2 || p.s[1] != '0' && p.s[1] != '1' {
			return sfItem{}, errSF
		}
		it := sfItem{kind: sfBoolean, s: p.s[:2]}
		p.s = p.s[2:]
		return it, nil
	case c == '@':
		p.s = p.s[1:]
		it, err := p.number()
		if err != nil || it.kind != sfInteger {
			return sfItem{}, errSF
		}
		return sfItem{kind: sfOther, s: "@" + it.s}, nil
	case c == '%':
		// A display string: %"..." with %xx escapes; checked loosely.
		if len(p.s) < 2 || p.s[1] != '"' {
			return sfItem{}, errSF
		}
		end := strings.IndexByte(p.s[2:], '"')
		if end < 0 {
			return sfItem{}, errSF
		}
		it := sfItem{kind: sfOther, s: p.s[:3+end]}
		p.s = p.s[3+end:]
		return it, nil
	}
	return sfItem{}, errSF
}

// number reads an Integer (at most 15 digits) or a Decimal (at most 12
// digits before the point, 1 to 3 after).
func (p *sfParser) number() (sfItem, error) {
	i := 0
	if p.s != "" && p.s[0] == '-' {
		i++
	}
	start, dot := i, -1
	for ; i < len(p.s); i++ {
		c := p.s[i]
		if c == '.' && dot < 0 {
			dot = i
			continue
		}
		if c < '0' || c > '9' {
			break
		}
	}
	text := p.s[:i]
	switch {
	case i == start || dot == start:
		return sfItem{}, errSF
	case dot < 0:
		if i-start > 15 {
			return sfItem{}, errSF
		}
		n, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return sfItem{}, errSF
		}
		p.s = p.s[i:]
		return sfItem{kind: sfInteger, n: n, s: text}, nil
	case dot-start > 12 || i-dot-1 < 1 || i-dot-1 > 3:
		return sfItem{}, errSF
	}
	p.s = p.s[i:]
	return sfItem{kind: sfDecimal, s: text}, nil
}

func (p *sfParser) str() (sfItem, error) {
	var b strings.Builder
	for i := 1; i < len(p.s); i++ {
		switch c := p.s[i]; {
		case c == '\\':
			if i+1 == len(p.s) || p.s[i+1] != '"' && p.s[i+1] != '\\' {
				return sfItem{}, errSF
			}
			i++
			b.WriteByte(p.s[i])
		case c == '"':
			p.s = p.s[i+1:]
			return sfItem{kind: sfString, s: b.String()}, nil
		case c < 0x20 || c > 0x7e:
			return sfItem{}, errSF
		default:
			b.WriteByte(c)
		}
	}
	return sfItem{}, errSF
}

// isTokenChar: tchar, ":" and "/" (RFC 9651 §3.3.4).
func isTokenChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~:/", c) >= 0
}
