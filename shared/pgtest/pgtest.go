// Package pgtest gives each test its own freshly migrated PostgreSQL
// database on the server named by DATABASE_URL. `make test` provides that
// server (a disposable cluster when DATABASE_URL is unset); a test that needs
// PostgreSQL and finds none fails loudly, it never skips.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"crmsync/db"
	"crmsync/shared/redact"
)

// DSN creates an empty database for tb, dropped when the test ends, and
// returns its DSN. With migrate, the schema is applied.
func DSN(tb testing.TB, migrate bool) string {
	tb.Helper()
	base := os.Getenv("DATABASE_URL")
	if base == "" {
		tb.Fatal("DATABASE_URL is not set: run the tests with `make test`, which starts a disposable PostgreSQL, or point DATABASE_URL at a server where this user may CREATE DATABASE")
	}
	admin, err := sql.Open("postgres", base)
	if err != nil {
		tb.Fatalf("open DATABASE_URL: %v", redact.Error(err, base))
	}
	defer admin.Close()
	var b [6]byte
	rand.Read(b[:])
	name := "test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name+` TEMPLATE template0`); err != nil {
		tb.Fatalf("create test database: %v", err)
	}
	tb.Cleanup(func() {
		admin, err := sql.Open("postgres", base)
		if err != nil {
			return
		}
		defer admin.Close()
		if _, err := admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`); err != nil {
			tb.Errorf("drop test database: %v", err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatalf("DATABASE_URL is not a URL (postgres://user:pass@host:port/db): %v", redact.Error(err, base))
	}
	u.Path = "/" + name
	dsn := u.String()
	if migrate {
		d := Open(tb, dsn)
		if _, err := db.Migrate(ctx, d); err != nil {
			tb.Fatalf("migrate: %v", err)
		}
	}
	return dsn
}

// New returns a handle on a fresh, migrated database for tb.
func New(tb testing.TB) *sql.DB {
	tb.Helper()
	return Open(tb, DSN(tb, true))
}

// Open opens dsn and closes it when the test ends.
func Open(tb testing.TB, dsn string) *sql.DB {
	tb.Helper()
	d, err := sql.Open("postgres", dsn)
	if err != nil {
		tb.Fatalf("open: %v", err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}
