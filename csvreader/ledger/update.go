package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"slices"

	"github.com/lib/pq"

	"crmsync/shared/contact"
)

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
	stored, err := r.readContacts(ctx, tx, keys)
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
		u, final, ok := r.sync.change(it, row, hs[it.Key].cust, p.takeOver)
		if !ok {
			out[p.item] = final
			continue
		}
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
	// A row whose as_of is NULL holds its run's (resolveAsOf), which the
	// filter above compared: only the keys older than this run's are
	// here, so writing this run's over a NULL never moves a row back.
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

// change decides for an item whose fingerprint differs from what
// customers holds, from row (read in the claim's transaction: a
// confirmation may have landed since the look-up's snapshot, whose holder
// look is): the update to write, or, with ok false, the final decision:
// Unchanged (only kept cells differ), Stale, or Changed when the ledger
// holds no CRM id to update by. taken, when not nil, is a dead run's
// update claim being taken over: its fields are written too, and it is
// never stale (its as-of was checked against the claim).
func (s Sync) change(it Item, row storedRow, look, taken *holder) (u *Update, final Decision, ok bool) {
	c, old := row.holder(look), row.c
	in := it.Contact
	if in == nil {
		in = &old
	}
	merged, changed := contact.Merge(&old, in, s.Clears)
	fields := changed
	if taken != nil {
		fields = union(changed, taken.fields)
	}
	switch {
	case len(fields) == 0:
		return nil, Decision{Status: Unchanged, Why: fmt.Sprintf("delivered by run %d from %s line %d; this export's empty cells keep its values", c.run, c.file, c.line)}, false
	case taken == nil && s.asOfMicros() < c.asOf:
		return nil, staleDecision(s, c), false
	case c.crmID == "":
		// Updated by id, a contact whose id is unknown could only be
		// created again: a duplicate. Say so instead.
		return nil, Decision{Status: Changed, Update: &Update{Changed: changed}, Why: fmt.Sprintf(
			"changed, not sent: the ledger holds no CRM id for this key (delivered by run %d); look the contact up in the CRM and fix customers.crm_id", c.run)}, false
	}
	return &Update{CRMID: c.crmID, Version: c.version, Contact: merged, Fingerprint: merged.Fingerprint(), Old: c.fp, Fields: fields, Changed: changed}, Decision{}, true
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
	asOf    int64 // its run's when the row holds none (resolveAsOf)
	run     int64
	version int64
	crmID   string
}

// readContacts reads what customers holds for keys.
func (r *Run) readContacts(ctx context.Context, tx *sql.Tx, keys []string) (map[string]storedRow, error) {
	rows, err := tx.QueryContext(ctx, `
		SELECT c.external_id, c.email, c.first_name, c.last_name, c.phone, c.attributes,
		       c.fingerprint, COALESCE((EXTRACT(EPOCH FROM c.as_of) * 1000000)::bigint, $2), c.version, c.crm_id, c.run_id
		FROM unnest($1::text[]) AS k(key) JOIN customers c ON c.external_id = k.key`, pq.Array(keys), int64(noAsOf))
	if err != nil {
		return nil, fmt.Errorf("read delivered contacts: %w", err)
	}
	defer rows.Close()
	read := make([]storedRow, 0, len(keys))
	for rows.Next() {
		var s storedRow
		c := &s.c
		var attrs []byte
		if err := rows.Scan(&c.ExternalID, &c.Email, &c.FirstName, &c.LastName, &c.Phone, &attrs, &s.fp, &s.asOf, &s.version, &s.crmID, &s.run); err != nil {
			return nil, err
		}
		if c.Attributes, err = parseAttributes(attrs); err != nil {
			return nil, fmt.Errorf("attributes of %q: %w", c.ExternalID, err)
		}
		read = append(read, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	var refs []asOfRef
	for i := range read {
		if read[i].asOf == noAsOf {
			refs = append(refs, asOfRef{&read[i].asOf, read[i].run})
		}
	}
	if len(refs) > 0 {
		if err := r.resolveAsOf(ctx, tx, refs); err != nil {
			return nil, err
		}
	}
	out := make(map[string]storedRow, len(read))
	for _, s := range read {
		out[s.c.ExternalID] = s
	}
	return out, nil
}

// holder is the look-up's holder with this read's values.
func (s storedRow) holder(h *holder) *holder {
	c := *h
	c.fp, c.asOf, c.version, c.crmID = s.fp, s.asOf, s.version, s.crmID
	return &c
}
