package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/integrator"
	"crmsync/shared/cli"
	"crmsync/shared/pgtest"
)

// TestMain lets the test binary act as csvreader itself, so tests can run
// the reader as a real process and kill it.
func TestMain(m *testing.M) {
	if os.Getenv("CSVREADER_TEST_CHILD") == "1" {
		args := strings.Split(os.Getenv("CSVREADER_TEST_ARGS"), "\x1f")
		if err := run(context.Background(), args, os.Getenv, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "csvreader:", err)
			os.Exit(cli.ExitCode(err)) // as main does
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A reader killed with SIGKILL at random moments, against a CRM that fails
// and answers ambiguously and ignores idempotency keys, then run to the end:
// every valid row is delivered exactly once.
func TestStackKill9AndRerun(t *testing.T) {
	s := newStack(t, fakecrm.Config{Seed: 11, DisableIdempotency: true, Faults: fakecrm.Faults{
		FailRate: 0.1, AmbiguousRate: 0.05, Latency: 3 * time.Millisecond, Hang: 300 * time.Millisecond}},
		integrator.Config{CRMTimeout: 200 * time.Millisecond, BreakerThreshold: 1000})
	const rows = 6000
	file := exportFile(t, rows, "BAD,x,y,not-an-email,,z")
	dir := t.TempDir()
	args := []string{"-integrator", s.addr, "-db", s.dsn, "-workers", "3", "-block-size", "150",
		"-rejects", filepath.Join(dir, "rejects.csv"), file}
	rng := rand.New(rand.NewPCG(1, 2))
	kills := 0
	for i := range 6 {
		cmd := child(args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(150+rng.IntN(600)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err == nil {
			kills++
		}
		cmd.Wait()
		t.Logf("kill %d: CRM holds %d contacts", i+1, s.crm.Audit().DistinctExternalIDs)
	}
	if kills == 0 {
		t.Fatal("no run was killed")
	}
	s.crm.SetFaults(fakecrm.Faults{FailRate: 0.1, AmbiguousRate: 0.05, Hang: 300 * time.Millisecond})
	out, err := child(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("final run: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "invalid (rejected) 1") {
		t.Errorf("final summary:\n%s", out)
	}
	s.assertExactlyOnce(rows)
	d := s.crm.Audit()
	t.Logf("after %d kills: %d creates, %d ambiguous, %d failed requests", kills, d.Creates, d.Ambiguous, d.Failed)
}

// csvreader reads stdin with "-", gzipped or not.
func TestStackStdinGzip(t *testing.T) {
	s := newStack(t, fakecrm.Config{}, integrator.Config{})
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(readFile(t, exportFile(t, 300))))
	zw.Close()
	dir := t.TempDir()
	args := []string{"-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "r.csv"), "-"}
	cmd := child(args...)
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "created            300") {
		t.Errorf("summary:\n%s", out)
	}
	s.assertExactlyOnce(300)
}

// killAndRerun runs a reader on an export of rows as a child process with
// flags, kills it with SIGKILL once the CRM created at least created
// records and at least inFlight are claimed but unsettled, reruns it to
// the end, and checks: every key once in the CRM and in customers, the
// faults exercised, no record without a key, and a second rerun sends
// nothing.
func (s *stack) killAndRerun(rows int, created int64, inFlight int, flags ...string) {
	t := s.t
	t.Helper()
	d := pgtest.Open(t, s.dsn)
	file := exportFile(t, rows)
	dir := t.TempDir()
	args := append([]string{"-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "rejects.csv"),
		"-report", filepath.Join(dir, "report.json")}, flags...)
	args = append(args, file)
	cmd := child(args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.crm.Audit().Creates >= created && unsettled(t, d) >= inFlight })
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if out, err := child(args...).CombinedOutput(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	s.assertExactlyOnce(rows)
	a := s.crm.Audit()
	if a.ContactsWithoutKey != 0 || a.Failed == 0 || a.Ambiguous == 0 {
		t.Errorf("audit %+v: want no record without a key, and the faults exercised", a)
	}
	before := a.Requests
	if out, err := child(args...).CombinedOutput(); err != nil {
		t.Fatalf("second rerun: %v\n%s", err, out)
	}
	if n := s.crm.Audit().Requests - before; n != 0 {
		t.Errorf("a rerun of a delivered export sent %d requests to the CRM", n)
	}
}
