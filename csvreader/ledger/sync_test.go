package ledger_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"crmsync/csvreader/ledger"
	"crmsync/shared/contact"
	"crmsync/shared/pgtest"
)

var (
	monday  = time.Date(2026, 11, 30, 2, 0, 0, 0, time.UTC)
	tuesday = monday.Add(24 * time.Hour)
)

// run starts a run with an as-of time and a change mode.
func run(t *testing.T, d *sql.DB, asOf time.Time, mode ledger.ChangeMode) *ledger.Run {
	t.Helper()
	ctx := context.Background()
	r := must(ledger.Start(ctx, d, []string{"f.csv"}))
	if err := r.SetSync(ctx, ledger.Sync{AsOf: asOf, Mode: mode, Files: []string{"f.csv"}}); err != nil {
		t.Fatal(err)
	}
	return r
}

// version is a record of the export: the key with this email and city.
func version(key, email, city string, line int64) ledger.Item {
	c := &contact.Contact{ExternalID: key, Email: email, Attributes: contact.AttrsOf(map[string]string{"city": city})}
	return ledger.Item{Key: key, Fingerprint: c.Fingerprint(), File: "f.csv", Line: line, Contact: c}
}

// deliver claims and confirms items as creates or updates.
func deliver(t *testing.T, r *ledger.Run, its ...ledger.Item) []ledger.Decision {
	t.Helper()
	ctx := context.Background()
	ds := must(r.Claim(ctx, its))
	var conf []ledger.Delivery
	for i, dec := range ds {
		it := its[i]
		switch dec.Status {
		case ledger.Claimed:
			conf = append(conf, ledger.Delivery{Contact: *it.Contact, CRMID: "crm-" + it.Key, Fingerprint: it.Fingerprint, File: it.File, Line: it.Line})
		case ledger.Updating, ledger.TakenOver:
			if dec.Update != nil {
				conf = append(conf, ledger.Delivery{Contact: dec.Update.Contact, CRMID: dec.Update.CRMID, Fingerprint: dec.Update.Fingerprint, File: it.File, Line: it.Line, Update: dec.Update})
			}
		}
	}
	if _, err := r.Confirm(ctx, conf); err != nil {
		t.Fatal(err)
	}
	return ds
}

type stored struct {
	email, city string
	version     int64
}

func customer(t *testing.T, d *sql.DB, key string) stored {
	t.Helper()
	var s stored
	if err := d.QueryRow(`SELECT email, attributes::jsonb->>'city', version FROM customers WHERE external_id = $1`, key).Scan(&s.email, &s.city, &s.version); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSyncDecisions(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	first := run(t, d, monday, ledger.ChangesUpdate)
	deliver(t, first, version("A", "a@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3), version("C", "c@x.io", "Bonn", 4))
	first.Close(ctx, "done", nil)

	// Tuesday's export: A changed, B the same, C changed in a cell whose
	// emptiness keeps the CRM's value.
	second := run(t, d, tuesday, ledger.ChangesUpdate)
	cNoCity := version("C", "c@x.io", "", 4)
	ds := deliver(t, second, version("A", "new-a@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3), cNoCity)
	if got := statuses(ds); fmt.Sprint(got) != fmt.Sprint([]ledger.Status{ledger.Updating, ledger.Unchanged, ledger.Unchanged}) {
		t.Fatalf("tuesday = %v, want [Updating Unchanged Unchanged]", got)
	}
	if u := ds[0].Update; u.CRMID != "crm-A" || u.Version != 1 || !slices.Equal(u.Fields, []string{"email"}) || !slices.Equal(u.Changed, []string{"email"}) {
		t.Errorf("A's update = %+v", u)
	}
	second.Close(ctx, "done", nil)
	if got := customer(t, d, "A"); got != (stored{"new-a@x.io", "Oslo", 2}) {
		t.Errorf("A in customers = %+v", got)
	}
	var n int
	var fields string
	d.QueryRow(`SELECT count(*), min(array_to_string(fields, ' ')) FROM customer_changes WHERE external_id = 'A' AND version = 2`).Scan(&n, &fields)
	if n != 1 || fields != "email" {
		t.Errorf("customer_changes of A = %d rows, fields %q", n, fields)
	}

	// Monday's export replayed late: A's change is stale, never sent.
	late := run(t, d, monday, ledger.ChangesUpdate)
	ds = must(late.Claim(ctx, []ledger.Item{version("A", "a@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3)}))
	if got := statuses(ds); fmt.Sprint(got) != fmt.Sprint([]ledger.Status{ledger.Stale, ledger.Unchanged}) {
		t.Errorf("monday replayed = %v, want [Stale Unchanged]", got)
	}
	late.Close(ctx, "done", nil)

	// A value changed and changed back: Wednesday's export says B is as on
	// Monday; Tuesday's (B in Paris), processed after it, is stale.
	wed := run(t, d, tuesday.Add(24*time.Hour), ledger.ChangesUpdate)
	if got := must(wed.Claim(ctx, []ledger.Item{version("B", "b@x.io", "Rome", 3)})); got[0].Status != ledger.Unchanged {
		t.Fatalf("wednesday on B = %+v", got[0])
	}
	wed.Close(ctx, "done", nil)
	lateTue := run(t, d, tuesday, ledger.ChangesUpdate)
	if got := must(lateTue.Claim(ctx, []ledger.Item{version("B", "b@x.io", "Paris", 3)})); got[0].Status != ledger.Stale {
		t.Errorf("tuesday's change of B after wednesday's export said it was unchanged = %+v, want Stale", got[0])
	}
	lateTue.Close(ctx, "done", nil)

	// -changed skip and report: counted, not claimed.
	for _, mode := range []ledger.ChangeMode{ledger.ChangesSkip, ledger.ChangesReport} {
		r := run(t, d, tuesday.Add(48*time.Hour), mode)
		ds := must(r.Claim(ctx, []ledger.Item{version("B", "b@x.io", "Paris", 3)}))
		if ds[0].Status != ledger.Changed || !slices.Equal(ds[0].Update.Changed, []string{"attributes.city"}) {
			t.Errorf("-changed %s: %+v", mode, ds[0])
		}
		r.Close(ctx, "done", nil)
		if count(t, d, `SELECT count(*) FROM claims`) != 0 {
			t.Errorf("-changed %s left a claim", mode)
		}
	}
	if got := customer(t, d, "B"); got.version != 1 {
		t.Errorf("B was updated: %+v", got)
	}
}

// Two live runs on one key: the newer export waits for the older one and
// then wins; the older one meeting the newer one's claim is stale.
func TestSyncConcurrentRuns(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	first := run(t, d, monday, ledger.ChangesUpdate)
	deliver(t, first, version("A", "a@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3))
	first.Close(ctx, "done", nil)

	older := run(t, d, monday.Add(time.Hour), ledger.ChangesUpdate)
	newer := run(t, d, tuesday, ledger.ChangesUpdate)
	defer older.Close(ctx, "done", nil)
	defer newer.Close(ctx, "done", nil)
	// The older run claims A first; the newer one claims B first.
	if got := must(older.Claim(ctx, []ledger.Item{version("A", "older@x.io", "Oslo", 2)})); got[0].Status != ledger.Updating {
		t.Fatalf("older on A = %+v", got[0])
	}
	if got := must(newer.Claim(ctx, []ledger.Item{version("B", "newer@x.io", "Rome", 3)})); got[0].Status != ledger.Updating {
		t.Fatalf("newer on B = %+v", got[0])
	}
	if got := must(newer.Claim(ctx, []ledger.Item{version("A", "newer@x.io", "Oslo", 2)})); got[0].Status != ledger.Busy {
		t.Errorf("newer on A while older sends = %+v, want Busy", got[0])
	}
	if got := must(older.Claim(ctx, []ledger.Item{version("B", "older@x.io", "Rome", 3)})); got[0].Status != ledger.Stale {
		t.Errorf("older on B while newer sends = %+v, want Stale", got[0])
	}
}

// A run that dies while updating: the rerun takes the update over and
// writes what the dead run wrote too; the update is confirmed once.
func TestSyncUpdateTakenOver(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	first := run(t, d, monday, ledger.ChangesUpdate)
	deliver(t, first, version("A", "a@x.io", "Oslo", 2))
	first.Close(ctx, "done", nil)

	dead := run(t, d, tuesday, ledger.ChangesUpdate)
	if got := must(dead.Claim(ctx, []ledger.Item{version("A", "a@x.io", "Paris", 2)})); got[0].Status != ledger.Updating {
		t.Fatalf("dead run's claim = %+v", got[0])
	}
	ledger.KillLock(t, dead)

	// The rerun is a later export that changes the email only: it writes
	// the city too, which the dead run may have written.
	rerun := run(t, d, tuesday.Add(time.Hour), ledger.ChangesUpdate)
	defer rerun.Close(ctx, "done", nil)
	ds := deliver(t, rerun, version("A", "new@x.io", "Oslo", 2))
	u := ds[0].Update
	if ds[0].Status != ledger.TakenOver || !ds[0].Orphaned || u == nil || !slices.Equal(u.Fields, []string{"email", "attributes.city"}) {
		t.Fatalf("rerun's decision = %+v (update %+v), want TakenOver, Orphaned, fields email and attributes.city", ds[0], u)
	}
	if got := customer(t, d, "A"); got != (stored{"new@x.io", "Oslo", 2}) {
		t.Errorf("A in customers = %+v", got)
	}
	if n := count(t, d, `SELECT count(*) FROM claims`); n != 0 {
		t.Errorf("%d claims left", n)
	}
	// An older export than the dead run's meets its claim: stale.
	if _, err := d.Exec(`INSERT INTO claims (external_id, run_id, kind, as_of, fields, source_file, source_line)
		VALUES ('A', $1, 'update', $2, '{email}', 'f.csv', 2)`, dead.ID(), tuesday.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	r := run(t, d, tuesday.Add(90*time.Minute), ledger.ChangesUpdate)
	defer r.Close(ctx, "done", nil)
	if got := must(r.Claim(ctx, []ledger.Item{version("A", "x@x.io", "Oslo", 2)})); got[0].Status != ledger.Stale {
		t.Errorf("older than a dead run's update = %+v, want Stale", got[0])
	}
}

// A rejected update leaves customers as it was; a failed one is taken over
// by the next run.
func TestSyncUpdateRejectedAndFailed(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	first := run(t, d, monday, ledger.ChangesUpdate)
	deliver(t, first, version("A", "a@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3))
	first.Close(ctx, "done", nil)

	r := run(t, d, tuesday, ledger.ChangesUpdate)
	must(r.Claim(ctx, []ledger.Item{version("A", "bad", "Oslo", 2), version("B", "b2@x.io", "Rome", 3)}))
	if err := r.Mark(ctx, ledger.Rejected, []ledger.Mark{{Key: "A", Reason: "invalid_email"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Mark(ctx, ledger.Failed, []ledger.Mark{{Key: "B", Reason: "gave up"}}); err != nil {
		t.Fatal(err)
	}
	r.Close(ctx, "done", nil)
	var kinds string
	d.QueryRow(`SELECT string_agg(external_id || ':' || state || ':' || kind, ' ' ORDER BY external_id) FROM claims`).Scan(&kinds)
	if kinds != "B:failed:update" {
		t.Errorf("claims after the run = %q, want B's failed update only", kinds)
	}
	next := run(t, d, tuesday, ledger.ChangesUpdate)
	defer next.Close(ctx, "done", nil)
	ds := must(next.Claim(ctx, []ledger.Item{version("A", "bad", "Oslo", 2), version("B", "b2@x.io", "Rome", 3)}))
	if ds[0].Status != ledger.Updating || ds[1].Status != ledger.TakenOver || ds[1].Update == nil || ds[1].Orphaned {
		t.Errorf("next run = %+v / %+v, want Updating, and TakenOver (not orphaned: the run ended cleanly)", ds[0], ds[1])
	}
}

func TestDryRunDecides(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	first := run(t, d, tuesday, ledger.ChangesUpdate)
	deliver(t, first, version("A", "a@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3))
	first.Close(ctx, "done", nil)
	for _, tc := range []struct {
		asOf time.Time
		want []ledger.Status
	}{
		{tuesday, []ledger.Status{ledger.Updating, ledger.Unchanged, ledger.Claimed, ledger.DuplicateInFile}},
		{monday, []ledger.Status{ledger.Stale, ledger.Unchanged, ledger.Claimed, ledger.DuplicateInFile}},
	} {
		dr := must(ledger.StartDryRun(ctx, d, ledger.Sync{AsOf: tc.asOf, Files: []string{"f.csv"}}))
		got := must(dr.Decide(ctx, []ledger.Item{version("A", "z@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3), version("N", "n@x.io", "", 4), version("N", "n@x.io", "", 5)}))
		if fmt.Sprint(statuses(got)) != fmt.Sprint(tc.want) {
			t.Errorf("dry run as of %s = %v, want %v", tc.asOf, statuses(got), tc.want)
		}
		dr.Close(ctx)
	}
	if n := count(t, d, `SELECT count(*) FROM claims`) + count(t, d, `SELECT count(*) FROM claim_blocks`); n != 0 {
		t.Errorf("the dry run claimed %d", n)
	}
}

// Every field of contact.Fields reaches its customers column, by COPY and
// by an update: a field added to Contact without the ledger following
// fails here.
func TestConfirmStoresEveryField(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	c := &contact.Contact{}
	for _, f := range contact.Fields {
		f.Set(c, "v1-"+f.Name)
	}
	c.Email = "v1@x.io"
	it := ledger.Item{Key: c.ExternalID, Fingerprint: c.Fingerprint(), File: "f.csv", Line: 2, Contact: c}
	r := run(t, d, monday, ledger.ChangesUpdate)
	deliver(t, r, it)
	r.Close(ctx, "done", nil)
	check := func(want *contact.Contact) {
		t.Helper()
		for _, f := range contact.Fields {
			var got string
			if err := d.QueryRow(`SELECT ` + f.Name + ` FROM customers`).Scan(&got); err != nil {
				t.Fatalf("customers column %s: %v", f.Name, err)
			}
			if got != f.Get(want) {
				t.Errorf("customers.%s = %q, want %q", f.Name, got, f.Get(want))
			}
		}
	}
	check(c)
	c2 := *c
	for _, f := range contact.Fields[1:] {
		f.Set(&c2, "v2-"+f.Name)
	}
	c2.Email = "v2@x.io"
	it2 := ledger.Item{Key: c.ExternalID, Fingerprint: c2.Fingerprint(), File: "f.csv", Line: 2, Contact: &c2}
	r = run(t, d, tuesday, ledger.ChangesUpdate)
	ds := deliver(t, r, it2)
	r.Close(ctx, "done", nil)
	if want := len(contact.Fields) - 1; ds[0].Status != ledger.Updating || len(ds[0].Update.Fields) != want {
		t.Fatalf("update = %+v, want every field but the key (%d)", ds[0], want)
	}
	check(&c2)
}

// A dead run's newer update the CRM rejected wrote nothing: it neither
// makes this run's change stale nor holds it. A key customers holds with no
// CRM id is never updated (by id it would be created again): changed, not
// sent, saying why. A run whose update claim was taken over marks nothing.
func TestSyncEdgeClaims(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	first := run(t, d, monday, ledger.ChangesUpdate)
	deliver(t, first, version("A", "a@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3))
	first.Close(ctx, "done", nil)
	if _, err := d.Exec(`INSERT INTO claims (external_id, run_id, state, kind, as_of, fields, source_file, source_line)
		VALUES ('A', $1, 'rejected', 'update', $2, '{email}', 'f.csv', 2)`, first.ID(), tuesday.Add(48*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Exec(`UPDATE customers SET crm_id = '' WHERE external_id = 'B'`); err != nil {
		t.Fatal(err)
	}
	r := run(t, d, tuesday, ledger.ChangesUpdate)
	defer r.Close(ctx, "done", nil)
	ds := must(r.Claim(ctx, []ledger.Item{version("A", "a2@x.io", "Oslo", 2), version("B", "b2@x.io", "Rome", 3)}))
	if ds[0].Status != ledger.Updating {
		t.Errorf("A past a dead run's rejected newer update = %+v, want Updating", ds[0])
	}
	if ds[1].Status != ledger.Changed || !strings.Contains(ds[1].Why, "no CRM id") {
		t.Errorf("B without a CRM id = %+v, want Changed, saying why", ds[1])
	}

	// r is cut off; another run takes A's update over and confirms it;
	// r then gives up on A: its mark must not bring a claim back.
	ledger.KillLock(t, r)
	taker := run(t, d, tuesday.Add(time.Hour), ledger.ChangesUpdate)
	deliver(t, taker, version("A", "a3@x.io", "Oslo", 2))
	taker.Close(ctx, "done", nil)
	if err := r.Mark(ctx, ledger.Failed, []ledger.Mark{{Key: "A", Reason: "gave up"}}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d, `SELECT count(*) FROM claims WHERE external_id = 'A' AND state <> 'rejected'`); n != 0 {
		t.Errorf("%d claims of A after the cut-off run's mark, want none", n)
	}
}

// A row the confirming COPY creates leaves as_of NULL, for its run's
// (runs.as_of): every decision that compares export times reads the
// run's, in a process that never saw that run. An unchanged key's as-of
// moves on in the row itself; a run with no as-of time leaves its rows
// older than any export.
func TestCreatedRowsTakeTheirRunsAsOf(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	sunday := monday.Add(-24 * time.Hour)
	mon := run(t, d, monday, ledger.ChangesUpdate)
	deliver(t, mon, version("A", "a@x.io", "Oslo", 2), version("B", "b@x.io", "Rome", 3))
	mon.Close(ctx, "done", nil)
	if n := count(t, d, `SELECT count(*) FROM customers c JOIN runs r ON r.id = c.run_id
		WHERE c.as_of IS NULL AND r.as_of = '2026-11-30T02:00:00Z'`); n != 2 {
		t.Fatalf("%d of 2 created rows leave as_of NULL beside their run's monday", n)
	}

	late := run(t, d, sunday, ledger.ChangesUpdate)
	ds := must(late.Claim(ctx, []ledger.Item{version("A", "a@x.io", "Bonn", 2)}))
	if ds[0].Status != ledger.Stale || !strings.Contains(ds[0].Why, "as of 2026-11-30T02:00:00Z") {
		t.Errorf("sunday's change of A after monday's export = %+v, want Stale as of monday", ds[0])
	}
	late.Close(ctx, "done", nil)

	tue := run(t, d, tuesday, ledger.ChangesUpdate)
	if ds := deliver(t, tue, version("B", "b@x.io", "Rome", 3)); ds[0].Status != ledger.Unchanged {
		t.Fatalf("tuesday on B = %+v", ds[0])
	}
	tue.Close(ctx, "done", nil)
	var asOf time.Time
	if err := d.QueryRow(`SELECT as_of FROM customers WHERE external_id = 'B'`).Scan(&asOf); err != nil || !asOf.Equal(tuesday) {
		t.Errorf("B's as_of after tuesday found it unchanged = %v (%v), want tuesday", asOf, err)
	}

	// A block holding an update goes in through an INSERT, not the
	// COPY: its created rows leave as_of NULL too.
	mixed := run(t, d, tuesday, ledger.ChangesUpdate)
	if ds := deliver(t, mixed, version("A", "a@x.io", "Rome", 2), version("D", "d@x.io", "Oslo", 5)); ds[0].Status != ledger.Updating || ds[1].Status != ledger.Claimed {
		t.Fatalf("tuesday on A and D = %v, want [Updating Claimed]", statuses(ds))
	}
	mixed.Close(ctx, "done", nil)
	if n := count(t, d, `SELECT count(*) FROM customers WHERE external_id = 'D' AND as_of IS NULL`); n != 1 {
		t.Errorf("D, created beside an update, holds an as_of of its own")
	}
	lateD := run(t, d, monday, ledger.ChangesUpdate)
	if ds := must(lateD.Claim(ctx, []ledger.Item{version("D", "d@x.io", "Bonn", 5)})); ds[0].Status != ledger.Stale {
		t.Errorf("monday's change of D after tuesday's export = %+v, want Stale", ds[0])
	}
	lateD.Close(ctx, "done", nil)

	none := run(t, d, time.Time{}, ledger.ChangesUpdate)
	deliver(t, none, version("C", "c@x.io", "Oslo", 4))
	none.Close(ctx, "done", nil)
	again := run(t, d, sunday, ledger.ChangesUpdate)
	defer again.Close(ctx, "done", nil)
	if ds := must(again.Claim(ctx, []ledger.Item{version("C", "c@x.io", "Rome", 4)})); ds[0].Status != ledger.Updating {
		t.Errorf("a change of C, created by a run with no as-of time = %+v, want Updating", ds[0])
	}
}
