package export

import (
	"bufio"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
)

// RejectsWriter writes the rows the CRM would refuse to a rejects file: valid
// CSV with the columns "line" and "reason" followed by the export's own
// header, and each rejected row's original fields after its line number and
// reason.
//
// The marker columns come first, not last, so a row keeps exactly its own
// fields: a row with fewer fields than the header is not padded (it would
// pass the field count check when fed back unfixed), and a row with more
// keeps them all. A Reader recognises the file by its first two columns
// being exactly "line" and "reason" and drops them, so a user can fix rows
// in place and feed the rejects file back as an export.
//
// The file is written in place (created or truncated), not renamed into
// place on Close, so a crash leaves every row flushed so far. It may hold
// customer data, so it is created readable by its owner only.
//
// A RejectsWriter is safe for concurrent use.
type RejectsWriter struct {
	path string

	mu     sync.Mutex
	f      *os.File
	csv    *csv.Writer
	record []string // scratch, reused under mu
	count  int
	closed bool
}

// NewRejectsWriter creates (or truncates) the rejects file at path and writes
// its header: "line", "reason", then header. delimiter 0 means ','.
func NewRejectsWriter(path string, header []string, delimiter rune) (*RejectsWriter, error) {
	if delimiter == 0 {
		delimiter = ','
	}
	if !validDelim(delimiter) {
		return nil, fmt.Errorf("rejects file %s: %w %q", path, ErrBadDelimiter, delimiter)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create rejects file: %w", err)
	}
	// csv.NewWriter uses a *bufio.Writer as is, so this is its buffer.
	cw := csv.NewWriter(bufio.NewWriterSize(f, 64<<10))
	cw.Comma = delimiter
	w := &RejectsWriter{path: path, f: f, csv: cw}
	if err := cw.Write(append(append([]string(nil), rejectsMarker...), header...)); err != nil {
		f.Close()
		return nil, fmt.Errorf("rejects file %s: write header: %w", path, err)
	}
	return w, nil
}

// Write appends one rejected row: its line in the export, its original
// fields (all of them, however many) and the reason. The Reader reads them
// back verbatim, line breaks inside a field included; only the difference
// between a quoted "" and an empty field is lost (both are written empty).
func (w *RejectsWriter) Write(line int, fields []string, reason string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("rejects file %s: %w", w.path, os.ErrClosed)
	}
	w.record = append(append(w.record[:0], strconv.Itoa(line), reason), fields...)
	if err := w.csv.Write(w.record); err != nil {
		return fmt.Errorf("rejects file %s: %w", w.path, err)
	}
	w.count++
	return nil
}

// Count returns how many rows have been written.
func (w *RejectsWriter) Count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

// Flush writes buffered rows to the file and syncs it to disk, so they
// survive a crash.
func (w *RejectsWriter) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("rejects file %s: %w", w.path, os.ErrClosed)
	}
	return w.flush()
}

func (w *RejectsWriter) flush() error {
	w.csv.Flush()
	if err := w.csv.Error(); err != nil {
		return fmt.Errorf("rejects file %s: %w", w.path, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("rejects file %s: %w", w.path, err)
	}
	return nil
}

// Close flushes, syncs and closes the file. Calling it again returns nil.
func (w *RejectsWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.flush()
	if cerr := w.f.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("rejects file %s: %w", w.path, cerr))
	}
	return err
}
