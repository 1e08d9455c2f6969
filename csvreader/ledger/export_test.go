package ledger

import "testing"

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
