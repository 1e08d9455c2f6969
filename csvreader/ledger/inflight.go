package ledger

import "sync"

// claim is a key this run holds.
type claim struct {
	block int64 // its claim_blocks row; 0: a claims row of its own
	file  string
	line  int64
	fp    string
	// update: the key is in customers and this run holds its claims row
	// to update it (UpdateOf).
	update *Update
}

// heldKeys is the in-flight bookkeeping of a run: the keys it claimed and
// has not settled yet (confirmed, marked rejected or failed), the blocks
// they sit in, and the blocks all settled, to delete with the next write.
// Bounded by the reader's records in flight. Only this run settles its
// keys, so what it remembers is exact. Safe for concurrent use.
type heldKeys struct {
	mu       sync.Mutex
	keys     *keyTable
	ownRows  int           // keys held by a claims row (block 0)
	open     map[int64]int // claim_blocks id → keys of it not settled
	finished []int64
	lost     map[string]bool // keys the fencing check found another run's (Permit)
}

func newHeldKeys() *heldKeys {
	return &heldKeys{keys: newKeyTable(), open: map[int64]int{}, lost: map[string]bool{}}
}

// each calls fn for each of keys this run holds, under the lock.
func (h *heldKeys) each(keys []string, fn func(i int, c claim)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, k := range keys {
		if c, ok := h.keys.get(k); ok {
			fn(i, c)
		}
	}
}

// hold records claims committed by a Claim.
func (h *heldKeys) hold(keys []string, cs []claim) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// A block's keys come together: its count goes up once, not per key.
	run := blockRun{flush: h.addOpen}
	for i, k := range keys {
		c := cs[i]
		h.keys.put(k, c)
		if c.block == 0 {
			h.ownRows++
			continue
		}
		run.add(c.block)
	}
	run.end()
}

// blockRun counts the keys of one block met in a row, so that the block's
// count of open keys moves once per run, not per key.
type blockRun struct {
	flush func(block int64, n int) // takes each run's count
	block int64
	n     int
}

// add counts a key of block; a key of another block first hands the run so
// far to flush.
func (r *blockRun) add(block int64) {
	if block != r.block {
		r.end()
		r.block = block
	}
	r.n++
}

// end hands the last run to flush.
func (r *blockRun) end() {
	r.flush(r.block, r.n)
	r.n = 0
}

// addOpen counts n more keys of block not settled. mu held.
func (h *heldKeys) addOpen(block int64, n int) {
	if n > 0 {
		h.open[block] += n
	}
}

// settle forgets keys whose outcome is committed, and queues the blocks
// they complete for deletion. Called only after the commit: a block row may
// go only once nothing in it can be sent again.
func (h *heldKeys) settle(keys []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	run := blockRun{flush: h.settleOpen}
	for _, k := range keys {
		c, ok := h.keys.del(k)
		if !ok {
			continue
		}
		if c.block == 0 {
			h.ownRows--
			continue
		}
		run.add(c.block)
	}
	run.end()
}

// forget drops k. mu held.
func (h *heldKeys) forget(k string) {
	c, ok := h.keys.del(k)
	if !ok {
		return
	}
	if c.block == 0 {
		h.ownRows--
		return
	}
	h.settleOpen(c.block, 1)
}

// settleOpen counts n keys of block settled, and queues the block once
// none is left. mu held.
func (h *heldKeys) settleOpen(block int64, n int) {
	if n == 0 {
		return
	}
	if h.open[block] -= n; h.open[block] <= 0 {
		delete(h.open, block)
		h.finished = append(h.finished, block)
	}
}

// takeFinished hands the blocks to delete to one write; put gives them back
// when that write failed.
func (h *heldKeys) takeFinished() (ids []int64, put func()) {
	h.mu.Lock()
	ids, h.finished = h.finished, nil
	h.mu.Unlock()
	return ids, func() {
		h.mu.Lock()
		h.finished = append(h.finished, ids...)
		h.mu.Unlock()
	}
}

// ownKeys returns the keys of keys held by a claims row of this run's.
func (h *heldKeys) ownKeys(keys []string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ownRows == 0 {
		return nil // the common case: only blocks
	}
	var own []string
	for _, k := range keys {
		if c, ok := h.keys.get(k); ok && c.block == 0 {
			own = append(own, k)
		}
	}
	return own
}

// openBlocks lists the blocks with keys not settled.
func (h *heldKeys) openBlocks() []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]int64, 0, len(h.open))
	for id := range h.open {
		ids = append(ids, id)
	}
	return ids
}

// snapshot lists every key held, with its block, for the fencing check.
func (h *heldKeys) snapshot() (keys []string, blocks []int64, updates []bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.keys.len()
	keys, blocks, updates = make([]string, 0, n), make([]int64, 0, n), make([]bool, 0, n)
	h.keys.all(func(k string, c claim) {
		keys, blocks, updates = append(keys, k), append(blocks, c.block), append(updates, c.update != nil)
	})
	return keys, blocks, updates
}

// loseKeys forgets the keys the fencing check found lost, and remembers
// them for Permit to report.
func (h *heldKeys) loseKeys(lost []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range lost {
		if _, ok := h.keys.get(k); ok {
			h.forget(k)
			h.lost[k] = true
		}
	}
}

// takeLost returns the indexes of keys reported lost, once each.
func (h *heldKeys) takeLost(keys []string) (lost []int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.lost) == 0 {
		return nil
	}
	for i, k := range keys {
		if h.lost[k] {
			delete(h.lost, k)
			lost = append(lost, i)
		}
	}
	return lost
}
