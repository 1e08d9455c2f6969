package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/integrator"
	"crmsync/shared/contact"
	"crmsync/shared/pgtest"
)

// A customer export as a test writes it: rows of fields by column name.
type syncExport struct {
	header []string
	rows   []map[string]string
}

func (e syncExport) write(t *testing.T, name string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(strings.Join(e.header, ",") + "\n")
	for _, r := range e.rows {
		vals := make([]string, len(e.header))
		for i, h := range e.header {
			vals[i] = r[h]
		}
		b.WriteString(strings.Join(vals, ",") + "\n")
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// syncSeries is Monday's export of n customers, Tuesday's (10% new email,
// 10% new first name, 10% new company, 10% company left empty, the city
// column gone, columns and rows reordered, 20 new customers), and what the
// CRM must hold after both: empty cells and the missing column keep its
// values.
func syncSeries(n int) (monday, tuesday syncExport, want map[string]contact.Contact, changed int) {
	monday.header = []string{"id", "first_name", "last_name", "email", "phone", "company", "city"}
	tuesday.header = []string{"email", "id", "last_name", "first_name", "phone", "company"}
	want = map[string]contact.Contact{}
	for i := range n + 20 {
		id := fmt.Sprintf("S%05d", i)
		r := map[string]string{"id": id, "first_name": fmt.Sprint("F", i), "last_name": fmt.Sprint("L", i),
			"email": fmt.Sprintf("s%d@example.com", i), "phone": fmt.Sprintf("+4420794600%02d", i%100),
			"company": fmt.Sprint("Acme ", i%5), "city": fmt.Sprint("City ", i%3)}
		c := contact.Contact{ExternalID: id, Email: r["email"], FirstName: r["first_name"], LastName: r["last_name"], Phone: r["phone"],
			Attributes: contact.AttrsOf(map[string]string{"company": r["company"], "city": r["city"]})}
		t := maps.Clone(r)
		if i < n {
			monday.rows = append(monday.rows, r)
			switch i % 10 {
			case 0:
				t["email"] = fmt.Sprintf("new%d@example.com", i)
				c.Email = t["email"]
				changed++
			case 1:
				t["first_name"] = fmt.Sprint("NewF", i)
				c.FirstName = t["first_name"]
				changed++
			case 2:
				t["company"] = "Globex"
				c.Attributes.Set("company", "Globex")
				changed++
			case 3:
				t["company"] = "" // keeps the CRM's company
			}
		} else {
			c.Attributes.Delete("city") // a new customer of Tuesday's: no city column
		}
		tuesday.rows = append(tuesday.rows, t)
		want[id] = c
	}
	slices.Reverse(tuesday.rows)
	return monday, tuesday, want, changed
}

// assertCRMHolds checks that the CRM and customers hold exactly want, each
// key once.
func (s *stack) assertCRMHolds(want map[string]contact.Contact) {
	s.t.Helper()
	s.assertExactlyOnce(len(want))
	got := map[string]contact.Contact{}
	for _, c := range s.crm.Contacts() {
		got[c.ExternalID] = c.Contact
	}
	d := pgtest.Open(s.t, s.dsn)
	bad := 0
	for k, w := range want {
		var email, first, last, phone, attrs string
		if err := d.QueryRow(`SELECT email, first_name, last_name, phone, attributes::text FROM customers WHERE external_id = $1`, k).Scan(&email, &first, &last, &phone, &attrs); err != nil {
			s.t.Fatalf("customers row of %s: %v", k, err)
		}
		g := got[k]
		same := g.Email == w.Email && g.FirstName == w.FirstName && g.LastName == w.LastName && g.Phone == w.Phone && slices.Equal(g.Attributes, w.Attributes) &&
			email == w.Email && first == w.FirstName && last == w.LastName && phone == w.Phone
		if !same {
			if bad++; bad <= 5 {
				s.t.Errorf("%s: CRM holds %+v, customers %q %q %q %q %s; want %+v", k, g, email, first, last, phone, attrs, w)
			}
		}
	}
	if bad > 0 {
		s.t.Errorf("%d of %d customers differ from the newest export", bad, len(want))
	}
}

// The series of exports against each connector: Monday's export, then
// Tuesday's (changed, reordered, a column removed, new rows) against a
// flaky CRM, then Monday's again, late. The CRM ends holding the newest
// values exactly; the late replay sends nothing and counts the changes
// stale.
func TestSyncSeriesOfExports(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crm   fakecrm.Config
		integ integrator.Config
	}{
		{"generic", fakecrm.Config{}, integrator.Config{}},
		{"hubspot-upsert", fakecrm.Config{API: fakecrm.APIHubSpot}, integrator.Config{API: "hubspot", CRMWrite: "upsert"}},
		{"hubspot-create", fakecrm.Config{API: fakecrm.APIHubSpot}, integrator.Config{API: "hubspot", CRMWrite: "create"}},
		{"salesforce", fakecrm.Config{API: fakecrm.APISalesforce, Token: "00Dx!t"}, integrator.Config{API: "salesforce", CRMToken: "00Dx!t"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 300
			tc.crm.Seed = 11
			tc.integ.CRMTimeout, tc.integ.BreakerThreshold = 500*time.Millisecond, 1000
			s := newStack(t, tc.crm, tc.integ)
			mon, tue, want, changed := syncSeries(n)
			monFile, tueFile := mon.write(t, "monday.csv"), tue.write(t, "tuesday.csv")
			ctx := context.Background()
			rep, out, err := s.reader(ctx, s.dsn, "-as-of", "2026-11-30T02:00:00Z", "-block-size", "50", monFile)
			if err != nil || rep.Created != n {
				t.Fatalf("monday: %v, report %+v\n%s", err, rep, out)
			}
			// Tuesday's against a remote, flaky CRM.
			s.crm.SetFaults(fakecrm.Faults{FailRate: 0.1, AmbiguousRate: 0.05, Latency: 20 * time.Millisecond, Jitter: 30 * time.Millisecond})
			skipped := filepath.Join(t.TempDir(), "skipped.csv")
			rep, out, err = s.reader(ctx, s.dsn, "-as-of", "2026-12-01T02:00:00Z", "-block-size", "50", "-skipped", skipped, tueFile)
			if err != nil {
				t.Fatalf("tuesday: %v\n%s", err, out)
			}
			if rep.Created != 20 || rep.Updated != int64(changed) || rep.Unchanged != int64(n-changed) || !rep.Accounted() {
				t.Errorf("tuesday: created %d updated %d unchanged %d (accounted %v); want 20, %d, %d", rep.Created, rep.Updated, rep.Unchanged, rep.Accounted(), changed, n-changed)
			}
			s.crm.SetFaults(fakecrm.Faults{})
			s.assertCRMHolds(want)
			list := readFile(t, skipped)
			if !strings.Contains(list, "S00000,updated,email,") || !strings.Contains(list, "S00002,updated,attributes.company,") {
				t.Errorf("the skipped list does not name the changed fields:\n%.600s", list)
			}
			d := pgtest.Open(t, s.dsn)
			var versions, changes int
			d.QueryRow(`SELECT count(*) FILTER (WHERE version = 2) FROM customers`).Scan(&versions)
			d.QueryRow(`SELECT count(*) FROM customer_changes`).Scan(&changes)
			if versions != changed || changes != changed {
				t.Errorf("%d customers at version 2, %d customer_changes rows; want %d each", versions, changes, changed)
			}

			// Monday's export replayed late: nothing sent.
			before := s.crm.Audit().Requests
			rep, out, err = s.reader(ctx, s.dsn, "-as-of", "2026-11-30T02:00:00Z", monFile)
			if err != nil || rep.Stale != int64(changed) || rep.Delivered != 0 || rep.Unchanged != int64(n-changed) {
				t.Errorf("late monday: %v, stale %d delivered %d unchanged %d; want %d, 0, %d\n%s", err, rep.Stale, rep.Delivered, rep.Unchanged, changed, n-changed, out)
			}
			if sent := s.crm.Audit().Requests - before; sent != 0 {
				t.Errorf("the late replay sent %d requests", sent)
			}
			s.assertCRMHolds(want)
		})
	}
}

// -changed skip and report send nothing; report lists each change with its
// fields; -dry-run counts new, changed, unchanged and stale.
func TestSyncChangedModesAndDryRun(t *testing.T) {
	s := newStack(t, fakecrm.Config{}, integrator.Config{})
	const n = 100
	mon, tue, _, changed := syncSeries(n)
	monFile, tueFile := mon.write(t, "monday.csv"), tue.write(t, "tuesday.csv")
	ctx := context.Background()
	if _, out, err := s.reader(ctx, s.dsn, "-as-of", "2026-11-30T02:00:00Z", monFile); err != nil {
		t.Fatalf("monday: %v\n%s", err, out)
	}
	rep, out, err := s.reader(ctx, s.dsn, "-as-of", "2026-12-01T02:00:00Z", "-dry-run", tueFile)
	if err != nil || rep.New != 20 || rep.Changed != int64(changed) || rep.Unchanged != int64(n-changed) || !rep.Accounted() {
		t.Errorf("dry run: %v, %+v\n%s", err, rep, out)
	}
	if !strings.Contains(out, fmt.Sprintf("20 new · %d changed · %d unchanged · 0 stale", changed, n-changed)) {
		t.Errorf("dry run summary:\n%s", out)
	}
	rep, _, _ = s.reader(ctx, s.dsn, "-as-of", "2026-11-29T02:00:00Z", "-dry-run", tueFile)
	if rep.Stale != int64(changed) {
		t.Errorf("dry run of an older export: stale %d, want %d", rep.Stale, changed)
	}
	created := int64(20) // by the first mode's run
	for _, mode := range []string{"skip", "report"} {
		skipped := filepath.Join(t.TempDir(), "skipped.csv")
		rep, out, err := s.reader(ctx, s.dsn, "-as-of", "2026-12-01T02:00:00Z", "-changed", mode, "-skipped", skipped, monFile)
		if err != nil || rep.Changed != 0 || rep.Unchanged != n {
			t.Errorf("-changed %s on monday's export again: %v %+v\n%s", mode, err, rep, out)
		}
		rep, out, err = s.reader(ctx, s.dsn, "-as-of", "2026-12-01T02:00:00Z", "-changed", mode, "-skipped", skipped, tueFile)
		if err != nil || rep.Changed != int64(changed) || rep.Updated != 0 || rep.Created != created {
			t.Errorf("-changed %s: %v %+v\n%s", mode, err, rep, out)
		}
		created = 0
		if list := readFile(t, skipped); !strings.Contains(list, "S00001,changed,first_name,") {
			t.Errorf("-changed %s: the skipped list lacks the change of S00001:\n%.600s", mode, list)
		}
	}
	if a := s.crm.Audit(); a.Updates != 0 || a.Creates-int64(n) != 20 {
		t.Errorf("audit after skip/report %+v: want no update, and 20 creates beyond monday's", a)
	}
}

// kill -9 during an update run against a remote, flaky CRM, then a rerun,
// for each connector: every changed key ends with Tuesday's values, in the
// CRM and in customers, with one customer_changes row each, and no
// duplicate.
func TestSyncKill9DuringUpdates(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crm   fakecrm.Config
		integ integrator.Config
	}{
		{"generic", fakecrm.Config{}, integrator.Config{}},
		{"hubspot", fakecrm.Config{API: fakecrm.APIHubSpot}, integrator.Config{API: "hubspot"}},
		{"salesforce", fakecrm.Config{API: fakecrm.APISalesforce, Token: "00Dx!t"}, integrator.Config{API: "salesforce", CRMToken: "00Dx!t"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.crm.Seed = 9
			tc.integ.CRMTimeout, tc.integ.BreakerThreshold = 500*time.Millisecond, 1000
			killDuringUpdates(t, newStack(t, tc.crm, tc.integ))
		})
	}
}

func killDuringUpdates(t *testing.T, s *stack) {
	const n = 3000
	mon, tue, want, changed := syncSeries(n)
	monFile, tueFile := mon.write(t, "monday.csv"), tue.write(t, "tuesday.csv")
	if _, out, err := s.reader(context.Background(), s.dsn, "-as-of", "2026-11-30T02:00:00Z", monFile); err != nil {
		t.Fatalf("monday: %v\n%s", err, out)
	}
	s.crm.SetFaults(fakecrm.Faults{FailRate: 0.1, AmbiguousRate: 0.05, Hang: 300 * time.Millisecond,
		Latency: 50 * time.Millisecond, Jitter: 100 * time.Millisecond})
	d := pgtest.Open(t, s.dsn)
	dir := t.TempDir()
	args := []string{"-integrator", s.addr, "-db", s.dsn, "-rejects", filepath.Join(dir, "rejects.csv"),
		"-report", filepath.Join(dir, "report.json"), "-as-of", "2026-12-01T02:00:00Z",
		"-workers", "6", "-block-size", "100", "-max-attempts", "50", tueFile}
	cmd := child(args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		var inflight int
		d.QueryRow(`SELECT count(*) FROM claims WHERE kind = 'update'`).Scan(&inflight)
		return s.crm.Audit().Updates >= 100 && inflight >= 200
	})
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if out, err := child(args...).CombinedOutput(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	s.crm.SetFaults(fakecrm.Faults{})
	s.assertCRMHolds(want)
	var v2, changes, dup int
	d.QueryRow(`SELECT count(*) FILTER (WHERE version = 2) FROM customers`).Scan(&v2)
	d.QueryRow(`SELECT count(*), count(*) - count(DISTINCT external_id) FROM customer_changes`).Scan(&changes, &dup)
	if v2 != changed || changes != changed || dup != 0 {
		t.Errorf("%d customers at version 2, %d customer_changes rows (%d repeated); want %d, %d, 0", v2, changes, dup, changed, changed)
	}
	before := s.crm.Audit().Requests
	if out, err := child(args...).CombinedOutput(); err != nil {
		t.Fatalf("second rerun: %v\n%s", err, out)
	}
	if sent := s.crm.Audit().Requests - before; sent != 0 {
		t.Errorf("a rerun of a delivered export sent %d requests", sent)
	}
}
