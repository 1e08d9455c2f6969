package ledger

import (
	"fmt"
	"slices"
	"testing"
)

// heldKeys through a run's life: claims held by blocks and by claims rows,
// repeats found, blocks finished only when their last key settles, keys
// held after others settled carrying their own claims.
func TestHeldKeys(t *testing.T) {
	h := newHeldKeys()
	keysOf := func(prefix string, n int) []string {
		ks := make([]string, n)
		for i := range ks {
			ks[i] = fmt.Sprintf("%s%d", prefix, i)
		}
		return ks
	}
	claimsOf := func(block int64, file string, n int) []claim {
		cs := make([]claim, n)
		for i := range cs {
			cs[i] = claim{block: block, file: file, line: int64(i + 2)}
		}
		return cs
	}
	held := func(keys []string) (found []string) {
		h.each(keys, func(i int, c claim) {
			found = append(found, fmt.Sprintf("%s@%s:%d/%d", keys[i], c.file, c.line, c.block))
		})
		return found
	}

	a, b := keysOf("a", 3), keysOf("b", 2)
	h.hold(a, claimsOf(1, "one.csv", 3))
	h.hold(b, claimsOf(0, "two.csv", 2)) // claims rows of their own
	if got, want := held([]string{"x", "a1", "b0"}), []string{"a1@one.csv:3/1", "b0@two.csv:2/0"}; !slices.Equal(got, want) {
		t.Fatalf("held %v, want %v", got, want)
	}
	if got := h.ownKeys([]string{"a0", "b1", "x"}); !slices.Equal(got, []string{"b1"}) {
		t.Fatalf("own keys %v, want [b1]", got)
	}

	h.settle([]string{"a0", "a1", "x"})
	if ids, _ := h.takeFinished(); len(ids) != 0 {
		t.Fatalf("block 1 finished with a2 still held: %v", ids)
	}
	// Keys held after others settled: each carries its own claim.
	c := keysOf("c", 2)
	h.hold(c, claimsOf(2, "three.csv", 2))
	if got, want := held(slices.Concat(a, c)), []string{"a2@one.csv:4/1", "c0@three.csv:2/2", "c1@three.csv:3/2"}; !slices.Equal(got, want) {
		t.Fatalf("after reuse held %v, want %v", got, want)
	}
	h.settle([]string{"a2"})
	if ids, _ := h.takeFinished(); !slices.Equal(ids, []int64{1}) {
		t.Fatalf("finished %v, want [1]", ids)
	}

	keys, blocks, _ := h.snapshot()
	got := make([]string, len(keys))
	for i, k := range keys {
		got[i] = fmt.Sprintf("%s/%d", k, blocks[i])
	}
	slices.Sort(got)
	if want := []string{"b0/0", "b1/0", "c0/2", "c1/2"}; !slices.Equal(got, want) {
		t.Fatalf("snapshot %v, want %v", got, want)
	}

	h.loseKeys([]string{"c1", "x"})
	if got := h.takeLost([]string{"c0", "c1"}); !slices.Equal(got, []int{1}) {
		t.Fatalf("lost %v, want [1]", got)
	}
	h.settle(slices.Concat(b, []string{"c0"}))
	if ids, _ := h.takeFinished(); !slices.Equal(ids, []int64{2}) {
		t.Fatalf("finished %v, want [2]", ids)
	}
	if h.keys.len() != 0 || h.ownRows != 0 || len(h.open) != 0 {
		t.Fatalf("left %d keys, %d own rows, %d open blocks; want none", h.keys.len(), h.ownRows, len(h.open))
	}
}
