package integrator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/backoff"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// Codes of Retry and Rejected verdicts the daemon makes up itself (the
// others are the CRM's and contact's codes).
const (
	CodeRateLimited     = "crm_rate_limited"
	CodeUnavailable     = "crm_unavailable"
	CodeAmbiguous       = "crm_ambiguous"
	CodeCircuitOpen     = "crm_circuit_open"
	CodeUnexpected      = "crm_unexpected_answer"
	CodeContactTooLarge = "contact_too_large"
	CodeShuttingDown    = "shutting_down"
	// CodeNoTime: the call's bound ran out before these records' turn (a
	// CRM slot, the rate limit, a lookup); they are answered Retry rather
	// than keep the caller waiting past the bound Hello advertises.
	CodeNoTime = "call_budget_spent"
	// CodeInFlight: another call of this daemon is still working on the
	// record; Retry after that call's bound.
	CodeInFlight = "record_in_flight"
)

// errCircuitOpen is what crmDo returns when the breaker refuses a request.
type errCircuitOpen struct{ wait time.Duration }

func (e *errCircuitOpen) Error() string {
	return fmt.Sprintf("crm circuit breaker open for %v", e.wait.Round(time.Millisecond))
}

// errNoTime is what crmDo returns when a request could not start before its
// call's cutoff: waiting for a slot or for the rate limiter would have run
// past it. Nothing was sent; wait is the best guess of how long until it
// could be.
type errNoTime struct {
	wait time.Duration
	why  string
	code string // the verdict code: CodeNoTime, or CodeRateLimited when a 429's pause is why
}

func (e *errNoTime) Error() string {
	return fmt.Sprintf("the call's time ran out before a CRM request could start (%s)", e.why)
}

// errQuota is what crmDo returns while the CRM's daily allocation is
// spent: nothing is sent until it comes back.
type errQuota struct {
	until time.Time
	why   string // the CRM's or the connector's words; may be empty
}

func (e *errQuota) Error() string {
	msg := "the CRM's daily request allocation is spent until " + e.until.UTC().Format(time.RFC3339)
	if e.why != "" {
		msg += ": " + e.why
	}
	return msg
}

// crmDo runs one CRM request through the in-flight limit, the rate limiter
// and the breaker, and feeds its outcome back to them. The request starts
// only before cutoff, and every wait before it ends by then: the request
// then ends, by the CRM client's own timeout, within the call's bound.
func (s *Server) crmDo(ctx context.Context, cutoff time.Time, fn func(context.Context) error) error {
	if until, spent := s.quota.spentUntil(time.Now()); spent {
		return &errQuota{until, s.quota.reason()}
	}
	if open, wait := s.breaker.Open(); open {
		return &errCircuitOpen{wait} // fail fast rather than queue for a slot
	}
	wctx, cancel := context.WithDeadline(ctx, cutoff)
	defer cancel()
	// The in-flight slot first, then the pace: a request that got its pace
	// slot before a 429 paused everything must not go out after it.
	select {
	case s.sem <- struct{}{}:
	case <-wctx.Done():
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &errNoTime{wait: s.cfg.CRMTimeout / 4, why: "every CRM slot was busy"}
	}
	defer func() { <-s.sem }()
	if err := s.limiter.WaitUntil(wctx, cutoff); err != nil {
		var we *WaitError
		if errors.As(err, &we) {
			return &errNoTime{wait: we.Wait, why: "the rate limit's next slot", code: CodeRateLimited}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &errNoTime{wait: time.Second, why: "the rate limit's next slot"}
	}
	defer s.limiter.Done() // answered or not sent: either way no longer owed
	// Admission now, after the waits: a request queued while the breaker
	// tripped must not go out, and its ticket is of the generation it is
	// really sent in.
	ok, ticket, wait := s.breaker.Allow()
	if !ok {
		return &errCircuitOpen{wait}
	}
	result := ResultIgnore
	defer func() { s.breaker.Done(ticket, result) }()
	if err := ctx.Err(); err != nil {
		return err // abandoned while waiting: send nothing
	}
	if !time.Now().Before(cutoff) {
		return &errNoTime{wait: 100 * time.Millisecond, why: "the call's cutoff passed"}
	}
	start := time.Now()
	s.met.inflight.Add(1)
	err := fn(ctx)
	s.met.inflight.Add(-1)

	var ce *crmapi.Error
	errors.As(err, &ce)
	switch class := crmapi.ClassOf(err); {
	case ctx.Err() != nil && class == crmapi.ClassAmbiguous:
		// our own cancellation says nothing about the CRM
	case class == crmapi.ClassAmbiguous || class == crmapi.ClassUnavailable:
		result = ResultFailure
	case class == crmapi.ClassQuota:
		result = ResultSuccess
		until := time.Now().Add(ce.RetryAfter)
		if _, was := s.quota.spentUntil(time.Now()); !was {
			s.log.Warn("crm daily request allocation spent; sending nothing until it comes back", "until", until.UTC().Format(time.RFC3339))
		}
		s.quota.spend(until, ce.Message)
		s.met.quotaUntil.Store(until.Unix())
	case class == crmapi.ClassRateLimited:
		result = ResultSuccess
		ra := ce.RetryAfter
		if cut, rate := s.limiter.RateLimited(start, ra); cut {
			s.met.rateCuts.Add(1)
			s.log.Info("crm rate limited; slowing down", "retry_after", ra, "rate_per_second", roundRate(rate))
		}
	default:
		result = ResultSuccess
		if err == nil {
			s.limiter.Succeeded()
		}
	}
	return err
}

// The bound of a call. A call starts CRM requests until its cutoff,
// CallBudget after it arrived; each request ends within CRMTimeout; so the
// call answers within CallBudget + CRMTimeout. Hello advertises one more
// CRMTimeout as the margin for the answer's way back: CallTimeout.
func (s *Server) callTimeout() time.Duration { return s.cfg.CallBudget + 2*s.cfg.CRMTimeout }

// delivery is the state of one Deliver call.
type delivery struct {
	s        *Server
	ctx      context.Context // ends at the call's hard end, or when it fails as a whole
	cancel   context.CancelFunc
	cutoff   time.Time // no CRM request starts, and no wait ends, after this
	recs     []crmrpc.Record
	verdicts []crmrpc.Verdict
	maybe    []bool   // the CRM may hold this record already: look it up first
	sent     []bool   // a create carrying this record got an answer other than 429 in this call
	backlog  []bool   // counted in the recovery backlog gauge, not yet resolved
	hashes   []uint64 // each record's key hashed with the server's keySeed

	lookups atomic.Int64 // external ids looked up for this call

	failOnce sync.Once
	fail     *crmrpc.Error
}

// Deliver creates the records in the CRM, or updates those with a CRMID,
// and returns one verdict per record, in order, or a call-level error. It is what the Deliver RPC runs.
// It answers within the call's bound (callTimeout) whatever the CRM does:
// records it could not settle in time are answered Retry.
func (s *Server) Deliver(ctx context.Context, recs []crmrpc.Record) ([]crmrpc.Verdict, *crmrpc.Error) {
	v, _, err := s.deliverCall(ctx, recs, false)
	return v, err
}

// deliverCall is Deliver, also reporting how many external ids it looked
// up. checked: every string of recs is known to be valid UTF-8.
func (s *Server) deliverCall(ctx context.Context, recs []crmrpc.Record, checked bool) ([]crmrpc.Verdict, int, *crmrpc.Error) {
	arrived := time.Now()
	if len(recs) > s.cfg.MaxRecords {
		return nil, 0, &crmrpc.Error{Code: crmrpc.CodeTooManyRecords,
			Message: fmt.Sprintf("%d records in one call, at most %d allowed: send smaller blocks", len(recs), s.cfg.MaxRecords)}
	}
	for i := range recs {
		if n, what := longestUpdateLen(&recs[i]); n > s.cfg.MaxFieldBytes {
			return nil, 0, &crmrpc.Error{Code: crmrpc.CodeFieldTooLarge,
				Message: fmt.Sprintf("record %d: %s has %d bytes, at most %d allowed", i, what, n, s.cfg.MaxFieldBytes)}
		}
		if longestFieldLen(&recs[i].Contact) > s.cfg.MaxFieldBytes {
			field, n := longestField(&recs[i].Contact) // named only on the error path
			return nil, 0, &crmrpc.Error{Code: crmrpc.CodeFieldTooLarge,
				Message: fmt.Sprintf("record %d: field %s has %d bytes, at most %d allowed", i, field, n, s.cfg.MaxFieldBytes)}
		}
	}
	d := &delivery{
		s:        s,
		recs:     recs,
		verdicts: make([]crmrpc.Verdict, len(recs)),
		maybe:    make([]bool, len(recs)),
		sent:     make([]bool, len(recs)),
		backlog:  make([]bool, len(recs)),
		cutoff:   arrived.Add(s.cfg.CallBudget),
	}
	end := d.cutoff.Add(s.cfg.CRMTimeout)
	d.ctx, d.cancel = context.WithDeadline(ctx, end)
	defer d.cancel()

	todo := make([]int, 0, len(recs))
	for i := range recs {
		validate := recs[i].Contact.Validate
		if checked {
			validate = recs[i].Contact.ValidateChecked
		}
		if p := validate(); p != nil {
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: p.Code, Message: p.Message}
			continue
		}
		if v, bad := checkUpdate(&recs[i]); bad {
			d.verdicts[i] = v
			continue
		}
		todo = append(todo, i)
	}
	keys := make([]string, len(recs))
	for i := range recs {
		keys[i] = recs[i].Contact.ExternalID
	}
	d.hashes = keyHashes(s.keySeed, recs)
	// A key repeated within the call is sent once: creating it twice would
	// be the duplicate this daemon exists to prevent. The repeats get the
	// first's verdict. (Readers never send a key twice in a block.)
	var repeats [][2]int // {repeat, first}
	if len(todo) > 1 {
		todo, repeats = firstOfEach(keys, d.hashes, todo)
	}
	// Keys another live call of this process is working on wait for it.
	hold := &callHold{until: end}
	todo, busy := s.holders.hold(hold, d.hashes, todo)
	defer s.holders.release(hold, d.hashes, todo)
	if len(busy) > 0 {
		s.met.overlapping.Add(int64(len(busy)))
		s.log.Warn("records arrived while another call of this daemon still holds them; answering retry", "records", len(busy))
		for i, until := range busy {
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: max(time.Until(until), minRetryWait),
				Ambiguous: true, NotAttempted: true, Code: CodeInFlight, Message: "another call of this daemon is still working on this record"}
		}
	}
	var backlog int64
	for _, i := range todo {
		if recs[i].IsUpdate() {
			continue // resend-safe: nothing to resolve, never a create
		}
		if recs[i].MaybeSent {
			d.maybe[i], d.backlog[i] = true, true
			backlog++
		} else if id, ok := s.fates.knownHashed(d.hashes[i], keys[i], 2*s.callTimeout()); ok {
			// A record sent as new whose contact this daemon saw the CRM
			// hold moments ago: a late call of a run whose claim was taken
			// over (the taker went first). Creating it would be a
			// duplicate. (Only moments ago: a contact deleted in the CRM
			// later and sent anew must be created again.)
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: id}
			s.met.lookupsSaved.Add(1)
		}
	}
	// A new slice: the deferred release above holds the old one.
	todo = slices.DeleteFunc(slices.Clone(todo), func(i int) bool { return d.verdicts[i].Outcome == crmrpc.Delivered })
	s.met.backlog.Add(backlog)
	defer d.clearBacklog()

	// Updates go in batches of their own: one CRM request either creates
	// or updates, never both.
	var creates, updates []int
	for _, i := range todo {
		if recs[i].IsUpdate() {
			updates = append(updates, i)
		} else {
			creates = append(creates, i)
		}
	}
	var wg sync.WaitGroup
	for _, kind := range [...]struct {
		idx []int
		run func([]int)
	}{{creates, d.runChunk}, {updates, d.runUpdate}} {
		for rest := kind.idx; len(rest) > 0; {
			n := min(len(rest), s.cfg.MaxBatch)
			chunk := rest[:n:n]
			rest = rest[n:]
			wg.Go(func() { kind.run(chunk) })
		}
	}
	wg.Wait()
	for _, r := range repeats {
		d.verdicts[r[0]] = d.verdicts[r[1]]
	}
	lookups := int(d.lookups.Load())
	if d.fail != nil {
		return nil, lookups, d.fail
	}
	s.met.countVerdicts(recs, d.verdicts)
	return d.verdicts, lookups, nil
}

// resolved takes record i out of the recovery backlog.
func (d *delivery) resolved(i int) {
	if d.backlog[i] {
		d.backlog[i] = false
		d.s.met.backlog.Add(-1)
	}
}

func (d *delivery) clearBacklog() {
	for i := range d.backlog {
		d.resolved(i)
	}
}

// longestFieldLen is the length in bytes of c's longest field, attribute
// names included. It runs on every record, so it allocates nothing.
func longestFieldLen(c *contact.Contact) int {
	n := max(len(c.ExternalID), len(c.Email), len(c.FirstName), len(c.LastName), len(c.Phone))
	for _, a := range c.Attributes {
		n = max(n, len(a.Name), len(a.Value))
	}
	return n
}

// longestUpdateLen is the length of an update's longest CRM id or field
// name, and what it is.
func longestUpdateLen(r *crmrpc.Record) (int, string) {
	n, what := len(r.CRMID), "the crm id"
	for _, f := range r.Fields {
		if len(f) > n {
			n, what = len(f), "a field name"
		}
	}
	return n, what
}

// longestField names c's longest field and gives its length.
func longestField(c *contact.Contact) (string, int) {
	name, n := "external_id", len(c.ExternalID)
	for _, f := range []struct {
		name string
		v    string
	}{{"email", c.Email}, {"first_name", c.FirstName}, {"last_name", c.LastName}, {"phone", c.Phone}} {
		if len(f.v) > n {
			name, n = f.name, len(f.v)
		}
	}
	for _, a := range c.Attributes {
		if len(a.Name) > n {
			name, n = "attribute name", len(a.Name)
		}
		if len(a.Value) > n {
			name, n = "attribute "+a.Name, len(a.Value)
		}
	}
	return name, n
}

// failCall ends the whole call with a call-level error.
func (d *delivery) failCall(e *crmrpc.Error) {
	d.failOnce.Do(func() {
		d.fail = e
		d.cancel()
	})
}

// roundFits tells whether another round of CRM requests may start, after
// done rounds and a wait, before a call's cutoff: the one budget rule of
// Deliver and Lookup.
func (s *Server) roundFits(done int, wait time.Duration, cutoff time.Time) bool {
	return done < s.cfg.MaxAttempts && !time.Now().Add(wait).After(cutoff) && !s.closing.Load()
}

// pause decides whether one more round fits into the call: a wait the
// call may sleep through (inCall: a 429's pause, or the wait before the
// same body's resend under its Idempotency-Key) no longer than
// MaxCallWait, and no other wait, unless MaxCallWait is negative; the
// attempt budget, the time budget, and the daemon not shutting down. If
// so it waits and returns true.
//
// A failed batch's wait (a 503's backoff or Retry-After, an ambiguous or
// unexpected answer, a failed lookup) is the caller's: its other
// batches are answered meanwhile, the worker sends the next block, and
// only the failed batch's records wait, in the reader. Slept in the call
// (up to 300 ms, as before), it held the whole block: make bench's flaky
// phase (10% 503s, 2% ambiguous, 5M rows) ran at 72–76% of the clean run
// against 83–89%. A 429's pause slows every call of the daemon anyway, so
// sleeping through a short one in the call costs the reader nothing. The
// one failure whose wait a call may sleep through is an ambiguous answer
// from a CRM that honours Idempotency-Key: only this call has the body
// whose resend settles it without a lookup.
func (d *delivery) pause(attempts *int, wait time.Duration, reason string, inCall bool) bool {
	if mw := d.s.cfg.MaxCallWait; mw >= 0 && (!inCall || wait > mw) {
		return false // the caller waits, not the call
	}
	if !d.s.roundFits(*attempts+1, wait, d.cutoff) {
		return false
	}
	*attempts++
	d.s.met.retry(reason)
	return backoff.Sleep(d.ctx, nil, wait) == nil
}

// reasonRateLimited is the retry reason of a 429's pause, which a call may
// sleep through (pause).
const reasonRateLimited = "rate_limited"

// minRetryWait is the shortest wait a Retry verdict of this daemon asks
// for: sooner would only spin a reader against a CRM not ready yet.
const minRetryWait = 100 * time.Millisecond

// retryLater answers Retry for the records; those that may be in the CRM
// already are marked Ambiguous, and those no create reached the CRM for in
// this call NotAttempted.
func (d *delivery) retryLater(idx []int, wait time.Duration, code, msg string) {
	wait = max(wait, minRetryWait)
	if d.s.closing.Load() && code != CodeCircuitOpen {
		code, msg = CodeShuttingDown, "the daemon is shutting down"
	}
	for _, i := range idx {
		d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: wait, Ambiguous: d.maybe[i],
			NotAttempted: !d.sent[i], Code: code, Message: msg}
	}
}

// quotaSpent answers the records with the daily-quota verdict: nothing
// was created for them, and nothing is sent until until.
func (d *delivery) quotaSpent(idx []int, until time.Time, why string) {
	msg := "the CRM's daily request allocation is spent; it comes back at " + until.UTC().Format(time.RFC3339)
	if why != "" {
		msg += ": " + why
	}
	for _, i := range idx {
		d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: max(time.Until(until), time.Second), Ambiguous: d.maybe[i],
			NotAttempted: !d.sent[i], Code: crmrpc.CodeQuotaExhausted, Message: msg}
	}
}

// outOfTime answers Retry for records whose turn the call's bound did not
// reach: nothing more was sent for them.
func (d *delivery) outOfTime(idx []int, err *errNoTime) {
	d.s.met.retry("no_time")
	d.retryLater(idx, err.wait, cmp.Or(err.code, CodeNoTime), err.Error())
}

func newBackoff() backoff.Backoff {
	return backoff.Backoff{Base: 200 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.3}
}

// runChunk delivers the records idx (at most MaxBatch of them). It never
// sends a body that could create a record the CRM may already hold: such
// records (d.maybe) are looked up first, except that with Idempotency the
// very same body is resent under the very same key.
func (d *delivery) runChunk(idx []int) {
	bo := newBackoff()
	attempts := 0
	for len(idx) > 0 {
		if d.ctx.Err() != nil {
			d.retryLater(idx, bo.Next(), CodeShuttingDown, "call abandoned")
			return
		}
		// Resolve records that may already exist.
		rest, failed := d.resolve(idx)
		idx = rest
		if failed != nil {
			var nt *errNoTime
			if errors.As(failed, &nt) {
				d.outOfTime(idx, nt)
				return
			}
			wait, code, msg := d.s.lookupFailure(failed)
			if code == crmrpc.CodeCRMUnauthorized {
				d.failCall(&crmrpc.Error{Code: code, Message: msg})
				return
			}
			wait = max(wait, bo.Next())
			if !d.pause(&attempts, wait, "lookup", code == CodeRateLimited) {
				d.retryLater(idx, wait, code, msg)
				return
			}
			continue
		}
		if len(idx) == 0 {
			return
		}
		again, split := d.create(idx, &attempts, &bo)
		if split {
			h := len(idx) / 2
			d.runChunk(idx[:h])
			d.runChunk(idx[h:])
			return
		}
		if !again {
			return
		}
	}
}

// create sends idx as one batch, resending it unchanged while that is safe.
// again asks the caller to resolve and try again (after an ambiguous answer
// without idempotency); split asks it to halve the batch (413).
func (d *delivery) create(idx []int, attempts *int, bo *backoff.Backoff) (again, split bool) {
	s := d.s
	contacts := make([]contact.Contact, len(idx))
	for j, i := range idx {
		contacts[j] = d.recs[i].Contact
	}
	req := s.crm.Encode(contacts)
	for {
		var resp *crmapi.BatchResponse
		err := s.crmDo(d.ctx, d.cutoff, func(ctx context.Context) (err error) {
			resp, err = s.crm.Write(ctx, req)
			if c := crmapi.ClassOf(err); c != crmapi.ClassRateLimited && c != crmapi.ClassQuota {
				for _, i := range idx {
					d.sent[i] = true
				}
			}
			return err
		})
		if err == nil {
			d.apply(idx, resp)
			return false, false
		}
		var open *errCircuitOpen
		if errors.As(err, &open) {
			d.retryLater(idx, open.wait, CodeCircuitOpen, "the CRM is failing; the daemon pauses calling it")
			return false, false
		}
		var nt *errNoTime
		if errors.As(err, &nt) {
			d.outOfTime(idx, nt)
			return false, false
		}
		var eq *errQuota
		if errors.As(err, &eq) {
			d.quotaSpent(idx, eq.until, eq.why)
			return false, false
		}
		var ce *crmapi.Error
		if !errors.As(err, &ce) { // our context: the call was abandoned
			// An earlier ambiguous answer has already marked idx maybe-sent.
			d.retryLater(idx, bo.Next(), CodeShuttingDown, "call abandoned")
			return false, false
		}
		if d.ctx.Err() != nil {
			// The request was cut by the call's end: what it did is unknown.
			d.markMaybe(idx)
			d.retryLater(idx, bo.Next(), CodeAmbiguous, "the call's bound cut a CRM request short; resend with MaybeSent")
			return false, false
		}
		var wait time.Duration
		var reason, code string
		crmSaid := false // wait is the CRM's own Retry-After
		switch ce.Class {
		case crmapi.ClassRejected:
			s.log.Warn("crm rejected a batch", "status", ce.Status, "code", ce.Code, "message", ce.Message, "contacts", len(idx))
			for _, i := range idx {
				d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: cmp.Or(ce.Code, "crm_status_"+fmt.Sprint(ce.Status)), Message: ce.Message}
				d.resolved(i)
			}
			return false, false
		case crmapi.ClassQuota:
			d.quotaSpent(idx, time.Now().Add(ce.RetryAfter), ce.Message)
			return false, false
		case crmapi.ClassSplit:
			// The batch was refused for what some records hold (an email
			// another contact has): halve it until the culprits stand alone,
			// so the others are delivered and only they are rejected.
			if len(idx) == 1 {
				d.verdicts[idx[0]] = crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: cmp.Or(ce.Code, "crm_status_"+fmt.Sprint(ce.Status)), Message: ce.Message}
				d.resolved(idx[0])
				return false, false
			}
			s.met.retry("split")
			return false, true
		case crmapi.ClassTooLarge:
			if len(idx) == 1 {
				d.verdicts[idx[0]] = crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: CodeContactTooLarge, Message: "the CRM refuses this contact as too large: " + ce.Message}
				d.resolved(idx[0])
				return false, false
			}
			s.met.retry("split")
			return false, true
		case crmapi.ClassUnauthorized:
			s.log.Error("crm refused the daemon's credentials; fix -crm-token", "status", ce.Status, "code", ce.Code, "message", ce.Message)
			d.failCall(&crmrpc.Error{Code: crmrpc.CodeCRMUnauthorized,
				Message: unauthorized(ce) + "; records of this call may have been created, resend them with MaybeSent"})
			return false, false
		case crmapi.ClassRateLimited:
			wait, reason, code = rateLimitWait(ce), reasonRateLimited, CodeRateLimited
		case crmapi.ClassUnavailable:
			wait, reason, code = bo.Next(), "unavailable", CodeUnavailable
			if ce.RetryAfter > 0 {
				wait, crmSaid = ce.RetryAfter, true
			}
		case crmapi.ClassInProgress:
			// The same body is being processed right now: it may create
			// these contacts, so only the same key may be sent again.
			d.markMaybe(idx)
			wait, reason, code = 250*time.Millisecond, "in_progress", CodeAmbiguous
			if ce.RetryAfter > 0 {
				wait = ce.RetryAfter
			}
		case crmapi.ClassAmbiguous:
			d.markMaybe(idx)
			wait, reason, code = bo.Next(), "ambiguous", CodeAmbiguous
			s.log.Warn("crm answer ambiguous; resolving before any resend", "status", ce.Status, "error", ce.Message,
				"contacts", len(idx), "resolve", map[bool]string{true: "resend the same", false: "lookup"}[s.resendSafe])
			if !s.resendSafe {
				if !d.pause(attempts, wait, reason, false) {
					d.retryLater(idx, wait, code, "the CRM may have created these contacts; resend with MaybeSent")
					return false, false
				}
				return true, false // look them up, create the rest
			}
		default: // ClassUnexpected
			s.log.Warn("unexpected crm answer; check -crm-url", "status", ce.Status, "code", ce.Code)
			wait, reason, code = bo.Next(), "unexpected", CodeUnexpected
		}
		// With a CRM that honours Idempotency-Key (not an upsert, which
		// any later call resends as safely), resending this very body
		// settles an ambiguous answer without a lookup; a later call's
		// batch is another body.
		sameBody := s.resendSafe && !s.upsert && (ce.Class == crmapi.ClassAmbiguous || ce.Class == crmapi.ClassInProgress)
		if !d.pause(attempts, wait, reason, reason == reasonRateLimited || sameBody) {
			d.retryLater(idx, wait, code, ce.Error())
			if crmSaid && wait >= minRetryWait { // retryLater's floor did not change it
				for _, i := range idx {
					d.verdicts[i].CRMRetryAfter = true
				}
			}
			return false, false
		}
	}
}

func (d *delivery) markMaybe(idx []int) {
	for _, i := range idx {
		d.maybe[i] = true
	}
}

// apply turns a 200 answer into verdicts.
func (d *delivery) apply(idx []int, resp *crmapi.BatchResponse) {
	if len(resp.Results) != len(idx) {
		d.s.log.Error("crm answered a batch with the wrong number of results", "want", len(idx), "got", len(resp.Results))
	}
	now := time.Now().UnixNano()
	for j, i := range idx {
		var r *crmapi.BatchResult
		if j < len(resp.Results) {
			r = &resp.Results[j]
		}
		switch {
		case r == nil || (r.ExternalID != "" && r.ExternalID != d.recs[i].Contact.ExternalID):
			d.maybe[i] = true
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: time.Second, Ambiguous: true, Code: CodeUnexpected, Message: "the CRM's answer does not match the batch"}
		case r.Status == crmapi.StatusCreated:
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: r.ID}
			d.s.fates.rememberHashed(now, d.hashes[i], d.recs[i].Contact.ExternalID, r.ID)
			d.resolved(i)
		case r.Status == crmapi.StatusRejected:
			v := crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: "rejected"}
			if r.Error != nil {
				v.Code, v.Message = r.Error.Code, r.Error.Message
			}
			d.verdicts[i] = v
			d.resolved(i)
		default:
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: time.Second, Ambiguous: true, Code: CodeUnexpected, Message: "unknown result status " + r.Status}
		}
	}
}

// resolve settles the records of idx that may already be in the CRM: from
// what this process already knows, else with one batch lookup (idx holds at
// most MaxBatch records). Found ones are Delivered with the first CRM id;
// not found ones lose the mark. It returns the records still to create, and
// the lookup's error, if it failed: those records keep the mark, and
// nothing of idx may be created in this round, to keep one request per
// batch.
func (d *delivery) resolve(idx []int) (rest []int, err error) {
	var look []int
	for _, i := range idx {
		if !d.maybe[i] {
			continue
		}
		if d.s.upsert {
			// An upsert by our key cannot create it twice: send it again.
			d.maybe[i] = false
			d.resolved(i)
			continue
		}
		if id, ok := d.s.fates.knownHashed(d.hashes[i], d.recs[i].Contact.ExternalID, 0); ok {
			d.deliveredFound(i, id)
			d.s.met.lookupsSaved.Add(1)
			continue
		}
		look = append(look, i)
	}
	if len(look) > 0 {
		ids := make([]string, len(look))
		for j, i := range look {
			ids[j] = d.recs[i].Contact.ExternalID
		}
		var found [][]string
		found, err = d.s.lookupBatch(d.ctx, d.cutoff, ids)
		if err == nil {
			d.lookups.Add(int64(len(ids)))
			now := time.Now().UnixNano()
			for j, i := range look {
				if len(found[j]) > 0 {
					d.deliveredFound(i, found[j][0])
					d.s.fates.rememberHashed(now, d.hashes[i], ids[j], found[j][0])
				} else {
					d.maybe[i] = false
					d.resolved(i)
				}
			}
		}
	}
	rest = idx[:0:0]
	for _, i := range idx {
		if d.verdicts[i].Outcome != crmrpc.Delivered {
			rest = append(rest, i)
		}
	}
	return rest, err
}

func (d *delivery) deliveredFound(i int, crmID string) {
	d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: crmID}
	d.maybe[i] = false
	d.resolved(i)
}

// rateLimitWait is how long records answered 429 wait: the CRM's word when
// it gives one (HubSpot's rolling window frees a slot in tens of
// milliseconds, and the hubspot client says so: a second would send those
// records back to the reader, whose resend waits longer still), a second
// when it does not, never less than a tenth of one.
func rateLimitWait(ce *crmapi.Error) time.Duration {
	if ce.RetryAfter <= 0 {
		return time.Second
	}
	return max(ce.RetryAfter, minRetryWait)
}

// lookupFailure turns a failed lookup into a wait, a code and a message.
func (s *Server) lookupFailure(err error) (time.Duration, string, string) {
	var open *errCircuitOpen
	if errors.As(err, &open) {
		return open.wait, CodeCircuitOpen, "the CRM is failing; the daemon pauses calling it"
	}
	var nt *errNoTime
	if errors.As(err, &nt) {
		return nt.wait, cmp.Or(nt.code, CodeNoTime), nt.Error()
	}
	var eq *errQuota
	if errors.As(err, &eq) {
		return max(time.Until(eq.until), time.Second), crmrpc.CodeQuotaExhausted, eq.Error()
	}
	var ce *crmapi.Error
	if !errors.As(err, &ce) {
		return time.Second, CodeShuttingDown, "call abandoned"
	}
	switch ce.Class {
	case crmapi.ClassQuota:
		return max(ce.RetryAfter, time.Second), crmrpc.CodeQuotaExhausted, ce.Error()
	case crmapi.ClassUnauthorized:
		s.log.Error("crm refused the daemon's credentials; fix -crm-token", "status", ce.Status, "code", ce.Code, "message", ce.Message)
		return 0, crmrpc.CodeCRMUnauthorized, unauthorized(ce)
	case crmapi.ClassRateLimited:
		return rateLimitWait(ce), CodeRateLimited, ce.Error()
	case crmapi.ClassUnavailable:
		return max(ce.RetryAfter, time.Second), CodeUnavailable, ce.Error()
	}
	return time.Second, CodeUnavailable, "lookup failed: " + ce.Error()
}

// lookupBatch looks up to MaxBatch external ids up in one CRM request.
// found[j] lists the CRM ids of ids[j].
func (s *Server) lookupBatch(ctx context.Context, cutoff time.Time, ids []string) (found [][]string, err error) {
	err = s.crmDo(ctx, cutoff, func(ctx context.Context) (err error) {
		found, err = s.crm.Read(ctx, ids)
		return err
	})
	if err == nil {
		s.met.lookups.Add(int64(len(ids)))
	}
	return found, err
}

// Lookup answers which CRM ids hold each external id, in batches of
// MaxBatch sent concurrently. It retries failed batches within the call's
// bound and otherwise fails the call with CodeCRMUnavailable and a
// RetryAfter.
func (s *Server) Lookup(ctx context.Context, ids []string) ([]crmrpc.LookupResult, *crmrpc.Error) {
	cutoff := time.Now().Add(s.cfg.CallBudget)
	if len(ids) > s.cfg.MaxRecords {
		return nil, &crmrpc.Error{Code: crmrpc.CodeTooManyRecords,
			Message: fmt.Sprintf("%d external ids in one call, at most %d allowed", len(ids), s.cfg.MaxRecords)}
	}
	for i, id := range ids {
		if len(id) > s.cfg.MaxFieldBytes {
			return nil, &crmrpc.Error{Code: crmrpc.CodeFieldTooLarge,
				Message: fmt.Sprintf("external id %d has %d bytes, at most %d allowed", i, len(id), s.cfg.MaxFieldBytes)}
		}
	}
	ctx, cancel := context.WithDeadline(ctx, cutoff.Add(s.cfg.CRMTimeout))
	defer cancel()
	out := make([]crmrpc.LookupResult, len(ids))
	for i, id := range ids {
		out[i].ExternalID = id
	}
	type batch struct{ lo, hi int }
	var todo []batch
	for lo := 0; lo < len(ids); lo += s.cfg.MaxBatch {
		todo = append(todo, batch{lo, min(lo+s.cfg.MaxBatch, len(ids))})
	}
	bo := newBackoff()
	for attempt := 1; ; attempt++ {
		errs := make([]error, len(todo))
		var wg sync.WaitGroup
		for j, b := range todo {
			wg.Go(func() {
				found, err := s.lookupBatch(ctx, cutoff, ids[b.lo:b.hi])
				errs[j] = err
				for k := range found {
					out[b.lo+k].CRMIDs = found[k]
				}
			})
		}
		wg.Wait()
		var failed []batch
		var firstErr error
		for j, b := range todo {
			if errs[j] != nil {
				failed = append(failed, b)
				firstErr = cmp.Or(firstErr, errs[j])
			}
		}
		if len(failed) == 0 {
			return out, nil
		}
		wait, code, msg := s.lookupFailure(firstErr)
		if code == crmrpc.CodeCRMUnauthorized {
			return nil, &crmrpc.Error{Code: code, Message: msg}
		}
		wait = max(wait, bo.Next())
		if !s.roundFits(attempt, wait, cutoff) || backoff.Sleep(ctx, nil, wait) != nil {
			n := 0
			for _, b := range failed {
				n += b.hi - b.lo
			}
			s.log.Log(ctx, slog.LevelWarn, "lookup call failed", "code", code, "failed", n)
			return nil, &crmrpc.Error{Code: crmrpc.CodeCRMUnavailable, Message: fmt.Sprintf("%d of %d lookups failed: %s", n, len(ids), msg), RetryAfter: wait}
		}
		s.met.retry("lookup")
		todo = failed
	}
}

// unauthorized is what a reader is told when the CRM refuses the daemon's
// credentials: the CRM's own words (an expired token, a missing scope) and
// who must act. Connectors keep tokens out of their messages.
func unauthorized(ce *crmapi.Error) string {
	msg := fmt.Sprintf("the CRM answered %d to the daemon's token", ce.Status)
	if ce.Code != "" || ce.Message != "" {
		msg += " (" + strings.TrimSpace(ce.Code+" "+ce.Message) + ")"
	}
	return msg + ": the operator must fix the daemon's -crm-token"
}
