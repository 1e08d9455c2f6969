// Package importer drives one csvreader run: it streams export files, sends
// valid rows in blocks through the integrator with a pool of workers, acts on
// each record's verdict, and records confirmations in the ledger, so that
// every row ends delivered, skipped as a duplicate, or in the rejects file.
//
// The stages, each owned by Run:
//
//	read ──blocks──▶ claim (one, in file order) ──send──▶ workers ×N ──confirm──▶ writer ──▶ ledger
//	                   ▲                                   │
//	                   └──────reclaim◀── scheduler ◀─retry─┘
//
// Claiming is sequential so that which occurrence of a repeated key counts
// as the duplicate is decided by file order, the same on every run. So is
// recording deliveries: one writer gathers what the workers confirmed into
// one COPY per transaction, instead of every worker's COPY contending for
// the same table and index pages.
package importer

import (
	"context"
	"database/sql"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crmsync/csvreader/export"
	"crmsync/csvreader/ledger"
	"crmsync/shared/backoff"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// Deliverer sends records to the CRM: the integrator's client.
type Deliverer interface {
	Deliver(ctx context.Context, recs []crmrpc.Record) ([]crmrpc.Verdict, error)
}

// Config is one run's settings. Zero values take the documented defaults.
type Config struct {
	Files  []string // export files; "-" is stdin
	Export export.Options

	Workers      int           // concurrent Deliver calls; default 12
	BlockSize    int           // records per Deliver call; default 1000
	BlockBytes   int           // cap on a block's field bytes; default 4 MiB
	MaxAttempts  int           // sends per record before it fails; default 10
	MaxRetryTime time.Duration // time from first send before a record fails; default 10m
	MaxRejects   int           // stop once more rows than this are rejected; 0: no limit
	DBRetryTime  time.Duration // how long to retry a failing database write; default 2m
	// CallBound is the longest the integrator may go on working on a call
	// whose caller is gone (net/rpc cannot cancel a call). A record whose
	// call broke, or whose claim was taken over from a run that crashed, is
	// looked up in the CRM only after this long: sooner, the lookup could
	// miss a create the orphaned call is about to make. Default 2m; csvreader
	// sets it from the daemon's advertised call timeout plus CallBoundMargin.
	CallBound time.Duration
	// Lookups, when set, reports how many external ids the integrators
	// looked up for this run so far (crmrpc.Client.Lookups), for progress.
	Lookups func() int64
	// SendGate, when set, is told the run's check, to ask right before
	// each write with the call's context and the Instance of the daemon it
	// goes to: that the run still owns what it sends (ledger.Run.SendGate),
	// that records released early for one daemon go to that one, and it
	// records the daemons the run sends to (ledger.Run.NoteIntegrator). The
	// client built by csvreader passes it to crmrpc.ClientConfig.SendGate.
	SendGate func(func(ctx context.Context, instance string) error)
	// OnStart, when set, is given, once the run has started, a function
	// that reads what it has done so far (csvreader's /metrics).
	OnStart func(snapshot func() Snapshot)
	// CheckColumns, when set, is asked about the export's attribute
	// columns before anything is claimed or sent: an error (the CRM has
	// no field for some) stops the run.
	CheckColumns func(attributes []string) error
	// Instance, when set, names the integrator process the client talks to
	// now (crmrpc.Client.Instance): records a dead run sent only through
	// that process may be resolved through it without waiting out its calls.
	Instance func() string

	// Shard, when set, is this reader's part of the files: rows of keys
	// other shards own are counted as OtherShard and nothing else.
	Shard Shard

	RejectsPath string // default: <first file's base name>.rejects.csv
	SkippedPath string // optional: one line per duplicate skipped, with why
	DryRun      bool   // validate and count; no claim, no CRM call

	Progress      io.Writer     // progress lines; nil: none
	ProgressEvery time.Duration // default 5s
	Logger        *slog.Logger

	// MaxRejectRatio stops a run once more than RejectRatioMinimum rows
	// are rejected and they are more than this share of the rows read: a
	// file that is clearly garbage stops early. 0: no limit.
	MaxRejectRatio float64
}

func (c *Config) setDefaults() {
	if c.Workers <= 0 {
		c.Workers = 12 // enough to overlap blocks held up by CRM retries inside the integrator
	}
	if c.BlockSize <= 0 {
		c.BlockSize = 1000
	}
	if c.BlockBytes <= 0 {
		c.BlockBytes = 4 << 20
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.MaxRetryTime <= 0 {
		c.MaxRetryTime = 10 * time.Minute
	}
	if c.CallBound <= 0 {
		c.CallBound = 2 * time.Minute
	}
	if c.DBRetryTime <= 0 {
		c.DBRetryTime = 2 * time.Minute
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.RejectsPath == "" && len(c.Files) > 0 {
		c.RejectsPath = DefaultRejectsPath(c.Files[0])
	}
}

// CallBoundMargin is added to an integrator's advertised call timeout to
// make the reader's CallBound: a call's answer takes a moment to come
// back, and a run cut off from PostgreSQL may start sending up to
// ledger.LockLease after it last proved its lock.
const CallBoundMargin = ledger.LockLease + 2*time.Second

// MaxInFlight is how many records a run holds at most between reading them
// and settling them: enough for every worker to have a block out and the
// next one ready.
func MaxInFlight(workers, blockSize int) int { return workers * blockSize * 2 }

// DefaultRejectsPath is where rejects of file go when no path is given: in
// the current directory, named after the file.
func DefaultRejectsPath(file string) string {
	base := filepath.Base(file)
	if file == "-" {
		base = "stdin"
	}
	base = strings.TrimSuffix(base, ".gz")
	base = strings.TrimSuffix(base, filepath.Ext(base))
	return base + ".rejects.csv"
}

// Report is the account of a run. Every row read is counted in exactly one
// of OtherShard, RejectedInvalid, DuplicatesInFile, AlreadyDelivered,
// Delivered, RejectedByCRM, Failed, Unfinished (and, in a dry run, New).
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
	AlreadyDelivered int64  `json:"already_delivered"`
	New              int64  `json:"new,omitempty"`
	Delivered        int64  `json:"delivered"`
	RejectedByCRM    int64  `json:"rejected_by_crm"`
	Failed           int64  `json:"failed"`
	Unfinished       int64  `json:"unfinished"`
	Recovered        int64  `json:"recovered"` // claims of dead runs taken over
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
	// Error is why the run stopped, when it did not finish.
	Error string `json:"error,omitempty"`
}

// Accounted reports whether every row is counted in exactly one outcome.
func (r *Report) Accounted() bool { return r.Rows == r.settled() }

// settled is the number of rows counted in an outcome.
func (r *Report) settled() int64 {
	return r.OtherShard + r.RejectedInvalid + r.DuplicatesInFile + r.AlreadyDelivered + r.New +
		r.Delivered + r.RejectedByCRM + r.Failed + r.Unfinished
}

// ErrTooManyRejects stops a run whose export looks broken.
var ErrTooManyRejects = errors.New("too many rejected rows")

// RejectRatioMinimum is how many rows must be rejected before
// Config.MaxRejectRatio applies, so a few bad rows at the top of a file do
// not stop it.
const RejectRatioMinimum = 1000

// rec is one valid row on its way to the CRM.
type rec struct {
	c         contact.Contact
	fp        string
	file      string
	line      int64
	fields    []string
	attempts  int
	first     time.Time
	maybeSent bool
	// orphan: a call that sent the record may still be running in an
	// integrator (its call broke, or its claim came from a crashed run).
	// Its next send waits CallBound; should the run give it up first, the
	// ledger keeps the flag for the run that takes it over.
	orphan bool
	spare  bool // it holds a token of the spare room, not of the room (spareRoom)
	// via: a dead run's record released early because that run sent only
	// through the integrator process via: until fullDue it may be sent
	// through that process alone (ledger.Decision.Via).
	via     string
	fullDue time.Time
	last    string // last retry reason
}

// item is a group of records moving between stages.
type item struct {
	recs    []*rec
	reclaim bool // needs claiming again (a live run held it)
	due     time.Time
}

type counters struct {
	rows, valid, invalid, dupes, already, delivered, crmRejected,
	failed, unfinished, recovered, retries, otherShard atomic.Int64
	maybe                           atomic.Int64           // records that may be in the CRM, not settled yet: the recovery backlog
	recoveryWait                    atomic.Int64           // longest wait for a dead run's calls, in ns
	quotaUntil                      atomic.Int64           // unix ns the CRM's daily allocation comes back at; 0: not spent
	quotaReason                     atomic.Pointer[string] // the first quota verdict's message
	suspect, blank, repeatedHeaders atomic.Int64
}

type pipeline struct {
	cfg     Config
	run     *ledger.Run
	crm     Deliverer
	rejects *export.RejectsWriter
	skipped *skippedWriter
	log     *slog.Logger
	n       counters

	readCtx context.Context // done on interrupt: stop reading, stop retrying
	workCtx context.Context // done on a fatal error
	fatal   context.CancelCauseFunc

	blocks  chan *item
	send    chan *item
	reclaim chan *item
	confirm chan confirmJob // deliveries for the writer
	room    chan struct{}   // one token per record allowed in flight
	spare   chan struct{}   // tokens of records waiting out a dead run's calls (rec.spare)
	sched   *scheduler

	pending  atomic.Int64 // items not yet finished
	readDone atomic.Bool
	stop     chan struct{}
	stopOnce sync.Once

	quotaStop func(until time.Time) // the CRM's daily allocation is spent: stop cleanly

	offset func() (int64, int64) // bytes read, size of the current file
	offMu  sync.Mutex
	lookupProgress
}

// Run imports cfg.Files through crm, recording deliveries in d. It returns
// the report even with an error. Cancelling ctx interrupts the run: reading
// stops, blocks already claimed are finished, pending retries are left for
// the next run.
func Run(ctx context.Context, cfg Config, d *sql.DB, crm Deliverer) (*Report, error) {
	cfg.setDefaults()
	start := time.Now()
	if cfg.DryRun {
		rep, err := dryRun(ctx, cfg, d)
		rep.finish(start)
		return rep, err
	}
	p := &pipeline{cfg: cfg, crm: crm, log: cfg.Logger,
		blocks: make(chan *item, 1), send: make(chan *item, cfg.Workers),
		reclaim: make(chan *item, 1), confirm: make(chan confirmJob, cfg.Workers), room: make(chan struct{}, MaxInFlight(cfg.Workers, cfg.BlockSize)),
		spare: make(chan struct{}, MaxInFlight(cfg.Workers, cfg.BlockSize)),
		stop:  make(chan struct{})}
	// Reading stops on an interrupt, and when the CRM's daily allocation is
	// spent (quotaStop): then what is in flight finishes and the rest is
	// left for a rerun.
	var stopReading context.CancelFunc
	p.readCtx, stopReading = context.WithCancel(ctx)
	defer stopReading()
	p.quotaStop = func(until time.Time) {
		p.noteQuota(until)
		stopReading()
	}
	p.started = start
	var cancel context.CancelCauseFunc
	p.workCtx, cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	p.fatal = func(err error) { cancel(err); p.closeStop() }
	defer cancel(nil)
	p.offset = func() (int64, int64) { return 0, -1 }

	rep := &Report{Files: cfg.Files, RejectsFile: cfg.RejectsPath, Shard: cfg.Shard.String()}
	first, err := export.Open(cfg.Files[0], cfg.Export)
	if err != nil {
		return rep, err
	}
	if cfg.CheckColumns != nil {
		if err := cfg.CheckColumns(first.AttributeColumns()); err != nil {
			first.Close()
			return rep, err
		}
	}
	if p.rejects, err = export.NewRejectsWriter(cfg.RejectsPath, first.Header(), first.Delimiter()); err != nil {
		first.Close()
		return rep, fmt.Errorf("rejects file: %w", err)
	}
	if cfg.SkippedPath != "" {
		if p.skipped, err = newSkippedWriter(cfg.SkippedPath); err != nil {
			first.Close()
			p.rejects.Close()
			return rep, err
		}
	}
	if p.run, err = ledger.Start(ctx, d, cfg.Files); err != nil {
		first.Close()
		p.rejects.Close()
		return rep, err
	}
	rep.RunID = p.run.ID()
	if cfg.SendGate != nil {
		cfg.SendGate(p.gate)
	}
	if cfg.Instance != nil {
		p.run.SetIntegrator(cfg.Instance())
	}
	if err := p.run.SetCallBound(ctx, cfg.CallBound); err != nil {
		p.log.Warn("could not record the call bound; runs taking this run's claims over wait their own", "err", err)
	}
	p.log.Info("run started", "run", rep.RunID, "files", len(cfg.Files), "workers", cfg.Workers, "block_size", cfg.BlockSize)
	p.sched = newScheduler(p)
	if cfg.OnStart != nil {
		cfg.OnStart(p.snapshot)
	}

	var wg sync.WaitGroup
	var readErr error
	wg.Go(func() { readErr = p.read(first) })
	wg.Go(p.claimLoop)
	for range cfg.Workers {
		wg.Go(p.workLoop)
	}
	wg.Go(p.sched.loop)
	wg.Go(p.writeLoop)
	progressDone := make(chan struct{})
	if cfg.Progress != nil {
		wg.Go(func() { p.progress(start, progressDone) })
	}
	<-p.stop
	close(progressDone)
	wg.Wait()

	runErr := context.Cause(p.workCtx)
	if runErr == nil {
		runErr = readErr
	}
	p.fill(rep)
	if runErr != nil {
		// A fatal stop drops what was read but not settled (blocks queued,
		// calls in flight): those rows are unfinished, for a rerun to
		// resume, so the report still adds up.
		rep.Unfinished += max(0, rep.Rows-rep.settled())
	}
	if u := p.n.quotaUntil.Load(); u > 0 {
		rep.QuotaExhaustedUntil = time.Unix(0, u).UTC().Format(time.RFC3339)
		if why := p.n.quotaReason.Load(); why != nil {
			rep.QuotaReason = *why
		}
	}
	rep.Interrupted = (ctx.Err() != nil || rep.QuotaExhaustedUntil != "") && runErr == nil
	rep.finish(start)
	if cfg.Progress != nil {
		p.printProgress(start, true)
	}
	status := "done"
	switch {
	case runErr != nil:
		status = "failed"
	case rep.Interrupted:
		status = "interrupted"
	}
	errs := []error{runErr}
	errs = append(errs, p.rejects.Close())
	if p.skipped != nil {
		errs = append(errs, p.skipped.Close())
	}
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer ccancel()
	errs = append(errs, p.run.Close(cctx, status, rep))
	return rep, errors.Join(errs...)
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
	r.DuplicatesInFile, r.AlreadyDelivered = p.n.dupes.Load(), p.n.already.Load()
	r.Delivered, r.RejectedByCRM, r.Failed = p.n.delivered.Load(), p.n.crmRejected.Load(), p.n.failed.Load()
	r.Unfinished, r.Recovered, r.Retries = p.n.unfinished.Load(), p.n.recovered.Load(), p.n.retries.Load()
	r.RecoveryWaitSeconds = time.Duration(p.n.recoveryWait.Load()).Seconds()
	if p.cfg.Lookups != nil {
		r.Lookups = p.cfg.Lookups()
	}
	r.Suspect, r.BlankRows, r.RepeatedHeaders = p.n.suspect.Load(), p.n.blank.Load(), p.n.repeatedHeaders.Load()
}

func (p *pipeline) closeStop() { p.stopOnce.Do(func() { close(p.stop) }) }

// add and done track items in flight; the run ends when reading is over and
// nothing is in flight.
func (p *pipeline) add() { p.pending.Add(1) }
func (p *pipeline) done() {
	if p.pending.Add(-1) == 0 && p.readDone.Load() {
		p.closeStop()
	}
}

// release gives back the room n finished records took.
func (p *pipeline) release(n int) {
	for range n {
		<-p.room
	}
}

// releaseRecs gives back the room (or the spare room) finished records took.
func (p *pipeline) releaseRecs(recs ...*rec) {
	for _, r := range recs {
		if r.spare {
			<-p.spare
		} else {
			<-p.room
		}
	}
}

// spareRoom moves records that wait out a dead run's calls from the room
// in flight to the spare room, as far as it goes, so that the records
// after them in the file are read and sent meanwhile instead of waiting
// behind them. Records in memory stay bounded: by MaxInFlight in each.
func (p *pipeline) spareRoom(recs []*rec) {
	for _, r := range recs {
		if r.spare {
			continue
		}
		select {
		case p.spare <- struct{}{}:
			r.spare = true
			<-p.room
		default:
			return
		}
	}
}

// confirmJob is what a worker hands the writer: deliveries, and how many
// of them hold spare room.
type confirmJob struct {
	ds    []ledger.Delivery
	spare int
}

func (p *pipeline) stopped() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

// read streams every file into blocks. It returns a fatal read error.
func (p *pipeline) read(first *export.Reader) (err error) {
	defer func() {
		if err != nil {
			p.fatal(err)
		}
		p.readDone.Store(true)
		if p.pending.Load() == 0 {
			p.closeStop()
		}
	}()
	header := first.Header()
	for i, name := range p.cfg.Files {
		r := first
		if i > 0 {
			if r, err = export.Open(name, p.cfg.Export); err != nil {
				return err
			}
			if strings.Join(r.Header(), "\x00") != strings.Join(header, "\x00") {
				r.Close()
				return fmt.Errorf("%s: its columns differ from %s's; import it in a run of its own", name, p.cfg.Files[0])
			}
		}
		p.offMu.Lock()
		p.offset = func() (int64, int64) { return r.Offset(), r.Size() }
		p.offMu.Unlock()
		err = p.readFile(r)
		st := r.Stats()
		p.n.blank.Add(st.BlankRows)
		p.n.repeatedHeaders.Add(st.RepeatedHeaders)
		r.Close()
		if err != nil || p.readCtx.Err() != nil || p.stopped() {
			return err
		}
	}
	return nil
}

func (p *pipeline) readFile(r *export.Reader) error {
	var blk []*rec
	bytes := 0
	flush := func() bool {
		if len(blk) == 0 {
			return true
		}
		for range blk {
			select {
			case p.room <- struct{}{}:
			case <-p.stop:
				return false
			}
		}
		p.add()
		select {
		case p.blocks <- &item{recs: blk}:
		case <-p.stop:
			return false
		}
		blk, bytes = nil, 0
		return true
	}
	name := r.Name()
	for p.readCtx.Err() == nil {
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			// The rows read but not yet in a block are never sent: count
			// them, so the report still adds up.
			p.n.unfinished.Add(int64(len(blk)))
			return err
		}
		p.n.rows.Add(1)
		if !p.cfg.Shard.Owns(row.Key) {
			p.n.otherShard.Add(1) // its reader sends, skips or rejects it
			continue
		}
		if len(row.Suspect) > 0 {
			p.n.suspect.Add(1)
		}
		if row.Problem != nil {
			p.n.invalid.Add(1)
			if err := p.reject(name, int64(row.Line), row.Fields, row.Problem.Code+": "+row.Problem.Message); err != nil {
				return err
			}
			continue
		}
		p.n.valid.Add(1)
		blk = append(blk, &rec{c: row.Contact, fp: row.Contact.Fingerprint(), file: name, line: int64(row.Line), fields: row.Fields})
		for _, f := range row.Fields {
			bytes += len(f)
		}
		if len(blk) >= p.cfg.BlockSize || bytes >= p.cfg.BlockBytes {
			if !flush() {
				return nil
			}
		}
	}
	flush()
	return nil
}

// reject writes a row to the rejects file and enforces -max-rejects.
// With several input files, the reason names the row's file.
func (p *pipeline) reject(file string, line int64, fields []string, reason string) error {
	if len(p.cfg.Files) > 1 {
		reason = fmt.Sprintf("%s: %s", file, reason)
	}
	if err := p.rejects.Write(int(line), fields, reason); err != nil {
		return fmt.Errorf("rejects file: %w", err)
	}
	rejected := p.n.invalid.Load() + p.n.crmRejected.Load()
	if max := p.cfg.MaxRejects; max > 0 && rejected > int64(max) {
		return fmt.Errorf("%w: more than %d (-max-rejects); the export looks broken, see %s; the last was line %d: %s", ErrTooManyRejects, max, p.cfg.RejectsPath, line, reason)
	}
	if ratio, rows := p.cfg.MaxRejectRatio, p.n.rows.Load(); ratio > 0 && rejected > RejectRatioMinimum && float64(rejected) > ratio*float64(rows) {
		return fmt.Errorf("%w: %d of the first %d rows were rejected, more than %.0f%% (-max-reject-ratio); the export looks broken, see %s; the last was line %d: %s",
			ErrTooManyRejects, rejected, rows, 100*ratio, p.cfg.RejectsPath, line, reason)
	}
	return nil
}

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
	first := make(map[string]int, len(it.recs)) // key → index in keep
	items := make([]ledger.Item, 0, len(it.recs))
	var keep, repeats []*rec
	for _, r := range it.recs {
		if _, ok := first[r.c.ExternalID]; ok {
			repeats = append(repeats, r)
			continue
		}
		first[r.c.ExternalID] = len(keep)
		keep = append(keep, r)
		items = append(items, ledger.Item{Key: r.c.ExternalID, Fingerprint: r.fp, File: r.file, Line: r.line})
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
		if d := ds[i]; d.Status == ledger.AlreadyDelivered {
			p.skip(r, "already_delivered", d.Why)
		} else {
			p.skip(r, "duplicate_in_file", fmt.Sprintf("same key as %s line %d", keep[i].file, keep[i].line))
		}
	}
	var send, busy, orphans, viaOrphans []*rec
	var orphanWait, viaWait time.Duration
	for i, d := range ds {
		r := keep[i]
		switch d.Status {
		case ledger.Claimed, ledger.Resend:
			send = append(send, r)
		case ledger.TakenOver:
			p.setMaybe(r, true)
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
		case ledger.AlreadyDelivered:
			p.skip(r, "already_delivered", d.Why)
		case ledger.DuplicateInFile:
			p.skip(r, "duplicate_in_file", d.Why)
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
	if len(send) > 0 {
		p.add()
		select {
		case p.send <- &item{recs: send}:
		case <-p.stop:
		}
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
	if r.maybeSent != v {
		r.maybeSent = v
		if v {
			p.n.maybe.Add(1)
		} else {
			p.n.maybe.Add(-1)
		}
	}
}

func (p *pipeline) skip(r *rec, status, why string) {
	p.setMaybe(r, false)
	if status == "already_delivered" {
		p.n.already.Add(1)
	} else {
		p.n.dupes.Add(1)
	}
	p.releaseRecs(r)
	if p.skipped != nil {
		p.skipped.write(r, status, why)
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
	var rejKeys, rejReasons []string
	var rejRecs []*rec
	var failKeys, failReasons []string
	var failRecs []*rec
	var retry []*rec
	var retryAfter time.Duration
	for i, v := range verdicts {
		r := it.recs[i]
		switch v.Outcome {
		case crmrpc.Delivered:
			p.setMaybe(r, false)
			if r.spare {
				spare++
			}
			delivered = append(delivered, ledger.Delivery{Contact: r.c, CRMID: v.CRMID, Fingerprint: r.fp, File: r.file, Line: r.line})
		case crmrpc.Rejected:
			p.setMaybe(r, false)
			rejRecs = append(rejRecs, r)
			rejKeys = append(rejKeys, r.c.ExternalID)
			rejReasons = append(rejReasons, "rejected by CRM: "+v.Code+": "+v.Message)
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
				failRecs = append(failRecs, r)
				failKeys = append(failKeys, r.c.ExternalID)
				failReasons = append(failReasons, fmt.Sprintf("failed after %d attempts: %s", r.attempts, r.last))
				continue
			}
			retry = append(retry, r)
			retryAfter = max(retryAfter, v.RetryAfter)
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
	p.finishAs(rejRecs, rejKeys, rejReasons, "rejected", &p.n.crmRejected)
	p.finishAs(failRecs, failKeys, failReasons, "failed", &p.n.failed)
	if len(retry) > 0 {
		p.n.retries.Add(int64(len(retry)))
		if p.readCtx.Err() != nil {
			p.leave(retry)
			return
		}
		b := backoff.Backoff{Base: 500 * time.Millisecond, Max: time.Minute}
		var d time.Duration
		for range max(retry[0].attempts, 1) {
			d = b.Next()
		}
		p.sched.add(&item{recs: retry, due: time.Now().Add(max(d, retryAfter))})
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

// maxConfirm caps the deliveries recorded in one transaction.
const maxConfirm = 10000

// writeLoop records deliveries in the ledger: whatever the workers confirmed
// while the previous write ran goes into the next one. Their room in flight
// is given back only once they are committed.
func (p *pipeline) writeLoop() {
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
			ds = make([]ledger.Delivery, 0, n)
			for _, j := range jobs {
				ds = append(ds, j.ds...)
			}
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
		// run's lock was lost, and found them in the CRM): its delivery.
		for _, i := range already {
			if p.skipped != nil {
				p.skipped.writeAt(ds[i].File, ds[i].Line, ds[i].Contact.ExternalID, "already_delivered", "recorded by another run that took the claim over")
			}
		}
		p.n.already.Add(int64(len(already)))
		p.n.delivered.Add(int64(len(ds) - len(already)))
		p.release(len(ds) - spare)
		for range spare {
			<-p.spare
		}
		for range jobs {
			p.done()
		}
	}
}

// finishAs records final rejections or failures in the ledger and the
// rejects file.
func (p *pipeline) finishAs(recs []*rec, keys, reasons []string, state string, n *atomic.Int64) {
	if len(recs) == 0 {
		return
	}
	if err := p.retryDB("mark "+state, func(ctx context.Context) error { return p.run.Mark(ctx, state, keys, reasons, orphans(recs)) }); err != nil {
		p.fatal(err)
		return
	}
	n.Add(int64(len(recs)))
	p.releaseRecs(recs...)
	for i, r := range recs {
		if err := p.reject(r.file, r.line, r.fields, reasons[i]); err != nil {
			p.fatal(err)
			return
		}
	}
	if state == "failed" {
		p.log.Warn("records failed after all retries", "records", len(recs), "last", recs[0].last)
	}
}

func orphans(recs []*rec) []bool {
	o := make([]bool, len(recs))
	for i, r := range recs {
		o[i] = r.orphan
	}
	return o
}

// leave hands claimed records to the next run after an interrupt: their
// claims stay, marked as failed ("maybe sent"), so the next run looks them
// up before sending.
func (p *pipeline) leave(recs []*rec) {
	keys := make([]string, len(recs))
	reasons := make([]string, len(recs))
	for i, r := range recs {
		keys[i], reasons[i] = r.c.ExternalID, "interrupted: "+r.last
	}
	if err := p.retryDB("mark interrupted", func(ctx context.Context) error { return p.run.Mark(ctx, "failed", keys, reasons, orphans(recs)) }); err != nil {
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

// skippedWriter lists duplicates with why they were skipped.
type skippedWriter struct {
	mu sync.Mutex
	f  *os.File
	w  *csv.Writer
}

func newSkippedWriter(path string) (*skippedWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("skipped file: %w", err)
	}
	w := csv.NewWriter(f)
	w.Write([]string{"file", "line", "key", "status", "why"})
	return &skippedWriter{f: f, w: w}, nil
}

func (s *skippedWriter) write(r *rec, status, why string) {
	s.writeAt(r.file, r.line, r.c.ExternalID, status, why)
}

func (s *skippedWriter) writeAt(file string, line int64, key, status, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w.Write([]string{file, fmt.Sprint(line), key, status, why})
}

func (s *skippedWriter) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w.Flush()
	return errors.Join(s.w.Error(), s.f.Sync(), s.f.Close())
}
