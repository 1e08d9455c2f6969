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
	bound      time.Duration // this run's call bound (SetCallBound)
	via        string        // the integrator this run sends through (SetIntegrator)
	noteMu     sync.Mutex
	noted      map[string]bool // integrators recorded in runs.integrators
	cancel     context.CancelFunc
	wg         sync.WaitGroup

	sync Sync // how changed records are handled (SetSync)
	// asOfs caches runs' as-of times (unix µs; noAsOf: none), for the
	// customers rows that leave theirs NULL (resolveAsOf).
	asOfMu sync.Mutex
	asOfs  map[int64]int64

	// The keys this run claimed and has not settled yet.
	inflight *heldKeys

	// lookup is the claim's look-up (holders), prepared once per
	// connection instead of parsed and planned for every block.
	lookupMu sync.Mutex
	lookup   *sql.Stmt
	bytewise bool // customers' key sorts as Go's strings do (bytewiseKeysQuery)
}

// Start registers a run for files and takes its liveness lock.
func Start(ctx context.Context, d *sql.DB, files []string) (*Run, error) {
	host, _ := os.Hostname()
	r := &Run{db: d, inflight: newHeldKeys(), noted: map[string]bool{}, asOfs: map[int64]int64{}}
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
	// Create claims of keys now in customers are left over when another run
	// took this run for dead (its lock lost for a while) and turned its
	// blocks into claims rows that this run then confirmed.
	if _, err := r.db.ExecContext(ctx, `
		DELETE FROM claims c WHERE c.run_id = $1
		AND (c.state = 'rejected' OR (c.kind = 'create' AND EXISTS (SELECT FROM customers u WHERE u.external_id = c.external_id)))`, r.id); err != nil {
		errs = append(errs, fmt.Errorf("release rejected claims: %w", err))
	}
	// Every block but those with unsettled keys: this includes a block whose
	// claim committed although its answer was lost (its keys were claimed
	// again in another block).
	r.lookupMu.Lock()
	if r.lookup != nil {
		r.lookup.Close()
		r.lookup = nil
	}
	r.lookupMu.Unlock()
	keep := r.inflight.openBlocks()
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
