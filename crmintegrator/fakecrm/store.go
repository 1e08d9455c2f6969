package fakecrm

import (
	"maps"
	"strconv"
	"sync"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// store holds the contacts. Contacts are only ever appended (Reset swaps in
// a new slice), so a prefix of the slice may be read without the lock once
// its length has been taken under it.
type store struct {
	mu       sync.Mutex
	contacts []crmapi.StoredContact
	byExt    map[string][]int // external id → indexes into contacts, oldest first
	nextID   uint64
	creates  int64  // contacts created since start or reset
	version  uint64 // bumped on every change, so saves can skip a clean store
}

func newStore() *store {
	return &store{byExt: make(map[string][]int), nextID: 1}
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
	st.contacts = append(st.contacts, make([]crmapi.StoredContact, len(cs))...)
	base := len(st.contacts) - len(cs)
	for i, c := range cs {
		id := formatID(st.nextID)
		st.nextID++
		st.contacts[base+i] = crmapi.StoredContact{ID: id, Contact: *c, CreatedAt: createdAt}
		st.byExt[c.ExternalID] = append(st.byExt[c.ExternalID], base+i)
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
		out[i] = st.contacts[j]
	}
	return out
}

// snapshot returns the contacts without copying them: the caller must not
// modify them. Safe because contacts are append-only.
func (st *store) snapshot() (contacts []crmapi.StoredContact, nextID, version uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.contacts[:len(st.contacts):len(st.contacts)], st.nextID, st.version
}

// counts returns the audit's contact figures, consistent with each other.
func (st *store) counts() (creates, contacts, distinct int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.creates, int64(len(st.contacts)), int64(len(st.byExt))
}

// replace swaps in a whole new content: nil for Reset, a loaded state file
// at start.
func (st *store) replace(contacts []crmapi.StoredContact, nextID uint64) {
	byExt := make(map[string][]int, len(contacts))
	for i, c := range contacts {
		byExt[c.ExternalID] = append(byExt[c.ExternalID], i)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.contacts, st.byExt, st.nextID, st.creates = contacts, byExt, max(nextID, 1), 0
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
