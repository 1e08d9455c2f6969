package replay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/lib/pq"
)

// fixtureOptions is a fixture's options.json. Every field is optional: a
// folder with only an export file is a fixture.
type fixtureOptions struct {
	// Fakecrm, Integrator and Reader are extra flags for each program,
	// after replay's own (so they win): e.g. "fakecrm": ["-fail-rate",
	// "0.2", "-seed", "7"], "reader": ["-delimiter", ";"].
	Fakecrm    []string `json:"fakecrm"`
	Integrator []string `json:"integrator"`
	Reader     []string `json:"reader"`
	// Inputs are the export files given to csvreader, in order; default:
	// every file of the folder but options.json, the goldens, README* and
	// Earlier, sorted by name.
	Inputs []string `json:"inputs"`
	// Earlier is an export delivered by a first csvreader run before the
	// one under test, for "partly delivered by an earlier run". Its own
	// outcome is not compared, but it must exit 0.
	Earlier string `json:"earlier"`
	// Files are other files of the folder that the flags name (a mapping
	// file, say): copied beside the inputs, never given as inputs.
	Files []string `json:"files"`
	// EarlierReader are extra csvreader flags for the earlier run only,
	// after Reader (an older -as-of, say, for a fixture of changes).
	EarlierReader []string `json:"earlier_reader"`
	// ExitCode, when set, is the exit code the fixture must have, checked
	// even by -update so that a golden never blesses a broken run.
	ExitCode *int `json:"exit_code"`
	// Comment is for humans.
	Comment string `json:"comment"`
}

// Golden file names, next to the fixture's inputs.
const (
	optionsFile     = "options.json"
	wantExit        = "want.exit"
	wantReport      = "want.report.json"
	wantRejects     = "want.rejects.csv"
	wantCustomers   = "want.customers.jsonl"
	wantError       = "want.error"
	goldenPrefix    = "want."
	defaultFakeSeed = "1"
)

func loadOptions(dir string) (*fixtureOptions, error) {
	o := &fixtureOptions{}
	b, err := os.ReadFile(filepath.Join(dir, optionsFile))
	if errors.Is(err, os.ErrNotExist) {
		return o, nil
	}
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(o); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, optionsFile), err)
	}
	return o, nil
}

// inputFiles are the export files of the fixture, by name.
func inputFiles(dir string, o *fixtureOptions) ([]string, error) {
	if len(o.Inputs) > 0 {
		return o.Inputs, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || n == optionsFile || n == o.Earlier || slices.Contains(o.Files, n) || strings.HasPrefix(n, goldenPrefix) ||
			strings.HasPrefix(n, "README") || strings.HasPrefix(n, ".") {
			continue
		}
		files = append(files, n)
	}
	sort.Strings(files)
	return files, nil
}

// outcome is what one replay produced, normalised for comparison.
type outcome struct {
	files map[string]string // golden name → content
	log   string            // where to look when something failed
}

// replayFixture replays dir c.runs times and compares (or, with -update,
// writes) its goldens. It returns the text to print and whether it failed.
func replayFixture(ctx context.Context, c *config, dir string) (string, bool) {
	name := fixtureName(c.dir, dir)
	var out strings.Builder
	fail := func(format string, args ...any) (string, bool) {
		fmt.Fprintf(&out, "FAIL %s: %s\n", name, fmt.Sprintf(format, args...))
		return out.String(), true
	}
	o, err := loadOptions(dir)
	if err != nil {
		return fail("%v", err)
	}
	start := time.Now()
	var first *outcome
	for n := 1; n <= c.runs; n++ {
		got, err := replayOnce(ctx, c, dir, o)
		if err != nil {
			return fail("run %d: %v", n, err)
		}
		if o.ExitCode != nil && got.files[wantExit] != strconv.Itoa(*o.ExitCode)+"\n" {
			return fail("run %d: csvreader exited %s, options.json expects %d%s", n,
				strings.TrimSpace(got.files[wantExit]), *o.ExitCode, got.log)
		}
		if c.update && first == nil {
			for _, g := range goldenNames {
				if err := os.WriteFile(filepath.Join(dir, g), []byte(got.files[g]), 0o644); err != nil {
					return fail("%v", err)
				}
			}
			first = got
			continue
		}
		var diffs strings.Builder
		for _, g := range goldenNames {
			want, err := os.ReadFile(filepath.Join(dir, g))
			if errors.Is(err, os.ErrNotExist) {
				fmt.Fprintf(&diffs, "%s is missing: create the goldens with -update (make replay-update)\n", filepath.Join(dir, g))
				continue
			}
			if err != nil {
				return fail("%v", err)
			}
			if d := lineDiff(filepath.Join(name, g), "got", string(want), got.files[g]); d != "" {
				diffs.WriteString(d)
			}
		}
		if diffs.Len() > 0 {
			what := "differs from its goldens"
			if c.update {
				what = "is not deterministic: it differs from the run that wrote the goldens"
			}
			fmt.Fprintf(&out, "FAIL %s: run %d %s\n%s%s    (-keep -run '^%s$' keeps the run's outputs and logs)\n",
				name, n, what, indent(diffs.String(), "    "), got.log, filepath.Base(dir))
			return out.String(), true
		}
	}
	verb := "ok  "
	if c.update {
		verb = "wrote"
	}
	fmt.Fprintf(&out, "%s %s (%d runs, %.1fs)\n", verb, name, c.runs, time.Since(start).Seconds())
	return out.String(), false
}

var goldenNames = []string{wantExit, wantError, wantReport, wantRejects, wantCustomers}

// replayOnce brings up a database, fakecrm and the integrator, runs
// csvreader over the fixture's inputs, and collects the outcome.
func replayOnce(ctx context.Context, c *config, dir string, o *fixtureOptions) (_ *outcome, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	work, err := os.MkdirTemp("", "replay-"+filepath.Base(dir)+"-")
	if err != nil {
		return nil, err
	}
	logHint := ""
	defer func() {
		if c.keep || err != nil {
			fmt.Fprintf(c.stderr, "replay: %s: work folder kept: %s\n", dir, work)
			return
		}
		os.RemoveAll(work)
	}()
	inputs, err := inputFiles(dir, o)
	if err != nil {
		return nil, err
	}
	copyIn := append(append(slices.Clone(inputs), o.Earlier), o.Files...)
	for _, f := range copyIn {
		if f == "" {
			continue
		}
		if err := copyFile(filepath.Join(dir, f), filepath.Join(work, filepath.Base(f))); err != nil {
			return nil, fmt.Errorf("input: %w", err)
		}
	}

	dsn, drop, err := createDatabase(ctx, c.dsn, c.stderr)
	if err != nil {
		return nil, err
	}
	defer drop()

	token := randomHex(12)
	crm, err := startDaemon(ctx, work, "fakecrm", c.progs.fakecrm,
		append([]string{"-listen", "127.0.0.1:0", "-seed", defaultFakeSeed, "-hang", "200ms"}, o.Fakecrm...),
		"FAKECRM_TOKEN="+token)
	if err != nil {
		return nil, err
	}
	defer crm.stop()
	integ, err := startDaemon(ctx, work, "crmintegrator", c.progs.integrator,
		append([]string{"-listen", "127.0.0.1:0", "-http", "off", "-crm-url", "http://" + crm.addr, "-crm-timeout", "2s"}, o.Integrator...),
		"CRM_TOKEN="+token)
	if err != nil {
		return nil, err
	}
	defer integ.stop()

	reader := func(name string, extra []string, files ...string) (int, error) {
		args := append([]string{"-integrator", integ.addr, "-progress=false",
			"-report", name + ".report.json", "-rejects", name + ".rejects.csv", "-max-retry-time", "1m"}, o.Reader...)
		args = append(args, extra...)
		// The DSN goes in the environment: the log shows the command line.
		return runProgram(ctx, work, name, c.progs.reader, append(args, files...), "DATABASE_URL="+dsn)
	}
	if o.Earlier != "" {
		code, err := reader("earlier", o.EarlierReader, filepath.Base(o.Earlier))
		if err != nil {
			return nil, err
		}
		if code != 0 {
			return nil, fmt.Errorf("the earlier run (%s) exited %d, want 0; see %s/earlier.log", o.Earlier, code, work)
		}
	}
	names := make([]string, len(inputs))
	for i, f := range inputs {
		names[i] = filepath.Base(f)
	}
	code, err := reader("reader", nil, names...)
	if err != nil {
		return nil, err
	}
	if code == 1 || code == 2 {
		// Fatal and usage errors are outcomes too (a fixture may expect
		// one), but say where to look.
		logHint = fmt.Sprintf("\n    csvreader exited %d; its output:\n%s", code, indent(tail(filepath.Join(work, "reader.log"), 20), "      "))
	}

	got := &outcome{files: map[string]string{wantExit: strconv.Itoa(code) + "\n"}, log: logHint}
	if got.files[wantError], err = errorLines(filepath.Join(work, "reader.log"), work); err != nil {
		return nil, err
	}
	if got.files[wantReport], err = normaliseReport(filepath.Join(work, "reader.report.json")); err != nil {
		return nil, err
	}
	if got.files[wantRejects], err = normaliseRejects(filepath.Join(work, "reader.rejects.csv")); err != nil {
		return nil, err
	}
	if got.files[wantCustomers], err = customers(ctx, dsn); err != nil {
		return nil, err
	}
	if err := checkExactlyOnce(ctx, crm.addr, dsn); err != nil {
		return nil, err // the work folder is kept
	}
	return got, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// createDatabase creates an empty database on base's server and returns
// its DSN and a func that drops it.
func createDatabase(ctx context.Context, base string, stderr io.Writer) (string, func(), error) {
	admin, err := sql.Open("postgres", base)
	if err != nil {
		return "", nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	name := "replay_" + randomHex(6)
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name+` TEMPLATE template0`); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("create database (DATABASE_URL's user needs CREATEDB): %w", err)
	}
	drop := func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(dctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			fmt.Fprintf(stderr, "replay: drop database %s: %v\n", name, err)
		}
		admin.Close()
	}
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		drop()
		return "", nil, errors.New("DATABASE_URL must be a URL (postgres://user:pass@host:port/db)")
	}
	u.Path = "/" + name
	return u.String(), drop, nil
}

// childEnv is the environment of the programs: replay's own, without the
// variables that would change their behaviour behind the fixture's back.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "DATABASE_URL" || strings.HasPrefix(k, "CSVREADER_") || strings.HasPrefix(k, "INTEGRATOR_") ||
			strings.HasPrefix(k, "CRM_") || strings.HasPrefix(k, "FAKECRM_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// daemon is a running fakecrm or crmintegrator.
type daemon struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

// startDaemon starts path with args and waits for its "listening on
// HOST:PORT" line; its stderr goes to WORK/NAME.log.
func startDaemon(ctx context.Context, work, name, path string, args []string, env ...string) (*daemon, error) {
	logf, err := os.Create(filepath.Join(work, name+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(path, args...)
	cmd.Dir = work
	cmd.Env = childEnv(env...)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			if first {
				lines <- sc.Text()
				first = false
			}
		}
		close(lines)
	}()
	go func() {
		cmd.Wait()
		close(d.done)
	}()
	select {
	case line, ok := <-lines:
		if addr, found := strings.CutPrefix(line, "listening on "); ok && found {
			d.addr = addr
			return d, nil
		}
	case <-time.After(10 * time.Second):
	case <-ctx.Done():
	}
	d.stop()
	return nil, fmt.Errorf("%s did not start; its log:\n%s", name, indent(tail(filepath.Join(work, name+".log"), 20), "    "))
}

// stop sends SIGTERM and waits; a daemon that does not stop in 10s is
// killed.
func (d *daemon) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// runProgram runs path to completion and returns its exit code; output
// goes to WORK/NAME.log.
func runProgram(ctx context.Context, work, name, path string, args []string, env ...string) (int, error) {
	logf, err := os.Create(filepath.Join(work, name+".log"))
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "$ csvreader %s\n", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = work
	cmd.Env = childEnv(env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		return 0, fmt.Errorf("csvreader did not finish in time (-timeout); see %s", filepath.Join(work, name+".log"))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("run csvreader: %w", err)
	}
	return 0, nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// errorLines are the lines csvreader printed as its final error
// ("csvreader: ..."), with the work folder's path taken out: empty when it
// exited 0. They tell one exit code 1 from another.
func errorLines(logPath, work string) (string, error) {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "csvreader: ") {
			out.WriteString(strings.ReplaceAll(line, work+string(filepath.Separator), "") + "\n")
		}
	}
	return out.String(), nil
}

// runDependent are report fields that change from run to run.
var runDependent = []string{"elapsed_seconds", "rows_per_second", "run_id", "retries", "recovered", "rejects_file",
	"lookups", "recovery_wait_seconds", "as_of"}

// normaliseReport drops the run-dependent fields of a report, keeps only
// the base names of its files, and indents it with sorted keys. No report
// (csvreader failed before writing one) is an outcome too.
func normaliseReport(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "(no report)\n", nil
	}
	if err != nil {
		return "", err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("report %s: %w", path, err)
	}
	for _, k := range runDependent {
		delete(m, k)
	}
	if files, ok := m["files"].([]any); ok {
		for i, f := range files {
			if s, ok := f.(string); ok {
				files[i] = filepath.Base(s)
			}
		}
	}
	out, err := json.MarshalIndent(m, "", "  ") // maps marshal with sorted keys
	if err != nil {
		return "", err
	}
	return string(out) + "\n", nil
}

// normaliseRejects sorts the rows of a rejects file by line (workers write
// the CRM's rejections as they come), then by content.
func normaliseRejects(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "(no rejects file)\n", nil
	}
	if err != nil {
		return "", err
	}
	// The header starts with "line" and "reason", separated by the
	// export's delimiter.
	comma := ','
	if rest, ok := bytes.CutPrefix(b, []byte("line")); ok && len(rest) > 0 {
		comma = rune(rest[0])
	}
	r := csv.NewReader(bytes.NewReader(b))
	r.Comma = comma
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		return "", fmt.Errorf("rejects file %s: %w", path, err)
	}
	if len(recs) > 1 {
		rows := recs[1:]
		line := func(r []string) int { n, _ := strconv.Atoi(r[0]); return n }
		sort.SliceStable(rows, func(i, j int) bool {
			if li, lj := line(rows[i]), line(rows[j]); li != lj {
				return li < lj
			}
			return strings.Join(rows[i], "\x00") < strings.Join(rows[j], "\x00")
		})
	}
	var out bytes.Buffer
	w := csv.NewWriter(&out)
	w.Comma = comma
	w.WriteAll(recs)
	return out.String(), w.Error()
}

// customers lists what the customers table holds, one JSON object per
// customer, by key. The CRM's id and the times are left out: they depend on
// the order in which concurrent workers reached the CRM.
func customers(ctx context.Context, dsn string) (string, error) {
	d, err := sql.Open("postgres", dsn)
	if err != nil {
		return "", err
	}
	defer d.Close()
	rows, err := d.QueryContext(ctx, `SELECT external_id, email, first_name, last_name, phone, attributes::text, source_file, source_line
		FROM customers ORDER BY external_id COLLATE "C"`)
	if err != nil {
		var pqErr interface{ SQLState() string }
		if errors.As(err, &pqErr) && pqErr.SQLState() == "42P01" {
			return "(no customers table)\n", nil // csvreader stopped before migrating
		}
		return "", fmt.Errorf("read customers: %w", err)
	}
	defer rows.Close()
	type customer struct {
		Key        string            `json:"key"`
		Email      string            `json:"email"`
		FirstName  string            `json:"first_name,omitempty"`
		LastName   string            `json:"last_name,omitempty"`
		Phone      string            `json:"phone,omitempty"`
		Attributes map[string]string `json:"attributes,omitempty"`
		Source     string            `json:"source"`
	}
	var out strings.Builder
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	for rows.Next() {
		var c customer
		var attrs, file string
		var line int64
		if err := rows.Scan(&c.Key, &c.Email, &c.FirstName, &c.LastName, &c.Phone, &attrs, &file, &line); err != nil {
			return "", err
		}
		if err := json.Unmarshal([]byte(attrs), &c.Attributes); err != nil {
			return "", fmt.Errorf("customer %q: attributes: %w", c.Key, err)
		}
		c.Source = fmt.Sprintf("%s:%d", filepath.Base(file), line)
		if err := enc.Encode(c); err != nil {
			return "", err
		}
	}
	return out.String(), rows.Err()
}

// checkExactlyOnce compares the CRM's audit with the customers table: every
// customer recorded is in the CRM, and the CRM holds no duplicate and
// nothing that was not recorded. This holds whatever the fixture.
func checkExactlyOnce(ctx context.Context, crmAddr, dsn string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+crmAddr+"/admin/audit", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fakecrm audit: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fakecrm audit: %s", resp.Status)
	}
	var a struct {
		Contacts   int64 `json:"contacts"`
		Distinct   int64 `json:"distinct_external_ids"`
		Duplicates int64 `json:"duplicate_contacts"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&a); err != nil {
		return fmt.Errorf("fakecrm audit: %w", err)
	}
	d, err := sql.Open("postgres", dsn)
	if err != nil {
		return err
	}
	defer d.Close()
	var n int64
	if err := d.QueryRowContext(ctx, `SELECT count(*) FROM customers`).Scan(&n); err != nil {
		var pqErr interface{ SQLState() string }
		if !errors.As(err, &pqErr) || pqErr.SQLState() != "42P01" {
			return fmt.Errorf("count customers: %w", err)
		}
		n = 0 // no table: csvreader stopped before migrating
	}
	if a.Duplicates != 0 || a.Contacts != n {
		return fmt.Errorf("exactly once broken: the CRM holds %d contacts (%d duplicates), customers holds %d", a.Contacts, a.Duplicates, n)
	}
	return nil
}
