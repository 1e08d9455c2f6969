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
	// ("create", "lookup", "ping"), the HTTP status (0 when no answer was
	// read) and the latency. Set it before the first request.
	Observe func(op string, status int, d time.Duration)
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
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+PathBatch, bytes.NewReader(body))
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
	h, err := c.do(req, "create", &out)
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
