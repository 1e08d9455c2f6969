// Command fakecrm serves a fake, deliberately flaky CRM JSON API
// (docs/crm-api.md, or with -api HubSpot's or Salesforce's) for demos,
// tests and benchmarks. Every flag has an
// environment default (FAKECRM_*); the first line on stdout is
// "listening on HOST:PORT". SIGINT or SIGTERM shut it down cleanly, saving
// the state file when one is set.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/buildinfo"
	"crmsync/shared/cli"
	"crmsync/shared/logging"
	"crmsync/shared/profiling"
)

func main() { cli.Main("fakecrm", run) }

// options are the parsed flags.
type options struct {
	rateHeaders bool
	listen      string
	tokenFile   string
	failRate    float64
	ambRate     float64
	ambModes    string
	blocked     string
	hang        time.Duration
	latency     time.Duration
	lookupLat   time.Duration
	jitter      time.Duration
	rate        float64
	burst       int
	maxBatch    int
	idem        bool
	seed        int64
	stateFile   string
	saveEvery   time.Duration
	readTO      time.Duration
	idleTO      time.Duration
	idemKeys    int
	idemTTL     time.Duration
	api         string
	hsIDProp    string
	hsProps     string
	hsWindow    int
	daily       int
	hsLag       time.Duration
	sfObject    string
	sfIDField   string
	sfFields    string
	sfBatch     int
	logLevelIn  string
	token       string
	version     bool
}

// shutdownTimeout bounds how long in-flight connections get to finish.
const shutdownTimeout = 5 * time.Second

// run parses flags, serves the fake CRM until ctx is done, then shuts it
// down and saves its state.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	f := cli.NewFlags("fakecrm", "Usage: fakecrm [flags]\n\nServes a fake, flaky CRM API: our generic one (docs/crm-api.md), HubSpot's\n(docs/crm/hubspot-fake.md) or Salesforce's (docs/crm/salesforce-fake.md).", getenv, stderr)
	cpuProfile := profiling.Flag(f.FlagSet())
	var o options
	f.String(&o.listen, "listen", "FAKECRM_LISTEN", "127.0.0.1:8090", "`address` to listen on; port 0 picks a free one")
	f.Secret(&o.token, "token", "FAKECRM_TOKEN", "bearer `token` required on API requests; empty: none; prefer the environment or -token-file, a command line shows in ps")
	f.String(&o.tokenFile, "token-file", "FAKECRM_TOKEN_FILE", "", "read the bearer token from this `file`; wins over -token")
	f.Float(&o.failRate, "fail-rate", "FAKECRM_FAIL_RATE", 0, "`fraction` of POSTs answered 503 before creating anything")
	f.Float(&o.ambRate, "ambiguous-rate", "FAKECRM_AMBIGUOUS_RATE", 0, "`fraction` of POSTs that create, then answer 500/502/504, reset or hang")
	f.String(&o.ambModes, "ambiguous-modes", "FAKECRM_AMBIGUOUS_MODES", "", "comma separated `modes` among 500,502,504,reset,hang; empty: all")
	f.String(&o.blocked, "blocked-domains", "FAKECRM_BLOCKED_DOMAINS", "", "comma separated email `domains` whose contacts are rejected (email_domain_blocked)")
	f.Duration(&o.hang, "hang", "FAKECRM_HANG", fakecrm.DefaultHang, "how long a hang holds the response before dropping the connection")
	f.Duration(&o.latency, "latency", "FAKECRM_LATENCY", 0, "latency added to every /v1 request")
	f.Duration(&o.lookupLat, "lookup-latency", "FAKECRM_LOOKUP_LATENCY", 0, "latency added to every lookup, on top of -latency")
	f.Duration(&o.jitter, "jitter", "FAKECRM_JITTER", 0, "uniform extra latency in [0, jitter)")
	f.Float(&o.rate, "rate", "FAKECRM_RATE", 0, "/v1 `requests` per second before 429; 0: unlimited")
	f.Int(&o.burst, "burst", "FAKECRM_BURST", 0, "token bucket size; 0: one second's worth")
	f.Bool(&o.rateHeaders, "rate-headers", "FAKECRM_RATE_HEADERS", true, "state the bucket in the IETF RateLimit-Policy and RateLimit fields; false: 429s alone tell")
	f.Int(&o.maxBatch, "max-batch", "FAKECRM_MAX_BATCH", 100, "most contacts per batch before 413")
	f.Bool(&o.idem, "idempotency", "FAKECRM_IDEMPOTENCY", true, "honour Idempotency-Key; false ignores the header")
	f.Int64(&o.seed, "seed", "FAKECRM_SEED", 0, "seed of the fault decisions; 0: random, logged so the run can be repeated")
	f.String(&o.stateFile, "state", "FAKECRM_STATE", "", "`file` keeping contacts and idempotency keys across restarts")
	f.Duration(&o.saveEvery, "save-interval", "FAKECRM_SAVE_INTERVAL", fakecrm.DefaultSaveInterval, "how often the state file is rewritten when changed")
	f.Duration(&o.readTO, "read-timeout", "FAKECRM_READ_TIMEOUT", time.Minute, "time to read a whole request, body included; keep it above -hang and -latency")
	f.Duration(&o.idleTO, "idle-timeout", "FAKECRM_IDLE_TIMEOUT", 2*time.Minute, "close keep-alive connections idle this long")
	f.Int(&o.idemKeys, "idempotency-keys", "FAKECRM_IDEMPOTENCY_KEYS", fakecrm.DefaultIdempotencyKeys, "most Idempotency-Keys kept; the oldest is forgotten first")
	f.Duration(&o.idemTTL, "idempotency-ttl", "FAKECRM_IDEMPOTENCY_TTL", fakecrm.DefaultIdempotencyTTL, "how long an Idempotency-Key is kept after its first use")
	f.String(&o.api, "api", "FAKECRM_API", fakecrm.APIGeneric, "`API` to serve: generic (docs/crm-api.md), hubspot (docs/crm/hubspot-fake.md) or salesforce (docs/crm/salesforce-fake.md)")
	f.String(&o.hsIDProp, "hubspot-id-property", "FAKECRM_HUBSPOT_ID_PROPERTY", fakecrm.DefaultHubSpotIDProperty, "hubspot: unique contact `property` the portal has from the start")
	f.String(&o.hsProps, "hubspot-properties", "FAKECRM_HUBSPOT_PROPERTIES", strings.Join(fakecrm.DefaultHubSpotProperties, ","), "hubspot: comma separated extra contact `properties`, name or name:type (string, number, date, datetime)")
	f.Int(&o.hsWindow, "hubspot-window", "FAKECRM_HUBSPOT_WINDOW", 0, "hubspot: `requests` allowed in any rolling 10 seconds before 429 TEN_SECONDLY_ROLLING; 0: unlimited")
	f.Int(&o.daily, "daily", "FAKECRM_DAILY", 0, "hubspot and salesforce: daily request `allocation` before 429 DAILY (hubspot) or 403 REQUEST_LIMIT_EXCEEDED (salesforce); 0: unlimited")
	f.Duration(&o.hsLag, "hubspot-search-lag", "FAKECRM_HUBSPOT_SEARCH_LAG", fakecrm.DefaultHubSpotSearchLag, "hubspot: how long a written contact stays invisible to search; 0: none")
	f.String(&o.sfObject, "salesforce-object", "FAKECRM_SALESFORCE_OBJECT", fakecrm.DefaultSalesforceObject, "salesforce: the `sObject` served, with Contact's fields")
	f.String(&o.sfIDField, "salesforce-id-field", "FAKECRM_SALESFORCE_ID_FIELD", fakecrm.DefaultSalesforceIDField, "salesforce: the External ID, Unique custom `field` upserts go by")
	f.String(&o.sfFields, "salesforce-fields", "FAKECRM_SALESFORCE_FIELDS", strings.Join(fakecrm.DefaultSalesforceFields, ","), "salesforce: comma separated extra custom text `fields`")
	f.Int(&o.sfBatch, "salesforce-query-batch", "FAKECRM_SALESFORCE_QUERY_BATCH", fakecrm.DefaultSalesforceQueryBatch, "salesforce: `records` per query answer before nextRecordsUrl")
	f.String(&o.logLevelIn, "log-level", "FAKECRM_LOG_LEVEL", "info", "`level` of stderr logs: debug, info, warn or error")
	f.FlagSet().BoolVar(&o.version, "version", false, "print the version, commit and build time, and exit")
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if o.version {
		fmt.Fprintln(stdout, buildinfo.Read().String("fakecrm"))
		return nil
	}
	if f.FlagSet().NArg() > 0 {
		return cli.Usagef("unexpected arguments %q: fakecrm takes only flags (see -h)", f.Args())
	}
	if o.tokenFile != "" {
		var err error
		if o.token, err = cli.ReadSecret(o.tokenFile, "token"); err != nil {
			return err
		}
	}
	log, err := logging.New("text", o.logLevelIn, stderr)
	if err != nil {
		return cli.Usage(err)
	}
	stopProfile, err := profiling.StartCPU(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()

	if o.seed == 0 {
		o.seed = rand.Int64()
	}
	log.Info("fault seed; pass -seed to repeat this run", "seed", o.seed)
	if o.hsLag == 0 {
		o.hsLag = -1 // HubSpotConfig's "none"
	}
	srv, err := fakecrm.New(fakecrm.Config{
		API: o.api,
		HubSpot: fakecrm.HubSpotConfig{
			IDProperty: o.hsIDProp, Properties: strings.Split(o.hsProps, ","),
			Daily: o.daily, Window: o.hsWindow, SearchLag: o.hsLag,
		},
		Salesforce: fakecrm.SalesforceConfig{
			Object: o.sfObject, IDField: o.sfIDField, Fields: strings.Split(o.sfFields, ","),
			Daily: o.daily, QueryBatch: o.sfBatch,
		},
		Token: o.token,
		Faults: fakecrm.Faults{
			FailRate: o.failRate, AmbiguousRate: o.ambRate, AmbiguousModes: o.ambModes,
			Latency: o.latency, LookupLatency: o.lookupLat, Jitter: o.jitter, Hang: o.hang, Rate: o.rate, Burst: o.burst, SilentRate: !o.rateHeaders,
			BlockedDomains: o.blocked,
		},
		MaxBatch:           o.maxBatch,
		DisableIdempotency: !o.idem,
		IdempotencyKeys:    o.idemKeys,
		IdempotencyTTL:     o.idemTTL,
		Seed:               o.seed,
		StateFile:          o.stateFile,
		SaveInterval:       o.saveEvery,
		Logger:             log,
	})
	if err != nil {
		return cli.Usage(err) // a knob out of range, an unknown API, a state file it cannot read: what the operator gave
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		srv.Close()
		return fmt.Errorf("listen: %w", err)
	}
	// Scripts and tests wait for this exact first line.
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())

	// Operators may expose it for rehearsals: no request may hold a
	// connection forever, nor a header grow without bound.
	headerTO := 10 * time.Second
	if o.readTO > 0 {
		headerTO = min(headerTO, o.readTO)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: headerTO,
		ReadTimeout:       o.readTO,
		IdleTimeout:       o.idleTO,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()

	select {
	case <-ctx.Done():
	case err := <-served:
		srv.Close()
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("shutting down")
	// The CRM first: it releases hangs, waits for its handlers and saves.
	// Then the HTTP server, whose Shutdown would otherwise wait out a hang.
	closeErr := srv.Close()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	<-served
	if closeErr != nil {
		return closeErr
	}
	log.Info("stopped")
	return nil
}
