package ledger

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strconv"
	"unsafe"

	"github.com/lib/pq"

	"crmsync/shared/contact"
)

// rawConn is one connection inside a driver-level transaction. It exists for
// COPY: through database/sql, lib/pq takes a COPY row per Exec call, with
// argument conversion and escaping for each value; here the rows are built
// in chunks of text and written with a CopyData call each.
type rawConn struct {
	ctx context.Context
	dc  any // the driver's connection
}

// rawTx runs fn in a transaction on one pooled connection, at the driver
// level. A connection left broken by an error is dropped by the pool
// (lib/pq reports it invalid).
func (r *Run) rawTx(ctx context.Context, fn func(*rawConn) error) error {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		b, ok := dc.(driver.ConnBeginTx)
		if !ok {
			return fmt.Errorf("driver %T cannot begin a transaction with a context", dc)
		}
		tx, err := b.BeginTx(ctx, driver.TxOptions{})
		if err != nil {
			return err
		}
		if err := fn(&rawConn{ctx: ctx, dc: dc}); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	})
}

func (c *rawConn) exec(query string, args ...any) error {
	e, ok := c.dc.(driver.ExecerContext)
	if !ok {
		return fmt.Errorf("driver %T cannot execute with a context", c.dc)
	}
	named := make([]driver.NamedValue, len(args))
	for i, a := range args {
		if v, ok := a.(driver.Valuer); ok {
			var err error
			if a, err = v.Value(); err != nil {
				return err
			}
		}
		named[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
	}
	_, err := e.ExecContext(c.ctx, query, named)
	return err
}

// copyChunk is about how much COPY data is handed to the driver at a time:
// it stays in the CPU's cache, and lib/pq sends a message per 64 KiB anyway.
const copyChunk = 60 << 10

// copyIn writes rows into table's columns with COPY. rows hands emit the
// rows a chunk at a time, in COPY's text format, each row ending in a
// newline; the chunk may be reused once emit returns.
func (c *rawConn) copyIn(table string, columns []string, rows func(emit func(chunk []byte) error) error) error {
	p, ok := c.dc.(driver.ConnPrepareContext)
	if !ok {
		return fmt.Errorf("driver %T cannot prepare with a context", c.dc)
	}
	stmt, err := p.PrepareContext(c.ctx, pq.CopyIn(table, columns...))
	if err != nil {
		return err
	}
	defer stmt.Close()
	cd, ok := stmt.(interface {
		CopyData(context.Context, string) (driver.Result, error)
	})
	if !ok {
		return fmt.Errorf("driver statement %T cannot take raw COPY data", stmt)
	}
	emit := func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		// CopyData appends its argument and a newline to its own buffer
		// before returning and keeps no reference to it, so the string may
		// share b's bytes instead of copying them once more.
		_, err := cd.CopyData(c.ctx, unsafe.String(&b[0], len(b)-1))
		return err
	}
	if err := rows(emit); err != nil {
		return err
	}
	_, err = stmt.Exec(nil) //nolint:staticcheck // lib/pq's copyin has no ExecContext; nil ends the COPY and reports its errors
	return err
}

// copyRows writes the customers rows of ds in COPY's text format, in the
// order of customerColumns, a chunk at a time.
func copyRows(run int64, ds []Delivery) func(emit func([]byte) error) error {
	return func(emit func([]byte) error) error {
		b := make([]byte, 0, copyChunk+4<<10)
		var scratch []byte
		for i := range ds {
			b, scratch = appendCopyRow(b, scratch, run, &ds[i])
			if len(b) >= copyChunk {
				if err := emit(b); err != nil {
					return err
				}
				b = b[:0]
			}
		}
		return emit(b)
	}
}

// appendCopyRow appends one customers row; scratch is a buffer for the
// attributes' JSON, handed back for reuse.
func appendCopyRow(b, scratch []byte, run int64, d *Delivery) ([]byte, []byte) {
	c := &d.Contact
	for _, f := range contact.Fields {
		b = append(appendCopyText(b, f.Get(c)), '\t')
	}
	scratch = c.Attributes.AppendJSON(scratch[:0])
	b = append(appendCopyText(b, scratch), '\t')
	b = append(appendCopyText(b, d.CRMID), '\t')
	b = append(appendCopyText(b, d.Fingerprint), '\t')
	b = append(strconv.AppendInt(b, run, 10), '\t')
	b = append(appendCopyText(b, d.File), '\t')
	return append(strconv.AppendInt(b, d.Line, 10), '\n'), scratch
}

// appendCopyText appends s escaped for a COPY text-format field.
func appendCopyText[T string | []byte](b []byte, s T) []byte {
	start := 0
	for i := 0; i < len(s); i++ {
		for i < len(s) && copyEscape[s[i]] == 0 {
			i++
		}
		if i == len(s) {
			break
		}
		b = append(append(b, s[start:i]...), '\\', copyEscape[s[i]])
		start = i + 1
	}
	return append(b, s[start:]...)
}

// copyEscape maps each byte COPY's text format escapes to the letter after
// the backslash; 0 for the others.
var copyEscape = [256]byte{'\\': '\\', '\t': 't', '\n': 'n', '\r': 'r'}

// attributesText is the attributes column's text for attrs: a JSON object,
// names sorted (migration 0007), the same for equal attributes.
func attributesText(attrs contact.Attrs) string {
	return string(attrs.AppendJSON(nil))
}
