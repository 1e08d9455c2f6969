package fakecrm

import (
	"encoding/binary"
	"hash/maphash"
	"maps"
	"math"
	"strconv"
	"sync"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

// chunkSize is how many contacts one chunk of the store holds. Chunks are
// never moved, so growing the store never copies what it already holds
// (which, under the lock, would stall every request).
const chunkSize = 4096

// maxContacts is how many contacts a store can hold: positions are uint32.
const maxContacts = math.MaxUint32

// The store keeps each contact packed into one record of bytes in its
// chunk, and indexes them by a hash of the external id, so that millions
// of contacts are a few hundred allocations without pointers: the garbage
// collector has nothing to scan, where a crmapi.StoredContact per contact
// gave it ten pointers and a map each, and a []int per external id more.
// Records are decoded on lookup and snapshot, which are rare next to
// create.
//
// A record is, in order, where a string is its length as a uvarint then
// its bytes:
//
//	external_id   string
//	id            uvarint n+1 for formatID(n); 0, then the id as a string
//	created_at    uvarint r+1 where r is the offset in the chunk of an
//	              earlier record's created_at string (a batch shares one);
//	              0, then the string
//	email, first_name, last_name, phone   strings
//	attributes    uvarint count+1, then count key and value strings; 0 for
//	              nil (so a nil map and an empty one come back as they went)

// chunk holds up to chunkSize contacts. recs comes first so that the
// collector's scan of a chunk stops after one word.
type chunk struct {
	recs []byte            // the records, back to back
	ends [chunkSize]uint64 // ends[i]: where record i ends in recs
	// next[i] is the position of the next contact, after this one, whose
	// external id has the same hash; 0 (never a next) ends the chain.
	next [chunkSize]uint32
}

// store holds the contacts in fixed chunks. Contacts are only ever
// appended (replace swaps in new chunks), so records below a count taken
// under the lock may be read without it, through the recs slices taken
// with the count.
type store struct {
	mu     sync.Mutex
	chunks []*chunk // the last one partly filled
	n      int      // contacts held
	// index maps the hash of an external id to the positions of the
	// oldest and the newest contact on its chain (first<<32 | last). A
	// chain holds every contact with that hash, oldest first; the
	// external ids are compared to tell apart the (rare) different ids
	// that share a hash.
	index    *hashIndex
	hash     func(externalID string) uint64 // tests swap in one that collides
	distinct int64                          // external ids held
	// lastStamp is the created_at of the last record pushed, and
	// lastStampAt where its string lies in the last chunk; -1 when it is
	// not there.
	lastStamp   string
	lastStampAt int
	nextID      uint64
	creates     int64  // contacts created since start or reset
	version     uint64 // bumped on every change, so saves can skip a clean store
	// Records are never rewritten: an updated contact's current fields
	// live in updated, by position, and override its record. byID finds
	// a position from an id; it is built at the first update (stores that
	// see none pay nothing) and kept up to date from then on.
	updated map[uint32]crmapi.StoredContact
	byID    map[string]uint32
}

func newStore() *store {
	seed := maphash.MakeSeed()
	return &store{
		index:       newHashIndex(0),
		hash:        func(s string) uint64 { return maphash.String(seed, s) },
		lastStampAt: -1,
		nextID:      1,
	}
}

// appendID appends the CRM id of sequence number n, like "ct_00000042".
func appendID(b []byte, n uint64) []byte {
	var num [20]byte
	digits := strconv.AppendUint(num[:0], n, 10)
	b = append(b, "ct_"...)
	for i := len(digits); i < 8; i++ {
		b = append(b, '0')
	}
	return append(b, digits...)
}

// formatID turns a sequence number into a CRM id like "ct_00000042".
func formatID(n uint64) string {
	var buf [32]byte
	return string(appendID(buf[:0], n))
}

// idCode is how a record holds id: n+1 when id is formatID(n), else 0
// (the id is then written out).
func idCode(id string) uint64 {
	if len(id) < 11 || id[:3] != "ct_" {
		return 0
	}
	n, err := strconv.ParseUint(id[3:], 10, 64)
	if err != nil || n == math.MaxUint64 {
		return 0
	}
	var buf [32]byte
	if string(appendID(buf[:0], n)) != id { // leading zeros beyond the eight digits
		return 0
	}
	return n + 1
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// push appends one contact whose id is id, coded as code (idCode); the
// caller holds the lock.
func (st *store) push(c *contact.Contact, id string, code uint64, createdAt string) {
	if uint64(st.n) >= maxContacts {
		panic("fakecrm: the store is full")
	}
	i := st.n % chunkSize
	if i == 0 {
		// Size the new chunk like the last one, so its records are rarely
		// copied as it fills.
		size := 64 << 10
		if len(st.chunks) > 0 {
			last := len(st.chunks[len(st.chunks)-1].recs)
			size = last + last/8
		}
		st.chunks = append(st.chunks, &chunk{recs: make([]byte, 0, size)})
		st.lastStampAt = -1
	}
	ch := st.chunks[len(st.chunks)-1]
	b := appendString(ch.recs, c.ExternalID)
	b = binary.AppendUvarint(b, code)
	if code == 0 {
		b = appendString(b, id)
	}
	if st.lastStampAt >= 0 && createdAt == st.lastStamp {
		b = binary.AppendUvarint(b, uint64(st.lastStampAt)+1)
	} else {
		b = append(b, 0)
		st.lastStamp, st.lastStampAt = createdAt, len(b)
		b = appendString(b, createdAt)
	}
	b = appendString(b, c.Email)
	b = appendString(b, c.FirstName)
	b = appendString(b, c.LastName)
	b = appendString(b, c.Phone)
	if c.Attributes == nil {
		b = append(b, 0)
	} else {
		b = binary.AppendUvarint(b, uint64(len(c.Attributes))+1)
		for _, a := range c.Attributes {
			b = appendString(b, a.Name)
			b = appendString(b, a.Value)
		}
	}
	ch.recs = b
	ch.ends[i] = uint64(len(b))
	st.link(c.ExternalID, uint32(st.n))
	if st.byID != nil {
		st.byID[id] = uint32(st.n)
	}
	st.n++
}

// at decodes the contact at position p as it is now; the caller holds
// the lock.
func (st *store) at(p uint32) crmapi.StoredContact {
	if c, ok := st.updated[p]; ok {
		return c
	}
	recs, start, end := st.record(p)
	return decodeContact(string(recs[start:end]), 0, func(at int) string {
		return string(bytesAt(recs, at))
	})
}

// update applies fn to the contact whose id is id, under the lock: fn
// changes it, or returns false to leave it as it was. found is false when
// the store holds no such id.
func (st *store) update(id string, fn func(*crmapi.StoredContact) bool) (found bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.byID == nil {
		st.byID = make(map[string]uint32, st.n)
		st.updated = map[uint32]crmapi.StoredContact{}
		for p := range uint32(st.n) {
			st.byID[st.at(p).ID] = p
		}
	}
	p, ok := st.byID[id]
	if !ok {
		return false
	}
	c := st.at(p)
	// A copy: snapshots taken outside the lock share the old one.
	c.Attributes = c.Attributes.Clone()
	if fn(&c) {
		st.updated[p] = c
		st.version++
	}
	return true
}

// link adds the contact at position p, whose record is written, to the
// chain of ext's hash.
func (st *store) link(ext string, p uint32) {
	h := st.hash(ext)
	v, ok := st.index.get(h)
	if !ok {
		st.index.put(h, uint64(p)<<32|uint64(p))
		st.distinct++
		return
	}
	first, last := uint32(v>>32), uint32(v)
	seen := false
	for q := first; ; q = st.nextOf(q) {
		if string(st.extAt(q)) == ext {
			seen = true
			break
		}
		if q == last {
			break
		}
	}
	if !seen {
		st.distinct++
	}
	st.chunks[last/chunkSize].next[last%chunkSize] = p
	st.index.put(h, uint64(first)<<32|uint64(p))
}

func (st *store) nextOf(p uint32) uint32 { return st.chunks[p/chunkSize].next[p%chunkSize] }

// record returns the chunk's records and where the one at position p lies.
func (st *store) record(p uint32) (recs []byte, start, end int) {
	ch := st.chunks[p/chunkSize]
	i := p % chunkSize
	if i > 0 {
		start = int(ch.ends[i-1])
	}
	return ch.recs, start, int(ch.ends[i])
}

// extAt returns the external id of the contact at position p, to compare
// as string(extAt(p)) == ext, which does not allocate.
func (st *store) extAt(p uint32) []byte {
	recs, start, _ := st.record(p)
	return bytesAt(recs, start)
}

// create stores every contact, duplicates included, and writes each new id
// into ids (which must be as long as cs).
func (st *store) create(cs []*contact.Contact, createdAt string, ids []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for i, c := range cs {
		seq := st.nextID
		st.nextID++
		id := formatID(seq)
		code := uint64(0)
		if seq < math.MaxUint64 {
			code = seq + 1
		}
		st.push(c, id, code, createdAt)
		ids[i] = id
	}
	st.creates += int64(len(cs))
	st.version++
}

// lookup returns the contacts holding externalID, oldest first; never nil.
func (st *store) lookup(externalID string) []crmapi.StoredContact {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := []crmapi.StoredContact{}
	v, ok := st.index.get(st.hash(externalID))
	if !ok {
		return out
	}
	first, last := uint32(v>>32), uint32(v)
	for q := first; ; q = st.nextOf(q) {
		if string(st.extAt(q)) == externalID {
			out = append(out, st.at(q))
		}
		if q == last {
			return out
		}
	}
}

// chunkView is what snapshot reads of a chunk outside the lock.
type chunkView struct {
	recs []byte
	ends *[chunkSize]uint64
}

// snapshot returns every contact, decoded outside the lock (safe because
// contacts are append-only). The contacts are the caller's, but strings
// of one chunk share one allocation.
func (st *store) snapshot() (contacts []crmapi.StoredContact, nextID, version uint64) {
	st.mu.Lock()
	n := st.n
	nextID, version = st.nextID, st.version
	views := make([]chunkView, len(st.chunks))
	for i, ch := range st.chunks {
		views[i] = chunkView{ch.recs, &ch.ends}
	}
	updated := maps.Clone(st.updated) // its values are never changed, only replaced
	st.mu.Unlock()
	contacts = make([]crmapi.StoredContact, 0, n)
	for _, v := range views {
		m := min(chunkSize, n-len(contacts))
		if m <= 0 {
			break
		}
		text := string(v.recs[:v.ends[m-1]])
		stamp := func(at int) string { return stringAt(text, at) }
		start := 0
		for i := range m {
			contacts = append(contacts, decodeContact(text, start, stamp))
			start = int(v.ends[i])
		}
	}
	for p, c := range updated {
		contacts[p] = c
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
	return st.creates, int64(st.n), st.distinct
}

// replace swaps in a whole new content: nil for Reset, a loaded state file
// at start.
func (st *store) replace(contacts []crmapi.StoredContact, nextID uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.chunks, st.n, st.index, st.distinct = nil, 0, newHashIndex(len(contacts)), 0
	st.updated, st.byID = nil, nil
	st.lastStamp, st.lastStampAt = "", -1
	for i := range contacts {
		c := &contacts[i]
		st.push(&c.Contact, c.ID, idCode(c.ID), c.CreatedAt)
	}
	st.nextID, st.creates = max(nextID, 1), 0
	st.version++
}

// decodeContact decodes the record at s[at:]; stampAt returns the
// created_at string at an offset of the chunk.
func decodeContact(s string, at int, stampAt func(int) string) crmapi.StoredContact {
	r := recordReader{s: s, i: at}
	var c crmapi.StoredContact
	c.ExternalID = r.string()
	if code := r.uvarint(); code > 0 {
		c.ID = formatID(code - 1)
	} else {
		c.ID = r.string()
	}
	if ref := r.uvarint(); ref > 0 {
		c.CreatedAt = stampAt(int(ref - 1))
	} else {
		c.CreatedAt = r.string()
	}
	c.Email = r.string()
	c.FirstName = r.string()
	c.LastName = r.string()
	c.Phone = r.string()
	if n := r.uvarint(); n > 1 { // 1: none (Attrs are nil when empty)
		c.Attributes = make(contact.Attrs, n-1) // written in order, from Attrs
		for i := range c.Attributes {
			a := &c.Attributes[i]
			a.Name = r.string()
			a.Value = r.string()
		}
	}
	return c
}

// recordReader reads the fields of a record the store wrote; a record it
// did not write is a bug, and panics.
type recordReader struct {
	s string
	i int
}

func (r *recordReader) uvarint() uint64 {
	var v uint64
	for shift := 0; ; shift += 7 {
		b := r.s[r.i]
		r.i++
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v
		}
	}
}

func (r *recordReader) string() string {
	n := int(r.uvarint())
	v := r.s[r.i : r.i+n]
	r.i += n
	return v
}

// stringAt returns the string written at s[at:].
func stringAt(s string, at int) string {
	r := recordReader{s: s, i: at}
	return r.string()
}

// bytesAt returns the string written at b[at:].
func bytesAt(b []byte, at int) []byte {
	n, k := binary.Uvarint(b[at:])
	return b[at+k : at+k+int(n)]
}

// cloneContacts deep-copies contacts so callers may keep and change them.
func cloneContacts(in []crmapi.StoredContact) []crmapi.StoredContact {
	out := make([]crmapi.StoredContact, len(in))
	for i, c := range in {
		out[i] = c
		out[i].Attributes = c.Attributes.Clone()
	}
	return out
}
