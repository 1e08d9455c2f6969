package ledger

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/lib/pq"

	"crmsync/db"
)

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
