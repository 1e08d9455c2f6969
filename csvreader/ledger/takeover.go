package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/lib/pq"

	"crmsync/db"
)

// takeover is a claim of a dead run about to become this run's.
type takeover struct {
	item   int           // index in Claim's items
	prev   string        // its state
	run    int64         // its owner
	orphan bool          // a call that sent it may still be running
	prior  time.Duration // until earlier owners' calls must be over (holder.prior)
	// own: not a takeover but a claims row this run wrote already
	// (settleUpdates); only held.
	own bool
}

// takeOver makes dead runs' claims on items this run's, as claims rows.
func (r *Run) takeOver(ctx context.Context, tx *sql.Tx, items []Item, take []takeover, out []Decision) error {
	var dead []takeover
	for _, t := range take {
		if !t.own {
			dead = append(dead, t)
		}
	}
	if len(dead) == 0 {
		return nil
	}
	owners, err := r.owners(ctx, tx, dead)
	if err != nil {
		return err
	}
	r.mu.Lock()
	via := r.via
	r.mu.Unlock()
	// Decide first: the claims row remembers, on the server's clock, until
	// when every call that sent the key may run — this owner's and, through
	// not_before, those of the owners before it — for whoever takes it over
	// next.
	rows := make([]claimRow, len(dead))
	for j, t := range dead {
		u := out[t.item].Update
		if t.prev == "rejected" {
			if u == nil {
				out[t.item] = Decision{Status: Resend} // the CRM refused it: nothing was created
			}
			rows[j] = r.claimRowOf(items[t.item], u, 0)
			continue
		}
		// A run that ended cleanly had its calls answered, except those its
		// records remember (t.orphan), and those of earlier owners.
		o, ok := owners[t.run]
		if !ok {
			o.wait = -1
		}
		dec := Decision{Status: TakenOver, Update: u}
		if !o.clean || t.orphan {
			dec.Orphaned, dec.Wait = true, o.wait
			if dec.Wait < 0 {
				dec.Wait = -1 // unknown: the taker waits a whole bound
			}
		}
		if t.prior > 0 {
			dec.Orphaned = true
			if dec.Wait >= 0 {
				dec.Wait = max(dec.Wait, t.prior)
			}
		}
		// The shortcut through the very integrator process the owner used
		// holds only when the owner's calls are all that is outstanding.
		if dec.Orphaned && t.prior == 0 && via != "" && len(o.integrators) == 1 && o.integrators[0] == via {
			dec.Via, dec.ViaWait = via, ViaWait
			if dec.Wait >= 0 {
				dec.ViaWait = min(dec.Wait, ViaWait)
			}
		}
		out[t.item] = dec
		w := dec.Wait
		if w < 0 {
			r.mu.Lock()
			w = r.bound
			r.mu.Unlock()
		}
		rows[j] = r.claimRowOf(items[t.item], u, w)
	}
	if err := r.writeClaims(ctx, tx, rows); err != nil {
		return fmt.Errorf("take over claims: %w", err)
	}
	return nil
}

// claimRow is a claims row this run writes to hold a key.
type claimRow struct {
	key, fp, file string
	line          int64
	wait          time.Duration // until the calls of earlier owners must be over; 0: none
	update        *Update
}

func (r *Run) claimRowOf(it Item, u *Update, wait time.Duration) claimRow {
	fp := it.Fingerprint
	if u != nil {
		fp = u.Fingerprint
	}
	return claimRow{key: it.Key, fp: fp, file: it.File, line: it.Line, wait: wait, update: u}
}

// writeClaims makes rows this run's claims ("sending"), replacing whatever
// claims row a key had but its not_before, which only grows.
func (r *Run) writeClaims(ctx context.Context, tx *sql.Tx, rows []claimRow) error {
	n := len(rows)
	keys, fps, files, kinds, fields := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	lines, waits := make([]int64, n), make([]int64, n)
	for j, c := range rows {
		keys[j], fps[j], files[j], lines[j], waits[j], kinds[j], fields[j] = c.key, c.fp, c.file, c.line, c.wait.Milliseconds(), "create", "{}"
		if c.update != nil {
			// Each key's field list as an array literal: unnest cannot
			// take an array of arrays of different lengths.
			v, err := pq.Array(c.update.Fields).Value()
			if err != nil {
				return err
			}
			kinds[j], fields[j] = "update", v.(string)
		}
	}
	var asOf any
	if !r.sync.AsOf.IsZero() {
		asOf = r.sync.AsOf
	}
	_, err := tx.ExecContext(ctx, `
		INSERT INTO claims (external_id, run_id, state, fingerprint, source_file, source_line, not_before, kind, as_of, fields)
		SELECT k, $5, 'sending', f, s, l, CASE WHEN w > 0 THEN clock_timestamp() + w * interval '1 millisecond' END, kd,
		       CASE WHEN kd = 'update' THEN $9::timestamptz END, fl::text[]
		FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $6::bigint[], $7::text[], $8::text[]) AS u(k, f, s, l, w, kd, fl)
		ON CONFLICT (external_id) DO UPDATE SET run_id = excluded.run_id, state = 'sending',
		       fingerprint = excluded.fingerprint, source_file = excluded.source_file,
		       source_line = excluded.source_line, claimed_at = now(), reason = '', orphan = false,
		       not_before = GREATEST(claims.not_before, excluded.not_before),
		       kind = excluded.kind, as_of = excluded.as_of, fields = excluded.fields`,
		pq.Array(keys), pq.Array(fps), pq.Array(files), pq.Array(lines), r.id, pq.Array(waits), pq.Array(kinds), pq.Array(fields), asOf)
	return err
}

// explodeDeadBlocks turns the blocks of dead runs into claims rows, keeping
// only keys that were not delivered, so that they are resolved key by key
// like any claim of a dead run, and later runs need not scan them.
func (r *Run) explodeDeadBlocks(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(db.ClaimLockKey)); err != nil {
		return fmt.Errorf("claim lock: %w", err)
	}
	live, err := r.liveRuns(ctx, tx)
	if err != nil {
		return err
	}
	ids := make([]int64, 0, len(live))
	for id := range live {
		ids = append(ids, id)
	}
	if _, err := tx.ExecContext(ctx, `
		INSERT INTO claims (external_id, run_id, state, source_file, source_line, claimed_at, orphan)
		SELECT DISTINCT ON (u.k) u.k, b.run_id, 'sending', b.source_file, u.l, b.claimed_at, true
		FROM claim_blocks b, unnest(b.keys, b.lines) AS u(k, l)
		WHERE b.run_id <> ALL($1) AND NOT EXISTS (SELECT FROM customers c WHERE c.external_id = u.k)
		ON CONFLICT (external_id) DO NOTHING`, pq.Array(ids)); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM claim_blocks WHERE run_id <> ALL($1)`, pq.Array(ids))
	return err
}
