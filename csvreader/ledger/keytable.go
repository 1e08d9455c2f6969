package ledger

import "hash/maphash"

// keyTable holds the claims of the keys in flight by key. Every record
// the reader reads is looked up in it (a repeat of a key in flight), and
// every new key is put and later deleted: three operations a record, on
// a table of up to tens of thousands of keys. As a map[string]claim that
// was a tenth of the reader's CPU (BENCHMARKS.md, round 10). Here the
// table is a flat array of 8-byte slots, linear probing, at most half
// full, each slot a 32-bit piece of the key's hash and where its entry
// lies; the keys and claims sit in a slab beside it. A look-up reads one
// slot or two, in an array small enough for the CPU's cache, and compares
// one key; a delete shifts the slots after it back, so no tombstones pile
// up. Not safe for concurrent use: heldKeys holds its lock.
type keyTable struct {
	seed  maphash.Seed
	slots []keySlot  // a power of two long; at 0 marks a free slot
	ents  []keyEntry // slot.at-1 indexes it
	free  []int32    // entries of ents not in use
	n     int
}

type keySlot struct {
	hash uint32 // the low bits of the key's hash: also where it belongs
	at   int32  // 1 + its entry's index in ents; 0: free
}

type keyEntry struct {
	key string
	c   claim
}

func newKeyTable() *keyTable {
	return &keyTable{seed: maphash.MakeSeed(), slots: make([]keySlot, 64)}
}

func (t *keyTable) len() int { return t.n }

// find returns the slot index of k, or of the free slot where it would go,
// and whether k is there.
func (t *keyTable) find(k string, h uint32) (int, bool) {
	mask := len(t.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := t.slots[i]
		if s.at == 0 {
			return i, false
		}
		if s.hash == h && t.ents[s.at-1].key == k {
			return i, true
		}
	}
}

func (t *keyTable) hash(k string) uint32 { return uint32(maphash.String(t.seed, k)) }

func (t *keyTable) get(k string) (claim, bool) { return t.getHashed(k, t.hash(k)) }

// put sets k's claim, adding k when it is not there.
func (t *keyTable) put(k string, c claim) { t.putHashed(k, t.hash(k), c) }

// del removes k and returns the claim it had.
func (t *keyTable) del(k string) (claim, bool) { return t.delHashed(k, t.hash(k)) }

// getHashed, putHashed and delHashed take the key's hash, h: tests give
// keys the same one.
func (t *keyTable) getHashed(k string, h uint32) (claim, bool) {
	i, ok := t.find(k, h)
	if !ok {
		return claim{}, false
	}
	return t.ents[t.slots[i].at-1].c, true
}

func (t *keyTable) putHashed(k string, h uint32, c claim) {
	i, ok := t.find(k, h)
	if ok {
		t.ents[t.slots[i].at-1].c = c
		return
	}
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
		i, _ = t.find(k, h)
	}
	var at int32
	if n := len(t.free); n > 0 {
		at, t.free = t.free[n-1], t.free[:n-1]
		t.ents[at] = keyEntry{k, c}
	} else {
		at = int32(len(t.ents))
		t.ents = append(t.ents, keyEntry{k, c})
	}
	t.slots[i] = keySlot{h, at + 1}
	t.n++
}

func (t *keyTable) delHashed(k string, h uint32) (claim, bool) {
	i, ok := t.find(k, h)
	if !ok {
		return claim{}, false
	}
	at := t.slots[i].at - 1
	c := t.ents[at].c
	t.ents[at] = keyEntry{} // lets the key's and the claim's strings go
	t.free = append(t.free, at)
	t.n--
	// Shift back the slots after i that belong at or before it, so that
	// every key stays reachable from where it belongs without a gap.
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].at != 0; j = (j + 1) & mask {
		home := int(t.slots[j].hash) & mask
		// j's key may move to i unless it belongs in (i, j], cyclically.
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = keySlot{}
	return c, true
}

func (t *keyTable) grow() {
	old := t.slots
	t.slots = make([]keySlot, 2*len(old))
	mask := len(t.slots) - 1
	for _, s := range old {
		if s.at == 0 {
			continue
		}
		i := int(s.hash) & mask
		for t.slots[i].at != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
	}
}

// all calls fn for every key held, in no particular order.
func (t *keyTable) all(fn func(k string, c claim)) {
	for _, s := range t.slots {
		if s.at != 0 {
			e := &t.ents[s.at-1]
			fn(e.key, e.c)
		}
	}
}
