package importer

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// Shard is one reader's part of a file split between N readers by key:
// shard I of N (1 ≤ I ≤ N) owns the keys whose ShardOf is I. Every reader
// reads the whole file and sends only its own keys, so the readers never
// contend for a key in the ledger, and repeats of a key, all in one
// shard, are still found by the one reader that owns it. The zero Shard
// owns every key.
type Shard struct {
	Index, Count int
}

// ShardOf is the shard (1 to n) of key: FNV-1a 64 of the key's bytes as
// the reader keeps them (UTF-8, trimmed: export.Row.Key, the CRM's
// external_id), mod n, plus one. It is fixed: readers on other machines
// and of other versions split a file the same way. A row without a key (a
// CSV syntax error, a wrong field count, an empty key) belongs to shard 1,
// so that exactly one reader reports it.
func ShardOf(key string, n int) int {
	if n <= 1 || key == "" {
		return 1
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	return int(h.Sum64()%uint64(n)) + 1
}

// Owns reports whether the row with key is this shard's.
func (s Shard) Owns(key string) bool {
	return s.Count <= 1 || ShardOf(key, s.Count) == s.Index
}

func (s Shard) String() string {
	if s.Count <= 1 {
		return ""
	}
	return fmt.Sprintf("%d/%d", s.Index, s.Count)
}

// ErrShard is ParseShard's error.
var ErrShard = errors.New("want I/N: this reader's shard I (1 to N) of N readers splitting the file by key, e.g. 2/3")

// ParseShard reads "I/N"; "" is the whole file.
func ParseShard(s string) (Shard, error) {
	if strings.TrimSpace(s) == "" {
		return Shard{}, nil
	}
	i, n, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Shard{}, ErrShard
	}
	index, err1 := strconv.Atoi(strings.TrimSpace(i))
	count, err2 := strconv.Atoi(strings.TrimSpace(n))
	if err1 != nil || err2 != nil || count < 1 || index < 1 || index > count {
		return Shard{}, ErrShard
	}
	return Shard{Index: index, Count: count}, nil
}
