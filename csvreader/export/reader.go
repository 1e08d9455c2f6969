// Package export reads customer export files (CSV, optionally gzipped) as a
// stream of validated rows, and writes the rejects file that keeps the rows
// the CRM would refuse.
//
// A Reader holds one record at a time plus fixed read buffers, so exports far
// larger than memory stream through it. Rows are validated with
// contact.Validate, so the Reader rejects exactly what the CRM would. A bad
// row is not an error: it comes back with Row.Problem set, and only I/O and
// decompression failures stop the stream.
//
// A record encoding/csv cannot parse (a bare or stray quote) comes back as a
// CodeCSVSyntax row whose single field is the record's raw text, and reading
// resumes on the next line: csv drops the rest of the bad line, so nothing
// after it is lost. A quote left open runs on to the next quote, possibly
// lines later, and those lines are part of the bad record's raw text;
// Options.MaxRecordBytes stops one that would swallow the file.
//
// A rejects file (see RejectsWriter) is itself an export: the Reader
// recognises its marker columns and drops them, so fixed rows can be fed
// back as they are.
//
// A Reader is not safe for concurrent use, except that Offset, Size and Name
// may be called from another goroutine (a progress reporter) while Next runs.
// A RejectsWriter is safe for concurrent use.
package export

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"crmsync/shared/contact"
)

// Problem codes the Reader adds to the CRM's own (contact.Code*).
const (
	CodeCSVSyntax     = "csv_syntax"      // the record is not valid CSV; Row.Fields holds its raw text
	CodeFieldCount    = "field_count"     // the record has more or fewer fields than the header
	CodeFieldTooLarge = "field_too_large" // a field is longer than Options.MaxFieldBytes
	CodeMissingKey    = "missing_key"     // the key column is empty
	CodeNULByte       = "nul_byte"        // a field holds a NUL byte, which PostgreSQL text cannot store
)

// DefaultMaxRecordBytes is the record size limit when Options.MaxRecordBytes
// is 0. Contacts are small; a record this large is almost always an
// unterminated quote swallowing the rest of the file.
const DefaultMaxRecordBytes = 16 << 20

// bufSize is the size of each read buffer: large reads keep syscalls and
// gzip refills rare on multi-gigabyte files.
const bufSize = 256 << 10

// Sentinel errors, wrapped in an *Error.
var (
	ErrNoHeader        = errors.New("no header line")
	ErrMissingColumn   = errors.New("missing required column")
	ErrDuplicateColumn = errors.New("duplicate column")
	ErrBadHeader       = errors.New("bad header")
	ErrRecordTooLarge  = errors.New("record too large")
	ErrBadDelimiter    = errors.New("invalid delimiter")
)

// Error is a fatal problem with an export file: it cannot be read, its header
// is unusable, or reading failed part way (truncated gzip, I/O error).
type Error struct {
	Name   string // the file, as given to Open or NewReader
	Line   int    // the header's line, or for a read failure the last line read before it; 0 if none
	Offset int64  // for a read failure, bytes of the file consumed (compressed bytes for gzip); otherwise -1
	Err    error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Name)
	switch {
	case e.Offset >= 0 && e.Line > 0:
		fmt.Fprintf(&b, ": after line %d, at byte %d", e.Line, e.Offset)
	case e.Offset >= 0:
		fmt.Fprintf(&b, ": at byte %d", e.Offset)
	case e.Line > 0:
		fmt.Fprintf(&b, ": line %d", e.Line)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Options configure a Reader. The zero value reads a comma-separated export
// keyed by its "id" column, with no field size limit.
type Options struct {
	Delimiter rune // field delimiter; 0 means ','

	// Key is the column holding the dedup key; "" means "id". Its trimmed
	// value becomes the contact's ExternalID.
	Key string

	// MaxFieldBytes is the longest field accepted; a longer one makes the
	// row invalid (CodeFieldTooLarge). 0 means no limit.
	MaxFieldBytes int

	// MaxRecordBytes bounds the memory one record may take, roughly (blank
	// lines before it count too): a longer record is a fatal error, since
	// the Reader cannot tell where it ends. 0 means DefaultMaxRecordBytes;
	// negative means no limit.
	MaxRecordBytes int
}

// Row is one record of the export.
type Row struct {
	Line int // line where the record starts (1 is the header line)

	// Fields are the record's original fields, untrimmed; the caller owns
	// the slice. For CodeCSVSyntax it is a single field holding the raw
	// text of the record (line breaks normalised to "\n"), because a record
	// encoding/csv refused cannot be split into fields reliably.
	Fields []string

	Key string // trimmed key value; "" for CodeCSVSyntax and CodeFieldCount

	// Contact is filled from the fields (all but CodeCSVSyntax and
	// CodeFieldCount rows): ExternalID is Key, the known columns fill their
	// fields, every other non-empty column is an attribute.
	Contact contact.Contact

	Problem *contact.Problem // nil when the CRM would accept the contact
}

// rejectsMarker is the first two columns of a rejects file (see
// RejectsWriter). Matched exactly, so an export is only taken for a rejects
// file when it was written as one.
var rejectsMarker = []string{"line", "reason"}

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// Reader streams the rows of one export file.
type Reader struct {
	name    string
	size    int64
	opts    Options
	closer  io.Closer // the file Open opened; nil for NewReader
	gz      *gzip.Reader
	counted *countingReader
	raw     *recorder
	bom     int64 // bytes of BOM skipped before csv saw the stream
	csv     *csv.Reader

	header  []string // the export's columns (rejects markers dropped)
	skip    int      // leading columns to drop from every record: len(rejectsMarker) for a rejects file
	cols    columns
	keyName string // the key column as named in the header, for messages

	arena []string // see copyFields

	line int   // line of the last record returned
	err  error // sticky: io.EOF or the fatal *Error
}

// columns maps header positions to contact fields; -1 when absent.
type columns struct {
	key, email, first, last, phone int
	attrs                          []attrColumn
}

type attrColumn struct {
	index int
	name  string
}

// Open opens the export at path ("-" for stdin). Gzip is detected from the
// content (magic bytes 1f 8b), whatever the name. The header is read and
// checked before Open returns.
func Open(path string, opts Options) (*Reader, error) {
	if path == "-" {
		return NewReader(os.Stdin, "stdin", -1, opts)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{Name: path, Offset: -1, Err: err}
	}
	size := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	r, err := NewReader(f, path, size, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.closer = f
	return r, nil
}

// NewReader reads an export from rd, named name in errors, of size bytes
// (-1 if unknown). It reads and maps the header before it returns. Close
// does not close rd.
func NewReader(rd io.Reader, name string, size int64, opts Options) (*Reader, error) {
	if opts.Delimiter == 0 {
		opts.Delimiter = ','
	}
	if !validDelim(opts.Delimiter) {
		return nil, &Error{Name: name, Offset: -1, Err: fmt.Errorf("%w %q: use a single character other than a quote or line break", ErrBadDelimiter, opts.Delimiter)}
	}
	if opts.Key == "" {
		opts.Key = "id"
	}
	if opts.MaxRecordBytes == 0 {
		opts.MaxRecordBytes = DefaultMaxRecordBytes
	}
	r := &Reader{name: name, size: size, opts: opts, counted: &countingReader{r: rd}}

	src := bufio.NewReaderSize(r.counted, bufSize)
	var decoded io.Reader = src
	magic, err := src.Peek(2)
	if err != nil && err != io.EOF {
		return nil, r.fail(err)
	}
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		if r.gz, err = gzip.NewReader(src); err != nil {
			return nil, r.fail(err)
		}
		decoded = r.gz
	}
	r.raw = &recorder{src: decoded, limit: opts.MaxRecordBytes}
	// csv.NewReader uses a *bufio.Reader as is, so this buffer is csv's own.
	buf := bufio.NewReaderSize(r.raw, bufSize)
	if b, _ := buf.Peek(len(utf8BOM)); bytes.Equal(b, utf8BOM) {
		buf.Discard(len(utf8BOM))
		r.bom = int64(len(utf8BOM))
	}
	r.csv = csv.NewReader(buf)
	r.csv.Comma = opts.Delimiter
	r.csv.FieldsPerRecord = -1 // we check the count, to report it as a row problem
	r.csv.ReuseRecord = true

	if err := r.readHeader(); err != nil {
		if r.gz != nil {
			r.gz.Close()
		}
		return nil, err
	}
	return r, nil
}

func (r *Reader) readHeader() error {
	rec, err := r.csv.Read()
	var perr *csv.ParseError
	switch {
	case err == io.EOF:
		return &Error{Name: r.name, Offset: -1, Err: fmt.Errorf("%w: the file is empty; an export starts with a header naming its columns", ErrNoHeader)}
	case errors.As(err, &perr):
		return &Error{Name: r.name, Line: perr.StartLine, Offset: -1, Err: fmt.Errorf("%w: %v", ErrBadHeader, perr)}
	case err != nil:
		return r.fail(err)
	}
	r.line, _ = r.csv.FieldPos(0)
	r.raw.release(r.csv.InputOffset() + r.bom)
	header := slices.Clone(rec)
	if len(header) >= len(rejectsMarker) && slices.Equal(header[:len(rejectsMarker)], rejectsMarker) {
		r.skip = len(rejectsMarker)
		header = header[r.skip:]
	}
	r.header = header
	cols, keyName, err := mapColumns(header, r.opts.Key)
	if err != nil {
		return &Error{Name: r.name, Line: r.line, Offset: -1, Err: err}
	}
	r.cols, r.keyName = cols, keyName
	return nil
}

// normalize is how column names are compared: trimmed, case-insensitive.
func normalize(name string) string { return strings.ToLower(strings.TrimSpace(name)) }

func mapColumns(header []string, key string) (columns, string, error) {
	cols := columns{key: -1, email: -1, first: -1, last: -1, phone: -1}
	key = normalize(key)
	seen := make(map[string]int, len(header))
	keyName := key
	for i, h := range header {
		name := normalize(h)
		switch {
		case name == "":
			return cols, "", fmt.Errorf("%w: column %d has no name; name it or remove it", ErrBadHeader, i+1)
		case !utf8.ValidString(h):
			return cols, "", fmt.Errorf("%w: column %d name %q is not valid UTF-8; save the export as UTF-8", ErrBadHeader, i+1, h)
		}
		if j, dup := seen[name]; dup {
			return cols, "", fmt.Errorf("%w: %q is both column %d and column %d; names are compared ignoring case and spaces", ErrDuplicateColumn, strings.TrimSpace(h), j+1, i+1)
		}
		seen[name] = i
		if name == key {
			cols.key, keyName = i, strings.TrimSpace(h)
		}
		switch name {
		case "email":
			cols.email = i
		case "first_name":
			cols.first = i
		case "last_name":
			cols.last = i
		case "phone":
			cols.phone = i
		case "id":
			if key != "id" {
				// Another column is the key; keep the export's id as data.
				cols.attrs = append(cols.attrs, attrColumn{i, "id"})
			}
		default:
			if name != key {
				cols.attrs = append(cols.attrs, attrColumn{i, strings.TrimSpace(h)})
			}
		}
	}
	var missing []string
	if cols.key < 0 {
		missing = append(missing, key)
	}
	if cols.email < 0 && key != "email" {
		missing = append(missing, "email")
	}
	if len(missing) > 0 {
		return cols, "", fmt.Errorf("%w: the header has no %s column; the key column (%q) and email are required", ErrMissingColumn, strings.Join(quoteAll(missing), " or "), key)
	}
	return cols, keyName, nil
}

func quoteAll(s []string) []string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return q
}

// Next returns the next row, or io.EOF after the last one. Rows the CRM
// would refuse come back with Problem set; the error is non-nil only for a
// fatal failure (an *Error), after which Next keeps returning it.
func (r *Reader) Next() (Row, error) {
	if r.err != nil {
		return Row{}, r.err
	}
	start := r.csv.InputOffset()
	rec, err := r.csv.Read()
	end := r.csv.InputOffset()
	if err != nil {
		return r.readError(err, start, end)
	}
	r.raw.release(end + r.bom)
	line, _ := r.csv.FieldPos(0)
	r.line = line

	if len(rec) < r.skip {
		rec = rec[len(rec):]
	} else {
		rec = rec[r.skip:]
	}
	row := Row{Line: line, Fields: r.copyFields(rec)}
	if len(rec) != len(r.header) {
		row.Problem = &contact.Problem{Code: CodeFieldCount, Message: fmt.Sprintf("line %d: %d fields, header has %d", line, len(rec), len(r.header))}
		return row, nil
	}
	if limit := r.opts.MaxFieldBytes; limit > 0 {
		for i, f := range rec {
			if len(f) > limit {
				row.Problem = &contact.Problem{Code: CodeFieldTooLarge, Message: fmt.Sprintf("line %d: column %q has %d bytes, at most %d allowed", line, strings.TrimSpace(r.header[i]), len(f), limit)}
				return row, nil
			}
		}
	}
	// The CRM would take a NUL byte, but the ledger could then never record
	// the delivery: refuse the row before it is sent.
	for i, f := range rec {
		if strings.IndexByte(f, 0) >= 0 {
			row.Problem = &contact.Problem{Code: CodeNULByte, Message: fmt.Sprintf("line %d: column %q holds a NUL byte, which PostgreSQL cannot store", line, strings.TrimSpace(r.header[i]))}
			return row, nil
		}
	}
	r.fill(&row)
	if row.Key == "" {
		row.Problem = &contact.Problem{Code: CodeMissingKey, Message: fmt.Sprintf("line %d: key column %q is empty", line, r.keyName)}
		return row, nil
	}
	row.Problem = row.Contact.Validate()
	return row, nil
}

// arenaRows is how many rows' Fields share one allocation.
const arenaRows = 128

// copyFields copies rec, which csv reuses, into a slice the caller owns.
// The strings need no copy: csv allocates them fresh for each record. The
// slices are carved from an arena shared by arenaRows rows, which saves a
// quarter of the hot path's allocations; a kept Row pins at most its
// neighbours' field headers and strings.
func (r *Reader) copyFields(rec []string) []string {
	n := len(rec)
	if n > len(r.arena) {
		r.arena = make([]string, max(n, arenaRows*len(r.header)))
	}
	f := r.arena[:n:n] // full slice expression: appending to f must not reach into the next row
	r.arena = r.arena[n:]
	copy(f, rec)
	return f
}

// fill sets row.Key and row.Contact from row.Fields, which match the header.
func (r *Reader) fill(row *Row) {
	f, cols, c := row.Fields, &r.cols, &row.Contact
	row.Key = strings.TrimSpace(f[cols.key])
	c.ExternalID = row.Key
	if cols.email >= 0 {
		c.Email = strings.TrimSpace(f[cols.email])
	}
	if cols.first >= 0 {
		c.FirstName = strings.TrimSpace(f[cols.first])
	}
	if cols.last >= 0 {
		c.LastName = strings.TrimSpace(f[cols.last])
	}
	if cols.phone >= 0 {
		c.Phone = strings.TrimSpace(f[cols.phone])
	}
	for _, a := range cols.attrs {
		v := strings.TrimSpace(f[a.index])
		if v == "" {
			continue
		}
		if c.Attributes == nil {
			c.Attributes = make(map[string]string, len(cols.attrs))
		}
		c.Attributes[a.name] = v
	}
}

// readError turns an error from csv.Reader.Read into a CodeCSVSyntax row
// (csv resumes at the next line) or a sticky fatal error.
func (r *Reader) readError(err error, start, end int64) (Row, error) {
	var perr *csv.ParseError
	if !errors.As(err, &perr) {
		if err != io.EOF {
			err = r.fail(err)
		}
		r.err = err
		return Row{}, err
	}
	// csv consumed whole lines up to the error; they are this record, so
	// the next Read starts on the following line and loses nothing.
	raw := r.raw.text(start+r.bom, end+r.bom)
	r.raw.release(end + r.bom)
	r.line = perr.StartLine
	return Row{
		Line:    perr.StartLine,
		Fields:  []string{raw},
		Problem: &contact.Problem{Code: CodeCSVSyntax, Message: perr.Error()},
	}, nil
}

// fail wraps a read failure with the file name, the last line read and the
// file offset reached.
func (r *Reader) fail(err error) error {
	if errors.Is(err, ErrRecordTooLarge) {
		err = fmt.Errorf("%w: a record after this line is over %d bytes; look for an unterminated quote, or raise the limit", err, r.opts.MaxRecordBytes)
	} else if r.gz != nil && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader)) {
		err = fmt.Errorf("decompress: %w; the gzip file is truncated or corrupt", err)
	}
	return &Error{Name: r.name, Line: r.line, Offset: r.Offset(), Err: err}
}

// Header returns the export's columns as in the file, with the BOM
// stripped. For a rejects file, the marker columns are left out, so the
// header is the original export's and matches Row.Fields.
func (r *Reader) Header() []string { return slices.Clone(r.header) }

// IsRejects reports whether the file is a rejects file written by
// RejectsWriter, whose marker columns the Reader drops. Row.Line is then the
// line in the rejects file; the original line is in the dropped column.
func (r *Reader) IsRejects() bool { return r.skip > 0 }

// Offset returns how many bytes of the underlying file (compressed, for
// gzip) have been read so far, for progress against Size. Read-ahead makes
// it run up to a buffer ahead of the rows returned.
func (r *Reader) Offset() int64 { return r.counted.n.Load() }

// Size returns the file's size in bytes, or -1 if unknown.
func (r *Reader) Size() int64 { return r.size }

// Name returns the file's name, as given to Open or NewReader.
func (r *Reader) Name() string { return r.name }

// Close releases the Reader and closes the file Open opened.
func (r *Reader) Close() error {
	var err error
	if r.gz != nil {
		err = r.gz.Close()
	}
	if r.closer != nil {
		if cerr := r.closer.Close(); err == nil {
			err = cerr
		}
		r.closer = nil
	}
	if r.err == nil {
		r.err = &Error{Name: r.name, Offset: -1, Err: os.ErrClosed}
	}
	return err
}

func validDelim(r rune) bool {
	return r != 0 && r != '"' && r != '\r' && r != '\n' && utf8.ValidRune(r) && r != utf8.RuneError
}

// countingReader counts the bytes read from the file, for Offset.
type countingReader struct {
	r io.Reader
	n atomic.Int64 // atomic: Offset may be called from a progress goroutine
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// recorder sits below csv's buffer and keeps a copy of the decoded stream
// from the start of the record being parsed, so that a record csv refuses
// can be handed back verbatim. It also bounds the size of a record, which
// csv does not.
type recorder struct {
	src   io.Reader
	buf   []byte // stream bytes from offset off onwards
	off   int64
	start int   // bytes of buf already released
	limit int   // most bytes kept for one record; <= 0 means no limit
	err   error // sticky, so csv sees a failure on every read after it
}

func (rc *recorder) Read(p []byte) (int, error) {
	if rc.err != nil {
		return 0, rc.err
	}
	if rc.start > 0 {
		// Compact only here, once per buffer refill, not once per record.
		kept := len(rc.buf) - rc.start
		if cap(rc.buf) > 4*bufSize && kept < bufSize {
			rc.buf = append(make([]byte, 0, 2*bufSize), rc.buf[rc.start:]...)
		} else {
			copy(rc.buf, rc.buf[rc.start:])
			rc.buf = rc.buf[:kept]
		}
		rc.off += int64(rc.start)
		rc.start = 0
	}
	if rc.limit > 0 && len(rc.buf) > rc.limit {
		rc.err = ErrRecordTooLarge
		return 0, rc.err
	}
	n, err := rc.src.Read(p)
	rc.buf = append(rc.buf, p[:n]...)
	if err != nil {
		rc.err = err
	}
	return n, err
}

// release forgets the stream before offset off: records already returned.
func (rc *recorder) release(off int64) {
	rc.start = int(off - rc.off)
}

// text returns the record at stream offsets [from, to) without the blank
// lines csv skipped before it and the line break after it. "\r\n" becomes
// "\n", as encoding/csv itself does inside quoted fields, so the text
// survives a trip through a rejects file unchanged.
func (rc *recorder) text(from, to int64) string {
	b := rc.buf[from-rc.off : to-rc.off]
	for len(b) > 0 && (b[0] == '\n' || b[0] == '\r' && len(b) > 1 && b[1] == '\n') {
		if b[0] == '\r' {
			b = b[1:]
		}
		b = b[1:]
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r")) // csv drops a "\r" before EOF, or of "\r\n"
	return strings.ReplaceAll(string(b), "\r\n", "\n")
}
