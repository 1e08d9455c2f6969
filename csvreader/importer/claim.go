package importer

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"crmsync/csvreader/ledger"
)

// claimLoop claims blocks in file order, skipping duplicates, and hands the
// records this run may send to the workers.
func (p *pipeline) claimLoop() {
	for {
		var it *item
		select {
		case <-p.stop:
			return
		case it = <-p.blocks:
		case it = <-p.reclaim:
		default:
			p.flushCarry() // nothing waiting: what is carried goes now
			select {
			case <-p.stop:
				return
			case it = <-p.blocks:
			case it = <-p.reclaim:
			}
		}
		if p.readCtx.Err() != nil {
			p.abandon(it.recs)
			p.done()
			continue
		}
		p.claim(it)
		p.done()
	}
}

func (p *pipeline) claim(it *item) {
	if p.claimFirst == nil {
		p.claimFirst = make(map[string]int, p.cfg.BlockSize)
	}
	first := p.claimFirst // key → index in keep
	items := p.claimItems[:0]
	defer func() {
		clear(first)
		clear(items) // keeps no record alive
		p.claimItems = items[:0]
	}()
	var keep, repeats []*rec
	for _, r := range it.recs {
		if _, ok := first[r.c.ExternalID]; ok {
			repeats = append(repeats, r)
			continue
		}
		first[r.c.ExternalID] = len(keep)
		keep = append(keep, r)
		items = append(items, ledger.Item{Key: r.c.ExternalID, Fingerprint: r.fp, File: r.file, Line: r.line, Contact: &r.c})
	}
	var ds []ledger.Decision
	err := p.retryDB("claim keys", func(ctx context.Context) (err error) {
		ds, err = p.run.Claim(ctx, items)
		return err
	})
	if err != nil {
		p.fatal(err)
		return
	}
	// A repeat within the block counts as what its first occurrence is when
	// that was delivered before, so block boundaries never change a report.
	for _, r := range repeats {
		i := first[r.c.ExternalID]
		if d := ds[i]; d.Status == ledger.Unchanged && r.fp == keep[i].fp {
			p.skip(r, outUnchanged, nil, d.Why)
		} else {
			p.skip(r, outDuplicate, nil, fmt.Sprintf("same key as %s line %d", keep[i].file, keep[i].line))
		}
	}
	var send, busy, orphans, viaOrphans []*rec
	var orphanWait, viaWait time.Duration
	for i, d := range ds {
		r := keep[i]
		switch d.Status {
		case ledger.Claimed, ledger.Resend:
			send = append(send, r)
		case ledger.Updating:
			r.update = d.Update
			send = append(send, r)
		case ledger.TakenOver:
			if d.Update != nil {
				r.update = d.Update // an update is resent, never looked up
			} else {
				p.setMaybe(r, true)
			}
			p.n.recovered.Add(1)
			if d.Orphaned {
				r.orphan = true
				w := d.Wait
				if w < 0 { // the owner left no proof of life: a whole bound
					w = p.cfg.CallBound
				}
				if d.Via != "" && d.ViaWait < w {
					r.via, r.fullDue = d.Via, time.Now().Add(w)
					viaOrphans = append(viaOrphans, r)
					viaWait = max(viaWait, d.ViaWait)
					continue
				}
				orphans = append(orphans, r)
				orphanWait = max(orphanWait, w)
			} else {
				send = append(send, r)
			}
		case ledger.Unchanged:
			p.skip(r, outUnchanged, nil, d.Why)
		case ledger.DuplicateInFile:
			p.skip(r, outDuplicate, nil, d.Why)
		case ledger.Stale:
			p.skip(r, outStale, nil, d.Why)
		case ledger.Changed:
			why := d.Why
			if why == "" {
				why = fmt.Sprintf("changed, not sent (-changed %s)", p.cfg.Changed)
			}
			p.skip(r, outChanged, d.Update.Changed, why)
		case ledger.Busy:
			r.last = d.Why
			if r.first.IsZero() {
				r.first = time.Now()
			}
			if time.Since(r.first) > p.cfg.MaxRetryTime {
				p.failUnclaimed(r, "still held by another run after -max-retry-time: "+d.Why)
				continue
			}
			busy = append(busy, r)
		}
	}
	if len(busy) > 0 {
		p.sched.add(&item{recs: busy, reclaim: true, due: time.Now().Add(time.Second)})
	}
	if len(orphans) > 0 {
		p.log.Info("claims of a crashed run taken over; looking them up once its integrator calls are over",
			"records", len(orphans), "after", orphanWait)
		p.spareRoom(orphans)
		p.sched.add(&item{recs: orphans, due: time.Now().Add(orphanWait)})
		p.noteRecoveryWait(orphanWait)
	}
	if len(viaOrphans) > 0 {
		p.log.Info("claims of a crashed run taken over; its integrator is ours, which holds what it still works on: looking them up through it",
			"records", len(viaOrphans), "after", viaWait)
		p.sched.add(&item{recs: viaOrphans, due: time.Now().Add(viaWait)})
		p.noteRecoveryWait(viaWait)
	}
	p.carryOut(send)
}

// carryOut gathers records to send across blocks, so that blocks of mostly
// known keys (a nightly dump where 1% changed) do not cost an integrator
// call, and a CRM request, for a handful of records each: a call goes out
// once it holds a block's worth (BlockSize records or BlockBytes), or when
// no block is waiting to be claimed. Only the claim loop calls it.
func (p *pipeline) carryOut(recs []*rec) {
	if len(recs) == 0 {
		return
	}
	if len(p.carry) == 0 {
		p.add() // the carried item is in flight until it is sent
	}
	p.carry = append(p.carry, recs...)
	for _, r := range recs {
		for _, f := range r.fields {
			p.carryBytes += len(f)
		}
	}
	if len(p.carry) >= p.cfg.BlockSize || p.carryBytes >= p.cfg.BlockBytes {
		p.flushCarry()
	}
}

// flushCarry sends what carryOut gathered.
func (p *pipeline) flushCarry() {
	if len(p.carry) == 0 {
		return
	}
	it := &item{recs: p.carry}
	p.carry, p.carryBytes = nil, 0
	if p.readCtx.Err() != nil {
		p.abandon(it.recs)
		p.done()
		return
	}
	select {
	case p.send <- it:
	case <-p.stop:
	}
}

// noteQuota keeps the latest moment the CRM said its daily allocation
// comes back.
func (p *pipeline) noteQuota(until time.Time) { storeMax(&p.n.quotaUntil, until.UnixNano()) }

// noteRecoveryWait keeps the longest wait for a dead run's calls, for the
// report.
func (p *pipeline) noteRecoveryWait(d time.Duration) { storeMax(&p.n.recoveryWait, int64(d)) }

// storeMax raises a to v unless it holds more already.
func storeMax(a *atomic.Int64, v int64) {
	for {
		cur := a.Load()
		if v <= cur || a.CompareAndSwap(cur, v) {
			return
		}
	}
}

// setMaybe marks whether r may already be in the CRM, keeping the recovery
// backlog's count.
func (p *pipeline) setMaybe(r *rec, v bool) {
	if v && r.update != nil {
		return // an update is resent, never looked up
	}
	if r.maybeSent != v {
		r.maybeSent = v
		if v {
			p.n.maybe.Add(1)
		} else {
			p.n.maybe.Add(-1)
		}
	}
}

// skip ends a record that is not sent, listing it in the skipped file
// with the fields that changed, if any.
func (p *pipeline) skip(r *rec, o outcome, fields []string, why string) {
	p.setMaybe(r, false)
	p.n.counter(o).Add(1)
	p.releaseRecs(r)
	if p.skipped != nil {
		p.skipped.Write(r.file, r.line, r.c.ExternalID, o.String(), fields, why)
	}
}

// failUnclaimed ends a record this run never claimed.
func (p *pipeline) failUnclaimed(r *rec, why string) {
	p.setMaybe(r, false)
	p.n.failed.Add(1)
	p.releaseRecs(r)
	if err := p.reject(r.file, r.line, r.fields, "failed: "+why); err != nil {
		p.fatal(err)
	}
}

// abandon ends records left for a later run after an interrupt.
func (p *pipeline) abandon(recs []*rec) {
	for _, r := range recs {
		p.setMaybe(r, false)
	}
	p.n.unfinished.Add(int64(len(recs)))
	p.releaseRecs(recs...)
}
