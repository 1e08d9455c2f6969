package ledger

import (
	"context"
	"testing"
	"time"

	"crmsync/shared/contact"
	"crmsync/shared/pgtest"
)

func rvItem(key, city string) Item {
	c := &contact.Contact{ExternalID: key, Email: key + "@x.io", Attributes: contact.AttrsOf(map[string]string{"city": city})}
	return Item{Key: key, Fingerprint: c.Fingerprint(), File: "f.csv", Line: 2, Contact: c}
}

// The retry of a Claim whose commit answer was lost, after it took a dead
// run's claim over (an update, and a create): the dead run's calls may
// still run for about a minute, and the retry waits for them as the first
// attempt did.
func TestLostCommitRetryWaits(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	mon := time.Date(2026, 11, 30, 2, 0, 0, 0, time.UTC)
	start := func(asOf time.Time) *Run {
		r, err := Start(ctx, d, []string{"f.csv"})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.SetSync(ctx, Sync{AsOf: asOf, Files: []string{"f.csv"}}); err != nil {
			t.Fatal(err)
		}
		if err := r.SetCallBound(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		return r
	}
	a := start(mon)
	ds, _ := a.Claim(ctx, []Item{rvItem("K", "Oslo")})
	if ds[0].Status != Claimed {
		t.Fatal(ds[0].Status)
	}
	if _, err := a.Confirm(ctx, []Delivery{{Contact: *rvItem("K", "Oslo").Contact, CRMID: "crm-K", Fingerprint: rvItem("K", "Oslo").Fingerprint, File: "f.csv", Line: 2}}); err != nil {
		t.Fatal(err)
	}
	a.Close(ctx, "done", nil)

	for _, tc := range []struct {
		name, key, city string
		upd             bool
	}{{"update", "K", "Rome", true}, {"create", "N", "Rome", false}} {
		b := start(mon.Add(24 * time.Hour))
		if _, err := b.Claim(ctx, []Item{rvItem(tc.key, tc.city)}); err != nil {
			t.Fatal(err)
		}
		KillLock(t, b)

		c := start(mon.Add(48 * time.Hour))
		it := rvItem(tc.key, "Bonn")
		d1, err := c.Claim(ctx, []Item{it})
		if err != nil {
			t.Fatal(err)
		}
		// The commit's answer was lost: the run does not know it holds K.
		c.inflight.settle([]string{tc.key})
		d2, err := c.Claim(ctx, []Item{it})
		if err != nil {
			t.Fatal(err)
		}
		if d1[0].Wait < 30*time.Second || d2[0].Status != TakenOver || !d2[0].Orphaned || d2[0].Wait < 30*time.Second {
			t.Errorf("%s: first attempt %+v, its retry %+v: the retry must wait out b's calls (about a minute) as the first did", tc.name, d1[0], d2[0])
		}
		c.Close(ctx, "done", nil)
	}
}
