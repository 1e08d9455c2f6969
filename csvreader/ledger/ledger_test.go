package ledger_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"crmsync/csvreader/ledger"
	"crmsync/shared/contact"
	"crmsync/shared/pgtest"
)

func items(keys ...string) []ledger.Item {
	out := make([]ledger.Item, len(keys))
	for i, k := range keys {
		out[i] = ledger.Item{Key: k, Fingerprint: "fp-" + k, File: "f.csv", Line: int64(i + 2)}
	}
	return out
}

func statuses(ds []ledger.Decision) []ledger.Status {
	out := make([]ledger.Status, len(ds))
	for i, d := range ds {
		out[i] = d.Status
	}
	return out
}

func delivery(key string) ledger.Delivery {
	return ledger.Delivery{Contact: contact.Contact{ExternalID: key, Email: key + "@example.com",
		Attributes: contact.AttrsOf(map[string]string{"company": "Acme"})}, CRMID: "crm-" + key, Fingerprint: "fp", File: "f.csv", Line: 2}
}

func TestClaimDecisions(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)

	// An earlier run delivered K1, was rejected on K2, and died holding K3.
	old, err := ledger.Start(ctx, d, []string{"old.csv"})
	if err != nil {
		t.Fatal(err)
	}
	if got := statuses(must(old.Claim(ctx, items("K1", "K2", "K3")))); fmt.Sprint(got) != fmt.Sprint([]ledger.Status{ledger.Claimed, ledger.Claimed, ledger.Claimed}) {
		t.Fatalf("first claims = %v", got)
	}
	if _, err := old.Confirm(ctx, []ledger.Delivery{delivery("K1")}); err != nil {
		t.Fatal(err)
	}
	if err := old.Mark(ctx, ledger.Rejected, []ledger.Mark{{Key: "K2", Reason: "invalid_email"}}); err != nil {
		t.Fatal(err)
	}
	// Keep K2's rejected claim as a dead run would leave it (Close drops it).
	if _, err := d.Exec(`UPDATE runs SET status='failed' WHERE id=$1`, old.ID()); err != nil {
		t.Fatal(err)
	}
	oldLive, err := ledger.Start(ctx, d, []string{"live.csv"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oldLive.Claim(ctx, items("K5")); err != nil {
		t.Fatal(err)
	}
	ledger.KillLock(t, old) // the old run dies: its lock goes, its claims stay

	cur, err := ledger.Start(ctx, d, []string{"new.csv"})
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close(ctx, "done", nil)
	got := must(cur.Claim(ctx, items("K1", "K2", "K3", "K4", "K5")))
	want := []ledger.Status{ledger.Unchanged, ledger.Resend, ledger.TakenOver, ledger.Claimed, ledger.Busy}
	if fmt.Sprint(statuses(got)) != fmt.Sprint(want) {
		t.Fatalf("claims = %v, want %v (%+v)", statuses(got), want, got)
	}
	if !got[2].Orphaned {
		t.Errorf("K3 taken over from a run that died mid-way is not marked Orphaned: %+v", got[2])
	}
	// The same keys again in this run are repeats in the file.
	got = must(cur.Claim(ctx, items("K3", "K4")))
	want = []ledger.Status{ledger.DuplicateInFile, ledger.DuplicateInFile}
	if fmt.Sprint(statuses(got)) != fmt.Sprint(want) {
		t.Fatalf("repeat claims = %v, want %v", statuses(got), want)
	}
	if _, err := cur.Confirm(ctx, []ledger.Delivery{delivery("K4")}); err != nil {
		t.Fatal(err)
	}
	got = must(cur.Claim(ctx, items("K4")))
	if got[0].Status != ledger.DuplicateInFile {
		t.Errorf("K4 after delivery = %v, want DuplicateInFile", got[0])
	}
	var claims, customers int
	d.QueryRow(`SELECT count(*) FROM claims WHERE external_id='K4'`).Scan(&claims)
	d.QueryRow(`SELECT count(*) FROM customers WHERE external_id='K4' AND crm_id='crm-K4' AND attributes::jsonb->>'company'='Acme'`).Scan(&customers)
	if claims != 0 || customers != 1 {
		t.Errorf("after Confirm: %d claims, %d customers; want 0, 1", claims, customers)
	}
	oldLive.Close(ctx, "done", nil)
}

// Confirm must not fail when another run recorded the key meanwhile.
func TestConfirmKeepsExistingCustomer(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	a := must(ledger.Start(ctx, d, nil))
	b := must(ledger.Start(ctx, d, nil))
	defer a.Close(ctx, "done", nil)
	defer b.Close(ctx, "done", nil)
	if _, err := a.Confirm(ctx, []ledger.Delivery{delivery("X")}); err != nil {
		t.Fatal(err)
	}
	late := delivery("X")
	late.CRMID = "other"
	already, err := b.Confirm(ctx, []ledger.Delivery{late, delivery("Y")})
	if err != nil {
		t.Fatalf("Confirm with an existing key: %v", err)
	}
	if len(already) != 1 || already[0] != 0 {
		t.Errorf("Confirm reported %v already recorded, want [0] (X)", already)
	}
	var id string
	d.QueryRow(`SELECT crm_id FROM customers WHERE external_id='X'`).Scan(&id)
	var n int
	d.QueryRow(`SELECT count(*) FROM customers`).Scan(&n)
	if id != "crm-X" || n != 2 {
		t.Errorf("crm_id = %q, customers = %d; want crm-X, 2", id, n)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A Claim retried after its commit's answer was lost: the block that
// commit left, unknown to the run, neither blocks the retry nor outlives
// the run. (Keys that commit took over are TestOrphanedKeptOnClaimRetry's.)
func TestClaimRetryAfterLostCommit(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	r := must(ledger.Start(ctx, d, nil))
	// What the first attempt committed before its answer was lost.
	if _, err := d.Exec(`INSERT INTO claim_blocks (run_id, source_file, keys, lines)
		VALUES ($1, 'f.csv', '{A,B}', '{2,3}')`, r.ID()); err != nil {
		t.Fatal(err)
	}
	first := items("A", "B")
	if got := statuses(must(r.Claim(ctx, first))); fmt.Sprint(got) != fmt.Sprint([]ledger.Status{ledger.Claimed, ledger.Claimed}) {
		t.Fatalf("retried claim = %v, want both claimed (nothing was sent)", got)
	}
	// The same keys on other lines are repeats in the file.
	again := items("A", "B")
	for i := range again {
		again[i].Line += 100
	}
	if got := statuses(must(r.Claim(ctx, again))); fmt.Sprint(got) != fmt.Sprint([]ledger.Status{ledger.DuplicateInFile, ledger.DuplicateInFile}) {
		t.Errorf("repeats = %v, want duplicates in the file", got)
	}
	if _, err := r.Confirm(ctx, []ledger.Delivery{delivery("A"), delivery("B")}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(ctx, "done", nil); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d, `SELECT count(*) FROM claim_blocks`); n != 0 {
		t.Errorf("%d blocks left after a clean end, the lost commit's included", n)
	}
}

// Claims left by a run that ended cleanly (its calls all answered) need no
// wait before their lookup; a crashed run's do.
func TestTakeoverOrphanedOnlyAfterCrash(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	clean := must(ledger.Start(ctx, d, nil))
	must(clean.Claim(ctx, items("A")))
	if err := clean.Mark(ctx, ledger.Failed, []ledger.Mark{{Key: "A", Reason: "gave up"}}); err != nil {
		t.Fatal(err)
	}
	if err := clean.Close(ctx, "done", nil); err != nil {
		t.Fatal(err)
	}
	crashed := must(ledger.Start(ctx, d, nil))
	must(crashed.Claim(ctx, items("B")))
	ledger.KillLock(t, crashed)

	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	got := must(r.Claim(ctx, items("A", "B")))
	if got[0].Status != ledger.TakenOver || got[0].Orphaned {
		t.Errorf("A from a cleanly ended run = %+v, want TakenOver, not Orphaned", got[0])
	}
	if got[1].Status != ledger.TakenOver || !got[1].Orphaned {
		t.Errorf("B from a crashed run = %+v, want TakenOver and Orphaned", got[1])
	}
}

// Fields that COPY's text format or JSON must escape arrive in customers
// exactly as sent.
func TestConfirmKeepsFieldsExact(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	cases := []struct {
		name  string
		value string
	}{
		{"plain", "Ada"},
		{"tab", "a\tb"},
		{"newline", "line1\nline2"},
		{"carriage return", "a\rb"},
		{"backslash", `C:\path\n`},
		{"backslash dot", `\.`},
		{"quotes", `say "hi" 'there'`},
		{"unicode", "Zoë Ωmega 日本 🎉"},
		{"control", "bell\x07esc\x1b"},
		{"copy null marker", `\N`},
		{"empty", ""},
		{"html", "<b>&amp;</b>"},
		{"separators", "\u2028\u2029"},
	}
	var ds []ledger.Delivery
	var its []ledger.Item
	for i, c := range cases {
		key := fmt.Sprintf("K%02d", i)
		its = append(its, ledger.Item{Key: key, File: "f.csv", Line: int64(i + 2)})
		ds = append(ds, ledger.Delivery{
			Contact: contact.Contact{ExternalID: key, Email: key + "@example.com", FirstName: c.value, LastName: c.value,
				Phone: c.value, Attributes: contact.AttrsOf(map[string]string{"note": c.value, c.value + "k": "v"})},
			CRMID: "crm-" + key, Fingerprint: "fp", File: "dir\twith tab/f.csv", Line: int64(i + 2)})
	}
	must(r.Claim(ctx, its))
	if _, err := r.Confirm(ctx, ds); err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var first, last, phone, note, other, file string
			err := d.QueryRow(`SELECT first_name, last_name, phone, attributes::jsonb->>'note', attributes::jsonb->>($2 || 'k'), source_file
				FROM customers WHERE external_id = $1`, fmt.Sprintf("K%02d", i), c.value).Scan(&first, &last, &phone, &note, &other, &file)
			if err != nil {
				t.Fatal(err)
			}
			for _, got := range []string{first, last, phone, note} {
				if got != c.value {
					t.Errorf("stored %q, want %q", got, c.value)
				}
			}
			if other != "v" || file != "dir\twith tab/f.csv" {
				t.Errorf("attribute named after the value = %q, file = %q", other, file)
			}
		})
	}
}

func count(t *testing.T, d interface {
	QueryRow(string, ...any) *sql.Row
}, query string, args ...any) int {
	t.Helper()
	var n int
	if err := d.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A block's row lives until every key in it is settled, and not longer.
func TestBlockRowLivesUntilSettled(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	r := must(ledger.Start(ctx, d, nil))
	must(r.Claim(ctx, items("A", "B", "C")))
	if n := count(t, d, `SELECT count(*) FROM claim_blocks WHERE run_id = $1`, r.ID()); n != 1 {
		t.Fatalf("claim_blocks rows after claiming 3 keys = %d, want 1", n)
	}
	if n := count(t, d, `SELECT count(*) FROM claims`); n != 0 {
		t.Fatalf("claims rows after a clean claim = %d, want 0", n)
	}
	if _, err := r.Confirm(ctx, []ledger.Delivery{delivery("A")}); err != nil {
		t.Fatal(err)
	}
	if err := r.Mark(ctx, ledger.Rejected, []ledger.Mark{{Key: "B", Reason: "invalid_email"}}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d, `SELECT count(*) FROM claim_blocks`); n != 1 {
		t.Fatalf("block deleted while C is unsettled (%d rows)", n)
	}
	if err := r.Mark(ctx, ledger.Failed, []ledger.Mark{{Key: "C", Reason: "gave up"}}); err != nil {
		t.Fatal(err)
	}
	// The block is finished; the next write takes it away.
	must(r.Claim(ctx, items("D")))
	if _, err := r.Confirm(ctx, []ledger.Delivery{delivery("D")}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d, `SELECT count(*) FROM claim_blocks WHERE $1 = ANY(keys)`, "A"); n != 0 {
		t.Errorf("A's block outlived its keys")
	}
	if err := r.Close(ctx, "done", nil); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d, `SELECT count(*) FROM claim_blocks`); n != 0 {
		t.Errorf("claim_blocks keeps %d rows after a clean end", n)
	}
	var states []string
	rows, err := d.Query(`SELECT external_id || ':' || state FROM claims ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		rows.Scan(&s)
		states = append(states, s)
	}
	rows.Close()
	if fmt.Sprint(states) != "[C:failed]" {
		t.Errorf("claims after the run = %v, want only C failed (maybe sent); rejected ones go at the end", states)
	}
}

// A dead run's blocks become claims rows when the next run starts: keys it
// delivered are dropped, the others are taken over with a lookup.
func TestDeadRunBlocksRecoveredAtStart(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	dead := must(ledger.Start(ctx, d, nil))
	must(dead.Claim(ctx, items("A", "B", "C")))
	if _, err := dead.Confirm(ctx, []ledger.Delivery{delivery("A")}); err != nil {
		t.Fatal(err)
	}
	ledger.KillLock(t, dead)

	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	if n := count(t, d, `SELECT count(*) FROM claim_blocks`); n != 0 {
		t.Errorf("dead run's block still there after the next start")
	}
	if n := count(t, d, `SELECT count(*) FROM claims WHERE run_id = $1 AND state = 'sending' AND external_id IN ('B', 'C')`, dead.ID()); n != 2 {
		t.Errorf("claims rows of the dead run's unsettled keys = %d, want 2 (B, C)", n)
	}
	got := must(r.Claim(ctx, items("A", "B", "C")))
	if want := []ledger.Status{ledger.Unchanged, ledger.TakenOver, ledger.TakenOver}; fmt.Sprint(statuses(got)) != fmt.Sprint(want) {
		t.Fatalf("claims = %v, want %v", statuses(got), want)
	}
	if !got[1].Orphaned || !got[2].Orphaned {
		t.Errorf("keys of a run that died mid-way not marked Orphaned: %+v", got)
	}
}

// A run that dies while another runs leaves blocks the survivor meets key
// by key: busy while the owner lives, taken over once it is dead.
func TestBlockOfRunDyingMidRun(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	other := must(ledger.Start(ctx, d, nil))
	must(other.Claim(ctx, items("A", "B")))
	if got := statuses(must(r.Claim(ctx, items("A")))); got[0] != ledger.Busy {
		t.Fatalf("key of a live run's block = %v, want Busy", got)
	}
	ledger.KillLock(t, other)
	got := must(r.Claim(ctx, items("A")))
	if got[0].Status != ledger.TakenOver || !got[0].Orphaned {
		t.Fatalf("key of a dead run's block = %+v, want TakenOver, Orphaned", got[0])
	}
	if _, err := r.Confirm(ctx, []ledger.Delivery{delivery("A")}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d, `SELECT count(*) FROM claims`); n != 0 {
		t.Errorf("claims rows after confirming the taken-over key = %d, want 0", n)
	}
}

// Runs claiming the same keys at the same moment: each key is claimed by
// exactly one of them.
func TestConcurrentRunsClaimEachKeyOnce(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	const runs, keys, chunk = 4, 400, 25
	var all []string
	for i := range keys {
		all = append(all, fmt.Sprintf("K%04d", i))
	}
	claimed := make([][]string, runs)
	errs := make(chan error, runs)
	for n := range runs {
		r := must(ledger.Start(ctx, d, nil))
		defer r.Close(ctx, "done", nil)
		go func() {
			// Each run walks the keys from another starting point.
			order := append(append([]string{}, all[n*keys/runs:]...), all[:n*keys/runs]...)
			for i := 0; i < len(order); i += chunk {
				ds, err := r.Claim(ctx, items(order[i:i+chunk]...))
				if err != nil {
					errs <- err
					return
				}
				for j, dec := range ds {
					if dec.Status == ledger.Claimed {
						claimed[n] = append(claimed[n], order[i+j])
					}
				}
			}
			errs <- nil
		}()
	}
	for range runs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	owner := map[string]int{}
	for n, ks := range claimed {
		for _, k := range ks {
			if prev, ok := owner[k]; ok {
				t.Errorf("%s claimed by run %d and run %d", k, prev, n)
			}
			owner[k] = n
		}
	}
	if len(owner) != keys {
		t.Errorf("%d keys claimed, want all %d", len(owner), keys)
	}
}

// A confirmation larger than one COPY chunk arrives whole: every row, each
// field intact across the chunk boundaries.
func TestConfirmManyChunks(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	const n = 3000 // ~300 bytes a row: about 15 chunks
	var its []ledger.Item
	var ds []ledger.Delivery
	for i := range n {
		key := fmt.Sprintf("K%05d", i)
		long := fmt.Sprintf("%s\t%0200d\\", key, i)
		its = append(its, ledger.Item{Key: key, File: "f.csv", Line: int64(i + 2)})
		ds = append(ds, ledger.Delivery{Contact: contact.Contact{ExternalID: key, Email: key + "@example.com", FirstName: long,
			Attributes: contact.AttrsOf(map[string]string{"n": long})}, CRMID: "crm-" + key, Fingerprint: "fp", File: "f.csv", Line: int64(i + 2)})
	}
	must(r.Claim(ctx, its))
	if _, err := r.Confirm(ctx, ds); err != nil {
		t.Fatal(err)
	}
	bad := count(t, d, `SELECT count(*) FROM customers
		WHERE first_name <> external_id || E'\t' || lpad((source_line - 2)::text, 200, '0') || '\'
		   OR attributes::jsonb->>'n' <> first_name OR crm_id <> 'crm-' || external_id`)
	if total := count(t, d, `SELECT count(*) FROM customers`); total != n || bad != 0 {
		t.Errorf("customers holds %d rows (want %d), %d of them altered", total, n, bad)
	}
}

// A run taken for dead while it lives (its lock lost for a while) has its
// blocks turned into claims rows by a run that starts meanwhile; once it
// confirms those keys, its end clears the rows.
func TestCloseClearsClaimsOfConfirmedKeys(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	a := must(ledger.Start(ctx, d, nil))
	must(a.Claim(ctx, items("K")))
	ledger.KillLock(t, a)
	b := must(ledger.Start(ctx, d, nil))
	defer b.Close(ctx, "done", nil)
	if n := count(t, d, `SELECT count(*) FROM claims WHERE external_id = 'K'`); n != 1 {
		t.Fatalf("K's block not turned into a claims row (%d rows)", n)
	}
	if _, err := a.Confirm(ctx, []ledger.Delivery{delivery("K")}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(ctx, "done", nil); err != nil {
		t.Fatal(err)
	}
	if n := count(t, d, `SELECT count(*) FROM claims`); n != 0 {
		t.Errorf("%d claims rows left for a key in customers", n)
	}
}

// Items of several files claimed at once get a block per file, each holding
// only its own file's keys.
func TestClaimBlockPerFile(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	its := items("A1", "B1", "A2")
	its[1].File = "b.csv"
	must(r.Claim(ctx, its))
	rows, err := d.Query(`SELECT source_file || ':' || array_to_string(keys, ',') FROM claim_blocks ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var s string
		rows.Scan(&s)
		got = append(got, s)
	}
	if fmt.Sprint(got) != "[b.csv:B1 f.csv:A1,A2]" {
		t.Errorf("blocks = %v, want [b.csv:B1 f.csv:A1,A2]", got)
	}
}
