package integrator

import (
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"crmsync/shared/crmrpc"
)

// holders records which external ids a Deliver call of this process is
// working on, and until when that call may still send. A record that
// arrives while another live call holds its key is not touched: the other
// call may still create it, and a lookup now could miss that create. The
// reader promises never to send one record in two calls at once (see
// docs/design.md); this is the daemon keeping the promise even when a
// reader does not, and counting it when it happens.
//
// Keys are held by their 64-bit hash (keyHashes), not their text: a map of
// integers costs half a map of strings, and every record goes through it
// twice (hold, release). Two keys with one hash would make the second wait
// for the first's call as if it were the same key: a retry, never a
// duplicate.
type holders struct {
	mu   sync.Mutex
	keys map[uint64]*callHold
}

// callHold is one call's hold on its keys.
type callHold struct {
	until time.Time // the call's hard end: it sends nothing after this
}

func newHolders() *holders { return &holders{keys: map[uint64]*callHold{}} }

// hold takes the keys of idx (indexes into hashes, the keys' keyHashes) for
// h. It returns, for each key another call holds, that call's end; those
// keys are not taken. A key repeated within the call is held once.
func (t *holders) hold(h *callHold, hashes []uint64, idx []int) (taken []int, busy map[int]time.Time) {
	taken = idx[:0:0]
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range idx {
		k := hashes[i]
		switch other, ok := t.keys[k]; {
		case !ok:
			t.keys[k] = h
			taken = append(taken, i)
		case other == h:
			taken = append(taken, i)
		default:
			if busy == nil {
				busy = map[int]time.Time{}
			}
			busy[i] = other.until
		}
	}
	return taken, busy
}

// release gives up h's keys.
func (t *holders) release(h *callHold, hashes []uint64, idx []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range idx {
		if t.keys[hashes[i]] == h {
			delete(t.keys, hashes[i])
		}
	}
}

// keyHashes returns the hash of each record's external id with seed: one
// hash per key for the whole call (repeats, holders, fates).
func keyHashes(seed maphash.Seed, recs []crmrpc.Record) []uint64 {
	hs := make([]uint64, len(recs))
	for i := range recs {
		hs[i] = maphash.String(seed, recs[i].Contact.ExternalID)
	}
	return hs
}

// firstOfEach returns the indexes of todo whose key has not come earlier
// in todo, and for each repeat {repeat, first}. Keys are compared by hash,
// then by text: should two keys share a hash it starts over with a map of
// the keys themselves.
func firstOfEach(keys []string, hashes []uint64, todo []int) (uniq []int, repeats [][2]int) {
	uniq, repeats, ok := firstBy(todo, hashes, keys)
	if !ok {
		uniq, repeats, _ = firstBy(todo, keys, nil)
	}
	return uniq, repeats
}

// firstBy is firstOfEach by by[i]. When texts is not nil, two indexes with
// one by are a repeat only if their texts are equal too; ok is false when
// they were not.
func firstBy[K comparable](todo []int, by []K, texts []string) (uniq []int, repeats [][2]int, ok bool) {
	first := make(map[K]int, len(todo))
	uniq = todo[:0:0]
	for _, i := range todo {
		if j, seen := first[by[i]]; seen {
			if texts != nil && texts[i] != texts[j] {
				return nil, nil, false
			}
			repeats = append(repeats, [2]int{i, j})
			continue
		}
		first[by[i]] = i
		uniq = append(uniq, i)
	}
	return uniq, repeats, true
}

// fates remembers, for the last external ids this process saw the CRM hold
// (created by one of its requests, or found by a lookup), the CRM id. A
// record sent again with MaybeSent — after a reader crashed, or timed out
// on a call this daemon answered — is then settled without a lookup. Only
// what the CRM said it holds is remembered: a "not found" can go stale the
// moment another request creates the contact.
//
// Bounded, in two generations of half the capacity each: when the newer
// is full it becomes the older, and the older is dropped whole. (A ring
// that evicted entry by entry cost a map delete per insert: 15% of the
// daemon's CPU in make bench.)
//
// A generation is a flat open-addressing table over an arena of bytes,
// not a map: nothing in it holds a pointer, so the collector does not scan
// it, a remembered fate is not an allocation, and a dropped generation's
// memory is reused by the next. (As a map of strings, remembering every
// created record took a sixth of the daemon's CPU in make bench.)
//
// Nearly every key asked about is new, and a probe of a table this size
// misses the CPU's cache: each generation keeps a Bloom filter of its keys
// (16 bits a key, two probes from one hash; 64 KiB at the default
// capacity) that answers "not here" from the cache.
type fates struct {
	mu        sync.RWMutex
	cur, prev fateGen
	half      int
	seed      maphash.Seed
}

// fateGen is one generation: its entries, their table and the filter of
// their keys.
type fateGen struct {
	bits  []uint64 // the Bloom filter; nil: the generation is empty
	slots []uint64 // linear probing; a slot is the hash's top half<<32 | entry+1, 0 when free
	ents  []fateEnt
	arena []byte // each entry's external id, then its CRM id
}

// fateEnt is what the daemon saw the CRM hold for an external id: the ids
// at arena[off:], and when (unix nanoseconds).
type fateEnt struct {
	at         int64
	off        uint32
	klen, ilen uint16
}

// maxFateArena keeps arena offsets within a fateEnt's uint32.
const maxFateArena = math.MaxUint32

func newFates(capacity int) *fates {
	if capacity <= 0 {
		return nil
	}
	half := max(capacity/2, 1)
	f := &fates{half: half, seed: maphash.MakeSeed()}
	f.cur = f.newGen(fateGen{})
	return f
}

// newGen returns an empty generation, reusing old's memory when it has
// any.
func (f *fates) newGen(old fateGen) fateGen {
	if old.bits == nil {
		n := 1
		for n < 2*f.half {
			n *= 2
		}
		return fateGen{bits: make([]uint64, filterWords(f.half)), slots: make([]uint64, n),
			ents: make([]fateEnt, 0, f.half)}
	}
	clear(old.bits)
	clear(old.slots)
	return fateGen{bits: old.bits, slots: old.slots, ents: old.ents[:0], arena: old.arena[:0]}
}

// filterWords sizes a generation's filter: 16 bits a key, a power of two.
func filterWords(keys int) int {
	n := 1
	for n*64 < keys*16 {
		n *= 2
	}
	return n
}

// probes returns the filter's two bit positions for hash h.
func (g *fateGen) probes(h uint64) (uint64, uint64) {
	mask := uint64(len(g.bits))*64 - 1
	return h & mask, (h >> 32) & mask
}

func (g *fateGen) mayHold(h uint64) bool {
	if g.bits == nil {
		return false
	}
	a, b := g.probes(h)
	return g.bits[a/64]&(1<<(a%64)) != 0 && g.bits[b/64]&(1<<(b%64)) != 0
}

// find returns key's entry, if the generation holds it.
func (g *fateGen) find(h uint64, key string) (*fateEnt, bool) {
	if !g.mayHold(h) {
		return nil, false
	}
	mask := uint64(len(g.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := g.slots[i]
		if s == 0 {
			return nil, false
		}
		if uint32(s>>32) == uint32(h>>32) {
			e := &g.ents[uint32(s)-1]
			if string(g.arena[e.off:e.off+uint32(e.klen)]) == key {
				return e, true
			}
		}
	}
}

// id returns e's CRM id.
func (g *fateGen) id(e *fateEnt) string {
	start := e.off + uint32(e.klen)
	return string(g.arena[start : start+uint32(e.ilen)])
}

// fits tells whether the generation has room for one more entry of n
// bytes.
func (g *fateGen) fits(half, n int) bool {
	return g.bits != nil && len(g.ents) < half && len(g.arena)+n <= maxFateArena
}

// put adds key, which the generation does not hold, and its CRM id.
func (g *fateGen) put(h uint64, key, id string, at int64) {
	a, b := g.probes(h)
	g.bits[a/64] |= 1 << (a % 64)
	g.bits[b/64] |= 1 << (b % 64)
	mask := uint64(len(g.slots) - 1)
	i := h & mask
	for g.slots[i] != 0 {
		i = (i + 1) & mask
	}
	g.slots[i] = h>>32<<32 | uint64(len(g.ents)+1)
	g.ents = append(g.ents, fateEnt{at: at, off: uint32(len(g.arena)), klen: uint16(len(key)), ilen: uint16(len(id))})
	g.arena = append(append(g.arena, key...), id...)
}

// remember records that the CRM holds externalID as crmID, seen at at
// (unix nanoseconds; callers take one clock reading per answer). Ids
// longer than 64 KiB are not remembered.
func (f *fates) remember(at int64, externalID, crmID string) {
	if f == nil {
		return
	}
	f.rememberHashed(at, maphash.String(f.seed, externalID), externalID, crmID)
}

// rememberHashed is remember for a caller holding externalID's hash with
// f's seed.
func (f *fates) rememberHashed(at int64, h uint64, externalID, crmID string) {
	if f == nil || crmID == "" || len(externalID) > math.MaxUint16 || len(crmID) > math.MaxUint16 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.cur.find(h, externalID); ok {
		return // the first id the CRM gave is the one readers record
	}
	if _, ok := f.prev.find(h, externalID); ok {
		return
	}
	if n := len(externalID) + len(crmID); !f.cur.fits(f.half, n) {
		f.prev, f.cur = f.cur, f.newGen(f.prev)
	}
	f.cur.put(h, externalID, crmID, at)
}

// known returns the CRM id remembered for externalID, if it was seen
// within the last within (0: whenever).
func (f *fates) known(externalID string, within time.Duration) (string, bool) {
	if f == nil {
		return "", false
	}
	return f.knownHashed(maphash.String(f.seed, externalID), externalID, within)
}

// knownHashed is known for a caller holding externalID's hash with f's
// seed.
func (f *fates) knownHashed(h uint64, externalID string, within time.Duration) (string, bool) {
	if f == nil {
		return "", false
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	g := &f.cur
	e, ok := g.find(h, externalID)
	if !ok {
		g = &f.prev
		e, ok = g.find(h, externalID)
	}
	if !ok || (within > 0 && time.Since(time.Unix(0, e.at)) > within) {
		return "", false
	}
	return g.id(e), true
}

// quotaState is the CRM's daily allocation as the daemon knows it: spent
// until a moment, after which requests may go again.
type quotaState struct {
	until atomic.Int64           // unix nanoseconds; 0: not spent
	why   atomic.Pointer[string] // what the CRM or the connector said of it
}

// reason is what was said of the latest spend, or "".
func (q *quotaState) reason() string {
	if p := q.why.Load(); p != nil {
		return *p
	}
	return ""
}

func (q *quotaState) spentUntil(now time.Time) (time.Time, bool) {
	u := q.until.Load()
	if u == 0 || now.UnixNano() >= u {
		return time.Time{}, false
	}
	return time.Unix(0, u), true
}

func (q *quotaState) spend(until time.Time, why string) {
	if why != "" {
		q.why.Store(&why)
	}
	for {
		cur := q.until.Load()
		if until.UnixNano() <= cur || q.until.CompareAndSwap(cur, until.UnixNano()) {
			return
		}
	}
}
