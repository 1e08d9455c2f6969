// Package fakecrm is a faithful, deliberately flaky implementation of the
// CRM's JSON API (docs/crm-api.md). It stores contacts in memory (and
// optionally in a state file), honours Idempotency-Key, and can be told to
// fail: 503 before creating, ambiguous answers after creating (500, 502,
// 504, a reset connection, a hang then a drop), latency, rate limiting, or
// being down altogether. Its audit counts exactly what was created, so tests
// can assert that an integrator created no duplicates. With Config.API
// "hubspot" it serves HubSpot's CRM v3 contacts API instead (hubspot.go,
// docs/crm/hubspot-fake.md), and with "salesforce" a slice of Salesforce's
// REST API (salesforce.go, docs/crm/salesforce-fake.md), under the same
// faults and audit.
//
// A Server is an http.Handler; serve it with net/http or, in tests, with
// fakecrmtest.Start. All its methods are safe for concurrent use.
package fakecrm

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crmsync/crmintegrator/crmapi"
)

// DefaultSaveInterval is how often the state file is rewritten when
// Config.SaveInterval is zero.
const DefaultSaveInterval = 10 * time.Second

// Config configures a Server. The zero value is a well-behaved CRM without
// authentication or persistence.
type Config struct {
	// API is the API served: APIGeneric ("generic", the default:
	// docs/crm-api.md under /v1), APIHubSpot ("hubspot": HubSpot's CRM
	// v3 contacts API under /crm/v3, docs/crm/hubspot-fake.md) or
	// APISalesforce ("salesforce": a slice of Salesforce's REST API under
	// /services/data, docs/crm/salesforce-fake.md).
	API string
	// HubSpot configures the HubSpot API; only read when API is "hubspot".
	HubSpot HubSpotConfig
	// Salesforce configures the Salesforce API; only read when API is
	// "salesforce".
	Salesforce SalesforceConfig
	// Token, when set, is required on every /v1 request as
	// "Authorization: Bearer <token>".
	Token string
	// Faults are the initial fault knobs; SetFaults changes them later.
	Faults Faults
	// MaxBatch is the most contacts a batch may carry; 0 means
	// crmapi.MaxBatch (100).
	MaxBatch int
	// DisableIdempotency makes the CRM ignore Idempotency-Key entirely.
	DisableIdempotency bool
	// IdempotencyKeys and IdempotencyTTL bound the keys kept: each for
	// IdempotencyTTL after its first use (default 24h), at most
	// IdempotencyKeys of them (default 100,000), the oldest evicted first.
	IdempotencyKeys int
	IdempotencyTTL  time.Duration
	// Seed seeds the fault decisions: the same seed gives the same faults
	// to the k-th POST.
	Seed int64
	// StateFile, when set, keeps contacts and idempotency keys across
	// restarts: loaded by New, rewritten atomically every SaveInterval and
	// by Close.
	StateFile    string
	SaveInterval time.Duration
	// Logger receives start, save and fault messages; nil discards them.
	Logger *slog.Logger
}

// Server is the fake CRM. Create it with New and stop it with Close.
type Server struct {
	token    atomic.Pointer[[sha256.Size]byte] // digest of "Bearer <token>", compared in constant time; nil: none
	maxBatch int
	seed     int64
	file     string
	log      *slog.Logger
	now      func() time.Time

	faults  atomic.Pointer[faultState]
	idemOff atomic.Bool
	limiter bucket
	postSeq atomic.Uint64 // k of the k-th POST, for decide
	store   *store
	idem    *idemStore
	audit   counters

	hs *hubspot    // nil unless Config.API is "hubspot"
	sf *salesforce // nil unless Config.API is "salesforce"

	// life gates requests against Close: handlers hold it shared, Close
	// takes it exclusively once stop has released every hang.
	life   sync.RWMutex
	closed bool
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
	err    error
	saveMu sync.Mutex
	saved  savedVersions

	// afterReserve, when set by a test, runs once a request holds its
	// Idempotency-Key, so tests can catch it in progress.
	afterReserve func()
}

// New returns a Server configured by cfg, with the contents of
// cfg.StateFile when that file exists. It starts the periodic save, which
// Close stops.
func New(cfg Config) (*Server, error) {
	if err := cfg.Faults.validate(); err != nil {
		return nil, fmt.Errorf("fakecrm: faults: %w", err)
	}
	if cfg.MaxBatch < 0 {
		return nil, fmt.Errorf("fakecrm: max batch %d is negative", cfg.MaxBatch)
	}
	s := &Server{
		maxBatch: cfg.MaxBatch,
		seed:     cfg.Seed,
		file:     cfg.StateFile,
		log:      cfg.Logger,
		now:      time.Now,
		store:    newStore(),
		idem:     newIdemStore(cfg.IdempotencyKeys, cfg.IdempotencyTTL),
		stop:     make(chan struct{}),
	}
	switch cfg.API {
	case "", APIGeneric:
	case APIHubSpot:
		if cfg.StateFile != "" {
			return nil, fmt.Errorf("fakecrm: a state file is only kept by the generic API, not by %q", cfg.API)
		}
		hs, err := newHubSpot(cfg.HubSpot, s.now())
		if err != nil {
			return nil, fmt.Errorf("fakecrm: %w", err)
		}
		s.hs = hs
	case APISalesforce:
		if cfg.StateFile != "" {
			return nil, fmt.Errorf("fakecrm: a state file is only kept by the generic API, not by %q", cfg.API)
		}
		sf, err := newSalesforce(cfg.Salesforce)
		if err != nil {
			return nil, fmt.Errorf("fakecrm: %w", err)
		}
		s.sf = sf
	default:
		return nil, fmt.Errorf("fakecrm: API %q: want %s, %s or %s", cfg.API, APIGeneric, APIHubSpot, APISalesforce)
	}
	if s.maxBatch == 0 {
		s.maxBatch = crmapi.MaxBatch
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Token != "" {
		s.SetToken(cfg.Token)
	}
	s.idemOff.Store(cfg.DisableIdempotency)
	s.SetFaults(cfg.Faults)
	if s.file != "" {
		if err := s.load(); err != nil {
			return nil, fmt.Errorf("fakecrm: %w", err)
		}
		every := cfg.SaveInterval
		if every <= 0 {
			every = DefaultSaveInterval
		}
		s.wg.Add(1)
		go s.saveLoop(every)
	}
	return s, nil
}

// Close releases requests that hang, waits for in-flight requests, stops
// the periodic save and saves the state file one last time. Requests that
// arrive afterwards are answered 503. Close returns the save's error.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.stop)
		s.life.Lock()
		s.closed = true
		s.life.Unlock()
		s.wg.Wait()
		if s.file != "" {
			s.err = s.save()
		}
	})
	return s.err
}

// Faults returns the current fault knobs.
func (s *Server) Faults() Faults { return s.faults.Load().Faults }

// SetFaults replaces the fault knobs; out-of-range values are clamped. A
// change of Rate or Burst refills the rate limiter.
func (s *Server) SetFaults(f Faults) {
	f = f.clamped()
	s.faults.Store(newFaultState(f))
	s.limiter.configure(f.Rate, f.Burst, f.SilentRate)
	s.log.Info("faults set", "fail_rate", f.FailRate, "ambiguous_rate", f.AmbiguousRate,
		"ambiguous_modes", f.AmbiguousModes, "latency", f.Latency, "jitter", f.Jitter,
		"hang", f.Hang, "rate", f.Rate, "burst", f.Burst, "down", f.Down, "blocked_domains", f.BlockedDomains)
}

// SetIdempotency turns Idempotency-Key support on or off. Off, the CRM
// ignores the header and creates duplicates on every resend.
func (s *Server) SetIdempotency(on bool) { s.idemOff.Store(!on) }

// Idempotency reports whether Idempotency-Key is honoured.
func (s *Server) Idempotency() bool { return !s.idemOff.Load() }

// Contacts returns a copy of every stored contact, oldest first.
func (s *Server) Contacts() []crmapi.StoredContact {
	if s.hs != nil {
		return s.hs.contacts()
	}
	if s.sf != nil {
		return s.sf.contacts()
	}
	cs, _, _ := s.store.snapshot()
	return cloneContacts(cs)
}

// Reset forgets every contact, idempotency key and counter, and restarts
// the fault sequence, as if the server had just started empty.
func (s *Server) Reset() {
	s.store.replace(nil, 1)
	if s.hs != nil {
		s.hs.reset()
	}
	if s.sf != nil {
		s.sf.reset()
	}
	s.idem.replace(nil)
	s.audit.reset()
	s.postSeq.Store(0)
	s.limiter.refill()
	s.log.Info("reset")
}

// ServeHTTP answers the CRM API (under /v1, /crm for HubSpot or
// /services/data for Salesforce) and the admin API under /admin.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		writeError(w, http.StatusServiceUnavailable, crmapi.CodeUnavailable, "the CRM is shutting down")
		return
	}
	switch p := r.URL.Path; {
	case s.hs != nil && !strings.HasPrefix(p, "/admin/"):
		s.serveHubSpot(w, r)
	case s.sf != nil && !strings.HasPrefix(p, "/admin/"):
		s.serveSalesforce(w, r)
	case s.hs == nil && s.sf == nil && (p == "/v1" || strings.HasPrefix(p, "/v1/")):
		s.serveV1(w, r)
	case strings.HasPrefix(p, "/admin/"):
		s.serveAdmin(w, r)
	default:
		writeError(w, http.StatusNotFound, crmapi.CodeNotFound, "no such endpoint: "+p)
	}
}

// authorized compares the Authorization header in constant time; digests
// keep the token's length from leaking too.
func (s *Server) authorized(r *http.Request) bool {
	want := s.token.Load()
	if want == nil {
		return true
	}
	got := r.Header.Get("Authorization")
	if len(got) > 7 && strings.EqualFold(got[:7], "Bearer ") {
		got = "Bearer " + got[7:]
	}
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
}

// SetToken changes the bearer token required from now on ("": none), as a
// CRM does when a session times out or a token is revoked.
func (s *Server) SetToken(token string) {
	if token == "" {
		s.token.Store(nil)
		return
	}
	sum := sha256.Sum256([]byte("Bearer " + token))
	s.token.Store(&sum)
}

// pause waits d, or less when the server closes. The client leaving does
// not cut it short: a real CRM keeps working after a client times out.
func (s *Server) pause(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.stop:
	}
}

// jitter is the latency of a lookup, whose faults need not repeat.
func jitter(f *faultState) time.Duration {
	d := f.Latency + f.LookupLatency
	if f.Jitter > 0 {
		d += rand.N(f.Jitter)
	}
	return d
}

// hang holds a request for d, until the client gives up or the server
// closes.
func (s *Server) hang(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-s.stop:
	}
}
