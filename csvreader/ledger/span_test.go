package ledger_test

import (
	"context"
	"fmt"
	"testing"

	"crmsync/csvreader/ledger"
	"crmsync/shared/pgtest"
)

// The look-up skips probing customers for a block whose keys' range holds
// no customer (a sorted export's new keys), under a bytewise collation,
// where the reader's range is the index's. Under any collation, gated or
// not, a key customers holds is found, also among others of its range,
// and new keys are claimed.
func TestClaimLooksUpKeysOverTheirRange(t *testing.T) {
	for _, tc := range []struct {
		name      string
		collation string // customers.external_id's; "" keeps the database's (C)
		inSQL     bool   // every key probed, as under another collation
		bytewise  bool   // what the run finds of the collation
	}{
		{name: "C, gated by the keys' range", bytewise: true},
		{name: "C, every key probed", inSQL: true, bytewise: true},
		{name: "ICU root collation", collation: "und-x-icu"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d := pgtest.New(t)
			if tc.collation != "" {
				var n int
				if err := d.QueryRow(`SELECT count(*) FROM pg_collation WHERE collname = $1`, tc.collation).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					t.Skipf("this PostgreSQL has no collation %q (built without ICU): every key probed is covered by the %q case", tc.collation, "C, every key probed")
				}
				if _, err := d.Exec(fmt.Sprintf(`ALTER TABLE customers ALTER COLUMN external_id TYPE text COLLATE %q`, tc.collation)); err != nil {
					t.Fatal(err)
				}
			}
			// Delivered before: under the ICU root collation "a20" sorts
			// before "B30", bytewise after it.
			old := must(ledger.Start(ctx, d, nil))
			held := []string{"K10", "K20", "K30", "K40", "a20", "B30"}
			if _, err := old.Claim(ctx, items(held...)); err != nil {
				t.Fatal(err)
			}
			var ds []ledger.Delivery
			for _, k := range held {
				ds = append(ds, delivery(k))
			}
			if _, err := old.Confirm(ctx, ds); err != nil {
				t.Fatal(err)
			}
			old.Close(ctx, "done", nil)

			r := must(ledger.Start(ctx, d, nil))
			defer r.Close(ctx, "done", nil)
			if tc.inSQL {
				if err := ledger.ForceProbeEveryKey(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			if b, err := ledger.KeysBytewise(ctx, r); err != nil || b != (tc.bytewise && !tc.inSQL) {
				t.Fatalf("keys bytewise = %v, %v; want %v", b, err, tc.bytewise && !tc.inSQL)
			}
			for _, blk := range []struct {
				keys []string
				want []ledger.Status
			}{
				// K20 held, K30 held but not asked for, in the range.
				{[]string{"K15", "K20", "K35"}, []ledger.Status{ledger.Claimed, ledger.Unchanged, ledger.Claimed}},
				// A range past every customer.
				{[]string{"K50", "K60"}, []ledger.Status{ledger.Claimed, ledger.Claimed}},
				// A range over every customer, none of them asked for.
				{[]string{"K05", "K45"}, []ledger.Status{ledger.Claimed, ledger.Claimed}},
				// The bounds themselves held.
				{[]string{"K10", "K40"}, []ledger.Status{ledger.Unchanged, ledger.Unchanged}},
				// Keys whose order depends on the collation.
				{[]string{"a20", "B30", "b25"}, []ledger.Status{ledger.Unchanged, ledger.Unchanged, ledger.Claimed}},
			} {
				its := items(blk.keys...)
				for i := range its {
					its[i].Fingerprint = "fp" // delivery's: unchanged when held
				}
				got := statuses(must(r.Claim(ctx, its)))
				if fmt.Sprint(got) != fmt.Sprint(blk.want) {
					t.Errorf("claim %v = %v, want %v", blk.keys, got, blk.want)
				}
			}
		})
	}
}
