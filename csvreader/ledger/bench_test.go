package ledger_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

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
			Phone: "+44 20 7946 0000", Attributes: contact.AttrsOf(map[string]string{"company": "Acme Ltd", "city": "London", "country": "GB", "created_at": "2024-01-01T10:00:00Z"})}
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

// BenchmarkLedgerFull measures claim + confirm of new keys, as
// BenchmarkLedger/ClaimConfirm, against a customers table already holding
// many delivered keys: each size of LEDGER_BENCH_SIZES (default
// "0,1000000"; make bench's phase "ledger" gives 0, 10M and 50M), filled
// with rows shaped like the export's, keys spread over the key space. The
// ledger stays flat when the rate at 50M is close to the empty one's.
//
// This VM's speed drifts within minutes (an empty ledger measured 94k to
// 151k records/s in five runs within half an hour), so each full size is
// measured in LEDGER_BENCH_PAIRS pairs (default 3): the empty ledger, in
// a database of its own emptied first, then the full one right after it.
// make bench takes the median of the pairs' ratios. (Size 0 is the
// pairs' baseline; listed alone, it is measured once.)
//
//	LEDGER_BENCH_SIZES=0,10000000 scripts/with-pg go test -run '^$' -bench LedgerFull -benchtime 300x ./csvreader/ledger/
func BenchmarkLedgerFull(b *testing.B) {
	ctx := context.Background()
	sizes := []int{0, 1000000}
	if s := os.Getenv("LEDGER_BENCH_SIZES"); s != "" {
		sizes = sizes[:0]
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				b.Fatalf("LEDGER_BENCH_SIZES: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	pairs := 3
	if s := os.Getenv("LEDGER_BENCH_PAIRS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("LEDGER_BENCH_PAIRS %q: want a count", s)
		}
		pairs = n
	}
	d, empty := pgtest.New(b), pgtest.New(b)
	filled, block := 0, 0
	for _, size := range sizes {
		if size == 0 {
			if len(sizes) == 1 {
				measureLedger(ctx, b, "keys=0", empty, &block)
			}
			continue
		}
		if size > filled {
			// Keys "K" and an md5: spread over the key space, as
			// customers' ids are, around the new keys ("C…") the blocks add.
			// Unlogged and without the primary key, then logged in one pass
			// and one sorted build of the key: inserting 50M random keys into
			// the index one by one, every row WAL-logged, takes most of an
			// hour. One md5 per row.
			for _, q := range []string{
				`ALTER TABLE customers DROP CONSTRAINT customers_pkey`,
				`ALTER TABLE customers SET UNLOGGED`,
			} {
				if _, err := d.ExecContext(ctx, q); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := d.ExecContext(ctx, `
				INSERT INTO customers (external_id, email, first_name, last_name, phone, attributes, crm_id, fingerprint, run_id, source_file, source_line, as_of)
				SELECT 'K' || h, 'k' || i || '.lovelace@example.com', 'Ada', 'Lovelace', '+44 20 7946 0000',
				       '{"city": "London", "company": "Acme Ltd", "country": "GB", "created_at": "2024-01-01T10:00:00Z"}',
				       'crm_' || i, h, 0, '.bench/export.csv', i, now()
				FROM (SELECT i, md5(i::text) AS h FROM generate_series($1::bigint, $2::bigint) AS i) AS g`, filled+1, size); err != nil {
				b.Fatal(err)
			}
			// Settle the fill before measuring: logged again, the key built,
			// hint bits and the visibility map written, the WAL checkpointed.
			for _, q := range []string{
				`ALTER TABLE customers SET LOGGED`,
				`SET maintenance_work_mem = '1GB'; ALTER TABLE customers ADD PRIMARY KEY (external_id)`,
				`VACUUM ANALYZE customers`,
				`CHECKPOINT`,
			} {
				if _, err := d.ExecContext(ctx, q); err != nil {
					b.Fatal(err)
				}
			}
			filled = size
		}
		for i := 1; i <= pairs; i++ {
			// New keys only, as in the full ledger: the baseline's blocks
			// take keys the full ledger never gets.
			if _, err := empty.ExecContext(ctx, `TRUNCATE customers, claims, claim_blocks, customer_changes`); err != nil {
				b.Fatal(err)
			}
			measureLedger(ctx, b, fmt.Sprintf("keys=%d/pair=%d/empty", size, i), empty, &block)
			measureLedger(ctx, b, fmt.Sprintf("keys=%d/pair=%d/full", size, i), d, &block)
		}
	}
}

// measureLedger runs one sub-benchmark of BenchmarkLedgerFull: a run
// claiming and confirming blocks of new keys in db, from block *block on.
func measureLedger(ctx context.Context, b *testing.B, name string, db *sql.DB, block *int) {
	b.Run(name, func(b *testing.B) {
		run, err := ledger.Start(ctx, db, []string{"bench.csv"})
		if err != nil {
			b.Fatal(err)
		}
		defer run.Close(ctx, "done", nil)
		var claiming, confirming time.Duration
		for b.Loop() {
			its, ds := benchBlockOf(*block)
			*block++
			t0 := time.Now()
			if _, err := run.Claim(ctx, its); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := run.Confirm(ctx, ds); err != nil {
				b.Fatal(err)
			}
			claiming, confirming = claiming+t1.Sub(t0), confirming+time.Since(t1)
		}
		b.ReportMetric(float64(b.N*benchBlock)/b.Elapsed().Seconds(), "records/s")
		b.ReportMetric(claiming.Seconds()*1000/float64(b.N), "claim-ms/block")
		b.ReportMetric(confirming.Seconds()*1000/float64(b.N), "confirm-ms/block")
	})
}
