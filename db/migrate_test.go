package db_test

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"crmsync/db"
	"crmsync/shared/pgtest"
)

func TestMigrateAppliesOnceInOrder(t *testing.T) {
	d := pgtest.Open(t, pgtest.DSN(t, false))
	ctx := context.Background()
	ms, err := db.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	n, err := db.Migrate(ctx, d)
	if err != nil {
		t.Fatalf("first migrate: %v", err)
	}
	if n != len(ms) {
		t.Fatalf("first migrate applied %d, want %d", n, len(ms))
	}
	n, err = db.Migrate(ctx, d)
	if err != nil || n != 0 {
		t.Fatalf("second migrate = %d, %v; want 0, nil", n, err)
	}
	for _, table := range []string{"customers", "claims", "claim_blocks", "runs"} {
		var ok bool
		if err := d.QueryRow(`SELECT to_regclass($1) IS NOT NULL`, table).Scan(&ok); err != nil || !ok {
			t.Errorf("table %s missing after migrate (err %v)", table, err)
		}
	}
	var got int
	d.QueryRow(`SELECT count(*) FROM schema_migrations`).Scan(&got)
	if got != len(ms) {
		t.Errorf("schema_migrations has %d rows, want %d", got, len(ms))
	}
}

// Several processes starting at once must not race each other into a
// half-applied schema or a duplicate-key error.
func TestMigrateConcurrentStarts(t *testing.T) {
	dsn := pgtest.DSN(t, false)
	const starters = 6
	var wg sync.WaitGroup
	applied := make([]int, starters)
	errs := make([]error, starters)
	for i := range starters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := sql.Open("postgres", dsn)
			if err != nil {
				errs[i] = err
				return
			}
			defer d.Close()
			applied[i], errs[i] = db.Migrate(context.Background(), d)
		}()
	}
	wg.Wait()
	ms, _ := db.Migrations()
	total := 0
	for i := range starters {
		if errs[i] != nil {
			t.Errorf("starter %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if total != len(ms) {
		t.Errorf("starters applied %d migrations in all, want %d (each exactly once)", total, len(ms))
	}
}

func TestMigrateDetectsEditedMigration(t *testing.T) {
	d := pgtest.New(t)
	if _, err := d.Exec(`UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Migrate(context.Background(), d); err == nil {
		t.Fatal("Migrate accepted a migration whose checksum changed after it was applied")
	}
}

func TestLoadMigrationsRejectsBadNames(t *testing.T) {
	tests := []struct {
		name  string
		files fstest.MapFS
		ok    bool
	}{
		{"ordered", fstest.MapFS{"migrations/0002_b.sql": {}, "migrations/0001_a.sql": {}}, true},
		{"no number", fstest.MapFS{"migrations/init.sql": {}}, false},
		{"zero", fstest.MapFS{"migrations/0000_a.sql": {}}, false},
		{"duplicate version", fstest.MapFS{"migrations/0001_a.sql": {}, "migrations/1_b.sql": {}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := db.LoadMigrations(tc.files)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && (ms[0].Version != 1 || ms[1].Version != 2) {
				t.Errorf("order = %d,%d; want 1,2", ms[0].Version, ms[1].Version)
			}
		})
	}
}

func TestRunLockKeyFitsNamespace(t *testing.T) {
	k := db.RunLockKey(42)
	if k>>32 != db.RunLockNamespace || k&0xffffffff != 42 {
		t.Errorf("RunLockKey(42) = %#x", k)
	}
}

// A database migrated by a newer binary is refused, naming what this one
// does not know, instead of being read with tables whose meaning changed.
func TestMigrateRefusesNewerDatabase(t *testing.T) {
	d := pgtest.Open(t, pgtest.DSN(t, false))
	ctx := context.Background()
	if _, err := db.Migrate(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Exec(`INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, '9999_from_the_future.sql', 'x')`); err != nil {
		t.Fatal(err)
	}
	_, err := db.Migrate(ctx, d)
	if err == nil {
		t.Fatal("migrate accepted a database holding a migration it does not know")
	}
	for _, want := range []string{"9999_from_the_future.sql", "newer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// Migration 0007 turns customers.attributes from jsonb into the object's
// text: rows written before it keep their attributes, readable as JSON.
func TestMigrateAttributesToText(t *testing.T) {
	d := pgtest.Open(t, pgtest.DSN(t, false))
	ctx := context.Background()
	ms, err := db.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ms, func(m db.Migration) bool { return m.Version == 7 })
	if i < 0 {
		t.Fatal("no migration 7")
	}
	if _, err := db.Apply(ctx, d, ms[:i]); err != nil {
		t.Fatalf("migrate to 6: %v", err)
	}
	if _, err := d.Exec(`INSERT INTO customers (external_id, email, attributes, crm_id, fingerprint, run_id, source_file, source_line)
		VALUES ('K1', 'a@b.co', '{"city": "Köln", "company": "Acme \"Ltd\""}', 'c1', 'fp', 1, 'f.csv', 2),
		       ('K2', 'b@b.co', DEFAULT, 'c2', 'fp', 1, 'f.csv', 3)`); err != nil {
		t.Fatal(err)
	}
	if n, err := db.Migrate(ctx, d); err != nil || n != len(ms)-i {
		t.Fatalf("migrate = %d, %v; want %d, nil", n, err, len(ms)-i)
	}
	var typ string
	d.QueryRow(`SELECT data_type FROM information_schema.columns WHERE table_name = 'customers' AND column_name = 'attributes'`).Scan(&typ)
	if typ != "text" {
		t.Errorf("attributes is %s, want text", typ)
	}
	var city, company, empty string
	if err := d.QueryRow(`SELECT a.attributes::jsonb->>'city', a.attributes::jsonb->>'company', b.attributes
		FROM customers a, customers b WHERE a.external_id = 'K1' AND b.external_id = 'K2'`).Scan(&city, &company, &empty); err != nil {
		t.Fatal(err)
	}
	if city != "Köln" || company != `Acme "Ltd"` || empty != "{}" {
		t.Errorf("after migrating: city %q, company %q, empty attributes %q", city, company, empty)
	}
	if _, err := d.Exec(`INSERT INTO customers (external_id, email, crm_id, fingerprint, run_id, source_file, source_line)
		VALUES ('K3', 'c@b.co', 'c3', 'fp', 1, 'f.csv', 4)`); err != nil {
		t.Fatalf("a row with the default attributes: %v", err)
	}
}
