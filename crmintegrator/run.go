package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	_ "time/tzdata" // -crm-quota-reset zones, even in a container without zoneinfo

	"crmsync/crmintegrator/hubspot"
	"crmsync/crmintegrator/integrator"
	"crmsync/shared/buildinfo"
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

// envFlags defines flags whose defaults come from environment variables.
type envFlags struct {
	fs      *flag.FlagSet
	getenv  func(string) string
	errs    []error
	secrets []func()
}

func (e *envFlags) env(env string) (string, bool) {
	v := e.getenv(env)
	return v, v != ""
}

func (e *envFlags) bad(env, v string, err error) {
	e.errs = append(e.errs, fmt.Errorf("environment variable %s=%q: %w", env, v, err))
}

func (e *envFlags) str(p *string, name, env, def, usage string) {
	if v, ok := e.env(env); ok {
		def = v
	}
	e.fs.StringVar(p, name, def, usage+" (env "+env+")")
}

// secret is a string flag whose environment default is applied after
// parsing, so that -h never prints it.
func (e *envFlags) secret(p *string, name, env, usage string) {
	e.fs.StringVar(p, name, "", usage+" (env "+env+")")
	e.secrets = append(e.secrets, func() {
		if *p == "" {
			*p = e.getenv(env)
		}
	})
}

// url is a string flag for a URL that may carry secrets: -h prints its
// environment default redacted.
func (e *envFlags) url(p *string, name, env, usage string) {
	*p = e.getenv(env)
	e.fs.Var(urlFlag{p}, name, usage+" (env "+env+")")
}

type urlFlag struct{ p *string }

func (f urlFlag) String() string {
	if f.p == nil {
		return ""
	}
	return redact.URL(*f.p)
}

func (f urlFlag) Set(s string) error { *f.p = s; return nil }

func (e *envFlags) dur(p *time.Duration, name, env string, def time.Duration, usage string) {
	if v, ok := e.env(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			e.bad(env, v, err)
		}
		def = d
	}
	e.fs.DurationVar(p, name, def, usage+" (env "+env+")")
}

func (e *envFlags) int(p *int, name, env string, def int, usage string) {
	if v, ok := e.env(env); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			e.bad(env, v, err)
		}
		def = n
	}
	e.fs.IntVar(p, name, def, usage+" (env "+env+")")
}

func (e *envFlags) float(p *float64, name, env string, def float64, usage string) {
	if v, ok := e.env(env); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			e.bad(env, v, err)
		}
		def = f
	}
	e.fs.Float64Var(p, name, def, usage+" (env "+env+")")
}

func (e *envFlags) bool(p *bool, name, env string, def bool, usage string) {
	if v, ok := e.env(env); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.bad(env, v, err)
		}
		def = b
	}
	e.fs.BoolVar(p, name, def, usage+" (env "+env+")")
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("crmintegrator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: crmintegrator [flags]\n\nDelivers contacts from readers (net/rpc, %s) to the CRM's JSON API.\nEvery flag defaults to its environment variable. See docs/integrator.md.\n\n", crmrpc.ServiceV1)
		profiling.PrintDefaults(fs)
	}
	o := &options{}
	o.cpuProfile = profiling.Flag(fs)
	c := &o.cfg
	e := &envFlags{fs: fs, getenv: getenv}
	e.str(&o.listen, "listen", "INTEGRATOR_LISTEN", "127.0.0.1:4004", "RPC `address` to listen on")
	e.str(&o.httpAddr, "http", "INTEGRATOR_HTTP", "127.0.0.1:9464", "`address` of the side port with /healthz, /readyz, /metrics; \"\" or \"off\" disables it")
	e.url(&o.crmURL, "crm-url", "CRM_URL", "base `URL` of the CRM API (required); -h shows it without password or query values")
	e.secret(&o.crmToken, "crm-token", "CRM_TOKEN", "bearer `token` for the CRM; prefer -crm-token-file or the environment over the command line")
	e.str(&o.crmTokenFile, "crm-token-file", "CRM_TOKEN_FILE", "", "read the CRM token from this `file`")
	e.str(&c.API, "crm-api", "CRM_API", "generic", "the CRM's `API`: generic (docs/crm-api.md), hubspot (docs/crm/hubspot.md) or salesforce (docs/crm/salesforce.md)")
	e.str(&c.CRMIDField, "crm-id-field", "CRM_ID_FIELD", "", "the CRM `field` that holds the dedup key (hubspot: a contact property with unique values, default external_id; salesforce: a unique External ID field, default External_Id__c)")
	e.str(&c.CRMObject, "crm-object", "CRM_OBJECT", "", "salesforce: the sObject records are written to (default Contact)")
	e.str(&c.CRMAPIVersion, "crm-api-version", "CRM_API_VERSION", "", "salesforce: the REST API `version` (default 60.0)")
	e.str(&o.crmReserve, "crm-reserve", "CRM_RESERVE", "10%", "salesforce: `share` of the org's daily API allocation kept for its other integrations, as 10% or 0.10; below it the daemon stops sending (the readers exit 4)")
	e.str(&c.CRMWrite, "crm-write", "CRM_WRITE", "", "upsert or create: upsert (the default where the CRM has it) is resend-safe; create looks contacts up before any resend")
	e.str(&o.quotaZone, "crm-quota-reset", "CRM_QUOTA_RESET", "UTC", "time `zone` whose midnight resets the CRM's daily allocation, where the CRM does not say (hubspot: the account's time zone)")
	e.dur(&c.CRMTimeout, "crm-timeout", "CRM_TIMEOUT", 10*time.Second, "timeout of one CRM request")
	e.int(&c.CRMConcurrency, "crm-concurrency", "CRM_CONCURRENCY", 8, "most requests in flight to the CRM")
	e.float(&c.CRMRate, "crm-rate", "CRM_RATE", 0, "hard cap on CRM requests per second; 0: adaptive only")
	e.bool(&c.Idempotency, "crm-idempotency", "CRM_IDEMPOTENCY", false, "the CRM honours Idempotency-Key: after an ambiguous answer resend the same body with the same key instead of looking contacts up")
	e.int(&c.MaxBatch, "max-batch", "INTEGRATOR_MAX_BATCH", 0, "contacts per CRM batch request; 0: the most the CRM takes (generic and hubspot 100, salesforce 200)")
	e.int(&c.MaxRecords, "max-records", "INTEGRATOR_MAX_RECORDS", crmrpc.DefaultMaxRecords, "most records one Deliver or Lookup call may carry")
	e.int(&c.MaxFieldBytes, "max-field-bytes", "INTEGRATOR_MAX_FIELD_BYTES", 4096, "longest field, in bytes, a record may carry")
	e.dur(&c.CallBudget, "call-budget", "INTEGRATOR_CALL_BUDGET", 20*time.Second, "time one call may spend on internal retries before answering Retry")
	e.int(&c.MaxAttempts, "max-attempts", "INTEGRATOR_MAX_ATTEMPTS", 4, "rounds (resends, lookups) per batch within one call")
	e.dur(&c.MaxCallWait, "max-call-wait", "INTEGRATOR_MAX_CALL_WAIT", 300*time.Millisecond, "longest wait a call sleeps before another round; longer waits are answered Retry at once (negative: only -call-budget limits them)")
	e.int(&c.BreakerThreshold, "breaker-threshold", "INTEGRATOR_BREAKER_THRESHOLD", 20, "consecutive CRM failures (5xx, timeouts) that open the circuit breaker")
	e.dur(&c.BreakerCooldown, "breaker-cooldown", "INTEGRATOR_BREAKER_COOLDOWN", 10*time.Second, "how long the open breaker refuses requests before a probe")
	e.secret(&o.rpcToken, "rpc-token", "INTEGRATOR_RPC_TOKEN", "shared `token` readers must present; empty: none")
	e.str(&o.rpcTokenFile, "rpc-token-file", "INTEGRATOR_RPC_TOKEN_FILE", "", "read the RPC token from this `file`; wins over -rpc-token")
	e.str(&o.tlsCert, "tls-cert", "INTEGRATOR_TLS_CERT", "", "certificate `file` (PEM): serve RPC over TLS")
	e.str(&o.tlsKey, "tls-key", "INTEGRATOR_TLS_KEY", "", "private key `file` (PEM) of -tls-cert")
	e.str(&o.tlsClientCA, "tls-client-ca", "INTEGRATOR_TLS_CLIENT_CA", "", "CA `file` (PEM): require client certificates signed by it (mutual TLS)")
	e.dur(&c.IdleTimeout, "idle-timeout", "INTEGRATOR_IDLE_TIMEOUT", 5*time.Minute, "close RPC connections idle this long")
	e.int(&c.MaxConns, "max-conns", "INTEGRATOR_MAX_CONNS", 256, "most RPC connections at once; the oldest unauthenticated one makes way for a new one")
	e.int(&c.MaxConnsPerPeer, "max-conns-per-peer", "INTEGRATOR_MAX_CONNS_PER_PEER", 32, "most RPC connections at once from one IP address")
	e.dur(&c.HandshakeTimeout, "handshake-timeout", "INTEGRATOR_HANDSHAKE_TIMEOUT", 5*time.Second, "time a new connection has for TLS and the token handshake")
	e.dur(&c.ReadTimeout, "read-timeout", "INTEGRATOR_READ_TIMEOUT", 30*time.Second, "time one RPC message may take to arrive once it has begun")
	e.int(&c.MaxMessageBytes, "max-message-bytes", "INTEGRATOR_MAX_MESSAGE_BYTES", 16<<20, "largest RPC message (a Deliver's block), in bytes; checked before it is read")
	e.dur(&o.grace, "grace", "INTEGRATOR_GRACE", 30*time.Second, "on SIGTERM/SIGINT, time for calls in flight to finish")
	e.str(&o.logFormat, "log-format", "INTEGRATOR_LOG_FORMAT", "text", "log format: text or json")
	e.str(&o.logLevel, "log-level", "INTEGRATOR_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.version, "version", false, "print the version, commit and build time, and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.version {
		return o, nil // nothing else matters
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(e.errs) > 0 {
		return nil, errors.Join(e.errs...)
	}
	for _, f := range e.secrets {
		f()
	}
	if o.crmURL == "" && c.API == "hubspot" {
		o.crmURL = hubspot.DefaultBaseURL
	}
	if o.crmURL == "" && c.API == "salesforce" {
		return nil, errors.New("no CRM url: set -crm-url or CRM_URL to the org's instance URL, https://MyDomainName.my.salesforce.com")
	}
	if o.crmURL == "" {
		return nil, errors.New("no CRM url: set -crm-url or CRM_URL")
	}
	reserve, err := parseShare(o.crmReserve)
	if err != nil {
		return nil, fmt.Errorf("-crm-reserve %q: %w", o.crmReserve, err)
	}
	c.CRMReserve = reserve
	if o.tlsClientCA != "" && (o.tlsCert == "" || o.tlsKey == "") {
		return nil, errors.New("-tls-client-ca needs -tls-cert and -tls-key")
	}
	zone, err := time.LoadLocation(o.quotaZone)
	if err != nil {
		return nil, fmt.Errorf("-crm-quota-reset %q: want a time zone such as UTC or America/New_York: %w", o.quotaZone, err)
	}
	c.QuotaZone = zone
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
		pem, err := os.ReadFile(o.tlsClientCA)
		if err != nil {
			return nil, fmt.Errorf("read tls client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls client ca %s: no PEM certificate found", o.tlsClientCA)
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
		return usageError{err}
	}
	if o.version {
		fmt.Fprintln(stdout, buildinfo.Read().String("crmintegrator"))
		return nil
	}
	log, err := logging.New(o.logFormat, o.logLevel, stderr)
	if err != nil {
		return usageError{err}
	}
	runtimecfg.SetGC(getenv, 0)
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
		if cfg.CRMToken, err = readTokenFile("crm token file", o.crmTokenFile); err != nil {
			return err
		}
	}
	if o.rpcTokenFile != "" {
		if cfg.RPCToken, err = readTokenFile("rpc token file", o.rpcTokenFile); err != nil {
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

// readTokenFile reads a token from path, without the spaces and line break
// around it. An empty file is an error: for the RPC token it would silently
// mean no authentication at all.
func readTokenFile(what, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s %s is empty", what, path)
	}
	return tok, nil
}

// exitCodeOf is the code the process exits with after run returned err:
// 0, 2 for a usage error, 1 for anything else.
func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

// usageError is a bad flag or environment value: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }
func (e usageError) ExitCode() int { return 2 }
