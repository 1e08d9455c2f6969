package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/crmintegrator/integrator"
	"crmsync/shared/pgtest"
)

// The whole duo against fakecrm's Salesforce API, with a remote CRM's
// latency, 503s, ambiguous answers after writing and hangs, a reader killed
// with SIGKILL while many blocks are in flight, and a rerun: every key once
// in Salesforce and in customers, and a second rerun sends nothing.
func TestSalesforceKill9AndRerun(t *testing.T) {
	const rows = 3000
	s := newStack(t, fakecrm.Config{API: fakecrm.APISalesforce, Token: "00Dtest!token", Seed: 5, Faults: fakecrm.Faults{
		FailRate: 0.1, AmbiguousRate: 0.05, Hang: 300 * time.Millisecond, Latency: 20 * time.Millisecond, Jitter: 60 * time.Millisecond}},
		integrator.Config{API: "salesforce", CRMToken: "00Dtest!token", CRMTimeout: 500 * time.Millisecond, BreakerThreshold: 1000})
	s.killAndRerun(rows, 1000, 200, "-workers", "4", "-block-size", "200", "-max-attempts", "50")
}

// The org's daily allocation runs out mid-run: the daemon keeps its 10%
// reserve, the reader stops cleanly with exit code 4 and the time to come
// back, what Salesforce took is exactly what customers holds; once the
// allocation has room again the rerun delivers the rest, exactly once.
func TestSalesforceDailyAllocation(t *testing.T) {
	const rows, daily = 3000, 100
	s := newStack(t, fakecrm.Config{API: fakecrm.APISalesforce, Salesforce: fakecrm.SalesforceConfig{Daily: daily},
		Faults: fakecrm.Faults{Latency: 10 * time.Millisecond}},
		integrator.Config{API: "salesforce", CRMReserve: 0.10, MaxBatch: 20})
	file := exportFile(t, rows)
	dir := t.TempDir()
	report := filepath.Join(dir, "report.json")
	args := []string{"-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "rejects.csv"),
		"-workers", "2", "-block-size", "100", "-report", report, file}
	out, err := child(args...).CombinedOutput()
	if code := exitCodeOfProcess(err); code != exitQuota {
		t.Fatalf("exit code %d (%v), want %d\n%s", code, err, exitQuota, out)
	}
	if !strings.Contains(string(out), "CRM quota exhausted; rerun after") || !strings.Contains(string(out), "-crm-reserve") {
		t.Errorf("output does not say why and when to rerun:\n%s", out)
	}
	rep := readReport(t, report)
	if rep.QuotaExhaustedUntil == "" || !rep.Accounted() || rep.Unfinished == 0 || rep.Delivered == 0 {
		t.Errorf("report %+v: want quota_exhausted_until, delivered and unfinished rows, all accounted", rep)
	}
	a := s.crm.Audit()
	if a.RateLimited != 0 {
		t.Errorf("Salesforce refused %d requests: the reserve must stop the daemon before the org's allocation runs out", a.RateLimited)
	}
	if used := a.Requests; used > daily-daily/10 {
		t.Errorf("the daemon spent %d of the org's %d daily requests, more than the 90%% the reserve allows", used, daily)
	}
	var n int64
	pgtest.Open(t, s.dsn).QueryRow(`SELECT count(*) FROM customers`).Scan(&n)
	if a.DistinctExternalIDs != n || n != rep.Delivered {
		t.Errorf("Salesforce holds %d records, customers %d, the report says %d delivered: want them equal", a.DistinctExternalIDs, n, rep.Delivered)
	}
	// Sforce-Limit-Info, as the daemon exports it.
	rec := httptest.NewRecorder()
	s.integ.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	m := rec.Body.String()
	if !strings.Contains(m, "crmintegrator_crm_quota_limit 100\n") ||
		!strings.Contains(m, fmt.Sprintf("crmintegrator_crm_quota_remaining %d\n", daily-a.Requests)) {
		t.Errorf("metrics do not show the org's allocation (%d of %d used):\n%s", a.Requests, daily, m)
	}

	// The rolling 24 hours move on: room again. The daemon holds its
	// verdict until the time it told, so a fresh one stands in for the
	// wait; the rerun finishes.
	s.crm.SetSalesforceDaily(100000)
	s.stopIntegrator()
	s.startIntegrator(integrator.Config{API: "salesforce", CRMReserve: 0.10, MaxBatch: 20}, "127.0.0.1:0")
	args[1] = s.addr
	if out, err := child(args...).CombinedOutput(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	s.assertExactlyOnce(rows)
}

// The access token expires mid-run: the reader stops at once, saying so,
// loses nothing, and a rerun with a new token finishes exactly once.
func TestSalesforceExpiredToken(t *testing.T) {
	const rows = 2000
	s := newStack(t, fakecrm.Config{API: fakecrm.APISalesforce, Token: "00Dold!token", Faults: fakecrm.Faults{Latency: 20 * time.Millisecond}},
		integrator.Config{API: "salesforce", CRMToken: "00Dold!token"})
	file := exportFile(t, rows)
	dir := t.TempDir()
	report := filepath.Join(dir, "report.json")
	args := []string{"-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "rejects.csv"),
		"-workers", "2", "-block-size", "100", "-report", report, file}
	cmd := child(args...)
	var outb strings.Builder
	cmd.Stdout, cmd.Stderr = &outb, &outb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.crm.Audit().Creates >= 300 })
	s.crm.SetToken("00Dnew!token") // the old session timed out
	err := cmd.Wait()
	out := outb.String()
	if code := exitCodeOfProcess(err); code != exitFatal {
		t.Fatalf("exit code %d (%v), want %d\n%s", code, err, exitFatal, out)
	}
	if !strings.Contains(out, "crm_unauthorized") || !strings.Contains(out, "expired") {
		t.Errorf("the reader does not say the token expired:\n%s", out)
	}
	if strings.Contains(out, "00Dold") || strings.Contains(out, "00Dnew") {
		t.Errorf("the output shows a token:\n%s", out)
	}
	rep := readReport(t, report)
	if !rep.Accounted() || rep.Delivered == 0 {
		t.Errorf("report %+v: want delivered rows, all accounted", rep)
	}
	s.stopIntegrator()
	s.startIntegrator(integrator.Config{API: "salesforce", CRMToken: "00Dnew!token"}, "127.0.0.1:0")
	args[1] = s.addr
	if out, err := child(args...).CombinedOutput(); err != nil {
		t.Fatalf("rerun with the new token: %v\n%s", err, out)
	}
	s.assertExactlyOnce(rows)
}

// The daemon refuses to start against an object without a usable External
// ID field, saying what to create.
func TestSalesforceStartupCheck(t *testing.T) {
	tests := []struct {
		name string
		sf   fakecrm.SalesforceConfig
		cfg  integrator.Config
		want string
	}{
		{"not an External ID", fakecrm.SalesforceConfig{IDFieldPlain: true}, integrator.Config{}, "not an External ID"},
		{"not unique", fakecrm.SalesforceConfig{IDFieldNotUnique: true}, integrator.Config{}, "unique"},
		{"no such field", fakecrm.SalesforceConfig{}, integrator.Config{CRMIDField: "Customer_Key__c"}, "Object Manager"},
		{"no such object", fakecrm.SalesforceConfig{}, integrator.Config{CRMObject: "Customer__c"}, "does not exist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, url := fakecrmtest.Start(t, fakecrm.Config{API: fakecrm.APISalesforce, Salesforce: tc.sf})
			tc.cfg.API, tc.cfg.CRMURL = "salesforce", url
			integ, err := integrator.New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer integ.Close(context.Background())
			err = integ.Check(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// Rows Salesforce refuses (a Contact without LastName, a field value it
// will not take) land in the rejects file with its code; the others of
// their call are delivered.
func TestSalesforceRejectsWithItsReason(t *testing.T) {
	s := newStack(t, fakecrm.Config{API: fakecrm.APISalesforce}, integrator.Config{API: "salesforce"})
	file := exportFile(t, 500, "NOLAST,Ada,,ada@example.com,,Acme")
	rep, out, err := s.reader(context.Background(), s.dsn, "-block-size", "100", file)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if rep.Delivered != 500 || rep.RejectedByCRM != 1 || !rep.Accounted() {
		t.Errorf("report %+v", rep)
	}
	b, _ := os.ReadFile(rep.RejectsFile)
	if !strings.Contains(string(b), "REQUIRED_FIELD_MISSING") || !strings.Contains(string(b), "LastName") {
		t.Errorf("rejects file does not give Salesforce's reason:\n%s", b)
	}
	s.assertExactlyOnce(500)
}
