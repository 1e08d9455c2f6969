package importer

import (
	"fmt"
	"sync"
	"time"
)

// The recovery figures of the progress line; see lookupRate.
type lookupProgress struct {
	lookMu  sync.Mutex
	lookAt  time.Time
	lookN   int64
	started time.Time
}

// progress prints a line every ProgressEvery until done is closed.
func (p *pipeline) progress(start time.Time, done <-chan struct{}) {
	t := time.NewTicker(p.cfg.ProgressEvery)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			p.printProgress(start, false)
		}
	}
}

// lookupRate is the integrators' lookups per second for this run since the
// last progress line (since the start, for the final one).
func (p *pipeline) lookupRate(final bool) (total int64, perSecond float64) {
	if p.cfg.Lookups == nil {
		return 0, 0
	}
	now, n := time.Now(), p.cfg.Lookups()
	p.lookMu.Lock()
	defer p.lookMu.Unlock()
	if final || p.lookAt.IsZero() {
		perSecond = float64(n) / max(time.Since(p.started).Seconds(), 0.001)
	} else {
		perSecond = float64(n-p.lookN) / max(now.Sub(p.lookAt).Seconds(), 0.001)
	}
	p.lookAt, p.lookN = now, n
	return n, perSecond
}

func (p *pipeline) printProgress(start time.Time, final bool) {
	elapsed := time.Since(start)
	rows := p.n.rows.Load()
	rate := float64(rows) / max(elapsed.Seconds(), 0.001)
	p.offMu.Lock()
	off, size := p.offset()
	p.offMu.Unlock()
	where := fmt.Sprintf("%s read", bytesHuman(off))
	eta := ""
	if size > 0 {
		frac := float64(off) / float64(size)
		where = fmt.Sprintf("%s of %s (%.0f%%)", bytesHuman(off), bytesHuman(size), 100*frac)
		if frac > 0.01 && !final {
			left := time.Duration(float64(elapsed) * (1 - frac) / frac)
			eta = " · ETA " + left.Round(time.Second).String()
		}
	}
	label := "progress"
	if final {
		label = "finished"
	}
	retrying := int64(0)
	if p.sched != nil {
		retrying = p.sched.waiting()
	}
	recovery := ""
	lookups, lookupRate := p.lookupRate(final)
	if backlog := p.n.maybe.Load(); backlog > 0 || lookups > 0 {
		recovery = fmt.Sprintf(" · recovering %d (lookups %d, %.0f/s)", backlog, lookups, lookupRate)
	}
	updated := ""
	if u := p.n.updated.Load(); u > 0 {
		updated = fmt.Sprintf(" · updated %d", u)
	}
	line := fmt.Sprintf("%s: %d rows (%.0f/s) · %s%s · created %d%s · retrying %d%s · rejected %d · skipped %d · elapsed %s",
		label, rows, rate, where, eta, p.n.created.Load(), updated, retrying, recovery,
		p.n.invalid.Load()+p.n.crmRejected.Load(), p.n.dupes.Load()+p.n.unchanged.Load()+p.n.stale.Load()+p.n.changed.Load(), elapsed.Round(time.Second))
	if st, ok := p.cfg.Progress.(StatusLine); ok {
		st.Status(line, final)
		return
	}
	fmt.Fprintln(p.cfg.Progress, line)
}

// StatusLine is a Progress writer that shows one status line rewritten in
// place (a terminal), rather than a line per interval.
type StatusLine interface {
	// Status replaces the status line; final ends it with a newline.
	Status(line string, final bool)
}

func bytesHuman(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
