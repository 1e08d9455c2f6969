package export

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// readAll reads every row of the export at path.
func readAll(t testing.TB, path string, opts Options) (*Reader, []Row) {
	t.Helper()
	r, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	var rows []Row
	for {
		row, err := r.Next()
		if err == io.EOF {
			return r, rows
		}
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, row)
	}
}

// TestRejectsRoundTrip writes the rejected rows of each fixture to a rejects
// file and reads it back: same header, same fields, same problems (a row
// fed back unfixed is refused again for the same reason).
func TestRejectsRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{"bare_quote", Options{}},
		{"unterminated_quote", Options{}},
		{"field_count", Options{}},
		{"empty_key", Options{}},
		{"invalid_email", Options{}},
		{"crlf", Options{}},
		{"quoted", Options{}},
		{"semicolon", Options{Delimiter: ';'}},
		{"key_column", Options{Key: "customer_no"}},
		{"field_too_large", Options{MaxFieldBytes: 16}},
		// Real-world exports: line breaks as in the file, values verbatim.
		{"cr_only", Options{}},
		{"crlf_verbatim", Options{}},
		{"verbatim_values", Options{}},
		{"lazy_quotes", Options{}},
		{"space_before_quote", Options{}},
		{"trailing_columns", Options{}},
		{"runaway_quote", Options{}},
		{"windows1252", Options{Encoding: EncodingWindows1252}}, // the rejects file is UTF-8: read back as it is
		{"sep_line", Options{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src, rows := readAll(t, filepath.Join("testdata", tc.name, "input.csv"), tc.opts)
			path := filepath.Join(t.TempDir(), "rejects.csv")
			w, err := NewRejectsWriter(path, src.Header(), src.Delimiter())
			if err != nil {
				t.Fatal(err)
			}
			var want []Row
			for _, row := range rows {
				// Valid rows too: the round trip must hold for any fields.
				reason := "ok"
				if row.Problem != nil {
					reason = row.Problem.Error()
				}
				if err := w.Write(row.Line, row.Fields, reason); err != nil {
					t.Fatal(err)
				}
				want = append(want, row)
			}
			if got, want := w.Count(), len(want); got != want {
				t.Errorf("got Count %d, want %d", got, want)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}

			back, got := readAll(t, path, Options{Delimiter: src.Delimiter(), Key: tc.opts.Key, MaxFieldBytes: tc.opts.MaxFieldBytes})
			if !back.IsRejects() {
				t.Errorf("rejects file not recognised")
			}
			if !slices.Equal(back.Header(), src.Header()) {
				t.Errorf("got header %q, want %q", back.Header(), src.Header())
			}
			if len(got) != len(want) {
				t.Fatalf("got %d rows back, want %d", len(got), len(want))
			}
			for i := range got {
				if !slices.Equal(got[i].Fields, want[i].Fields) {
					t.Errorf("row %d: got fields %q, want %q", i, got[i].Fields, want[i].Fields)
				}
				if got, want := code(got[i]), code(want[i]); got != want && want != CodeCSVSyntax {
					t.Errorf("row %d: got problem %q, want %q", i, got, want)
				}
			}
		})
	}
}

func code(r Row) string {
	if r.Problem == nil {
		return ""
	}
	return r.Problem.Code
}

func TestRejectsFileFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rejects.csv")
	w, err := NewRejectsWriter(path, []string{"id", "email", "first_name"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	writes := []struct {
		line   int
		fields []string
		reason string
	}{
		{3, []string{"2", "bob@x", "Bob"}, "invalid_email: email \"bob@x\" is not a valid address"},
		{5, []string{"4"}, "field_count: line 5: 1 fields, header has 3"},
		{6, []string{"5", "e@x.io", "E", "extra, with comma"}, "field_count: line 6: 4 fields, header has 3"},
		{9, []string{"7,\"x\"y,z\nnext"}, "csv_syntax: parse error"},
	}
	for _, wr := range writes {
		if err := w.Write(wr.line, wr.fields, wr.reason); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
	if err := w.Write(1, nil, "x"); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: got %v, want os.ErrClosed", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := `line,reason,id,email,first_name
3,"invalid_email: email ""bob@x"" is not a valid address",2,bob@x,Bob
5,"field_count: line 5: 1 fields, header has 3",4
6,"field_count: line 6: 4 fields, header has 3",5,e@x.io,E,"extra, with comma"
9,csv_syntax: parse error,"7,""x""y,z
next"
`
	if string(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("got mode %v (%v), want 0600: the file holds customer data", fi.Mode().Perm(), err)
	}
}

func TestRejectsWriterConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rejects.csv")
	w, err := NewRejectsWriter(path, []string{"id", "email"}, ';')
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("%d-%d", g, i)
				if err := w.Write(i+2, []string{id, "line;one\nline two"}, "invalid_email: x"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := w.Count(), writers*each; got != want {
		t.Errorf("got Count %d, want %d", got, want)
	}
	_, rows := readAll(t, path, Options{Delimiter: ';'})
	seen := make(map[string]bool)
	for _, row := range rows {
		if got, want := row.Fields[1], "line;one\nline two"; got != want {
			t.Fatalf("line %d: got %q, want %q: interleaved writes", row.Line, got, want)
		}
		seen[row.Key] = true
	}
	if got, want := len(seen), writers*each; got != want {
		t.Errorf("got %d distinct rows back, want %d", got, want)
	}
}

func TestNewRejectsWriterErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewRejectsWriter(filepath.Join(dir, "no", "such", "dir.csv"), []string{"id"}, 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing directory: got %v, want os.ErrNotExist", err)
	}
	if _, err := NewRejectsWriter(filepath.Join(dir, "r.csv"), []string{"id"}, '\n'); !errors.Is(err, ErrBadDelimiter) {
		t.Errorf("bad delimiter: got %v, want ErrBadDelimiter", err)
	}
}
