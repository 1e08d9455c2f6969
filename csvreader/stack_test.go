package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/crmintegrator/integrator"
	"crmsync/csvreader/importer"
	"crmsync/shared/cli"
	"crmsync/shared/pgtest"
)

// stack is the whole duo for one test: fakecrm over HTTP, the integrator on
// a real TCP port, and a fresh PostgreSQL database.
type stack struct {
	t       *testing.T
	crm     *fakecrm.Server
	crmURL  string
	integ   *integrator.Server
	addr    string
	dsn     string
	integMu sync.Mutex
}

func newStack(t *testing.T, crmCfg fakecrm.Config, icfg integrator.Config) *stack {
	t.Helper()
	s := &stack{t: t, dsn: pgtest.DSN(t, true)}
	s.crm, s.crmURL = fakecrmtest.Start(t, crmCfg)
	s.startIntegrator(icfg, "127.0.0.1:0")
	t.Cleanup(s.stopIntegrator)
	return s
}

// newIntegrator makes a daemon on the stack's CRM, checked as the binary
// checks it at start, with the tests' short timeouts unless cfg says.
func (s *stack) newIntegrator(cfg integrator.Config) *integrator.Server {
	s.t.Helper()
	cfg.CRMURL = s.crmURL
	if cfg.CRMTimeout == 0 {
		cfg.CRMTimeout = 2 * time.Second
	}
	if cfg.CallBudget == 0 {
		// Keeps the reader's wait for orphaned calls (Hello's CallTimeout)
		// short in tests that break calls.
		cfg.CallBudget = time.Second
	}
	srv, err := integrator.New(cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := srv.Check(context.Background()); err != nil {
		s.t.Fatal(err)
	}
	return srv
}

func (s *stack) startIntegrator(cfg integrator.Config, addr string) {
	s.t.Helper()
	srv := s.newIntegrator(cfg)
	var err error
	var ln net.Listener
	for i := 0; ; i++ { // the old daemon's port may linger for a moment
		if ln, err = net.Listen("tcp", addr); err == nil || i > 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	go srv.Serve(ln)
	s.integMu.Lock()
	s.integ, s.addr = srv, ln.Addr().String()
	s.integMu.Unlock()
}

func (s *stack) stopIntegrator() {
	s.integMu.Lock()
	srv := s.integ
	s.integ = nil
	s.integMu.Unlock()
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Close(ctx)
	}
}

// reader runs csvreader's run() with args plus the stack's addresses.
func (s *stack) reader(ctx context.Context, dsn string, args ...string) (*importer.Report, string, error) {
	dir := s.t.TempDir()
	report := filepath.Join(dir, "report.json")
	full := append([]string{"-integrator", s.addr, "-db", dsn, "-report", report,
		"-rejects", filepath.Join(dir, "rejects.csv"), "-max-retry-time", "2m", "-max-attempts", "50"}, args...)
	var out, errb bytes.Buffer
	err := run(ctx, full, func(string) string { return "" }, &out, &errb)
	rep := &importer.Report{}
	if b, rerr := os.ReadFile(report); rerr == nil {
		json.Unmarshal(b, rep)
	}
	return rep, out.String() + errb.String(), err
}

// exportFile writes n valid rows, plus whatever extra rows are given.
func exportFile(t *testing.T, n int, extra ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("id,first_name,last_name,email,phone,company\n")
	for i := range n {
		fmt.Fprintf(&b, "K%06d,First%d,Last%d,k%d@example.com,+1 555 %04d,Acme %d\n", i, i, i, i, i%10000, i%7)
	}
	for _, e := range extra {
		b.WriteString(e + "\n")
	}
	path := filepath.Join(t.TempDir(), "export.csv")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// assertExactlyOnce checks the CRM created each of want keys exactly once
// and that customers holds exactly those keys.
func (s *stack) assertExactlyOnce(want int) {
	s.t.Helper()
	a := s.crm.Audit()
	if a.DuplicateContacts != 0 {
		s.t.Errorf("fakecrm holds %d duplicate contacts", a.DuplicateContacts)
	}
	if a.DistinctExternalIDs != int64(want) {
		s.t.Errorf("fakecrm holds %d distinct external ids, want %d", a.DistinctExternalIDs, want)
	}
	d := pgtest.Open(s.t, s.dsn)
	var n, missing int
	d.QueryRow(`SELECT count(*) FROM customers`).Scan(&n)
	if n != want {
		s.t.Errorf("customers has %d rows, want %d", n, want)
	}
	ids := map[string]string{}
	for _, c := range s.crm.Contacts() {
		ids[c.ExternalID] = c.ID
	}
	rows, err := d.Query(`SELECT external_id, crm_id FROM customers`)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var k, id string
		rows.Scan(&k, &id)
		if ids[k] != id {
			missing++
		}
	}
	if missing > 0 {
		s.t.Errorf("%d customers rows do not match the CRM's id for their key", missing)
	}
}

func TestStackDeliversAndRerunSendsNothing(t *testing.T) {
	s := newStack(t, fakecrm.Config{}, integrator.Config{})
	file := exportFile(t, 2500,
		"K000007,Again,Dup,again@example.com,,Acme",
		"BAD,Bad,Email,bad-email,,Acme",
		"REJ,Has Space,Email,has space@example.com,,Acme")
	rep, out, err := s.reader(context.Background(), s.dsn, file)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if rep.Delivered != 2500 || rep.DuplicatesInFile != 1 || rep.RejectedInvalid != 2 || !rep.Accounted() {
		t.Errorf("report = %+v", rep)
	}
	s.assertExactlyOnce(2500)
	before := s.crm.Audit().Requests

	rep, out, err = s.reader(context.Background(), s.dsn, file)
	if err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	if got := s.crm.Audit().Requests - before; got != 0 {
		t.Errorf("rerun sent %d requests to the CRM, want 0", got)
	}
	// The repeated key, whose content differs from its first occurrence,
	// is a repeat again, not a change.
	if rep.Unchanged != 2500 || rep.DuplicatesInFile != 1 || rep.Delivered != 0 {
		t.Errorf("rerun report = %+v", rep)
	}
	if !strings.Contains(out, "unchanged          2500") {
		t.Errorf("summary does not show the skipped rows:\n%s", out)
	}
}

// The CRM fails, answers ambiguously and rate-limits; idempotency off, so
// only lookups stand between an ambiguous answer and a duplicate.
func TestStackFlakyCRMNoDuplicates(t *testing.T) {
	for _, idem := range []bool{false, true} {
		t.Run(fmt.Sprintf("idempotency=%v", idem), func(t *testing.T) {
			s := newStack(t, fakecrm.Config{Seed: 7, DisableIdempotency: !idem, Faults: fakecrm.Faults{
				FailRate: 0.15, AmbiguousRate: 0.1, Hang: 300 * time.Millisecond}},
				integrator.Config{Idempotency: idem, CRMTimeout: 200 * time.Millisecond, BreakerThreshold: 1000})
			rep, out, err := s.reader(context.Background(), s.dsn, "-workers", "3", "-block-size", "250", exportFile(t, 3000))
			if err != nil {
				t.Fatalf("run: %v\n%s", err, out)
			}
			if rep.Delivered != 3000 || rep.Failed != 0 {
				t.Errorf("report = %+v", rep)
			}
			a := s.crm.Audit()
			if a.Ambiguous == 0 || a.Failed == 0 {
				t.Errorf("faults were not exercised: %+v", a)
			}
			s.assertExactlyOnce(3000)
		})
	}
}

func TestStackTwoReadersOneFile(t *testing.T) {
	s := newStack(t, fakecrm.Config{Seed: 3, DisableIdempotency: true,
		Faults: fakecrm.Faults{AmbiguousRate: 0.05, Latency: 2 * time.Millisecond}},
		integrator.Config{CRMTimeout: 500 * time.Millisecond})
	file := exportFile(t, 4000)
	var wg sync.WaitGroup
	reps := make([]*importer.Report, 2)
	errs := make([]error, 2)
	for i := range reps {
		wg.Go(func() {
			var out string
			reps[i], out, errs[i] = s.reader(context.Background(), s.dsn, "-block-size", "200", file)
			if errs[i] != nil {
				t.Logf("reader %d output:\n%s", i, out)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("reader %d: %v", i, err)
		}
	}
	if got := reps[0].Delivered + reps[1].Delivered; got != 4000 {
		t.Errorf("readers delivered %d + %d, want 4000 in all", reps[0].Delivered, reps[1].Delivered)
	}
	s.assertExactlyOnce(4000)
}

func TestStackIntegratorRestartMidRun(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 5 * time.Millisecond}}, integrator.Config{})
	s.midRun(s.dsn, func() {
		addr := s.addr
		s.stopIntegrator()
		time.Sleep(300 * time.Millisecond)
		s.startIntegrator(integrator.Config{}, addr)
	})
}

func TestStackDatabaseOutageMidRun(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 5 * time.Millisecond}}, integrator.Config{})
	p := newProxy(t, s.dsn)
	s.midRun(p.dsn, func() { p.cut(2 * time.Second) })
	if p.cuts() == 0 {
		t.Error("the outage cut no connection")
	}
}

// midRun imports 4000 rows through dsn, calls fault once the CRM has
// created some, and checks the run still delivers every row exactly once.
func (s *stack) midRun(dsn string, fault func()) {
	s.t.Helper()
	file := exportFile(s.t, 4000)
	done := make(chan struct{})
	var rep *importer.Report
	var out string
	var err error
	go func() {
		defer close(done)
		rep, out, err = s.reader(context.Background(), dsn, "-workers", "2", "-block-size", "100", file)
	}()
	waitFor(s.t, func() bool { return s.crm.Audit().Creates > 500 })
	fault()
	<-done
	if err != nil {
		s.t.Fatalf("run: %v\n%s", err, out)
	}
	if rep.Delivered != 4000 {
		s.t.Errorf("report = %+v", rep)
	}
	s.assertExactlyOnce(4000)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// proxy forwards TCP to PostgreSQL and can cut every connection and refuse
// new ones for a while: a database outage that spares the shared cluster.
type proxy struct {
	dsn    string
	target string
	ln     net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]bool
	down   time.Time
	ncut   int
}

func newProxy(t *testing.T, dsn string) *proxy {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{target: u.Host, ln: ln, conns: map[net.Conn]bool{}}
	u.Host = ln.Addr().String()
	p.dsn = u.String()
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.closeAll(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			refuse := time.Now().Before(p.down)
			p.mu.Unlock()
			if refuse {
				c.Close()
				continue
			}
			wg.Go(func() { p.pipe(c) })
		}
	})
	return p
}

func (p *proxy) pipe(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

func (p *proxy) cut(d time.Duration) {
	p.mu.Lock()
	p.down = time.Now().Add(d)
	p.ncut += len(p.conns)
	p.mu.Unlock()
	p.closeAll()
}

func (p *proxy) cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ncut
}

func (p *proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Ctrl-C mid-run: the run stops reading, finishes what is in flight, says
// so, and the next run finishes the job exactly once.
func TestStackInterruptThenResume(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 5 * time.Millisecond}}, integrator.Config{})
	file := exportFile(t, 5000)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, func() bool { return s.crm.Audit().Creates > 800 })
		cancel()
	}()
	rep, out, err := s.reader(ctx, s.dsn, "-workers", "2", "-block-size", "100", file)
	if cli.ExitCode(err) != exitFatal || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("interrupted run: err = %v, want exit 1 saying interrupted\n%s", err, out)
	}
	if !rep.Interrupted || rep.Delivered == 0 || rep.Rows >= 5000 || !rep.Accounted() {
		t.Errorf("interrupted report = %+v", rep)
	}
	rep, out, err = s.reader(context.Background(), s.dsn, "-workers", "2", "-block-size", "100", file)
	if err != nil {
		t.Fatalf("resumed run: %v\n%s", err, out)
	}
	if rep.Delivered+rep.Unchanged != 5000 {
		t.Errorf("resumed report = %+v", rep)
	}
	s.assertExactlyOnce(5000)
}

// A CRM that stays down: records fail after their attempts, land in the
// rejects file, the exit code is 3, and a later run delivers them.
func TestStackCRMDownExitsThree(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{Down: true}},
		integrator.Config{CallBudget: 200 * time.Millisecond, BreakerCooldown: 100 * time.Millisecond})
	file := exportFile(t, 30)
	rep, out, err := s.reader(context.Background(), s.dsn, "-max-attempts", "2", "-max-retry-time", "3s", "-block-size", "10", file)
	if cli.ExitCode(err) != exitFailed {
		t.Fatalf("err = %v, want exit code 3\n%s", err, out)
	}
	if rep.Failed != 30 || !rep.Accounted() {
		t.Errorf("report = %+v", rep)
	}
	rej := readFile(t, rep.RejectsFile)
	if n := strings.Count(rej, "failed after"); n != 30 {
		t.Errorf("rejects file has %d failed rows, want 30:\n%s", n, rej)
	}
	s.crm.SetFaults(fakecrm.Faults{})
	time.Sleep(200 * time.Millisecond) // let the breaker's cooldown pass
	rep, out, err = s.reader(context.Background(), s.dsn, file)
	if err != nil {
		t.Fatalf("run after the CRM came back: %v\n%s", err, out)
	}
	if rep.Delivered != 30 {
		t.Errorf("report = %+v", rep)
	}
	s.assertExactlyOnce(30)
}

func TestStackMaxRejectsStopsEarly(t *testing.T) {
	s := newStack(t, fakecrm.Config{}, integrator.Config{})
	var bad []string
	for i := range 50 {
		bad = append(bad, fmt.Sprintf("B%d,x,y,broken-%d,,z", i, i))
	}
	_, out, err := s.reader(context.Background(), s.dsn, "-max-rejects", "10", exportFile(t, 5, bad...))
	if cli.ExitCode(err) != exitFatal || !strings.Contains(err.Error(), "-max-rejects") {
		t.Fatalf("err = %v, want a fatal error naming -max-rejects\n%s", err, out)
	}
}

func TestStackProgressLines(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 20 * time.Millisecond}}, integrator.Config{})
	_, out, err := s.reader(context.Background(), s.dsn, "-progress", "-progress-interval", "50ms", "-block-size", "100", exportFile(t, 1500))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"progress: ", "rows (", "%)", "ETA", "created", "retrying", "rejected", "finished: 1500 rows"} {
		if !strings.Contains(out, want) {
			t.Errorf("progress output lacks %q:\n%s", want, out)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The CRM refuses some contacts for its own reasons: they land in the
// rejects file with the CRM's code, the others are delivered, and a rerun
// sends only the refused ones again.
func TestStackCRMRejections(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{BlockedDomains: "blocked.example"}}, integrator.Config{})
	file := exportFile(t, 200,
		"X1,Blocked,One,x1@blocked.example,,Acme",
		"X2,Blocked,Two,x2@blocked.example,,Acme")
	rep, out, err := s.reader(context.Background(), s.dsn, "-block-size", "50", file)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.Delivered != 200 || rep.RejectedByCRM != 2 || !rep.Accounted() {
		t.Errorf("report = %+v", rep)
	}
	rej := readFile(t, rep.RejectsFile)
	for _, want := range []string{"202,rejected by CRM: email_domain_blocked", "X1,Blocked,One,x1@blocked.example", "203,rejected by CRM: email_domain_blocked", "X2,Blocked,Two"} {
		if !strings.Contains(rej, want) {
			t.Errorf("rejects file lacks %q:\n%s", want, rej)
		}
	}
	s.assertExactlyOnce(200)
	before := s.crm.Audit().Requests
	rep, _, _ = s.reader(context.Background(), s.dsn, file)
	if rep.Unchanged != 200 || rep.RejectedByCRM != 2 || s.crm.Audit().Requests-before != 1 {
		t.Errorf("rerun: report %+v after %d CRM requests; want only the 2 refused sent, in 1 request", rep, s.crm.Audit().Requests-before)
	}
}

// Several files in one run, one gzipped: one ledger, one rejects file that
// names the file of each row.
func TestStackSeveralFiles(t *testing.T) {
	s := newStack(t, fakecrm.Config{}, integrator.Config{})
	a := exportFile(t, 100, "BAD,x,y,nope,,z")
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(strings.ReplaceAll(readFile(t, exportFile(t, 150)), "K0", "L0")))
	zw.Close()
	b := filepath.Join(t.TempDir(), "second.csv.gz")
	if err := os.WriteFile(b, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, out, err := s.reader(context.Background(), s.dsn, a, b)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.Rows != 251 || rep.Delivered != 250 || rep.RejectedInvalid != 1 {
		t.Errorf("report = %+v", rep)
	}
	if rej := readFile(t, rep.RejectsFile); !strings.Contains(rej, a+": invalid_email") {
		t.Errorf("rejects file does not name the file:\n%s", rej)
	}
	s.assertExactlyOnce(250)
}

func TestStackMaxRejectRatioByDefault(t *testing.T) {
	// A file that is mostly garbage stops once more than
	// RejectRatioMinimum rows are rejected, without any flag.
	s := newStack(t, fakecrm.Config{}, integrator.Config{})
	var bad []string
	for i := range 3 * importer.RejectRatioMinimum {
		bad = append(bad, fmt.Sprintf("B%d,x,y,broken-%d,,z", i, i))
	}
	rep, out, err := s.reader(context.Background(), s.dsn, exportFile(t, 20, bad...))
	if cli.ExitCode(err) != exitFatal || !strings.Contains(err.Error(), "-max-reject-ratio") || !strings.Contains(err.Error(), "invalid_email") {
		t.Fatalf("err = %v, want a fatal error naming -max-reject-ratio and the last reason\n%s", err, out)
	}
	if rep.Rows >= int64(len(bad)) || rep.Error == "" {
		t.Errorf("report = %+v, want a run stopped early, with its error", rep)
	}
	// -max-reject-ratio 0 lets it run to the end.
	rep, out, err = s.reader(context.Background(), s.dsn, "-max-reject-ratio", "0", exportFile(t, 20, bad...))
	if err != nil || rep.RejectedInvalid != int64(len(bad)) || rep.Delivered+rep.Unchanged != 20 {
		t.Fatalf("err = %v, report = %+v\n%s", err, rep, out)
	}
}

// TestStackFatalBeforeAnyRow: a file refused before its first row leaves no
// summary of zeros and a report that carries the error, even over the
// report of an earlier, successful run.
func TestStackFatalBeforeAnyRow(t *testing.T) {
	s := newStack(t, fakecrm.Config{}, integrator.Config{})
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	tests := []struct {
		name, content, wantErr string
	}{
		{"no-email.csv", "id,Mail\n1,a@x.io\n", `"Mail" looks like it`},
		{"latin1.csv", "id,email,name\n1,a@x.io,Ren\xe9\n", "iconv -f WINDOWS-1252"},
		{"header-only.csv", "id,email\n", "no rows"},
		{"mac.csv", "id;email\r1;a@x.io\r", "-delimiter ';'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			report := filepath.Join(dir, tc.name+".report.json")
			if err := os.WriteFile(report, []byte(`{"rows": 5, "delivered": 5}`), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			err := run(context.Background(), []string{"-integrator", s.addr, "-db", s.dsn, "-report", report,
				"-rejects", filepath.Join(dir, tc.name+".rejects.csv"), write(tc.name, tc.content)}, func(string) string { return "" }, &out, &errb)
			if cli.ExitCode(err) != exitFatal || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want exit 1 and %q", err, tc.wantErr)
			}
			if strings.Contains(out.String(), "delivered") || !strings.Contains(out.String(), "nothing was sent") {
				t.Errorf("summary looks like an empty success:\n%s", out.String())
			}
			var rep importer.Report
			b, _ := os.ReadFile(report)
			if jerr := json.Unmarshal(b, &rep); jerr != nil || rep.Error == "" || rep.Rows != 0 || rep.Delivered != 0 {
				t.Errorf("report %s, want this run's error and no rows", b)
			}
		})
	}
}
