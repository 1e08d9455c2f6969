package export

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
)

// TestInvalidUTF8PastSniff: bytes that are not UTF-8 past the part of the
// file checked up front stop the file there, naming the line, the column
// and what to do: never the rest of the file as rejects and exit 0.
func TestInvalidUTF8PastSniff(t *testing.T) {
	defer func(n int) { sniffSize = n }(sniffSize)
	sniffSize = 64
	input := "id,email,first_name,city\n" + strings.Repeat("1,ann@example.com,Ann,Paris\n", 4) +
		"2,bob@example.com,B\xe9b,Lyon\n3,cy@example.org,Cy,N\xc3\n"
	r, err := NewReader(strings.NewReader(input), "t.csv", -1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rows := 0
	for {
		_, err = r.Next()
		if err != nil {
			break
		}
		rows++
	}
	want := `t.csv: line 6: wrong text encoding: the file is not UTF-8 from line 6 on, past the first 64 bytes checked up front: column "first_name" holds byte 0xE9 ("é" in windows-1252). The rows before it were read as UTF-8. If the file is windows-1252, rerun with -encoding windows-1252 (rows already delivered are skipped); if the byte is corrupt, fix it and rerun`
	if rows != 4 || !errors.Is(err, ErrEncoding) || err.Error() != want {
		t.Errorf("got %d rows, then %v\nwant 4 rows, then %s", rows, err, want)
	}
}

// TestWideHeader: a header wider than MaxColumns is refused; one within it
// costs memory by the rows, not by the header's width (issue 11).
func TestWideHeader(t *testing.T) {
	cols := func(n int) string {
		names := []string{"id", "email"}
		for i := 2; i < n; i++ {
			names = append(names, fmt.Sprintf("c%d", i))
		}
		return strings.Join(names, ",")
	}
	_, err := NewReader(strings.NewReader(cols(DefaultMaxColumns+1)+"\n1,a@x.io\n"), "wide.csv", -1, Options{})
	if !errors.Is(err, ErrTooManyColumns) || !strings.Contains(err.Error(), "wide.csv: line 1") {
		t.Fatalf("got %v, want ErrTooManyColumns naming the file and line", err)
	}

	const rows = 20_000
	input := cols(DefaultMaxColumns) + "\n" + strings.Repeat("1,a@x.io,x\n", rows)
	r, err := NewReader(strings.NewReader(input), "wide.csv", -1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	kept := make([]Row, 0, rows) // rows held, as the records in flight are
	for {
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, row)
	}
	runtime.ReadMemStats(&after)
	// Each row is three short fields (a field_count reject); a few hundred
	// bytes each, where sizing by the header cost tens of kilobytes.
	if per := (after.TotalAlloc - before.TotalAlloc) / rows; per > 1024 {
		t.Errorf("%d bytes allocated per 3-field row under a %d-column header, want under 1 KiB", per, DefaultMaxColumns)
	}
	if len(kept) != rows || kept[0].Problem == nil || kept[0].Problem.Code != CodeFieldCount {
		t.Errorf("got %d rows, first %+v; want %d field_count rows", len(kept), kept[0].Problem, rows)
	}
}

// TestLineOfDelimiters: a record with far more fields than the header comes
// back whole as its raw text, without a string per field.
func TestLineOfDelimiters(t *testing.T) {
	line := "1,a@x.io" + strings.Repeat(",x", 10_000)
	r, err := NewReader(strings.NewReader("id,email\n"+line+"\n2,b@x.io\n"), "t.csv", -1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	row, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	if row.Problem == nil || row.Problem.Code != CodeFieldCount || len(row.Fields) != 1 || row.Fields[0] != line {
		t.Fatalf("got %d fields, problem %+v; want the raw line as one field_count field", len(row.Fields), row.Problem)
	}
	if want := "line 2: 10002 fields, header has 2; the row is kept as its raw text"; row.Problem.Message != want {
		t.Errorf("got %q, want %q", row.Problem.Message, want)
	}
	if row, err := r.Next(); err != nil || row.Key != "2" {
		t.Errorf("next row: got %+v, %v; want key 2", row, err)
	}
}

func TestParseEncoding(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", EncodingUTF8}, {"UTF8", EncodingUTF8}, {"cp1252", EncodingWindows1252}, {"Windows-1252", EncodingWindows1252},
		{"ISO-8859-1", EncodingLatin1}, {"latin1", EncodingLatin1}, {"UTF-16", EncodingUTF16}, {"utf_16le", EncodingUTF16LE}, {"UTF-16BE", EncodingUTF16BE},
	}
	for _, tc := range tests {
		if got, err := ParseEncoding(tc.in); got != tc.want || err != nil {
			t.Errorf("ParseEncoding(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := ParseEncoding("ebcdic"); !errors.Is(err, ErrEncoding) || !strings.Contains(err.Error(), "windows-1252") {
		t.Errorf("got %v, want ErrEncoding listing the encodings", err)
	}
}

// TestWindows1252Table pins the bytes 0x80-0x9F, the ones latin-1 lacks.
func TestWindows1252Table(t *testing.T) {
	var in strings.Builder
	in.WriteString("id,email,v\n1,a@x.io,")
	for b := 0x80; b <= 0x9F; b++ {
		in.WriteByte(byte(b))
	}
	in.WriteString("\n")
	r, err := NewReader(strings.NewReader(in.String()), "t.csv", -1, Options{Encoding: EncodingWindows1252})
	if err != nil {
		t.Fatal(err)
	}
	row, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	want := "€\u0081‚ƒ„…†‡ˆ‰Š‹Œ\u008dŽ\u008f\u0090‘’“”•–—˜™š›œ\u009džŸ"
	if got := row.Fields[2]; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestEncodingErrorCommand: the conversion the error suggests works on the
// file as it is: gzipped, named with spaces, or stdin.
func TestEncodingErrorCommand(t *testing.T) {
	latin := []byte("id,email,n\n1,a@x.io,Ren\xe9\n")
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"export.csv", latin, "iconv -f WINDOWS-1252 -t UTF-8 export.csv > export.utf8.csv"},
		{"my export.csv.gz", gzipBytes(t, latin), "gunzip -c 'my export.csv.gz' | iconv -f WINDOWS-1252 -t UTF-8 > 'my export.utf8.csv'"},
		{"stdin", latin, "... | iconv -f WINDOWS-1252 -t UTF-8 | csvreader ... -"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tc.data), tc.name, -1, Options{})
			if !errors.Is(err, ErrEncoding) || !strings.HasSuffix(err.Error(), tc.want) {
				t.Errorf("got %v, want it to end with %s", err, tc.want)
			}
		})
	}
}
