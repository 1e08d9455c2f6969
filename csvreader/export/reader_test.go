package export

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

var update = flag.Bool("update", false, "rewrite the golden want.txt files under testdata/")

// transcript reads the whole export and renders what the Reader returned,
// one line per value, strings Go-quoted so that every byte shows: the
// header, every row and every notice, then how the stream ended.
func transcript(t *testing.T, opts Options, open func(Options) (*Reader, error)) (string, error) {
	t.Helper()
	var b strings.Builder
	opts.Notify = func(n Notice) { fmt.Fprintf(&b, "notice %d %s %q\n", n.Line, n.Code, n.Message) }
	r, err := open(opts)
	if err != nil {
		fmt.Fprintf(&b, "error %q\n", err)
		return b.String(), err
	}
	defer r.Close()
	fmt.Fprintf(&b, "header %q rejects=%t\n", r.Header(), r.IsRejects())
	if r.Delimiter() != ',' || r.Encoding() != EncodingUTF8 {
		fmt.Fprintf(&b, "delimiter %q encoding %s\n", r.Delimiter(), r.Encoding())
	}
	for {
		row, err := r.Next()
		if err == io.EOF {
			if st := r.Stats(); st != (Stats{}) {
				fmt.Fprintf(&b, "stats %+v\n", st)
			}
			b.WriteString("EOF\n")
			return b.String(), nil
		}
		if err != nil {
			fmt.Fprintf(&b, "error %q\n", err)
			return b.String(), err
		}
		fmt.Fprintf(&b, "%d %q", row.Line, row.Fields)
		if c := row.Contact; c.ExternalID != "" || c.Email != "" || c.Attributes != nil {
			fmt.Fprintf(&b, " key=%q contact={id=%q email=%q first=%q last=%q phone=%q", row.Key, c.ExternalID, c.Email, c.FirstName, c.LastName, c.Phone)
			for _, a := range c.Attributes {
				fmt.Fprintf(&b, " %q=%q", a.Name, a.Value)
			}
			b.WriteString("}")
		} else if row.Key != "" {
			fmt.Fprintf(&b, " key=%q", row.Key)
		}
		if len(row.Suspect) > 0 {
			fmt.Fprintf(&b, " suspect=%v", row.Suspect)
		}
		if p := row.Problem; p != nil {
			fmt.Fprintf(&b, " problem=%s %q", p.Code, p.Message)
		}
		b.WriteString("\n")
	}
}

func gzipBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReaderFixtures(t *testing.T) {
	tests := []struct {
		name    string // folder under testdata/
		file    string // default input.csv
		golden  string // default want.txt
		opts    Options
		wantErr error // errors.Is target of the error that ends the stream, if any
	}{
		{name: "clean"},
		{name: "bom"},
		{name: "crlf"},
		{name: "quoted"},
		{name: "blank_lines"},
		{name: "no_final_newline"},
		{name: "semicolon", opts: Options{Delimiter: ';'}},
		{name: "bare_quote"},
		{name: "unterminated_quote"},
		{name: "field_count"},
		{name: "empty_key"},
		{name: "invalid_email"},
		{name: "invalid_utf8", wantErr: ErrEncoding},
		{name: "nul_byte"},
		{name: "header_names"},
		{name: "extra_columns"},
		{name: "key_column", opts: Options{Key: "Customer_No"}},
		{name: "field_too_large", opts: Options{MaxFieldBytes: 16}},
		{name: "rejects_file"},
		{name: "gzip"},                                    // gzip content named .csv: detected by magic
		{name: "gzip", file: "input.csv.gz"},              // and named .gz
		{name: "gzip_concatenated", file: "input.csv.gz"}, // multi-member, as cat a.gz b.gz makes
		{name: "gzip_truncated", file: "input.csv.gz", wantErr: io.ErrUnexpectedEOF},
		{name: "missing_column", wantErr: ErrMissingColumn},
		{name: "missing_columns", wantErr: ErrMissingColumn},
		{name: "duplicate_header", wantErr: ErrDuplicateColumn},
		{name: "empty", wantErr: ErrNoHeader},
		{name: "header_syntax", wantErr: ErrBadHeader},
		{name: "empty_column_name", wantErr: ErrBadHeader},

		// Real-world exports (issue 12).
		{name: "cr_only"},
		{name: "crlf_verbatim"},
		{name: "verbatim_values"},
		{name: "concatenated_same_order"},
		{name: "concatenated_other_order", wantErr: ErrRepeatedHeader},
		{name: "windows1252", wantErr: ErrEncoding},
		{name: "windows1252", golden: "want.decoded.txt", opts: Options{Encoding: "windows-1252"}},
		{name: "latin1", golden: "want.txt", opts: Options{Encoding: "latin-1"}},
		{name: "utf8_given_as_1252", opts: Options{Encoding: "windows-1252"}, wantErr: ErrEncoding},
		{name: "utf16le_bom"},
		{name: "utf16be_bom"},
		{name: "utf16le_no_bom", wantErr: ErrEncoding},
		{name: "utf16le_no_bom", golden: "want.decoded.txt", opts: Options{Encoding: "utf-16le"}},
		{name: "utf16le_no_bom", golden: "want.guessed.txt", opts: Options{Encoding: "utf-16"}},
		{name: "utf16_bad_surrogate"},
		{name: "sep_line"},
		{name: "sep_line", golden: "want.conflict.txt", opts: Options{Delimiter: ','}, wantErr: ErrBadDelimiter},
		{name: "trailing_columns"},
		{name: "blank_rows"},
		{name: "space_before_quote"},
		{name: "lazy_quotes"},
		{name: "runaway_quote"},
		{name: "runaway_quote", golden: "want.trusted.txt", opts: Options{TrustQuotes: true}},
		{name: "mailchimp_headers", wantErr: ErrMissingColumn},
		{name: "hubspot_headers"}, // "Record ID" is the key by alias
		{name: "hubspot_headers", golden: "want.keyed.txt", opts: Options{Key: "Record ID"}},
		{name: "salesforce_headers"},
		{name: "one_column_semicolon", wantErr: ErrMissingColumn},
		{name: "one_column_tab", wantErr: ErrMissingColumn},
		{name: "nul_in_header", wantErr: ErrBadHeader},
		{name: "header_only"},
	}
	for _, tc := range tests {
		file := tc.file
		if file == "" {
			file = "input.csv"
		}
		t.Run(tc.name+"/"+file+"/"+tc.golden, func(t *testing.T) {
			dir := filepath.Join("testdata", tc.name)
			path := filepath.Join(dir, file)
			got, err := transcript(t, tc.opts, func(o Options) (*Reader, error) { return Open(path, o) })
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want errors.Is %v", err, tc.wantErr)
			}
			var e *Error
			if err != nil && (!errors.As(err, &e) || e.Name != path) {
				t.Errorf("error %v does not name the file %s", err, path)
			}

			goldenName := tc.golden
			if goldenName == "" {
				goldenName = "want.txt"
			}
			golden := filepath.Join(dir, goldenName)
			if *update && (file == "input.csv" || !exists(golden)) {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("no golden file (run go test -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("got:\n%s\nwant (%s):\n%s", got, golden, want)
			}

			input, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// The same bytes must read the same through one-byte reads (every
			// buffer boundary) and, unless already gzipped, through gzip.
			variants := map[string][]byte{"one byte reads": input}
			if !bytes.HasPrefix(input, []byte{0x1f, 0x8b}) {
				variants["gzipped"] = gzipBytes(t, input)
			}
			for vname, data := range variants {
				got, _ := transcript(t, tc.opts, func(o Options) (*Reader, error) {
					return NewReader(iotest.OneByteReader(bytes.NewReader(data)), path, int64(len(data)), o)
				})
				// The conversion an encoding error suggests unzips first.
				got = gunzipCommand.ReplaceAllString(got, "$2 $1 >")
				if got != string(want) {
					t.Errorf("%s: got:\n%s\nwant:\n%s", vname, got, want)
				}
			}
		})
	}
}

var gunzipCommand = regexp.MustCompile(`gunzip -c (\S+) \| (iconv -f \S+ -t UTF-8) >`)

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestResumeAfterSyntaxError pins what encoding/csv consumes on a syntax
// error: exactly the lines of the bad record, so every record after it comes
// out whole and separately, with its own line number.
func TestResumeAfterSyntaxError(t *testing.T) {
	tests := []struct {
		name      string
		input     string
		wantLines []int
		wantCodes []string
		wantRaw   string // Fields[0] of the csv_syntax row
	}{
		{
			name:      "bare quote in unquoted field is data",
			input:     "id,email,notes\n1,a@x.io,ok\n2,b@x.io,12\" pizza\n3,c@x.io,\n",
			wantLines: []int{2, 3, 4},
			wantCodes: []string{"", "", ""},
		},
		{
			name:      "text after closing quote",
			input:     "id,email\n1,a@x.io\n\"2\"x,b@x.io\n3,c@x.io\n",
			wantLines: []int{2, 3, 4},
			wantCodes: []string{"", CodeCSVSyntax, ""},
			wantRaw:   `"2"x,b@x.io`,
		},
		{
			name:      "error in first field of last line without newline",
			input:     "id,email\n1,a@x.io\n\"x\"y,z",
			wantLines: []int{2, 3},
			wantCodes: []string{"", CodeCSVSyntax},
			wantRaw:   `"x"y,z`,
		},
		{
			name:      "multi-line quoted field with bad quote: the record spans its lines, CRLF kept",
			input:     "id,email\r\n1,\"a\r\nb\"c,x\r\n3,c@x.io\r\n",
			wantLines: []int{2, 4},
			wantCodes: []string{CodeCSVSyntax, ""},
			wantRaw:   "1,\"a\r\nb\"c,x",
		},
		{
			name:      "blank lines before the bad record are not part of it",
			input:     "id,email\n\n\r\n1,\"x\"\"\"y\n\n2,b@x.io\n",
			wantLines: []int{4, 6},
			wantCodes: []string{CodeCSVSyntax, ""},
			wantRaw:   `1,"x"""y`,
		},
		{
			name:      "two bad records in a row",
			input:     "id,email\n\"a\"b,c\n\"d\"e,f\n1,a@x.io\n",
			wantLines: []int{2, 3, 4},
			wantCodes: []string{CodeCSVSyntax, CodeCSVSyntax, ""},
			wantRaw:   `"a"b,c`,
		},
		{
			name:      "CR-only line endings",
			input:     "id,email\r1,a@x.io\r\"2\"x,b@x.io\r3,c@x.io\r",
			wantLines: []int{2, 3, 4},
			wantCodes: []string{"", CodeCSVSyntax, ""},
			wantRaw:   `"2"x,b@x.io`,
		},
		{
			name:      "lone CR in an LF file is data",
			input:     "id,email,notes\n1,a@x.io,x\ry\n\"2\"x,b@x.io,\n3,c@x.io,\n",
			wantLines: []int{2, 3, 4},
			wantCodes: []string{"", CodeCSVSyntax, ""},
			wantRaw:   `"2"x,b@x.io,`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReader(strings.NewReader(tc.input), "t.csv", -1, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var lines []int
			var codes []string
			raw := ""
			for {
				row, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				lines = append(lines, row.Line)
				code := ""
				if row.Problem != nil {
					code = row.Problem.Code
				}
				codes = append(codes, code)
				if code == CodeCSVSyntax && raw == "" {
					raw = row.Fields[0]
					if !strings.Contains(row.Problem.Message, fmt.Sprintf("line %d", row.Line)) {
						t.Errorf("message %q does not name line %d", row.Problem.Message, row.Line)
					}
				}
				if code == "" && row.Contact.Email != "c@x.io" && row.Contact.Email != "a@x.io" && row.Contact.Email != "b@x.io" {
					t.Errorf("line %d: valid row with email %q, merged or split wrongly", row.Line, row.Contact.Email)
				}
			}
			if fmt.Sprint(lines) != fmt.Sprint(tc.wantLines) {
				t.Errorf("got lines %v, want %v", lines, tc.wantLines)
			}
			if fmt.Sprint(codes) != fmt.Sprint(tc.wantCodes) {
				t.Errorf("got codes %q, want %q", codes, tc.wantCodes)
			}
			if raw != tc.wantRaw {
				t.Errorf("got raw %q, want %q", raw, tc.wantRaw)
			}
		})
	}
}

// TestRowsOwnTheirFields checks that rows do not share csv's reused slice
// nor each other's fields.
func TestRowsOwnTheirFields(t *testing.T) {
	r, err := NewReader(strings.NewReader("id,email\n1,a@x.io\n2,b@x.io\n"), "t.csv", -1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := r.Next()
	second, _ := r.Next()
	// Rows share an arena: appending to one must not overwrite the next.
	_ = append(first.Fields, "appended")
	if got, want := fmt.Sprint(first.Fields, second.Fields), "[1 a@x.io] [2 b@x.io]"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestRecordTooLarge(t *testing.T) {
	// An unterminated quote near the top of a big file would make csv hold
	// the rest of the file as one field; the limit turns that into an error.
	input := "id,email\n1,\"a@x.io\n" + strings.Repeat("2,b@x.io\n", 200_000)
	// (a quote opened on line 2 and never closed)
	r, err := NewReader(strings.NewReader(input), "big.csv", int64(len(input)), Options{MaxRecordBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Next()
	if !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("got %v, want ErrRecordTooLarge", err)
	}
	if !strings.Contains(err.Error(), "big.csv: after line 1") || !strings.Contains(err.Error(), "quote opened on line 2 is never closed") {
		t.Errorf("error %q should name the file, the line and the likely cause", err)
	}
	if _, again := r.Next(); again != err {
		t.Errorf("second Next: got %v, want the same fatal error", again)
	}
}

func TestLongRecordsWithinLimit(t *testing.T) {
	// Records longer than the read buffers still come out whole.
	long := strings.Repeat("x", 3*bufSize)
	input := "id,email,notes\n1,a@x.io," + long + "\n2,b@x.io,\"" + long + "\n" + long + "\"\n\"3\"c@x.io," + long + "\n4,d@x.io,\n"
	r, err := NewReader(strings.NewReader(input), "t.csv", -1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		line  int
		code  string
		bytes int
	}{{2, "", len(long)}, {3, "", 2*len(long) + 1}, {5, CodeCSVSyntax, len("\"3\"c@x.io,") + len(long)}, {6, "", 0}}
	for _, w := range want {
		row, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		code := ""
		if row.Problem != nil {
			code = row.Problem.Code
		}
		n := len(row.Fields[len(row.Fields)-1])
		if row.Line != w.line || code != w.code || n != w.bytes {
			t.Errorf("got line %d code %q last field %d bytes, want line %d code %q %d bytes", row.Line, code, n, w.line, w.code, w.bytes)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("got %v, want EOF", err)
	}
}

func TestOpenStdinAndOffsets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "export.dat")
	data := gzipBytes(t, []byte("id,email\n1,a@x.io\n"))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, want := r.Size(), int64(len(data)); got != want {
		t.Errorf("got Size %d, want %d", got, want)
	}
	if got := r.Name(); got != path {
		t.Errorf("got Name %q, want %q", got, path)
	}
	for {
		if _, err := r.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if got, want := r.Offset(), int64(len(data)); got != want {
		t.Errorf("got Offset %d at EOF, want %d (compressed size)", got, want)
	}
}

func TestOpenErrors(t *testing.T) {
	tests := []struct {
		name    string
		path    string
		opts    Options
		wantErr error
	}{
		{"missing file", filepath.Join("testdata", "nope.csv"), Options{}, os.ErrNotExist},
		{"bad delimiter", filepath.Join("testdata", "clean", "input.csv"), Options{Delimiter: '"'}, ErrBadDelimiter},
		{"missing key column", filepath.Join("testdata", "clean", "input.csv"), Options{Key: "customer_no"}, ErrMissingColumn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(tc.path, tc.opts)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.path) {
				t.Errorf("error %q does not name %s", err, tc.path)
			}
		})
	}
}

func TestCloseStopsNext(t *testing.T) {
	r, err := NewReader(strings.NewReader("id,email\n1,a@x.io\n"), "t.csv", -1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Next after Close: got %v, want os.ErrClosed", err)
	}
}

func TestKeyOption(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		input   string
		want    string // "key email attributes" of the first row
		wantErr error
	}{
		{"default id", "", "id,email\n1,a@x.io\n", "1 a@x.io map[]", nil},
		{"email is the key", "email", "email,name\na@x.io,Ann\n", "a@x.io a@x.io map[name:Ann]", nil},
		{"email as key needs no id", "EMAIL ", "Email\na@x.io\n", "a@x.io a@x.io map[]", nil},
		{"custom key keeps id as attribute", "no", "ID,No,email\n7,K-7,a@x.io\n", "K-7 a@x.io map[id:7]", nil},
		{"custom key missing", "no", "id,email\n1,a@x.io\n", "", ErrMissingColumn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReader(strings.NewReader(tc.input), "t.csv", -1, Options{Key: tc.key})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got error %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			row, err := r.Next()
			if err != nil {
				t.Fatal(err)
			}
			if row.Problem != nil {
				t.Fatalf("unexpected problem %v", row.Problem)
			}
			got := fmt.Sprint(row.Key, " ", row.Contact.Email, " ", row.Contact.Attributes.Map())
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// -drop-columns: the named attribute columns are not sent; a name the
// header lacks is an error before any row.
func TestDropColumns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.csv")
	os.WriteFile(path, []byte("id,email,Company,Plan\nK1,a@example.com,Acme,gold\n"), 0o644)
	r, err := Open(path, Options{Drop: []string{" plan "}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.AttributeColumns(); !slices.Equal(got, []string{"Company"}) {
		t.Errorf("attribute columns %v, want [Company]", got)
	}
	row, err := r.Next()
	if err != nil || row.Problem != nil {
		t.Fatalf("row: %v %+v", err, row.Problem)
	}
	if _, ok := row.Contact.Attributes.Map()["Plan"]; ok || row.Contact.Attributes.Map()["Company"] != "Acme" {
		t.Errorf("attributes %v, want Company only", row.Contact.Attributes)
	}
	if _, err := Open(path, Options{Drop: []string{"Nope"}}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("dropping a column the header lacks: got %v, want an error naming it", err)
	}
}
