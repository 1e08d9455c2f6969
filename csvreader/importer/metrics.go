package importer

import (
	"fmt"
	"io"
	"strconv"
	"time"
)

// Snapshot is what a run has done so far, for csvreader's /metrics.
type Snapshot struct {
	Rows, Valid, Invalid, Duplicates, Unchanged, Stale, Changed int64
	Created, Updated, RejectedByCRM, Failed, Unfinished         int64
	OtherShard                                                  int64 // rows another -shard's reader owns
	Retries                                                     int64 // retry verdicts acted on
	InFlight                                                    int64 // records read and not settled
	RetryQueue                                                  int64 // records waiting for a retry
	RecoveryBacklog                                             int64 // records that may be in the CRM, not settled yet
	Lookups                                                     int64 // external ids the integrators looked up
	BytesRead, FileSize                                         int64
	Elapsed                                                     time.Duration
}

// snapshot reads the run's counters; safe while the run goes on.
func (p *pipeline) snapshot() Snapshot {
	s := Snapshot{
		Rows: p.n.rows.Load(), Valid: p.n.valid.Load(), Invalid: p.n.invalid.Load(),
		Duplicates: p.n.dupes.Load(), Unchanged: p.n.unchanged.Load(), Stale: p.n.stale.Load(), Changed: p.n.changed.Load(),
		Created: p.n.created.Load(), Updated: p.n.updated.Load(), RejectedByCRM: p.n.crmRejected.Load(), Failed: p.n.failed.Load(),
		Unfinished: p.n.unfinished.Load(), Retries: p.n.retries.Load(), OtherShard: p.n.otherShard.Load(),
		InFlight:        int64(len(p.room) + len(p.spare)),
		RecoveryBacklog: p.n.maybe.Load(),
		Elapsed:         time.Since(p.started),
	}
	if p.sched != nil {
		s.RetryQueue = p.sched.waiting()
	}
	if p.cfg.Lookups != nil {
		s.Lookups = p.cfg.Lookups()
	}
	p.offMu.Lock()
	s.BytesRead, s.FileSize = p.offset()
	p.offMu.Unlock()
	return s
}

// WriteMetrics writes s in the Prometheus text exposition format, in the
// style of the integrator's /metrics.
func (s Snapshot) WriteMetrics(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	metric := func(name, typ, help string, v int64) {
		p("# HELP %s %s\n# TYPE %s %s\n%s %d\n", name, help, name, typ, name, v)
	}
	metric("csvreader_rows_read_total", "counter", "Rows read from the export files.", s.Rows)
	p("# HELP csvreader_rows_total Rows by what became of them so far.\n# TYPE csvreader_rows_total counter\n")
	for _, o := range []struct {
		outcome string
		n       int64
	}{{outCreated.String(), s.Created}, {outUpdated.String(), s.Updated}, {outUnchanged.String(), s.Unchanged},
		{outStale.String(), s.Stale}, {outChanged.String(), s.Changed}, {outDuplicate.String(), s.Duplicates},
		{"invalid", s.Invalid}, {"rejected_by_crm", s.RejectedByCRM}, {"failed", s.Failed}, {"unfinished", s.Unfinished},
		{"other_shard", s.OtherShard}} {
		p("csvreader_rows_total{outcome=\"%s\"} %d\n", o.outcome, o.n)
	}
	metric("csvreader_retries_total", "counter", "Retry verdicts the reader acted on.", s.Retries)
	metric("csvreader_in_flight", "gauge", "Records read and not settled yet.", s.InFlight)
	metric("csvreader_retry_queue", "gauge", "Records waiting for a retry.", s.RetryQueue)
	metric("csvreader_recovery_backlog", "gauge", "Records that may already be in the CRM (a dead run's, or an ambiguous answer's), not settled yet.", s.RecoveryBacklog)
	metric("csvreader_lookups_total", "counter", "External ids the integrators looked up in the CRM for this run.", s.Lookups)
	metric("csvreader_bytes_read_total", "counter", "Bytes of the current export file read.", s.BytesRead)
	if s.FileSize >= 0 {
		metric("csvreader_file_bytes", "gauge", "Size of the current export file.", s.FileSize)
	}
	rate := 0.0
	if sec := s.Elapsed.Seconds(); sec > 0 {
		rate = float64(s.Rows) / sec
	}
	p("# HELP csvreader_rows_per_second Rows read per second since the run started.\n# TYPE csvreader_rows_per_second gauge\ncsvreader_rows_per_second %s\n",
		strconv.FormatFloat(rate, 'f', 1, 64))
}
