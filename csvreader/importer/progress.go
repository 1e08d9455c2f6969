package importer

import (
	"fmt"
	"time"
)

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
	fmt.Fprintf(p.cfg.Progress, "%s: %d rows (%.0f/s) · %s%s · delivered %d · retrying %d · rejected %d · skipped %d · elapsed %s\n",
		label, rows, rate, where, eta, p.n.delivered.Load(), retrying,
		p.n.invalid.Load()+p.n.crmRejected.Load(), p.n.dupes.Load()+p.n.already.Load(), elapsed.Round(time.Second))
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
