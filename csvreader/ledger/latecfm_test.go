package ledger_test

import (
	"context"
	"testing"
	"time"

	"crmsync/csvreader/ledger"
	"crmsync/shared/pgtest"
)

// B (tuesday) updates K and is cut off; C (wednesday) takes B's update
// claim over. B's call answers and B confirms first; C's update, sent
// after B's calls were over, is what the CRM ends with.
func TestSyncLateConfirmOfCutOffRun(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	wednesday := tuesday.Add(24 * time.Hour)
	a := run(t, d, monday, ledger.ChangesUpdate)
	deliver(t, a, version("K", "k@x.io", "Oslo", 2))
	a.Close(ctx, "done", nil)

	b := run(t, d, tuesday, ledger.ChangesUpdate)
	bd := must(b.Claim(ctx, []ledger.Item{version("K", "k@x.io", "Rome", 2)}))
	if bd[0].Status != ledger.Updating {
		t.Fatalf("b: %v", bd[0].Status)
	}
	ledger.KillLock(t, b)

	c := run(t, d, wednesday, ledger.ChangesUpdate)
	defer c.Close(ctx, "done", nil)
	cd := must(c.Claim(ctx, []ledger.Item{version("K", "k@x.io", "Bonn", 2)}))
	if cd[0].Status != ledger.TakenOver || cd[0].Update == nil {
		t.Fatalf("c: %+v", cd[0])
	}
	// b's call answers: b records it (Confirm needs no lock).
	u := bd[0].Update
	if _, err := b.Confirm(ctx, []ledger.Delivery{{Contact: u.Contact, CRMID: u.CRMID, Fingerprint: u.Fingerprint, File: "f.csv", Line: 2, Update: u}}); err != nil {
		t.Fatal(err)
	}
	// c sends its update after b's calls are over: the CRM holds Bonn.
	u = cd[0].Update
	already, err := c.Confirm(ctx, []ledger.Delivery{{Contact: u.Contact, CRMID: u.CRMID, Fingerprint: u.Fingerprint, File: "f.csv", Line: 2, Update: u}})
	if err != nil {
		t.Fatal(err)
	}
	var asOf time.Time
	d.QueryRow(`SELECT as_of FROM customers WHERE external_id='K'`).Scan(&asOf)
	s := customer(t, d, "K")
	if s.city != "Bonn" || s.version != 2 || len(already) != 0 || !asOf.Equal(wednesday) {
		t.Errorf("customers holds %+v as of %s (c's confirmation already: %v); the CRM holds c's Bonn, as of wednesday, version 2", s, asOf, already)
	}
}
