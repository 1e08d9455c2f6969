package ledger

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"crmsync/shared/contact"

	"github.com/lib/pq"
)

// ChangeMode is what a run does with a key customers holds with other
// content (-changed).
type ChangeMode uint8

const (
	// ChangesUpdate sends the change as an update (the default).
	ChangesUpdate ChangeMode = iota
	// ChangesSkip counts it as changed and sends nothing, as before
	// updates existed.
	ChangesSkip
	// ChangesReport counts and lists it (with the changed fields) and
	// sends nothing.
	ChangesReport
)

// ParseChangeMode reads a -changed value.
func ParseChangeMode(s string) (ChangeMode, error) {
	switch s {
	case "update", "":
		return ChangesUpdate, nil
	case "skip":
		return ChangesSkip, nil
	case "report":
		return ChangesReport, nil
	}
	return 0, fmt.Errorf("%q is not a -changed mode: give update, skip or report", s)
}

func (m ChangeMode) String() string {
	return [...]string{"update", "skip", "report"}[m]
}

// Sync is how a run treats keys the CRM holds already.
type Sync struct {
	// AsOf is the time of the export: a change older than the version
	// customers holds is stale, never sent. Zero: older than any version.
	AsOf time.Time
	Mode ChangeMode
	// Clears says whether an empty value of the named field clears the
	// CRM's value (contact.Merge); nil: an empty value never does.
	Clears func(name string) bool
	// Files are the run's files, in order: a key customers holds from an
	// earlier row of the same export (the same files, as of the same
	// time) is a repeat in it, whatever its content.
	Files []string
}

// earlierInExport reports whether customers holds c from a row of this
// export before it's.
func (s Sync) earlierInExport(c *holder, it Item) bool {
	if s.AsOf.IsZero() || c.asOf != s.asOfMicros() {
		return false
	}
	at := slices.Index(s.Files, it.File)
	from := slices.Index(s.Files, c.file)
	return at >= 0 && from >= 0 && (from < at || from == at && c.line < it.Line)
}

// SetSync sets how the run treats keys the CRM holds, before its first
// Claim, and records its as-of time.
func (r *Run) SetSync(ctx context.Context, s Sync) error {
	s.AsOf = s.AsOf.Truncate(time.Microsecond) // what PostgreSQL keeps
	r.sync = s
	var asOf any
	if !s.AsOf.IsZero() {
		asOf = s.AsOf
	}
	if _, err := r.db.ExecContext(ctx, `UPDATE runs SET as_of = $2 WHERE id = $1`, r.id, asOf); err != nil {
		return fmt.Errorf("record the run's as-of time: %w", err)
	}
	r.asOfMu.Lock()
	r.asOfs[r.id] = s.asOfMicros()
	r.asOfMu.Unlock()
	return nil
}

// querier is a *sql.DB or a *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// asOfRef is a customers row read with no as-of time of its own (noAsOf
// where its as-of goes), and its run.
type asOfRef struct {
	at  *int64
	run int64
}

// resolveAsOf gives customers rows read with no as-of time of their own
// (noAsOf) their run's: a row created by a confirmation leaves as_of
// NULL for runs.as_of, which a run records before its first claim and
// never changes. A row older than migration 0005 has NULL in both, and
// stays unknown, as does a row whose run is gone. One query for the runs
// not seen before; a process meets few.
func (r *Run) resolveAsOf(ctx context.Context, q querier, refs []asOfRef) error {
	r.asOfMu.Lock()
	var missing []int64
	for _, ref := range refs {
		if _, ok := r.asOfs[ref.run]; !ok && !slices.Contains(missing, ref.run) {
			missing = append(missing, ref.run)
		}
	}
	r.asOfMu.Unlock()
	if len(missing) > 0 {
		rows, err := q.QueryContext(ctx, `
			SELECT id, COALESCE((EXTRACT(EPOCH FROM as_of) * 1000000)::bigint, $2)
			FROM runs WHERE id = ANY($1::bigint[])`, pq.Array(missing), int64(noAsOf))
		if err != nil {
			return fmt.Errorf("read runs' as-of times: %w", err)
		}
		defer rows.Close()
		got := make(map[int64]int64, len(missing))
		for rows.Next() {
			var id, at int64
			if err := rows.Scan(&id, &at); err != nil {
				return err
			}
			got[id] = at
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read runs' as-of times: %w", err)
		}
		r.asOfMu.Lock()
		for _, id := range missing {
			at, ok := got[id]
			if !ok {
				at = noAsOf // the run is gone
			}
			r.asOfs[id] = at
		}
		r.asOfMu.Unlock()
	}
	r.asOfMu.Lock()
	defer r.asOfMu.Unlock()
	for _, ref := range refs {
		*ref.at = r.asOfs[ref.run]
	}
	return nil
}

// asOfMicros is the run's as-of time as customers.as_of compares.
func (s Sync) asOfMicros() int64 {
	if s.AsOf.IsZero() {
		return noAsOf
	}
	return s.AsOf.UnixMicro()
}

// fmtMicros formats an as-of time for a message.
func fmtMicros(us int64) string {
	if us == noAsOf {
		return "an unknown time"
	}
	return time.UnixMicro(us).UTC().Format(time.RFC3339)
}

// parseAttributes reads the attributes column.
func parseAttributes(b []byte) (contact.Attrs, error) {
	var a contact.Attrs
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, err
	}
	return a, nil
}
