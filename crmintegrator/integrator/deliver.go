package integrator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
)

// errCircuitOpen is what crmDo returns when the breaker refuses a request.
type errCircuitOpen struct{ wait time.Duration }

func (e *errCircuitOpen) Error() string {
	return fmt.Sprintf("crm circuit breaker open for %v", e.wait.Round(time.Millisecond))
}

// crmDo runs one CRM request through the breaker, the rate limiter and the
// in-flight limit, and feeds its outcome back to them.
func (s *Server) crmDo(ctx context.Context, fn func(context.Context) error) error {
	ok, probe, wait := s.breaker.Allow()
	if !ok {
		return &errCircuitOpen{wait}
	}
	result := ResultIgnore
	defer func() { s.breaker.Done(probe, result) }()
	// The in-flight slot first, then the pace: a request that got its pace
	// slot before a 429 paused everything must not go out after it.
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.sem }()
	if err := s.limiter.Wait(ctx); err != nil {
		return err
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

// delivery is the state of one Deliver call.
type delivery struct {
	s        *Server
	ctx      context.Context
	cancel   context.CancelFunc
	recs     []crmrpc.Record
	verdicts []crmrpc.Verdict
	maybe    []bool // the CRM may hold this record already: look it up first
	deadline time.Time

	failOnce sync.Once
	fail     *crmrpc.Error
}

// Deliver creates the records in the CRM and returns one verdict per
// record, in order, or a call-level error. It is what the Deliver RPC runs.
func (s *Server) Deliver(ctx context.Context, recs []crmrpc.Record) ([]crmrpc.Verdict, *crmrpc.Error) {
	if len(recs) > s.cfg.MaxRecords {
		return nil, &crmrpc.Error{Code: crmrpc.CodeTooManyRecords,
			Message: fmt.Sprintf("%d records in one call, at most %d allowed: send smaller blocks", len(recs), s.cfg.MaxRecords)}
	}
	for i := range recs {
		if longestFieldLen(&recs[i].Contact) > s.cfg.MaxFieldBytes {
			field, n := longestField(&recs[i].Contact) // named only on the error path
			return nil, &crmrpc.Error{Code: crmrpc.CodeFieldTooLarge,
				Message: fmt.Sprintf("record %d: field %s has %d bytes, at most %d allowed", i, field, n, s.cfg.MaxFieldBytes)}
		}
	}
	d := &delivery{
		s:        s,
		recs:     recs,
		verdicts: make([]crmrpc.Verdict, len(recs)),
		maybe:    make([]bool, len(recs)),
		deadline: time.Now().Add(s.cfg.CallBudget),
	}
	d.ctx, d.cancel = context.WithCancel(ctx)
	defer d.cancel()

	todo := make([]int, 0, len(recs))
	for i := range recs {
		if p := recs[i].Contact.Validate(); p != nil {
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: p.Code, Message: p.Message}
			continue
		}
		d.maybe[i] = recs[i].MaybeSent
		todo = append(todo, i)
	}
	var wg sync.WaitGroup
	for len(todo) > 0 {
		n := min(len(todo), s.cfg.MaxBatch)
		chunk := todo[:n:n]
		todo = todo[n:]
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.runChunk(chunk)
		}()
	}
	wg.Wait()
	if d.fail != nil {
		return nil, d.fail
	}
	s.met.countVerdicts(d.verdicts)
	return d.verdicts, nil
}

// longestFieldLen is the length in bytes of c's longest field, attribute
// names included. It runs on every record, so it allocates nothing.
func longestFieldLen(c *contact.Contact) int {
	n := max(len(c.ExternalID), len(c.Email), len(c.FirstName), len(c.LastName), len(c.Phone))
	for k, v := range c.Attributes {
		n = max(n, len(k), len(v))
	}
	return n
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
	for k, v := range c.Attributes {
		if len(k) > n {
			name, n = "attribute name", len(k)
		}
		if len(v) > n {
			name, n = "attribute "+k, len(v)
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
// done rounds and a wait, within a call's deadline: the one budget rule of
// Deliver and Lookup.
func (s *Server) roundFits(done int, wait time.Duration, deadline time.Time) bool {
	return done < s.cfg.MaxAttempts && !time.Now().Add(wait).After(deadline) && !s.closing.Load()
}

// pause decides whether one more round fits into the call: a wait no longer
// than MaxCallWait, the attempt budget, the time budget, and the daemon not
// shutting down. If so it waits and returns true.
func (d *delivery) pause(attempts *int, wait time.Duration, reason string) bool {
	if mw := d.s.cfg.MaxCallWait; mw > 0 && wait > mw {
		return false // the caller waits, not the call
	}
	if !d.s.roundFits(*attempts+1, wait, d.deadline) {
		return false
	}
	*attempts++
	d.s.met.retry(reason)
	return backoff.Sleep(d.ctx, nil, wait) == nil
}

// retryLater answers Retry for the records; those that may be in the CRM
// already are marked Ambiguous.
func (d *delivery) retryLater(idx []int, wait time.Duration, code, msg string) {
	wait = max(wait, 100*time.Millisecond)
	if d.s.closing.Load() && code != CodeCircuitOpen {
		code, msg = CodeShuttingDown, "the daemon is shutting down"
	}
	for _, i := range idx {
		d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: wait, Ambiguous: d.maybe[i], Code: code, Message: msg}
	}
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
		var unresolved bool
		var wait time.Duration
		var code, msg string
		idx, unresolved, wait, code, msg = d.resolve(idx)
		if unresolved {
			wait = max(wait, bo.Next())
			if !d.pause(&attempts, wait, "lookup") {
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
	// A fresh buffer per batch, not a pooled one: net/http's write loop may
	// still be reading the body after RoundTrip returned on an early answer
	// (401, 413, 429), so the bytes must not be reused.
	body := crmapi.AppendBatchRequest(nil, contacts)
	key := crmapi.IdempotencyKey(body)
	for {
		var resp *crmapi.BatchResponse
		err := s.crmDo(d.ctx, func(ctx context.Context) (err error) {
			resp, _, err = s.crm.CreateBatch(ctx, body, key)
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
		var ce *crmapi.Error
		if !errors.As(err, &ce) { // our context: the call was abandoned
			// An earlier ambiguous answer has already marked idx maybe-sent.
			d.retryLater(idx, bo.Next(), CodeShuttingDown, "call abandoned")
			return false, false
		}
		var wait time.Duration
		var reason, code string
		switch ce.Class {
		case crmapi.ClassRejected:
			s.log.Warn("crm rejected a batch", "status", ce.Status, "code", ce.Code, "message", ce.Message, "contacts", len(idx))
			for _, i := range idx {
				d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: cmp.Or(ce.Code, "crm_status_"+fmt.Sprint(ce.Status)), Message: ce.Message}
			}
			return false, false
		case crmapi.ClassTooLarge:
			if len(idx) == 1 {
				d.verdicts[idx[0]] = crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: CodeContactTooLarge, Message: "the CRM refuses this contact as too large: " + ce.Message}
				return false, false
			}
			s.met.retry("split")
			return false, true
		case crmapi.ClassUnauthorized:
			s.log.Error("crm refused the daemon's credentials; fix -crm-token", "status", ce.Status)
			d.failCall(&crmrpc.Error{Code: crmrpc.CodeCRMUnauthorized,
				Message: fmt.Sprintf("the CRM answered %d to the daemon's token: the operator must fix the daemon's -crm-token; records of this call may have been created, resend them with MaybeSent", ce.Status)})
			return false, false
		case crmapi.ClassRateLimited:
			wait, reason, code = max(ce.RetryAfter, time.Second), "rate_limited", CodeRateLimited
		case crmapi.ClassUnavailable:
			wait, reason, code = bo.Next(), "unavailable", CodeUnavailable
			if ce.RetryAfter > 0 {
				wait = ce.RetryAfter
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
				"contacts", len(idx), "resolve", map[bool]string{true: "same key", false: "lookup"}[s.cfg.Idempotency])
			if !s.cfg.Idempotency {
				if !d.pause(attempts, wait, reason) {
					d.retryLater(idx, wait, code, "the CRM may have created these contacts; resend with MaybeSent")
					return false, false
				}
				return true, false // look them up, create the rest
			}
		default: // ClassUnexpected
			s.log.Warn("unexpected crm answer; check -crm-url", "status", ce.Status, "code", ce.Code)
			wait, reason, code = bo.Next(), "unexpected", CodeUnexpected
		}
		if !d.pause(attempts, wait, reason) {
			d.retryLater(idx, wait, code, ce.Error())
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
		case r.Status == crmapi.StatusRejected:
			v := crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: "rejected"}
			if r.Error != nil {
				v.Code, v.Message = r.Error.Code, r.Error.Message
			}
			d.verdicts[i] = v
		default:
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: time.Second, Ambiguous: true, Code: CodeUnexpected, Message: "unknown result status " + r.Status}
		}
	}
}

// resolve looks up the records of idx that may already be in the CRM.
// Found ones are Delivered with the first CRM id; not found ones lose the
// mark. It returns the records still to create, and whether some lookups
// failed (those records keep the mark; nothing of idx may be created then
// in this round, to keep one request per batch).
func (d *delivery) resolve(idx []int) (rest []int, unresolved bool, wait time.Duration, code, msg string) {
	var look []int
	for _, i := range idx {
		if d.maybe[i] {
			look = append(look, i)
		}
	}
	if len(look) == 0 {
		return idx, false, 0, "", ""
	}
	ids := make([]string, len(look))
	for j, i := range look {
		ids[j] = d.recs[i].Contact.ExternalID
	}
	found, errs := d.s.lookupMany(d.ctx, ids)
	var firstErr error
	for j, i := range look {
		switch {
		case errs[j] != nil:
			if firstErr == nil {
				firstErr = errs[j]
			}
		case len(found[j]) > 0:
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: found[j][0]}
			d.maybe[i] = false
		default:
			d.maybe[i] = false
		}
	}
	rest = idx[:0:0]
	for _, i := range idx {
		if d.verdicts[i].Outcome != crmrpc.Delivered {
			rest = append(rest, i)
		}
	}
	if firstErr == nil {
		return rest, false, 0, "", ""
	}
	wait, code, msg = d.s.lookupFailure(firstErr)
	if code == crmrpc.CodeCRMUnauthorized {
		d.failCall(&crmrpc.Error{Code: code, Message: msg})
	}
	return rest, true, wait, code, msg
}

// lookupFailure turns a failed lookup into a wait, a code and a message.
func (s *Server) lookupFailure(err error) (time.Duration, string, string) {
	var open *errCircuitOpen
	if errors.As(err, &open) {
		return open.wait, CodeCircuitOpen, "the CRM is failing; the daemon pauses calling it"
	}
	var ce *crmapi.Error
	if !errors.As(err, &ce) {
		return time.Second, CodeShuttingDown, "call abandoned"
	}
	switch ce.Class {
	case crmapi.ClassUnauthorized:
		s.log.Error("crm refused the daemon's credentials; fix -crm-token", "status", ce.Status)
		return 0, crmrpc.CodeCRMUnauthorized, fmt.Sprintf("the CRM answered %d to the daemon's token: the operator must fix the daemon's -crm-token", ce.Status)
	case crmapi.ClassRateLimited:
		return max(ce.RetryAfter, time.Second), CodeRateLimited, ce.Error()
	case crmapi.ClassUnavailable:
		return max(ce.RetryAfter, time.Second), CodeUnavailable, ce.Error()
	}
	return time.Second, CodeUnavailable, "lookup failed: " + ce.Error()
}

// lookupMany looks the external ids up with bounded concurrency. found[j]
// lists the CRM ids of ids[j]; errs[j] is set when its lookup failed.
func (s *Server) lookupMany(ctx context.Context, ids []string) (found [][]string, errs []error) {
	found = make([][]string, len(ids))
	errs = make([]error, len(ids))
	workers := min(len(ids), s.cfg.CRMConcurrency)
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				errs[j] = s.crmDo(ctx, func(ctx context.Context) error {
					cs, err := s.crm.Lookup(ctx, ids[j])
					for _, c := range cs {
						found[j] = append(found[j], c.ID)
					}
					return err
				})
			}
		}()
	}
	for j := range ids {
		next <- j
	}
	close(next)
	wg.Wait()
	return found, errs
}

// Lookup answers which CRM ids hold each external id. It retries failed
// lookups within the call budget and otherwise fails the call with
// CodeCRMUnavailable and a RetryAfter.
func (s *Server) Lookup(ctx context.Context, ids []string) ([]crmrpc.LookupResult, *crmrpc.Error) {
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
	out := make([]crmrpc.LookupResult, len(ids))
	for i, id := range ids {
		out[i].ExternalID = id
	}
	deadline := time.Now().Add(s.cfg.CallBudget)
	bo := newBackoff()
	todo := make([]int, len(ids))
	for i := range todo {
		todo[i] = i
	}
	for attempt := 1; ; attempt++ {
		sub := make([]string, len(todo))
		for j, i := range todo {
			sub[j] = ids[i]
		}
		found, errs := s.lookupMany(ctx, sub)
		var failed []int
		var firstErr error
		for j, i := range todo {
			if errs[j] != nil {
				failed = append(failed, i)
				firstErr = cmp.Or(firstErr, errs[j])
				continue
			}
			out[i].CRMIDs = found[j]
		}
		if len(failed) == 0 {
			return out, nil
		}
		wait, code, msg := s.lookupFailure(firstErr)
		if code == crmrpc.CodeCRMUnauthorized {
			return nil, &crmrpc.Error{Code: code, Message: msg}
		}
		wait = max(wait, bo.Next())
		if !s.roundFits(attempt, wait, deadline) || backoff.Sleep(ctx, nil, wait) != nil {
			s.log.Log(ctx, slog.LevelWarn, "lookup call failed", "code", code, "failed", len(failed))
			return nil, &crmrpc.Error{Code: crmrpc.CodeCRMUnavailable, Message: fmt.Sprintf("%d of %d lookups failed: %s", len(failed), len(ids), msg), RetryAfter: wait}
		}
		s.met.retry("lookup")
		todo = failed
	}
}
