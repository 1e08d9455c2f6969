package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"
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
func parseAttributes(b []byte) (map[string]string, error) {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}
