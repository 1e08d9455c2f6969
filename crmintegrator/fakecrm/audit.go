package fakecrm

import "sync/atomic"

// Audit is what the CRM saw and did since start or Reset. Contact figures
// are taken together under the store's lock, so they agree with each other
// even while requests run.
type Audit struct {
	// Requests counts /v1 requests, whatever their answer.
	Requests int64 `json:"requests"`
	// Creates counts contacts created since start or Reset; Contacts
	// counts contacts held, including those loaded from the state file.
	Creates  int64 `json:"creates"`
	Contacts int64 `json:"contacts"`
	// DistinctExternalIDs counts external ids held; DuplicateContacts is
	// Contacts minus DistinctExternalIDs: every contact beyond the first
	// for its external id. Under the HubSpot API the external id is the
	// id property's value; contacts without one are counted in
	// ContactsWithoutKey, not as duplicates.
	DistinctExternalIDs int64 `json:"distinct_external_ids"`
	DuplicateContacts   int64 `json:"duplicate_contacts"`
	ContactsWithoutKey  int64 `json:"contacts_without_key,omitempty"`
	// Updates counts contacts updated since start or Reset (every API's
	// update: a batch update entry, an upsert that found the contact).
	Updates int64 `json:"updates"`
	// IdempotentReplays counts responses replayed for a repeated key.
	IdempotentReplays int64 `json:"idempotent_replays"`
	// RateLimited counts 429s; Failed counts 503s (fail-rate and down);
	// Ambiguous counts POSTs that did their work (created, or found a
	// response to replay) and then answered 500, 502 or 504 or dropped the
	// connection.
	RateLimited int64 `json:"rate_limited"`
	Failed      int64 `json:"failed"`
	Ambiguous   int64 `json:"ambiguous"`
	// ResponsesByStatus counts /v1 responses by HTTP status. Dropped and
	// reset connections have no status and are counted in Dropped.
	ResponsesByStatus map[int]int64 `json:"responses_by_status"`
	Dropped           int64         `json:"dropped"`
}

// counters are the audit's request counters, lock-free for the hot path.
type counters struct {
	requests, replays, rateLimited, failed, ambiguous, dropped, updates atomic.Int64
	byStatus                                                            [600]atomic.Int64
}

func (c *counters) status(code int) {
	if code >= 0 && code < len(c.byStatus) {
		c.byStatus[code].Add(1)
	}
}

func (c *counters) reset() {
	for _, v := range []*atomic.Int64{&c.requests, &c.replays, &c.rateLimited, &c.failed, &c.ambiguous, &c.dropped, &c.updates} {
		v.Store(0)
	}
	for i := range c.byStatus {
		c.byStatus[i].Store(0)
	}
}

// Audit returns the counters, as GET /admin/audit does.
func (s *Server) Audit() Audit {
	creates, contacts, distinct := s.store.counts()
	var unkeyed int64
	if s.hs != nil {
		var keyed int64
		creates, contacts, distinct, keyed = s.hs.store.counts()
		unkeyed = contacts - keyed
	}
	if s.sf != nil {
		var keyed int64
		creates, contacts, distinct, keyed = s.sf.store.counts()
		unkeyed = contacts - keyed
	}
	a := Audit{
		Requests:            s.audit.requests.Load(),
		Creates:             creates,
		Contacts:            contacts,
		DistinctExternalIDs: distinct,
		DuplicateContacts:   contacts - unkeyed - distinct,
		ContactsWithoutKey:  unkeyed,
		Updates:             s.audit.updates.Load(),
		IdempotentReplays:   s.audit.replays.Load(),
		RateLimited:         s.audit.rateLimited.Load(),
		Failed:              s.audit.failed.Load(),
		Ambiguous:           s.audit.ambiguous.Load(),
		Dropped:             s.audit.dropped.Load(),
		ResponsesByStatus:   make(map[int]int64),
	}
	for code := range s.audit.byStatus {
		if n := s.audit.byStatus[code].Load(); n > 0 {
			a.ResponsesByStatus[code] = n
		}
	}
	return a
}
