package integrator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/crmrpc"
)

// CodeUnknownField: an update names a field that is neither one of
// contact.Fields nor an attribute ("attributes.<name>").
const CodeUnknownField = "unknown_field"

// CodeUpdateWithoutID: a record names fields to update but carries no CRM
// id, so it could only be created: refused.
const CodeUpdateWithoutID = "update_without_crm_id"

// checkUpdate rejects an update whose field list the daemon cannot write.
func checkUpdate(r *crmrpc.Record) (crmrpc.Verdict, bool) {
	if !r.IsUpdate() {
		if len(r.Fields) > 0 {
			// Fields without a CRM id: a reader meant an update and lost
			// the id. Created, it would be a second contact.
			return crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: CodeUpdateWithoutID,
				Message: "the record names fields to update but no CRM id; nothing was sent"}, true
		}
		return crmrpc.Verdict{}, false
	}
	if name, bad := crmapi.UnknownField(r.Fields); bad {
		return crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: CodeUnknownField,
			Message: fmt.Sprintf("the update names the field %q, which is neither a contact field nor %s<name>", name, "attributes.")}, true
	}
	return crmrpc.Verdict{}, false
}

// runUpdate updates the records idx (at most MaxBatch, all updates) with
// one request, through the same limiter, breaker and bound as creates.
// An update cannot create anything, so every answer that leaves its fate
// unknown (a timeout, 500, 502, 504, a reset) is met by resending the very
// same bytes: no lookup, and never a create.
func (d *delivery) runUpdate(idx []int) {
	s := d.s
	bo := newBackoff()
	attempts := 0
	updates := make([]crmapi.Update, len(idx))
	for j, i := range idx {
		r := &d.recs[i]
		updates[j] = crmapi.Update{CRMID: r.CRMID, Fields: r.Fields, Contact: r.Contact}
	}
	req := s.crm.EncodeUpdate(updates)
	for {
		if d.ctx.Err() != nil {
			d.retryLater(idx, bo.Next(), CodeShuttingDown, "call abandoned")
			return
		}
		var resp *crmapi.BatchResponse
		err := s.crmDo(d.ctx, d.cutoff, func(ctx context.Context) (err error) {
			resp, err = s.crm.WriteUpdate(ctx, req)
			if c := crmapi.ClassOf(err); c != crmapi.ClassRateLimited && c != crmapi.ClassQuota {
				for _, i := range idx {
					d.sent[i] = true
				}
			}
			return err
		})
		if err == nil {
			rest := d.applyUpdate(idx, resp)
			if len(rest) == 0 {
				return
			}
			// Inputs the answer left unsettled: resend just those.
			wait := bo.Next()
			if !d.pause(&attempts, wait, "update_unsettled", false) {
				d.retryLater(rest, wait, CodeUnexpected, "the CRM's answer left these updates unsettled")
				return
			}
			d.runUpdate(rest)
			return
		}
		var open *errCircuitOpen
		if errors.As(err, &open) {
			d.retryLater(idx, open.wait, CodeCircuitOpen, "the CRM is failing; the daemon pauses calling it")
			return
		}
		var nt *errNoTime
		if errors.As(err, &nt) {
			d.outOfTime(idx, nt)
			return
		}
		var eq *errQuota
		if errors.As(err, &eq) {
			d.quotaSpent(idx, eq.until, eq.why)
			return
		}
		var ce *crmapi.Error
		if !errors.As(err, &ce) {
			d.retryLater(idx, bo.Next(), CodeShuttingDown, "call abandoned")
			return
		}
		if d.ctx.Err() != nil {
			d.retryLater(idx, bo.Next(), CodeAmbiguous, "the call's bound cut a CRM update short; resend it")
			return
		}
		var wait time.Duration
		var reason, code string
		switch ce.Class {
		case crmapi.ClassRejected:
			s.log.Warn("crm rejected an update batch", "status", ce.Status, "code", ce.Code, "message", ce.Message, "contacts", len(idx))
			d.rejectAll(idx, cmp.Or(ce.Code, "crm_status_"+fmt.Sprint(ce.Status)), ce.Message)
			return
		case crmapi.ClassQuota:
			d.quotaSpent(idx, time.Now().Add(ce.RetryAfter), ce.Message)
			return
		case crmapi.ClassSplit, crmapi.ClassTooLarge:
			if len(idx) == 1 {
				c := cmp.Or(ce.Code, "crm_status_"+fmt.Sprint(ce.Status))
				msg := ce.Message
				if ce.Class == crmapi.ClassTooLarge {
					c, msg = CodeContactTooLarge, "the CRM refuses this update as too large: "+ce.Message
				}
				d.rejectAll(idx, c, msg)
				return
			}
			s.met.retry("split")
			h := len(idx) / 2
			d.runUpdate(idx[:h])
			d.runUpdate(idx[h:])
			return
		case crmapi.ClassUnauthorized:
			s.log.Error("crm refused the daemon's credentials; fix -crm-token", "status", ce.Status, "code", ce.Code, "message", ce.Message)
			d.failCall(&crmrpc.Error{Code: crmrpc.CodeCRMUnauthorized, Message: unauthorized(ce)})
			return
		case crmapi.ClassRateLimited:
			wait, reason, code = rateLimitWait(ce), reasonRateLimited, CodeRateLimited
		case crmapi.ClassUnavailable:
			wait, reason, code = cmp.Or(ce.RetryAfter, bo.Next()), "unavailable", CodeUnavailable
		case crmapi.ClassInProgress:
			wait, reason, code = cmp.Or(ce.RetryAfter, 250*time.Millisecond), "in_progress", CodeAmbiguous
		case crmapi.ClassAmbiguous:
			// Written or not, the same update again leaves the same fields.
			wait, reason, code = bo.Next(), "ambiguous", CodeAmbiguous
			s.log.Warn("crm answer to an update ambiguous; resending it", "status", ce.Status, "error", ce.Message, "contacts", len(idx))
		default: // ClassUnexpected
			s.log.Warn("unexpected crm answer; check -crm-url", "status", ce.Status, "code", ce.Code)
			wait, reason, code = bo.Next(), "unexpected", CodeUnexpected
		}
		if !d.pause(&attempts, wait, reason, reason == reasonRateLimited) {
			d.retryLater(idx, wait, code, ce.Error())
			return
		}
	}
}

func (d *delivery) rejectAll(idx []int, code, msg string) {
	for _, i := range idx {
		d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: code, Message: msg}
	}
}

// applyUpdate turns an update's answer into verdicts, and returns the
// records it did not settle (no result of theirs, or one that does not
// match): resending them is safe.
func (d *delivery) applyUpdate(idx []int, resp *crmapi.BatchResponse) (rest []int) {
	if len(resp.Results) != len(idx) {
		d.s.log.Error("crm answered an update batch with the wrong number of results", "want", len(idx), "got", len(resp.Results))
	}
	for j, i := range idx {
		rec := &d.recs[i]
		var r *crmapi.BatchResult
		if j < len(resp.Results) {
			r = &resp.Results[j]
		}
		switch {
		case r == nil || (r.ID != "" && r.ID != rec.CRMID) || (r.ExternalID != "" && r.ExternalID != rec.Contact.ExternalID):
			rest = append(rest, i)
		case r.Status == crmapi.StatusUpdated:
			d.verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: rec.CRMID}
		case r.Status == crmapi.StatusRejected:
			v := crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: "rejected"}
			if r.Error != nil {
				v.Code, v.Message = r.Error.Code, r.Error.Message
			}
			if r.Gone {
				v.Message = fmt.Sprintf("the CRM no longer holds contact %s for key %s (%s): it was deleted or merged there; nothing was created",
					rec.CRMID, rec.Contact.ExternalID, cmp.Or(v.Message, v.Code))
			}
			d.verdicts[i] = v
		default:
			rest = append(rest, i)
		}
	}
	return rest
}
