package importer_test

import (
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/csvreader/importer"
	"crmsync/shared/crmrpc"
	"crmsync/shared/pgtest"
)

// crm is an in-memory CRM behind the Deliverer interface, with hooks that
// script failures. It counts creates per key, so a test can assert that no
// key was created twice.
type crm struct {
	mu      sync.Mutex
	created map[string]int
	calls   int
	// hook, when set, may answer for a record instead of creating it.
	hook func(call int, r crmrpc.Record) (crmrpc.Verdict, bool)
	// callErr, when set, may fail a whole call.
	callErr func(call int) error
}

func newCRM() *crm { return &crm{created: map[string]int{}} }

func (c *crm) Deliver(ctx context.Context, recs []crmrpc.Record) ([]crmrpc.Verdict, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.callErr != nil {
		if err := c.callErr(c.calls); err != nil {
			return nil, err
		}
	}
	out := make([]crmrpc.Verdict, len(recs))
	for i, r := range recs {
		if c.hook != nil {
			if v, ok := c.hook(c.calls, r); ok {
				out[i] = v
				continue
			}
		}
		key := r.Contact.ExternalID
		if r.MaybeSent && c.created[key] > 0 {
			out[i] = crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "crm-" + key}
			continue
		}
		c.created[key]++
		out[i] = crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: "crm-" + key}
	}
	return out, nil
}

func (c *crm) duplicates() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var d []string
	for k, n := range c.created {
		if n > 1 {
			d = append(d, k)
		}
	}
	return d
}

func writeCSV(t *testing.T, rows ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "export.csv")
	body := "id,first_name,last_name,email,phone,company\n" + strings.Join(rows, "\n") + "\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func genRows(n int) []string {
	rows := make([]string, n)
	for i := range rows {
		rows[i] = fmt.Sprintf("C%05d,First%d,Last,c%d@example.com,+1 555 %04d,Acme", i, i, i, i)
	}
	return rows
}

func config(t *testing.T, file string) importer.Config {
	return importer.Config{Files: []string{file}, Workers: 3, BlockSize: 7, CallBound: 50 * time.Millisecond,
		RejectsPath: filepath.Join(t.TempDir(), "rejects.csv"), SkippedPath: filepath.Join(t.TempDir(), "skipped.csv")}
}

func readCSV(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestRunOutcomes(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	rows := append(genRows(40),
		"C00003,Again,Repeat,again@example.com,,Acme", // repeat of an earlier key
		",No,Key,nokey@example.com,,Acme",             // empty key
		"BAD1,Bad,Email,not-an-email,,Acme",           // invalid email
		"REJ1,Crm,Rejects,rej@example.com,,Acme",      // the CRM refuses it
		"FLAKY,Fails,Twice,flaky@example.com,,Acme",   // retried, then delivered
		"DOOMED,Never,Works,doomed@example.com,,Acme", // runs out of attempts
		"FLAKY,Same,Block,flaky@example.com,,Acme",    // repeat within FLAKY's block
	)
	file := writeCSV(t, rows...)
	c := newCRM()
	flaky := 0
	c.hook = func(call int, r crmrpc.Record) (crmrpc.Verdict, bool) {
		switch r.Contact.ExternalID {
		case "REJ1":
			return crmrpc.Verdict{Outcome: crmrpc.Rejected, Code: "invalid_email", Message: "no"}, true
		case "FLAKY":
			if flaky++; flaky <= 2 {
				return crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: 10 * time.Millisecond, Code: "rate_limited"}, true
			}
		case "DOOMED":
			return crmrpc.Verdict{Outcome: crmrpc.Retry, RetryAfter: time.Millisecond, Code: "unavailable", Message: "503"}, true
		}
		return crmrpc.Verdict{}, false
	}
	cfg := config(t, file)
	cfg.MaxAttempts = 3
	rep, err := importer.Run(ctx, cfg, d, c)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := importer.Report{Rows: 47, Valid: 45, RejectedInvalid: 2, DuplicatesInFile: 2,
		Delivered: 41, RejectedByCRM: 1, Failed: 1}
	got := importer.Report{Rows: rep.Rows, Valid: rep.Valid, RejectedInvalid: rep.RejectedInvalid,
		DuplicatesInFile: rep.DuplicatesInFile, Delivered: rep.Delivered, RejectedByCRM: rep.RejectedByCRM, Failed: rep.Failed}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("report\n got %+v\nwant %+v", got, want)
	}
	if !rep.Accounted() {
		t.Errorf("report does not account for every row: %+v", rep)
	}
	var n int
	d.QueryRow(`SELECT count(*) FROM customers`).Scan(&n)
	if n != 41 {
		t.Errorf("customers has %d rows, want 41", n)
	}
	var line int
	d.QueryRow(`SELECT source_line FROM customers WHERE external_id = 'C00003'`).Scan(&line)
	if line != 5 {
		t.Errorf("C00003 recorded from line %d, want its first occurrence, line 5", line)
	}
	if dup := c.duplicates(); len(dup) > 0 {
		t.Errorf("keys created twice: %v", dup)
	}

	rej := readCSV(t, cfg.RejectsPath)
	if got, want := strings.Join(rej[0], ","), "line,reason,id,first_name,last_name,email,phone,company"; got != want {
		t.Errorf("rejects header = %q, want %q", got, want)
	}
	reasons := map[string]string{}
	for _, r := range rej[1:] {
		reasons[r[2]] = r[0] + " " + r[1]
	}
	for key, want := range map[string]string{
		"":       "43 missing_key",
		"BAD1":   "44 invalid_email",
		"REJ1":   "45 rejected by CRM: invalid_email",
		"DOOMED": "47 failed after 3 attempts: unavailable",
	} {
		if !strings.HasPrefix(reasons[key], want) {
			t.Errorf("rejects row for %q = %q, want prefix %q", key, reasons[key], want)
		}
	}
	if len(rej) != 5 {
		t.Errorf("rejects file has %d rows, want header + 4", len(rej))
	}
	// Skipped rows are written as they are settled, so their order depends
	// on which worker finishes first.
	skipped := readCSV(t, cfg.SkippedPath)
	why := map[string]string{}
	for _, r := range skipped[1:] {
		why[r[2]] = r[5]
	}
	if len(skipped) != 3 || !strings.Contains(why["C00003"], "line 5") || !strings.Contains(why["FLAKY"], "line 46") {
		t.Errorf("skipped file = %v, want rows for C00003 naming line 5 and FLAKY naming line 46", skipped)
	}

	// A rerun sends nothing that was delivered: only the failed and the
	// rejected records go out again.
	c.calls = 0
	sent := map[string]int{}
	c.hook = func(call int, r crmrpc.Record) (crmrpc.Verdict, bool) {
		sent[r.Contact.ExternalID]++
		return crmrpc.Verdict{}, false
	}
	rep2, err := importer.Run(ctx, cfg, d, c)
	if err != nil {
		t.Fatalf("rerun: %v", err)
	}
	// Every key the first run delivered is unchanged; the repeats, whose
	// content differs from the first occurrence, are repeats again (not
	// updates), wherever the block boundaries fall.
	if rep2.Unchanged != 41 || rep2.Delivered != 2 || rep2.DuplicatesInFile != 2 || rep2.Updated != 0 {
		t.Errorf("rerun: unchanged %d delivered %d dupes %d updated %d; want 41, 2, 2, 0", rep2.Unchanged, rep2.Delivered, rep2.DuplicatesInFile, rep2.Updated)
	}
	if len(sent) != 2 || sent["DOOMED"] != 1 || sent["REJ1"] != 1 {
		t.Errorf("rerun sent %v, want DOOMED and REJ1 once each", sent)
	}
	// DOOMED's claim was left "failed" (maybe sent): the rerun must ask first.
	if dup := c.duplicates(); len(dup) > 0 {
		t.Errorf("keys created twice: %v", dup)
	}
}

func TestRunStopsOnFatalIntegratorError(t *testing.T) {
	d := pgtest.New(t)
	c := newCRM()
	c.callErr = func(int) error {
		return &crmrpc.Error{Code: crmrpc.CodeCRMUnauthorized, Message: "the CRM refused the token"}
	}
	rep, err := importer.Run(context.Background(), config(t, writeCSV(t, genRows(30)...)), d, c)
	if err == nil || !strings.Contains(err.Error(), "crm_unauthorized") {
		t.Fatalf("err = %v, want the CRM's refusal", err)
	}
	if rep.Delivered != 0 {
		t.Errorf("delivered %d after a fatal error", rep.Delivered)
	}
	if !rep.Accounted() || rep.Unfinished != rep.Rows || rep.Rows == 0 {
		t.Errorf("report %+v: the rows read but not settled must be unfinished", rep)
	}
}

// A call whose outcome is unknown (the connection broke) is resent with
// MaybeSent, and the CRM is asked before creating: no duplicate.
func TestRunResendsUnknownCallsAsMaybeSent(t *testing.T) {
	d := pgtest.New(t)
	c := newCRM()
	var maybe int
	c.hook = func(call int, r crmrpc.Record) (crmrpc.Verdict, bool) {
		if r.MaybeSent {
			maybe++
		}
		return crmrpc.Verdict{}, false
	}
	// The first call creates its records, then "loses" the answer.
	var once sync.Once
	inner := c
	lossy := delivererFunc(func(ctx context.Context, recs []crmrpc.Record) ([]crmrpc.Verdict, error) {
		v, err := inner.Deliver(ctx, recs)
		lost := false
		once.Do(func() { lost = true })
		if lost {
			return nil, &crmrpc.ConnError{Err: fmt.Errorf("connection reset")}
		}
		return v, err
	})
	cfg := config(t, writeCSV(t, genRows(20)...))
	rep, err := importer.Run(context.Background(), cfg, d, lossy)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Delivered != 20 || maybe != 7 {
		t.Errorf("delivered %d with %d MaybeSent resends; want 20 and one block of 7", rep.Delivered, maybe)
	}
	if dup := c.duplicates(); len(dup) > 0 {
		t.Errorf("keys created twice: %v", dup)
	}
}

type delivererFunc func(context.Context, []crmrpc.Record) ([]crmrpc.Verdict, error)

func (f delivererFunc) Deliver(ctx context.Context, r []crmrpc.Record) ([]crmrpc.Verdict, error) {
	return f(ctx, r)
}

func TestDryRunCounts(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	file := writeCSV(t, "A,a,a,a@example.com,,x", "B,b,b,b@example.com,,x", "A,a,a,a@example.com,,x", "C,c,c,bad,,x")
	cfg := config(t, file)
	if _, err := importer.Run(ctx, importer.Config{Files: []string{writeCSV(t, "B,b,b,b@example.com,,x")},
		RejectsPath: filepath.Join(t.TempDir(), "r.csv")}, d, newCRM()); err != nil {
		t.Fatal(err)
	}
	cfg.DryRun = true
	rep, err := importer.Run(ctx, cfg, d, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Rows != 4 || rep.New != 1 || rep.Unchanged != 1 || rep.DuplicatesInFile != 1 || rep.RejectedInvalid != 1 || !rep.Accounted() {
		t.Errorf("dry run report = %+v; want 4 rows: 1 new, 1 already delivered, 1 duplicate, 1 invalid", rep)
	}
	var claims int
	d.QueryRow(`SELECT (SELECT count(*) FROM claims) + (SELECT count(*) FROM claim_blocks)`).Scan(&claims)
	if claims != 0 {
		t.Errorf("dry run left %d claims", claims)
	}
}

// A record given up on after its call broke may still be created by that
// call: its claim says so, for the run that takes it over.
func TestRunMarksGivenUpBrokenCallsOrphan(t *testing.T) {
	d := pgtest.New(t)
	broken := delivererFunc(func(context.Context, []crmrpc.Record) ([]crmrpc.Verdict, error) {
		return nil, &crmrpc.ConnError{Err: fmt.Errorf("connection reset")}
	})
	cfg := config(t, writeCSV(t, genRows(5)...))
	cfg.MaxAttempts = 1
	rep, err := importer.Run(context.Background(), cfg, d, broken)
	if err != nil {
		t.Fatal(err)
	}
	var orphans int
	if err := d.QueryRow(`SELECT count(*) FROM claims WHERE state = 'failed' AND orphan`).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 5 || orphans != 5 {
		t.Errorf("failed %d, claims marked orphan %d; want 5 and 5", rep.Failed, orphans)
	}
}
