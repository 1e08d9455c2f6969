package importer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"crmsync/csvreader/ledger"
	"crmsync/shared/backoff"
	"crmsync/shared/crmrpc"
)

func (p *pipeline) workLoop() {
	for {
		select {
		case <-p.stop:
			return
		case it := <-p.send:
			p.deliver(it)
			p.done()
		}
	}
}

// deliver sends one item and acts on each record's verdict.
func (p *pipeline) deliver(it *item) {
	verdicts, ok := p.send1(it)
	if !ok || len(it.recs) == 0 {
		return
	}
	delivered := make([]ledger.Delivery, 0, len(verdicts))
	spare := 0
	var rejected, failed []settled
	var retry []*rec
	var retryAfter time.Duration
	crmSaid := true // every retry's wait is the CRM's own Retry-After
	for i, v := range verdicts {
		r := it.recs[i]
		switch v.Outcome {
		case crmrpc.Delivered:
			p.setMaybe(r, false)
			if r.spare {
				spare++
			}
			d := ledger.Delivery{Contact: r.c, CRMID: v.CRMID, Fingerprint: r.fp, File: r.file, Line: r.line, Update: r.update}
			if r.update != nil {
				d.Contact = r.update.Contact
			}
			delivered = append(delivered, d)
		case crmrpc.Rejected:
			p.setMaybe(r, false)
			rejected = append(rejected, settled{r, "rejected by CRM: " + v.Code + ": " + v.Message})
		default: // Retry, and anything a newer daemon may add
			// The daemon's word on whether the CRM may hold it now: after
			// a lookup found nothing it need not be looked up again.
			p.setMaybe(r, v.Ambiguous)
			if v.NotAttempted {
				r.attempts-- // nothing reached the CRM for it: not an attempt
			}
			if v.Code == crmrpc.CodeQuotaExhausted && p.quotaStop != nil {
				if v.Message != "" {
					p.n.quotaReason.CompareAndSwap(nil, &v.Message)
				}
				p.quotaStop(time.Now().Add(v.RetryAfter))
			}
			r.last = v.Code
			if v.Message != "" {
				r.last += ": " + v.Message
			}
			if r.attempts >= p.cfg.MaxAttempts || time.Since(r.first) >= p.cfg.MaxRetryTime {
				p.setMaybe(r, false) // counted as failed; the ledger keeps "maybe sent"
				failed = append(failed, settled{r, fmt.Sprintf("failed after %d attempts: %s", r.attempts, r.last)})
				continue
			}
			retry = append(retry, r)
			retryAfter = max(retryAfter, v.RetryAfter)
			crmSaid = crmSaid && v.CRMRetryAfter
		}
	}
	if len(delivered) > 0 {
		p.add() // done by the writer, once recorded
		select {
		case p.confirm <- confirmJob{delivered, spare}:
		case <-p.stop:
			return
		}
	}
	p.finishAs(rejected, ledger.Rejected)
	p.finishAs(failed, ledger.Failed)
	if len(retry) > 0 {
		p.n.retries.Add(int64(len(retry)))
		if p.readCtx.Err() != nil {
			p.leave(retry)
			return
		}
		p.sched.add(&item{recs: retry, due: time.Now().Add(retryWait(retry[0].attempts, retryAfter, crmSaid))})
	}
}

// send1 sends the item's records once they may be sent: only while the run
// holds its ledger lock, and only those still its own (ledger.Run.Permit);
// the others are claimed again. It returns one verdict per record of
// it.recs (which may have shrunk), or false when the run is ending.
// A call that fails as a whole is turned into Retry verdicts here.
func (p *pipeline) send1(it *item) ([]crmrpc.Verdict, bool) {
	for {
		keys := make([]string, len(it.recs))
		for i, r := range it.recs {
			keys[i] = r.c.ExternalID
		}
		lost, err := p.run.Permit(p.workCtx, keys)
		if err != nil {
			if p.workCtx.Err() == nil {
				p.fatal(fmt.Errorf("fencing check: %w", err))
			}
			return nil, false
		}
		if len(lost) > 0 {
			p.reclaimLost(it, lost)
			if len(it.recs) == 0 {
				return nil, true
			}
		}
		recs := make([]crmrpc.Record, len(it.recs))
		now := time.Now()
		ctx := p.workCtx
		for i, r := range it.recs {
			recs[i] = crmrpc.Record{Contact: r.c, MaybeSent: r.maybeSent}
			if u := r.update; u != nil {
				recs[i] = crmrpc.Record{Contact: u.Contact, CRMID: u.CRMID, Fields: u.Fields}
			}
			if r.via != "" {
				if now.Before(r.fullDue) {
					// The client sends it to that daemon if it is
					// connected to it; the gate refuses any other.
					ctx = crmrpc.WithInstance(p.workCtx, r.via)
				} else {
					r.via = ""
				}
			}
		}
		verdicts, err := p.crm.Deliver(ctx, recs)
		if errors.Is(err, ledger.ErrFenced) {
			continue // nothing was sent: wait for the lock and the check
		}
		if errors.Is(err, ledger.ErrNotRecorded) {
			// Nothing was sent: the database is failing; pause, then the
			// lease decides again.
			p.log.Warn("could not record the integrator; pausing the send", "err", err)
			if backoff.Sleep(p.workCtx, nil, 500*time.Millisecond) != nil {
				return nil, false
			}
			continue
		}
		if errors.Is(err, errWrongDaemon) {
			// Nothing was sent. The records released early for another
			// daemon wait out the dead run's calls; the rest go now.
			p.deferVia(it)
			if len(it.recs) == 0 {
				return nil, true
			}
			continue
		}
		for _, r := range it.recs {
			r.orphan = false // sent only once CallBound has passed since it became one
			r.attempts++
			if r.first.IsZero() {
				r.first = now
			}
		}
		if err == nil && len(verdicts) != len(recs) {
			err = fmt.Errorf("integrator answered %d verdicts for %d records", len(verdicts), len(recs))
		}
		if err == nil {
			return verdicts, true
		}
		var ce *crmrpc.Error
		if errors.As(err, &ce) && ce.Fatal() {
			p.fatal(fmt.Errorf("integrator refused the work: %w", err))
			return nil, false
		}
		if p.workCtx.Err() != nil {
			return nil, false
		}
		// The call may have reached the CRM, and the integrator may still be
		// working on it: resend every record with a lookup first, once that
		// call must be over — by the bound of the daemon it went to.
		wait := p.cfg.CallBound
		var conn *crmrpc.ConnError
		if errors.As(err, &conn) && conn.CallTimeout > 0 {
			wait = max(wait, conn.CallTimeout+CallBoundMargin)
		}
		if ce != nil { // the daemon refused the call: nothing of it runs
			wait = max(ce.RetryAfter, time.Second)
		} else {
			for _, r := range it.recs {
				r.orphan = true
			}
		}
		p.log.Warn("integrator call failed; will resend its records", "records", len(recs), "after", wait, "err", err)
		verdicts = make([]crmrpc.Verdict, len(recs))
		for i := range verdicts {
			verdicts[i] = crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: wait, Ambiguous: true, Code: "integrator_unreachable", Message: err.Error()}
		}
		return verdicts, true
	}
}

// errWrongDaemon: the call carries records released early for one
// integrator process, and was about to go to another.
var errWrongDaemon = errors.New("records released for another integrator process")

// gate is asked right before each Deliver is written (Config.SendGate).
func (p *pipeline) gate(ctx context.Context, instance string) error {
	if err := p.run.SendGate(); err != nil {
		return err
	}
	if need := crmrpc.InstanceOf(ctx); need != "" && need != instance {
		return errWrongDaemon
	}
	return p.run.NoteIntegrator(ctx, instance)
}

// deferVia takes out of it the records released early for an integrator
// process the client no longer talks to, and schedules them for when the
// dead run's calls must be over wherever they ran.
func (p *pipeline) deferVia(it *item) {
	var keep, later []*rec
	due := time.Now()
	for _, r := range it.recs {
		if r.via != "" {
			later = append(later, r)
			due = maxTime(due, r.fullDue)
			r.via = ""
		} else {
			keep = append(keep, r)
		}
	}
	p.log.Warn("the integrator changed; records of a crashed run wait out its calls", "records", len(later), "until", due)
	it.recs = keep
	p.spareRoom(later)
	p.sched.add(&item{recs: later, due: due})
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// reclaimLost takes the records at lost out of it and claims them again:
// the fencing check found that another run took them over (or delivered
// them) while this run's lock was lost. The claim decides anew: busy while
// that run lives, already delivered, or taken over once it is dead.
func (p *pipeline) reclaimLost(it *item, lost []int) {
	gone := make(map[int]bool, len(lost))
	for _, i := range lost {
		gone[i] = true
	}
	var keep, again []*rec
	for i, r := range it.recs {
		if gone[i] {
			again = append(again, r)
		} else {
			keep = append(keep, r)
		}
	}
	p.log.Warn("records taken over by another run while this run's ledger lock was lost; claiming them again, not sending them",
		"records", len(again))
	it.recs = keep
	p.sched.add(&item{recs: again, reclaim: true, due: time.Now()})
}

// retryWait is how long records wait before their next send, after
// attempts sends: the daemon's RetryAfter, and no less than the reader's
// own backoff (200 ms doubling per attempt, up to a minute) unless the
// wait is the CRM's own Retry-After (crmSaid). A CRM that says when to
// come back is taken at its word: doubling on top of it left a flaky
// CRM's last retries waiting 2 and 4 s after it had asked for 1 s, the
// idle tail of make bench's flaky phase. A CRM that keeps failing still
// slows its callers down: the daemon's breaker opens. The floor starts at
// 200 ms, not higher: the daemon answers a failed batch Retry at once
// rather than sleeping in the call (its -max-call-wait), so the first
// resend's wait is spent here, where only that batch's records wait and
// hold room in flight; a floor of 500 ms kept them 2.5 times the daemon's
// 200 ms backoff (make bench's flaky phase: 80–81% of clean with it, 83–89%
// from 200 ms, BENCHMARKS.md round 9).
func retryWait(attempts int, retryAfter time.Duration, crmSaid bool) time.Duration {
	if crmSaid && retryAfter > 0 {
		return retryAfter
	}
	b := backoff.Backoff{Base: 200 * time.Millisecond, Max: time.Minute}
	var d time.Duration
	for range max(attempts, 1) {
		d = b.Next()
	}
	return max(d, retryAfter)
}
