package ledger

import (
	"context"
	"testing"
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
