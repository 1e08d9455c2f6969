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

	// Changed is what to do with keys the CRM holds with other content
	// (-changed): update them (the default), skip them, or report them.
	Changed ledger.ChangeMode
	// AsOf is the time of the export (-as-of): a change older than the
	// version the CRM holds is stale, not sent. Zero: the newest
	// modification time of Files (now, for stdin).
	AsOf time.Time
	// Clears, when set, says whether an empty value of the named field
	// (contact.Fields' names, "attributes.X") clears the CRM's value; by
	// default an empty cell keeps it. Default: the export's mapping
	// (export.Reader.Clears).
	Clears func(name string) bool

	RejectsPath string // default: <first file's base name>.rejects.csv
	SkippedPath string // optional: one line per row not sent (duplicate, unchanged, stale, changed) and per update, with why
	DryRun      bool   // validate and count; no claim, no CRM call

	Progress      io.Writer     // progress lines; nil: none
	ProgressEvery time.Duration // default 5s
	Logger        *slog.Logger

	// MaxRejectRatio stops a run once more than RejectRatioMinimum rows
	// are rejected and they are more than this share of the rows read: a
	// file that is clearly garbage stops early. 0: no limit.
	MaxRejectRatio float64
}

// clearsOf is whether an empty value of a field clears the CRM's value:
// Config.Clears, else what the export's mapping says.
func clearsOf(cfg Config, r *export.Reader) func(string) bool {
	if cfg.Clears != nil {
		return cfg.Clears
	}
	return r.Clears
}

// asOfFiles is the as-of time of a run over files: the newest
// modification time among them; now for stdin.
func asOfFiles(files []string) (time.Time, error) {
	var t time.Time
	for _, f := range files {
		if f == "-" {
			return time.Now(), nil
		}
		st, err := os.Stat(f)
		if err != nil {
			return t, fmt.Errorf("as-of time: %w", err)
		}
		if st.ModTime().After(t) {
			t = st.ModTime()
		}
	}
	return t, nil
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
	// update: the key is in the CRM and this record changes it (c is then
	// the contact as updated).
	update *ledger.Update
}

// item is a group of records moving between stages.
type item struct {
	recs    []*rec
	reclaim bool // needs claiming again (a live run held it)
	due     time.Time
}

type counters struct {
	rows, valid, invalid, dupes, unchanged, created, updated, stale, changed, crmRejected,
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
	skipped *export.SkippedWriter
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

	// Records claimed and not sent yet, gathered across blocks (carryOut);
	// the claim loop's own.
	carry      []*rec
	carryBytes int
	// A block's keys seen so far and the items it claims: the claim
	// loop's own, reused from block to block.
	claimFirst map[string]int
	claimItems []ledger.Item

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
		if p.skipped, err = export.NewSkippedWriter(cfg.SkippedPath); err != nil {
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
	if cfg.AsOf.IsZero() {
		if cfg.AsOf, err = asOfFiles(cfg.Files); err != nil {
			return rep, errors.Join(err, p.rejects.Close(), p.run.Close(ctx, "failed", rep))
		}
	}
	rep.AsOf = cfg.AsOf.UTC().Format(time.RFC3339Nano)
	p.cfg = cfg
	if err := p.run.SetSync(ctx, ledger.Sync{AsOf: cfg.AsOf, Mode: cfg.Changed, Clears: clearsOf(cfg, first), Files: cfg.Files}); err != nil {
		return rep, errors.Join(err, p.rejects.Close(), p.run.Close(ctx, "failed", rep))
	}
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
