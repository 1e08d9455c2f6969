package ledger_test

import (
	"context"
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
		Attributes: map[string]string{"company": "Acme"}}, CRMID: "crm-" + key, Fingerprint: "fp", File: "f.csv", Line: 2}
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
	if err := old.Confirm(ctx, []ledger.Delivery{delivery("K1")}); err != nil {
		t.Fatal(err)
	}
	if err := old.Mark(ctx, "rejected", []string{"K2"}, []string{"invalid_email"}); err != nil {
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
	want := []ledger.Status{ledger.AlreadyDelivered, ledger.Resend, ledger.TakenOver, ledger.Claimed, ledger.Busy}
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
	if err := cur.Confirm(ctx, []ledger.Delivery{delivery("K4")}); err != nil {
		t.Fatal(err)
	}
	got = must(cur.Claim(ctx, items("K4")))
	if got[0].Status != ledger.DuplicateInFile {
		t.Errorf("K4 after delivery = %v, want DuplicateInFile", got[0])
	}
	var claims, customers int
	d.QueryRow(`SELECT count(*) FROM claims WHERE external_id='K4'`).Scan(&claims)
	d.QueryRow(`SELECT count(*) FROM customers WHERE external_id='K4' AND crm_id='crm-K4' AND attributes->>'company'='Acme'`).Scan(&customers)
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
	if err := a.Confirm(ctx, []ledger.Delivery{delivery("X")}); err != nil {
		t.Fatal(err)
	}
	late := delivery("X")
	late.CRMID = "other"
	if err := b.Confirm(ctx, []ledger.Delivery{late, delivery("Y")}); err != nil {
		t.Fatalf("Confirm with an existing key: %v", err)
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

// A Claim retried after its commit's answer was lost must not mistake its
// own claims for repeats in the file: that would drop the records.
func TestClaimRetryAfterLostCommit(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	first := items("A", "B")
	if got := statuses(must(r.Claim(ctx, first))); fmt.Sprint(got) != fmt.Sprint([]ledger.Status{ledger.Claimed, ledger.Claimed}) {
		t.Fatalf("first claim = %v", got)
	}
	// The same records again: the retry of a Claim whose commit was lost.
	got := statuses(must(r.Claim(ctx, first)))
	if want := []ledger.Status{ledger.TakenOver, ledger.TakenOver}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("retried claim = %v, want %v (sent, after a lookup)", got, want)
	}
	// The same keys on other lines are repeats in the file.
	again := items("A", "B")
	for i := range again {
		again[i].Line += 100
	}
	got = statuses(must(r.Claim(ctx, again)))
	if want := []ledger.Status{ledger.DuplicateInFile, ledger.DuplicateInFile}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("repeats = %v, want %v", got, want)
	}
}

// Claims left by a run that ended cleanly (its calls all answered) need no
// wait before their lookup; a crashed run's do.
func TestTakeoverOrphanedOnlyAfterCrash(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	clean := must(ledger.Start(ctx, d, nil))
	must(clean.Claim(ctx, items("A")))
	if err := clean.Mark(ctx, "failed", []string{"A"}, []string{"gave up"}); err != nil {
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
