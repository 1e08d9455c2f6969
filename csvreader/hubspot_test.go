package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/integrator"
	"crmsync/shared/pgtest"
)

// The whole duo against fakecrm's HubSpot API, in both write modes, with
// faults, a reader killed with SIGKILL and a rerun: every key once in
// HubSpot and in customers, and a second rerun sends nothing.
func TestHubSpotKill9AndRerun(t *testing.T) {
	for _, mode := range []string{"upsert", "create"} {
		t.Run(mode, func(t *testing.T) {
			const rows = 3000
			s := newStack(t, fakecrm.Config{API: fakecrm.APIHubSpot, Seed: 4, Faults: fakecrm.Faults{
				FailRate: 0.1, AmbiguousRate: 0.05, Hang: 300 * time.Millisecond, Latency: 5 * time.Millisecond}},
				integrator.Config{API: "hubspot", CRMWrite: mode, CRMTimeout: 500 * time.Millisecond, BreakerThreshold: 1000})
			s.killAndRerun(rows, 1000, 1, "-workers", "3", "-block-size", "200", "-max-attempts", "50")
		})
	}
}

// HubSpot's daily allocation runs out mid-run: the reader stops cleanly
// with exit code 4 and the time the quota comes back, and what HubSpot
// took is exactly what customers holds.
func TestHubSpotDailyQuota(t *testing.T) {
	s := newStack(t, fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Daily: 12}},
		integrator.Config{API: "hubspot"})
	file := exportFile(t, 3000)
	dir := t.TempDir()
	report := filepath.Join(dir, "report.json")
	out, err := child("-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "rejects.csv"),
		"-workers", "2", "-block-size", "100", "-report", report, file).CombinedOutput()
	if code := exitCodeOfProcess(err); code != exitQuota {
		t.Fatalf("exit code %d (%v), want %d\n%s", code, err, exitQuota, out)
	}
	if !strings.Contains(string(out), "CRM quota exhausted; rerun after") {
		t.Errorf("output does not say when to rerun:\n%s", out)
	}
	rep := readReport(t, report)
	if rep.QuotaExhaustedUntil == "" || !rep.Accounted() || rep.Unfinished == 0 || rep.Delivered == 0 {
		t.Errorf("report %+v: want quota_exhausted_until, delivered and unfinished rows, all accounted", rep)
	}
	a := s.crm.Audit()
	var n int64
	pgtest.Open(t, s.dsn).QueryRow(`SELECT count(*) FROM customers`).Scan(&n)
	if a.DistinctExternalIDs != n || n != rep.Delivered {
		t.Errorf("HubSpot holds %d contacts, customers %d, the report says %d delivered: want them equal", a.DistinctExternalIDs, n, rep.Delivered)
	}
	t.Logf("stopped at %d delivered, %d unfinished; %s", rep.Delivered, rep.Unfinished, fmt.Sprint(rep.QuotaExhaustedUntil))
}

// exitCodeOfProcess is the exit code of a child that ended with err.
func exitCodeOfProcess(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// HubSpot says its rolling window in every answer's headers: the daemon
// paces at it from the first answer on, so a run sits at the limit without
// a single 429.
func TestHubSpotPacesAtItsWindow(t *testing.T) {
	// Two requests in flight at most, so the burst sent before the first
	// answer (which the pacing books, but cannot see in flight) stays small
	// next to a window this small.
	s := newStack(t, fakecrm.Config{API: fakecrm.APIHubSpot, HubSpot: fakecrm.HubSpotConfig{Window: 40}},
		integrator.Config{API: "hubspot", CRMConcurrency: 2})
	rep, out, err := s.reader(t.Context(), s.dsn, "-workers", "4", "-block-size", "100", exportFile(t, 4000))
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	a := s.crm.Audit()
	t.Logf("%d requests, %d answered 429, %.1fs", a.Requests, a.RateLimited, rep.ElapsedSeconds)
	if a.RateLimited != 0 {
		t.Errorf("%d of %d requests answered 429: the daemon did not pace at HubSpot's window", a.RateLimited, a.Requests)
	}
	s.assertExactlyOnce(4000)
}
