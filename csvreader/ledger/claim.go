package ledger

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"math"
	"slices"
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

// Update is a change of a key customers holds.
type Update struct {
	CRMID string // the CRM's id of the contact
	// Version is the customers version it was computed against; the
	// confirmation makes Version+1.
	Version int64
	// Contact is the contact once updated (contact.Merge): what customers
	// and the CRM hold after it.
	Contact     contact.Contact
	Fingerprint string // Contact's
	Old         string // the fingerprint customers holds
	// Fields are the fields to write: those that changed, and, for a claim
	// taken over, those the dead run's update wrote.
	Fields []string
	// Changed are the fields that differ from what customers holds.
	Changed []string
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
	var ask []int
	for i, it := range items {
		// Even the very same record (a file given twice): it is being sent.
		if c, ok := r.inflight.get(it.Key); ok {
			out[i] = Decision{Status: DuplicateInFile, Why: fmt.Sprintf("same key as %s line %d", c.file, c.line)}
		} else {
			ask = append(ask, i)
		}
	}
	if len(ask) == 0 {
		return out, nil
	}
	keys := make([]string, len(ask))
	for j, i := range ask {
		keys[j] = items[i].Key
	}
	keyArray, err := pq.Array(keys).Value() // encoded once, sent up to twice
	if err != nil {
		return nil, err
	}
	var blockOf []int64 // by item: its new block; 0: none
	var own []int       // items now held by a claims row of this run
	err = r.inTx(ctx, func(tx *sql.Tx) error {
		own = own[:0]
		// The lock, and the plan of the look-up (see holders) for this
		// transaction only.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1),
			set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true),
			set_config('jit', 'off', true)`, int64(db.ClaimLockKey)); err != nil {
			return fmt.Errorf("claim lock: %w", err)
		}
		hs, err := r.holders(ctx, tx, keyArray)
		if err != nil {
			return err
		}
		var live map[int64]bool
		for _, h := range hs {
			if c := cmpOr(h.claim, h.block); c != nil && c.run != r.id {
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
			c := cmpOr(h.claim, h.block)
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
	var hk []string
	var hc []claim
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

func cmpOr(hs ...*holder) *holder {
	for _, h := range hs {
		if h != nil {
			return h
		}
	}
	return nil
}

// pendingUpdate is an item whose key customers holds with another
// fingerprint: what it holds must be read before deciding.
type pendingUpdate struct {
	item int
	// takeOver: a dead run's update claim on the key, whose fields this
	// run's update writes too.
	takeOver *holder
}

// decideDelivered decides for an item whose key customers holds, or
// reports that what customers holds must be read first.
func (r *Run) decideDelivered(it Item, h holding, live map[int64]bool, out *Decision) (pendingUpdate, bool) {
	c := h.cust
	asOf := r.sync.asOfMicros()
	if u := h.claim; u != nil && u.kind == "create" && u.run != r.id && u.state == "sending" && live[u.run] {
		// A live run resolving a create it took over (its lookup, say):
		// the key is its until it settles.
		*out = Decision{Status: Busy, Why: fmt.Sprintf("being resolved by run %d (%s line %d)", u.run, u.file, u.line)}
		return pendingUpdate{}, false
	}
	// Another run's update the CRM rejected wrote nothing: as if none.
	if u := h.claim; u != nil && u.kind == "update" && (u.run == r.id || u.state != "rejected") {
		switch {
		case u.run == r.id && u.state == "sending" && u.file == it.File && u.line == it.Line:
			// An earlier attempt of this Claim committed this very claim
			// and its answer was lost: send it, once the calls of the
			// run it may have been taken over from are over.
			return pendingUpdate{takeOver: u}, true
		case u.run == r.id:
			why := fmt.Sprintf("same key as %s line %d", u.file, u.line)
			if u.state == "rejected" {
				why += ", whose update the CRM rejected"
			}
			*out = Decision{Status: DuplicateInFile, Why: why}
			return pendingUpdate{}, false
		case u.asOf > asOf:
			*out = Decision{Status: Stale, Why: fmt.Sprintf("run %d is sending a newer version (as of %s, from %s line %d); this export is as of %s",
				u.run, fmtMicros(u.asOf), u.file, u.line, fmtMicros(asOf))}
			return pendingUpdate{}, false
		case live[u.run]:
			*out = Decision{Status: Busy, Why: fmt.Sprintf("being updated by run %d (%s line %d)", u.run, u.file, u.line)}
			return pendingUpdate{}, false
		default:
			// A dead run's update may have reached the CRM: whatever it
			// wrote is written again with this export's values.
			return pendingUpdate{takeOver: u}, true
		}
	}
	switch {
	case c.run == r.id:
		*out = Decision{Status: DuplicateInFile, Why: fmt.Sprintf("delivered earlier in this run from %s line %d", c.file, c.line)}
	case it.Fingerprint == c.fp || it.Contact == nil:
		*out = Decision{Status: Unchanged, Why: fmt.Sprintf("delivered by run %d from %s line %d", c.run, c.file, c.line)}
	case r.sync.earlierInExport(c, it):
		// The same export delivered the key from an earlier row: this
		// one is a repeat, as it was in the run that delivered it.
		*out = Decision{Status: DuplicateInFile, Why: fmt.Sprintf("same key as %s line %d (delivered by run %d)", c.file, c.line, c.run)}
	default:
		return pendingUpdate{}, true
	}
	return pendingUpdate{}, false
}

// settleUpdates reads what customers holds for the pending items, decides
// for each (Unchanged, Updating, Changed, or TakenOver of a dead run's
// update), writes the claims rows of fresh updates and returns the
// takeovers for takeOver.
func (r *Run) settleUpdates(ctx context.Context, tx *sql.Tx, items []Item, hs map[string]holding, pend []pendingUpdate, out []Decision) ([]takeover, error) {
	keys := make([]string, len(pend))
	for j, p := range pend {
		keys[j] = items[p.item].Key
	}
	stored, err := readContacts(ctx, tx, keys)
	if err != nil {
		return nil, err
	}
	var take []takeover
	var claimNow []int
	for _, p := range pend {
		it := items[p.item]
		row, ok := stored[it.Key]
		if !ok {
			return nil, fmt.Errorf("customers row of %q vanished during the claim", it.Key)
		}
		// What customers holds now, read once: a confirmation may have
		// landed since the look-up's snapshot.
		c, old := row.holder(hs[it.Key].cust), row.c
		in := it.Contact
		if in == nil {
			in = &old
		}
		merged, changed := contact.Merge(&old, in, r.sync.Clears)
		fields := changed
		if p.takeOver != nil {
			fields = union(changed, p.takeOver.fields)
		}
		if len(fields) == 0 {
			out[p.item] = Decision{Status: Unchanged, Why: fmt.Sprintf("delivered by run %d from %s line %d; this export's empty cells keep its values", c.run, c.file, c.line)}
			continue
		}
		if p.takeOver == nil && r.sync.asOfMicros() < c.asOf {
			out[p.item] = staleDecision(r.sync, c)
			continue
		}
		if c.crmID == "" {
			// Updated by id, a contact whose id is unknown could only be
			// created again: a duplicate. Say so instead.
			out[p.item] = Decision{Status: Changed, Why: "changed, not sent: the ledger holds no CRM id for this key (delivered by run " +
				fmt.Sprint(c.run) + "); look the contact up in the CRM and fix customers.crm_id", Update: &Update{Changed: changed}}
			continue
		}
		u := &Update{CRMID: c.crmID, Version: c.version, Contact: merged, Fingerprint: merged.Fingerprint(), Old: c.fp, Fields: fields, Changed: changed}
		switch {
		case p.takeOver != nil:
			t := p.takeOver
			out[p.item] = Decision{Status: TakenOver, Update: u}
			if t.run == r.id { // our own claim, its answer lost: wait as its first attempt did
				out[p.item].Orphaned, out[p.item].Wait = true, t.prior
				claimNow = append(claimNow, p.item)
				continue
			}
			take = append(take, takeover{item: p.item, prev: t.state, run: t.run, orphan: t.orphan, prior: t.prior})
		case r.sync.Mode != ChangesUpdate:
			out[p.item] = Decision{Status: Changed, Update: u}
		default:
			out[p.item] = Decision{Status: Updating, Update: u}
			claimNow = append(claimNow, p.item)
		}
	}
	if len(claimNow) > 0 {
		rows := make([]claimRow, len(claimNow))
		for j, i := range claimNow {
			rows[j] = r.claimRowOf(items[i], out[i].Update, 0)
		}
		if err := r.writeClaims(ctx, tx, rows); err != nil {
			return nil, err
		}
	}
	// Own claims rows (claimNow) and takeovers alike are held with a
	// claims row: Claim's caller adds take's; add claimNow's here.
	for _, i := range claimNow {
		take = append(take, takeover{item: i, own: true})
	}
	return take, nil
}

// confirmUnchanged raises customers.as_of to this run's for the keys found
// unchanged: this export says the CRM holds the right values as of its
// time, so an older export processed later must find its changes stale
// (a value changed and changed back meanwhile included). It runs in the
// claim's transaction, under the claim lock, so no older run can decide
// between this decision and its record. A rerun of the same export writes
// nothing.
func (r *Run) confirmUnchanged(ctx context.Context, tx *sql.Tx, items []Item, hs map[string]holding, out []Decision) error {
	asOf := r.sync.asOfMicros()
	if asOf == noAsOf {
		return nil
	}
	var keys []string
	for i, d := range out {
		if d.Status != Unchanged {
			continue
		}
		if c := hs[items[i].Key].cust; c != nil && c.asOf < asOf {
			keys = append(keys, items[i].Key)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `
		UPDATE customers c SET as_of = $2 FROM unnest($1::text[]) AS k(key)
		WHERE c.external_id = k.key AND (c.as_of IS NULL OR c.as_of < $2)`, pq.Array(keys), r.sync.AsOf); err != nil {
		return fmt.Errorf("record unchanged keys' as-of time: %w", err)
	}
	return nil
}

// staleDecision: customers holds c from a newer export than this run's.
func staleDecision(s Sync, c *holder) Decision {
	return Decision{Status: Stale, Why: fmt.Sprintf("the CRM holds a newer version (as of %s, run %d, %s line %d); this export is as of %s",
		fmtMicros(c.asOf), c.run, c.file, c.line, fmtMicros(s.asOfMicros()))}
}

// union is a's names followed by those of b not in a.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, n := range b {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// storedRow is a customers row as read to compute an update.
type storedRow struct {
	c       contact.Contact
	fp      string
	asOf    int64
	version int64
	crmID   string
}

// holder is the look-up's holder with this read's values.
func (s storedRow) holder(h *holder) *holder {
	c := *h
	c.fp, c.asOf, c.version, c.crmID = s.fp, s.asOf, s.version, s.crmID
	return &c
}

// readContacts reads what customers holds for keys.
func readContacts(ctx context.Context, tx *sql.Tx, keys []string) (map[string]storedRow, error) {
	rows, err := tx.QueryContext(ctx, `
		SELECT c.external_id, c.email, c.first_name, c.last_name, c.phone, c.attributes,
		       c.fingerprint, COALESCE((EXTRACT(EPOCH FROM c.as_of) * 1000000)::bigint, $2), c.version, c.crm_id
		FROM unnest($1::text[]) AS k(key) JOIN customers c ON c.external_id = k.key`, pq.Array(keys), int64(noAsOf))
	if err != nil {
		return nil, fmt.Errorf("read delivered contacts: %w", err)
	}
	defer rows.Close()
	out := make(map[string]storedRow, len(keys))
	for rows.Next() {
		var s storedRow
		c := &s.c
		var attrs []byte
		if err := rows.Scan(&c.ExternalID, &c.Email, &c.FirstName, &c.LastName, &c.Phone, &attrs, &s.fp, &s.asOf, &s.version, &s.crmID); err != nil {
			return nil, err
		}
		if c.Attributes, err = parseAttributes(attrs); err != nil {
			return nil, fmt.Errorf("attributes of %q: %w", c.ExternalID, err)
		}
		out[c.ExternalID] = s
	}
	return out, rows.Err()
}

// holders reads, in one statement and so in one snapshot, what the ledger
// holds for keys: a customers row, a claims row, another run's block.
// The claim lock keeps other runs from claiming meanwhile; a run confirming
// meanwhile writes customers in one transaction and deletes the key's block
// only in a later one, so the snapshot finds the key in one place or both.
//
// The right plan is an index probe per key, whatever the size of
// customers and its statistics; Claim's transaction disables hash and merge
// joins, which leaves the planner a nested loop, and for a nested loop the
// index is far cheaper than scanning the table once per key. (Disabling
// sequential scans instead inflates the plan's cost, since claim_blocks can
// only be scanned, past the threshold where PostgreSQL JIT-compiles the
// query: 120 ms a block. JIT is off here for the same reason.)
// Left to itself, it chose a hash join over a sequential scan of a
// million-row table, for every block, when customers had grown since its
// last statistics (a prepared statement's generic plan does the same).
// The keys are joined with unnest($1) rather than matched with
// "= ANY($1)", which the planner estimates key by key: with 1000 keys that
// took longer than running the query.
func (r *Run) holders(ctx context.Context, tx *sql.Tx, keys driver.Value) (map[string]holding, error) {
	rows, err := tx.QueryContext(ctx, lookupQuery, keys, r.id, int64(noAsOf))
	if err != nil {
		return nil, fmt.Errorf("look up keys: %w", err)
	}
	defer rows.Close()
	out := map[string]holding{}
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
		case inClaims:
			k.claim = h
		default:
			if k.block == nil {
				k.block = h
			}
		}
		out[key] = k
	}
	return out, rows.Err()
}

const lookupQuery = `
	SELECT 0, c.external_id, c.run_id, '', c.source_file, c.source_line, false, 0::bigint,
	       c.fingerprint, COALESCE((EXTRACT(EPOCH FROM c.as_of) * 1000000)::bigint, $3), c.version, c.crm_id, '', '{}'::text[]
	FROM unnest($1::text[]) AS k(key) JOIN customers c ON c.external_id = k.key
	UNION ALL
	SELECT 1, c.external_id, c.run_id, c.state, c.source_file, c.source_line, c.orphan,
	       COALESCE(GREATEST(0, (EXTRACT(EPOCH FROM c.not_before - clock_timestamp()) * 1000)::bigint), 0),
	       c.fingerprint, COALESCE((EXTRACT(EPOCH FROM c.as_of) * 1000000)::bigint, $3), 0, '', c.kind, c.fields
	FROM unnest($1::text[]) AS k(key) JOIN claims c ON c.external_id = k.key
	UNION ALL
	SELECT 2, u.k, b.run_id, 'sending', b.source_file, u.l, true, 0::bigint, '', $3, 0, '', 'create', '{}'::text[]
	FROM claim_blocks b, unnest(b.keys, b.lines) AS u(k, l)
	WHERE b.run_id <> $2 AND u.k = ANY($1)`

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
