package salesforce

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"

	"crmsync/crmintegrator/crmapi"
)

// apiError is an item of the array Salesforce answers with on an error:
// [{"message": "...", "errorCode": "...", "fields": [...]}].
type apiError struct {
	Message   string   `json:"message"`
	ErrorCode string   `json:"errorCode"`
	Fields    []string `json:"fields"`
}

// readError reads the first error of the body; an object instead of an
// array is read too.
func readError(r io.Reader) apiError {
	b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
	var list []apiError
	if json.Unmarshal(b, &list) == nil && len(list) > 0 {
		return list[0]
	}
	var one apiError
	json.Unmarshal(b, &one)
	return one
}

// statusError classifies a non-2xx answer (docs/crm/salesforce.md's table).
func (c *Connector) statusError(ctx context.Context, resp *http.Response, op string) error {
	b := readError(resp.Body)
	e := &crmapi.Error{Status: resp.StatusCode, Code: b.ErrorCode, Message: b.Message}
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	if len(b.Fields) > 0 {
		e.Message += " (fields: " + strings.Join(b.Fields, ", ") + ")"
	}
	write := op == "upsert"
	switch s := resp.StatusCode; {
	case s == http.StatusUnauthorized:
		// INVALID_SESSION_ID: "Session expired or invalid". Access tokens
		// expire with the session's timeout: the daemon needs a new one.
		e.Class = crmapi.ClassUnauthorized
		if b.ErrorCode == "INVALID_SESSION_ID" {
			e.Message = "the Salesforce access token expired or is invalid (" + e.Message + "): give the daemon a new one (-crm-token)"
		}
	case s == http.StatusForbidden && b.ErrorCode == "REQUEST_LIMIT_EXCEEDED":
		// Salesforce throttles with 403, not 429, and sends no Retry-After.
		// The same code covers the org's daily allocation ("TotalRequests
		// Limit exceeded.") and its limit of concurrent long-running
		// requests: only the first is the quota.
		if strings.Contains(b.Message, "Concurrent") {
			e.Class, e.RetryAfter = crmapi.ClassRateLimited, 2*time.Second
			break
		}
		if op != "limits" {
			c.limits(ctx, "limits") // when to come back; an error leaves the last usage
		}
		return c.quotaError(b.ErrorCode, "Salesforce refused the request: "+e.Message)
	case s == http.StatusForbidden:
		// INSUFFICIENT_ACCESS, API_DISABLED_FOR_ORG, …: the token's user
		// may not do this.
		e.Class = crmapi.ClassUnauthorized
	case s == http.StatusBadRequest && write:
		// The whole request was refused for what some records hold (a
		// field that does not exist, a value that cannot be read): split
		// the batch so that only those records are rejected.
		e.Class = crmapi.ClassSplit
	case s == http.StatusBadRequest:
		// MALFORMED_QUERY, INVALID_FIELD on a read: never "not found".
		e.Class = crmapi.ClassUnexpected
	case s == http.StatusRequestURITooLong || s == http.StatusRequestHeaderFieldsTooLarge:
		// "A request exceeding this limit returns a 431 … If the URI itself
		// exceeds this limit, the request returns a 414."
		e.Class = crmapi.ClassTooLarge
	default:
		e.Class = crmapi.Classify(s, "")
		e.RetryAfter = crmapi.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return e
}
