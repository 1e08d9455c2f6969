// Package ledger is the reader's PostgreSQL record of what the CRM holds and
// of what is being sent to it, which makes delivery exactly-once across
// reruns, crashes and concurrent readers. docs/design.md explains the
// protocol; in short:
//
//   - A run registers itself and holds a session advisory lock on its id for
//     as long as it lives, so its claims can be told from a dead run's.
//   - Before a key is sent, the run claims it (a committed row in claims).
//   - The CRM's confirmation is recorded in customers in the same
//     transaction that removes the claim.
//   - A claim whose owner is dead means "maybe sent": the next run takes it
//     over and has the integrator look the key up before creating anything.
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
	"sort"
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

	mu     sync.Mutex
	lock   *sql.Conn // holds the run's advisory lock
	held   bool      // the lock is held right now
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start registers a run for files and takes its liveness lock.
func Start(ctx context.Context, d *sql.DB, files []string) (*Run, error) {
	host, _ := os.Hostname()
	r := &Run{db: d}
	if err := d.QueryRowContext(ctx,
		`INSERT INTO runs (host, pid, files) VALUES ($1, $2, $3) RETURNING id`,
		host, os.Getpid(), pq.Array(append([]string{}, files...))).Scan(&r.id); err != nil {
		return nil, fmt.Errorf("register run: %w", err)
	}
	if err := r.relock(ctx); err != nil {
		return nil, err
	}
	hctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Add(1)
	go r.keepLock(hctx)
	return r, nil
}

// ID is the run's id in the runs table.
func (r *Run) ID() int64 { return r.id }

func (r *Run) relock(ctx context.Context) error {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("run lock: connect: %w", err)
	}
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, db.RunLockKey(r.id)); err != nil {
		discard(conn)
		return fmt.Errorf("run lock: %w", err)
	}
	r.mu.Lock()
	r.lock, r.held = conn, true
	r.mu.Unlock()
	return nil
}

// keepLock checks the lock connection and takes the lock again when
// PostgreSQL dropped it (a restart, a network cut). While it is not held,
// other runs may take this run's claims over, so Claim waits for it.
func (r *Run) keepLock(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		conn := r.lock
		r.mu.Unlock()
		if conn != nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.PingContext(pctx)
			if err == nil {
				_, err = conn.ExecContext(pctx, `SELECT 1`)
			}
			cancel()
			if err == nil {
				continue
			}
			r.mu.Lock()
			r.lock, r.held = nil, false
			r.mu.Unlock()
			discard(conn)
		}
		if err := r.relock(ctx); err != nil && ctx.Err() == nil {
			continue // try again on the next tick
		}
	}
}

// waitLock returns once the run holds its liveness lock.
func (r *Run) waitLock(ctx context.Context) error {
	for {
		r.mu.Lock()
		held := r.held
		r.mu.Unlock()
		if held {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close records how the run ended and releases its lock. Claims the run
// still holds stay in the ledger for the next run to resolve.
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
	if _, err := r.db.ExecContext(ctx,
		`DELETE FROM claims WHERE run_id = $1 AND state = 'rejected'`, r.id); err != nil {
		errs = append(errs, fmt.Errorf("release rejected claims: %w", err))
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
}

// Claim decides, for each item, whether this run may send it, and claims
// those it may. Items must have distinct keys. The answer is in item order.
func (r *Run) Claim(ctx context.Context, items []Item) ([]Decision, error) {
	if err := r.waitLock(ctx); err != nil {
		return nil, err
	}
	out := make([]Decision, len(items))
	index := make(map[string]int, len(items))
	keys := make([]string, len(items))
	for i, it := range items {
		index[it.Key] = i
		keys[i] = it.Key
	}
	err := r.inTx(ctx, func(tx *sql.Tx) error {
		clear(out)
		delivered, err := r.delivered(ctx, tx, keys, out, index)
		if err != nil {
			return err
		}
		// Claim in key order: two runs claiming overlapping keys then take
		// row locks in the same order and cannot deadlock.
		var todo []Item
		for _, it := range items {
			if !delivered[it.Key] {
				todo = append(todo, it)
			}
		}
		sort.Slice(todo, func(i, j int) bool { return todo[i].Key < todo[j].Key })
		claimed, err := r.insertClaims(ctx, tx, todo)
		if err != nil {
			return err
		}
		var fresh, conflicts []string
		for _, it := range todo {
			if claimed[it.Key] {
				fresh = append(fresh, it.Key)
			} else {
				conflicts = append(conflicts, it.Key)
			}
		}
		// A run that delivered a key between the first look and the claim
		// has removed its claim and committed: look again.
		late, err := r.delivered(ctx, tx, fresh, out, index)
		if err != nil {
			return err
		}
		var release []string
		for _, k := range fresh {
			if late[k] {
				release = append(release, k)
			} else {
				out[index[k]] = Decision{Status: Claimed}
			}
		}
		if len(release) > 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM claims WHERE external_id = ANY($1) AND run_id = $2`,
				pq.Array(release), r.id); err != nil {
				return fmt.Errorf("release claims: %w", err)
			}
		}
		return r.resolveConflicts(ctx, tx, conflicts, items, out, index)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// delivered marks the keys customers already holds and returns them.
func (r *Run) delivered(ctx context.Context, tx *sql.Tx, keys []string, out []Decision, index map[string]int) (map[string]bool, error) {
	found := map[string]bool{}
	if len(keys) == 0 {
		return found, nil
	}
	rows, err := tx.QueryContext(ctx,
		`SELECT external_id, run_id, source_file, source_line FROM customers WHERE external_id = ANY($1)`,
		pq.Array(keys))
	if err != nil {
		return nil, fmt.Errorf("look up delivered keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var key, file string
		var run, line int64
		if err := rows.Scan(&key, &run, &file, &line); err != nil {
			return nil, err
		}
		found[key] = true
		if run == r.id {
			out[index[key]] = Decision{Status: DuplicateInFile, Why: fmt.Sprintf("delivered earlier in this run from %s line %d", file, line)}
		} else {
			out[index[key]] = Decision{Status: AlreadyDelivered, Why: fmt.Sprintf("delivered by run %d from %s line %d", run, file, line)}
		}
	}
	return found, rows.Err()
}

func (r *Run) insertClaims(ctx context.Context, tx *sql.Tx, items []Item) (map[string]bool, error) {
	claimed := map[string]bool{}
	if len(items) == 0 {
		return claimed, nil
	}
	keys := make([]string, len(items))
	fps := make([]string, len(items))
	files := make([]string, len(items))
	lines := make([]int64, len(items))
	for i, it := range items {
		keys[i], fps[i], files[i], lines[i] = it.Key, it.Fingerprint, it.File, it.Line
	}
	rows, err := tx.QueryContext(ctx, `
		INSERT INTO claims (external_id, run_id, fingerprint, source_file, source_line)
		SELECT k, $5, f, s, l FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(k, f, s, l)
		ON CONFLICT (external_id) DO NOTHING
		RETURNING external_id`,
		pq.Array(keys), pq.Array(fps), pq.Array(files), pq.Array(lines), r.id)
	if err != nil {
		return nil, fmt.Errorf("claim keys: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		claimed[k] = true
	}
	return claimed, rows.Err()
}

// resolveConflicts decides the keys another claim holds: this run's own
// (a repeat in the file), a live run's (busy), or a dead run's (taken over).
func (r *Run) resolveConflicts(ctx context.Context, tx *sql.Tx, keys []string, items []Item, out []Decision, index map[string]int) error {
	if len(keys) == 0 {
		return nil
	}
	live, err := r.liveRuns(ctx, tx)
	if err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, `
		SELECT external_id, run_id, state, source_file, source_line FROM claims
		WHERE external_id = ANY($1) ORDER BY external_id FOR UPDATE`, pq.Array(keys))
	if err != nil {
		return fmt.Errorf("read conflicting claims: %w", err)
	}
	var take []takeover
	seen := map[string]bool{}
	for rows.Next() {
		var key, state, file string
		var run, line int64
		if err := rows.Scan(&key, &run, &state, &file, &line); err != nil {
			rows.Close()
			return err
		}
		seen[key] = true
		i := index[key]
		switch {
		case run == r.id && file == items[i].File && line == items[i].Line:
			// Our own claim on this very record: an earlier attempt of
			// this Claim committed, but the answer was lost with the
			// connection. That attempt may have taken the key over from a
			// dead run, so have it looked up before it is created.
			out[i] = Decision{Status: TakenOver}
		case run == r.id:
			why := fmt.Sprintf("same key as %s line %d", file, line)
			if state == "rejected" {
				why += ", which the CRM rejected"
			}
			out[i] = Decision{Status: DuplicateInFile, Why: why}
		case live[run]:
			out[i] = Decision{Status: Busy, Why: fmt.Sprintf("being delivered by run %d (%s line %d)", run, file, line)}
		default:
			take = append(take, takeover{key, state, run})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if !seen[k] {
			// The claim vanished after our insert: its owner finished. Look
			// again on the next attempt.
			out[index[k]] = Decision{Status: Busy, Why: "claim changed hands while claiming"}
		}
	}
	clean, err := r.endedCleanly(ctx, tx, take)
	if err != nil {
		return err
	}
	for _, t := range take {
		it := items[index[t.key]]
		if _, err := tx.ExecContext(ctx, `
			UPDATE claims SET run_id = $2, state = 'sending', fingerprint = $3, source_file = $4,
			       source_line = $5, claimed_at = now(), reason = ''
			WHERE external_id = $1`, t.key, r.id, it.Fingerprint, it.File, it.Line); err != nil {
			return fmt.Errorf("take over claim: %w", err)
		}
		if t.prev == "rejected" {
			out[index[t.key]] = Decision{Status: Resend}
		} else {
			out[index[t.key]] = Decision{Status: TakenOver, Orphaned: !clean[t.run]}
		}
	}
	return nil
}

// endedCleanly reports which owners of the claims being taken over ended
// with all their integrator calls answered ("done" or "interrupted"): their
// claims can be looked up at once. A run that crashed or failed may have left
// calls the integrator is still working on.
func (r *Run) endedCleanly(ctx context.Context, tx *sql.Tx, take []takeover) (map[int64]bool, error) {
	clean := map[int64]bool{}
	if len(take) == 0 {
		return clean, nil
	}
	ids := make([]int64, len(take))
	for i, t := range take {
		ids[i] = t.run
	}
	rows, err := tx.QueryContext(ctx,
		`SELECT id FROM runs WHERE id = ANY($1) AND status IN ('done', 'interrupted')`, pq.Array(ids))
	if err != nil {
		return nil, fmt.Errorf("read owner runs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		clean[id] = true
	}
	return clean, rows.Err()
}

// takeover is a claim of a dead run about to become this run's.
type takeover struct {
	key  string
	prev string // its state
	run  int64  // its owner
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

// Confirm records deliveries in customers and drops their claims, in one
// transaction. It uses COPY; should another run have recorded one of the
// keys meanwhile (possible only after a takeover race), it falls back to an
// insert that keeps the existing row.
func (r *Run) Confirm(ctx context.Context, ds []Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	keys := make([]string, len(ds))
	attrs := make([]string, len(ds))
	for i, d := range ds {
		keys[i] = d.Contact.ExternalID
		attrs[i] = "{}"
		if len(d.Contact.Attributes) > 0 {
			b, err := json.Marshal(d.Contact.Attributes)
			if err != nil {
				return err
			}
			attrs[i] = string(b)
		}
	}
	err := r.inTx(ctx, func(tx *sql.Tx) error {
		if err := copyCustomers(ctx, tx, r.id, ds, attrs); err != nil {
			return err
		}
		return r.dropClaims(ctx, tx, keys)
	})
	var pqErr *pq.Error
	if errors.As(err, &pqErr) && pqErr.Code == "23505" {
		err = r.inTx(ctx, func(tx *sql.Tx) error {
			if err := insertCustomers(ctx, tx, r.id, ds, attrs); err != nil {
				return err
			}
			return r.dropClaims(ctx, tx, keys)
		})
	}
	if err != nil {
		return fmt.Errorf("record deliveries: %w", err)
	}
	return nil
}

func copyCustomers(ctx context.Context, tx *sql.Tx, run int64, ds []Delivery, attrs []string) error {
	stmt, err := tx.PrepareContext(ctx, pq.CopyIn("customers", customerColumns...))
	if err != nil {
		return err
	}
	defer stmt.Close()
	for i, d := range ds {
		c := &d.Contact
		if _, err := stmt.ExecContext(ctx, c.ExternalID, c.Email, c.FirstName, c.LastName, c.Phone,
			attrs[i], d.CRMID, d.Fingerprint, run, d.File, d.Line); err != nil {
			return err
		}
	}
	_, err = stmt.ExecContext(ctx) // flushes the COPY and reports its errors
	return err
}

func insertCustomers(ctx context.Context, tx *sql.Tx, run int64, ds []Delivery, attrs []string) error {
	n := len(ds)
	cols := make([][]string, 9)
	for i := range cols {
		cols[i] = make([]string, n)
	}
	lines := make([]int64, n)
	for i, d := range ds {
		c := &d.Contact
		cols[0][i], cols[1][i], cols[2][i], cols[3][i], cols[4][i] = c.ExternalID, c.Email, c.FirstName, c.LastName, c.Phone
		cols[5][i], cols[6][i], cols[7][i], cols[8][i] = attrs[i], d.CRMID, d.Fingerprint, d.File
		lines[i] = d.Line
	}
	_, err := tx.ExecContext(ctx, `
		INSERT INTO customers (external_id, email, first_name, last_name, phone, attributes,
		                       crm_id, fingerprint, source_file, source_line, run_id)
		SELECT a, b, c, d, e, f::jsonb, g, h, i, j, $11
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
		            $7::text[], $8::text[], $9::text[], $10::bigint[]) AS u(a, b, c, d, e, f, g, h, i, j)
		ON CONFLICT (external_id) DO NOTHING`,
		pq.Array(cols[0]), pq.Array(cols[1]), pq.Array(cols[2]), pq.Array(cols[3]), pq.Array(cols[4]),
		pq.Array(cols[5]), pq.Array(cols[6]), pq.Array(cols[7]), pq.Array(cols[8]), pq.Array(lines), run)
	return err
}

func (r *Run) dropClaims(ctx context.Context, tx *sql.Tx, keys []string) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM claims WHERE external_id = ANY($1) AND run_id = $2`,
		pq.Array(keys), r.id)
	return err
}

// Mark records, for this run's claims on keys, that the CRM rejected them
// ("rejected") or that this run gave up on them ("failed"), with reasons.
func (r *Run) Mark(ctx context.Context, state string, keys, reasons []string) error {
	if len(keys) == 0 {
		return nil
	}
	return r.inTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `
			UPDATE claims c SET state = $3, reason = u.reason
			FROM unnest($1::text[], $2::text[]) AS u(k, reason)
			WHERE c.external_id = u.k AND c.run_id = $4`,
			pq.Array(keys), pq.Array(reasons), state, r.id)
		if err != nil {
			return fmt.Errorf("mark claims %s: %w", state, err)
		}
		return nil
	})
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
