package export

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// The CSV parser. encoding/csv cannot do what real exports need: it turns
// "\r\n" inside a quoted field into "\n", knows no CR-only line endings,
// refuses a space before an opening quote, and cannot say which lines a
// quoted field swallowed. This one reads RFC 4180 with these rules:
//
//   - Lines end with "\n" or "\r\n". When the first line break of the file
//     is a lone "\r" (classic Mac, some Excel saves), a lone "\r" ends lines
//     too; otherwise a lone "\r" is data.
//   - A quoted field keeps every byte between its quotes ("" is one quote),
//     line breaks included as they are in the file.
//   - Spaces (and tabs, unless tab is the delimiter) before an opening quote
//     and after a closing quote are dropped: `a, "b" ,c` is a, b, c.
//   - A quote inside an unquoted field is data: 12" pizza is 12" pizza.
//   - Text after a closing quote (`"a"b`) is a syntax error: the record is
//     handed back as its raw text, and reading resumes on the next line.
//   - An empty line is no record.

// lineReader splits text into lines. The slices it returns are valid until
// its next call.
type lineReader struct {
	src   io.Reader
	buf   []byte
	pos   int   // start of the unread bytes in buf
	end   int   // end of the bytes read into buf
	err   error // from src, once buf is drained
	crEOL bool  // a lone '\r' ends a line: the first line break was one
	known bool  // the line ending style is decided
	limit int   // longest line held; <= 0 means no limit
}

var errLineTooLong = errors.New("line too long")

// Line breaks, as next returns them: never slices of the buffer, so they
// outlive the next read.
var (
	eolLF   = []byte("\n")
	eolCR   = []byte("\r")
	eolCRLF = []byte("\r\n")
)

// next returns the next line, without its line break, and the line break
// ("\n", "\r\n", "\r", or "" for a last line without one).
func (lr *lineReader) next() (line, eol []byte, err error) {
	scanned := 0 // bytes of buf[pos:end] known to hold no line break
	for {
		seg := lr.buf[lr.pos:lr.end]
		if i, n := lr.lineEnd(seg, scanned); i >= 0 {
			line, eol = seg[:i], eolCRLF
			if n == 1 {
				eol = eolLF
				if seg[i] == '\r' {
					eol = eolCR
				}
			}
			lr.pos += i + n
			return line, eol, nil
		} else if n < 0 && lr.err == nil {
			// "\r" at the end of what is buffered: is a "\n" next?
			scanned = len(seg) - 1
		} else {
			scanned = len(seg)
		}
		if lr.err != nil {
			if len(seg) == 0 {
				return nil, nil, lr.err
			}
			lr.pos = lr.end
			return seg, nil, nil
		}
		if err := lr.fill(); err != nil {
			return nil, nil, err
		}
	}
}

// lineEnd finds the first line break in seg at or after from: its index
// and length. It returns -1, -1 when seg ends in a "\r" that may start a
// "\r\n", and -1, 0 when there is none.
func (lr *lineReader) lineEnd(seg []byte, from int) (int, int) {
	if lr.known && lr.crEOL {
		// Find the "\r" first: a CR-only file may hold no "\n" at all, and
		// looking for one would scan the whole buffer for every line.
		cr := bytes.IndexByte(seg[from:], '\r')
		upto := seg[from:]
		if cr >= 0 {
			cr += from
			upto = seg[from:cr]
		}
		if lf := bytes.IndexByte(upto, '\n'); lf >= 0 {
			return from + lf, 1
		}
		switch {
		case cr < 0:
			return -1, 0
		case cr+1 < len(seg) && seg[cr+1] == '\n':
			return cr, 2
		case cr+1 == len(seg) && lr.err == nil:
			return -1, -1
		}
		return cr, 1
	}
	lf := bytes.IndexByte(seg[from:], '\n')
	if lf >= 0 {
		lf += from
	}
	if lr.known {
		if lf < 0 {
			return -1, 0
		}
		if lf > 0 && seg[lf-1] == '\r' {
			return lf - 1, 2
		}
		return lf, 1
	}
	// A lone "\r" may end lines: look for one before the "\n".
	upto := seg[from:]
	if lf >= 0 {
		upto = seg[from:lf]
	}
	cr := bytes.IndexByte(upto, '\r')
	switch {
	case cr >= 0:
		cr += from
		if cr+1 == len(seg) {
			if lr.err == nil {
				return -1, -1
			}
		} else if seg[cr+1] == '\n' {
			lr.decide(false)
			return cr, 2
		}
		lr.decide(true) // undecided until now: a CR-only file
		return cr, 1
	case lf >= 0:
		lr.decide(false)
		return lf, 1
	}
	return -1, 0
}

func (lr *lineReader) decide(cr bool) {
	if !lr.known {
		lr.known, lr.crEOL = true, cr
	}
}

// fill reads more of src into buf, keeping the unread bytes.
func (lr *lineReader) fill() error {
	if lr.pos > 0 {
		lr.end = copy(lr.buf, lr.buf[lr.pos:lr.end])
		lr.pos = 0
	}
	if lr.end == len(lr.buf) {
		if lr.limit > 0 && lr.end >= lr.limit {
			return errLineTooLong
		}
		grown := make([]byte, 2*len(lr.buf))
		copy(grown, lr.buf[:lr.end])
		lr.buf = grown
	}
	n, err := lr.src.Read(lr.buf[lr.end:])
	lr.end += n
	if err != nil {
		lr.err = err
	}
	return nil
}

// record is one parsed CSV record. Its slices are reused by the next read.
type record struct {
	line      int      // line the record starts on
	lastLine  int      // line it ends on
	fields    []string // empty when syntax is set
	quoted    []bool   // for each field, whether it was quoted
	count     int      // fields in the record; more than len(fields) when over maxFields
	raw       []byte   // the record's text, line breaks inside it as in the file, none after it
	syntax    string   // why the record is not valid CSV; "" when it is
	suspect   []int    // lines inside a quoted field that look like records of their own
	quoteLine int      // line where the quoted field spanning suspect lines opened
	quoteCol  int      // and its field, 1-based
}

// parser reads CSV records from a lineReader.
type parser struct {
	lr        lineReader
	delim     []byte
	line      int // lines read so far
	maxRecord int // bytes; <= 0 means no limit
	maxFields int // fields kept per record; more are only counted
	header    int // columns of the header, for the look of a record; 0 while reading it

	rec  record
	buf  []byte // the fields' bytes, unescaped
	ends []int  // end of each field in buf
}

func newParser(src io.Reader, delim rune, maxRecord, maxFields int) *parser {
	p := &parser{delim: utf8.AppendRune(nil, delim), maxRecord: maxRecord, maxFields: maxFields}
	p.lr = lineReader{src: src, buf: make([]byte, bufSize), limit: maxRecord}
	return p
}

// ErrRecordTooLarge is a record longer than Options.MaxRecordBytes.
var ErrRecordTooLarge = errors.New("record too large")

// recordTooLarge is ErrRecordTooLarge with where the record started.
type recordTooLarge struct {
	line, quoteLine int
	limit           int
}

func (e *recordTooLarge) Error() string {
	if e.quoteLine > 0 {
		return fmt.Sprintf("%v: the record on line %d is over %d bytes: a quote opened on line %d is never closed, so it runs on through the lines after it; fix the quote", ErrRecordTooLarge, e.line, e.limit, e.quoteLine)
	}
	return fmt.Sprintf("%v: the record on line %d is over %d bytes without a line break", ErrRecordTooLarge, e.line, e.limit)
}
func (e *recordTooLarge) Unwrap() error { return ErrRecordTooLarge }

// read returns the next record, io.EOF after the last one, or a fatal error.
func (p *parser) read() (*record, error) {
	var line, eol []byte
	var err error
	for {
		line, eol, err = p.lr.next()
		if err != nil {
			return nil, p.lineErr(err, p.line+1, 0)
		}
		p.line++
		if len(line) > 0 {
			break
		}
	}
	r := &p.rec
	*r = record{line: p.line, fields: r.fields[:0], quoted: r.quoted[:0], suspect: r.suspect[:0], raw: append(r.raw[:0], line...)}
	p.buf, p.ends = p.buf[:0], p.ends[:0]
	pos := 0       // next byte of r.raw to parse
	lineStart := 0 // where the current line starts in r.raw
	for {
		// A field starts at pos.
		q := pos
		for q < len(r.raw) && p.space(r.raw[q]) {
			q++
		}
		if q < len(r.raw) && r.raw[q] == '"' {
			openLine, openCol, field := p.line, q-lineStart+1, r.count+1
			pos = q + 1
			for {
				i := bytes.IndexByte(r.raw[pos:], '"')
				if i < 0 {
					// The field goes on on the next line, line break included.
					p.buf = append(p.buf, r.raw[pos:]...)
					p.buf = append(p.buf, eol...)
					if len(eol) == 0 { // end of input inside the quotes
						r.lastLine = p.line
						r.syntax = fmt.Sprintf("line %d, column %d: the quote opened here is never closed before the end of the file", openLine, openCol)
						return r, nil
					}
					line, eol2, err := p.lr.next()
					if err == io.EOF {
						r.lastLine = p.line
						r.syntax = fmt.Sprintf("line %d, column %d: the quote opened here is never closed before the end of the file", openLine, openCol)
						return r, nil
					} else if err != nil {
						return nil, p.lineErr(err, r.line, openLine)
					}
					r.raw = append(r.raw, eol...)
					eol = eol2
					p.line++
					lineStart = len(r.raw)
					r.raw = append(r.raw, line...)
					pos = lineStart
					if p.maxRecord > 0 && len(r.raw) > p.maxRecord {
						return nil, &recordTooLarge{line: r.line, quoteLine: openLine, limit: p.maxRecord}
					}
					if p.looksLikeRecord(line) {
						if len(r.suspect) == 0 {
							r.quoteLine, r.quoteCol = openLine, field
						}
						r.suspect = append(r.suspect, p.line)
					}
					continue
				}
				p.buf = append(p.buf, r.raw[pos:pos+i]...)
				pos += i + 1
				if pos < len(r.raw) && r.raw[pos] == '"' {
					p.buf = append(p.buf, '"')
					pos++
					continue
				}
				break // the closing quote
			}
			for pos < len(r.raw) && p.space(r.raw[pos]) {
				pos++
			}
			switch {
			case pos == len(r.raw):
				p.endField(true)
				return p.done(r), nil
			case bytes.HasPrefix(r.raw[pos:], p.delim):
				p.endField(true)
				pos += len(p.delim)
				continue
			}
			r.lastLine = p.line
			r.syntax = fmt.Sprintf("line %d, column %d: text after the closing quote of a quoted field (a quote inside a quoted field is written \"\")", p.line, pos-lineStart+1)
			if p.line != r.line {
				r.syntax = fmt.Sprintf("record on line %d: %s", r.line, r.syntax)
			}
			return r, nil
		}
		// An unquoted field: everything up to the delimiter is data.
		i := bytes.Index(r.raw[pos:], p.delim)
		if i < 0 {
			p.buf = append(p.buf, r.raw[pos:]...)
			p.endField(false)
			return p.done(r), nil
		}
		p.buf = append(p.buf, r.raw[pos:pos+i]...)
		pos += i + len(p.delim)
		p.endField(false)
	}
}

// space reports whether c is white space that may pad a quoted field.
func (p *parser) space(c byte) bool {
	return (c == ' ' || c == '\t') && !(len(p.delim) == 1 && p.delim[0] == c)
}

func (p *parser) endField(quoted bool) {
	p.rec.count++
	if len(p.ends) < p.maxFields {
		p.ends = append(p.ends, len(p.buf))
		p.rec.quoted = append(p.rec.quoted, quoted)
	} else {
		// Over the cap: count the field, keep none of its bytes.
		if len(p.ends) > 0 {
			p.buf = p.buf[:p.ends[len(p.ends)-1]]
		} else {
			p.buf = p.buf[:0]
		}
	}
}

// done builds the record's fields: one string for all of them, which each
// field slices, so a record costs two allocations.
func (p *parser) done(r *record) *record {
	r.lastLine = p.line
	s := string(p.buf)
	r.fields = r.fields[:0]
	start := 0
	for _, end := range p.ends {
		r.fields = append(r.fields, s[start:end])
		start = end
	}
	return r
}

// looksLikeRecord reports whether a line inside a quoted field looks like a
// record of its own: it holds an '@' and as many delimiters as a record of
// the header has (at least one). A real note that spans lines rarely does.
func (p *parser) looksLikeRecord(line []byte) bool {
	if p.header < 2 || bytes.IndexByte(line, '@') < 0 {
		return false
	}
	return bytes.Count(line, p.delim) >= p.header-1
}

func (p *parser) lineErr(err error, line, quoteLine int) error {
	if errors.Is(err, errLineTooLong) {
		return &recordTooLarge{line: line, quoteLine: quoteLine, limit: p.maxRecord}
	}
	return err
}
