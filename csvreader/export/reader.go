// Package export reads customer export files (CSV, optionally gzipped) as a
// stream of validated rows, and writes the rejects file that keeps the rows
// the CRM would refuse.
//
// A Reader holds one record at a time plus fixed read buffers, so exports far
// larger than memory stream through it. Rows are validated with
// contact.Validate, so the Reader rejects exactly what the CRM would, and
// with what PostgreSQL could not store. A bad row is not an error: it comes
// back with Row.Problem set, and only an unusable file (not in its
// encoding, bad header, a header repeated in another order), I/O and
// decompression failures stop the stream.
//
// Columns map to the contact's fields by a mapping file (Options.Mapping),
// else by their exact name, else by a built-in alias ("Email Address"),
// and the rest go to the attributes (columns.go, mapping.go,
// docs/mapping.md). Values are handed on verbatim: only the key and the
// email are trimmed (and column names, to match them), unless a mapping or
// Options.PhoneRegion normalises them (phone.go: E.164). The CSV dialect is in parse.go; the
// text encodings in charset.go. A record that is not valid CSV (text after a
// closing quote, a quote never closed) comes back as a CodeCSVSyntax row
// whose single field is the record's raw text, and reading resumes on the
// next line. A quoted field that swallows lines looking like records of
// their own comes back as CodeRunawayQuote, with the lines in Row.Suspect.
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
	"compress/gzip"
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
	CodeRunawayQuote  = "runaway_quote"   // a quoted field spans lines that look like records (Row.Suspect)

	CodeMissingRequired = "missing_required" // a column the mapping file marks "required" is empty
	CodeInvalidPhone    = "invalid_phone"    // a phone number to normalise to E.164 is not one (see E164)
)

// DefaultMaxRecordBytes is the record size limit when Options.MaxRecordBytes
// is 0. Contacts are small; a record this large is almost always an
// unterminated quote swallowing the rest of the file.
const DefaultMaxRecordBytes = 16 << 20

// DefaultMaxColumns is the column limit when Options.MaxColumns is 0: far
// more than any CRM export has, and it bounds what one header can cost.
const DefaultMaxColumns = 2000

// bufSize is the size of each read buffer: large reads keep syscalls and
// gzip refills rare on multi-gigabyte files.
const bufSize = 256 << 10

// extraFields is how many fields beyond the header's a record keeps as
// fields; a record with more comes back whole as its raw text
// (CodeFieldCount), so a line of commas costs no more than its bytes.
const extraFields = 64

// Sentinel errors, wrapped in an *Error.
var (
	ErrNoHeader        = errors.New("no header line")
	ErrMissingColumn   = errors.New("missing required column")
	ErrDuplicateColumn = errors.New("duplicate column")
	ErrBadHeader       = errors.New("bad header")
	ErrBadDelimiter    = errors.New("invalid delimiter")
	ErrTooManyColumns  = errors.New("too many columns")
	ErrRepeatedHeader  = errors.New("header repeated in another order")
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

// Options configure a Reader. The zero value reads a UTF-8 export keyed by
// its "id" column, comma-separated unless its first line is "sep=X", with
// no field size limit.
type Options struct {
	// Delimiter is the field delimiter. 0 means ',', or the one a first
	// line "sep=X" (as Excel writes) names; a different one given here and
	// in the file is an error.
	Delimiter rune

	// Key is the column holding the dedup key; "" means the mapping file's
	// "key", else an "id" column, else a column with an alias of it
	// ("Record ID", "Customer ID": see docs/mapping.md). Its trimmed value
	// becomes the contact's ExternalID.
	Key string

	// Mapping, if set, says which column feeds which field and what is
	// done to its values (see LoadMapping and docs/mapping.md). Columns it
	// does not name map by their exact name, then by a built-in alias
	// ("Email Address", "First Name"), the others to the attributes. A
	// mapping that does not fit the header is an error from NewReader,
	// a *Error wrapping a *MappingError.
	Mapping *Mapping

	// PhoneRegion is the ISO 3166 alpha-2 region ("GB", "US") of phone
	// numbers written without a country code. When set, the phone field is
	// normalised to E.164 unless the mapping says how to normalise it; a
	// number that is not one makes the row invalid (CodeInvalidPhone).
	// See ParsePhoneRegion for the regions known.
	PhoneRegion string

	// Encoding is the file's text encoding (see ParseEncoding); "" means
	// UTF-8. A BOM decides by itself. A file that is not in it is refused
	// before any row, naming the likely encoding.
	Encoding string

	// MaxFieldBytes is the longest field accepted; a longer one makes the
	// row invalid (CodeFieldTooLarge). 0 means no limit.
	MaxFieldBytes int

	// MaxRecordBytes bounds the memory one record may take: a longer record
	// is a fatal error, since the Reader cannot tell where it ends. 0 means
	// DefaultMaxRecordBytes; negative means no limit.
	MaxRecordBytes int

	// MaxColumns is the most columns a header may have; 0 means
	// DefaultMaxColumns.
	MaxColumns int

	// Drop names columns (compared as column names are: trimmed, ignoring
	// case; by the column's name, not its attribute's) whose values are not sent: an operator's explicit choice for
	// columns the CRM has no field for. Naming a column the header lacks
	// is an error.
	Drop []string

	// TrustQuotes delivers a row whose quoted field spans lines that look
	// like records (still reported to Notify and in Row.Suspect) instead of
	// rejecting it as CodeRunawayQuote.
	TrustQuotes bool

	// Notify, if set, is told what the Reader did that the caller should
	// know of: a header repeated and skipped, a runaway quote, unnamed
	// columns dropped, a column that looks like a contact field but goes to
	// the attributes. It is called from Next (or NewReader), synchronously.
	Notify func(Notice)
}

// Notice is something the Reader did on its own, for the log.
type Notice struct {
	File    string // the file's name, as given to Open or NewReader
	Line    int
	Code    string // NoticeRepeatedHeader, ...
	Message string // says what happened and what to do
}

// Notice codes.
const (
	NoticeRepeatedHeader = "repeated_header"
	NoticeRunawayQuote   = "runaway_quote"
	NoticeUnnamedColumns = "unnamed_columns"
	NoticeColumnAlias    = "column_alias"
	NoticeSepLine        = "sep_line"
	NoticeEncoding       = "encoding"
)

// Stats counts the lines the Reader skipped that were not records.
type Stats struct {
	BlankRows       int64 // rows of empty fields only (",,,"); empty lines are not counted
	RepeatedHeaders int64 // header lines repeated in the same order, skipped
}

// Row is one record of the export.
type Row struct {
	Line int // line where the record starts (1 is the first line of the file)

	// Fields are the record's fields, verbatim; the caller owns the slice.
	// Empty fields past the header's last column are dropped. For
	// CodeCSVSyntax (and a CodeFieldCount record with far too many fields)
	// it is a single field holding the record's raw text, line breaks as in
	// the file, because such a record cannot be split into fields reliably.
	Fields []string

	Key string // trimmed key value; "" for CodeCSVSyntax and CodeFieldCount

	// Contact is filled from the fields (all but CodeCSVSyntax and
	// CodeFieldCount rows): ExternalID is Key, Email the trimmed email, the
	// other known columns their values as they are (or as the mapping
	// normalises them), and every other column an attribute (an empty
	// value only when quoted: "", or when its mapping says "empty":
	// "clear").
	Contact contact.Contact

	// Suspect lists the lines inside a quoted field of this record that
	// look like records of their own: a quote probably left open.
	Suspect []int

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
	p       *parser
	enc     string
	delim   rune

	header   []string // the export's named columns (rejects markers and unnamed trailing columns dropped)
	trimmed  []string // header names trimmed, for spotting the header repeated
	skip     int      // leading columns to drop from every record: len(rejectsMarker) for a rejects file
	trailing int      // unnamed columns dropped from the end of the header
	cols     columns
	keyName  string // the key column as named in the header, for messages
	clears   map[string]bool

	arena     []string       // see copyFields
	attrArena []contact.Attr // see fill
	stats     Stats

	line int   // line of the last record returned
	err  error // sticky: io.EOF or the fatal *Error
}

// columns maps header positions to contact fields; -1 when absent.
type columns struct {
	key, email, first, last, phone int
	attrs                          []attrColumn // in the header's order
	attrsByName                    []attrColumn // attrs sorted by name: the order of contact.Attrs
	rules                          []*fieldRule // nil unless a value needs more than fill's fast path
	desc                           []ColumnMapping
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
// (-1 if unknown). It checks the encoding, reads and maps the header before
// it returns. Close does not close rd.
func NewReader(rd io.Reader, name string, size int64, opts Options) (*Reader, error) {
	if opts.Delimiter != 0 && !validDelim(opts.Delimiter) {
		return nil, &Error{Name: name, Offset: -1, Err: fmt.Errorf("%w %q: use a single character other than a quote or line break", ErrBadDelimiter, opts.Delimiter)}
	}
	region, err := ParsePhoneRegion(opts.PhoneRegion)
	if err != nil {
		return nil, &Error{Name: name, Offset: -1, Err: fmt.Errorf("-phone-region: %w", err)}
	}
	opts.PhoneRegion = region
	if opts.MaxRecordBytes == 0 {
		opts.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if opts.MaxColumns <= 0 {
		opts.MaxColumns = DefaultMaxColumns
	}
	enc, err := ParseEncoding(opts.Encoding)
	if err != nil {
		return nil, &Error{Name: name, Offset: -1, Err: err}
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
	text, enc, err := textReader(decoded, enc, name, r.gz != nil)
	if err != nil {
		r.closeGzip()
		var ee *encodingError
		if errors.As(err, &ee) {
			return nil, &Error{Name: name, Line: ee.line, Offset: -1, Err: ee}
		}
		if errors.Is(err, ErrEncoding) {
			return nil, &Error{Name: name, Offset: -1, Err: err}
		}
		return nil, r.fail(err)
	}
	r.enc = enc
	if enc != EncodingUTF8 {
		r.notify(0, NoticeEncoding, fmt.Sprintf("decoding the file from %s", strings.ToUpper(enc)))
	}
	r.p = newParser(text, ',', opts.MaxRecordBytes, opts.MaxColumns+1)
	if err := r.readDelimiter(); err != nil {
		r.closeGzip()
		return nil, err
	}
	if err := r.readHeader(); err != nil {
		r.closeGzip()
		return nil, err
	}
	return r, nil
}

func (r *Reader) closeGzip() {
	if r.gz != nil {
		r.gz.Close()
	}
}

func (r *Reader) notify(line int, code, msg string) {
	if r.opts.Notify != nil {
		r.opts.Notify(Notice{File: r.name, Line: line, Code: code, Message: msg})
	}
}

// readDelimiter honours a first line "sep=X", Excel's way of naming the
// delimiter, and settles the delimiter.
func (r *Reader) readDelimiter() error {
	r.delim = r.opts.Delimiter
	line, eol, err := r.p.lr.next()
	if err != nil && err != io.EOF {
		return r.fail(r.p.lineErr(err, 1, 0))
	}
	sep, ok := strings.CutPrefix(string(line), "sep=")
	if d, size := utf8.DecodeRuneInString(sep); !ok || size == 0 || size != len(sep) || !validDelim(d) {
		if err == nil {
			r.p.lr.pos -= len(line) + len(eol) // not a sep line: read it again as the header
		}
		if r.delim == 0 {
			r.delim = ','
		}
		r.p.delim = utf8.AppendRune(nil, r.delim)
		return nil
	} else if r.delim != 0 && r.delim != d {
		return &Error{Name: r.name, Line: 1, Offset: -1, Err: fmt.Errorf("%w: the first line says %q but -delimiter %q was given; drop -delimiter or the sep line", ErrBadDelimiter, line, r.delim)}
	} else {
		r.delim = d
	}
	r.p.line = 1
	r.p.delim = utf8.AppendRune(nil, r.delim)
	r.notify(1, NoticeSepLine, fmt.Sprintf("line 1 %q sets the delimiter", line))
	return nil
}

func (r *Reader) readHeader() error {
	rec, err := r.p.read()
	switch {
	case err == io.EOF:
		return &Error{Name: r.name, Offset: -1, Err: fmt.Errorf("%w: the file is empty; an export starts with a header naming its columns", ErrNoHeader)}
	case err != nil:
		return r.fail(err)
	case rec.syntax != "":
		return &Error{Name: r.name, Line: rec.line, Offset: -1, Err: fmt.Errorf("%w: %s", ErrBadHeader, rec.syntax)}
	case rec.count > r.opts.MaxColumns:
		return &Error{Name: r.name, Line: rec.line, Offset: -1, Err: fmt.Errorf("%w: the header has more than %d columns; an export of contacts has far fewer, so this is probably not one", ErrTooManyColumns, r.opts.MaxColumns)}
	}
	r.line = rec.line
	header := slices.Clone(rec.fields)
	if len(header) >= len(rejectsMarker) && slices.Equal(header[:len(rejectsMarker)], rejectsMarker) {
		r.skip = len(rejectsMarker)
		header = header[r.skip:]
	}
	// Excel keeps formatted but empty columns: an unnamed last column or
	// two, whose values are checked to be empty in Next.
	for len(header) > 1 && strings.TrimSpace(header[len(header)-1]) == "" {
		header = header[:len(header)-1]
		r.trailing++
	}
	if r.trailing > 0 {
		r.notify(r.line, NoticeUnnamedColumns, fmt.Sprintf("the header ends with %d unnamed column(s); their values must be empty and are ignored", r.trailing))
	}
	r.header = header
	cols, keyName, notices, err := mapColumns(header, r.opts.Key, &r.opts, r.delim)
	if err != nil {
		return &Error{Name: r.name, Line: r.line, Offset: -1, Err: err}
	}
	r.cols, r.keyName = cols, keyName
	for _, ru := range cols.rules {
		if ru.clear {
			if r.clears == nil {
				r.clears = map[string]bool{}
			}
			r.clears[ru.field] = true
		}
	}
	r.trimmed = make([]string, len(header))
	for i, h := range header {
		r.trimmed[i] = strings.TrimSpace(h)
	}
	for _, m := range append(notices, aliasNotices(header, cols)...) {
		r.notify(r.line, NoticeColumnAlias, m)
	}
	r.p.header = len(header)
	r.p.maxFields = r.skip + len(header) + r.trailing + extraFields
	return nil
}

// normalize is how column names are compared: trimmed, case-insensitive.
func normalize(name string) string { return strings.ToLower(strings.TrimSpace(name)) }

// Next returns the next row, or io.EOF after the last one. Rows the CRM
// would refuse come back with Problem set; the error is non-nil only for a
// fatal failure (an *Error), after which Next keeps returning it.
func (r *Reader) Next() (Row, error) {
	for r.err == nil {
		rec, err := r.p.read()
		if err != nil {
			if err != io.EOF {
				err = r.fail(err)
			}
			r.err = err
			break
		}
		r.line = rec.line
		if row, ok := r.row(rec); ok {
			return row, nil
		}
	}
	return Row{}, r.err
}

// row turns a record into a Row; false when it is no row (blank, the header
// again) or a fatal error was set.
func (r *Reader) row(rec *record) (Row, bool) {
	line := rec.line
	var suspect []int
	if len(rec.suspect) > 0 {
		suspect = slices.Clone(rec.suspect)
		r.notify(line, NoticeRunawayQuote, fmt.Sprintf("line %d: %s", line, runawayMessage(rec, r.fieldName(rec.quoteCol-1-r.skip))))
	}
	if rec.syntax != "" {
		msg := rec.syntax
		if len(suspect) > 0 {
			msg += "; " + runawayMessage(rec, r.fieldName(rec.quoteCol-1-r.skip))
		}
		return Row{Line: line, Fields: []string{string(rec.raw)}, Suspect: suspect,
			Problem: &contact.Problem{Code: CodeCSVSyntax, Message: msg}}, true
	}
	if rec.count > len(rec.fields) {
		return Row{Line: line, Fields: []string{string(rec.raw)}, Suspect: suspect,
			Problem: &contact.Problem{Code: CodeFieldCount, Message: fmt.Sprintf("line %d: %d fields, header has %d; the row is kept as its raw text", line, rec.count-r.skip, len(r.header))}}, true
	}
	fields, quoted := rec.fields, rec.quoted
	if len(fields) < r.skip {
		fields, quoted = fields[len(fields):], quoted[len(quoted):]
	} else {
		fields, quoted = fields[r.skip:], quoted[r.skip:]
	}
	if allEmpty(fields) && r.skip == 0 {
		r.stats.BlankRows++ // ",,,": what a spreadsheet saves for an empty row
		return Row{}, false
	}
	if r.isHeader(fields) {
		r.stats.RepeatedHeaders++
		r.notify(line, NoticeRepeatedHeader, fmt.Sprintf("line %d repeats the header (two exports concatenated?); skipped", line))
		return Row{}, false
	}
	extra := 0 // empty fields past the header's last column, dropped
	if len(fields) > len(r.header) && allEmpty(fields[len(r.header):]) {
		extra = len(fields) - len(r.header)
	}
	row := Row{Line: line, Fields: r.copyFields(fields[:len(fields)-extra]), Suspect: suspect}
	if len(suspect) > 0 && !r.opts.TrustQuotes {
		row.Problem = &contact.Problem{Code: CodeRunawayQuote, Message: fmt.Sprintf("line %d: %s", line, runawayMessage(rec, r.fieldName(rec.quoteCol-1-r.skip)))}
		return row, true
	}
	if n := len(row.Fields); n != len(r.header) {
		msg := fmt.Sprintf("line %d: %d fields, header has %d", line, n, len(r.header))
		if n > len(r.header) {
			for i := len(r.header); i < n; i++ {
				if row.Fields[i] != "" {
					msg += fmt.Sprintf("; column %d has no name in the header but holds %q", i+1, abbrev(row.Fields[i]))
					break
				}
			}
		}
		row.Problem = &contact.Problem{Code: CodeFieldCount, Message: msg}
		return row, true
	}
	if p := r.check(line, row.Fields); p != nil {
		if p.Code == contact.CodeInvalidUTF8 && r.enc == EncodingUTF8 {
			// Past the part checked up front: stop rather than import the
			// rest of a file in another encoding as rejects, and exit 0.
			r.err = &Error{Name: r.name, Line: line, Offset: -1, Err: fmt.Errorf("%w: %s", ErrEncoding, p.Message)}
			return Row{}, false
		}
		row.Problem = p
		return row, true
	}
	r.fill(&row, quoted)
	var p *contact.Problem
	if r.cols.rules != nil {
		p = r.applyRules(&row, quoted)
	}
	switch {
	case row.Key == "":
		row.Problem = &contact.Problem{Code: CodeMissingKey, Message: fmt.Sprintf("line %d: key column %q is empty", line, r.keyName)}
	case p != nil:
		row.Problem = p
	case r.cols.rules == nil:
		// fill took every string whole (or trimmed) from fields check
		// found valid UTF-8, and attribute names from the checked header.
		row.Problem = row.Contact.ValidateChecked()
	default:
		row.Problem = row.Contact.Validate()
	}
	if row.Problem != nil && r.isPermutedHeader(row.Fields) {
		r.err = &Error{Name: r.name, Line: line, Offset: -1, Err: fmt.Errorf("%w: line %d holds the header's column names in another order (%s): two exports were probably concatenated, and the rows after it would land under the wrong columns. Split the file at line %d and import each part on its own",
			ErrRepeatedHeader, line, strings.Join(quoteAll(trimAll(row.Fields)), ","), line)}
		return Row{}, false
	}
	return row, true
}

// check applies the limits the CRM and PostgreSQL put on every field.
func (r *Reader) check(line int, fields []string) *contact.Problem {
	if limit := r.opts.MaxFieldBytes; limit > 0 {
		for i, f := range fields {
			if len(f) > limit {
				return &contact.Problem{Code: CodeFieldTooLarge, Message: fmt.Sprintf("line %d: column %q has %d bytes, at most %d allowed", line, r.fieldName(i), len(f), limit)}
			}
		}
	}
	for i, f := range fields {
		// The CRM would take a NUL byte, but the ledger could then never
		// record the delivery: refuse the row before it is sent.
		if strings.IndexByte(f, 0) >= 0 {
			return &contact.Problem{Code: CodeNULByte, Message: fmt.Sprintf("line %d: column %q holds a NUL byte, which PostgreSQL cannot store", line, r.fieldName(i))}
		}
		if !utf8.ValidString(f) {
			return &contact.Problem{Code: contact.CodeInvalidUTF8, Message: r.utf8Message(line, i, f)}
		}
	}
	return nil
}

func (r *Reader) utf8Message(line, i int, f string) string {
	j := 0
	for j < len(f) {
		c, size := utf8.DecodeRuneInString(f[j:])
		if c == utf8.RuneError && size <= 1 {
			break
		}
		j += size
	}
	if r.enc != EncodingUTF8 {
		// Decoded text: the decoder marked what it could not decode.
		return fmt.Sprintf("line %d: column %q holds text that is not valid %s (an unpaired surrogate or a stray byte)", line, r.fieldName(i), strings.ToUpper(r.enc))
	}
	checked := fmt.Sprintf("%d bytes", sniffSize)
	if sniffSize >= 1<<20 {
		checked = fmt.Sprintf("%d MiB", sniffSize>>20)
	}
	return fmt.Sprintf("the file is not UTF-8 from line %d on, past the first %s checked up front: column %q holds byte 0x%02X (%q in windows-1252). The rows before it were read as UTF-8. If the file is windows-1252, rerun with -encoding windows-1252 (rows already delivered are skipped); if the byte is corrupt, fix it and rerun",
		line, checked, r.fieldName(i), f[j], string(win1252[f[j]-0x80]))
}

func (r *Reader) fieldName(i int) string {
	if i >= 0 && i < len(r.trimmed) {
		return r.trimmed[i]
	}
	if i >= 0 && i < len(r.header) {
		return strings.TrimSpace(r.header[i])
	}
	return fmt.Sprintf("#%d", i+1)
}

// isHeader reports whether fields repeat the header's names in order,
// followed by nothing but empty fields.
func (r *Reader) isHeader(fields []string) bool {
	if len(fields) < len(r.header) || len(r.trimmed) == 0 || !strings.EqualFold(strings.TrimSpace(fields[0]), r.trimmed[0]) {
		return false
	}
	for i, name := range r.trimmed {
		if !strings.EqualFold(strings.TrimSpace(fields[i]), name) {
			return false
		}
	}
	return allEmpty(fields[len(r.header):])
}

// isPermutedHeader reports whether fields are the header's names in another
// order. Only rows that failed validation are checked: a header under the
// wrong columns puts a column name where the email should be.
func (r *Reader) isPermutedHeader(fields []string) bool {
	if len(fields) != len(r.header) || len(fields) < 2 {
		return false
	}
	want := make(map[string]int, len(r.header))
	for _, h := range r.header {
		want[normalize(h)]++
	}
	for _, f := range fields {
		n := normalize(f)
		if want[n] == 0 {
			return false
		}
		want[n]--
	}
	return true
}

func runawayMessage(rec *record, column string) string {
	lines := rec.suspect
	more := ""
	if len(lines) > 5 {
		lines, more = lines[:5], fmt.Sprintf(" and %d more", len(rec.suspect)-5)
	}
	list := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(lines)), ", "), "[]")
	return fmt.Sprintf("the quoted field %q opened on line %d runs to line %d, and line(s) %s%s inside it look like rows of their own: a closing quote is probably missing, so those rows would be lost inside this one",
		column, rec.quoteLine, rec.lastLine, list, more)
}

func allEmpty(fields []string) bool {
	for _, f := range fields {
		if f != "" {
			return false
		}
	}
	return true
}

func trimAll(s []string) []string {
	t := make([]string, len(s))
	for i, v := range s {
		t[i] = strings.TrimSpace(v)
	}
	return t
}

func quoteAll(s []string) []string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return q
}

// abbrev shortens a value quoted in a message.
func abbrev(s string) string {
	if len(s) <= 40 {
		return s
	}
	i := 40
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// arenaRows is how many rows' Fields share one allocation.
const arenaRows = 128

// copyFields copies rec, which the parser reuses, into a slice the caller
// owns. The strings need no copy: the parser allocates them fresh for each
// record. The slices are carved from an arena shared by arenaRows rows of
// this width, which saves a quarter of the hot path's allocations; a kept
// Row pins at most its neighbours' field headers and strings. The arena is
// sized by the rows, not the header, so a wide header with short rows
// costs no more than the rows.
func (r *Reader) copyFields(rec []string) []string {
	n := len(rec)
	if n > len(r.arena) {
		r.arena = make([]string, arenaRows*n)
	}
	f := r.arena[:n:n] // full slice expression: appending to f must not reach into the next row
	r.arena = r.arena[n:]
	copy(f, rec)
	return f
}

// fill sets row.Key and row.Contact from row.Fields, which match the header.
// Only the key and the email are trimmed: the key because a stray space must
// not make a second customer, the email because an address cannot hold one.
// Every other value goes on as it is. As in PostgreSQL's CSV, an empty
// unquoted value is no value (no attribute), while a quoted "" is an empty
// one (an attribute holding ""): that keeps a sparse export's attributes,
// and the memory they take, to what the file holds.
func (r *Reader) fill(row *Row, quoted []bool) {
	f, cols, c := row.Fields, &r.cols, &row.Contact
	row.Key = strings.TrimSpace(f[cols.key])
	c.ExternalID = row.Key
	if cols.email >= 0 {
		c.Email = strings.TrimSpace(f[cols.email])
	}
	if cols.first >= 0 {
		c.FirstName = f[cols.first]
	}
	if cols.last >= 0 {
		c.LastName = f[cols.last]
	}
	if cols.phone >= 0 {
		c.Phone = f[cols.phone]
	}
	n := 0
	for _, a := range cols.attrs {
		if f[a.index] != "" || quoted[a.index] {
			n++
		}
	}
	if n == 0 {
		return
	}
	// Carved from an arena shared by arenaRows rows, as copyFields does,
	// and sized by the values, never by the header.
	if n > len(r.attrArena) {
		r.attrArena = make([]contact.Attr, arenaRows*n)
	}
	attrs := r.attrArena[:0:n] // full slice expression: a Set must not reach into the next row
	r.attrArena = r.attrArena[n:]
	for _, a := range cols.attrsByName {
		if v := f[a.index]; v != "" || quoted[a.index] {
			attrs = append(attrs, contact.Attr{Name: a.name, Value: v})
		}
	}
	c.Attributes = attrs
}

// applyRules applies the rules of the columns that have some (a mapping's
// normalisation, "required" and "empty": "clear"; -phone-region) over what
// fill set, from the raw fields, and returns the first problem found.
func (r *Reader) applyRules(row *Row, quoted []bool) *contact.Problem {
	cols, c := &r.cols, &row.Contact
	var problem *contact.Problem
	for _, ru := range cols.rules {
		v := row.Fields[ru.index]
		if ru.index == cols.key || ru.index == cols.email {
			v = strings.TrimSpace(v)
		}
		for _, n := range ru.norm {
			switch n {
			case NormTrim:
				v = strings.TrimSpace(v)
			case NormLower:
				v = strings.ToLower(v)
			case NormCollapse:
				v = collapseSpace(v)
			case NormE164:
				p, err := E164(v, ru.region)
				if err == nil {
					v = p
				} else if problem == nil { // the raw value stays, for the log
					region := ru.region
					if region == "" {
						region = "none given"
					}
					problem = &contact.Problem{Code: CodeInvalidPhone, Message: fmt.Sprintf("line %d: column %q (%s): %q is not a phone number of region %s: %v", row.Line, ru.column, ru.field, abbrev(v), region, err)}
				}
			}
		}
		if ru.required && v == "" && problem == nil {
			problem = &contact.Problem{Code: CodeMissingRequired, Message: fmt.Sprintf("line %d: column %q (%s) is empty, and the mapping file requires it", row.Line, ru.column, ru.field)}
		}
		switch ru.index {
		case cols.key:
			row.Key, c.ExternalID = v, v
			if cols.email == ru.index {
				c.Email = v
			}
		case cols.email:
			c.Email = v
		case cols.first:
			c.FirstName = v
		case cols.last:
			c.LastName = v
		case cols.phone:
			c.Phone = v
		default:
			// Present as fill has it (a value, or a quoted ""), and always
			// when an empty one clears: Merge needs the "" to clear.
			if v != "" || quoted[ru.index] || ru.clear {
				c.Attributes.Set(ru.attr, v)
			} else {
				c.Attributes.Delete(ru.attr)
			}
		}
	}
	return problem
}

// collapseSpace trims s and turns each run of white space in it into one
// space.
func collapseSpace(s string) string {
	s = strings.TrimSpace(s)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c == ' ' && i+1 < len(s) && s[i+1] == ' ') || c >= utf8.RuneSelf {
			return strings.Join(strings.Fields(s), " ")
		}
	}
	return s
}

// fail wraps a read failure with the file name, the last line read and the
// file offset reached.
func (r *Reader) fail(err error) error {
	if r.gz != nil && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader)) {
		err = fmt.Errorf("decompress: %w; the gzip file is truncated or corrupt", err)
	}
	return &Error{Name: r.name, Line: r.line, Offset: r.Offset(), Err: err}
}

// Header returns the export's columns as in the file, with the BOM
// stripped. For a rejects file, the marker columns are left out, and so are
// unnamed columns at the end, so the header matches Row.Fields.
func (r *Reader) Header() []string { return slices.Clone(r.header) }

// AttributeColumns names the columns that go to the contact's attributes,
// as they are sent (trimmed): the CRM must have a field of each name.
func (r *Reader) AttributeColumns() []string {
	out := make([]string, len(r.cols.attrs))
	for i, a := range r.cols.attrs {
		out[i] = a.name
	}
	return out
}

// Clears reports whether an empty value of the field name (a name of
// contact.Fields, or "attributes.NAME") clears the CRM's value, as the
// mapping's "empty": "clear" says; otherwise an empty value leaves it. It
// fits contact.Merge's clear.
func (r *Reader) Clears(name string) bool { return r.clears[name] }

// Mapping describes where each column of the header goes (every column,
// those not sent too, in header order) and what is done to its values: for
// -dry-run.
func (r *Reader) Mapping() []ColumnMapping { return slices.Clone(r.cols.desc) }

// IsRejects reports whether the file is a rejects file written by
// RejectsWriter, whose marker columns the Reader drops. Row.Line is then the
// line in the rejects file; the original line is in the dropped column.
func (r *Reader) IsRejects() bool { return r.skip > 0 }

// Offset returns how many bytes of the underlying file (compressed, for
// gzip) have been read so far, for progress against Size. Read-ahead makes
// it run up to a buffer ahead of the rows returned.
func (r *Reader) Offset() int64 { return r.counted.n.Load() }

// Delimiter returns the field delimiter: the one given, or the file's
// "sep=" line's, or ','.
func (r *Reader) Delimiter() rune { return r.delim }

// Encoding returns the text encoding the file is read in (see
// ParseEncoding).
func (r *Reader) Encoding() string { return r.enc }

// Stats returns the counts of lines skipped so far that were not rows.
func (r *Reader) Stats() Stats { return r.stats }

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
