package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	_ "time/tzdata" // -crm-quota-reset zones, even in a container without zoneinfo

	"crmsync/crmintegrator/hubspot"
	"crmsync/crmintegrator/integrator"
	"crmsync/shared/buildinfo"
	"crmsync/shared/cli"
	"crmsync/shared/crmrpc"
	"crmsync/shared/logging"
	"crmsync/shared/profiling"
	"crmsync/shared/redact"
	"crmsync/shared/runtimecfg"
)

// options are the parsed flags.
type options struct {
	listen, httpAddr               string
	crmURL, crmToken, crmTokenFile string
	rpcToken, rpcTokenFile         string
	tlsCert, tlsKey, tlsClientCA   string
	logFormat, logLevel            string
	grace                          time.Duration
	quotaZone                      string
	crmReserve                     string
	version                        bool
	cpuProfile                     *string
	cfg                            integrator.Config
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	f := cli.NewFlags("crmintegrator", fmt.Sprintf("Usage: crmintegrator [flags]\n\nDelivers contacts from readers (net/rpc, %s) to the CRM's JSON API.\nSee docs/integrator.md.", crmrpc.ServiceV1), getenv, stderr)
	fs := f.FlagSet()
	o := &options{}
	o.cpuProfile = profiling.Flag(fs)
	c := &o.cfg
	f.String(&o.listen, "listen", "INTEGRATOR_LISTEN", "127.0.0.1:4004", "RPC `address` to listen on")
	f.String(&o.httpAddr, "http", "INTEGRATOR_HTTP", "127.0.0.1:9464", "`address` of the side port with /healthz, /readyz, /metrics; \"\" or \"off\" disables it")
	f.URL(&o.crmURL, "crm-url", "CRM_URL", "", "base `URL` of the CRM API (required); -h shows it without password or query values")
	f.Secret(&o.crmToken, "crm-token", "CRM_TOKEN", "bearer `token` for the CRM; prefer -crm-token-file or the environment over the command line")
	f.String(&o.crmTokenFile, "crm-token-file", "CRM_TOKEN_FILE", "", "read the CRM token from this `file`")
	f.String(&c.API, "crm-api", "CRM_API", "generic", "the CRM's `API`: generic (docs/crm-api.md), hubspot (docs/crm/hubspot.md) or salesforce (docs/crm/salesforce.md)")
	f.String(&c.CRMIDField, "crm-id-field", "CRM_ID_FIELD", "", "the CRM `field` that holds the dedup key (hubspot: a contact property with unique values, default external_id; salesforce: a unique External ID field, default External_Id__c)")
	f.String(&c.CRMObject, "crm-object", "CRM_OBJECT", "", "salesforce: the sObject records are written to (default Contact)")
	f.String(&c.CRMAPIVersion, "crm-api-version", "CRM_API_VERSION", "", "salesforce: the REST API `version` (default 60.0)")
	f.String(&o.crmReserve, "crm-reserve", "CRM_RESERVE", "10%", "salesforce: `share` of the org's daily API allocation kept for its other integrations, as 10% or 0.10; below it the daemon stops sending (the readers exit 4)")
	f.String(&c.CRMWrite, "crm-write", "CRM_WRITE", "", "upsert or create: upsert (the default where the CRM has it) is resend-safe; create looks contacts up before any resend")
	f.String(&o.quotaZone, "crm-quota-reset", "CRM_QUOTA_RESET", "UTC", "time `zone` whose midnight resets the CRM's daily allocation, where the CRM does not say (hubspot: the account's time zone)")
	f.Duration(&c.CRMTimeout, "crm-timeout", "CRM_TIMEOUT", 10*time.Second, "timeout of one CRM request")
	f.Int(&c.CRMConcurrency, "crm-concurrency", "CRM_CONCURRENCY", 8, "most requests in flight to the CRM")
	f.Float(&c.CRMRate, "crm-rate", "CRM_RATE", 0, "hard cap on CRM requests per second; 0: adaptive only")
	f.Bool(&c.Idempotency, "crm-idempotency", "CRM_IDEMPOTENCY", false, "the CRM honours Idempotency-Key: after an ambiguous answer resend the same body with the same key instead of looking contacts up")
	f.Int(&c.MaxBatch, "max-batch", "INTEGRATOR_MAX_BATCH", 0, "contacts per CRM batch request; 0: the most the CRM takes (generic and hubspot 100, salesforce 200)")
	f.Int(&c.MaxRecords, "max-records", "INTEGRATOR_MAX_RECORDS", crmrpc.DefaultMaxRecords, "most records one Deliver or Lookup call may carry")
	f.Int(&c.MaxFieldBytes, "max-field-bytes", "INTEGRATOR_MAX_FIELD_BYTES", 4096, "longest field, in bytes, a record may carry")
	f.Duration(&c.CallBudget, "call-budget", "INTEGRATOR_CALL_BUDGET", 20*time.Second, "time one call may spend on internal retries before answering Retry")
	f.Int(&c.MaxAttempts, "max-attempts", "INTEGRATOR_MAX_ATTEMPTS", 4, "rounds (resends, lookups) per batch within one call")
	f.Duration(&c.MaxCallWait, "max-call-wait", "INTEGRATOR_MAX_CALL_WAIT", 300*time.Millisecond, "longest 429 pause (or wait before resending a body under its Idempotency-Key) a call sleeps before another round; longer ones, and every other wait after a failure, are answered Retry at once (negative: every wait is slept, as -call-budget allows)")
	f.Int(&c.BreakerThreshold, "breaker-threshold", "INTEGRATOR_BREAKER_THRESHOLD", 20, "consecutive CRM failures (5xx, timeouts) that open the circuit breaker")
	f.Duration(&c.BreakerCooldown, "breaker-cooldown", "INTEGRATOR_BREAKER_COOLDOWN", 10*time.Second, "how long the open breaker refuses requests before a probe")
	f.Secret(&o.rpcToken, "rpc-token", "INTEGRATOR_RPC_TOKEN", "shared `token` readers must present; empty: none")
	f.String(&o.rpcTokenFile, "rpc-token-file", "INTEGRATOR_RPC_TOKEN_FILE", "", "read the RPC token from this `file`; wins over -rpc-token")
	f.String(&o.tlsCert, "tls-cert", "INTEGRATOR_TLS_CERT", "", "certificate `file` (PEM): serve RPC over TLS")
	f.String(&o.tlsKey, "tls-key", "INTEGRATOR_TLS_KEY", "", "private key `file` (PEM) of -tls-cert")
	f.String(&o.tlsClientCA, "tls-client-ca", "INTEGRATOR_TLS_CLIENT_CA", "", "CA `file` (PEM): require client certificates signed by it (mutual TLS)")
	f.Duration(&c.IdleTimeout, "idle-timeout", "INTEGRATOR_IDLE_TIMEOUT", 5*time.Minute, "close RPC connections idle this long")
	f.Int(&c.MaxConns, "max-conns", "INTEGRATOR_MAX_CONNS", 256, "most RPC connections at once; the oldest unauthenticated one makes way for a new one")
	f.Int(&c.MaxConnsPerPeer, "max-conns-per-peer", "INTEGRATOR_MAX_CONNS_PER_PEER", 32, "most RPC connections at once from one IP address")
	f.Duration(&c.HandshakeTimeout, "handshake-timeout", "INTEGRATOR_HANDSHAKE_TIMEOUT", 5*time.Second, "time a new connection has for TLS and the token handshake")
	f.Duration(&c.ReadTimeout, "read-timeout", "INTEGRATOR_READ_TIMEOUT", 30*time.Second, "time one RPC message may take to arrive once it has begun")
	f.Int(&c.MaxMessageBytes, "max-message-bytes", "INTEGRATOR_MAX_MESSAGE_BYTES", 16<<20, "largest RPC message (a Deliver's block), in bytes; checked before it is read")
	f.Duration(&o.grace, "grace", "INTEGRATOR_GRACE", 30*time.Second, "on SIGTERM/SIGINT, time for calls in flight to finish")
	f.String(&o.logFormat, "log-format", "INTEGRATOR_LOG_FORMAT", "text", "log format: text or json")
	f.String(&o.logLevel, "log-level", "INTEGRATOR_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.version, "version", false, "print the version, commit and build time, and exit")
	if err := f.Parse(args); err != nil {
		return nil, err
	}
	if o.version {
		return o, nil // nothing else matters
	}
	// Every mistake at once, as the flags' own.
	var bad []error
	if f.FlagSet().NArg() > 0 {
		bad = append(bad, fmt.Errorf("unexpected arguments %q: crmintegrator takes only flags", f.Args()))
	}
	if o.crmURL == "" && c.API == "hubspot" {
		o.crmURL = hubspot.DefaultBaseURL
	}
	switch {
	case o.crmURL == "" && c.API == "salesforce":
		bad = append(bad, errors.New("no CRM url: set -crm-url or CRM_URL to the org's instance URL, https://MyDomainName.my.salesforce.com"))
	case o.crmURL == "":
		bad = append(bad, errors.New("no CRM url: set -crm-url or CRM_URL"))
	}
	reserve, err := parseShare(o.crmReserve)
	if err != nil {
		bad = append(bad, fmt.Errorf("-crm-reserve %q: %w", o.crmReserve, err))
	}
	c.CRMReserve = reserve
	if o.tlsClientCA != "" && (o.tlsCert == "" || o.tlsKey == "") {
		bad = append(bad, errors.New("-tls-client-ca needs -tls-cert and -tls-key"))
	}
	zone, err := time.LoadLocation(o.quotaZone)
	if err != nil {
		bad = append(bad, fmt.Errorf("-crm-quota-reset %q: want a time zone such as UTC or America/New_York: %w", o.quotaZone, err))
	}
	c.QuotaZone = zone
	if len(bad) > 0 {
		return nil, cli.Usage(errors.Join(bad...))
	}
	return o, nil
}

// parseShare reads a share as "10%" or "0.10", from 0 up to but not
// including all of it.
func parseShare(v string) (float64, error) {
	pct := strings.HasSuffix(v, "%")
	f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(v, "%")), 64)
	if pct {
		f /= 100
	}
	if err != nil || f < 0 || f >= 1 || f != f {
		return 0, errors.New("want a share such as 10% or 0.10, at least 0 and below 100%")
	}
	return f, nil
}

func loadTLS(o *options) (*tls.Config, error) {
	if o.tlsCert == "" && o.tlsKey == "" {
		return nil, nil // parseFlags refused -tls-client-ca alone
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("load tls key pair: %w", err)
	}
	cfg := crmrpc.ModernTLS(&tls.Config{Certificates: []tls.Certificate{cert}})
	if o.tlsClientCA != "" {
		pool, err := cli.CertPool(o.tlsClientCA, "tls client ca")
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if o.version {
		fmt.Fprintln(stdout, buildinfo.Read().String("crmintegrator"))
		return nil
	}
	log, err := logging.New(o.logFormat, o.logLevel, stderr)
	if err != nil {
		return cli.Usage(err)
	}
	// A daemon's heap is the calls in flight: at 400 the collector runs half
	// as often as at 200 (make bench, with the fate cache's change: 9.6 →
	// 8.5 CPU-seconds for 1M records, peak RSS 67 → 91 MB), and the soft
	// limit keeps a burst of calls from growing the heap further.
	runtimecfg.SetGC(getenv, 400, 256<<20)
	stopProfile, err := profiling.StartCPU(*o.cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	cfg := o.cfg
	cfg.Logger = log
	cfg.CRMURL = o.crmURL
	cfg.RPCToken = o.rpcToken
	cfg.CRMToken = o.crmToken
	if o.crmTokenFile != "" {
		if cfg.CRMToken, err = cli.ReadSecret(o.crmTokenFile, "crm token"); err != nil {
			return err
		}
	}
	if o.rpcTokenFile != "" {
		if cfg.RPCToken, err = cli.ReadSecret(o.rpcTokenFile, "rpc token"); err != nil {
			return err
		}
	}
	if cfg.TLS, err = loadTLS(o); err != nil {
		return err
	}
	srv, err := integrator.New(cfg)
	if err != nil {
		return redact.Error(err, cfg.CRMURL)
	}
	cctx, ccancel := context.WithTimeout(ctx, 2*cfg.CRMTimeout+5*time.Second)
	err = srv.Check(cctx)
	ccancel()
	if err != nil {
		return fmt.Errorf("the CRM is not ready for crmintegrator: %w", redact.Error(err, cfg.CRMURL))
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var side *http.Server
	var sideLn net.Listener
	if o.httpAddr != "" && o.httpAddr != "off" {
		if sideLn, err = net.Listen("tcp", o.httpAddr); err != nil {
			ln.Close()
			return fmt.Errorf("listen http side port: %w", err)
		}
		side = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
	}

	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if side != nil {
		go func() { errc <- side.Serve(sideLn) }()
	}
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	attrs := []any{"rpc", ln.Addr().String(), "crm", redact.URL(cfg.CRMURL), "crm_api", cfg.API, "tls", cfg.TLS != nil,
		"mutual_tls", o.tlsClientCA != "", "rpc_token", cfg.RPCToken != "", "crm_concurrency", cfg.CRMConcurrency,
		"crm_rate", cfg.CRMRate, "idempotency", cfg.Idempotency}
	if side != nil {
		attrs = append(attrs, "http", sideLn.Addr().String())
	}
	log.Info("crmintegrator started", attrs...)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace", o.grace)
	case runErr = <-errc:
		log.Error("server failed", "error", runErr)
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), o.grace)
	defer cancel()
	if err := srv.Close(graceCtx); err != nil {
		log.Warn("calls in flight were abandoned at the end of the grace period", "error", err)
	}
	if side != nil {
		side.Shutdown(graceCtx)
	}
	log.Info("stopped")
	return runErr
}
