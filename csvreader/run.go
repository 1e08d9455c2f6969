package main

import (
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	_ "github.com/lib/pq"

	"crmsync/csvreader/export"
	"crmsync/csvreader/importer"
	"crmsync/csvreader/ledger"
	"crmsync/csvreader/replay"
	"crmsync/db"
	"crmsync/shared/buildinfo"
	"crmsync/shared/cli"
	"crmsync/shared/crmrpc"
	"crmsync/shared/logging"
	"crmsync/shared/profiling"
	"crmsync/shared/redact"
	"crmsync/shared/runtimecfg"
)

// Exit codes: cli's 0, 1 and 2, and two of csvreader's own.
const (
	exitOK     = cli.ExitOK
	exitFatal  = cli.ExitFatal
	exitUsage  = cli.ExitUsage
	exitFailed = 3 // finished, but some records failed after all retries
	exitQuota  = 4 // stopped cleanly: the CRM's daily quota is spent
)

type options struct {
	integrators    string
	shard          string
	shardOf        importer.Shard
	changed        string
	changedMode    ledger.ChangeMode
	asOf           string
	asOfTime       time.Time
	mapFile        string
	mapping        *export.Mapping
	phoneRegion    string
	dsn            string
	workers        int
	blockSize      int
	rejects        string
	skipped        string
	report         string
	key            string
	dropColumns    string
	delimiter      string
	encoding       string
	trustQuotes    bool
	maxRejects     int
	maxRejectRatio float64
	maxAttempts    int
	maxRetryTime   time.Duration
	dbRetryTime    time.Duration
	dryRun         bool
	progress       bool
	progressEvery  time.Duration
	rpcToken       string
	rpcTokenFile   string
	tlsOn          bool
	tlsCA          string
	tlsCert        string
	tlsKey         string
	tlsServerName  string
	callTimeout    time.Duration
	logFormat      string
	logLevel       string
	files          []string
	progressSet    bool
	cpuProfile     *string
	version        bool
	httpAddr       string
}

const usageHead = `Usage: csvreader [flags] FILE [FILE...]
       csvreader replay [flags] DIR

Streams customer exports (CSV, optionally gzipped; "-" reads stdin) to the CRM
through crmintegrator, exactly once, and records every customer the CRM
accepted in PostgreSQL. Rows that cannot be delivered go to the rejects file
with the reason; rerunning the same command resumes where a run stopped and
never sends a customer twice.

Exit codes: 0 every row accounted for, none failed; 1 fatal error;
2 usage error; 3 finished, but some records failed after all retries;
4 stopped cleanly because the CRM's daily quota is spent: rerun after the
time it says.

csvreader replay replays sample exports through csvreader, crmintegrator and
fakecrm and compares the outcome with golden files, for CI: see
csvreader replay -h. To import a file named "replay", write ./replay (or
put -- or any flag before it).
`

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	f := cli.NewFlags("csvreader", usageHead, getenv, stderr)
	fs := f.FlagSet()
	f.String(&o.integrators, "integrator", "CSVREADER_INTEGRATOR", "127.0.0.1:4004", "`ADDR[,ADDR...]` of crmintegrator; blocks go to the one with the fewest in flight (ties: in turn), and a daemon that is down is left out until it is back")
	f.String(&o.shard, "shard", "CSVREADER_SHARD", "", "`I/N`: this reader is shard I (1 to N) of N readers splitting the files by key (FNV-1a 64 of the key, mod N, is I-1); each reads every row and sends only its own keys; empty: the whole file")
	f.Int(&o.workers, "workers", "CSVREADER_WORKERS", 12, "concurrent blocks in flight to the integrator")
	f.Int(&o.blockSize, "block-size", "CSVREADER_BLOCK_SIZE", 1000, "records per block (per integrator call); capped by the integrator's limit")
	f.String(&o.rejects, "rejects", "CSVREADER_REJECTS", "", "rejects file `PATH` (default: <file>.rejects.csv in the current directory)")
	f.String(&o.skipped, "skipped", "CSVREADER_SKIPPED", "", "optional `PATH` listing every row not sent (duplicate, unchanged, stale, changed) and every update, with the changed fields and why")
	f.String(&o.changed, "changed", "CSVREADER_CHANGED", "update", "what to do with a key the CRM holds with other content: update (send the change), skip (send nothing), or report (count and list it in -skipped, send nothing)")
	f.String(&o.asOf, "as-of", "CSVREADER_AS_OF", "", "the export's time, `RFC3339` (default: the files' modification time): a change older than what the CRM holds is stale and not sent")
	f.String(&o.report, "report", "CSVREADER_REPORT", "", "write the final report as JSON to `PATH`")
	f.String(&o.key, "key", "CSVREADER_KEY", "", "`COLUMN` holding the dedup key, sent as the CRM's external_id (default: the mapping's key, else id, else a column named like one: Record ID, Customer ID, …)")
	f.String(&o.mapFile, "map", "CSVREADER_MAP", "", "mapping `FILE` (JSON, docs/mapping.md): which column goes to which contact field or CRM property, required fields, empty=keep|clear, normalisation")
	f.String(&o.phoneRegion, "phone-region", "CSVREADER_PHONE_REGION", "", "normalise phone numbers to E.164, reading national numbers as of this `REGION` (ISO 3166 code: GB, US, DE, …); an invalid number goes to the rejects file")
	f.String(&o.dropColumns, "drop-columns", "CSVREADER_DROP_COLUMNS", "", "`COLUMN[,COLUMN...]` whose values are not sent (columns the CRM has no field for)")
	f.String(&o.delimiter, "delimiter", "CSVREADER_DELIMITER", "", "field delimiter: one character, or \"tab\" (default: a first line \"sep=X\" names it, else ',')")
	f.String(&o.encoding, "encoding", "CSVREADER_ENCODING", "utf-8", "text encoding of the files: utf-8, windows-1252, latin-1, utf-16, utf-16le or utf-16be (a byte order mark decides by itself)")
	f.Bool(&o.trustQuotes, "trust-quotes", "CSVREADER_TRUST_QUOTES", false, "deliver rows whose quoted field spans lines that look like rows, instead of rejecting them as runaway_quote (still counted as suspect)")
	f.Int(&o.maxRejects, "max-rejects", "CSVREADER_MAX_REJECTS", 0, "stop once more than `N` rows are rejected; 0 means no limit")
	f.Int(&o.maxAttempts, "max-attempts", "CSVREADER_MAX_ATTEMPTS", 10, "sends per record before it is reported as failed")
	f.Duration(&o.maxRetryTime, "max-retry-time", "CSVREADER_MAX_RETRY_TIME", 10*time.Minute, "time from a record's first send after which it is reported as failed")
	f.Duration(&o.dbRetryTime, "db-retry-time", "CSVREADER_DB_RETRY_TIME", 2*time.Minute, "how long to ride out an unavailable database before giving up")
	f.Bool(&o.dryRun, "dry-run", "CSVREADER_DRY_RUN", false, "print the column mapping, validate, and count new / changed / unchanged / stale / invalid rows; no CRM call")
	f.Bool(&o.progress, "progress", "CSVREADER_PROGRESS", false, "print progress to stderr (default: on when stderr is a terminal)")
	f.Duration(&o.progressEvery, "progress-interval", "CSVREADER_PROGRESS_INTERVAL", 5*time.Second, "time between progress lines")
	f.String(&o.rpcTokenFile, "rpc-token-file", "CSVREADER_RPC_TOKEN_FILE", "", "read the integrator's token from `FILE`; wins over -rpc-token")
	f.Bool(&o.tlsOn, "tls", "CSVREADER_TLS", false, "connect to the integrator over TLS")
	f.String(&o.tlsCA, "tls-ca", "CSVREADER_TLS_CA", "", "PEM `FILE` of CAs that sign the integrator's certificate (implies -tls)")
	f.String(&o.tlsCert, "tls-cert", "CSVREADER_TLS_CERT", "", "client certificate PEM `FILE`, for mutual TLS (implies -tls)")
	f.String(&o.tlsKey, "tls-key", "CSVREADER_TLS_KEY", "", "client key PEM `FILE`, for mutual TLS")
	f.String(&o.tlsServerName, "tls-server-name", "CSVREADER_TLS_SERVER_NAME", "", "expected name in the integrator's certificate (default: the address's host)")
	f.Duration(&o.callTimeout, "call-timeout", "CSVREADER_CALL_TIMEOUT", 0, "longest wait for one integrator call; 0 takes the integrator's advice")
	f.String(&o.logFormat, "log-format", "CSVREADER_LOG_FORMAT", "text", "log format: text or json")
	f.String(&o.logLevel, "log-level", "CSVREADER_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	f.String(&o.httpAddr, "http", "CSVREADER_HTTP", "", "serve /metrics (Prometheus text) on `ADDR` while the run goes on, e.g. 127.0.0.1:9465; empty: none")
	f.URL(&o.dsn, "db", "DATABASE_URL", "", "PostgreSQL `DSN` (postgres://user:pass@host:port/db); prefer the environment variable, a command line is visible in ps")
	f.Float(&o.maxRejectRatio, "max-reject-ratio", "CSVREADER_MAX_REJECT_RATIO", 0.5, fmt.Sprintf("stop once more than %d rows are rejected and they are more than this share of the rows read; 0 means no limit", importer.RejectRatioMinimum))
	f.Secret(&o.rpcToken, "rpc-token", "CSVREADER_RPC_TOKEN", "shared `token` the integrator requires, if any; prefer the environment variable or -rpc-token-file, a command line is visible in ps")
	o.cpuProfile = profiling.Flag(fs)
	fs.BoolVar(&o.version, "version", false, "print the version, commit and build time, and exit")
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, &cli.Error{Code: exitOK}
		}
		return nil, err
	}
	if o.version {
		return nil, errVersion
	}
	o.progressSet = f.Given("progress")
	o.files = fs.Args()
	usage := func(msg string) (*options, error) {
		return nil, &cli.Error{Code: exitUsage, Err: fmt.Errorf("%s (see csvreader -h)", msg)}
	}
	switch {
	case len(o.files) == 0:
		return usage("no export file given")
	case o.dsn == "":
		return usage("no database: set -db or DATABASE_URL")
	case o.workers < 1 || o.blockSize < 1:
		return usage("-workers and -block-size must be at least 1")
	case o.maxAttempts < 1:
		return usage("-max-attempts must be at least 1")
	case o.maxRejects < 0 || o.maxRejectRatio < 0 || o.maxRejectRatio > 1:
		return usage("-max-rejects must be 0 or more, -max-reject-ratio between 0 and 1")
	}
	if _, err := export.ParseEncoding(o.encoding); err != nil {
		return usage("-encoding: " + strings.TrimPrefix(err.Error(), export.ErrEncoding.Error()+": "))
	}
	if _, err := parseDelimiter(o.delimiter); err != nil {
		return usage(err.Error())
	}
	var err error
	if o.shardOf, err = importer.ParseShard(o.shard); err != nil {
		return usage(fmt.Sprintf("-shard %q (or CSVREADER_SHARD): %v", o.shard, err))
	}
	if o.phoneRegion != "" {
		if o.phoneRegion, err = export.ParsePhoneRegion(o.phoneRegion); err != nil {
			return usage(fmt.Sprintf("-phone-region (or CSVREADER_PHONE_REGION): %v", err))
		}
	}
	if o.changedMode, err = ledger.ParseChangeMode(o.changed); err != nil {
		return usage(fmt.Sprintf("-changed (or CSVREADER_CHANGED): %v", err))
	}
	if o.asOf != "" {
		if o.asOfTime, err = time.Parse(time.RFC3339, o.asOf); err != nil {
			return usage(fmt.Sprintf("-as-of %q (or CSVREADER_AS_OF): not an RFC 3339 time such as 2026-12-01T02:00:00Z", o.asOf))
		}
	}
	if o.tlsCA != "" || o.tlsCert != "" {
		o.tlsOn = true
	}
	if o.rpcTokenFile != "" {
		var err error
		if o.rpcToken, err = cli.ReadSecret(o.rpcTokenFile, "rpc token"); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// parseDelimiter reads -delimiter; "" is 0, which lets the file's "sep="
// line choose, else ','.
func parseDelimiter(s string) (rune, error) {
	switch s {
	case "":
		return 0, nil
	case "tab", `\t`:
		return '\t', nil
	}
	r := []rune(s)
	if len(r) != 1 || r[0] == '"' || r[0] == '\n' || r[0] == '\r' {
		return 0, fmt.Errorf("-delimiter %q: want one character other than a quote or newline", s)
	}
	return r[0], nil
}

// runReplay is `csvreader replay`, with its exit codes (0 match, 1
// differs, 2 could not run) and its messages named as replay's.
func runReplay(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	err := replay.Run(ctx, args, getenv, stdout, stderr)
	var re *replay.Error
	if err == nil || !errors.As(err, &re) {
		return err
	}
	if re.Err == nil {
		return &cli.Error{Code: re.Code}
	}
	return &cli.Error{Code: re.Code, Err: fmt.Errorf("replay: %w", re.Err)}
}

// errVersion is parseFlags' answer to -version.
var errVersion = errors.New("version asked")

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) (err error) {
	// Only a first argument: "csvreader -- replay" and "csvreader ./replay"
	// import a file of that name.
	if len(args) > 0 && args[0] == "replay" {
		return runReplay(ctx, args[1:], getenv, stdout, stderr)
	}
	o, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, errVersion) {
		fmt.Fprintln(stdout, buildinfo.Read().String("csvreader"))
		return nil
	}
	if err != nil {
		return err
	}
	// A run that stops before its report is written still leaves one,
	// holding the error: a report left by an earlier run, or none at all,
	// could pass for this run's success.
	reported := false
	defer func() {
		if err != nil && !reported && o.report != "" {
			if werr := writeReport(o.report, &importer.Report{Files: o.files, Error: err.Error()}); werr != nil {
				err = errors.Join(err, werr)
			}
		}
	}()
	// A bad mapping file stops the run before anything is read or sent.
	if o.mapFile != "" {
		if o.mapping, err = export.LoadMapping(o.mapFile); err != nil {
			return err
		}
	}
	// On a terminal, progress is one status line that the logs write
	// around; elsewhere (a pipe, a file, CI) a plain line per interval.
	var term *terminal
	if isTerminal(stderr) && ((o.progressSet && o.progress) || !o.progressSet) {
		term = &terminal{w: stderr}
		stderr = term
	}
	log, err := logging.New(o.logFormat, o.logLevel, stderr)
	if err != nil {
		return &cli.Error{Code: exitUsage, Err: err}
	}
	delim, _ := parseDelimiter(o.delimiter)
	// A soft memory limit of a fixed allowance plus ~1 KiB per record the
	// pipeline may hold in flight (and as many again waiting out a dead
	// run's calls).
	runtimecfg.SetGC(getenv, 200, 48<<20+2*int64(importer.MaxInFlight(o.workers, o.blockSize))<<10)
	stopProfile, err := profiling.StartCPU(*o.cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()

	d, err := openDB(ctx, o.dsn)
	if err != nil {
		return err
	}
	defer d.Close()

	cfg := importer.Config{
		Files: o.files,
		Export: export.Options{Delimiter: delim, Key: o.key, Encoding: o.encoding, TrustQuotes: o.trustQuotes, Drop: splitList(o.dropColumns),
			Mapping: o.mapping, PhoneRegion: o.phoneRegion,
			Notify: func(n export.Notice) {
				level := slog.LevelWarn // something in the file the operator should look at
				if n.Code == export.NoticeEncoding || n.Code == export.NoticeSepLine {
					level = slog.LevelInfo // what they asked for
				}
				log.Log(ctx, level, n.Message, "file", n.File, "line", n.Line, "what", n.Code)
			}},
		Workers:        o.workers,
		BlockSize:      o.blockSize,
		MaxAttempts:    o.maxAttempts,
		MaxRetryTime:   o.maxRetryTime,
		MaxRejects:     o.maxRejects,
		MaxRejectRatio: o.maxRejectRatio,
		DBRetryTime:    o.dbRetryTime,
		RejectsPath:    o.rejects,
		SkippedPath:    o.skipped,
		Changed:        o.changedMode,
		AsOf:           o.asOfTime,
		DryRun:         o.dryRun,
		Shard:          o.shardOf,
		ProgressEvery:  o.progressEvery,
		Logger:         log,
	}
	switch {
	case term != nil:
		cfg.Progress = term
	case o.progressSet && o.progress:
		cfg.Progress = stderr
	}

	var crm importer.Deliverer
	if !o.dryRun {
		// The run's ledger check that it still owns what it sends is asked
		// right before every Deliver is written; the run starts after the
		// client, so the client asks through this.
		var gate atomic.Pointer[func(context.Context, string) error]
		sendGate := func(ctx context.Context, instance string) error {
			if g := gate.Load(); g != nil {
				return (*g)(ctx, instance)
			}
			return nil
		}
		cfg.SendGate = func(f func(context.Context, string) error) { gate.Store(&f) }
		client, err := dialIntegrator(ctx, o, sendGate)
		if err != nil {
			return err
		}
		defer client.Close()
		cfg.Lookups = client.Lookups
		cfg.Instance = client.Instance
		hellos, err := client.HelloAll(ctx)
		if err != nil {
			return fmt.Errorf("integrator at %s: %w", o.integrators, err)
		}
		hello := strictest(hellos)
		if hello.MaxRecords > 0 && cfg.BlockSize > hello.MaxRecords {
			cfg.BlockSize = hello.MaxRecords
		}
		if hello.MaxFieldBytes > 0 {
			cfg.Export.MaxFieldBytes = hello.MaxFieldBytes
		}
		if hello.Fields != nil {
			cfg.CheckColumns = checkColumns(hello.API, hello.Fields)
		}
		crm = client
		if hello.CallTimeout > 0 {
			cfg.CallBound = hello.CallTimeout + importer.CallBoundMargin
		}
		if o.callTimeout == 0 {
			// The daemon says how long a call may take; past that (and a
			// margin) the outcome is unknown and the block is resent with
			// MaybeSent, rather than waiting forever on a wedged daemon.
			wait := 2 * time.Minute
			if hello.CallTimeout > 0 {
				wait = hello.CallTimeout + 30*time.Second
			}
			crm = timedDeliverer{client, wait}
		}
	}

	if o.httpAddr != "" {
		stop, _, err := serveMetrics(o.httpAddr, &cfg, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	rep, runErr := importer.Run(ctx, cfg, d, crm)
	if runErr == nil && rep.Rows == 0 && !rep.Interrupted {
		// A file of a header alone, or one whose lines all ended up in the
		// header (line endings it did not split on), is not an import.
		runErr = fmt.Errorf("no rows: %s held a header but no data rows after it (%d blank rows, %d repeated headers); nothing was sent. Is it the right file?",
			strings.Join(o.files, ", "), rep.BlankRows, rep.RepeatedHeaders)
	}
	if runErr != nil {
		rep.Error = runErr.Error()
	}
	printSummary(stdout, rep)
	if o.report != "" {
		reported = true
		if err := writeReport(o.report, rep); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	switch {
	case runErr != nil:
		return runErr
	case rep.QuotaExhaustedUntil != "":
		why := ""
		if rep.QuotaReason != "" {
			why = "; the integrator said: " + rep.QuotaReason
		}
		return &cli.Error{Code: exitQuota, Err: fmt.Errorf("CRM quota exhausted; rerun after %s to resume (%d rows read, %d left unfinished)%s", rep.QuotaExhaustedUntil, rep.Rows, rep.Unfinished, why)}
	case rep.Interrupted:
		return &cli.Error{Code: exitFatal, Err: fmt.Errorf("interrupted: %d rows read, %d left unfinished; run the same command again to resume", rep.Rows, rep.Unfinished)}
	case rep.Failed > 0:
		return &cli.Error{Code: exitFailed, Err: fmt.Errorf("%d records failed after all retries; they are in %s and a rerun retries them", rep.Failed, rep.RejectsFile)}
	}
	return nil
}

// serveMetrics serves the run's /metrics on addr until stop; the run hands
// its snapshot over when it starts (importer.Config.OnStart).
func serveMetrics(addr string, cfg *importer.Config, log *slog.Logger) (stop func(), bound string, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", &cli.Error{Code: exitUsage, Err: fmt.Errorf("-http %s: %w", addr, err)}
	}
	var snap atomic.Pointer[func() importer.Snapshot]
	cfg.OnStart = func(f func() importer.Snapshot) { snap.Store(&f) }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if f := snap.Load(); f != nil {
			(*f)().WriteMetrics(w)
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	log.Info("metrics served", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, ln.Addr().String(), nil
}

// strictest combines the daemons' Hello replies into the limits every one
// of them accepts: the smallest MaxRecords and MaxFieldBytes, the longest
// CallTimeout (the run's call bound must cover every daemon's calls), the
// fields all of them have.
func strictest(hs []crmrpc.DaemonHello) crmrpc.HelloReply {
	out := *hs[0].HelloReply
	for _, h := range hs[1:] {
		if h.MaxRecords > 0 && (out.MaxRecords == 0 || h.MaxRecords < out.MaxRecords) {
			out.MaxRecords = h.MaxRecords
		}
		if h.MaxFieldBytes > 0 && (out.MaxFieldBytes == 0 || h.MaxFieldBytes < out.MaxFieldBytes) {
			out.MaxFieldBytes = h.MaxFieldBytes
		}
		out.CallTimeout = max(out.CallTimeout, h.CallTimeout)
		switch {
		case h.Fields == nil:
		case out.Fields == nil:
			out.Fields = h.Fields
		default:
			has := make(map[string]bool, len(h.Fields))
			for _, f := range h.Fields {
				has[f] = true
			}
			var both []string
			for _, f := range out.Fields {
				if has[f] {
					both = append(both, f)
				}
			}
			out.Fields = both
		}
	}
	return out
}

// splitList is a comma separated list, trimmed, without empty entries.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// checkColumns refuses attribute columns the CRM has no field for, before
// anything is sent: the CRM would refuse every batch naming them (HubSpot:
// 400 PROPERTY_DOESNT_EXIST), row after row.
func checkColumns(api string, fields []string) func([]string) error {
	known := make(map[string]bool, len(fields))
	lower := make(map[string]string, len(fields))
	for _, f := range fields {
		known[f] = true
		lower[strings.ToLower(f)] = f
	}
	// Salesforce's API names ignore case: the connector writes a column to
	// the field of its name in any case.
	anyCase := api == "salesforce"
	return func(attrs []string) error {
		var missing, hints []string
		for _, a := range attrs {
			if _, ok := lower[strings.ToLower(a)]; known[a] || (anyCase && ok) {
				continue
			}
			missing = append(missing, a)
			if f, ok := lower[strings.ToLower(strings.ReplaceAll(a, " ", ""))]; ok {
				hints = append(hints, fmt.Sprintf("%q is the CRM's %q", a, f))
			}
		}
		if len(missing) == 0 {
			return nil
		}
		hint := ""
		if len(hints) > 0 {
			hint = " (" + strings.Join(hints, "; ") + ")"
		}
		return &cli.Error{Code: exitFatal, Err: fmt.Errorf("the CRM (%s) has no field for the column(s) %q; nothing was sent. Create them in the CRM (HubSpot: a contact property of that internal name; Salesforce: a field of that API name the token's user may edit), rename the columns to fields it has%s, or leave them out with -drop-columns %q",
			api, missing, hint, strings.Join(missing, ","))}
	}
}

func openDB(ctx context.Context, dsn string) (*sql.DB, error) {
	d, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, fmt.Errorf("database: %w", redactErr(err, dsn))
	}
	d.SetMaxOpenConns(32)
	d.SetMaxIdleConns(32)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := d.PingContext(pctx); err != nil {
		d.Close()
		return nil, fmt.Errorf("database %s: %w (check -db / DATABASE_URL)", safeDSN(dsn), redactErr(err, dsn))
	}
	if _, err := db.Migrate(ctx, d); err != nil {
		d.Close()
		return nil, fmt.Errorf("database %s: %w", safeDSN(dsn), redactErr(err, dsn))
	}
	return d, nil
}

// safeDSN names the database without its password.
func safeDSN(dsn string) string { return redact.URL(dsn) }

// redact removes the DSN's secrets from an error a driver built from it,
// malformed DSNs included.
func redactErr(err error, dsn string) error { return redact.Error(err, dsn) }

func dialIntegrator(ctx context.Context, o *options, sendGate func(context.Context, string) error) (*crmrpc.Client, error) {
	cfg := crmrpc.ClientConfig{Token: o.rpcToken, CallTimeout: o.callTimeout, SendGate: sendGate}
	cfg.Addrs = splitList(o.integrators)
	if o.tlsOn {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.tlsServerName}
		if o.tlsCA != "" {
			pool, err := cli.CertPool(o.tlsCA, "-tls-ca")
			if err != nil {
				return nil, err
			}
			tc.RootCAs = pool
		}
		if o.tlsCert != "" {
			cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
			if err != nil {
				return nil, fmt.Errorf("-tls-cert/-tls-key: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		cfg.TLS = tc
	}
	c, err := crmrpc.Dial(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("integrator at %s: %w (is crmintegrator running? see -integrator)", o.integrators, err)
	}
	return c, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func printSummary(w io.Writer, r *importer.Report) {
	if r.Rows == 0 && r.Error != "" {
		// Nothing was read: a table of zeros would look like an empty success.
		run := ""
		if r.RunID > 0 {
			run = fmt.Sprintf(" (run %d)", r.RunID)
		}
		fmt.Fprintf(w, "nothing was sent: the run%s stopped before any row was read (see the error below)\n", run)
		return
	}
	shard := ""
	if r.Shard != "" {
		shard = fmt.Sprintf(" · %d of other shards (this is shard %s)", r.OtherShard, r.Shard)
	}
	if r.DryRun {
		if len(r.Mapping) > 0 {
			fmt.Fprintln(w, "columns:")
			for _, m := range r.Mapping {
				to := m.Field
				if to == "" {
					to = "(not sent)"
				}
				opts := m.Source
				if m.Options != "" {
					opts += "; " + m.Options
				}
				fmt.Fprintf(w, "  %-24s → %s (%s)\n", m.Column, to, opts)
			}
		}
		fmt.Fprintf(w, "dry run: %d rows · %d valid · %d new · %d changed · %d unchanged · %d stale · %d duplicates in file · %d invalid%s\n",
			r.Rows, r.Valid, r.New, r.Changed, r.Unchanged, r.Stale, r.DuplicatesInFile, r.RejectedInvalid, shard)
		return
	}
	fmt.Fprintf(w, "run %d: %d rows in %.1fs (%.0f rows/s)\n", r.RunID, r.Rows, r.ElapsedSeconds, r.RowsPerSecond)
	if r.Shard != "" {
		fmt.Fprintf(w, "  other shards       %d (shard %s: their readers send them)\n", r.OtherShard, r.Shard)
	}
	fmt.Fprintf(w, "  created            %d\n", r.Created)
	fmt.Fprintf(w, "  updated            %d\n", r.Updated)
	fmt.Fprintf(w, "  unchanged          %d\n", r.Unchanged)
	if r.Stale > 0 {
		fmt.Fprintf(w, "  stale              %d (the CRM holds newer versions; as of %s)\n", r.Stale, r.AsOf)
	}
	if r.Changed > 0 {
		fmt.Fprintf(w, "  changed, not sent  %d (-changed skip or report)\n", r.Changed)
	}
	fmt.Fprintf(w, "  duplicates in file %d\n", r.DuplicatesInFile)
	fmt.Fprintf(w, "  invalid (rejected) %d\n", r.RejectedInvalid)
	fmt.Fprintf(w, "  rejected by CRM    %d\n", r.RejectedByCRM)
	fmt.Fprintf(w, "  failed             %d\n", r.Failed)
	if r.Unfinished > 0 {
		fmt.Fprintf(w, "  unfinished         %d (interrupted; rerun to resume)\n", r.Unfinished)
	}
	if r.QuotaExhaustedUntil != "" {
		fmt.Fprintf(w, "  CRM quota spent    until %s: rerun then to resume\n", r.QuotaExhaustedUntil)
	}
	if r.Recovered > 0 {
		fmt.Fprintf(w, "  recovered          %d (claims of an earlier, crashed run)\n", r.Recovered)
	}
	if r.Suspect > 0 {
		fmt.Fprintf(w, "  suspect            %d (a quoted field spans lines that look like rows; see the log)\n", r.Suspect)
	}
	if r.BlankRows+r.RepeatedHeaders > 0 {
		fmt.Fprintf(w, "  not rows           %d blank, %d repeated headers (skipped)\n", r.BlankRows, r.RepeatedHeaders)
	}
	if r.RejectedInvalid+r.RejectedByCRM+r.Failed > 0 {
		fmt.Fprintf(w, "  rejects file       %s\n", r.RejectsFile)
	}
}

func writeReport(path string, r *importer.Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return os.Rename(tmp, path)
}

// timedDeliverer bounds every Deliver call.
type timedDeliverer struct {
	c    *crmrpc.Client
	wait time.Duration
}

func (t timedDeliverer) Deliver(ctx context.Context, recs []crmrpc.Record) ([]crmrpc.Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, t.wait)
	defer cancel()
	return t.c.Deliver(ctx, recs)
}
