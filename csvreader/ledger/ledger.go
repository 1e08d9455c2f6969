// Package ledger is the reader's PostgreSQL record of what the CRM holds and
// of what is being sent to it, which makes delivery exactly-once across
// reruns, crashes and concurrent readers. docs/design.md explains the
// protocol; in short:
//
//   - A run registers itself and holds a session advisory lock on its id for
//     as long as it lives, so its claims can be told from a dead run's.
//   - Before a key is sent, the run claims it: the new keys of a block with
//     one committed claim_blocks row, a key taken over from a dead run with
//     a claims row. Claim transactions run one at a time across runs.
//   - The CRM's confirmation is recorded in customers; a block's row goes
//     once every key in it is settled.
//   - A claim whose owner is dead means "maybe sent": the next run takes it
//     over and has the integrator look the key up before creating anything.
//
// The database work is per block; per key there are only index entries of
// customers, and claims rows for the rare keys that are rejected, given up
// on or taken over.
//
// A Run is safe for concurrent use by the pipeline's goroutines.
package ledger

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/lib/pq"

	"crmsync/db"
	"crmsync/shared/contact"
)

// Run is one reader run registered in the ledger.
type Run struct {
	db *sql.DB
	id int64

	// The liveness lock and the lease on it (lock.go).
	mu         sync.Mutex
	lock       *sql.Conn // holds the run's advisory lock
	held       bool      // the lock is held right now
	wasHeld    bool      // it was taken once: taking it again starts an epoch
	leaseUntil time.Time // sends may start until then: the lock was proven held LockLease before
	epoch      int64     // times the lock was taken again after a loss
	fenced     int64     // the epoch whose fencing check has passed
	fenceMu    sync.Mutex
	lost       map[string]bool // keys the fencing check found another run's
	bound      time.Duration   // this run's call bound (SetCallBound)
	via        string          // the integrator this run sends through (SetIntegrator)
	noteMu     sync.Mutex
	noted      map[string]bool // integrators recorded in runs.integrators
	cancel     context.CancelFunc
	wg         sync.WaitGroup

	// The keys this run claimed and has not settled yet (confirmed, marked
	// rejected or failed). Bounded by the reader's records in flight.
	kmu      sync.Mutex
	inflight map[string]claim
	ownRows  int           // keys of inflight held by a claims row (block 0)
	open     map[int64]int // claim_blocks id → keys of it not settled
	finished []int64       // blocks all settled, to delete with the next write
}

// claim is a key this run holds.
type claim struct {
	block int64 // its claim_blocks row; 0: a claims row of its own
	file  string
	line  int64
	fp    string
}

// Start registers a run for files and takes its liveness lock.
func Start(ctx context.Context, d *sql.DB, files []string) (*Run, error) {
	host, _ := os.Hostname()
	r := &Run{db: d, inflight: map[string]claim{}, open: map[int64]int{}, lost: map[string]bool{}, noted: map[string]bool{}}
	if err := d.QueryRowContext(ctx,
		`INSERT INTO runs (host, pid, files) VALUES ($1, $2, $3) RETURNING id`,
		host, os.Getpid(), pq.Array(append([]string{}, files...))).Scan(&r.id); err != nil {
		return nil, fmt.Errorf("register run: %w", err)
	}
	if err := r.relock(ctx); err != nil {
		return nil, err
	}
	if err := r.inTx(ctx, func(tx *sql.Tx) error { return r.explodeDeadBlocks(ctx, tx) }); err != nil {
		discard(r.lock)
		return nil, fmt.Errorf("recover blocks of dead runs: %w", err)
	}
	hctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Add(1)
	go r.keepLock(hctx)
	return r, nil
}

// ID is the run's id in the runs table.
func (r *Run) ID() int64 { return r.id }

// Close records how the run ended and releases its lock. Keys the run
// still holds stay claimed in the ledger for the next run to resolve.
func (r *Run) Close(ctx context.Context, status string, report any) error {
	var errs []error
	rep, err := json.Marshal(report)
	if err != nil {
		errs = append(errs, err)
	}
	if _, err := r.db.ExecContext(ctx,
		`UPDATE runs SET finished_at = now(), status = $2, report = $3 WHERE id = $1`,
		r.id, status, string(rep)); err != nil {
		errs = append(errs, fmt.Errorf("record run end: %w", err))
	}
	// Rejected claims only served in-file deduplication during the run.
	// Claims rows of keys now in customers are left over when another run
	// took this run for dead (its lock lost for a while) and turned its
	// blocks into claims rows that this run then confirmed.
	if _, err := r.db.ExecContext(ctx, `
		DELETE FROM claims c WHERE c.run_id = $1
		AND (c.state = 'rejected' OR EXISTS (SELECT FROM customers u WHERE u.external_id = c.external_id))`, r.id); err != nil {
		errs = append(errs, fmt.Errorf("release rejected claims: %w", err))
	}
	// Every block but those with unsettled keys: this includes a block whose
	// claim committed although its answer was lost (its keys were claimed
	// again in another block).
	r.kmu.Lock()
	keep := make([]int64, 0, len(r.open))
	for id := range r.open {
		keep = append(keep, id)
	}
	r.kmu.Unlock()
	if _, err := r.db.ExecContext(ctx,
		`DELETE FROM claim_blocks WHERE run_id = $1 AND id <> ALL($2)`, r.id, pq.Array(keep)); err != nil {
		errs = append(errs, fmt.Errorf("release claimed blocks: %w", err))
	}
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	if r.lock != nil {
		discard(r.lock)
		r.lock, r.held = nil, false
	}
	r.mu.Unlock()
	return errors.Join(errs...)
}

// discard closes the connection itself instead of returning it to the pool,
// where its session, and the advisory lock with it, would live on.
func discard(conn *sql.Conn) {
	conn.Raw(func(any) error { return driver.ErrBadConn })
	conn.Close()
}

// Item is one record offered for claiming.
type Item struct {
	Key         string
	Fingerprint string
	File        string
	Line        int64
}

// Status is what Claim decided for an item.
type Status uint8

const (
	// Claimed: the key is this run's to send; nobody sent it before.
	Claimed Status = iota + 1
	// TakenOver: the key was claimed by a run that died; it may have
	// reached the CRM, so it must be looked up before being created.
	TakenOver
	// Resend: like Claimed, but taken from a dead run that had learned the
	// CRM rejected it, so nothing was created.
	Resend
	// AlreadyDelivered: an earlier run delivered the key.
	AlreadyDelivered
	// DuplicateInFile: this run met the key before.
	DuplicateInFile
	// Busy: a live concurrent run holds the key; try again later.
	Busy
)

// Decision is Claim's answer for one item.
type Decision struct {
	Status Status
	// Why: for AlreadyDelivered, DuplicateInFile and Busy, where the key
	// was met (run, file, line).
	Why string
	// Orphaned, with TakenOver: the dead owner did not end cleanly, so an
	// integrator call it made may still be running. The key must not be
	// looked up before such a call is over (see importer.Config.CallBound).
	Orphaned bool
	// Wait, with Orphaned: how long from now until every call the owner
	// may have left running is over — its last proof of life (or its end)
	// plus LockLease plus the larger of its recorded call bound and this
	// run's (SetCallBound) — or -1 when the owner recorded no proof of life
	// (a run older than migration 0004): then wait a whole call bound.
	Wait time.Duration
	// Via, with Orphaned: the owner sent calls only to the integrator
	// process this run sends through (SetIntegrator). Sent through that
	// very process — which holds the keys of its live calls and answers
	// record_in_flight for them — the key may go after ViaWait instead of
	// Wait. Sent through any other, it must wait Wait.
	Via     string
	ViaWait time.Duration
}

// Where a key's holder was found, in order of precedence.
const (
	inCustomers = iota
	inClaims
	inBlock
)

// holder is what the ledger holds for a key.
type holder struct {
	src    int
	run    int64
	state  string
	file   string
	line   int64
	orphan bool // a call that sent the key may still be running (claims.orphan; any block)
	// prior: how long from now until the calls of the key's earlier owners
	// must be over (claims.not_before, set by the takeover that made the
	// current owner); 0: none outstanding.
	prior time.Duration
}

// Claim decides, for each item, whether this run may send it, and claims
// those it may. Items must have distinct keys. The answer is in item order.
//
// The common case costs four statements whatever the block's size: the
// claim lock, one look-up of the keys, one claim_blocks row, the commit.
func (r *Run) Claim(ctx context.Context, items []Item) ([]Decision, error) {
	if err := r.waitLock(ctx); err != nil {
		return nil, err
	}
	out := make([]Decision, len(items))
	// Keys this run holds are repeats in the file. Only this run settles
	// them, so what it remembers is exact.
	var ask []int
	r.kmu.Lock()
	for i, it := range items {
		// Even the very same record (a file given twice): it is being sent.
		if c, ok := r.inflight[it.Key]; ok {
			out[i] = Decision{Status: DuplicateInFile, Why: fmt.Sprintf("same key as %s line %d", c.file, c.line)}
		} else {
			ask = append(ask, i)
		}
	}
	r.kmu.Unlock()
	if len(ask) == 0 {
		return out, nil
	}
	keys := make([]string, len(ask))
	for j, i := range ask {
		keys[j] = items[i].Key
	}
	keyArray, err := pq.Array(keys).Value() // encoded once, sent up to twice
	if err != nil {
		return nil, err
	}
	var blockOf []int64 // by item: its new block; 0: none
	var own []int       // items now held by a claims row of this run
	err = r.inTx(ctx, func(tx *sql.Tx) error {
		own = own[:0]
		// The lock, and the plan of the look-up (see holders) for this
		// transaction only.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1),
			set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true),
			set_config('jit', 'off', true)`, int64(db.ClaimLockKey)); err != nil {
			return fmt.Errorf("claim lock: %w", err)
		}
		holders, err := r.holders(ctx, tx, keyArray)
		if err != nil {
			return err
		}
		var live map[int64]bool
		for _, h := range holders {
			if h.src != inCustomers && h.run != r.id {
				if live, err = r.liveRuns(ctx, tx); err != nil {
					return err
				}
				break
			}
		}
		var fresh []int
		var take []takeover
		for _, i := range ask {
			it := items[i]
			h, ok := holders[it.Key]
			switch {
			case !ok:
				fresh = append(fresh, i)
				out[i] = Decision{Status: Claimed}
			case h.src == inCustomers && h.run == r.id:
				out[i] = Decision{Status: DuplicateInFile, Why: fmt.Sprintf("delivered earlier in this run from %s line %d", h.file, h.line)}
			case h.src == inCustomers:
				out[i] = Decision{Status: AlreadyDelivered, Why: fmt.Sprintf("delivered by run %d from %s line %d", h.run, h.file, h.line)}
			case h.run == r.id && h.state == "sending" && h.file == it.File && h.line == it.Line:
				// Our own claim on this very record, not yet settled: an
				// earlier attempt of this Claim committed, but the answer
				// was lost with the connection. That attempt took the key
				// over from a dead run, whose calls may still be running:
				// look it up, and only once they must be over.
				out[i] = Decision{Status: TakenOver, Orphaned: true}
				own = append(own, i)
			case h.run == r.id:
				why := fmt.Sprintf("same key as %s line %d", h.file, h.line)
				if h.state == "rejected" {
					why += ", which the CRM rejected"
				}
				out[i] = Decision{Status: DuplicateInFile, Why: why}
			case live[h.run]:
				out[i] = Decision{Status: Busy, Why: fmt.Sprintf("being delivered by run %d (%s line %d)", h.run, h.file, h.line)}
			default:
				take = append(take, takeover{i, h.state, h.run, h.orphan, h.prior})
			}
		}
		if err := r.takeOver(ctx, tx, items, take, out); err != nil {
			return err
		}
		for _, t := range take {
			own = append(own, t.item)
		}
		var encoded driver.Value
		if len(fresh) == len(keys) {
			encoded = keyArray // every key is new, the common case
		}
		blockOf, err = r.insertBlocks(ctx, tx, items, fresh, encoded)
		return err
	})
	if err != nil {
		return nil, err
	}
	r.kmu.Lock()
	for i, id := range blockOf {
		if id == 0 {
			continue
		}
		it := items[i]
		r.inflight[it.Key] = claim{block: id, file: it.File, line: it.Line, fp: it.Fingerprint}
		r.open[id]++
	}
	for _, i := range own { // keys of ask: not in inflight before
		it := items[i]
		r.inflight[it.Key] = claim{file: it.File, line: it.Line, fp: it.Fingerprint}
		r.ownRows++
	}
	r.kmu.Unlock()
	return out, nil
}

// holders reads, in one statement and so in one snapshot, what the ledger
// holds for keys: a customers row, a claims row, or another run's block.
// The claim lock keeps other runs from claiming meanwhile; a run confirming
// meanwhile writes customers in one transaction and deletes the key's block
// only in a later one, so the snapshot finds the key in one place or both.
//
// The right plan is an index probe per key, whatever the size of
// customers and its statistics; Claim's transaction disables hash and merge
// joins, which leaves the planner a nested loop, and for a nested loop the
// index is far cheaper than scanning the table once per key. (Disabling
// sequential scans instead inflates the plan's cost, since claim_blocks can
// only be scanned, past the threshold where PostgreSQL JIT-compiles the
// query: 120 ms a block. JIT is off here for the same reason.)
// Left to itself, it chose a hash join over a sequential scan of a
// million-row table, for every block, when customers had grown since its
// last statistics (a prepared statement's generic plan does the same).
// The keys are joined with unnest($1) rather than matched with
// "= ANY($1)", which the planner estimates key by key: with 1000 keys that
// took longer than running the query.
func (r *Run) holders(ctx context.Context, tx *sql.Tx, keys driver.Value) (map[string]holder, error) {
	rows, err := tx.QueryContext(ctx, lookupQuery, keys, r.id)
	if err != nil {
		return nil, fmt.Errorf("look up keys: %w", err)
	}
	defer rows.Close()
	out := map[string]holder{}
	for rows.Next() {
		var h holder
		var key string
		var prior int64
		if err := rows.Scan(&h.src, &key, &h.run, &h.state, &h.file, &h.line, &h.orphan, &prior); err != nil {
			return nil, err
		}
		h.prior = time.Duration(prior) * time.Millisecond
		if prev, ok := out[key]; !ok || h.src < prev.src {
			out[key] = h
		}
	}
	return out, rows.Err()
}

const lookupQuery = `
	SELECT 0, c.external_id, c.run_id, '', c.source_file, c.source_line, false, 0::bigint
	FROM unnest($1::text[]) AS k(key) JOIN customers c ON c.external_id = k.key
	UNION ALL
	SELECT 1, c.external_id, c.run_id, c.state, c.source_file, c.source_line, c.orphan,
	       COALESCE(GREATEST(0, (EXTRACT(EPOCH FROM c.not_before - clock_timestamp()) * 1000)::bigint), 0)
	FROM unnest($1::text[]) AS k(key) JOIN claims c ON c.external_id = k.key
	UNION ALL
	SELECT 2, u.k, b.run_id, 'sending', b.source_file, u.l, true, 0::bigint
	FROM claim_blocks b, unnest(b.keys, b.lines) AS u(k, l)
	WHERE b.run_id <> $2 AND u.k = ANY($1)`

// takeover is a claim of a dead run about to become this run's.
type takeover struct {
	item   int           // index in Claim's items
	prev   string        // its state
	run    int64         // its owner
	orphan bool          // a call that sent it may still be running
	prior  time.Duration // until earlier owners' calls must be over (holder.prior)
}

// takeOver makes dead runs' claims on items this run's, as claims rows.
func (r *Run) takeOver(ctx context.Context, tx *sql.Tx, items []Item, take []takeover, out []Decision) error {
	if len(take) == 0 {
		return nil
	}
	owners, err := r.owners(ctx, tx, take)
	if err != nil {
		return err
	}
	r.mu.Lock()
	via := r.via
	r.mu.Unlock()
	// Decide first: the claims row remembers, on the server's clock, until
	// when every call that sent the key may run — this owner's and, through
	// not_before, those of the owners before it — for whoever takes it over
	// next.
	waits := make([]int64, len(take)) // ms from now; 0: none
	for j, t := range take {
		if t.prev == "rejected" {
			out[t.item] = Decision{Status: Resend} // the CRM refused it: nothing was created
			continue
		}
		// A run that ended cleanly had its calls answered, except those its
		// records remember (t.orphan), and those of earlier owners.
		o, ok := owners[t.run]
		if !ok {
			o.wait = -1
		}
		dec := Decision{Status: TakenOver}
		if !o.clean || t.orphan {
			dec.Orphaned, dec.Wait = true, o.wait
			if dec.Wait < 0 {
				dec.Wait = -1 // unknown: the taker waits a whole bound
			}
		}
		if t.prior > 0 {
			dec.Orphaned = true
			if dec.Wait >= 0 {
				dec.Wait = max(dec.Wait, t.prior)
			}
		}
		// The shortcut through the very integrator process the owner used
		// holds only when the owner's calls are all that is outstanding.
		if dec.Orphaned && t.prior == 0 && via != "" && len(o.integrators) == 1 && o.integrators[0] == via {
			dec.Via, dec.ViaWait = via, ViaWait
			if dec.Wait >= 0 {
				dec.ViaWait = min(dec.Wait, ViaWait)
			}
		}
		out[t.item] = dec
		w := dec.Wait
		if w < 0 {
			r.mu.Lock()
			w = r.bound
			r.mu.Unlock()
		}
		waits[j] = w.Milliseconds()
	}
	keys := make([]string, len(take))
	fps := make([]string, len(take))
	files := make([]string, len(take))
	lines := make([]int64, len(take))
	for j, t := range take {
		it := items[t.item]
		keys[j], fps[j], files[j], lines[j] = it.Key, it.Fingerprint, it.File, it.Line
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO claims (external_id, run_id, state, fingerprint, source_file, source_line, not_before)
		SELECT k, $5, 'sending', f, s, l, CASE WHEN w > 0 THEN clock_timestamp() + w * interval '1 millisecond' END
		FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $6::bigint[]) AS u(k, f, s, l, w)
		ON CONFLICT (external_id) DO UPDATE SET run_id = excluded.run_id, state = 'sending',
		       fingerprint = excluded.fingerprint, source_file = excluded.source_file,
		       source_line = excluded.source_line, claimed_at = now(), reason = '', orphan = false,
		       not_before = GREATEST(claims.not_before, excluded.not_before)`,
		pq.Array(keys), pq.Array(fps), pq.Array(files), pq.Array(lines), r.id, pq.Array(waits)); err != nil {
		return fmt.Errorf("take over claims: %w", err)
	}
	return nil
}

// insertBlocks claims the fresh items with one claim_blocks row per file.
// encoded, when not nil, is the text array of the keys of fresh, usable
// when they all come from one file.
func (r *Run) insertBlocks(ctx context.Context, tx *sql.Tx, items []Item, fresh []int, encoded driver.Value) ([]int64, error) {
	blockOf := make([]int64, len(items))
	for len(fresh) > 0 {
		file := items[fresh[0]].File
		keys := make([]string, 0, len(fresh))
		lines := make([]int64, 0, len(fresh))
		idx := make([]int, 0, len(fresh))
		var rest []int
		for _, i := range fresh {
			if items[i].File != file {
				rest = append(rest, i)
				continue
			}
			idx = append(idx, i)
			keys = append(keys, items[i].Key)
			lines = append(lines, items[i].Line)
		}
		var keyParam any = pq.Array(keys)
		if encoded != nil && len(rest) == 0 {
			keyParam = encoded
		}
		encoded = nil // it holds every file's keys: the first row's only if there is one file
		var id int64
		if err := tx.QueryRowContext(ctx,
			`INSERT INTO claim_blocks (run_id, source_file, keys, lines) VALUES ($1, $2, $3, $4) RETURNING id`,
			r.id, file, keyParam, pq.Array(lines)).Scan(&id); err != nil {
			return nil, fmt.Errorf("claim block: %w", err)
		}
		for _, i := range idx {
			blockOf[i] = id
		}
		fresh = rest
	}
	return blockOf, nil
}

// explodeDeadBlocks turns the blocks of dead runs into claims rows, keeping
// only keys that were not delivered, so that they are resolved key by key
// like any claim of a dead run, and later runs need not scan them.
func (r *Run) explodeDeadBlocks(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(db.ClaimLockKey)); err != nil {
		return fmt.Errorf("claim lock: %w", err)
	}
	live, err := r.liveRuns(ctx, tx)
	if err != nil {
		return err
	}
	ids := make([]int64, 0, len(live))
	for id := range live {
		ids = append(ids, id)
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO claims (external_id, run_id, state, source_file, source_line, claimed_at, orphan)
		SELECT DISTINCT ON (u.k) u.k, b.run_id, 'sending', b.source_file, u.l, b.claimed_at, true
		FROM claim_blocks b, unnest(b.keys, b.lines) AS u(k, l)
		WHERE b.run_id <> ALL($1) AND NOT EXISTS (SELECT FROM customers c WHERE c.external_id = u.k)
		ON CONFLICT (external_id) DO NOTHING`, pq.Array(ids)); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM claim_blocks WHERE run_id <> ALL($1)`, pq.Array(ids))
	return err
}

// owner is what the ledger says of a run whose claims are taken over.
type owner struct {
	// clean: it ended with all its integrator calls answered ("done" or
	// "interrupted"), so its claims can be looked up at once. A run that
	// crashed, failed or is still "running" (cut off from PostgreSQL) may
	// have left calls an integrator is still working on.
	clean bool
	wait  time.Duration // until its calls must be over; -1: unknown
	// integrators: the integrator processes it sent calls to.
	integrators []string
}

// owners reads the runs whose claims are being taken over.
func (r *Run) owners(ctx context.Context, tx *sql.Tx, take []takeover) (map[int64]owner, error) {
	out := map[int64]owner{}
	ids := make([]int64, len(take))
	for i, t := range take {
		ids[i] = t.run
	}
	r.mu.Lock()
	own := r.bound
	r.mu.Unlock()
	// On the server's clock: alive_at and finished_at were written with it.
	rows, err := tx.QueryContext(ctx, `
		SELECT id, status IN ('done', 'interrupted'), integrators,
		       CASE WHEN COALESCE(finished_at, alive_at) IS NULL THEN -1
		       ELSE GREATEST(0, (EXTRACT(EPOCH FROM COALESCE(finished_at, alive_at) - clock_timestamp()) * 1000)::bigint
		                        + $2 + GREATEST(call_bound_ms, $3)) END
		FROM runs WHERE id = ANY($1)`, pq.Array(ids), LockLease.Milliseconds(), own.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("read owner runs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, ms int64
		var o owner
		if err := rows.Scan(&id, &o.clean, pq.Array(&o.integrators), &ms); err != nil {
			return nil, err
		}
		o.wait = -1
		if ms >= 0 {
			o.wait = time.Duration(ms) * time.Millisecond
		}
		out[id] = o
	}
	return out, rows.Err()
}

// ViaWait is how long a key taken over from a dead run waits when it goes
// through the very integrator process the dead run used (Decision.Via):
// the lease, for a cut-off owner's last sends, and a margin for that
// process to read what the owner wrote before it died.
const ViaWait = LockLease + 2*time.Second

// SetIntegrator names the integrator process (its Instance) this run sends
// through, for Decision.Via; "" for none known.
func (r *Run) SetIntegrator(instance string) {
	r.mu.Lock()
	r.via = instance
	r.mu.Unlock()
}

// NoteIntegrator records, before this run's first call to it, that it sends
// to the integrator process instance ("" : one that has not said who it
// is). A run taking this run's claims over then knows where its calls may
// still run. It fails (nothing may be sent) when the record cannot be
// written.
func (r *Run) NoteIntegrator(ctx context.Context, instance string) error {
	if instance == "" {
		instance = "?"
	}
	r.noteMu.Lock()
	defer r.noteMu.Unlock()
	if r.noted[instance] {
		return nil
	}
	if _, err := r.db.ExecContext(ctx, `UPDATE runs SET integrators = array_append(integrators, $2) WHERE id = $1`, r.id, instance); err != nil {
		return fmt.Errorf("%w: %w", ErrNotRecorded, err)
	}
	r.noted[instance] = true
	return nil
}

// ErrNotRecorded: NoteIntegrator could not record the integrator, so
// nothing may be sent to it yet; try again after a pause.
var ErrNotRecorded = errors.New("could not record the integrator the run sends to")

// SetCallBound records how long an integrator call this run sends may go
// on after the run lost track of it, for the runs that may take its claims
// over.
func (r *Run) SetCallBound(ctx context.Context, d time.Duration) error {
	r.mu.Lock()
	r.bound = d
	r.mu.Unlock()
	if _, err := r.db.ExecContext(ctx, `UPDATE runs SET call_bound_ms = $2 WHERE id = $1`, r.id, d.Milliseconds()); err != nil {
		return fmt.Errorf("record call bound: %w", err)
	}
	return nil
}

// liveRuns lists the runs holding their liveness lock right now.
func (r *Run) liveRuns(ctx context.Context, tx *sql.Tx) (map[int64]bool, error) {
	rows, err := tx.QueryContext(ctx, `
		SELECT objid::bigint FROM pg_locks
		WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objsubid = 1 AND granted
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
		int64(db.RunLockNamespace))
	if err != nil {
		return nil, fmt.Errorf("list live runs: %w", err)
	}
	defer rows.Close()
	live := map[int64]bool{r.id: true}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		live[id] = true
	}
	return live, rows.Err()
}

// settle forgets keys whose outcome is committed, and queues the blocks
// they complete for deletion. Called only after the commit: a block row may
// go only once nothing in it can be sent again.
func (r *Run) settle(keys []string) {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	for _, k := range keys {
		r.forget(k)
	}
}

// forget drops k from the keys this run holds. kmu held.
func (r *Run) forget(k string) {
	c, ok := r.inflight[k]
	if !ok {
		return
	}
	delete(r.inflight, k)
	if c.block == 0 {
		r.ownRows--
		return
	}
	if r.open[c.block]--; r.open[c.block] == 0 {
		delete(r.open, c.block)
		r.finished = append(r.finished, c.block)
	}
}

// takeFinished hands the blocks to delete to one write; put gives them back
// when that write failed.
func (r *Run) takeFinished() (ids []int64, put func()) {
	r.kmu.Lock()
	ids, r.finished = r.finished, nil
	r.kmu.Unlock()
	return ids, func() {
		r.kmu.Lock()
		r.finished = append(r.finished, ids...)
		r.kmu.Unlock()
	}
}

// ownKeys returns the keys that this run holds by a claims row of its own.
func (r *Run) ownKeys(keys []string) []string {
	r.kmu.Lock()
	defer r.kmu.Unlock()
	if r.ownRows == 0 {
		return nil // the common case: only blocks
	}
	var own []string
	for _, k := range keys {
		if c, ok := r.inflight[k]; ok && c.block == 0 {
			own = append(own, k)
		}
	}
	return own
}

// Delivery is a record the CRM confirmed.
type Delivery struct {
	Contact     contact.Contact
	CRMID       string
	Fingerprint string
	File        string
	Line        int64
}

var customerColumns = []string{"external_id", "email", "first_name", "last_name", "phone",
	"attributes", "crm_id", "fingerprint", "run_id", "source_file", "source_line"}

// Confirm records deliveries in customers, in one transaction that also
// drops the claims rows they settle and the blocks finished so far. It uses
// COPY; should another run have recorded one of the keys meanwhile (after
// it took this run's claim over while this run's lock was lost), it falls
// back to an insert that keeps the existing row, and returns the indexes of
// ds that were already there: delivered by that run, not this one.
func (r *Run) Confirm(ctx context.Context, ds []Delivery) (already []int, err error) {
	if len(ds) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ds))
	for i := range ds {
		keys[i] = ds[i].Contact.ExternalID
	}
	own := r.ownKeys(keys)
	done, putBack := r.takeFinished()
	cleanup := func(exec execFunc) error {
		if len(own) > 0 {
			if err := exec(`DELETE FROM claims WHERE external_id = ANY($1) AND run_id = $2`, pq.Array(own), r.id); err != nil {
				return fmt.Errorf("drop claims: %w", err)
			}
		}
		return dropBlocks(exec, done)
	}
	err = r.rawTx(ctx, func(c *rawConn) error {
		if err := c.copyIn("customers", customerColumns, copyRows(r.id, ds)); err != nil {
			return err
		}
		return cleanup(c.exec)
	})
	var pqErr *pq.Error
	if errors.As(err, &pqErr) && pqErr.Code == "23505" {
		err = r.inTx(ctx, func(tx *sql.Tx) error {
			inserted, err := insertCustomers(ctx, tx, r.id, ds)
			if err != nil {
				return err
			}
			var kept []string
			for i := range ds {
				if !inserted[ds[i].Contact.ExternalID] {
					kept = append(kept, ds[i].Contact.ExternalID)
				}
			}
			// A row of this run's is an earlier attempt of this very
			// Confirm whose commit's answer was lost: its delivery.
			others, err := recordedByOthers(ctx, tx, r.id, kept)
			if err != nil {
				return err
			}
			already = already[:0]
			for i := range ds {
				if others[ds[i].Contact.ExternalID] {
					already = append(already, i)
				}
			}
			return cleanup(txExec(ctx, tx))
		})
	}
	if err != nil {
		putBack()
		return nil, fmt.Errorf("record deliveries: %w", err)
	}
	r.settle(keys)
	return already, nil
}

// execFunc runs a statement: on a database/sql transaction (txExec) or on
// rawTx's connection.
type execFunc func(query string, args ...any) error

func txExec(ctx context.Context, tx *sql.Tx) execFunc {
	return func(query string, args ...any) error {
		_, err := tx.ExecContext(ctx, query, args...)
		return err
	}
}

// dropBlocks deletes the blocks whose keys earlier commits all settled.
func dropBlocks(exec execFunc, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	if err := exec(`DELETE FROM claim_blocks WHERE id = ANY($1)`, pq.Array(ids)); err != nil {
		return fmt.Errorf("drop finished blocks: %w", err)
	}
	return nil
}

// recordedByOthers returns which of keys customers holds from another run.
func recordedByOthers(ctx context.Context, tx *sql.Tx, run int64, keys []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(keys) == 0 {
		return out, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT external_id FROM customers WHERE external_id = ANY($1) AND run_id <> $2`, pq.Array(keys), run)
	if err != nil {
		return nil, fmt.Errorf("read recorded keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		out[k] = true
	}
	return out, rows.Err()
}

// insertCustomers inserts ds, keeping rows that exist, and returns the keys
// it inserted.
func insertCustomers(ctx context.Context, tx *sql.Tx, run int64, ds []Delivery) (map[string]bool, error) {
	n := len(ds)
	cols := make([][]string, 9)
	for i := range cols {
		cols[i] = make([]string, n)
	}
	lines := make([]int64, n)
	for i, d := range ds {
		c := &d.Contact
		cols[0][i], cols[1][i], cols[2][i], cols[3][i], cols[4][i] = c.ExternalID, c.Email, c.FirstName, c.LastName, c.Phone
		cols[5][i], cols[6][i], cols[7][i], cols[8][i] = string(appendAttributes(nil, c.Attributes)), d.CRMID, d.Fingerprint, d.File
		lines[i] = d.Line
	}
	rows, err := tx.QueryContext(ctx, `
		INSERT INTO customers (external_id, email, first_name, last_name, phone, attributes,
		                       crm_id, fingerprint, source_file, source_line, run_id)
		SELECT a, b, c, d, e, f::jsonb, g, h, i, j, $11
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
		            $7::text[], $8::text[], $9::text[], $10::bigint[]) AS u(a, b, c, d, e, f, g, h, i, j)
		ON CONFLICT (external_id) DO NOTHING
		RETURNING external_id`,
		pq.Array(cols[0]), pq.Array(cols[1]), pq.Array(cols[2]), pq.Array(cols[3]), pq.Array(cols[4]),
		pq.Array(cols[5]), pq.Array(cols[6]), pq.Array(cols[7]), pq.Array(cols[8]), pq.Array(lines), run)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	inserted := make(map[string]bool, n)
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		inserted[k] = true
	}
	return inserted, rows.Err()
}

// Mark records, for keys this run holds, that the CRM rejected them
// ("rejected") or that this run gave up on them ("failed"), with reasons: a
// claims row each, which outlives the key's block. orphans (nil: none) says
// which keys a call that may still be running has sent: one that broke, or
// a dead run's whose end this run did not wait out.
func (r *Run) Mark(ctx context.Context, state string, keys, reasons []string, orphans []bool) error {
	if len(keys) == 0 {
		return nil
	}
	var ks, rs, files, fps []string
	var lines []int64
	var orph []bool
	r.kmu.Lock()
	for i, k := range keys {
		c, ok := r.inflight[k]
		if !ok {
			continue // not this run's to mark
		}
		ks, rs, files, fps, lines = append(ks, k), append(rs, reasons[i]), append(files, c.file), append(fps, c.fp), append(lines, c.line)
		orph = append(orph, orphans != nil && orphans[i])
	}
	r.kmu.Unlock()
	done, putBack := r.takeFinished()
	err := r.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO claims (external_id, run_id, state, reason, source_file, fingerprint, source_line, orphan)
			SELECT k, $7, $8, reason, s, f, l, o
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bool[]) AS u(k, reason, s, f, l, o)
			ON CONFLICT (external_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, orphan = excluded.orphan
			WHERE claims.run_id = excluded.run_id`,
			pq.Array(ks), pq.Array(rs), pq.Array(files), pq.Array(fps), pq.Array(lines), pq.Array(orph), r.id, state); err != nil {
			return fmt.Errorf("mark claims %s: %w", state, err)
		}
		return dropBlocks(txExec(ctx, tx), done)
	})
	if err != nil {
		putBack()
		return err
	}
	r.settle(ks)
	return nil
}

// inTx runs fn in a transaction and retries it after a deadlock or a
// serialization failure, which PostgreSQL asks clients to retry.
func (r *Run) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := func() error {
			tx, err := r.db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if err := fn(tx); err != nil {
				return err
			}
			return tx.Commit()
		}()
		var pqErr *pq.Error
		if attempt < 5 && errors.As(err, &pqErr) && (pqErr.Code == "40P01" || pqErr.Code == "40001") {
			continue
		}
		return err
	}
}

// Delivered reports which keys customers holds, without claiming anything
// (for dry runs).
func Delivered(ctx context.Context, d *sql.DB, keys []string) (map[string]bool, error) {
	rows, err := d.QueryContext(ctx, `SELECT external_id FROM customers WHERE external_id = ANY($1)`, pq.Array(keys))
	if err != nil {
		return nil, fmt.Errorf("look up delivered keys: %w", err)
	}
	defer rows.Close()
	found := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		found[k] = true
	}
	return found, rows.Err()
}
