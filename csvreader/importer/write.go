package importer

import (
	"context"
	"fmt"
	"time"

	"crmsync/csvreader/ledger"
	"crmsync/shared/backoff"
)

// maxConfirm caps the deliveries recorded in one transaction.
const maxConfirm = 10000

// writeLoop records deliveries in the ledger: whatever the workers confirmed
// while the previous write ran goes into the next one. Their room in flight
// is given back only once they are committed.
func (p *pipeline) writeLoop() {
	// merged holds the deliveries of several jobs for one write, reused
	// from write to write (120 MB of the reader's 2.2 GB of allocations
	// per 1M rows when each write had its own), and cleared after each so
	// that it keeps nothing alive.
	var merged []ledger.Delivery
	for {
		var first confirmJob
		select {
		case <-p.stop:
			return
		case first = <-p.confirm:
		}
		jobs, n, spare := []confirmJob{first}, len(first.ds), first.spare
	gather:
		for n < maxConfirm {
			select {
			case more := <-p.confirm:
				jobs, n, spare = append(jobs, more), n+len(more.ds), spare+more.spare
			default:
				break gather
			}
		}
		ds := first.ds
		if len(jobs) > 1 {
			merged = merged[:0]
			for _, j := range jobs {
				merged = append(merged, j.ds...)
			}
			ds = merged
		}
		var already []int
		if err := p.retryDB("record deliveries", func(ctx context.Context) (err error) {
			already, err = p.run.Confirm(ctx, ds)
			return err
		}); err != nil {
			p.fatal(err)
			return
		}
		// Keys another run recorded first (it took them over while this
		// run's lock was lost, and found them in the CRM, or updated
		// them): its delivery.
		theirs := make(map[int]bool, len(already))
		for _, i := range already {
			theirs[i] = true
			if p.skipped != nil {
				p.skipped.Write(ds[i].File, ds[i].Line, ds[i].Contact.ExternalID, outUnchanged.String(), nil, "recorded by another run that took the claim over")
			}
		}
		p.n.unchanged.Add(int64(len(already)))
		for i := range ds {
			switch {
			case theirs[i]:
			case ds[i].Update != nil:
				p.n.updated.Add(1)
				if p.skipped != nil {
					p.skipped.Write(ds[i].File, ds[i].Line, ds[i].Contact.ExternalID, outUpdated.String(), ds[i].Update.Changed,
						fmt.Sprintf("updated to version %d", ds[i].Update.Version+1))
				}
			default:
				p.n.created.Add(1)
			}
		}
		p.release(len(ds) - spare)
		for range spare {
			<-p.spare
		}
		clear(merged)
		for range jobs {
			p.done()
		}
	}
}

// settled is a record that ends without the CRM holding it, and why.
type settled struct {
	r      *rec
	reason string
}

// marks are the ledger's records of ss.
func marks(ss []settled) []ledger.Mark {
	ms := make([]ledger.Mark, len(ss))
	for i, s := range ss {
		ms[i] = ledger.Mark{Key: s.r.c.ExternalID, Reason: s.reason, Orphan: s.r.orphan}
	}
	return ms
}

// finishAs records final rejections or failures in the ledger and the
// rejects file.
func (p *pipeline) finishAs(ss []settled, state ledger.ClaimState) {
	if len(ss) == 0 {
		return
	}
	if err := p.retryDB("mark "+string(state), func(ctx context.Context) error { return p.run.Mark(ctx, state, marks(ss)) }); err != nil {
		p.fatal(err)
		return
	}
	o := outRejectedCRM
	if state == ledger.Failed {
		o = outFailed
	}
	p.n.counter(o).Add(int64(len(ss)))
	for _, s := range ss {
		p.releaseRecs(s.r)
	}
	for _, s := range ss {
		if err := p.reject(s.r.file, s.r.line, s.r.fields, s.reason); err != nil {
			p.fatal(err)
			return
		}
	}
	if state == ledger.Failed {
		p.log.Warn("records failed after all retries", "records", len(ss), "last", ss[0].r.last)
	}
}

// leave hands claimed records to the next run after an interrupt: their
// claims stay, marked as failed ("maybe sent"), so the next run looks them
// up before sending.
func (p *pipeline) leave(recs []*rec) {
	ss := make([]settled, len(recs))
	for i, r := range recs {
		ss[i] = settled{r, "interrupted: " + r.last}
	}
	if err := p.retryDB("mark interrupted", func(ctx context.Context) error { return p.run.Mark(ctx, ledger.Failed, marks(ss)) }); err != nil {
		p.log.Error("could not mark interrupted records; the next run resolves them anyway", "err", err)
	}
	p.abandon(recs)
}

// retryDB runs a ledger write, retrying while PostgreSQL is unavailable for
// up to DBRetryTime, so a database restart does not cost the run.
func (p *pipeline) retryDB(what string, fn func(context.Context) error) error {
	b := backoff.Backoff{Base: 200 * time.Millisecond, Max: 5 * time.Second}
	deadline := time.Now().Add(p.cfg.DBRetryTime)
	// The deadline bounds each attempt too: a claim waits for the run's
	// lock, which it may not get back while PostgreSQL is away.
	ctx, cancel := context.WithDeadline(p.workCtx, deadline)
	defer cancel()
	for {
		err := fn(ctx)
		if err == nil || p.workCtx.Err() != nil {
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: database unavailable for %s: %w", what, p.cfg.DBRetryTime, err)
		}
		if b.Attempts() == 0 {
			p.log.Warn("database write failed; retrying", "what", what, "err", err)
		}
		if b.Wait(p.workCtx) != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
}
