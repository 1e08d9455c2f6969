package crmapi

import (
	"context"

	"crmsync/shared/contact"
)

// Connector is what the integrator needs of one CRM's API. It translates and
// classifies; every promise of the daemon — verdicts, the shared limiter,
// the breaker, the call's bound, the resolution of ambiguous answers,
// metrics, logs without secrets — stays in the daemon, so a new CRM is a
// connector of a file or two.
//
// Errors are *Error: their Class tells the daemon what an answer
// means (nothing created, maybe created, rate limited, …).
type Connector interface {
	// MaxBatch is the most records one Write or Read request may carry.
	MaxBatch() int
	// Encode prepares the request that writes contacts, once per batch:
	// the daemon resends exactly these bytes, so that a CRM recognising a
	// replay (an Idempotency-Key, an upsert) sees the same request.
	Encode(contacts []contact.Contact) *WriteRequest
	// Write sends the request and returns one result per contact, in
	// order.
	Write(ctx context.Context, req *WriteRequest) (*BatchResponse, error)
	// EncodeUpdate prepares the request that updates contacts the CRM
	// holds (at most MaxBatch), once per batch, as Encode does: it writes
	// only each update's Fields, clears those whose value is empty, and
	// must never create a contact.
	EncodeUpdate(updates []Update) *WriteRequest
	// WriteUpdate sends it and returns one result per update, in order:
	// StatusUpdated with the CRM id, or StatusRejected with the CRM's code
	// (CodeNotFound, or the CRM's own, for an id it no longer holds). An
	// update is resend-safe: the daemon resends the same bytes after an
	// ambiguous answer. Errors are *Error, classified as for Write.
	WriteUpdate(ctx context.Context, req *WriteRequest) (*BatchResponse, error)
	// Read returns, for each external id (at most MaxBatch), the CRM ids
	// holding it, in order. It must never read an error as "not found".
	Read(ctx context.Context, ids []string) ([][]string, error)
	// Ping checks that the CRM answers and accepts the daemon's
	// credentials.
	Ping(ctx context.Context) error
}

// WriteRequest is an encoded batch write.
type WriteRequest struct {
	Body []byte
	Key  string   // Idempotency-Key, where the CRM takes one
	Keys []string // the external ids of the batch, in order
	IDs  []string // an update batch's CRM ids, in order
}

// Generic is the connector of our own API (docs/crm-api.md).
func Generic(c *Client) Connector { return generic{c} }

type generic struct{ c *Client }

func (g generic) MaxBatch() int { return MaxBatch }

func (g generic) Encode(contacts []contact.Contact) *WriteRequest {
	// A fresh buffer per batch, not a pooled one: net/http's write loop may
	// still be reading the body after RoundTrip returned on an early answer
	// (401, 413, 429), so the bytes must not be reused.
	body := AppendBatchRequest(nil, contacts)
	return &WriteRequest{Body: body, Key: IdempotencyKey(body)}
}

func (g generic) Write(ctx context.Context, req *WriteRequest) (*BatchResponse, error) {
	resp, _, err := g.c.CreateBatch(ctx, req.Body, req.Key)
	return resp, err
}

func (g generic) EncodeUpdate(updates []Update) *WriteRequest {
	body := AppendUpdateRequest(nil, updates)
	keys := make([]string, len(updates))
	for i := range updates {
		keys[i] = updates[i].Contact.ExternalID
	}
	return &WriteRequest{Body: body, Key: IdempotencyKey(body), Keys: keys, IDs: UpdateIDs(updates)}
}

// UpdateIDs are the CRM ids of updates, in order.
func UpdateIDs(updates []Update) []string {
	ids := make([]string, len(updates))
	for i := range updates {
		ids[i] = updates[i].CRMID
	}
	return ids
}

func (g generic) WriteUpdate(ctx context.Context, req *WriteRequest) (*BatchResponse, error) {
	resp, _, err := g.c.UpdateBatch(ctx, req.Body, req.Key)
	if err != nil {
		return nil, err
	}
	for i := range resp.Results {
		r := &resp.Results[i]
		r.Gone = r.Status == StatusRejected && r.Error != nil && r.Error.Code == CodeNotFound
	}
	return resp, nil
}

func (g generic) Read(ctx context.Context, ids []string) ([][]string, error) {
	res, err := g.c.LookupBatch(ctx, ids)
	if err != nil {
		return nil, err
	}
	found := make([][]string, len(ids))
	for j := range res {
		for _, c := range res[j].Contacts {
			found[j] = append(found[j], c.ID)
		}
	}
	return found, nil
}

func (g generic) Ping(ctx context.Context) error { return g.c.Ping(ctx) }
