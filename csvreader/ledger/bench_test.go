package ledger_test

import (
	"context"
	"fmt"
	"testing"

	"crmsync/csvreader/ledger"
	"crmsync/shared/contact"
	"crmsync/shared/pgtest"
)

const benchBlock = 1000

// benchBlockOf returns the items and deliveries of block n of 1000 records
// shaped like the benchmark export's rows.
func benchBlockOf(n int) ([]ledger.Item, []ledger.Delivery) {
	its := make([]ledger.Item, benchBlock)
	ds := make([]ledger.Delivery, benchBlock)
	for i := range its {
		key := fmt.Sprintf("C%09d", n*benchBlock+i)
		c := contact.Contact{ExternalID: key, Email: key + ".lovelace@example.com", FirstName: "Ada", LastName: "Lovelace",
			Phone: "+44 20 7946 0000", Attributes: map[string]string{"company": "Acme Ltd", "city": "London", "country": "GB", "created_at": "2024-01-01T10:00:00Z"}}
		fp := c.Fingerprint()
		its[i] = ledger.Item{Key: key, Fingerprint: fp, File: ".bench/export-1000000.csv", Line: int64(n*benchBlock + i + 2)}
		ds[i] = ledger.Delivery{Contact: c, CRMID: "crm_" + key, Fingerprint: fp, File: its[i].File, Line: its[i].Line}
	}
	return its, ds
}

// BenchmarkLedger measures the ledger's work per 1000-record block against
// the PostgreSQL of DATABASE_URL (make bench provides one; without it the
// benchmark fails): Claim of new keys, Confirm (COPY into customers and
// dropping the claims), and both, as the reader does for every block. It
// reports records/s.
//
//	scripts/with-pg go test -run '^$' -bench Ledger ./csvreader/ledger/
func BenchmarkLedger(b *testing.B) {
	ctx := context.Background()
	d := pgtest.New(b)
	run, err := ledger.Start(ctx, d, []string{"bench.csv"})
	if err != nil {
		b.Fatal(err)
	}
	defer run.Close(ctx, "done", nil)
	block := 0
	claim := func(b *testing.B) []ledger.Delivery {
		its, ds := benchBlockOf(block)
		block++
		got, err := run.Claim(ctx, its)
		if err != nil {
			b.Fatal(err)
		}
		if got[0].Status != ledger.Claimed {
			b.Fatalf("claim: got %v, want claimed", got[0])
		}
		return ds
	}
	records := func(b *testing.B) {
		b.ReportMetric(float64(b.N*benchBlock)/b.Elapsed().Seconds(), "records/s")
	}
	b.Run("Claim", func(b *testing.B) {
		for b.Loop() {
			claim(b)
		}
		records(b)
	})
	b.Run("Confirm", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			ds := claim(b)
			b.StartTimer()
			if _, err := run.Confirm(ctx, ds); err != nil {
				b.Fatal(err)
			}
		}
		records(b)
	})
	b.Run("ClaimConfirm", func(b *testing.B) {
		for b.Loop() {
			if _, err := run.Confirm(ctx, claim(b)); err != nil {
				b.Fatal(err)
			}
		}
		records(b)
	})
}
