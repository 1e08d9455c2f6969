package importer

import (
	"time"

	"crmsync/csvreader/export"
)

// Report is the account of a run. Every row read is counted in exactly one
// of OtherShard, RejectedInvalid, DuplicatesInFile, Unchanged, Stale,
// Changed, Created, Updated, RejectedByCRM, Failed, Unfinished (and, in a
// dry run, New).
type Report struct {
	RunID  int64    `json:"run_id,omitempty"`
	Files  []string `json:"files"`
	DryRun bool     `json:"dry_run,omitempty"`
	// Shard is the reader's shard ("2/3", Config.Shard); OtherShard the
	// rows read whose keys other shards own, left to their readers.
	Shard            string `json:"shard,omitempty"`
	OtherShard       int64  `json:"other_shard,omitempty"`
	Rows             int64  `json:"rows"`
	Valid            int64  `json:"valid"`
	RejectedInvalid  int64  `json:"rejected_invalid"`
	DuplicatesInFile int64  `json:"duplicates_in_file"`
	// Unchanged: keys the CRM holds as the export says.
	Unchanged int64 `json:"unchanged"`
	// Stale: keys the CRM holds from a newer export (or a run is sending
	// a newer version of): not sent.
	Stale int64 `json:"stale"`
	// Changed: keys the CRM holds with other content, not sent: with
	// -changed skip or report, and in a dry run.
	Changed int64 `json:"changed"`
	New     int64 `json:"new,omitempty"`
	// Created and Updated: what the CRM confirmed; Delivered is their sum.
	Created       int64 `json:"created"`
	Updated       int64 `json:"updated"`
	Delivered     int64 `json:"delivered"`
	RejectedByCRM int64 `json:"rejected_by_crm"`
	Failed        int64 `json:"failed"`
	Unfinished    int64 `json:"unfinished"`
	Recovered     int64 `json:"recovered"` // claims of dead runs taken over
	// RecoveryWaitSeconds: the longest the run waited before looking up
	// claims taken over, for the integrator calls their dead owner may have
	// left running.
	RecoveryWaitSeconds float64 `json:"recovery_wait_seconds,omitempty"`
	// QuotaExhaustedUntil: the run stopped because the CRM's daily request
	// allocation was spent; it comes back then (RFC 3339, UTC).
	QuotaExhaustedUntil string `json:"quota_exhausted_until,omitempty"`
	// QuotaReason is the daemon's word on it (the CRM's refusal, or the
	// share it keeps for the CRM's other integrations).
	QuotaReason string `json:"quota_reason,omitempty"`
	// Lookups: external ids the integrators looked up for this run.
	Lookups        int64   `json:"lookups,omitempty"`
	Retries        int64   `json:"retries"`
	Interrupted    bool    `json:"interrupted,omitempty"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	RowsPerSecond  float64 `json:"rows_per_second"`
	RejectsFile    string  `json:"rejects_file,omitempty"`

	// Suspect counts rows, among the rejected or delivered ones, whose
	// quoted field spans lines that look like rows (a quote left open).
	Suspect int64 `json:"suspect,omitempty"`
	// BlankRows and RepeatedHeaders count lines that were no rows: rows of
	// empty fields only, and the header repeated in the same order.
	BlankRows       int64 `json:"blank_rows,omitempty"`
	RepeatedHeaders int64 `json:"repeated_headers,omitempty"`
	// Mapping, in a dry run, is where each column goes.
	Mapping []export.ColumnMapping `json:"mapping,omitempty"`
	// AsOf is the run's as-of time (RFC 3339): -as-of, or the files'
	// modification time.
	AsOf string `json:"as_of,omitempty"`
	// Error is why the run stopped, when it did not finish.
	Error string `json:"error,omitempty"`
}

// Accounted reports whether every row is counted in exactly one outcome.
func (r *Report) Accounted() bool { return r.Rows == r.settled() }

// settled is the number of rows counted in an outcome.
func (r *Report) settled() int64 {
	return r.OtherShard + r.RejectedInvalid + r.DuplicatesInFile + r.Unchanged + r.Stale + r.Changed + r.New +
		r.Created + r.Updated + r.RejectedByCRM + r.Failed + r.Unfinished
}

func (r *Report) finish(start time.Time) {
	r.ElapsedSeconds = time.Since(start).Seconds()
	if r.ElapsedSeconds > 0 {
		r.RowsPerSecond = float64(r.Rows) / r.ElapsedSeconds
	}
}

func (p *pipeline) fill(r *Report) {
	r.Rows, r.Valid, r.RejectedInvalid = p.n.rows.Load(), p.n.valid.Load(), p.n.invalid.Load()
	r.OtherShard = p.n.otherShard.Load()
	r.DuplicatesInFile, r.Unchanged, r.Stale, r.Changed = p.n.dupes.Load(), p.n.unchanged.Load(), p.n.stale.Load(), p.n.changed.Load()
	r.Created, r.Updated, r.RejectedByCRM, r.Failed = p.n.created.Load(), p.n.updated.Load(), p.n.crmRejected.Load(), p.n.failed.Load()
	r.Delivered = r.Created + r.Updated
	r.Unfinished, r.Recovered, r.Retries = p.n.unfinished.Load(), p.n.recovered.Load(), p.n.retries.Load()
	r.RecoveryWaitSeconds = time.Duration(p.n.recoveryWait.Load()).Seconds()
	if p.cfg.Lookups != nil {
		r.Lookups = p.cfg.Lookups()
	}
	r.Suspect, r.BlankRows, r.RepeatedHeaders = p.n.suspect.Load(), p.n.blank.Load(), p.n.repeatedHeaders.Load()
}
