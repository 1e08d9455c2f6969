package fakecrm

import (
	"maps"
	"strconv"
	"sync"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// chunkSize is how many contacts one chunk of the store holds. Chunks are
// never moved, so growing the store never copies what it already holds
// (which, under the lock, would stall every request).
const chunkSize = 4096

// store holds the contacts in fixed chunks. Contacts are only ever
// appended (Reset swaps in new chunks), so contacts below a count taken
// under the lock may be read without it.
type store struct {
	mu      sync.Mutex
	chunks  [][]crmapi.StoredContact // each chunkSize long; the last one partly filled
	n       int                      // contacts held
	byExt   map[string][]int         // external id → positions, oldest first
	nextID  uint64
	creates int64  // contacts created since start or reset
	version uint64 // bumped on every change, so saves can skip a clean store
}

func newStore() *store {
	return &store{byExt: make(map[string][]int), nextID: 1}
}

func (st *store) at(i int) *crmapi.StoredContact { return &st.chunks[i/chunkSize][i%chunkSize] }

// push appends one contact; the caller holds the lock.
func (st *store) push(c crmapi.StoredContact) {
	if st.n%chunkSize == 0 && st.n/chunkSize == len(st.chunks) {
		st.chunks = append(st.chunks, make([]crmapi.StoredContact, chunkSize))
	}
	*st.at(st.n) = c
	st.byExt[c.ExternalID] = append(st.byExt[c.ExternalID], st.n)
	st.n++
}

// formatID turns a sequence number into a CRM id like "ct_00000042".
func formatID(n uint64) string {
	var buf [32]byte
	var num [20]byte
	digits := strconv.AppendUint(num[:0], n, 10)
	b := append(buf[:0], "ct_"...)
	for i := len(digits); i < 8; i++ {
		b = append(b, '0')
	}
	return string(append(b, digits...))
}

// create stores every contact, duplicates included, and writes each new id
// into ids (which must be as long as cs).
func (st *store) create(cs []*contact.Contact, createdAt string, ids []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for i, c := range cs {
		id := formatID(st.nextID)
		st.nextID++
		st.push(crmapi.StoredContact{ID: id, Contact: *c, CreatedAt: createdAt})
		ids[i] = id
	}
	st.creates += int64(len(cs))
	st.version++
}

// lookup returns the contacts holding externalID, oldest first; never nil.
func (st *store) lookup(externalID string) []crmapi.StoredContact {
	st.mu.Lock()
	defer st.mu.Unlock()
	idx := st.byExt[externalID]
	out := make([]crmapi.StoredContact, len(idx))
	for i, j := range idx {
		out[i] = *st.at(j)
	}
	return out
}

// snapshot returns every contact, copied outside the lock (safe because
// contacts are append-only); the Attributes maps are shared and must not
// be modified.
func (st *store) snapshot() (contacts []crmapi.StoredContact, nextID, version uint64) {
	st.mu.Lock()
	chunks, n := st.chunks, st.n
	nextID, version = st.nextID, st.version
	st.mu.Unlock()
	contacts = make([]crmapi.StoredContact, 0, n)
	for _, ch := range chunks {
		contacts = append(contacts, ch[:min(len(ch), n-len(contacts))]...)
	}
	return contacts, nextID, version
}

// stamp returns the version and next id without copying anything.
func (st *store) stamp() (nextID, version uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.nextID, st.version
}

// counts returns the audit's contact figures, consistent with each other.
func (st *store) counts() (creates, contacts, distinct int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.creates, int64(st.n), int64(len(st.byExt))
}

// replace swaps in a whole new content: nil for Reset, a loaded state file
// at start.
func (st *store) replace(contacts []crmapi.StoredContact, nextID uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.chunks, st.n, st.byExt = nil, 0, make(map[string][]int, len(contacts))
	for _, c := range contacts {
		st.push(c)
	}
	st.nextID, st.creates = max(nextID, 1), 0
	st.version++
}

// cloneContacts deep-copies contacts so callers may keep and change them.
func cloneContacts(in []crmapi.StoredContact) []crmapi.StoredContact {
	out := make([]crmapi.StoredContact, len(in))
	for i, c := range in {
		out[i] = c
		out[i].Attributes = maps.Clone(c.Attributes)
	}
	return out
}
