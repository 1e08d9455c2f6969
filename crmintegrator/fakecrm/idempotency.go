package fakecrm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MaxIdempotencyKeyLen is the longest Idempotency-Key accepted, in bytes.
const MaxIdempotencyKeyLen = 255

// fingerprint identifies a request body on one endpoint: the same key sent
// with another fingerprint is a reused key.
type fingerprint [sha256.Size]byte

func fingerprintOf(method, path string, body []byte) fingerprint {
	h := sha256.New()
	h.Write([]byte(method))
	h.Write([]byte{' '})
	h.Write([]byte(path))
	h.Write([]byte{'\n'})
	h.Write(body)
	var fp fingerprint
	h.Sum(fp[:0])
	return fp
}

// MarshalText writes the fingerprint as hex, for the state file.
func (fp fingerprint) MarshalText() ([]byte, error) {
	return hex.AppendEncode(nil, fp[:]), nil
}

// UnmarshalText reads a hex fingerprint.
func (fp *fingerprint) UnmarshalText(b []byte) error {
	if len(b) != 2*len(fp) {
		return fmt.Errorf("fingerprint has %d hex digits, want %d", len(b), 2*len(fp))
	}
	_, err := hex.Decode(fp[:], b)
	return err
}

// idemRecord is one Idempotency-Key: in progress until finished, then the
// stored response. Fields are guarded by the store's mutex.
type idemRecord struct {
	fp      fingerprint
	done    bool
	status  int
	body    []byte
	created time.Time
}

// idemOutcome is what begin found for a key.
type idemOutcome int

const (
	idemFresh      idemOutcome = iota // reserved: go ahead and create
	idemReplay                        // same body, finished: replay it
	idemReused                        // another body: 422
	idemInProgress                    // the first request still runs: 409
)

// Default bounds of the idempotency store.
const (
	DefaultIdempotencyKeys = 100_000
	DefaultIdempotencyTTL  = 24 * time.Hour
)

// idemStore keeps Idempotency-Keys until Reset, for ttl after their first
// use and at most max of them: a new key past max evicts the oldest (even
// one still in progress; its request then finishes unrecorded). Only
// successful responses are kept; a failed request frees its key for a
// retry.
type idemStore struct {
	mu      sync.Mutex
	m       map[string]*idemRecord
	order   []idemEntry // keys in the order they were first used
	max     int
	ttl     time.Duration
	version uint64
}

// idemEntry is a key and the record it had when it was queued: a key
// deleted or reused since is skipped when its turn comes.
type idemEntry struct {
	key string
	rec *idemRecord
}

func newIdemStore(max int, ttl time.Duration) *idemStore {
	if max <= 0 {
		max = DefaultIdempotencyKeys
	}
	if ttl <= 0 {
		ttl = DefaultIdempotencyTTL
	}
	return &idemStore{m: make(map[string]*idemRecord), max: max, ttl: ttl}
}

// evictLocked drops keys older than ttl and, when room is needed for one
// more, the oldest ones.
func (is *idemStore) evictLocked(now time.Time, room bool) {
	i := 0
	for ; i < len(is.order); i++ {
		e := is.order[i]
		if is.m[e.key] != e.rec {
			continue // gone already
		}
		if now.Sub(e.rec.created) < is.ttl && (!room || len(is.m) < is.max) {
			break
		}
		delete(is.m, e.key)
		is.version++
	}
	is.order = is.order[i:]
	if cap(is.order) > 2*len(is.order)+64 {
		is.order = append([]idemEntry(nil), is.order...) // let the evicted prefix go
	}
}

// begin looks key up and reserves it when it is new. For a replay it also
// returns the stored status and body.
func (is *idemStore) begin(key string, fp fingerprint, now time.Time) (rec *idemRecord, out idemOutcome, status int, body []byte) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.evictLocked(now, false)
	old, ok := is.m[key]
	switch {
	case !ok:
		is.evictLocked(now, true)
		rec = &idemRecord{fp: fp, created: now}
		is.m[key] = rec
		is.order = append(is.order, idemEntry{key, rec})
		return rec, idemFresh, 0, nil
	case old.fp != fp:
		return nil, idemReused, 0, nil
	case !old.done:
		return nil, idemInProgress, 0, nil
	default:
		return nil, idemReplay, old.status, old.body
	}
}

// finish stores a successful response for rec's key, or frees the key when
// the request failed. A record that Reset dropped meanwhile stays dropped.
func (is *idemStore) finish(key string, rec *idemRecord, status int, body []byte) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.m[key] != rec {
		return
	}
	if status < 200 || status > 299 {
		delete(is.m, key)
		return
	}
	rec.done, rec.status, rec.body = true, status, body
	is.version++
}

// savedKey is a finished key as the state file holds it.
type savedKey struct {
	Key         string      `json:"key"`
	Fingerprint fingerprint `json:"fingerprint"`
	Status      int         `json:"status"`
	Body        []byte      `json:"body"`
	CreatedAt   time.Time   `json:"created_at"`
}

// snapshot returns the finished keys; in-progress ones are left out, as
// their request never answered.
func (is *idemStore) snapshot() ([]savedKey, uint64) {
	is.mu.Lock()
	defer is.mu.Unlock()
	out := make([]savedKey, 0, len(is.m))
	for k, r := range is.m {
		if r.done {
			out = append(out, savedKey{k, r.fp, r.status, r.body, r.created})
		}
	}
	return out, is.version
}

// replace swaps in a whole new content: nil for Reset, a state file's keys
// at start.
func (is *idemStore) replace(keys []savedKey) {
	keys = slices.Clone(keys)
	slices.SortStableFunc(keys, func(a, b savedKey) int { return a.CreatedAt.Compare(b.CreatedAt) })
	m := make(map[string]*idemRecord, len(keys))
	order := make([]idemEntry, 0, len(keys))
	for _, k := range keys {
		rec := &idemRecord{fp: k.Fingerprint, done: true, status: k.Status, body: k.Body, created: k.CreatedAt}
		m[k.Key] = rec
		order = append(order, idemEntry{k.Key, rec})
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.m, is.order = m, order
	is.version++
}
