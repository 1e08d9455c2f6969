package contact

import (
	"encoding/json"
	"slices"
	"strings"

	"crmsync/shared/jsontext"
)

// Attr is one attribute: its name and value.
type Attr struct{ Name, Value string }

// Attrs is a contact's attributes: sorted by name (bytewise, as
// encoding/json sorts a map's keys), each name once, nil when there are
// none. Every stage wants them in that order — the fingerprint, the
// ledger's column, the JSON the CRM gets — and a contact holds a handful,
// so a sorted slice is one allocation where a map was built, hashed and
// sorted again at each stage.
//
// The methods that change Attrs write in place: like a map, Attrs is
// shared by copies of a Contact, and a holder that changes them while
// others keep them Clones first.
type Attrs []Attr

// AttrsOf returns m's entries as Attrs (nil for an empty m).
func AttrsOf(m map[string]string) Attrs {
	if len(m) == 0 {
		return nil
	}
	a := make(Attrs, 0, len(m))
	for k, v := range m {
		a = append(a, Attr{k, v})
	}
	slices.SortFunc(a, func(x, y Attr) int { return strings.Compare(x.Name, y.Name) })
	return a
}

// SortAttrs turns attributes in any order into Attrs, in a's array: for
// a name given more than once the last one wins, as it does for a
// repeated key in encoding/json. It is how a decoder that reads them in
// the sender's order makes them Attrs.
func SortAttrs(a []Attr) Attrs {
	if len(a) == 0 {
		return nil
	}
	if a := Attrs(a); a.sorted() {
		return a
	}
	slices.SortStableFunc(a, func(x, y Attr) int { return strings.Compare(x.Name, y.Name) })
	out := a[:0]
	for i := range a {
		if i+1 < len(a) && a[i+1].Name == a[i].Name {
			continue // a later one of the same name follows
		}
		out = append(out, a[i])
	}
	return out
}

// sorted reports whether a is in strictly ascending order of name.
func (a Attrs) sorted() bool {
	for i := 1; i < len(a); i++ {
		if a[i-1].Name >= a[i].Name {
			return false
		}
	}
	return true
}

// Map returns the attributes as a map, nil when there are none.
func (a Attrs) Map() map[string]string {
	if len(a) == 0 {
		return nil
	}
	m := make(map[string]string, len(a))
	for _, x := range a {
		m[x.Name] = x.Value
	}
	return m
}

// find returns where name is, or where it would go.
func (a Attrs) find(name string) (int, bool) {
	if len(a) <= 8 { // a scan beats halving for a handful
		for i := range a {
			if a[i].Name >= name {
				return i, a[i].Name == name
			}
		}
		return len(a), false
	}
	return slices.BinarySearchFunc(a, name, func(x Attr, n string) int { return strings.Compare(x.Name, n) })
}

// Get returns the value of the attribute name, and whether there is one.
func (a Attrs) Get(name string) (string, bool) {
	if i, ok := a.find(name); ok {
		return a[i].Value, true
	}
	return "", false
}

// Set gives the attribute name the value v, adding it in its place.
func (a *Attrs) Set(name, v string) {
	i, ok := a.find(name)
	if ok {
		(*a)[i].Value = v
		return
	}
	*a = slices.Insert(*a, i, Attr{name, v})
}

// Delete removes the attribute name, if there is one; Attrs become nil
// when the last goes.
func (a *Attrs) Delete(name string) {
	if i, ok := a.find(name); ok {
		*a = slices.Delete(*a, i, i+1)
	}
	if len(*a) == 0 {
		*a = nil
	}
}

// Clone returns a copy that shares nothing with a.
func (a Attrs) Clone() Attrs {
	if len(a) == 0 {
		return nil
	}
	return slices.Clone(a)
}

// AppendJSON appends the attributes as a JSON object: byte for byte what
// encoding/json writes for the same map[string]string.
func (a Attrs) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	for i, x := range a {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsontext.AppendString(b, x.Name)
		b = append(b, ':')
		b = jsontext.AppendString(b, x.Value)
	}
	return append(b, '}')
}

// MarshalJSON writes the attributes as a JSON object, as a map of them
// was written: {"name":"value",...}, names sorted.
func (a Attrs) MarshalJSON() ([]byte, error) {
	if a == nil {
		return []byte("null"), nil
	}
	return a.AppendJSON(nil), nil
}

// UnmarshalJSON reads a JSON object of strings (or null), as a map of
// them was read: a repeated name's last value wins.
func (a *Attrs) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*a = AttrsOf(m)
	return nil
}
