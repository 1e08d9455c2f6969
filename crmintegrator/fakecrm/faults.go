package fakecrm

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"crmsync/shared/contact"
)

// DefaultHang is how long the binary holds a "hang" answer before dropping
// the connection: longer than any sensible client timeout.
const DefaultHang = 30 * time.Second

// Faults are the knobs that make the CRM misbehave. The zero value is a CRM
// that answers every request at once and correctly.
type Faults struct {
	// FailRate is the fraction of POSTs answered 503 before anything is
	// created.
	FailRate float64 `json:"fail_rate"`
	// AmbiguousRate is the fraction of POSTs that create their contacts and
	// then answer ambiguously (see AmbiguousModes). FailRate and
	// AmbiguousRate are disjoint slices of one draw, so FailRate+
	// AmbiguousRate above 1 leaves no successful POST at all.
	AmbiguousRate float64 `json:"ambiguous_rate"`
	// Latency is added to every /v1 request, plus a uniform extra in
	// [0, Jitter).
	Latency time.Duration `json:"latency"`
	Jitter  time.Duration `json:"jitter"`
	// LookupLatency is added to every lookup (GET /v1/contacts and POST
	// /v1/contacts/lookup) on top of Latency: real CRMs' read and search
	// endpoints are often slower than their writes.
	LookupLatency time.Duration `json:"lookup_latency"`
	// Hang is how long a "hang" answer holds the connection before dropping
	// it without a response; 0 drops it at once.
	Hang time.Duration `json:"hang"`
	// Rate limits /v1 requests per second with a token bucket of Burst
	// tokens (0: one second's worth, at least 1); 0 is unlimited.
	Rate  float64 `json:"rate"`
	Burst int     `json:"burst"`
	// SilentRate keeps the bucket out of the answers' RateLimit-Policy and
	// RateLimit fields, as a CRM that only answers 429 does: clients must
	// find the rate from the 429s alone.
	SilentRate bool `json:"silent_rate,omitempty"`
	// Down answers every /v1 request 503, as a CRM in maintenance would.
	Down bool `json:"down"`
	// AmbiguousModes limits the ambiguous answers to a comma separated
	// subset of "500", "502", "504", "reset" and "hang"; empty means all
	// five, picked uniformly.
	AmbiguousModes string `json:"ambiguous_modes"`
	// BlockedDomains is a comma separated list of email domains the CRM
	// refuses by policy, compared without regard to case: such a contact is
	// rejected with CodeEmailDomainBlocked (in its batch result, or 400 on
	// the single endpoint) and never created, however often it is sent.
	// Unlike the other knobs it is not random: it models a CRM that rejects
	// some valid-looking contacts.
	BlockedDomains string `json:"blocked_domains"`
}

// CodeEmailDomainBlocked is the rejection code of a contact whose email
// domain is in Faults.BlockedDomains.
const CodeEmailDomainBlocked = "email_domain_blocked"

// parseDomains turns a BlockedDomains list into a set of lower-case
// domains; empty entries are ignored.
func parseDomains(s string) (map[string]bool, error) {
	var set map[string]bool
	for part := range strings.SplitSeq(s, ",") {
		d := strings.ToLower(strings.TrimSpace(part))
		if d == "" {
			continue
		}
		if strings.ContainsAny(d, "@ \t") {
			return nil, fmt.Errorf("blocked domain %q: want a bare domain like spam.example", d)
		}
		if set == nil {
			set = map[string]bool{}
		}
		set[d] = true
	}
	return set, nil
}

// ambiguousMode is how a request that created its contacts fails to say so.
type ambiguousMode uint8

const (
	modeNone ambiguousMode = iota
	mode500
	mode502
	mode504
	modeReset
	modeHang
)

var modeNames = map[string]ambiguousMode{
	"500": mode500, "502": mode502, "504": mode504, "reset": modeReset, "hang": modeHang,
}

var allModes = []ambiguousMode{mode500, mode502, mode504, modeReset, modeHang}

func (m ambiguousMode) String() string {
	for name, v := range modeNames {
		if v == m {
			return name
		}
	}
	return "none"
}

func parseModes(s string) ([]ambiguousMode, error) {
	if strings.TrimSpace(s) == "" {
		return allModes, nil
	}
	var modes []ambiguousMode
	for part := range strings.SplitSeq(s, ",") {
		m, ok := modeNames[strings.TrimSpace(part)]
		if !ok {
			return nil, fmt.Errorf("unknown ambiguous mode %q: want 500, 502, 504, reset or hang", part)
		}
		modes = append(modes, m)
	}
	return modes, nil
}

// validate reports the first knob that is out of range.
func (f Faults) validate() error {
	switch {
	case f.FailRate < 0 || f.FailRate > 1:
		return fmt.Errorf("fail_rate %v is outside [0, 1]", f.FailRate)
	case f.AmbiguousRate < 0 || f.AmbiguousRate > 1:
		return fmt.Errorf("ambiguous_rate %v is outside [0, 1]", f.AmbiguousRate)
	case f.Latency < 0 || f.Jitter < 0 || f.Hang < 0 || f.LookupLatency < 0:
		return fmt.Errorf("latency, lookup_latency, jitter and hang must not be negative")
	case f.Rate < 0:
		return fmt.Errorf("rate %v is negative", f.Rate)
	case f.Burst < 0:
		return fmt.Errorf("burst %d is negative", f.Burst)
	}
	if _, err := parseDomains(f.BlockedDomains); err != nil {
		return err
	}
	_, err := parseModes(f.AmbiguousModes)
	return err
}

// clamped brings every knob into range, for SetFaults which cannot fail.
func (f Faults) clamped() Faults {
	f.FailRate = min(max(f.FailRate, 0), 1)
	f.AmbiguousRate = min(max(f.AmbiguousRate, 0), 1)
	f.Latency, f.Jitter, f.Hang = max(f.Latency, 0), max(f.Jitter, 0), max(f.Hang, 0)
	f.LookupLatency = max(f.LookupLatency, 0)
	f.Rate, f.Burst = max(f.Rate, 0), max(f.Burst, 0)
	if _, err := parseModes(f.AmbiguousModes); err != nil {
		f.AmbiguousModes = ""
	}
	if _, err := parseDomains(f.BlockedDomains); err != nil {
		f.BlockedDomains = ""
	}
	return f
}

// faultState is a Faults with its modes parsed, swapped atomically so the
// hot path reads it without a lock.
type faultState struct {
	Faults
	modes   []ambiguousMode
	blocked map[string]bool // nil: no domain is blocked
}

func newFaultState(f Faults) *faultState {
	modes, err := parseModes(f.AmbiguousModes)
	if err != nil {
		modes = allModes
	}
	blocked, _ := parseDomains(f.BlockedDomains) // validated or clamped before
	return &faultState{Faults: f, modes: modes, blocked: blocked}
}

// blockedProblem is the rejection of a valid contact whose email domain is
// blocked, or nil.
func (f *faultState) blockedProblem(c *contact.Contact) *contact.Problem {
	if f.blocked == nil {
		return nil
	}
	at := strings.LastIndexByte(c.Email, '@')
	if at < 0 || !f.blocked[strings.ToLower(c.Email[at+1:])] {
		return nil
	}
	return &contact.Problem{Code: CodeEmailDomainBlocked, Message: "the CRM does not accept addresses at " + c.Email[at+1:]}
}

// decision is what the k-th POST will suffer.
type decision struct {
	fail           bool // 503 before anything is created
	failRetryAfter bool // that 503 carries Retry-After
	ambiguous      ambiguousMode
	delay          time.Duration
}

// decide draws the k-th POST's fate from a generator seeded with (seed, k)
// alone, so the same seed gives the same faults in the same order no matter
// how requests interleave or how long they take. Every draw is made whether
// or not it is used, so changing one knob does not shift the others.
func decide(seed int64, k uint64, f *faultState) decision {
	var g rand.PCG
	g.Seed(uint64(seed), mix64(k))
	u := unit(g.Uint64())
	pick := g.Uint64()
	jitter := unit(g.Uint64())
	retryAfter := g.Uint64()&1 == 0

	d := decision{delay: f.Latency + time.Duration(jitter*float64(f.Jitter))}
	switch {
	case u < f.FailRate:
		d.fail, d.failRetryAfter = true, retryAfter
	case u < f.FailRate+f.AmbiguousRate && len(f.modes) > 0:
		d.ambiguous = f.modes[pick%uint64(len(f.modes))]
	}
	return d
}

// unit maps 64 random bits to [0, 1).
func unit(x uint64) float64 { return float64(x>>11) / (1 << 53) }

// mix64 is SplitMix64's finaliser: neighbouring k give unrelated streams.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// faultsJSON is Faults on the wire, with durations as Go duration strings.
type faultsJSON struct {
	FailRate       float64  `json:"fail_rate"`
	AmbiguousRate  float64  `json:"ambiguous_rate"`
	Latency        duration `json:"latency"`
	Jitter         duration `json:"jitter"`
	LookupLatency  duration `json:"lookup_latency"`
	Hang           duration `json:"hang"`
	Rate           float64  `json:"rate"`
	Burst          int      `json:"burst"`
	Down           bool     `json:"down"`
	AmbiguousModes string   `json:"ambiguous_modes"`
	BlockedDomains string   `json:"blocked_domains"`
}

// wire is f as faultsJSON; faults converts back. Keyed fields, so that a
// new knob cannot be swapped with another of the same type.
func (f Faults) wire() faultsJSON {
	return faultsJSON{
		FailRate: f.FailRate, AmbiguousRate: f.AmbiguousRate,
		Latency: duration(f.Latency), Jitter: duration(f.Jitter), Hang: duration(f.Hang),
		LookupLatency: duration(f.LookupLatency),
		Rate:          f.Rate, Burst: f.Burst, Down: f.Down,
		AmbiguousModes: f.AmbiguousModes, BlockedDomains: f.BlockedDomains,
	}
}

func (j faultsJSON) faults() Faults {
	return Faults{
		FailRate: j.FailRate, AmbiguousRate: j.AmbiguousRate,
		Latency: time.Duration(j.Latency), Jitter: time.Duration(j.Jitter), Hang: time.Duration(j.Hang),
		LookupLatency: time.Duration(j.LookupLatency),
		Rate:          j.Rate, Burst: j.Burst, Down: j.Down,
		AmbiguousModes: j.AmbiguousModes, BlockedDomains: j.BlockedDomains,
	}
}

// MarshalJSON writes durations as Go duration strings ("250ms").
func (f Faults) MarshalJSON() ([]byte, error) { return json.Marshal(f.wire()) }

// UnmarshalJSON reads durations as Go duration strings or as nanoseconds.
// Knobs absent from b keep their current values.
func (f *Faults) UnmarshalJSON(b []byte) error {
	j := f.wire()
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*f = j.faults()
	return nil
}

// duration is a time.Duration that travels as "1.5s" and also accepts a
// number of nanoseconds.
type duration time.Duration

func (d duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("duration: want a string like \"250ms\" or nanoseconds, got %s", b)
		}
		*d = duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}
