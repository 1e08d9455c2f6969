package ledger

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/lib/pq"

	"crmsync/shared/contact"
)

// Delivery is a record the CRM confirmed: created, or, with Update,
// updated.
type Delivery struct {
	Contact     contact.Contact
	CRMID       string
	Fingerprint string
	File        string
	Line        int64
	Update      *Update // the update it was (Decision.Update); nil: a create
}

// customerColumns are the columns COPY writes, in copyRows' order: the
// contact's own fields (contact.Fields, whose names are the columns'),
// then the rest. as_of is not among them: a created row leaves it NULL
// (insertCustomers too),
// which stands for its run's as-of time (runs.as_of, the same for every
// row a run creates; resolved by resolveAsOf). Parsing the same timestamp
// on every row was 6% of PostgreSQL's CPU in a 1M-row run (BENCHMARKS.md,
// round 10).
var customerColumns = func() []string {
	var cols []string
	for _, f := range contact.Fields {
		cols = append(cols, f.Name)
	}
	return append(cols, "attributes", "crm_id", "fingerprint", "run_id", "source_file", "source_line")
}()

// Confirm records deliveries in customers, in one transaction that also
// drops the claims rows they settle and the blocks finished so far.
// Creates go in with COPY; should another run have recorded one of the
// keys meanwhile (after it took this run's claim over while this run's
// lock was lost), it falls back to an insert that keeps the existing row.
// Updates rewrite the row they were computed against (its version) and add
// a customer_changes row each. It returns the indexes of ds that another
// run recorded first: its delivery, not this one's.
func (r *Run) Confirm(ctx context.Context, ds []Delivery) (already []int, err error) {
	if len(ds) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ds))
	var creates, updates []int
	for i := range ds {
		keys[i] = ds[i].Contact.ExternalID
		if ds[i].Update != nil {
			updates = append(updates, i)
		}
	}
	if len(updates) > 0 {
		creates = make([]int, 0, len(ds)-len(updates))
		for i := range ds {
			if ds[i].Update == nil {
				creates = append(creates, i)
			}
		}
	}
	own := r.inflight.ownKeys(keys)
	done, putBack := r.inflight.takeFinished()
	cleanup := func(exec execFunc) error {
		if len(own) > 0 {
			if err := exec(`DELETE FROM claims WHERE external_id = ANY($1) AND run_id = $2`, pq.Array(own), r.id); err != nil {
				return fmt.Errorf("drop claims: %w", err)
			}
		}
		return dropBlocks(exec, done)
	}
	cds := ds
	if updates != nil {
		cds = pick(ds, creates)
	}
	// Creates alone (the common case) go in with COPY on a raw
	// connection; updates need statements that return rows, so a block
	// holding any goes, creates and all, through database/sql, as does a
	// COPY that met a key recorded meanwhile.
	if len(updates) == 0 {
		err = r.rawTx(ctx, func(c *rawConn) error {
			if err := c.copyIn("customers", customerColumns, copyRows(r.id, cds)); err != nil {
				return err
			}
			return cleanup(c.exec)
		})
	}
	var pqErr *pq.Error
	if len(updates) > 0 || errors.As(err, &pqErr) && pqErr.Code == "23505" {
		err = r.inTx(ctx, func(tx *sql.Tx) error {
			already = already[:0]
			if len(cds) > 0 {
				a, err := r.insertCreates(ctx, tx, cds)
				if err != nil {
					return err
				}
				for _, j := range a {
					if updates == nil {
						already = append(already, j)
					} else {
						already = append(already, creates[j])
					}
				}
			}
			if len(updates) > 0 {
				a, err := r.applyUpdates(ctx, tx, ds, updates)
				if err != nil {
					return err
				}
				already = append(already, a...)
			}
			return cleanup(txExec(ctx, tx))
		})
	}
	if err != nil {
		putBack()
		return nil, fmt.Errorf("record deliveries: %w", err)
	}
	r.inflight.settle(keys)
	return already, nil
}

func pick(ds []Delivery, idx []int) []Delivery {
	out := make([]Delivery, len(idx))
	for j, i := range idx {
		out[j] = ds[i]
	}
	return out
}

// insertCreates inserts the created records ds, keeping rows that exist,
// and returns the indexes of those another run recorded first.
func (r *Run) insertCreates(ctx context.Context, tx *sql.Tx, ds []Delivery) ([]int, error) {
	inserted, err := insertCustomers(ctx, tx, r.id, ds)
	if err != nil {
		return nil, err
	}
	var kept []string
	for i := range ds {
		if !inserted[ds[i].Contact.ExternalID] {
			kept = append(kept, ds[i].Contact.ExternalID)
		}
	}
	// A row of this run's is an earlier attempt of this very Confirm whose
	// commit's answer was lost: its delivery.
	others, err := recordedByOthers(ctx, tx, r.id, kept)
	if err != nil {
		return nil, err
	}
	var already []int
	for i := range ds {
		if others[ds[i].Contact.ExternalID] {
			already = append(already, i)
		}
	}
	return already, nil
}

// applyUpdates rewrites the customers rows of the updates ds[idx] and adds
// their customer_changes rows, for the keys whose update claim is still
// this run's: it deletes them first, which locks them against a takeover.
// A key whose claim another run took over (this run's lock was lost) is
// that run's to record, whatever order the two confirm in: the taker sends
// only once this run's calls must be over, so its update is the one the
// CRM ends with. That index is returned, as already.
func (r *Run) applyUpdates(ctx context.Context, tx *sql.Tx, ds []Delivery, idx []int) ([]int, error) {
	n := len(idx)
	cols := make([][]string, len(contact.Fields)+5)
	for i := range cols {
		cols[i] = make([]string, n)
	}
	lines := make([]int64, n)
	changed := make([]string, n)
	for j, i := range idx {
		d := &ds[i]
		c := &d.Update.Contact
		for k, f := range contact.Fields {
			cols[k][j] = f.Get(c)
		}
		k := len(contact.Fields)
		cols[k][j], cols[k+1][j], cols[k+2][j], cols[k+3][j], cols[k+4][j] = attributesText(c.Attributes), d.CRMID, d.Update.Fingerprint, d.Update.Old, d.File
		lines[j] = d.Line
		v, err := pq.Array(d.Update.Changed).Value()
		if err != nil {
			return nil, err
		}
		changed[j] = v.(string)
	}
	var asOf any
	if !r.sync.AsOf.IsZero() {
		asOf = r.sync.AsOf
	}
	rows, err := tx.QueryContext(ctx, `
		WITH mine AS (
			DELETE FROM claims WHERE external_id = ANY($1::text[]) AND run_id = $14 AND kind = 'update'
			RETURNING external_id
		), u AS (
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
			                     $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[])
			       AS u(key, email, first_name, last_name, phone, attrs, crm_id, fp, old_fp, file, line, changed)
		), upd AS (
			UPDATE customers c SET email = u.email, first_name = u.first_name, last_name = u.last_name, phone = u.phone,
			       attributes = u.attrs, crm_id = u.crm_id, fingerprint = u.fp, version = c.version + 1,
			       updated_at = now(), as_of = $13, run_id = $14, source_file = u.file, source_line = u.line
			FROM u JOIN mine ON mine.external_id = u.key WHERE c.external_id = u.key
			RETURNING c.external_id, c.version
		), log AS (
			INSERT INTO customer_changes (external_id, version, run_id, old_fingerprint, new_fingerprint, fields, as_of, source_file, source_line)
			SELECT u.key, upd.version, $14, u.old_fp, u.fp, u.changed::text[], $13, u.file, u.line
			FROM upd JOIN u ON u.key = upd.external_id
		)
		SELECT external_id FROM upd`,
		pq.Array(cols[0]), pq.Array(cols[1]), pq.Array(cols[2]), pq.Array(cols[3]), pq.Array(cols[4]), pq.Array(cols[5]),
		pq.Array(cols[6]), pq.Array(cols[7]), pq.Array(cols[8]), pq.Array(cols[9]), pq.Array(lines), pq.Array(changed),
		asOf, r.id)
	if err != nil {
		return nil, fmt.Errorf("record updates: %w", err)
	}
	done, err := keySet(rows)
	if err != nil {
		return nil, err
	}
	var already []int
	for _, i := range idx {
		if !done[ds[i].Contact.ExternalID] {
			already = append(already, i)
		}
	}
	return already, nil
}

// execFunc runs a statement: on a database/sql transaction (txExec) or on
// rawTx's connection.
type execFunc func(query string, args ...any) error

func txExec(ctx context.Context, tx *sql.Tx) execFunc {
	return func(query string, args ...any) error {
		_, err := tx.ExecContext(ctx, query, args...)
		return err
	}
}

// dropBlocks deletes the blocks whose keys earlier commits all settled.
func dropBlocks(exec execFunc, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	if err := exec(`DELETE FROM claim_blocks WHERE id = ANY($1)`, pq.Array(ids)); err != nil {
		return fmt.Errorf("drop finished blocks: %w", err)
	}
	return nil
}

// recordedByOthers returns which of keys customers holds from another run.
func recordedByOthers(ctx context.Context, tx *sql.Tx, run int64, keys []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(keys) == 0 {
		return out, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT external_id FROM customers WHERE external_id = ANY($1) AND run_id <> $2`, pq.Array(keys), run)
	if err != nil {
		return nil, fmt.Errorf("read recorded keys: %w", err)
	}
	return keySet(rows)
}

// keySet reads rows of one key each into a set, and closes rows.
func keySet(rows *sql.Rows) (map[string]bool, error) {
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		out[k] = true
	}
	return out, rows.Err()
}

// insertCustomers inserts ds, keeping rows that exist, and returns the keys
// it inserted. Like the COPY, it leaves as_of NULL: the run's.
func insertCustomers(ctx context.Context, tx *sql.Tx, run int64, ds []Delivery) (map[string]bool, error) {
	n := len(ds)
	cols := make([][]string, len(contact.Fields)+4)
	for i := range cols {
		cols[i] = make([]string, n)
	}
	lines := make([]int64, n)
	for i, d := range ds {
		c := &d.Contact
		for k, f := range contact.Fields {
			cols[k][i] = f.Get(c)
		}
		k := len(contact.Fields)
		cols[k][i], cols[k+1][i], cols[k+2][i], cols[k+3][i] = attributesText(c.Attributes), d.CRMID, d.Fingerprint, d.File
		lines[i] = d.Line
	}
	rows, err := tx.QueryContext(ctx, `
		INSERT INTO customers (external_id, email, first_name, last_name, phone, attributes,
		                       crm_id, fingerprint, source_file, source_line, run_id, updated_at)
		SELECT a, b, c, d, e, f, g, h, i, j, $11, now()
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
		            $7::text[], $8::text[], $9::text[], $10::bigint[]) AS u(a, b, c, d, e, f, g, h, i, j)
		ON CONFLICT (external_id) DO NOTHING
		RETURNING external_id`,
		pq.Array(cols[0]), pq.Array(cols[1]), pq.Array(cols[2]), pq.Array(cols[3]), pq.Array(cols[4]),
		pq.Array(cols[5]), pq.Array(cols[6]), pq.Array(cols[7]), pq.Array(cols[8]), pq.Array(lines), run)
	if err != nil {
		return nil, err
	}
	return keySet(rows)
}

// ClaimState is what a run records of a key it settles without the CRM
// holding it.
type ClaimState string

const (
	// Rejected: the CRM refused it for good; nothing was created.
	Rejected ClaimState = "rejected"
	// Failed: the run gave up on it (after its retries, or at an
	// interrupt); it may have reached the CRM.
	Failed ClaimState = "failed"
)

// Mark is one key settled as a ClaimState.
type Mark struct {
	Key    string
	Reason string
	// Orphan: a call that may still be running sent the key (one that
	// broke, or a dead run's whose end this run did not wait out).
	Orphan bool
}

// Mark records, for keys this run holds, that the CRM rejected them or that
// this run gave up on them, with reasons: a claims row each, which outlives
// the key's block.
func (r *Run) Mark(ctx context.Context, state ClaimState, marks []Mark) error {
	if len(marks) == 0 {
		return nil
	}
	var ks, rs, files, fps, kinds []string
	var lines []int64
	var orph []bool
	keys := make([]string, len(marks))
	for i, m := range marks {
		keys[i] = m.Key
	}
	var settled, uks, urs []string
	var uorph []bool
	r.inflight.each(keys, func(i int, c claim) {
		settled = append(settled, keys[i])
		if c.update != nil {
			uks, urs, uorph = append(uks, keys[i]), append(urs, marks[i].Reason), append(uorph, marks[i].Orphan)
			return
		}
		ks, rs, files, fps, lines = append(ks, keys[i]), append(rs, marks[i].Reason), append(files, c.file), append(fps, c.fp), append(lines, c.line)
		orph, kinds = append(orph, marks[i].Orphan), append(kinds, "create")
	})
	done, putBack := r.inflight.takeFinished()
	err := r.inTx(ctx, func(tx *sql.Tx) error {
		// An update's claims row exists (Claim wrote it) and keeps its
		// kind, as-of and fields.
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO claims (external_id, run_id, state, reason, source_file, fingerprint, source_line, orphan, kind)
			SELECT k, $8, $9, reason, s, f, l, o, kd
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bool[], $7::text[]) AS u(k, reason, s, f, l, o, kd)
			ON CONFLICT (external_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, orphan = excluded.orphan
			WHERE claims.run_id = excluded.run_id`,
			pq.Array(ks), pq.Array(rs), pq.Array(files), pq.Array(fps), pq.Array(lines), pq.Array(orph), pq.Array(kinds), r.id, string(state)); err != nil {
			return fmt.Errorf("mark claims %s: %w", state, err)
		}
		// An update's claims row is only ever this run's own, written by
		// Claim: if another run took it over meanwhile, it is theirs.
		if len(uks) > 0 {
			if _, err := tx.ExecContext(ctx, `
				UPDATE claims c SET state = $4, reason = u.reason, orphan = u.o
				FROM unnest($1::text[], $2::text[], $3::bool[]) AS u(k, reason, o)
				WHERE c.external_id = u.k AND c.run_id = $5 AND c.kind = 'update'`,
				pq.Array(uks), pq.Array(urs), pq.Array(uorph), string(state), r.id); err != nil {
				return fmt.Errorf("mark update claims %s: %w", state, err)
			}
		}
		return dropBlocks(txExec(ctx, tx), done)
	})
	if err != nil {
		putBack()
		return err
	}
	r.inflight.settle(settled)
	return nil
}
