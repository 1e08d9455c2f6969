package ledger

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// keyTable against a map, through random puts, overwrites and deletes,
// with hashes spread as maphash spreads them, crowded into a few slots so
// that runs of slots wrap around the table's end, and all equal, so that
// only the keys tell entries apart.
func TestKeyTable(t *testing.T) {
	for _, tc := range []struct {
		name string
		hash func(t *keyTable, k string) uint32
		keys int
	}{
		{"maphash", (*keyTable).hash, 5000},
		{"crowded", func(t *keyTable, k string) uint32 { return uint32(len(k)*7) + 0xfffffff0 }, 300},
		// Homes in the table's last two slots and its first two, whatever
		// its size: runs wrap, and keys belonging at 0 follow keys
		// belonging at the end.
		{"wrapping", func(_ *keyTable, k string) uint32 { return uint32(len(k)+int(k[len(k)-1]))%4 - 2 }, 300},
		{"one hash", func(*keyTable, string) uint32 { return 42 }, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, want := newKeyTable(), map[string]claim{}
			rng := rand.New(rand.NewPCG(1, 2))
			for op := range 40 * tc.keys {
				k := fmt.Sprintf("k%d", rng.IntN(tc.keys))
				h := tc.hash(tab, k)
				switch rng.IntN(3) {
				case 0, 1:
					c := claim{block: int64(op), line: int64(op)}
					tab.putHashed(k, h, c)
					want[k] = c
				case 2:
					c, ok := tab.delHashed(k, h)
					w, wok := want[k]
					if ok != wok || c != w {
						t.Fatalf("op %d: del(%s) = %v, %v; want %v, %v", op, k, c, ok, w, wok)
					}
					delete(want, k)
				}
				if tab.len() != len(want) {
					t.Fatalf("op %d: len %d, want %d", op, tab.len(), len(want))
				}
			}
			for i := range tc.keys {
				k := fmt.Sprintf("k%d", i)
				c, ok := tab.getHashed(k, tc.hash(tab, k))
				w, wok := want[k]
				if ok != wok || c != w {
					t.Fatalf("get(%s) = %v, %v; want %v, %v", k, c, ok, w, wok)
				}
			}
			var got, wantKeys []string
			tab.all(func(k string, c claim) {
				if c != want[k] {
					t.Errorf("all: %s has %v, want %v", k, c, want[k])
				}
				got = append(got, k)
			})
			for k := range want {
				wantKeys = append(wantKeys, k)
			}
			slices.Sort(got)
			slices.Sort(wantKeys)
			if !slices.Equal(got, wantKeys) {
				t.Fatalf("all listed %d keys, want %d", len(got), len(wantKeys))
			}
			if free := len(tab.ents) - len(tab.free); free != tab.len() {
				t.Fatalf("%d entries in use, %d keys held", free, tab.len())
			}
		})
	}
}
