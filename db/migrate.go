// Package db owns the PostgreSQL schema: the numbered SQL migrations under
// migrations/, embedded in the binaries and applied in order, each in its own
// transaction, recorded in schema_migrations. Migrate is safe to call from
// several processes at once: they serialise on an advisory lock.
package db

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrateLockKey is the advisory lock that serialises concurrent migrators.
const migrateLockKey = 0x43525359_4e430001 // "CRSYNC" + 1

// RunLockNamespace is the high 32 bits of the advisory lock key a live reader
// run holds: the key is RunLockNamespace<<32 | run id.
const RunLockNamespace = 0x43525352 // "CRSR"

// ClaimLockKey is the transaction advisory lock every claim transaction
// takes, so that claims are made one at a time across runs: a run deciding
// a key is free cannot race another run claiming it.
const ClaimLockKey = 0x43525359_4e430002 // "CRSYNC" + 2

// RunLockKey is the session advisory lock key of a reader run.
func RunLockKey(runID int64) int64 { return RunLockNamespace<<32 | (runID & 0xffffffff) }

// Migration is one numbered schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Checksum identifies the migration's text, so an edited migration that was
// already applied is detected instead of silently diverging.
func (m Migration) Checksum() string {
	sum := sha256.Sum256([]byte(m.SQL))
	return hex.EncodeToString(sum[:8])
}

// Migrations returns the embedded migrations in order.
func Migrations() ([]Migration, error) { return loadMigrations(migrationFiles) }

func loadMigrations(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []Migration
	seen := map[int]string{}
	for _, path := range names {
		base := strings.TrimPrefix(path, "migrations/")
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number and '_'", base)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s share version %d", prev, base, v)
		}
		seen[v] = base
		text, err := fs.ReadFile(fsys, path)
		if err != nil {
			return nil, err
		}
		ms = append(ms, Migration{Version: v, Name: base, SQL: string(text)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}

// Migrate applies the embedded migrations that db lacks, in order, and
// returns how many it applied.
func Migrate(ctx context.Context, db *sql.DB) (int, error) {
	ms, err := Migrations()
	if err != nil {
		return 0, err
	}
	return apply(ctx, db, ms)
}

func apply(ctx context.Context, db *sql.DB, ms []Migration) (int, error) {
	// The lock is per session, so hold one connection for the whole run.
	conn, err := db.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, int64(migrateLockKey)); err != nil {
		return 0, fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrateLockKey))

	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		checksum   text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	applied := map[int]string{}
	names := map[int]string{}
	rows, err := conn.QueryContext(ctx, `SELECT version, checksum, name FROM schema_migrations`)
	if err != nil {
		return 0, fmt.Errorf("migrate: read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v int
		var sum, name string
		if err := rows.Scan(&v, &sum, &name); err != nil {
			rows.Close()
			return 0, err
		}
		applied[v], names[v] = sum, name
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	rows.Close()
	if err := refuseUnknown(ms, names); err != nil {
		return 0, err
	}

	n := 0
	for _, m := range ms {
		if sum, ok := applied[m.Version]; ok {
			if sum != m.Checksum() {
				return n, fmt.Errorf("migrate: %s was changed after it was applied (checksum %s, database has %s): add a new migration instead", m.Name, m.Checksum(), sum)
			}
			continue
		}
		if err := applyOne(ctx, conn, m); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// refuseUnknown fails when the database holds migrations this binary does
// not know: a newer binary migrated it, and this one would read and write
// tables whose meaning has changed under it.
func refuseUnknown(ms []Migration, applied map[int]string) error {
	known := map[int]bool{}
	newest := 0
	for _, m := range ms {
		known[m.Version] = true
		newest = max(newest, m.Version)
	}
	var unknown []int
	for v := range applied {
		if !known[v] {
			unknown = append(unknown, v)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Ints(unknown)
	list := make([]string, len(unknown))
	for i, v := range unknown {
		list[i] = applied[v]
	}
	return fmt.Errorf("migrate: the database holds migrations this binary does not know (%s): it was migrated by a newer csvreader (this one knows up to %d); run the newer binary, or upgrade this one",
		strings.Join(list, ", "), newest)
}

func applyOne(ctx context.Context, conn *sql.Conn, m Migration) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", m.Name, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return fmt.Errorf("migrate %s: %w", m.Name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)`,
		m.Version, m.Name, m.Checksum()); err != nil {
		return fmt.Errorf("migrate %s: record: %w", m.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate %s: commit: %w", m.Name, err)
	}
	return nil
}
