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
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/buildinfo"
	"crmsync/shared/logging"
	"crmsync/shared/profiling"
	"crmsync/shared/redact"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fakecrm:", err)
		os.Exit(1)
	}
}

// shutdownTimeout bounds how long in-flight connections get to finish.
const shutdownTimeout = 5 * time.Second

// run parses flags, serves the fake CRM until ctx is done, then shuts it
// down and saves its state.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fakecrm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: fakecrm [flags]\n\nServes a fake, flaky CRM JSON API (docs/crm-api.md).\nEvery flag defaults to the environment variable named in its help.\n\n")
		profiling.PrintDefaults(fs)
	}
	cpuProfile := profiling.Flag(fs)
	env := envDefaults{getenv: getenv}
	var (
		listen     = fs.String("listen", env.str("FAKECRM_LISTEN", "127.0.0.1:8090"), "`address` to listen on; port 0 picks a free one ($FAKECRM_LISTEN)")
		token      = fs.String("token", "", "bearer `token` required on API requests; empty: none; prefer the environment, a command line shows in ps ($FAKECRM_TOKEN"+tokenShown(getenv("FAKECRM_TOKEN"))+")")
		tokenFile  = fs.String("token-file", env.str("FAKECRM_TOKEN_FILE", ""), "read the bearer token from this `file`; wins over -token ($FAKECRM_TOKEN_FILE)")
		failRate   = fs.Float64("fail-rate", env.float("FAKECRM_FAIL_RATE", 0), "`fraction` of POSTs answered 503 before creating anything ($FAKECRM_FAIL_RATE)")
		ambRate    = fs.Float64("ambiguous-rate", env.float("FAKECRM_AMBIGUOUS_RATE", 0), "`fraction` of POSTs that create, then answer 500/502/504, reset or hang ($FAKECRM_AMBIGUOUS_RATE)")
		ambModes   = fs.String("ambiguous-modes", env.str("FAKECRM_AMBIGUOUS_MODES", ""), "comma separated `modes` among 500,502,504,reset,hang; empty: all ($FAKECRM_AMBIGUOUS_MODES)")
		blocked    = fs.String("blocked-domains", env.str("FAKECRM_BLOCKED_DOMAINS", ""), "comma separated email `domains` whose contacts are rejected (email_domain_blocked) ($FAKECRM_BLOCKED_DOMAINS)")
		hang       = fs.Duration("hang", env.duration("FAKECRM_HANG", fakecrm.DefaultHang), "how long a hang holds the response before dropping the connection ($FAKECRM_HANG)")
		latency    = fs.Duration("latency", env.duration("FAKECRM_LATENCY", 0), "latency added to every /v1 request ($FAKECRM_LATENCY)")
		lookupLat  = fs.Duration("lookup-latency", env.duration("FAKECRM_LOOKUP_LATENCY", 0), "latency added to every lookup, on top of -latency ($FAKECRM_LOOKUP_LATENCY)")
		jitter     = fs.Duration("jitter", env.duration("FAKECRM_JITTER", 0), "uniform extra latency in [0, jitter) ($FAKECRM_JITTER)")
		rate       = fs.Float64("rate", env.float("FAKECRM_RATE", 0), "/v1 `requests` per second before 429; 0: unlimited ($FAKECRM_RATE)")
		burst      = fs.Int("burst", env.int("FAKECRM_BURST", 0), "token bucket size; 0: one second's worth ($FAKECRM_BURST)")
		maxBatch   = fs.Int("max-batch", env.int("FAKECRM_MAX_BATCH", 100), "most contacts per batch before 413 ($FAKECRM_MAX_BATCH)")
		idem       = fs.Bool("idempotency", env.bool("FAKECRM_IDEMPOTENCY", true), "honour Idempotency-Key; false ignores the header ($FAKECRM_IDEMPOTENCY)")
		seed       = fs.Int64("seed", env.int64("FAKECRM_SEED", 0), "seed of the fault decisions; 0: random, logged so the run can be repeated ($FAKECRM_SEED)")
		stateFile  = fs.String("state", env.str("FAKECRM_STATE", ""), "`file` keeping contacts and idempotency keys across restarts ($FAKECRM_STATE)")
		saveEvery  = fs.Duration("save-interval", env.duration("FAKECRM_SAVE_INTERVAL", fakecrm.DefaultSaveInterval), "how often the state file is rewritten when changed ($FAKECRM_SAVE_INTERVAL)")
		readTO     = fs.Duration("read-timeout", env.duration("FAKECRM_READ_TIMEOUT", time.Minute), "time to read a whole request, body included; keep it above -hang and -latency ($FAKECRM_READ_TIMEOUT)")
		idleTO     = fs.Duration("idle-timeout", env.duration("FAKECRM_IDLE_TIMEOUT", 2*time.Minute), "close keep-alive connections idle this long ($FAKECRM_IDLE_TIMEOUT)")
		idemKeys   = fs.Int("idempotency-keys", env.int("FAKECRM_IDEMPOTENCY_KEYS", fakecrm.DefaultIdempotencyKeys), "most Idempotency-Keys kept; the oldest is forgotten first ($FAKECRM_IDEMPOTENCY_KEYS)")
		idemTTL    = fs.Duration("idempotency-ttl", env.duration("FAKECRM_IDEMPOTENCY_TTL", fakecrm.DefaultIdempotencyTTL), "how long an Idempotency-Key is kept after its first use ($FAKECRM_IDEMPOTENCY_TTL)")
		api        = fs.String("api", env.str("FAKECRM_API", fakecrm.APIGeneric), "`API` to serve: generic (docs/crm-api.md), hubspot (docs/crm/hubspot-fake.md) or salesforce (docs/crm/salesforce-fake.md) ($FAKECRM_API)")
		hsIDProp   = fs.String("hubspot-id-property", env.str("FAKECRM_HUBSPOT_ID_PROPERTY", fakecrm.DefaultHubSpotIDProperty), "hubspot: unique contact `property` the portal has from the start ($FAKECRM_HUBSPOT_ID_PROPERTY)")
		hsProps    = fs.String("hubspot-properties", env.str("FAKECRM_HUBSPOT_PROPERTIES", strings.Join(fakecrm.DefaultHubSpotProperties, ",")), "hubspot: comma separated extra contact `properties`, name or name:type (string, number, date, datetime) ($FAKECRM_HUBSPOT_PROPERTIES)")
		hsWindow   = fs.Int("hubspot-window", env.int("FAKECRM_HUBSPOT_WINDOW", 0), "hubspot: `requests` allowed in any rolling 10 seconds before 429 TEN_SECONDLY_ROLLING; 0: unlimited ($FAKECRM_HUBSPOT_WINDOW)")
		daily      = fs.Int("daily", env.int("FAKECRM_DAILY", 0), "hubspot and salesforce: daily request `allocation` before 429 DAILY (hubspot) or 403 REQUEST_LIMIT_EXCEEDED (salesforce); 0: unlimited ($FAKECRM_DAILY)")
		hsLag      = fs.Duration("hubspot-search-lag", env.duration("FAKECRM_HUBSPOT_SEARCH_LAG", fakecrm.DefaultHubSpotSearchLag), "hubspot: how long a written contact stays invisible to search; 0: none ($FAKECRM_HUBSPOT_SEARCH_LAG)")
		sfObject   = fs.String("salesforce-object", env.str("FAKECRM_SALESFORCE_OBJECT", fakecrm.DefaultSalesforceObject), "salesforce: the `sObject` served, with Contact's fields ($FAKECRM_SALESFORCE_OBJECT)")
		sfIDField  = fs.String("salesforce-id-field", env.str("FAKECRM_SALESFORCE_ID_FIELD", fakecrm.DefaultSalesforceIDField), "salesforce: the External ID, Unique custom `field` upserts go by ($FAKECRM_SALESFORCE_ID_FIELD)")
		sfFields   = fs.String("salesforce-fields", env.str("FAKECRM_SALESFORCE_FIELDS", strings.Join(fakecrm.DefaultSalesforceFields, ",")), "salesforce: comma separated extra custom text `fields` ($FAKECRM_SALESFORCE_FIELDS)")
		sfBatch    = fs.Int("salesforce-query-batch", env.int("FAKECRM_SALESFORCE_QUERY_BATCH", fakecrm.DefaultSalesforceQueryBatch), "salesforce: `records` per query answer before nextRecordsUrl ($FAKECRM_SALESFORCE_QUERY_BATCH)")
		logLevelIn = fs.String("log-level", env.str("FAKECRM_LOG_LEVEL", "info"), "`level` of stderr logs: debug, info, warn or error ($FAKECRM_LOG_LEVEL)")
		version    = fs.Bool("version", false, "print the version, commit and build time, and exit")
	)
	if env.err != nil {
		return env.err
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *version {
		fmt.Fprintln(stdout, buildinfo.Read().String("fakecrm"))
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: fakecrm takes only flags (see -h)", fs.Args())
	}
	if *token == "" {
		*token = getenv("FAKECRM_TOKEN") // after parsing, so that -h never prints it
	}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("read token file: %w", err)
		}
		if *token = strings.TrimSpace(string(b)); *token == "" {
			return fmt.Errorf("token file %s is empty: no token would let anyone in", *tokenFile)
		}
	}
	log, err := logging.New("text", *logLevelIn, stderr)
	if err != nil {
		return err
	}
	stopProfile, err := profiling.StartCPU(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()

	if *seed == 0 {
		*seed = rand.Int64()
	}
	log.Info("fault seed; pass -seed to repeat this run", "seed", *seed)
	if *hsLag == 0 {
		*hsLag = -1 // HubSpotConfig's "none"
	}
	srv, err := fakecrm.New(fakecrm.Config{
		API: *api,
		HubSpot: fakecrm.HubSpotConfig{
			IDProperty: *hsIDProp, Properties: strings.Split(*hsProps, ","),
			Daily: *daily, Window: *hsWindow, SearchLag: *hsLag,
		},
		Salesforce: fakecrm.SalesforceConfig{
			Object: *sfObject, IDField: *sfIDField, Fields: strings.Split(*sfFields, ","),
			Daily: *daily, QueryBatch: *sfBatch,
		},
		Token: *token,
		Faults: fakecrm.Faults{
			FailRate: *failRate, AmbiguousRate: *ambRate, AmbiguousModes: *ambModes,
			Latency: *latency, LookupLatency: *lookupLat, Jitter: *jitter, Hang: *hang, Rate: *rate, Burst: *burst,
			BlockedDomains: *blocked,
		},
		MaxBatch:           *maxBatch,
		DisableIdempotency: !*idem,
		IdempotencyKeys:    *idemKeys,
		IdempotencyTTL:     *idemTTL,
		Seed:               *seed,
		StateFile:          *stateFile,
		SaveInterval:       *saveEvery,
		Logger:             log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		srv.Close()
		return fmt.Errorf("listen: %w", err)
	}
	// Scripts and tests wait for this exact first line.
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())

	// Operators may expose it for rehearsals: no request may hold a
	// connection forever, nor a header grow without bound.
	headerTO := 10 * time.Second
	if *readTO > 0 {
		headerTO = min(headerTO, *readTO)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: headerTO,
		ReadTimeout:       *readTO,
		IdleTimeout:       *idleTO,
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

// tokenShown is what -h says of a token set in the environment.
func tokenShown(v string) string {
	if v == "" {
		return ""
	}
	return ", set: " + redact.Secret(v)
}

// envDefaults reads flag defaults from the environment and keeps the first
// malformed value, so the user hears which variable to fix.
type envDefaults struct {
	getenv func(string) string
	err    error
}

func (e *envDefaults) str(name, def string) string {
	if v := e.getenv(name); v != "" {
		return v
	}
	return def
}

// parse applies p to name's value, or returns def when it is unset.
func parse[T any](e *envDefaults, name string, def T, p func(string) (T, error)) T {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	x, err := p(v)
	if err != nil {
		if e.err == nil {
			e.err = fmt.Errorf("environment variable %s=%q: %w", name, v, err)
		}
		return def
	}
	return x
}

func (e *envDefaults) float(name string, def float64) float64 {
	return parse(e, name, def, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) })
}

func (e *envDefaults) int(name string, def int) int { return parse(e, name, def, strconv.Atoi) }

func (e *envDefaults) int64(name string, def int64) int64 {
	return parse(e, name, def, func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) })
}

func (e *envDefaults) bool(name string, def bool) bool {
	return parse(e, name, def, strconv.ParseBool)
}

func (e *envDefaults) duration(name string, def time.Duration) time.Duration {
	return parse(e, name, def, time.ParseDuration)
}
