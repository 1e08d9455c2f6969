// Package crmrpc is the net/rpc contract between csvreader and
// crmintegrator: the service and method names, the argument and reply types,
// and the outcome codes. It also holds the Client readers use to call the
// daemon.
//
// The contract is versioned by service name. A change that old readers could
// not decode gets a new service name (IntegratorV2) served beside the old one;
// fields may be added to these types because gob ignores unknown fields.
package crmrpc

import (
	"fmt"
	"time"

	"crmsync/shared/contact"
)

// ServiceV1 is the net/rpc service name of version 1 of the contract.
const ServiceV1 = "IntegratorV1"

// Method names, as passed to rpc.Client.Call.
const (
	MethodHello   = ServiceV1 + ".Hello"
	MethodDeliver = ServiceV1 + ".Deliver"
	MethodLookup  = ServiceV1 + ".Lookup"
)

// DefaultMaxRecords is how many records one Deliver call may carry unless
// the daemon is configured otherwise; Hello reports the daemon's limit.
const DefaultMaxRecords = 1000

// HelloArgs asks the daemon who it is and what it accepts.
type HelloArgs struct {
	Token string // shared RPC token, when the daemon requires one
}

// HelloReply describes the daemon.
type HelloReply struct {
	Err           *Error
	Version       string
	MaxRecords    int  // most records one Deliver or Lookup call may carry
	MaxFieldBytes int  // longest field, in bytes, a record may carry
	Idempotency   bool // the daemon trusts the CRM's Idempotency-Key replays
	// CallTimeout is the longest a Deliver call should take (the daemon's
	// call budget plus one CRM timeout); a client's call timeout should be
	// longer. Zero from daemons that predate the field.
	CallTimeout time.Duration
	// PackedRecords is the newest version of the packed records encoding
	// (DeliverArgs.Packed) the daemon reads; zero from daemons that predate
	// it, which must be sent Records.
	PackedRecords int
	// API names the CRM's API the daemon speaks ("generic", "hubspot").
	API string
	// Fields, when not nil, are the CRM fields a record's attributes may
	// go to (HubSpot: the account's contact properties). A reader refuses,
	// before sending anything, an export with an attribute column the CRM
	// has no field for: the CRM would refuse every batch. Nil: any.
	Fields []string
	// Instance names this daemon process: random, new at every start. A
	// reader records the instances it sent calls to, so that a run taking
	// its records over knows whether its own daemon is the one that may
	// still be working on them. Empty from daemons that predate it.
	Instance string
	// Updates says the daemon takes update records (Record.CRMID). A
	// daemon that predates them would ignore CRMID and create a
	// duplicate, so the Client refuses to send it a block holding one.
	Updates bool
}

// Record is one contact to create, or to update, in the CRM.
type Record struct {
	Contact contact.Contact
	// MaybeSent says an earlier attempt may already have created this
	// contact (a crashed run, an ambiguous answer). The daemon then looks
	// the external id up in the CRM before it creates anything.
	MaybeSent bool
	// CRMID, when set, makes the record an update of the CRM's contact of
	// that id (the one the reader's ledger holds for the key). The daemon
	// writes the fields named in Fields and never creates a contact for
	// it. An update is resend-safe, so MaybeSent means nothing for it.
	// Contact is then the whole contact as it will be once updated.
	CRMID string
	// Fields, with CRMID: the names of the fields to write (a name of
	// contact.Fields, or contact.AttributePrefix and an attribute's name),
	// with their values in Contact; an empty value clears the field.
	Fields []string
}

// IsUpdate reports whether the record updates a contact the CRM holds.
func (r *Record) IsUpdate() bool { return r.CRMID != "" }

// GobRecord is a Record as gob carries it in DeliverArgs.Records, to a
// daemon that predates packed records: its attributes a map, as
// contact.Contact held them then. gob matches a struct by its fields'
// names and kinds, and a map does not decode into a slice.
type GobRecord struct {
	Contact   GobContact
	MaybeSent bool
	CRMID     string
	Fields    []string
}

// GobContact is a contact.Contact as GobRecord carries it.
type GobContact struct {
	ExternalID, Email, FirstName, LastName, Phone string
	Attributes                                    map[string]string
}

// GobRecords returns recs as DeliverArgs.Records carries them.
func GobRecords(recs []Record) []GobRecord {
	out := make([]GobRecord, len(recs))
	for i := range recs {
		r, c := &recs[i], &recs[i].Contact
		out[i] = GobRecord{Contact: GobContact{c.ExternalID, c.Email, c.FirstName, c.LastName, c.Phone, c.Attributes.Map()},
			MaybeSent: r.MaybeSent, CRMID: r.CRMID, Fields: r.Fields}
	}
	return out
}

// Record returns the Record g carries.
func (g *GobRecord) Record() Record {
	c := &g.Contact
	return Record{Contact: contact.Contact{ExternalID: c.ExternalID, Email: c.Email, FirstName: c.FirstName, LastName: c.LastName,
		Phone: c.Phone, Attributes: contact.AttrsOf(c.Attributes)}, MaybeSent: g.MaybeSent, CRMID: g.CRMID, Fields: g.Fields}
}

// DeliverArgs carries a block of records, either as Records or, to a
// daemon whose Hello reported PackedRecords, as Packed. A call with both is
// refused (CodeMalformedCall).
type DeliverArgs struct {
	Token   string
	Records []GobRecord
	// Packed is the records in the packed encoding (packed.go,
	// AppendPackedRecords), which costs a fraction of gob's to encode and
	// to decode. A daemon that predates it would ignore it and see an
	// empty call. A string, not a []byte: gob then decodes it with the one
	// allocation that all the block's fields share.
	Packed string
	// PackedVerdicts asks for the verdicts as DeliverReply.PackedVerdicts.
	// A daemon that predates it ignores it and answers Verdicts.
	PackedVerdicts bool
	// VerdictsVersion is the newest packed verdicts version the caller
	// reads (0: 1). A daemon answers the newest both read.
	VerdictsVersion int
}

// DeliverReply holds one verdict per record, in the order of the records.
// When Err is set the call as a whole failed and Verdicts is empty.
type DeliverReply struct {
	Err      *Error
	Verdicts []Verdict
	// PackedVerdicts is Verdicts in the packed encoding (verdicts.go),
	// answered instead of Verdicts when the call asked for it: a fraction
	// of gob's cost to encode and to decode.
	PackedVerdicts string
	// PackedRecords is HelloReply.PackedRecords, repeated so that a client
	// learns it on a connection it sent no Hello on (after a redial).
	PackedRecords int
	// Instance is HelloReply.Instance, repeated for the same reason.
	Instance string
	// Updates is HelloReply.Updates, repeated for the same reason.
	Updates bool
	// CallTimeout is HelloReply.CallTimeout, repeated for the same reason:
	// a client must know how long a call that breaks may still run.
	CallTimeout time.Duration
	// Lookups is how many external ids the daemon looked up in the CRM for
	// this call (records sent with MaybeSent, or after an ambiguous
	// answer): for progress and recovery figures.
	Lookups int
}

// Outcome is what happened to one record.
type Outcome uint8

const (
	// Delivered: the CRM holds the contact; CRMID is its id.
	Delivered Outcome = iota + 1
	// Retry: the CRM did not create the contact (or, with Ambiguous, may
	// have); send it again no sooner than RetryAfter.
	Retry
	// Rejected: the CRM refused the contact for good; Code and Message say
	// why. Sending it again unchanged is pointless.
	Rejected
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Retry:
		return "retry"
	case Rejected:
		return "rejected"
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Verdict is the daemon's answer for one record.
type Verdict struct {
	Outcome    Outcome
	CRMID      string        // Delivered: the CRM's id for the contact
	RetryAfter time.Duration // Retry: the earliest moment to send again
	// Ambiguous, with Retry: an attempt may have created the contact and the
	// daemon could not tell. Resend with Record.MaybeSent set.
	Ambiguous bool
	Code      string // Rejected, and Retry for diagnostics: a stable code
	Message   string // human readable, never a secret
	// NotAttempted, with Retry: no request that could create the record
	// reached the CRM in this call (the call's bound ran out before its
	// turn, the circuit was open, the CRM answered 429, or another call
	// held it). The attempt need not count against the caller's limit.
	NotAttempted bool
	// CRMRetryAfter, with Retry: RetryAfter is the wait the CRM itself
	// asked for (its Retry-After), not the daemon's guess. The caller
	// waits that long and no longer: backing off further would only idle
	// a CRM that said when it is ready. (Packed verdicts version 2.)
	CRMRetryAfter bool
}

// LookupArgs asks which of these external ids the CRM holds.
type LookupArgs struct {
	Token       string
	ExternalIDs []string
}

// LookupReply holds one result per external id, in order.
type LookupReply struct {
	Err     *Error
	Results []LookupResult
}

// LookupResult lists the CRM ids holding one external id: none, one, or
// more than one when duplicates were created before this tool was used.
type LookupResult struct {
	ExternalID string
	CRMIDs     []string
}

// Error is a failure of a whole call. Errors cross net/rpc as strings, so
// the reply carries it with a machine-readable code instead.
type Error struct {
	Code    string
	Message string
	// RetryAfter, with CodeCRMUnavailable: call again no sooner than this.
	RetryAfter time.Duration
}

// Call error codes.
const (
	// ErrUnauthorized: the RPC token is missing or wrong. Fatal.
	CodeUnauthorized = "unauthorized"
	// The CRM refused the daemon's credentials (HTTP 401). Fatal: the
	// operator must fix the daemon's configuration.
	CodeCRMUnauthorized = "crm_unauthorized"
	// Too many records in one call, or a field too large. Fatal for the call.
	CodeTooManyRecords = "too_many_records"
	CodeFieldTooLarge  = "field_too_large"
	// The call's arguments cannot be decoded (corrupt packed records, or
	// both Records and Packed). Fatal: a client bug.
	CodeMalformedCall = "malformed_call"
	// The daemon is shutting down; call again (another address, or later).
	CodeShuttingDown = "shutting_down"
	// CodeQuotaExhausted, as a Retry verdict's Code: the CRM's daily
	// allocation is spent (or below the reserve the operator keeps);
	// RetryAfter says when it comes back. Nothing was created. A reader
	// stops cleanly and tells the operator to rerun after that.
	CodeQuotaExhausted = "crm_quota_exhausted"
	// CodeDaemonPredatesUpdates: the client refused, before sending
	// anything, a block holding updates for a daemon that did not say it
	// takes them. Fatal: the operator must upgrade crmintegrator.
	CodeDaemonPredatesUpdates = "daemon_predates_updates"
	// The CRM did not answer a Lookup in time (down, rate limited, circuit
	// open); call again after Error.RetryAfter. Not fatal.
	CodeCRMUnavailable = "crm_unavailable"
)

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Fatal reports whether retrying the same call cannot succeed until an
// operator changes something.
func (e *Error) Fatal() bool {
	return e.Code != CodeShuttingDown && e.Code != CodeCRMUnavailable
}
