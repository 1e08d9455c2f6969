package fakecrm

// hashIndex maps 64-bit hashes to 64-bit values: the store's index from
// an external id's hash to its chain. It is a flat table with linear
// probing, each slot's key and value side by side, so that a look-up or
// an insert costs one cache miss where a map of a million entries cost
// several (its directory, control word and slot), and it holds no pointer
// for the collector to scan. (As map[uint64]uint64 the index was a fifth
// of fakecrm's CPU in make bench's 1M-row run.)
type hashIndex struct {
	slots []hashSlot // a power of two long, at most half full; key 0 marks a free slot
	n     int
}

type hashSlot struct{ key, val uint64 }

// newHashIndex returns an index with room for about n entries before it
// grows.
func newHashIndex(n int) *hashIndex {
	size := 16
	for size < 2*n {
		size *= 2
	}
	return &hashIndex{slots: make([]hashSlot, size)}
}

// slotKey keeps 0 free to mark an empty slot; the store compares external
// ids along a chain, so two hashes folded together only share a chain.
func slotKey(h uint64) uint64 { return max(h, 1) }

// slot returns the slot of h: the one holding it, or the free one where it
// would go.
func (x *hashIndex) slot(h uint64) *hashSlot {
	mask := uint64(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		if s := &x.slots[i]; s.key == h || s.key == 0 {
			return s
		}
	}
}

func (x *hashIndex) get(h uint64) (uint64, bool) {
	s := x.slot(slotKey(h))
	return s.val, s.key != 0
}

func (x *hashIndex) put(h uint64, v uint64) {
	h = slotKey(h)
	s := x.slot(h)
	if s.key == 0 {
		if 2*(x.n+1) > len(x.slots) {
			x.grow()
			s = x.slot(h)
		}
		s.key = h
		x.n++
	}
	s.val = v
}

func (x *hashIndex) grow() {
	old := x.slots
	x.slots = make([]hashSlot, 2*len(old))
	for _, s := range old {
		if s.key != 0 {
			*x.slot(s.key) = s
		}
	}
}
