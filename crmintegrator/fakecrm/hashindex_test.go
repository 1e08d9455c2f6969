package fakecrm

import "testing"

// The index keeps every entry through growth, probes past neighbours that
// share a slot, and folds hash 0 into 1 (the store tells them apart by
// external id along the chain).
func TestHashIndex(t *testing.T) {
	x := newHashIndex(0)
	want := map[uint64]uint64{}
	for i := range uint64(5000) {
		// Keys 16 apart share their low bits: each probes past the others.
		h := i * 16 << 8
		x.put(h, i)
		want[max(h, 1)] = i
	}
	x.put(7, 70)
	x.put(7, 71) // an update, not a second entry
	want[7] = 71
	if x.n != len(want) {
		t.Fatalf("%d entries, want %d", x.n, len(want))
	}
	if 2*x.n > len(x.slots) {
		t.Errorf("%d entries in %d slots: more than half full", x.n, len(x.slots))
	}
	for h, v := range want {
		if got, ok := x.get(h); !ok || got != v {
			t.Fatalf("get(%d) = %d, %v; want %d", h, got, ok, v)
		}
	}
	if v, ok := x.get(1); !ok || v != 0 {
		t.Errorf("get(1) = %d, %v: hash 0 and 1 should share a slot (0's value)", v, ok)
	}
	for _, h := range []uint64{3, 16<<8 + 1, 1 << 63} {
		if _, ok := x.get(h); ok {
			t.Errorf("get(%d) found an entry never put", h)
		}
	}
}
