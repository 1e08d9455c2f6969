package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/lib/pq"
)

// DryRun decides what a run would do with each record, claiming nothing.
// Keys met earlier are tracked in a temporary table on one connection, so
// memory stays bounded however large the files are.
type DryRun struct {
	conn *sql.Conn
	// look decides with Claim's look-up, claiming nothing (preview); it
	// keeps the look-up prepared and the runs' as-of times it read.
	look *Run
}

// StartDryRun prepares a dry run.
func StartDryRun(ctx context.Context, d *sql.DB, s Sync) (*DryRun, error) {
	conn, err := d.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("dry run: connect: %w", err)
	}
	if _, err := conn.ExecContext(ctx, `CREATE TEMP TABLE IF NOT EXISTS dry_run_seen (k text PRIMARY KEY)`); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dry run: %w", err)
	}
	s.AsOf = s.AsOf.Truncate(time.Microsecond) // as SetSync: what PostgreSQL keeps
	return &DryRun{conn: conn, look: &Run{db: d, sync: s, asOfs: map[int64]int64{}}}, nil
}

// Close drops what the dry run kept.
func (r *DryRun) Close(ctx context.Context) error {
	_, err := r.conn.ExecContext(context.WithoutCancel(ctx), `DROP TABLE IF EXISTS dry_run_seen`)
	r.conn.Close()
	if r.look.lookup != nil {
		r.look.lookup.Close()
	}
	return err
}

// Decide answers for items, in order, what a run would decide: a key met
// before in the dry run (or earlier in items) is DuplicateInFile; the
// others as Preview.
func (r *DryRun) Decide(ctx context.Context, items []Item) ([]Decision, error) {
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = it.Key
	}
	rows, err := r.conn.QueryContext(ctx,
		`INSERT INTO dry_run_seen SELECT DISTINCT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING k`, pq.Array(keys))
	if err != nil {
		return nil, fmt.Errorf("dry run: %w", err)
	}
	firsts, err := keySet(rows)
	if err != nil {
		return nil, err
	}
	out := make([]Decision, len(items))
	var ask []Item
	var at []int
	for i, it := range items {
		if !firsts[it.Key] {
			out[i] = Decision{Status: DuplicateInFile, Why: "same key earlier in the files"}
			continue
		}
		delete(firsts, it.Key) // a later occurrence in items is a repeat
		ask, at = append(ask, it), append(at, i)
	}
	if len(ask) == 0 {
		return out, nil
	}
	ds, err := r.look.preview(ctx, ask)
	if err != nil {
		return nil, err
	}
	for j, i := range at {
		out[i] = ds[j]
	}
	return out, nil
}

// preview decides for items what Claim would, against what customers
// holds, claiming nothing (for dry runs): Claimed for a new key,
// Unchanged, Updating (ChangesUpdate) or Changed, Stale. Items must have
// distinct keys. Claims other runs hold are not looked at: those keys are
// decided as if their runs had finished.
func (r *Run) preview(ctx context.Context, items []Item) ([]Decision, error) {
	s := r.sync
	out := make([]Decision, len(items))
	err := r.inTx(ctx, func(tx *sql.Tx) error {
		keys := make([]string, len(items))
		for i, it := range items {
			keys[i] = it.Key
		}
		hs, err := r.holders(ctx, tx, pq.Array(keys), keys)
		if err != nil {
			return err
		}
		var pend []int
		for i, it := range items {
			h := hs[it.Key]
			if h.cust == nil {
				out[i] = Decision{Status: Claimed}
				continue
			}
			h.claim = nil
			if _, ok := r.decideDelivered(it, h, nil, &out[i]); ok {
				pend = append(pend, i)
			}
		}
		if len(pend) == 0 {
			return nil
		}
		pk := make([]string, len(pend))
		for j, i := range pend {
			pk[j] = items[i].Key
		}
		stored, err := r.readContacts(ctx, tx, pk)
		if err != nil {
			return err
		}
		for _, i := range pend {
			it := items[i]
			u, final, ok := s.change(it, stored[it.Key], hs[it.Key].cust, nil)
			switch {
			case !ok:
				out[i] = final
			case s.Mode != ChangesUpdate:
				out[i] = Decision{Status: Changed, Update: u}
			default:
				out[i] = Decision{Status: Updating, Update: u}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up delivered keys: %w", err)
	}
	return out, nil
}
