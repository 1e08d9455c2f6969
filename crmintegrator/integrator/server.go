// Package integrator is the crmintegrator daemon: a net/rpc service
// (crmrpc.ServiceV1) that receives blocks of contacts from readers, sends
// them to the CRM in batches, and answers one verdict per record. It owns
// the classification of every CRM answer, the resolution of ambiguous
// answers (so no contact is ever created twice), the shared adaptive rate
// limiter, the circuit breaker, and the HTTP side port with health and
// metrics.
//
// A Server is safe for concurrent use. Start one with New, serve RPC on any
// number of listeners with Serve, serve Handler on the side port, and stop
// it with Close.
package integrator

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/rpc"
	"sync"
	"sync/atomic"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/hubspot"
	"crmsync/crmintegrator/salesforce"
	"crmsync/shared/crmrpc"
)

// Version is reported by Hello.
const Version = "crmintegrator/1"

// Config configures a Server. The zero value of every field but CRMURL is
// usable.
type Config struct {
	CRMURL   string // base URL of the CRM API, e.g. http://127.0.0.1:8080
	CRMToken string // bearer token; never logged
	// API is the CRM's API: "generic" (docs/crm-api.md; the default),
	// "hubspot" (docs/crm/hubspot.md) or "salesforce"
	// (docs/crm/salesforce.md).
	API string
	// CRMIDField is the CRM field holding our dedup key (HubSpot: a contact
	// property with unique values, default external_id; Salesforce: an
	// External ID field, default External_Id__c).
	CRMIDField string
	// CRMObject and CRMAPIVersion are Salesforce's sObject (default
	// Contact) and REST API version (default 60.0).
	CRMObject     string
	CRMAPIVersion string
	// CRMReserve is the share of the CRM's daily allocation kept for the
	// org's other integrations (Salesforce): below it the daemon sends
	// nothing and answers the daily-quota verdict. 0 keeps nothing.
	CRMReserve float64
	// CRMWrite is "upsert" (the default where the CRM has it: resend-safe,
	// so an ambiguous answer is resolved by resending the same batch) or
	// "create" (look up before any resend).
	CRMWrite string
	// QuotaZone is the time zone whose midnight resets the CRM's daily
	// allocation where the CRM does not say (HubSpot: the account's);
	// default UTC.
	QuotaZone *time.Location

	CRMTimeout     time.Duration // per CRM request; default 10s
	CRMConcurrency int           // most CRM requests in flight; default 8
	CRMRate        float64       // hard cap on CRM requests/second; 0: adaptive only
	MaxBatch       int           // contacts per CRM batch; default the most the CRM takes (100; Salesforce 200)
	// Idempotency declares that the CRM honours Idempotency-Key: after an
	// ambiguous answer the daemon resends the same body with the same key
	// instead of looking every contact up. Default false, the safe choice.
	Idempotency bool

	// CallBudget bounds the internal retries of one Deliver or Lookup call:
	// no wait or new attempt starts past it; the records left get Retry.
	// Default 20s.
	CallBudget time.Duration
	// MaxAttempts bounds the rounds (resends, lookups) per batch inside
	// one call. Default 4.
	MaxAttempts int
	// MaxCallWait is the longest a Deliver call sleeps before another round
	// of a batch for the CRM's pace (a 429's pause), or before resending a
	// body under its Idempotency-Key after an ambiguous answer. A longer
	// wait, and any other wait after a failure (a 503's Retry-After, a
	// backoff), is answered Retry with that RetryAfter at once: the
	// caller's worker then sends other blocks meanwhile instead of holding
	// a whole block for one batch's wait. Default 300ms; negative: every
	// wait is slept in the call as long as CallBudget allows.
	MaxCallWait time.Duration

	BreakerThreshold int           // consecutive failures that open the breaker; default 20
	BreakerCooldown  time.Duration // how long it stays open; default 10s

	// FateCache is how many external ids the daemon remembers it saw the
	// CRM hold (created, or found by a lookup), so that a record resent
	// with MaybeSent is settled without a lookup. Default 65536; <0: none.
	FateCache int

	MaxRecords    int           // records per call; default crmrpc.DefaultMaxRecords
	MaxFieldBytes int           // bytes per field; default 4096
	RPCToken      string        // shared token callers must present; "" = none
	TLS           *tls.Config   // when set, Serve speaks TLS
	IdleTimeout   time.Duration // close RPC connections idle this long; default 5m, <0: never

	// Limits of the connection layer (conn.go); zero values are defaults.
	MaxConns         int           // connections at once; default 256
	MaxConnsPerPeer  int           // connections at once from one IP address; default 32
	HandshakeTimeout time.Duration // TLS and token handshake; default 5s
	ReadTimeout      time.Duration // one message, once begun; default 30s, <0: none
	MaxMessageBytes  int           // one gob message; default 16 MiB

	Logger     *slog.Logger // default: discard
	HTTPClient *http.Client // default: one on crmapi.NewTransport(CRMConcurrency)
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.CRMTimeout, 10*time.Second)
	def(&c.CallBudget, 20*time.Second)
	def(&c.MaxCallWait, 300*time.Millisecond)
	def(&c.BreakerCooldown, 10*time.Second)
	def(&c.IdleTimeout, 5*time.Minute)
	defInt(&c.CRMConcurrency, 8)
	if c.MaxBatch < 0 {
		c.MaxBatch = 0
	}
	defInt(&c.MaxAttempts, 4)
	defInt(&c.BreakerThreshold, 20) // a random streak of 5 is common at a 10% failure rate; 20 is not
	defInt(&c.MaxRecords, crmrpc.DefaultMaxRecords)
	defInt(&c.MaxFieldBytes, 4096)
	if c.FateCache == 0 {
		c.FateCache = 1 << 16
	}
	defInt(&c.MaxConns, 256)
	defInt(&c.MaxConnsPerPeer, 32)
	defInt(&c.MaxMessageBytes, 16<<20)
	def(&c.HandshakeTimeout, 5*time.Second)
	def(&c.ReadTimeout, 30*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server is the daemon.
type Server struct {
	cfg      Config
	log      *slog.Logger
	crm      crmapi.Connector // the CRM's API
	hc       *http.Client
	limiter  *Limiter
	breaker  *Breaker
	met      *metrics
	sem      chan struct{} // CRM requests in flight
	holders  *holders      // external ids live calls are working on
	instance string        // this process, for Hello and Deliver replies
	// resendSafe: an ambiguous write may be resent unchanged (a CRM that
	// honours Idempotency-Key, or an upsert), rather than looked up first.
	resendSafe bool
	// upsert: writes are upserts by our key, so a record that may already
	// be in the CRM needs no lookup: writing it again updates it.
	upsert bool
	quota  quotaState
	fields []string // CRM fields attributes may go to (Check); nil: any
	fates  *fates   // external ids the CRM was seen to hold
	// keySeed hashes external ids for holders and fates: fates' own seed,
	// so that a call hashes each key once.
	keySeed maphash.Seed

	// ctx is the parent of all CRM work; cancelled when Close runs out of
	// grace.
	ctx    context.Context
	cancel context.CancelFunc

	rpc     *rpc.Server
	closing atomic.Bool
	active  atomic.Int64 // RPC calls whose header was read, not yet answered
	reading atomic.Int64 // of those, calls whose body is still being read

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	wg        sync.WaitGroup // Serve loops and connections
	guard     connGuard      // per-peer limits and logs of the connection layer

	ready readiness

	// deliver is what a Deliver call runs: deliverCall, or a stand-in when
	// a benchmark measures the RPC alone.
	deliver func(ctx context.Context, recs []crmrpc.Record, checked bool) ([]crmrpc.Verdict, int, *crmrpc.Error)
	// packedRecords is what Hello and Deliver replies report of packed
	// records (crmrpc.PackedVersion): tests play a daemon that predates
	// them with 0.
	packedRecords int
	// updates is what they report of updates (crmrpc.HelloReply.Updates):
	// tests play a daemon that predates them with false.
	updates bool
}

// Check verifies at start that the CRM is set up for this tool (HubSpot:
// the id property exists and has unique values; Salesforce: the object
// exists and the id field is a unique External ID), so that a daemon that
// cannot work refuses to start with a message saying how to fix it. It
// learns the fields records may be written to, which Hello tells readers.
func (s *Server) Check(ctx context.Context) error {
	if c, ok := s.crm.(interface {
		Check(context.Context) ([]string, error)
	}); ok {
		fields, err := c.Check(ctx)
		if err != nil {
			return err
		}
		s.fields = fields
		s.log.Info("crm checked", "api", s.cfg.API, "id_field", s.cfg.CRMIDField, "fields", len(fields))
	}
	return nil
}

// salesforceUsage keeps the org's daily API allocation left for the
// metrics, from every answer's Sforce-Limit-Info.
func (s *Server) salesforceUsage(used, limit int) {
	s.met.quotaLeft.Store(int64(limit - used))
	s.met.quotaMax.Store(int64(limit))
}

// hubspotLimits paces all traffic from HubSpot's rate-limit headers (its
// rolling window's allowance, Limiter.SetWindow), so a run sits at the
// limit without 429s; and keeps the daily allocation left for the metrics.
func (s *Server) hubspotLimits(l hubspot.Limits) {
	if l.Max > 0 && l.Interval > 0 {
		s.limiter.SetWindow(l.Max, l.Max-l.Remaining, l.Interval, l.Sent)
	}
	if l.Daily > 0 {
		s.met.quotaLeft.Store(int64(l.DailyRemaining))
		s.met.quotaMax.Store(int64(l.Daily))
	}
}

// genericLimits paces all traffic from the generic API's IETF rate-limit
// fields (Limiter.SetShared), so daemons sharing one CRM's bucket share
// its rate without 429s.
func (s *Server) genericLimits(l crmapi.RateLimit) {
	s.limiter.SetShared(l.Rate(), l.Burst, l.Remaining)
}

// nextMidnight is the first midnight in zone after now.
func nextMidnight(now time.Time, zone *time.Location) time.Time {
	t := now.In(zone)
	y, m, d := t.Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, zone)
}

// newInstance names this process for Hello: 64 random bits.
func newInstance() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("integrator: server closed")

// New checks cfg and returns a Server ready to Serve.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if cfg.CRMURL == "" {
		return nil, errors.New("no CRM url: set -crm-url or CRM_URL")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: crmapi.NewTransport(cfg.CRMConcurrency)}
	}
	client, err := crmapi.NewClient(cfg.CRMURL, cfg.CRMToken, cfg.CRMTimeout, hc)
	if err != nil {
		return nil, err
	}
	switch cfg.CRMWrite {
	case "", "upsert", "create":
	default:
		return nil, fmt.Errorf("crm write %q: want upsert or create", cfg.CRMWrite)
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		crm:        crmapi.Generic(client),
		resendSafe: cfg.Idempotency,
		hc:         hc,
		limiter:    NewLimiter(cfg.CRMRate, nil),
		met:        newMetrics(),
		sem:        make(chan struct{}, cfg.CRMConcurrency),
		holders:    newHolders(),
		instance:   newInstance(),
		fates:      newFates(cfg.FateCache),
		rpc:        rpc.NewServer(),
		listeners:  map[net.Listener]struct{}{},
		conns:      map[*serverConn]struct{}{},
	}
	s.keySeed = maphash.MakeSeed()
	if s.fates != nil {
		s.keySeed = s.fates.seed
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.deliver, s.packedRecords, s.updates = s.deliverCall, crmrpc.PackedVersion, true
	s.breaker = NewBreaker(cfg.BreakerThreshold, cfg.BreakerCooldown, nil, func(from, to BreakerState) {
		lvl := slog.LevelWarn
		if to == BreakerClosed {
			lvl = slog.LevelInfo
		}
		s.log.Log(context.Background(), lvl, "crm circuit breaker", "from", from.String(), "to", to.String())
	})
	s.met.breakerState = s.breaker.State
	s.met.rate = s.limiter.Rate
	client.Observe = s.met.observeCRM
	client.Limits = s.genericLimits
	switch cfg.API {
	case "", "generic":
		if cfg.CRMWrite == "upsert" {
			return nil, errors.New("-crm-write upsert: the generic API has no upsert; use create")
		}
	case "hubspot":
		zone := cfg.QuotaZone
		if zone == nil {
			zone = time.UTC
		}
		hs, err := hubspot.New(hubspot.Config{BaseURL: cfg.CRMURL, Token: cfg.CRMToken, IDProperty: cfg.CRMIDField,
			Create: cfg.CRMWrite == "create", Timeout: cfg.CRMTimeout, HTTP: hc, Observe: s.met.observeCRM,
			Limits: s.hubspotLimits, QuotaReset: func(now time.Time) time.Time { return nextMidnight(now, zone) }})
		if err != nil {
			return nil, err
		}
		s.crm = hs
		s.resendSafe = cfg.Idempotency || cfg.CRMWrite != "create"
		s.upsert = cfg.CRMWrite != "create"
	case "salesforce":
		if cfg.CRMWrite == "create" {
			// Upsert by the External ID field is what makes a resend safe;
			// a create would need a lookup before every resend, and sObject
			// Collections' create refuses the key's duplicate anyway.
			return nil, errors.New("-crm-write create: the salesforce connector writes by upsert on the External ID field only")
		}
		sf, err := salesforce.New(salesforce.Config{BaseURL: cfg.CRMURL, Token: cfg.CRMToken, Object: cfg.CRMObject,
			IDField: cfg.CRMIDField, APIVersion: cfg.CRMAPIVersion, Reserve: cfg.CRMReserve, Timeout: cfg.CRMTimeout,
			HTTP: hc, Observe: s.met.observeCRM, Usage: s.salesforceUsage})
		if err != nil {
			return nil, err
		}
		s.crm = sf
		s.resendSafe, s.upsert = true, true
	default:
		return nil, fmt.Errorf("crm api %q: want generic, hubspot or salesforce", cfg.API)
	}
	// A batch is as large as the CRM takes unless told smaller.
	if most := s.crm.MaxBatch(); s.cfg.MaxBatch == 0 {
		s.cfg.MaxBatch = most
	} else if s.cfg.MaxBatch > most {
		return nil, fmt.Errorf("max batch %d exceeds the CRM's limit of %d records a request", s.cfg.MaxBatch, most)
	}
	if err := s.rpc.RegisterName(crmrpc.ServiceV1, &service{s}); err != nil {
		return nil, fmt.Errorf("register rpc service: %w", err)
	}
	return s, nil
}

// Close stops accepting connections, answers calls that arrive from now on
// with CodeShuttingDown, and waits for the calls in flight to be answered
// until ctx is done; then it aborts what is left and closes every
// connection. It returns ctx.Err() when the grace ran out.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()

	var err error
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	// A call whose body has not arrived yet is no work in flight: a client
	// that stalls after a header must not hold the shutdown for the whole
	// grace. active is loaded first, so a call whose body arrives meanwhile
	// is waited for.
	for s.active.Load()-s.reading.Load() > 0 && err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
			s.log.Warn("grace period over; abandoning calls in flight", "calls", s.active.Load())
		case <-tick.C:
		}
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.hc.CloseIdleConnections()
	return err
}

// service is what net/rpc sees: exactly the three methods of the contract.
type service struct{ s *Server }

func (v *service) Hello(args *crmrpc.HelloArgs, reply *crmrpc.HelloReply) error {
	if reply.Err = v.s.admit(args.Token); reply.Err == nil {
		reply.Version = Version
		reply.MaxRecords = v.s.cfg.MaxRecords
		reply.MaxFieldBytes = v.s.cfg.MaxFieldBytes
		reply.Idempotency = v.s.cfg.Idempotency
		reply.CallTimeout = v.s.callTimeout()
		reply.PackedRecords = v.s.packedRecords
		reply.Instance = v.s.instance
		reply.API, reply.Fields = cmp.Or(v.s.cfg.API, "generic"), v.s.fields
		reply.Updates = v.s.updates
	}
	v.s.met.rpcCall("Hello", resultOf(reply.Err))
	return nil
}

func (v *service) Deliver(args *crmrpc.DeliverArgs, reply *crmrpc.DeliverReply) error {
	if reply.Err = v.s.admit(args.Token); reply.Err == nil {
		reply.PackedRecords = v.s.packedRecords
		reply.CallTimeout = v.s.callTimeout()
		reply.Instance = v.s.instance
		reply.Updates = v.s.updates
		var recs []crmrpc.Record
		var checked bool
		if recs, checked, reply.Err = v.s.records(args); reply.Err == nil {
			reply.Verdicts, reply.Lookups, reply.Err = v.s.deliver(v.s.ctx, recs, checked)
		}
		if args.PackedVerdicts && reply.Err == nil {
			reply.PackedVerdicts = string(crmrpc.AppendPackedVerdicts(make([]byte, 0, 16+24*len(reply.Verdicts)), reply.Verdicts, args.VerdictsVersion))
			reply.Verdicts = nil
		}
	}
	v.s.met.rpcCall("Deliver", resultOf(reply.Err))
	return nil
}

// records returns the records of a Deliver call: Records, or Packed
// unpacked. Deliver then applies the same limits to either.
func (s *Server) records(args *crmrpc.DeliverArgs) (recs []crmrpc.Record, checked bool, err *crmrpc.Error) {
	if args.Packed == "" {
		s.met.recordsReceived.Add(int64(len(args.Records)))
		recs = make([]crmrpc.Record, len(args.Records))
		for i := range args.Records {
			recs[i] = args.Records[i].Record()
		}
		return recs, false, nil
	}
	if len(args.Records) > 0 {
		err = &crmrpc.Error{Code: crmrpc.CodeMalformedCall,
			Message: fmt.Sprintf("records sent both as Records (%d) and Packed: send one or the other", len(args.Records))}
	} else {
		recs, err = crmrpc.UnpackRecords(args.Packed, s.cfg.MaxRecords)
	}
	if err != nil {
		if err.Code == crmrpc.CodeMalformedCall {
			s.log.Warn("refused a malformed deliver call", "error", err.Message)
		}
		return nil, false, err
	}
	s.met.recordsReceived.Add(int64(len(recs)))
	// Every string of the records is cut from the packed bytes: when they
	// are all ASCII, no record needs a UTF-8 pass of its own.
	return recs, crmrpc.PackedASCII(args.Packed), nil
}

func (v *service) Lookup(args *crmrpc.LookupArgs, reply *crmrpc.LookupReply) error {
	if reply.Err = v.s.admit(args.Token); reply.Err == nil {
		reply.Results, reply.Err = v.s.Lookup(v.s.ctx, args.ExternalIDs)
	}
	v.s.met.rpcCall("Lookup", resultOf(reply.Err))
	return nil
}

func resultOf(e *crmrpc.Error) string {
	if e == nil {
		return "ok"
	}
	return e.Code
}

// admit checks the shutdown state and the RPC token, in constant time.
func (s *Server) admit(token string) *crmrpc.Error {
	if s.closing.Load() {
		return &crmrpc.Error{Code: crmrpc.CodeShuttingDown, Message: "the daemon is shutting down; call again later or another address"}
	}
	if s.cfg.RPCToken != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.RPCToken)) != 1 {
		return &crmrpc.Error{Code: crmrpc.CodeUnauthorized, Message: "missing or wrong rpc token: set the reader's token to the daemon's -rpc-token"}
	}
	return nil
}

// readiness caches the answer of the CRM probe for a moment, so that a
// busy /readyz does not become load on the CRM.
type readiness struct {
	mu  sync.Mutex
	at  time.Time
	err error
}

// Ready reports whether the daemon can deliver: the breaker is not open
// and the CRM answers a cheap lookup with the daemon's credentials.
func (s *Server) Ready(ctx context.Context) error {
	if s.closing.Load() {
		return errors.New("shutting down")
	}
	if st := s.breaker.State(); st == BreakerOpen {
		return errors.New("crm circuit breaker is open")
	}
	s.ready.mu.Lock()
	defer s.ready.mu.Unlock()
	if !s.ready.at.IsZero() && time.Since(s.ready.at) < 2*time.Second {
		return s.ready.err
	}
	err := s.crm.Ping(ctx)
	switch crmapi.ClassOf(err) {
	case crmapi.ClassOK, crmapi.ClassRateLimited, crmapi.ClassRejected, crmapi.ClassInProgress:
		err = nil // it answered with our credentials
	}
	if err != nil {
		err = fmt.Errorf("crm not reachable: %w", err)
	}
	s.ready.at, s.ready.err = time.Now(), err
	return err
}

// Handler serves the side port: /healthz, /readyz and /metrics.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		s.met.WriteTo(w)
	})
	return mux
}
