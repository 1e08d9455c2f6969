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

	"crmsync/shared/contact"
)

// knownCodes are all the codes a Row.Problem may carry.
var knownCodes = map[string]bool{
	CodeCSVSyntax: true, CodeFieldCount: true, CodeFieldTooLarge: true, CodeMissingKey: true, CodeNULByte: true,
	contact.CodeMissingExternalID: true, contact.CodeExternalIDTooLong: true, contact.CodeMissingEmail: true,
	contact.CodeInvalidEmail: true, contact.CodeInvalidUTF8: true,
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
		maxRows := bytes.Count(plain, []byte("\n")) + 1
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
		if got, want := rows, countRecords(plain, opts.Delimiter)-1; got != want {
			t.Fatalf("got %d rows, want %d (records after the header)", got, want)
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
	for _, f := range row.Fields {
		if strings.Contains(f, "\r\n") {
			return // encoding/csv reads "\r\n" in a field back as "\n"; see RejectsWriter.Write
		}
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
	if !slices.Equal(again.Fields, row.Fields) || !reflect.DeepEqual(again.Contact, row.Contact) || again.Problem != nil {
		t.Fatalf("line %d: re-encoded row differs:\ngot  %+v\nwant %+v", row.Line, again, row)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("line %d: re-encoded export has more than one row: %v", row.Line, err)
	}
}

// countRecords counts the CSV records in data the way encoding/csv splits
// them, a record with a syntax error included.
func countRecords(data []byte, delim rune) int {
	cr := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(data, utf8BOM)))
	if delim != 0 {
		cr.Comma = delim
	}
	cr.FieldsPerRecord = -1
	n := 0
	for {
		_, err := cr.Read()
		if err == io.EOF {
			return n
		}
		n++
	}
}

// FuzzRejectsRoundTrip writes arbitrary fields to a rejects file and reads
// them back through the Reader: they must come back identical, except that
// encoding/csv turns "\r\n" inside a field into "\n".
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
		want := make([]string, len(fields))
		for i, f := range fields {
			want[i] = strings.ReplaceAll(f, "\r\n", "\n")
		}
		if !slices.Equal(row.Fields, want) {
			t.Fatalf("got fields %q, want %q", row.Fields, want)
		}
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("got %v after the row, want EOF", err)
		}
	})
}
