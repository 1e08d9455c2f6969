package contact

import "strings"

// Field is one of a contact's own fields (the attributes aside).
type Field struct {
	// Name is the field's name everywhere we name it: the JSON API, the
	// export's header, the mapping file, the ledger's columns, and the
	// field lists of updates and of customer_changes.
	Name string
	Get  func(*Contact) string
	Set  func(*Contact, string)
}

// Fields lists a contact's own fields, the key first. Everything that
// handles every field — codecs, the fingerprint, the ledger's COPY, Merge —
// goes through this list or is checked against it by a test
// (TestFieldsCoverContact and the round trips in each codec's package), so
// a field added to Contact without them fails the build's tests.
var Fields = [...]Field{
	{"external_id", func(c *Contact) string { return c.ExternalID }, func(c *Contact, v string) { c.ExternalID = v }},
	{"email", func(c *Contact) string { return c.Email }, func(c *Contact, v string) { c.Email = v }},
	{"first_name", func(c *Contact) string { return c.FirstName }, func(c *Contact, v string) { c.FirstName = v }},
	{"last_name", func(c *Contact) string { return c.LastName }, func(c *Contact, v string) { c.LastName = v }},
	{"phone", func(c *Contact) string { return c.Phone }, func(c *Contact, v string) { c.Phone = v }},
}

// FieldByName returns the own field named name.
func FieldByName(name string) (Field, bool) {
	for _, f := range Fields {
		if f.Name == name {
			return f, true
		}
	}
	return Field{}, false
}

// AttributePrefix marks an attribute in a list of field names:
// "attributes.company" is the attribute "company".
const AttributePrefix = "attributes."

// Merge is what the CRM holds once in, a newer version of stored, is
// written over it, and the names of the fields that changed (own fields in
// Fields order, then attributes as AttributePrefix+name, sorted).
//
// A non-empty value replaces the stored one. An empty value — and a field
// or attribute the export does not carry at all — keeps the stored one,
// unless clear(name) says an empty value clears it (a mapping's "empty":
// "clear"; clear may be nil). An attribute is cleared by removing it.
// The key is never changed. Merge never modifies its arguments.
func Merge(stored, in *Contact, clear func(name string) bool) (Contact, []string) {
	out := *stored
	out.Attributes = stored.Attributes.Clone()
	var changed []string
	for _, f := range Fields[1:] {
		old, v := f.Get(stored), f.Get(in)
		if v == old || (v == "" && (clear == nil || !clear(f.Name))) {
			continue
		}
		f.Set(&out, v)
		changed = append(changed, f.Name)
	}
	for _, a := range in.Attributes { // sorted: so are the names appended
		old, had := stored.Attributes.Get(a.Name)
		switch {
		case a.Value != "":
			if had && old == a.Value {
				continue
			}
			out.Attributes.Set(a.Name, a.Value)
		case had && clear != nil && clear(AttributePrefix+a.Name):
			out.Attributes.Delete(a.Name)
		default:
			continue
		}
		changed = append(changed, AttributePrefix+a.Name)
	}
	return out, changed
}

// Value returns the value of the named field of c: an own field, or an
// attribute named AttributePrefix+name ("" when c lacks it).
func (c *Contact) Value(name string) string {
	if a, ok := strings.CutPrefix(name, AttributePrefix); ok {
		v, _ := c.Attributes.Get(a)
		return v
	}
	if f, ok := FieldByName(name); ok {
		return f.Get(c)
	}
	return ""
}
