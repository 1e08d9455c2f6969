package ledger

import (
	"context"
	"testing"
	"time"

	"crmsync/db"
)

// KillLock drops the run's lock connection as a killed process would,
// without recording the run's end.
func KillLock(t *testing.T, r *Run) {
	t.Helper()
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	discard(r.lock)
	r.lock, r.held = nil, false
	// PostgreSQL releases the lock when it notices the session is gone,
	// a moment after the client closed it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		// Other tests' databases on the cluster have runs of the same ids.
		if err := r.db.QueryRow(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
			AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
			int64(db.RunLockNamespace), r.id&0xffffffff).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed run's lock is still held after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ResumeLock restarts the run's lock keeper after KillLock, as a live run
// whose lock connection PostgreSQL dropped would take its lock again.
func ResumeLock(t *testing.T, r *Run) {
	t.Helper()
	hctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Add(1)
	go r.keepLock(hctx)
}

// KeysBytewise reports whether r's look-up names the range of a block's
// keys (bytewiseKeysQuery), preparing the look-up if need be.
func KeysBytewise(ctx context.Context, r *Run) (bool, error) {
	_, b, err := r.lookupStmt(ctx)
	return b, err
}

// ForceProbeEveryKey makes r's look-up probe customers for every key, as under
// a collation that does not sort bytewise.
func ForceProbeEveryKey(ctx context.Context, r *Run) error {
	if _, _, err := r.lookupStmt(ctx); err != nil {
		return err
	}
	r.lookupMu.Lock()
	r.bytewise = false
	r.lookupMu.Unlock()
	return nil
}
