package export

import (
	"bytes"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"crmsync/shared/contact"
)

// knownCodes are all the codes a Row.Problem may carry.
var knownCodes = map[string]bool{
	CodeCSVSyntax: true, CodeFieldCount: true, CodeRunawayQuote: true, CodeFieldTooLarge: true, CodeMissingKey: true, CodeNULByte: true,
	contact.CodeMissingExternalID: true, contact.CodeExternalIDTooLong: true, contact.CodeMissingEmail: true,
	contact.CodeInvalidEmail: true, contact.CodeInvalidUTF8: true, CodeMissingRequired: true, CodeInvalidPhone: true,
}

func addFixtureSeeds(f *testing.F, add func(data []byte)) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "*", "input.csv*"))
	if err != nil {
		f.Fatal(err)
	}
	for _, in := range inputs {
		data, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		add(data)
	}
}

// maxFuzzPlain bounds the decompressed size of a gzip input worth checking.
const maxFuzzPlain = 1 << 20

// FuzzDecode feeds arbitrary bytes to the Reader as an export. It must not
// panic or loop; every CSV record after the header must come out as exactly
// one Row; and a valid row, written back out as CSV, must read back as the
// same fields and contact.
func FuzzDecode(f *testing.F) {
	addFixtureSeeds(f, func(data []byte) {
		f.Add(data, false, uint8(0))
		f.Add(data, true, uint8(8))
	})
	f.Add([]byte("id,email\n1,\"a@x.io\n2,b@x.io\n"), false, uint8(0))
	f.Add([]byte("line,reason,id,email\n2,x,1,a@x.io\n3,y\n"), false, uint8(0))
	f.Add(gzipBytes(f, []byte("id;email\n1;a@x.io\n")), true, uint8(0))
	f.Add(gzipBytes(f, []byte("id,email\n1,a@x.io\n"))[:20], false, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, semicolon bool, maxField uint8) {
		opts := Options{MaxFieldBytes: int(maxField)}
		if semicolon {
			opts.Delimiter = ';'
		}
		// Compare against the decompressed bytes when the input is gzip.
		plain, plainErr := data, error(nil)
		if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
			var zr *gzip.Reader
			if zr, plainErr = gzip.NewReader(bytes.NewReader(data)); plainErr == nil {
				plain, plainErr = io.ReadAll(io.LimitReader(zr, maxFuzzPlain+1))
			}
			if len(plain) > maxFuzzPlain {
				return // a gzip bomb only makes this run slow
			}
		}
		r, err := NewReader(bytes.NewReader(data), "fuzz.csv", int64(len(data)), opts)
		if err != nil {
			if e := (*Error)(nil); !errors.As(err, &e) || e.Name != "fuzz.csv" {
				t.Fatalf("NewReader error %v is not an *Error naming the file", err)
			}
			return
		}
		defer r.Close()
		plain = decodeUTF16(plain)
		maxRows := bytes.Count(plain, []byte("\n")) + bytes.Count(plain, []byte("\r")) + 1
		header := r.Header()
		lastLine, rows := 0, 0
		for {
			row, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				if e := (*Error)(nil); !errors.As(err, &e) {
					t.Fatalf("Next error %v is not an *Error", err)
				}
				return // gzip garbage: fatal errors are fine, counting is not
			}
			rows++
			// Each record takes at least one line; more rows than that is a loop.
			if rows > maxRows {
				t.Fatalf("%d rows from %d lines", rows, maxRows)
			}
			if row.Line <= lastLine {
				t.Fatalf("row line %d after line %d", row.Line, lastLine)
			}
			lastLine = row.Line
			// Re-encoding builds a Reader per row: a few rows are enough.
			checkRow(t, row, header, opts, rows <= 16)
		}
		if plainErr != nil {
			t.Fatalf("Reader read to EOF what gzip cannot decompress: %v", plainErr)
		}
		st := r.Stats()
		if got, want := int64(rows)+st.BlankRows+st.RepeatedHeaders, int64(countRecords(plain, opts.Delimiter)-1); got != want {
			t.Fatalf("got %d rows + %+v, want %d (records after the header)", rows, st, want)
		}
	})
}

// checkRow checks one row's invariants and, for a valid row, that it
// survives being written out as CSV and read back.
func checkRow(t *testing.T, row Row, header []string, opts Options, reencode bool) {
	t.Helper()
	if len(row.Fields) == 0 && code(row) != CodeFieldCount {
		// Only a rejects-file record too short to hold its marker columns
		// has no fields left.
		t.Fatalf("line %d: no fields", row.Line)
	}
	if row.Problem != nil {
		if !knownCodes[row.Problem.Code] {
			t.Fatalf("line %d: unknown problem code %q", row.Line, row.Problem.Code)
		}
		if row.Problem.Code == CodeCSVSyntax && len(row.Fields) != 1 {
			t.Fatalf("line %d: csv_syntax row with %d fields, want the raw text only", row.Line, len(row.Fields))
		}
		return
	}
	if row.Key == "" || row.Contact.ExternalID != row.Key || row.Contact.Validate() != nil || len(row.Fields) != len(header) {
		t.Fatalf("line %d: row without Problem is not valid: %+v", row.Line, row)
	}
	if !reencode {
		return
	}
	// A leading BOM keeps a header that starts with one intact.
	var buf bytes.Buffer
	buf.Write(utf8BOM)
	w := csv.NewWriter(&buf)
	if opts.Delimiter != 0 {
		w.Comma = opts.Delimiter
	}
	w.Write(header)
	w.Write(row.Fields)
	w.Flush()
	r, err := NewReader(&buf, "again.csv", -1, opts)
	if err != nil {
		t.Fatalf("line %d: re-encoded export: %v", row.Line, err)
	}
	again, err := r.Next()
	if err != nil {
		t.Fatalf("line %d: re-encoded row: %v", row.Line, err)
	}
	// A quoted "" is written back unquoted: an absent attribute.
	want := row.Contact
	if want.Attributes != nil {
		want.Attributes = slices.DeleteFunc(want.Attributes.Clone(), func(a contact.Attr) bool { return a.Value == "" })
		if len(want.Attributes) == 0 {
			want.Attributes = nil
		}
	}
	if !slices.Equal(again.Fields, row.Fields) || !reflect.DeepEqual(again.Contact, want) || again.Problem != nil {
		t.Fatalf("line %d: re-encoded row differs:\ngot  %+v\nwant %+v", row.Line, again, row)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("line %d: re-encoded export has more than one row: %v", row.Line, err)
	}
}

// countRecords counts the CSV records in data (records with a syntax
// error included, the header too), written apart from parse.go as a plain
// state machine over the dialect's rules, so the two check each other.
func countRecords(data []byte, delim rune) int {
	data = bytes.TrimPrefix(data, utf8BOM)
	text := string(data)
	// The first line break decides whether a lone CR ends lines.
	crEOL := false
	if i := strings.IndexAny(text, "\r\n"); i >= 0 && text[i] == '\r' && (i+1 == len(text) || text[i+1] != '\n') {
		crEOL = true
	}
	var lines []string
	for len(text) > 0 {
		i := strings.IndexByte(text, '\n')
		if crEOL {
			i = strings.IndexAny(text, "\r\n")
		}
		if i < 0 {
			lines = append(lines, text)
			break
		}
		line := text[:i]
		if text[i] == '\r' && i+1 < len(text) && text[i+1] == '\n' {
			i++
		} else if !crEOL && i > 0 && text[i-1] == '\r' {
			line = text[:i-1]
		}
		lines = append(lines, line)
		text = text[i+1:]
	}
	if len(lines) > 0 {
		if d, ok := strings.CutPrefix(lines[0], "sep="); ok && utf8.RuneCountInString(d) == 1 && validDelim([]rune(d)[0]) {
			if delim != 0 && []rune(d)[0] != delim {
				return 0
			}
			delim = []rune(d)[0]
			lines = lines[1:]
		}
	}
	if delim == 0 {
		delim = ','
	}
	d := string(delim)
	n := 0
	for i := 0; i < len(lines); i++ {
		if lines[i] == "" {
			continue
		}
		n++
		// Walk the record; a quoted field may take the next lines.
		line, pos := lines[i], 0
	fields:
		for {
			q := pos
			for q < len(line) && (line[q] == ' ' || line[q] == '\t') && !strings.HasPrefix(line[q:], d) {
				q++
			}
			if q < len(line) && line[q] == '"' {
				pos = q + 1
				for {
					if pos >= len(line) {
						if i+1 >= len(lines) {
							break fields // never closed: the record ends with the file
						}
						i++
						line, pos = lines[i], 0
						continue
					}
					if line[pos] != '"' {
						pos++
						continue
					}
					if pos+1 < len(line) && line[pos+1] == '"' {
						pos += 2
						continue
					}
					pos++
					break
				}
				for pos < len(line) && (line[pos] == ' ' || line[pos] == '\t') && !strings.HasPrefix(line[pos:], d) {
					pos++
				}
				if pos < len(line) && strings.HasPrefix(line[pos:], d) {
					pos += len(d)
					continue
				}
				break // end of line, or a syntax error that ends the record with the line
			}
			j := strings.Index(line[pos:], d)
			if j < 0 {
				break
			}
			pos += j + len(d)
		}
	}
	return n
}

// decodeUTF16 decodes data that starts with a UTF-16 BOM, as the Reader
// does by itself (unpaired surrogates may decode differently; the count of
// records does not depend on them).
func decodeUTF16(data []byte) []byte {
	var be bool
	switch {
	case bytes.HasPrefix(data, []byte{0xFF, 0xFE}):
	case bytes.HasPrefix(data, []byte{0xFE, 0xFF}):
		be = true
	default:
		return data
	}
	data = data[2:]
	units := make([]uint16, 0, len(data)/2)
	for i := 0; i+1 < len(data); i += 2 {
		if be {
			units = append(units, uint16(data[i])<<8|uint16(data[i+1]))
		} else {
			units = append(units, uint16(data[i+1])<<8|uint16(data[i]))
		}
	}
	if len(data)%2 == 1 {
		units = append(units, 0xFFFD) // an odd last byte is a character of its own
	}
	return []byte(string(utf16.Decode(units)))
}

// FuzzRejectsRoundTrip writes arbitrary fields to a rejects file and reads
// them back through the Reader: they must come back identical, line breaks
// included (but for what the Reader drops: empty fields past the header).
func FuzzRejectsRoundTrip(f *testing.F) {
	f.Add("\x1f1\x1fa@x.io", 7, "invalid_email: x", false)
	f.Add("", 1, "", true)
	f.Add("\x1f", -3, "r\r\nn", false)
	f.Add("\x1f \"q\" \x1f;,\n\r\x1f\\.\x1f\xff\xfe", 1<<40, "field_count: line 3: 5 fields, header has 2", true)
	f.Add("\x1f\ufeffid\x1fline\x1freason", 2, "\"", false)
	f.Fuzz(func(t *testing.T, packed string, line int, reason string, semicolon bool) {
		// Fields are packed as "\x1f"-prefixed strings, so zero fields and
		// a single empty field can both be expressed.
		fields := strings.Split(packed, "\x1f")[1:]
		header := []string{"id", "email"}
		delim := ','
		if semicolon {
			delim = ';'
		}
		path := filepath.Join(t.TempDir(), "rejects.csv")
		w, err := NewRejectsWriter(path, header, delim)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(line, fields, reason); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := Open(path, Options{Delimiter: delim})
		if !utf8.ValidString(strings.Join(fields, "") + reason) {
			// A rejects file that is not UTF-8 is refused up front, like
			// any export.
			if !errors.Is(err, ErrEncoding) {
				t.Fatalf("got %v for a rejects file with invalid UTF-8, want ErrEncoding", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if !r.IsRejects() || !slices.Equal(r.Header(), header) {
			t.Fatalf("got header %q rejects=%t, want %q rejects=true", r.Header(), r.IsRejects(), header)
		}
		row, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		want := fields
		// Empty fields past the header are dropped.
		if len(want) > len(header) && allEmpty(want[len(header):]) {
			want = want[:len(header)]
		}
		if !slices.Equal(row.Fields, want) {
			t.Fatalf("got fields %q, want %q", row.Fields, want)
		}
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("got %v after the row, want EOF", err)
		}
	})
}
