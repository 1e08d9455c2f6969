package ledger

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"math"
	"time"

	"github.com/lib/pq"

	"crmsync/db"
	"crmsync/shared/contact"
)

// Item is one record offered for claiming.
type Item struct {
	Key         string
	Fingerprint string
	File        string
	Line        int64
	// Contact is the record as the export has it, compared with what
	// customers holds when the key is there with another fingerprint;
	// nil: a key customers holds counts as unchanged.
	Contact *contact.Contact
}

// Status is what Claim decided for an item.
type Status uint8

const (
	// Claimed: the key is this run's to send; nobody sent it before.
	Claimed Status = iota + 1
	// TakenOver: the key was claimed by a run that died; it may have
	// reached the CRM, so it must be looked up before being created. With
	// Decision.Update, the dead run was updating it: the update goes again
	// (an update is resend-safe), once the dead run's calls are over.
	TakenOver
	// Resend: like Claimed, but taken from a dead run that had learned the
	// CRM rejected it, so nothing was created.
	Resend
	// Unchanged: an earlier run delivered the key, and the CRM holds what
	// the export says (the same content, or changes only in cells whose
	// emptiness keeps the CRM's value).
	Unchanged
	// DuplicateInFile: this run met the key before.
	DuplicateInFile
	// Busy: a live concurrent run holds the key; try again later.
	Busy
	// Updating: the CRM holds the key with other content, and this export
	// is not older than what it holds: claimed, to send Decision.Update.
	Updating
	// Changed: as Updating, but the run does not send changes
	// (ChangesSkip, ChangesReport): only counted and listed.
	Changed
	// Stale: the CRM holds, or a run is sending, a version of the key from
	// a newer export: this one is not sent.
	Stale
)

// Decision is Claim's answer for one item.
type Decision struct {
	Status Status
	// Why: for Unchanged, DuplicateInFile, Busy and Stale, where the key
	// was met (run, file, line).
	Why string
	// Orphaned, with TakenOver: the dead owner did not end cleanly, so an
	// integrator call it made may still be running. The key must not be
	// looked up (or updated again) before such a call is over (see
	// importer.Config.CallBound).
	Orphaned bool
	// Wait, with Orphaned: how long from now until every call the owner
	// may have left running is over — its last proof of life (or its end)
	// plus LockLease plus the larger of its recorded call bound and this
	// run's (SetCallBound) — or -1 when the owner recorded no proof of life
	// (a run older than migration 0004): then wait a whole call bound.
	Wait time.Duration
	// Via, with Orphaned: the owner sent calls only to the integrator
	// process this run sends through (SetIntegrator). Sent through that
	// very process — which holds the keys of its live calls and answers
	// record_in_flight for them — the key may go after ViaWait instead of
	// Wait. Sent through any other, it must wait Wait.
	Via     string
	ViaWait time.Duration
	// Update, with Updating, Changed, and TakenOver of an update: what to
	// write.
	Update *Update
}

// Where a key's holder was found.
const (
	inCustomers = iota
	inClaims
	inBlock
)

// noAsOf stands for an unknown as-of time (customers rows older than
// migration 0005): older than any export.
const noAsOf = math.MinInt64

// holder is one place the ledger holds a key.
type holder struct {
	src    int
	run    int64
	state  string
	file   string
	line   int64
	orphan bool // a call that sent the key may still be running (claims.orphan; any block)
	// prior: how long from now until the calls of the key's earlier owners
	// must be over (claims.not_before, set by the takeover that made the
	// current owner); 0: none outstanding.
	prior time.Duration
	fp    string
	asOf  int64 // unix µs; noAsOf: unknown
	// customers only
	version int64
	crmID   string
	// claims only
	kind   string // "create" or "update"
	fields []string
}

// holding is what the ledger holds for one key: its customers row, its
// claims row, another run's block holding it (each may be nil).
type holding struct{ cust, claim, block *holder }

// Claim decides, for each item, whether this run may send it, and claims
// those it may. Items must have distinct keys. The answer is in item order.
//
// The common case costs four statements whatever the block's size: the
// claim lock, one look-up of the keys, one claim_blocks row, the commit.
// Keys customers holds with another fingerprint cost one more, to read
// what it holds.
func (r *Run) Claim(ctx context.Context, items []Item) ([]Decision, error) {
	if err := r.waitLock(ctx); err != nil {
		return nil, err
	}
	out := make([]Decision, len(items))
	// Keys this run holds are repeats in the file. Only this run settles
	// them, so what it remembers is exact.
	keys := make([]string, len(items))
	for i := range items {
		keys[i] = items[i].Key
	}
	dup := 0
	r.inflight.each(keys, func(i int, c claim) {
		// Even the very same record (a file given twice): it is being sent.
		out[i] = Decision{Status: DuplicateInFile, Why: fmt.Sprintf("same key as %s line %d", c.file, c.line)}
		dup++
	})
	if dup == len(items) {
		return out, nil
	}
	ask := make([]int, 0, len(items)-dup)
	for i := range items {
		if out[i].Status == 0 {
			ask = append(ask, i)
		}
	}
	if dup > 0 {
		keys = keys[:0]
		for _, i := range ask {
			keys = append(keys, items[i].Key)
		}
	}
	keyArray, err := pq.Array(keys).Value() // encoded once, sent up to twice
	if err != nil {
		return nil, err
	}
	var blockOf []int64 // by item: its new block; 0: none
	var own []int       // items now held by a claims row of this run
	err = r.inTx(ctx, func(tx *sql.Tx) error {
		own = own[:0]
		// The lock, and the plan of the look-up (see holders), for this
		// transaction only.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1),
			set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)`,
			int64(db.ClaimLockKey)); err != nil {
			return fmt.Errorf("claim lock: %w", err)
		}
		hs, err := r.holders(ctx, tx, keyArray, keys)
		if err != nil {
			return err
		}
		var live map[int64]bool
		for _, h := range hs {
			if c := cmp.Or(h.claim, h.block); c != nil && c.run != r.id {
				if live, err = r.liveRuns(ctx, tx); err != nil {
					return err
				}
				break
			}
		}
		var fresh []int
		var take []takeover
		var updates []pendingUpdate
		for _, i := range ask {
			it := items[i]
			h := hs[it.Key]
			if h.cust != nil {
				if u, ok := r.decideDelivered(it, h, live, &out[i]); ok {
					u.item = i
					updates = append(updates, u)
				}
				continue
			}
			c := cmp.Or(h.claim, h.block)
			switch {
			case c == nil:
				fresh = append(fresh, i)
				out[i] = Decision{Status: Claimed}
			case c.run == r.id && c.state == "sending" && c.file == it.File && c.line == it.Line:
				// Our own claim on this very record, not yet settled: an
				// earlier attempt of this Claim committed, but the answer
				// was lost with the connection. That attempt took the key
				// over from a dead run, whose calls may still be running:
				// look it up, and only once they must be over: the first
				// attempt wrote until when in not_before (c.prior).
				out[i] = Decision{Status: TakenOver, Orphaned: true, Wait: c.prior}
				own = append(own, i)
			case c.run == r.id:
				why := fmt.Sprintf("same key as %s line %d", c.file, c.line)
				if c.state == "rejected" {
					why += ", which the CRM rejected"
				}
				out[i] = Decision{Status: DuplicateInFile, Why: why}
			case live[c.run]:
				out[i] = Decision{Status: Busy, Why: fmt.Sprintf("being delivered by run %d (%s line %d)", c.run, c.file, c.line)}
			default:
				take = append(take, takeover{item: i, prev: c.state, run: c.run, orphan: c.orphan, prior: c.prior})
			}
		}
		if len(updates) > 0 {
			moreTake, err := r.settleUpdates(ctx, tx, items, hs, updates, out)
			if err != nil {
				return err
			}
			take = append(take, moreTake...)
		}
		if err := r.confirmUnchanged(ctx, tx, items, hs, out); err != nil {
			return err
		}
		if err := r.takeOver(ctx, tx, items, take, out); err != nil {
			return err
		}
		for _, t := range take {
			own = append(own, t.item)
		}
		var encoded driver.Value
		if len(fresh) == len(keys) {
			encoded = keyArray // every key is new, the common case
		}
		blockOf, err = r.insertBlocks(ctx, tx, items, fresh, encoded)
		return err
	})
	if err != nil {
		return nil, err
	}
	hk, hc := make([]string, 0, len(items)), make([]claim, 0, len(items))
	for i, id := range blockOf {
		if id != 0 {
			it := items[i]
			hk, hc = append(hk, it.Key), append(hc, claim{block: id, file: it.File, line: it.Line, fp: it.Fingerprint})
		}
	}
	for _, i := range own { // keys of ask: not held before
		it := items[i]
		hk, hc = append(hk, it.Key), append(hc, claim{file: it.File, line: it.Line, fp: it.Fingerprint, update: out[i].Update})
	}
	r.inflight.hold(hk, hc)
	return out, nil
}

// holders reads, in one statement and so in one snapshot, what the ledger
// holds for keys: a customers row, a claims row, another run's block.
// The claim lock keeps other runs from claiming meanwhile; a run confirming
// meanwhile writes customers in one transaction and deletes the key's block
// only in a later one, so the snapshot finds the key in one place or both.
//
// The right plan is an index probe per key into customers and claims,
// whatever their size and statistics, and sequential scans are off for the
// transaction, so it is one even when the plan is made while customers is
// empty. (Left to itself, the planner chose a hash join over a sequential
// scan of a million-row table, for every block, when customers had grown
// since its last statistics.) customers is probed by "= ANY($1)" on its
// key, an index scan that descends once per key of the sorted array; a
// LATERAL subquery per key cost a third more. Before that, one descent
// asks whether customers holds any key between the block's least and
// greatest ($4, $5, named by the reader when the key sorts bytewise): a
// sorted export's new keys lie past every customer, and their block then
// skips the thousand descents (0.6 ms of the 1 ms look-up of new keys).
// claims is probed only when it holds anything, which it does only while
// a run takes over, updates, or has keys rejected, by a LATERAL subquery
// with LIMIT 1 per key. Other
// runs' blocks are matched with a hash join on the keys ("= ANY($1)" over a
// block's keys is a linear scan, per key of every block), only when there
// are any: with sequential scans off, the planner no longer sees the scan
// of claim_blocks as cheap enough to try before building the hash of the
// block's keys, which cost 0.4 ms a block when there was nothing to match.
// The statement
// is prepared once per connection (planned for every block, it cost about
// 1 ms of a block's claim). JIT is off for the transaction: with sequential
// scans disabled the plan's cost passes JIT's threshold, and compiling costs
// more than any look-up of a block.
func (r *Run) holders(ctx context.Context, tx *sql.Tx, keyArray driver.Value, keys []string) (map[string]holding, error) {
	stmt, bytewise, err := r.lookupStmt(ctx)
	if err != nil {
		return nil, err
	}
	var lo, hi *string // nil: customers is probed for every key
	if bytewise && len(keys) > 0 {
		l, h := keys[0], keys[0]
		for _, k := range keys[1:] {
			l, h = min(l, k), max(h, k)
		}
		lo, hi = &l, &h
	}
	rows, err := tx.StmtContext(ctx, stmt).QueryContext(ctx, keyArray, r.id, int64(noAsOf), lo, hi)
	if err != nil {
		return nil, fmt.Errorf("look up keys: %w", err)
	}
	defer rows.Close()
	out := map[string]holding{}
	var refs []asOfRef
	for rows.Next() {
		h := &holder{}
		var key string
		var prior int64
		if err := rows.Scan(&h.src, &key, &h.run, &h.state, &h.file, &h.line, &h.orphan, &prior,
			&h.fp, &h.asOf, &h.version, &h.crmID, &h.kind, pq.Array(&h.fields)); err != nil {
			return nil, err
		}
		h.prior = time.Duration(prior) * time.Millisecond
		k := out[key]
		switch h.src {
		case inCustomers:
			k.cust = h
			if h.asOf == noAsOf {
				refs = append(refs, asOfRef{&h.asOf, h.run})
			}
		case inClaims:
			k.claim = h
		default:
			if k.block == nil {
				k.block = h
			}
		}
		out[key] = k
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	if len(refs) > 0 {
		if err := r.resolveAsOf(ctx, tx, refs); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// lookupStmt prepares the look-up the first time it is needed (again after
// a failure: the database may have been away).
func (r *Run) lookupStmt(ctx context.Context) (*sql.Stmt, bool, error) {
	r.lookupMu.Lock()
	defer r.lookupMu.Unlock()
	if r.lookup == nil {
		var bytewise bool
		if err := r.db.QueryRowContext(ctx, bytewiseKeysQuery).Scan(&bytewise); err != nil {
			return nil, false, fmt.Errorf("read the collation of customers' key: %w", err)
		}
		s, err := r.db.PrepareContext(ctx, lookupQuery)
		if err != nil {
			return nil, false, fmt.Errorf("prepare the look-up of keys: %w", err)
		}
		r.lookup, r.bytewise = s, bytewise
	}
	return r.lookup, r.bytewise, nil
}

// bytewiseKeysQuery tells whether customers.external_id sorts byte by
// byte (the C or POSIX collation, its own or the database's, from libc),
// as Go compares strings: only then is the range the reader names for a
// block's keys the one the key's index holds them in. Under any other
// collation every key is probed. (datlocprovider is read through to_jsonb:
// PostgreSQL 14 has no such column, and its database collations all come
// from libc.)
const bytewiseKeysQuery = `
	SELECT CASE WHEN co.collname = 'default'
	            THEN d.datcollate IN ('C', 'POSIX') AND COALESCE(to_jsonb(d) ->> 'datlocprovider', 'c') = 'c'
	            ELSE co.collname IN ('C', 'POSIX') END
	FROM pg_attribute a JOIN pg_collation co ON co.oid = a.attcollation
	     CROSS JOIN (SELECT * FROM pg_database WHERE datname = current_database()) d
	WHERE a.attrelid = 'customers'::regclass AND a.attname = 'external_id'`

const lookupQuery = `
	WITH span AS MATERIALIZED (
		SELECT $4::text IS NULL OR EXISTS (SELECT FROM customers WHERE external_id BETWEEN $4 AND $5::text) AS held)
	SELECT 0, c.external_id, c.run_id, '', c.source_file, c.source_line, false, 0::bigint,
	       c.fingerprint, COALESCE((EXTRACT(EPOCH FROM c.as_of) * 1000000)::bigint, $3), c.version, c.crm_id, '', '{}'::text[]
	FROM customers c WHERE (SELECT held FROM span) AND c.external_id = ANY($1::text[])
	UNION ALL
	SELECT 1, c.external_id, c.run_id, c.state, c.source_file, c.source_line, c.orphan,
	       COALESCE(GREATEST(0, (EXTRACT(EPOCH FROM c.not_before - clock_timestamp()) * 1000)::bigint), 0),
	       c.fingerprint, COALESCE((EXTRACT(EPOCH FROM c.as_of) * 1000000)::bigint, $3), 0, '', c.kind, c.fields
	FROM unnest($1::text[]) AS k(key)
	     CROSS JOIN LATERAL (SELECT * FROM claims c WHERE c.external_id = k.key LIMIT 1) c
	WHERE EXISTS (SELECT FROM claims)
	UNION ALL
	SELECT 2, u.k, b.run_id, 'sending', b.source_file, u.l, true, 0::bigint, '', $3, 0, '', 'create', '{}'::text[]
	FROM claim_blocks b CROSS JOIN LATERAL unnest(b.keys, b.lines) AS u(k, l)
	     JOIN unnest($1::text[]) AS q(key) ON q.key = u.k
	WHERE b.run_id <> $2 AND EXISTS (SELECT FROM claim_blocks o WHERE o.run_id <> $2)`

func (r *Run) insertBlocks(ctx context.Context, tx *sql.Tx, items []Item, fresh []int, encoded driver.Value) ([]int64, error) {
	blockOf := make([]int64, len(items))
	for len(fresh) > 0 {
		file := items[fresh[0]].File
		keys := make([]string, 0, len(fresh))
		lines := make([]int64, 0, len(fresh))
		idx := make([]int, 0, len(fresh))
		var rest []int
		for _, i := range fresh {
			if items[i].File != file {
				rest = append(rest, i)
				continue
			}
			idx = append(idx, i)
			keys = append(keys, items[i].Key)
			lines = append(lines, items[i].Line)
		}
		var keyParam any = pq.Array(keys)
		if encoded != nil && len(rest) == 0 {
			keyParam = encoded
		}
		encoded = nil // it holds every file's keys: the first row's only if there is one file
		var id int64
		if err := tx.QueryRowContext(ctx,
			`INSERT INTO claim_blocks (run_id, source_file, keys, lines) VALUES ($1, $2, $3, $4) RETURNING id`,
			r.id, file, keyParam, pq.Array(lines)).Scan(&id); err != nil {
			return nil, fmt.Errorf("claim block: %w", err)
		}
		for _, i := range idx {
			blockOf[i] = id
		}
		fresh = rest
	}
	return blockOf, nil
}
