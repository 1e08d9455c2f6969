package fakecrm

import (
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"
)

// hsContact is one HubSpot contact: its record id and property values.
type hsContact struct {
	id               uint64
	props            map[string]string
	created, updated time.Time
}

// prop returns a property value, system properties included.
func (c *hsContact) prop(name string) (string, bool) {
	switch name {
	case "hs_object_id":
		return strconv.FormatUint(c.id, 10), true
	case "createdate":
		return formatHSTime(c.created), true
	case "lastmodifieddate":
		return formatHSTime(c.updated), true
	}
	v, ok := c.props[name]
	return v, ok && v != ""
}

// hsStore holds HubSpot contacts, updated in place, with an index of each
// unique property (email, compared without regard to case, and the id
// property) that keeps their values unique as HubSpot does. Every batch is
// applied under one lock, all or nothing, so the audit's figures are exact
// under concurrency.
type hsStore struct {
	mu      sync.Mutex
	idProp  string
	byID    map[uint64]*hsContact
	order   []*hsContact // oldest first
	unique  map[string]map[string]*hsContact
	nextID  uint64
	creates int64
	keyed   int64 // contacts holding an id-property value
}

// hsFirstID is the first record id; HubSpot's ids are long digit strings.
const hsFirstID = 1001

func newHSStore(idProp string) *hsStore {
	st := &hsStore{idProp: idProp}
	st.reset()
	return st
}

func (st *hsStore) reset() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.byID, st.order, st.nextID, st.creates, st.keyed = map[uint64]*hsContact{}, nil, hsFirstID, 0, 0
	st.unique = map[string]map[string]*hsContact{"email": {}, st.idProp: {}}
}

func fold(prop, v string) string {
	if prop == "email" {
		return strings.ToLower(v)
	}
	return v
}

// find returns the contact whose property by has value key; the caller
// holds the lock.
func (st *hsStore) find(by, key string) *hsContact {
	if by == "hs_object_id" {
		n, err := strconv.ParseUint(key, 10, 64)
		if err != nil {
			return nil
		}
		return st.byID[n]
	}
	idx := st.unique[by]
	if idx == nil {
		return nil
	}
	return idx[fold(by, key)]
}

// get returns a copy of the contact whose property by has value key.
func (st *hsStore) get(by, key string) (hsContact, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	c := st.find(by, key)
	if c == nil {
		return hsContact{}, false
	}
	return *c, true // props is replaced, never changed, on update
}

// hsOp is one input of a write: a create when by is empty, else an update
// of the contact whose property by is key (created when upsert is set).
type hsOp struct {
	input  int
	props  map[string]string
	by     string
	key    string
	upsert bool
}

// hsApplied is the outcome of a batch: the results, the keys not found,
// or the id of the contact a unique value already belongs to (and then
// nothing was written).
type hsApplied struct {
	objects  []hsObject
	missing  []string
	conflict string
	updated  int // contacts that existed and were written
}

// apply writes a batch all or nothing.
func (st *hsStore) apply(ops []hsOp, now time.Time) hsApplied {
	st.mu.Lock()
	defer st.mu.Unlock()
	type step struct {
		target *hsContact // nil: create
		props  map[string]string
		id     uint64
		upsert bool
	}
	var res hsApplied
	steps := make([]step, 0, len(ops))
	claimed := map[string]map[string]uint64{} // unique values this batch takes
	next := st.nextID
	for _, op := range ops {
		var target *hsContact
		if op.by != "" {
			target = st.find(op.by, op.key)
			if target == nil && !op.upsert {
				res.missing = append(res.missing, op.key)
				continue
			}
		}
		props := op.props
		if target == nil && op.by != "" && op.by != "hs_object_id" {
			props = copyProps(props)
			props[op.by] = op.key
		}
		if target == nil && op.by == "hs_object_id" {
			res.missing = append(res.missing, op.key)
			continue
		}
		sp := step{target: target, props: props, upsert: op.upsert}
		if target != nil {
			sp.id = target.id
		} else {
			sp.id = next
			next++
		}
		for prop, idx := range st.unique {
			v, ok := props[prop]
			if !ok || v == "" {
				continue
			}
			k := fold(prop, v)
			if owner := idx[k]; owner != nil && owner.id != sp.id {
				return hsApplied{conflict: strconv.FormatUint(owner.id, 10)}
			}
			if claimed[prop] == nil {
				claimed[prop] = map[string]uint64{}
			}
			if other, ok := claimed[prop][k]; ok && other != sp.id {
				return hsApplied{conflict: strconv.FormatUint(other, 10)}
			}
			claimed[prop][k] = sp.id
		}
		steps = append(steps, sp)
	}
	for _, sp := range steps {
		created := sp.target == nil
		c := sp.target
		if created {
			c = &hsContact{id: sp.id, props: map[string]string{}, created: now}
			st.byID[c.id] = c
			st.order = append(st.order, c)
			st.creates++
		} else {
			res.updated++
		}
		had := c.props[st.idProp] != ""
		merged := copyProps(c.props)
		for k, v := range sp.props {
			if old, ok := merged[k]; ok && old != "" {
				if idx := st.unique[k]; idx != nil {
					delete(idx, fold(k, old))
				}
			}
			if v == "" {
				delete(merged, k) // "" clears a value
				continue
			}
			merged[k] = v
			if idx := st.unique[k]; idx != nil {
				idx[fold(k, v)] = c
			}
		}
		c.props, c.updated = merged, now
		switch has := merged[st.idProp] != ""; {
		case has && !had:
			st.keyed++
		case had && !has:
			st.keyed--
		}
		o := viewAll(*c)
		if sp.upsert {
			o.New = &created
		}
		res.objects = append(res.objects, o)
	}
	st.nextID = next
	return res
}

func viewAll(c hsContact) hsObject {
	props := map[string]*string{}
	for k, v := range c.props {
		props[k] = &v // a fresh v each iteration
	}
	id, created, updated := strconv.FormatUint(c.id, 10), formatHSTime(c.created), formatHSTime(c.updated)
	props["hs_object_id"], props["createdate"], props["lastmodifieddate"] = &id, &created, &updated
	return hsObject{ID: id, Properties: props, CreatedAt: created, UpdatedAt: updated}
}

// copyProps copies m, with room for one more.
func copyProps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	maps.Copy(out, m)
	return out
}

// search returns copies of the contacts last written before visible that
// match, oldest record id first.
func (st *hsStore) search(visible time.Time, match func(*hsContact) bool) []hsContact {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []hsContact
	for _, c := range st.order {
		if !c.updated.After(visible) && match(c) {
			out = append(out, *c)
		}
	}
	return out
}

// all returns copies of every contact, oldest first.
func (st *hsStore) all() []hsContact {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]hsContact, len(st.order))
	for i, c := range st.order {
		out[i] = *c
	}
	return out
}

// counts returns the audit's figures, taken together: creates, contacts,
// distinct id-property values, and contacts holding one.
func (st *hsStore) counts() (creates, contacts, distinct, keyed int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.creates, int64(len(st.order)), int64(len(st.unique[st.idProp])), st.keyed
}
