package integrator

import (
	"testing"
	"time"
)

func TestFatesGenerations(t *testing.T) {
	f := newFates(4) // two generations of two
	now := time.Now().UnixNano()
	for _, k := range []string{"a", "b", "c"} {
		f.remember(now, k, "id-"+k)
	}
	f.remember(now, "a", "other") // the first id the CRM gave stays
	for _, tc := range []struct {
		key, want string
		ok        bool
	}{{"a", "id-a", true}, {"b", "id-b", true}, {"c", "id-c", true}, {"z", "", false}} {
		if id, ok := f.known(tc.key, 0); id != tc.want || ok != tc.ok {
			t.Errorf("known(%q) = %q, %v; want %q, %v", tc.key, id, ok, tc.want, tc.ok)
		}
	}
	// c, d fill the newer generation; e pushes a and b out with the older.
	f.remember(now, "d", "id-d")
	f.remember(now, "e", "id-e")
	for _, k := range []string{"a", "b"} {
		if _, ok := f.known(k, 0); ok {
			t.Errorf("%s still known after two generations", k)
		}
	}
	for _, k := range []string{"c", "d", "e"} {
		if _, ok := f.known(k, 0); !ok {
			t.Errorf("%s forgotten too soon", k)
		}
	}
	// Seen long ago: known whenever, not within a minute.
	f.remember(now-int64(time.Hour), "old", "id-old")
	if _, ok := f.known("old", time.Minute); ok {
		t.Error("an hour-old fate counted as within a minute")
	}
	if id, ok := f.known("old", 0); !ok || id != "id-old" {
		t.Errorf("known(old, 0) = %q, %v", id, ok)
	}
	var none *fates // FateCache < 0
	none.remember(now, "a", "b")
	if _, ok := none.known("a", 0); ok {
		t.Error("a disabled cache knew something")
	}
}
