package fakecrm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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

// idemStore keeps Idempotency-Keys until Reset. Only successful responses
// are kept; a failed request frees its key for a retry.
type idemStore struct {
	mu      sync.Mutex
	m       map[string]*idemRecord
	version uint64
}

func newIdemStore() *idemStore { return &idemStore{m: make(map[string]*idemRecord)} }

// begin looks key up and reserves it when it is new. For a replay it also
// returns the stored status and body.
func (is *idemStore) begin(key string, fp fingerprint, now time.Time) (rec *idemRecord, out idemOutcome, status int, body []byte) {
	is.mu.Lock()
	defer is.mu.Unlock()
	old, ok := is.m[key]
	switch {
	case !ok:
		rec = &idemRecord{fp: fp, created: now}
		is.m[key] = rec
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
	m := make(map[string]*idemRecord, len(keys))
	for _, k := range keys {
		m[k.Key] = &idemRecord{fp: k.Fingerprint, done: true, status: k.Status, body: k.Body, created: k.CreatedAt}
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.m = m
	is.version++
}
