package fakecrm

import (
	"maps"
	"strings"
	"sync"
	"time"
)

// sfRecord is one Salesforce record: its id and field values. Fields hold
// only non-blank values, under their describe names; Id, Name and the
// dates are derived.
type sfRecord struct {
	id               string // 18 characters
	fields           map[string]string
	created, updated time.Time
}

// value returns a field's value, derived fields included.
func (r *sfRecord) value(name string) (string, bool) {
	switch name {
	case "Id":
		return r.id, true
	case "Name":
		n := strings.TrimSpace(r.fields["FirstName"] + " " + r.fields["LastName"])
		return n, n != ""
	case "CreatedDate":
		return formatSFTime(r.created), true
	case "LastModifiedDate":
		return formatSFTime(r.updated), true
	}
	v, ok := r.fields[name]
	return v, ok
}

// sfStore holds the records, updated in place, with an index of the id
// field's values, folded to lower case as a case-insensitive External ID
// is. Every request is applied under one lock, so the audit's figures are
// exact under concurrency and allOrNone can roll back by not applying.
type sfStore struct {
	mu      sync.Mutex
	prefix  string
	idField string
	unique  bool
	byID    map[string]*sfRecord // by the 15-character id
	order   []*sfRecord          // oldest first
	byKey   map[string][]*sfRecord
	next    uint64
	creates int64
	keyed   int64 // records holding an id-field value
}

func newSFStore(prefix, idField string, unique bool) *sfStore {
	st := &sfStore{prefix: prefix, idField: idField, unique: unique}
	st.reset()
	return st
}

func (st *sfStore) reset() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.byID, st.order, st.byKey, st.next, st.creates, st.keyed = map[string]*sfRecord{}, nil, map[string][]*sfRecord{}, 1, 0, 0
}

// foldKey is the index key of an id-field value.
func foldKey(v string) string { return strings.ToLower(v) }

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// makeSFID returns the n-th record id: key prefix, a pod, a reserved
// character, nine base-62 digits, and the three-character suffix that
// encodes the case of the first fifteen, as Salesforce's 18-character ids
// do.
func makeSFID(prefix string, n uint64) string {
	var b [15]byte
	copy(b[:], prefix)
	copy(b[3:], "RO0")
	for i := 14; i >= 6; i-- {
		b[i] = base62[n%62]
		n /= 62
	}
	return string(b[:15]) + sfSuffix(string(b[:15]))
}

// sfSuffix is the suffix that makes a 15-character id an 18-character one:
// for each five characters, the bits of which are upper case, as a letter
// or digit of A-Z0-5.
func sfSuffix(id15 string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
	var out [3]byte
	for chunk := range 3 {
		bits := 0
		for j := range 5 {
			if c := id15[chunk*5+j]; c >= 'A' && c <= 'Z' {
				bits |= 1 << j
			}
		}
		out[chunk] = alphabet[bits]
	}
	return string(out[:])
}

// find returns the record with id (15 or 18 characters); the caller holds
// the lock.
func (st *sfStore) find(id string) *sfRecord {
	switch len(id) {
	case 15:
		return st.byID[id]
	case 18:
		if r := st.byID[id[:15]]; r != nil && strings.EqualFold(r.id, id) {
			return r
		}
	}
	return nil
}

// get returns a copy of the record with id.
func (st *sfStore) get(id string) (sfRecord, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := st.find(id)
	if r == nil {
		return sfRecord{}, false
	}
	return *r, true // fields is replaced, never changed, on update
}

// byExternal returns copies of the records whose id field is v, without
// regard to case.
func (st *sfStore) byExternal(v string) []sfRecord {
	st.mu.Lock()
	defer st.mu.Unlock()
	rs := st.byKey[foldKey(v)]
	out := make([]sfRecord, len(rs))
	for i, r := range rs {
		out[i] = *r
	}
	return out
}

// sfRecordError is one error of a record's result.
type sfRecordError struct {
	StatusCode string   `json:"statusCode"`
	Message    string   `json:"message"`
	Fields     []string `json:"fields"`
}

// sfOp is one record of a write: a create when upsert is false, else an
// upsert of the record whose id field is key. A nil value clears a field.
// errs, when set, are its validation errors: the store leaves it alone.
type sfOp struct {
	fields map[string]*string
	upsert bool
	key    string
	id     string // an update of the record of this Id: never a create
	errs   []sfRecordError
}

// sfResult is the outcome of one op.
type sfResult struct {
	id      string
	created bool
	errs    []sfRecordError
}

const sfRolledBack = "Record rolled back because not all records were valid and the request was using AllOrNone header"

// apply writes ops in order. With allOrNone, any error leaves everything
// unwritten and every other op rolled back.
func (st *sfStore) apply(ops []sfOp, allOrNone bool, now time.Time) []sfResult {
	st.mu.Lock()
	defer st.mu.Unlock()
	res := make([]sfResult, len(ops))
	targets := make([]*sfRecord, len(ops)) // nil: create
	claimed := map[string]string{}         // folded id-field values this request takes → record id
	next := st.next
	failed := false
	for i, op := range ops {
		if len(op.errs) > 0 {
			res[i].errs, failed = op.errs, true
			continue
		}
		var target *sfRecord
		if op.id != "" {
			if target = st.find(op.id); target == nil {
				res[i].errs, failed = []sfRecordError{sfNoSuchID(op.id)}, true
				continue
			}
		}
		if op.upsert {
			switch m := st.byKey[foldKey(op.key)]; len(m) {
			case 0:
			case 1:
				target = m[0]
			default:
				ids := make([]string, len(m))
				for j, r := range m {
					ids[j] = r.id
				}
				res[i].errs, failed = []sfRecordError{{StatusCode: "DUPLICATE_EXTERNAL_ID",
					Message: st.idField + ": more than one record found for external id field: [" + strings.Join(ids, ", ") + "]",
					Fields:  []string{}}}, true
				continue
			}
		}
		if e := required(target, op.fields); e != nil {
			res[i].errs, failed = []sfRecordError{*e}, true
			continue
		}
		id := ""
		if target != nil {
			id = target.id
		} else {
			id = makeSFID(st.prefix, next)
		}
		if st.unique {
			v, set := "", false
			if p, ok := op.fields[st.idField]; ok {
				set = true
				if p != nil {
					v = *p
				}
			}
			if !set && target == nil && op.upsert {
				v = op.key
			}
			if k := foldKey(v); v != "" {
				owner := ""
				if m := st.byKey[k]; len(m) > 0 && m[0] != target {
					owner = m[0].id
				} else if other, ok := claimed[k]; ok && other != id {
					owner = other
				}
				if owner != "" {
					res[i].errs, failed = []sfRecordError{{StatusCode: "DUPLICATE_VALUE",
						Message: "duplicate value found: " + st.idField + " duplicates value on record with id: " + owner,
						Fields:  []string{}}}, true
					continue
				}
				claimed[k] = id
			}
		}
		if target == nil {
			next++
		}
		targets[i] = target
		res[i].id, res[i].created = id, target == nil
	}
	if failed && allOrNone {
		for i := range res {
			if len(res[i].errs) == 0 {
				res[i] = sfResult{errs: []sfRecordError{{StatusCode: "ALL_OR_NONE_OPERATION_ROLLED_BACK", Message: sfRolledBack, Fields: []string{}}}}
			}
		}
		return res
	}
	for i, op := range ops {
		if len(res[i].errs) > 0 {
			continue
		}
		r := targets[i]
		if r == nil {
			r = &sfRecord{id: res[i].id, fields: map[string]string{}, created: now}
			st.byID[r.id[:15]] = r
			st.order = append(st.order, r)
			st.creates++
			if op.upsert {
				if _, set := op.fields[st.idField]; !set {
					v := op.key
					op.fields = maps.Clone(op.fields)
					op.fields[st.idField] = &v
				}
			}
		}
		st.write(r, op.fields, now)
	}
	st.next = next
	return res
}

// sfNoSuchID is an update's error for an Id the org does not hold (never
// held, or deleted): the record cannot be updated, and nothing is created.
func sfNoSuchID(id string) sfRecordError {
	return sfRecordError{StatusCode: "ENTITY_IS_DELETED", Message: "entity is deleted: " + id, Fields: []string{}}
}

// required is REQUIRED_FIELD_MISSING when a create lacks LastName or a
// write blanks it.
func required(target *sfRecord, fields map[string]*string) *sfRecordError {
	p, set := fields["LastName"]
	blank := !set || p == nil || strings.TrimSpace(*p) == ""
	if target != nil && !set || !blank {
		return nil
	}
	return &sfRecordError{StatusCode: "REQUIRED_FIELD_MISSING", Message: "Required fields are missing: [LastName]", Fields: []string{"LastName"}}
}

// write merges fields into r, keeping the index; the caller holds the lock.
func (st *sfStore) write(r *sfRecord, fields map[string]*string, now time.Time) {
	merged := maps.Clone(r.fields)
	old, had := merged[st.idField]
	for k, p := range fields {
		if p == nil || *p == "" {
			delete(merged, k)
			continue
		}
		merged[k] = *p
	}
	v, has := merged[st.idField]
	if had && (!has || v != old) {
		st.unindex(r, old)
	}
	if has && (!had || v != old) {
		st.byKey[foldKey(v)] = append(st.byKey[foldKey(v)], r)
	}
	switch {
	case has && !had:
		st.keyed++
	case had && !has:
		st.keyed--
	}
	r.fields, r.updated = merged, now
}

func (st *sfStore) unindex(r *sfRecord, v string) {
	k := foldKey(v)
	rs := st.byKey[k]
	for i, x := range rs {
		if x == r {
			rs = append(rs[:i:i], rs[i+1:]...)
			break
		}
	}
	if len(rs) == 0 {
		delete(st.byKey, k)
	} else {
		st.byKey[k] = rs
	}
}

// scan returns copies of the records that match, oldest first.
func (st *sfStore) scan(match func(*sfRecord) bool) []sfRecord {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []sfRecord
	for _, r := range st.order {
		if match(r) {
			out = append(out, *r)
		}
	}
	return out
}

// counts returns the audit's figures, taken together: creates, records,
// distinct id-field values (folded), and records holding one.
func (st *sfStore) counts() (creates, records, distinct, keyed int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.creates, int64(len(st.order)), int64(len(st.byKey)), st.keyed
}

// sfCursors keeps the records of queries that did not fit in one answer,
// by query locator, the oldest evicted first.
type sfCursors struct {
	mu    sync.Mutex
	max   int
	seq   uint64
	byLoc map[string][]sfRecord
	fifo  []string
	asked map[string][]string // the fields each query asked for
}

func newSFCursors(max int) *sfCursors {
	c := &sfCursors{max: max}
	c.reset()
	return c
}

func (c *sfCursors) reset() {
	c.mu.Lock()
	c.byLoc, c.fifo, c.asked = map[string][]sfRecord{}, nil, map[string][]string{}
	c.mu.Unlock()
}

// add keeps rs and the fields asked for, and returns their locator.
func (c *sfCursors) add(rs []sfRecord, asked []string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	loc := makeSFID("01g", c.seq)
	c.byLoc[loc], c.asked[loc] = rs, asked
	c.fifo = append(c.fifo, loc)
	if len(c.fifo) > c.max {
		delete(c.byLoc, c.fifo[0])
		delete(c.asked, c.fifo[0])
		c.fifo = c.fifo[1:]
	}
	return loc
}

func (c *sfCursors) get(loc string) ([]sfRecord, []string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rs, ok := c.byLoc[loc]
	return rs, c.asked[loc], ok
}
