// Package crmapi speaks the CRM's JSON API (docs/crm-api.md): the wire types
// shared by the integrator's HTTP client and by fakecrm, and the client
// itself.
package crmapi

import "crmsync/shared/contact"

// Paths of version 1 of the API, relative to the base URL.
const (
	PathContacts = "/v1/contacts"
	PathBatch    = "/v1/contacts/batch"
	PathLookup   = "/v1/contacts/lookup"
	// PathBatchUpdate updates contacts the CRM holds, by their ids.
	PathBatchUpdate = "/v1/contacts/batch/update"
)

// Header names of the contract.
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderReplayed       = "Idempotent-Replayed"
	HeaderRetryAfter     = "Retry-After"
)

// MaxBatch is the most contacts one batch request may carry.
const MaxBatch = 100

// BatchRequest is the body of POST /v1/contacts/batch.
type BatchRequest struct {
	Contacts []contact.Contact `json:"contacts"`
}

// BatchResponse is the 200 answer of POST /v1/contacts/batch: one result per
// input contact, in input order.
type BatchResponse struct {
	Results []BatchResult `json:"results"`
}

// Result statuses.
const (
	StatusCreated  = "created"
	StatusUpdated  = "updated" // POST /v1/contacts/batch/update
	StatusRejected = "rejected"
)

// BatchResult is the outcome of one contact of a batch.
type BatchResult struct {
	ExternalID string       `json:"external_id"`
	Status     string       `json:"status"`
	ID         string       `json:"id,omitempty"`
	Error      *ErrorDetail `json:"error,omitempty"`
	// Gone, with StatusRejected of an update: the CRM does not hold the
	// contact (any more). Connectors set it from their CRM's codes; the
	// generic API's is CodeNotFound.
	Gone bool `json:"-"`
}

// CreateResponse is the 201 answer of POST /v1/contacts.
type CreateResponse struct {
	ID         string `json:"id"`
	ExternalID string `json:"external_id"`
}

// StoredContact is a contact as GET /v1/contacts returns it.
type StoredContact struct {
	ID string `json:"id"`
	contact.Contact
	CreatedAt string `json:"created_at"`
}

// ListResponse is the answer of GET /v1/contacts?external_id=X.
type ListResponse struct {
	Contacts []StoredContact `json:"contacts"`
}

// LookupRequest is the body of POST /v1/contacts/lookup: 1..MaxBatch
// external ids.
type LookupRequest struct {
	ExternalIDs []string `json:"external_ids"`
}

// LookupResponse is its 200 answer: one result per requested id, in
// request order.
type LookupResponse struct {
	Results []LookupResult `json:"results"`
}

// LookupResult lists the contacts holding one external id, oldest first;
// empty (never null) when the CRM holds none.
type LookupResult struct {
	ExternalID string          `json:"external_id"`
	Contacts   []StoredContact `json:"contacts"`
}

// ErrorDetail is a machine code and a human message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ErrorResponse is the body of every 4xx and 5xx answer.
type ErrorResponse struct {
	Error ErrorDetail `json:"error"`
}

// Error codes of whole requests.
const (
	CodeMalformed            = "malformed_request"
	CodeUnauthorized         = "unauthorized"
	CodeBatchTooLarge        = "batch_too_large"
	CodeIdempotencyKeyReused = "idempotency_key_reused"
	CodeRequestInProgress    = "request_in_progress"
	CodeRateLimited          = "rate_limited"
	CodeUnavailable          = "unavailable"
	CodeInternal             = "internal_error"
	CodeInvalidIdempotency   = "invalid_idempotency_key"
	CodeNotFound             = "not_found"
	CodeMethodNotAllowed     = "method_not_allowed"
)

// Error codes of one contact of a batch update (besides contact's codes).
const (
	// CodeExternalIDImmutable: the entry's external_id is not the stored
	// contact's; the key of a contact never changes.
	CodeExternalIDImmutable = "external_id_immutable"
)

// More error codes of whole requests.
const (
	CodeEmptyBatch     = "empty_batch"     // 400: a batch without contacts
	CodeBodyTooLarge   = "body_too_large"  // 413: the body exceeds the byte cap
	CodeBadGateway     = "bad_gateway"     // 502, ambiguous: contacts may exist
	CodeGatewayTimeout = "gateway_timeout" // 504, ambiguous: contacts may exist
)
