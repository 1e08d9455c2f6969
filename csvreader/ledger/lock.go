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

// LockLease is how long a proof that the run holds its liveness lock lets
// it start sending. The proof is a statement answered on the lock's
// connection; it is renewed every LockLease/4. A run cut off from
// PostgreSQL — its lock lost, so that another run may take its claims over
// — starts no call later than LockLease after it last proved the lock, and
// the run taking over waits the call bound plus more than LockLease (see
// importer's CallBoundMargin) before it looks the keys up: the calls the
// cut-off run sent are over by then.
const LockLease = time.Second

func (r *Run) relock(ctx context.Context) error {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("run lock: connect: %w", err)
	}
	sent := time.Now()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, db.RunLockKey(r.id)); err != nil {
		discard(conn)
		return fmt.Errorf("run lock: %w", err)
	}
	if _, err := conn.ExecContext(ctx, renewLease, r.id); err != nil {
		discard(conn)
		return fmt.Errorf("run lock: %w", err)
	}
	r.mu.Lock()
	if r.wasHeld {
		r.epoch++ // others may have taken claims over meanwhile: fence again
	}
	r.lock, r.held, r.wasHeld = conn, true, true
	r.leaseUntil = sent.Add(LockLease)
	r.mu.Unlock()
	return nil
}

// renewLease is the proof: a statement on the lock's session, which also
// records the moment for runs that may take this run's claims over (they
// wait until alive_at + LockLease + call bound, on the server's clock).
const renewLease = `UPDATE runs SET alive_at = now() WHERE id = $1`

// keepLock proves the lock every LockLease/4 on its connection, renewing
// the lease, and takes the lock again when PostgreSQL dropped it (a
// restart, a network cut, pg_terminate_backend). While the lock is not
// held, other runs may take this run's claims over: Claim waits for the
// lock, and Permit for the lock and the fencing check.
func (r *Run) keepLock(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(LockLease / 4)
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
			sent := time.Now()
			pctx, cancel := context.WithTimeout(ctx, LockLease)
			_, err := conn.ExecContext(pctx, renewLease, r.id)
			cancel()
			if err == nil {
				r.mu.Lock()
				r.leaseUntil = sent.Add(LockLease)
				r.mu.Unlock()
				continue
			}
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			r.lock, r.held, r.leaseUntil = nil, false, time.Time{}
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
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ErrFenced is SendGate's answer while the run cannot prove it owns what
// it holds.
var ErrFenced = errors.New("the run cannot prove it holds its ledger lock; sending paused")

// SendGate is CanSend as an error, for crmrpc.ClientConfig.SendGate.
func (r *Run) SendGate() error {
	if !r.CanSend() {
		return ErrFenced
	}
	return nil
}

// CanSend reports whether the run may start sending right now: it holds
// its lock, proven less than LockLease ago, and every key it holds passed
// the fencing check since it last took the lock. Check it as close to the
// send as can be (crmrpc.ClientConfig.SendGate).
func (r *Run) CanSend() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held && r.fenced == r.epoch && time.Now().Before(r.leaseUntil)
}

// Permit waits until the run may send (see CanSend) and returns the indexes
// of keys that are no longer this run's: while its lock was lost another
// run took them over, or delivered them. Those must not be sent; claim them
// again. A key is reported lost once.
func (r *Run) Permit(ctx context.Context, keys []string) (lost []int, err error) {
	for {
		r.mu.Lock()
		held, epoch, fenced := r.held, r.epoch, r.fenced
		fresh := time.Now().Before(r.leaseUntil)
		r.mu.Unlock()
		switch {
		case held && fenced == epoch && fresh:
			lost = r.inflight.takeLost(keys)
			return lost, nil
		case held && fenced != epoch:
			if err := r.fence(ctx, epoch); err != nil {
				return nil, err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// fence is the check a run makes after it took its lock again: which of
// the keys it holds are still its own. While it had no lock, a run that
// started turned its blocks into claims rows (still its own), and a run
// claiming its keys took them over (a claims row of that run) and may have
// delivered them (customers). A key is this run's when its claims row is
// this run's, or, without a claims row, when this run's block of it still
// exists — and it is not in customers. A key it is updating (in customers
// already) is its own while its claims row of kind update is. The check
// holds the claim lock, so
// no claim that saw this run dead commits after it.
func (r *Run) fence(ctx context.Context, epoch int64) error {
	r.fenceMu.Lock()
	defer r.fenceMu.Unlock()
	r.mu.Lock()
	done := r.fenced == epoch
	r.mu.Unlock()
	if done {
		return nil
	}
	keys, blocks, updates := r.inflight.snapshot()
	var lost []string
	err := r.inTx(ctx, func(tx *sql.Tx) error {
		lost = lost[:0]
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(db.ClaimLockKey)); err != nil {
			return fmt.Errorf("claim lock: %w", err)
		}
		rows, err := tx.QueryContext(ctx, `
			SELECT u.k FROM unnest($1::text[], $2::bigint[], $4::bool[]) AS u(k, b, upd)
			WHERE (NOT u.upd AND EXISTS (SELECT FROM customers c WHERE c.external_id = u.k))
			   OR NOT COALESCE((SELECT c.run_id = $3 AND (c.kind = 'update') = u.upd FROM claims c WHERE c.external_id = u.k),
			                   NOT u.upd AND EXISTS (SELECT FROM claim_blocks b WHERE b.id = u.b AND b.run_id = $3))`,
			pq.Array(keys), pq.Array(blocks), r.id, pq.Array(updates))
		if err != nil {
			return fmt.Errorf("fencing check: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				return err
			}
			lost = append(lost, k)
		}
		return rows.Err()
	})
	if err != nil {
		return err
	}
	r.inflight.loseKeys(lost)
	r.mu.Lock()
	r.fenced = epoch
	r.mu.Unlock()
	return nil
}
