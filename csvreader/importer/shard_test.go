package importer

import (
	"errors"
	"fmt"
	"testing"
)

// The split must never change: readers on other machines, of other
// versions, must agree on it. These values are FNV-1a 64 as published
// (offset basis 0xcbf29ce484222325, prime 0x100000001b3), mod N, plus one.
func TestShardOfIsStable(t *testing.T) {
	tests := []struct {
		key  string
		n    int
		want int
	}{
		{"K000000", 3, 2}, // fnv1a64 = 9914636226719338330
		{"K000001", 3, 3}, // 9914637326230966541
		{"customer-42", 3, 3},
		{"customer-42", 7, 1},
		{"Zoë@example", 7, 4}, // the UTF-8 bytes
		{"", 3, 1},            // no key: shard 1
		{"K000000", 1, 1},
	}
	for _, tc := range tests {
		if got := ShardOf(tc.key, tc.n); got != tc.want {
			t.Errorf("ShardOf(%q, %d) = %d, want %d", tc.key, tc.n, got, tc.want)
		}
	}
	// Every key has exactly one owner, and the split is not lopsided.
	count := make([]int, 4)
	for i := range 30000 {
		key := fmt.Sprintf("K%06d", i)
		owners := 0
		for s := 1; s <= 3; s++ {
			if (Shard{s, 3}).Owns(key) {
				owners++
				count[s]++
			}
		}
		if owners != 1 {
			t.Fatalf("%s has %d owners", key, owners)
		}
	}
	for s := 1; s <= 3; s++ {
		if count[s] < 9000 {
			t.Errorf("shard %d owns %d of 30000 keys", s, count[s])
		}
	}
}

func TestParseShard(t *testing.T) {
	tests := []struct {
		in   string
		want Shard
		ok   bool
	}{
		{"", Shard{}, true},
		{"1/3", Shard{1, 3}, true},
		{"3/3", Shard{3, 3}, true},
		{" 2 / 3 ", Shard{2, 3}, true},
		{"1/1", Shard{1, 1}, true},
		{"0/3", Shard{}, false},
		{"4/3", Shard{}, false},
		{"1/0", Shard{}, false},
		{"-1/3", Shard{}, false},
		{"x", Shard{}, false},
		{"1/x", Shard{}, false},
		{"2", Shard{}, false},
		{"1/2/3", Shard{}, false},
	}
	for _, tc := range tests {
		got, err := ParseShard(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParseShard(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrShard) {
			t.Errorf("ParseShard(%q): %v is not ErrShard", tc.in, err)
		}
	}
}
