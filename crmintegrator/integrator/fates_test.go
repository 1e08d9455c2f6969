package integrator

import (
	"fmt"
	"hash/maphash"
	"strings"
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
	// An id a fateEnt cannot measure is not remembered, and harms nothing.
	long := strings.Repeat("k", 1<<16)
	f.remember(now, long, "id-long")
	f.remember(now, "long-id", long)
	for _, k := range []string{long, "long-id"} {
		if _, ok := f.known(k, 0); ok {
			t.Errorf("a %d-byte id was remembered", 1<<16)
		}
	}
	if id, ok := f.known("old", 0); !ok || id != "id-old" {
		t.Errorf("after the long ids, known(old, 0) = %q, %v", id, ok)
	}
	var none *fates // FateCache < 0
	none.remember(now, "a", "b")
	if _, ok := none.known("a", 0); ok {
		t.Error("a disabled cache knew something")
	}
}

// The filter in front of each generation never hides a key it holds, also
// once its bits are reused by a later generation, and keeps most new keys
// off the tables.
func TestFatesFilter(t *testing.T) {
	const half = 1 << 12
	f := newFates(2 * half)
	now := time.Now().UnixNano()
	key := func(gen, i int) string { return fmt.Sprintf("K%d-%d", gen, i) }
	for gen := range 4 {
		for i := range half {
			f.remember(now, key(gen, i), "id")
		}
		// This generation is whole in cur; the one before in prev.
		for _, g := range []int{gen, gen - 1} {
			if g < 0 {
				continue
			}
			for i := range half {
				if _, ok := f.known(key(g, i), 0); !ok {
					t.Fatalf("generation %d: %s not known", gen, key(g, i))
				}
			}
		}
		if gen >= 2 {
			if _, ok := f.known(key(gen-2, 0), 0); ok {
				t.Fatalf("generation %d: %s still known", gen, key(gen-2, 0))
			}
		}
	}
	// New keys: the filter of each generation lets few through to the table.
	through := 0
	for i := range 10000 {
		h := maphash.String(f.seed, fmt.Sprintf("new-%d", i))
		if f.cur.mayHold(h) || f.prev.mayHold(h) {
			through++
		}
	}
	if through > 500 {
		t.Errorf("%d of 10000 new keys passed the filters, want at most 500 (16 bits a key, two probes: ~1.5%% each)", through)
	}
}

// BenchmarkFates is the daemon's use of the cache for each new record of
// a run: asked about (known) when it arrives, remembered once created.
func BenchmarkFates(b *testing.B) {
	keys := make([]string, 1<<20)
	for i := range keys {
		keys[i] = fmt.Sprintf("C%08d", i)
	}
	f := newFates(1 << 16)
	now := time.Now().UnixNano()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := keys[i%len(keys)]
		i++
		f.known(k, time.Minute)
		f.remember(now, k, "ct_00000042")
	}
}

// Repeats are found by hash, then by text: keys that share a hash (forced
// here) are still told apart, and a hash collision on holders makes a key
// wait, never pass.
func TestFirstOfEachHashCollision(t *testing.T) {
	for _, tc := range []struct {
		name    string
		keys    []string
		hashes  []uint64
		uniq    []int
		repeats [][2]int
	}{
		{"distinct", []string{"a", "b", "c"}, []uint64{1, 2, 3}, []int{0, 1, 2}, nil},
		{"repeat", []string{"a", "b", "a"}, []uint64{1, 2, 1}, []int{0, 1}, [][2]int{{2, 0}}},
		{"collision", []string{"a", "b", "a", "b"}, []uint64{7, 7, 7, 7}, []int{0, 1}, [][2]int{{2, 0}, {3, 1}}},
		{"collision, no repeat", []string{"a", "b"}, []uint64{7, 7}, []int{0, 1}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			todo := make([]int, len(tc.keys))
			for i := range todo {
				todo[i] = i
			}
			uniq, repeats := firstOfEach(tc.keys, tc.hashes, todo)
			if fmt.Sprint(uniq) != fmt.Sprint(tc.uniq) || fmt.Sprint(repeats) != fmt.Sprint(tc.repeats) {
				t.Errorf("firstOfEach = %v, %v; want %v, %v", uniq, repeats, tc.uniq, tc.repeats)
			}
		})
	}

	h := newHolders()
	a, b := &callHold{until: time.Now().Add(time.Minute)}, &callHold{}
	if taken, busy := h.hold(a, []uint64{7}, []int{0}); len(taken) != 1 || len(busy) != 0 {
		t.Fatalf("first hold: taken %v, busy %v", taken, busy)
	}
	// Another key with the same hash, in another call: it waits for a.
	if taken, busy := h.hold(b, []uint64{7}, []int{0}); len(taken) != 0 || !busy[0].Equal(a.until) {
		t.Fatalf("colliding hold: taken %v, busy %v; want it to wait until %v", taken, busy, a.until)
	}
	h.release(a, []uint64{7}, []int{0})
	if taken, _ := h.hold(b, []uint64{7}, []int{0}); len(taken) != 1 {
		t.Fatalf("after release: taken %v", taken)
	}
}
