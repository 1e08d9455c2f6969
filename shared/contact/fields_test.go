package contact

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestFieldsCoverContact fails when a field is added to Contact without
// Fields, the fingerprint and validation following it. Each codec's
// package round-trips every entry of Fields the same way.
func TestFieldsCoverContact(t *testing.T) {
	var names []string
	ct := reflect.TypeFor[Contact]()
	for i := range ct.NumField() {
		f := ct.Field(i)
		if f.Name == "Attributes" {
			continue
		}
		if f.Type.Kind() != reflect.String {
			t.Fatalf("Contact.%s is a %s: Fields holds strings only", f.Name, f.Type)
		}
		names = append(names, strings.Split(f.Tag.Get("json"), ",")[0])
	}
	var listed []string
	for _, f := range Fields {
		listed = append(listed, f.Name)
	}
	if !slices.Equal(names, listed) {
		t.Fatalf("Contact's fields are %v, Fields lists %v", names, listed)
	}
	base := Contact{ExternalID: "C-1", Email: "a@b.c", FirstName: "F", LastName: "L", Phone: "P"}
	for _, f := range Fields {
		c := base
		f.Set(&c, f.Get(&c)+"x")
		if reflect.DeepEqual(c, base) {
			t.Errorf("Fields[%s].Set changed nothing", f.Name)
		}
		if c.Fingerprint() == base.Fingerprint() {
			t.Errorf("the fingerprint ignores %s", f.Name)
		}
		f.Set(&c, "\xff")
		if p := c.Validate(); p == nil {
			t.Errorf("Validate accepts invalid UTF-8 in %s", f.Name)
		}
		if got := c.Value(f.Name); got != "\xff" {
			t.Errorf("Value(%s) = %q", f.Name, got)
		}
	}
}

func TestMerge(t *testing.T) {
	stored := Contact{ExternalID: "C-1", Email: "a@b.c", FirstName: "Ada", LastName: "L", Phone: "+1",
		Attributes: AttrsOf(map[string]string{"city": "London", "tier": "gold"})}
	clearPhone := func(n string) bool { return n == "phone" || n == "attributes.tier" }
	tests := []struct {
		name    string
		in      Contact
		clear   func(string) bool
		want    Contact
		changed []string
	}{
		{"same", stored, nil, stored, nil},
		{"new email and attribute", Contact{ExternalID: "C-1", Email: "x@b.c", FirstName: "Ada", Attributes: AttrsOf(map[string]string{"city": "Paris", "vip": "y"})}, nil,
			Contact{ExternalID: "C-1", Email: "x@b.c", FirstName: "Ada", LastName: "L", Phone: "+1", Attributes: AttrsOf(map[string]string{"city": "Paris", "tier": "gold", "vip": "y"})},
			[]string{"email", "attributes.city", "attributes.vip"}},
		{"empty keeps", Contact{ExternalID: "C-1", Email: "a@b.c", Attributes: AttrsOf(map[string]string{"tier": ""})}, nil, stored, nil},
		{"empty clears where asked", Contact{ExternalID: "C-1", Email: "a@b.c", Attributes: AttrsOf(map[string]string{"tier": "", "city": ""})}, clearPhone,
			Contact{ExternalID: "C-1", Email: "a@b.c", FirstName: "Ada", LastName: "L", Attributes: AttrsOf(map[string]string{"city": "London"})},
			[]string{"phone", "attributes.tier"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := stored.Fingerprint()
			got, changed := Merge(&stored, &tc.in, tc.clear)
			if !reflect.DeepEqual(got, tc.want) || !slices.Equal(changed, tc.changed) {
				t.Errorf("Merge = %+v %v, want %+v %v", got, changed, tc.want, tc.changed)
			}
			if stored.Fingerprint() != before {
				t.Error("Merge modified stored")
			}
		})
	}
}
