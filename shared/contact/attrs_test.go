package contact

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

// checkAttrs fails unless a is Attrs holding exactly want: sorted by name,
// each name once, nil when empty.
func checkAttrs(t *testing.T, what string, a Attrs, want map[string]string) {
	t.Helper()
	if len(want) == 0 {
		if a != nil {
			t.Fatalf("%s: %v, want nil", what, a)
		}
		return
	}
	names := slices.Sorted(maps.Keys(want))
	if len(a) != len(names) {
		t.Fatalf("%s: %v, want %v", what, a, want)
	}
	for i, n := range names {
		if a[i].Name != n || a[i].Value != want[n] {
			t.Fatalf("%s: %v, want %s=%q at %d (want %v)", what, a, n, want[n], i, want)
		}
	}
}

func TestAttrsOfAndSortAttrs(t *testing.T) {
	many := map[string]string{}
	for i := range 20 {
		many[fmt.Sprintf("k%02d", 19-i)] = fmt.Sprint(i)
	}
	for _, tc := range []struct {
		name string
		in   []Attr // in the sender's order
		want map[string]string
	}{
		{"none", nil, nil},
		{"empty", []Attr{}, nil},
		{"one", []Attr{{"city", "Oslo"}}, map[string]string{"city": "Oslo"}},
		{"sorted already", []Attr{{"a", "1"}, {"b", "2"}}, map[string]string{"a": "1", "b": "2"}},
		{"bytewise, not by case or rune", []Attr{{"é", "4"}, {"b", "1"}, {"B", "2"}, {"", "7"}, {"a\x00", "8"}, {"a", "3"}},
			map[string]string{"b": "1", "B": "2", "a": "3", "é": "4", "": "7", "a\x00": "8"}},
		{"a repeated name: the last wins", []Attr{{"x", "1"}, {"a", "2"}, {"x", "3"}, {"x", "4"}, {"a", "5"}},
			map[string]string{"x": "4", "a": "5"}},
		{"repeated, in order", []Attr{{"a", "1"}, {"a", "2"}}, map[string]string{"a": "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkAttrs(t, "SortAttrs", SortAttrs(slices.Clone(tc.in)), tc.want)
			checkAttrs(t, "AttrsOf", AttrsOf(tc.want), tc.want)
			if got := AttrsOf(tc.want).Map(); !maps.Equal(got, tc.want) || (got == nil) != (len(tc.want) == 0) {
				t.Errorf("Map: %v, want %v", got, tc.want)
			}
		})
	}
	checkAttrs(t, "AttrsOf(20)", AttrsOf(many), many)
}

// Set, Delete and Get keep Attrs equal to a map put through the same
// steps, in Attrs' order, across the scan and the binary search.
func TestAttrsSetDeleteGet(t *testing.T) {
	for _, names := range []int{3, 8, 9, 40} {
		t.Run(fmt.Sprint(names, " names"), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(names)))
			var a Attrs
			m := map[string]string{}
			for step := range 2000 {
				k := fmt.Sprintf("n%02d", rng.IntN(names))
				if rng.IntN(3) == 0 {
					a.Delete(k)
					delete(m, k)
				} else {
					v := fmt.Sprint(step)
					a.Set(k, v)
					m[k] = v
				}
				checkAttrs(t, fmt.Sprintf("step %d", step), a, m)
				for i := range names {
					k := fmt.Sprintf("n%02d", i)
					v, ok := a.Get(k)
					if w, wok := m[k]; v != w || ok != wok {
						t.Fatalf("step %d: Get(%q) = %q, %v; want %q, %v", step, k, v, ok, w, wok)
					}
				}
			}
		})
	}
}

func TestAttrsCloneSharesNothing(t *testing.T) {
	a := AttrsOf(map[string]string{"a": "1", "c": "3"})
	b := a.Clone()
	b.Set("a", "changed")
	b.Set("b", "2")
	checkAttrs(t, "original", a, map[string]string{"a": "1", "c": "3"})
	if Attrs(nil).Clone() != nil || (Attrs{}).Clone() != nil {
		t.Error("the clone of no attributes is not nil")
	}
}

// Attrs read and write JSON as a map[string]string did: an object, names
// sorted, a repeated name's last value kept, null and {} for none.
func TestAttrsJSONIsAMapsJSON(t *testing.T) {
	for _, m := range []map[string]string{
		nil,
		{"city": "London"},
		{"z": "last", "a": "first", "m": "tab\there", "q": `say "hi" \ back`, "n": "new\nline", "u": "Zoë 日本", "h": "<b>&</b>", "bad": "\xff"},
	} {
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(AttrsOf(m))
		if err != nil {
			t.Fatal(err)
		}
		if m == nil {
			want = []byte("null")
		}
		if string(got) != string(want) {
			t.Errorf("Marshal %v: %s, want %s", m, got, want)
		}
		if len(m) > 0 && string(AttrsOf(m).AppendJSON(nil)) != string(want) {
			t.Errorf("AppendJSON %v: %s, want %s", m, AttrsOf(m).AppendJSON(nil), want)
		}
	}
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{`null`, nil},
		{`{}`, nil},
		{`{"b":"2","a":"1"}`, map[string]string{"a": "1", "b": "2"}},
		{`{"a":"1","a":"2"}`, map[string]string{"a": "2"}},
	} {
		var a Attrs
		if err := json.Unmarshal([]byte(tc.in), &a); err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		checkAttrs(t, tc.in, a, tc.want)
	}
	var a Attrs
	if err := json.Unmarshal([]byte(`{"a":1}`), &a); err == nil {
		t.Error(`{"a":1}: no error`)
	}
	// In a Contact: omitted when empty, as the map was.
	b, _ := json.Marshal(Contact{ExternalID: "k", Email: "e@x.io", Attributes: Attrs{}})
	var back Contact
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, Contact{ExternalID: "k", Email: "e@x.io"}) {
		t.Errorf("%s read back as %+v, %v", b, back, err)
	}
}
