package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/integrator"
	"crmsync/csvreader/importer"
	"crmsync/db"
	"crmsync/shared/pgtest"
)

// child is csvreader as a real process (see TestMain), so that it can be
// killed.
func child(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CSVREADER_TEST_CHILD=1", "CSVREADER_TEST_ARGS="+strings.Join(args, "\x1f"))
	return cmd
}

// unsettled counts the keys claimed in blocks and not confirmed: records a
// run has in flight, or left behind when it died.
func unsettled(t *testing.T, d *sql.DB) int {
	t.Helper()
	var n int
	if err := d.QueryRow(`SELECT count(*) FROM claim_blocks b, unnest(b.keys) AS k
		WHERE NOT EXISTS (SELECT FROM customers c WHERE c.external_id = k)`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func readReport(t *testing.T, path string) importer.Report {
	t.Helper()
	var rep importer.Report
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestRecoveryWithLatency: against a CRM that answers in 50 ms or 200 ms,
// the reader is killed with SIGKILL while more than 12,000 records are in
// flight, and the integrator is restarted too (so it remembers nothing and
// must look the records up). The rerun, with default flags, finishes
// within the bound below, creates no duplicate and leaves every key in
// customers:
//
//	wait for the dead run's calls + 1.5 × lookup requests × latency ÷ CRM concurrency + clean time
//
// where the clean time is that of a clean run of the same rows.
func TestRecoveryWithLatency(t *testing.T) {
	const rows = 30000
	for _, latency := range []time.Duration{50 * time.Millisecond, 200 * time.Millisecond} {
		t.Run(latency.String(), func(t *testing.T) {
			faults := fakecrm.Faults{Latency: latency}
			icfg := integrator.Config{CRMTimeout: 2 * time.Second}
			file := exportFile(t, rows)
			dir := t.TempDir()

			// The killed run meets a slower CRM, so that records pile up in
			// flight however fast this machine reads; the rerun, the one
			// measured, meets the latency under test.
			slow := faults
			slow.Latency = 4 * latency
			s := newStack(t, fakecrm.Config{Faults: slow}, icfg)
			d := pgtest.Open(t, s.dsn)
			args := func(report string) []string {
				return []string{"-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "rejects.csv"), "-report", report, file}
			}
			cmd := child(args(filepath.Join(dir, "killed.json"))...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// A margin over 12,000: confirmations go on until the kill lands.
			// Some already confirmed too, as in a crash mid-run.
			waitFor(t, func() bool {
				var confirmed int
				d.QueryRow(`SELECT count(*) FROM customers`).Scan(&confirmed)
				return unsettled(t, d) >= 14000 && confirmed >= 2000
			})
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			left := unsettled(t, d)
			if left < 12000 {
				t.Fatalf("only %d records in flight at the kill, want at least 12000", left)
			}
			var confirmed int
			d.QueryRow(`SELECT count(*) FROM customers`).Scan(&confirmed)
			created := s.crm.Audit().DistinctExternalIDs
			t.Logf("killed with %d records in flight; the CRM held %d, customers %d", left, created, confirmed)

			// The integrator goes too, abandoning the dead reader's calls.
			s.crm.SetFaults(faults)
			addr := s.addr
			s.stopIntegrator()
			s.startIntegrator(icfg, "127.0.0.1:0")
			if s.addr == addr {
				t.Fatal("the new integrator reused the old port")
			}

			start := time.Now()
			out, err := child(args(filepath.Join(dir, "rerun.json"))...).CombinedOutput()
			took := time.Since(start)
			if err != nil {
				t.Fatalf("rerun: %v\n%s", err, out)
			}
			rep := readReport(t, filepath.Join(dir, "rerun.json"))
			s.assertExactlyOnce(rows)
			if rep.Delivered+rep.Unchanged != rows || rep.Failed != 0 || !rep.Accounted() {
				t.Errorf("rerun report: %+v", rep)
			}

			// The clean time of the rows the rerun delivered.
			clean := newStack(t, fakecrm.Config{Faults: faults}, icfg)
			cleanFile := exportFile(t, int(rep.Delivered))
			cstart := time.Now()
			if _, out, err := clean.reader(context.Background(), clean.dsn, cleanFile); err != nil {
				t.Fatalf("clean run: %v\n%s", err, out)
			}
			cleanTook := time.Since(cstart)

			conc := 8 // the integrator's default CRM concurrency
			lookupRequests := math.Ceil(float64(rep.Lookups) / 100)
			wait := time.Duration(rep.RecoveryWaitSeconds * float64(time.Second))
			bound := wait + time.Duration(1.5*lookupRequests*float64(latency)/float64(conc)) + cleanTook
			t.Logf("rerun took %v: waited %v for the dead run's calls, %d lookups (%v requests), %d recovered, %d delivered; clean time %v; bound %v",
				took.Round(time.Millisecond), wait.Round(time.Millisecond), rep.Lookups, lookupRequests, rep.Recovered, rep.Delivered,
				cleanTook.Round(time.Millisecond), bound.Round(time.Millisecond))
			if rep.Recovered < int64(left) {
				t.Errorf("recovered %d claims, want the %d left in flight", rep.Recovered, left)
			}
			if rep.Lookups > rep.Recovered {
				t.Errorf("%d lookups for %d recovered records: more than one each", rep.Lookups, rep.Recovered)
			}
			// The process's start and the ledger's migration are not in
			// the clean time: allow a second for them.
			if took > bound+time.Second {
				t.Errorf("rerun took %v, past the bound %v", took, bound)
			}
		})
	}
}

// TestRerunAfterCrashWithLiveIntegrator: the reader dies, the integrator
// lives on; it settles the dead run's records from what it saw the CRM
// create, with no lookup at all.
func TestRerunAfterCrashWithLiveIntegrator(t *testing.T) {
	const rows = 20000
	s := newStack(t, fakecrm.Config{DisableIdempotency: true, Faults: fakecrm.Faults{Latency: 50 * time.Millisecond, LookupLatency: time.Second}},
		integrator.Config{CRMTimeout: 3 * time.Second})
	d := pgtest.Open(t, s.dsn)
	file := exportFile(t, rows)
	dir := t.TempDir()
	args := []string{"-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "rejects.csv"), "-report", filepath.Join(dir, "report.json"), file}
	cmd := child(args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.crm.Audit().Creates >= 6000 && unsettled(t, d) > 0 })
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	var confirmed int64
	d.QueryRow(`SELECT count(*) FROM customers`).Scan(&confirmed)
	// Created but not confirmed: the integrator created them (it may go on
	// creating more for the dead reader's calls), so it knows them.
	known := s.crm.Audit().DistinctExternalIDs - confirmed
	if out, err := child(args...).CombinedOutput(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	rep := readReport(t, filepath.Join(dir, "report.json"))
	s.assertExactlyOnce(rows)
	if rep.Recovered == 0 || known == 0 {
		t.Fatal("nothing was taken over: the kill came too late to test anything")
	}
	t.Logf("recovered %d, of which the integrator knew at least %d; lookups %d, waited %.1fs", rep.Recovered, known, rep.Lookups, rep.RecoveryWaitSeconds)
	if rep.Lookups > rep.Recovered-known {
		t.Errorf("%d lookups for %d recovered records, %d of which the integrator had created: it looked up what it knew", rep.Lookups, rep.Recovered, known)
	}
}

// TestTwoReadersOneCutOffFromPostgres: two readers on one file; one of
// them keeps losing its liveness lock (its lock connection is terminated
// with pg_terminate_backend, again and again). The other may take its
// claims over meanwhile; the cut-off one must send none of them. Nothing
// is created twice and nothing is lost.
func TestTwoReadersOneCutOffFromPostgres(t *testing.T) {
	const rows = 8000
	s := newStack(t, fakecrm.Config{Seed: 5, DisableIdempotency: true,
		Faults: fakecrm.Faults{Latency: 20 * time.Millisecond, AmbiguousRate: 0.02, Hang: 200 * time.Millisecond}},
		integrator.Config{CRMTimeout: 500 * time.Millisecond})
	d := pgtest.Open(t, s.dsn)
	file := exportFile(t, rows)
	var wg sync.WaitGroup
	reps := make([]*importer.Report, 2)
	errs := make([]error, 2)
	outs := make([]string, 2)
	stop := make(chan struct{})
	var cuts int
	for i := range reps {
		wg.Go(func() {
			reps[i], outs[i], errs[i] = s.reader(context.Background(), s.dsn, "-workers", "4", "-block-size", "200", file)
		})
	}
	// Cut the first run that registers, as often as it can be until both
	// readers are done.
	var victim int64
	waitFor(t, func() bool { return d.QueryRow(`SELECT min(id) FROM runs`).Scan(&victim) == nil && victim > 0 })
	cutDone := make(chan struct{})
	go func() {
		defer close(cutDone)
		tick := time.NewTicker(150 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var n int
			// Only this test's database: other tests' runs have the same ids.
			d.QueryRow(`SELECT count(pg_terminate_backend(pid)) FROM pg_locks
				WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND granted
				AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
				int64(db.RunLockNamespace), victim&0xffffffff).Scan(&n)
			cuts += n
		}
	}()
	wg.Wait()
	close(stop)
	<-cutDone
	for i, err := range errs {
		if err != nil {
			t.Errorf("reader %d: %v\n%s", i, err, outs[i])
		}
	}
	t.Logf("cut the lock of run %d %d times; delivered %d + %d, recovered %d + %d", victim, cuts, reps[0].Delivered, reps[1].Delivered, reps[0].Recovered, reps[1].Recovered)
	if cuts == 0 {
		t.Fatal("the lock was never cut")
	}
	if got := reps[0].Delivered + reps[1].Delivered; got != rows {
		t.Errorf("readers delivered %d in all, want %d", got, rows)
	}
	s.assertExactlyOnce(rows)
}

// TestDuplicateSequence replays the sequence that once created thousands of
// duplicates: a reader killed with SIGKILL; a rerun against a slow CRM,
// stopped with SIGTERM while its calls are running; the integrator stopped
// while it drains those calls and a new one started on another port; a new
// run at once. The CRM ignores idempotency keys, so only the bound on
// calls and the wait for them stand between this and duplicates.
func TestDuplicateSequence(t *testing.T) {
	const rows = 20000
	faults := fakecrm.Faults{Latency: 100 * time.Millisecond, FailRate: 0.05, AmbiguousRate: 0.02, Hang: time.Second}
	icfg := integrator.Config{CRMTimeout: time.Second, CallBudget: 2 * time.Second}
	s := newStack(t, fakecrm.Config{Seed: 9, DisableIdempotency: true, Faults: faults}, icfg)
	d := pgtest.Open(t, s.dsn)
	file := exportFile(t, rows)
	dir := t.TempDir()
	args := func(addr string) []string {
		return []string{"-integrator", addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "rejects.csv"), "-max-retry-time", "5m", "-max-attempts", "100", file}
	}

	first := child(args(s.addr)...)
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.crm.Audit().Creates >= 3000 && unsettled(t, d) > 0 })
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()

	// The rerun, stopped with SIGTERM while its calls run.
	before := s.crm.Audit().Requests
	second := child(args(s.addr)...)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.crm.Audit().Requests > before+20 })
	second.Process.Signal(syscall.SIGTERM)

	// The integrator drains while a new one starts on another port, and a
	// new run goes at once.
	s.integMu.Lock()
	old := s.integ
	s.integMu.Unlock()
	draining := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		draining <- old.Close(ctx)
	}()
	s.startIntegrator(icfg, "127.0.0.1:0")
	third := child(args(s.addr)...)
	out, err := third.CombinedOutput()
	second.Wait()
	<-draining
	if err != nil {
		t.Fatalf("last run: %v\n%s", err, out)
	}
	s.assertExactlyOnce(rows)
	if a := s.crm.Audit(); a.DuplicateContacts != 0 {
		t.Fatalf("%d duplicates", a.DuplicateContacts)
	}
}
