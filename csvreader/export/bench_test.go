package export

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"testing"
)

// benchExport generates an export of n rows with the columns of a typical
// CRM export: five known ones and four that become attributes.
func benchExport(n int) []byte {
	var b bytes.Buffer
	b.WriteString("id,first_name,last_name,email,phone,company,city,country,created_at\n")
	for i := range n {
		fmt.Fprintf(&b, "%d,First%d,Last%d,user%d@example.com,+1 555 %04d,\"Company %d, Inc.\",City%d,US,2024-01-%02dT10:00:00Z\n",
			100000+i, i, i, i, i%10000, i%500, i%90, i%28+1)
	}
	return b.Bytes()
}

// BenchmarkDecode measures the Reader over a 100k-row export held in
// memory, plain and gzipped: MB/s of export and rows/s, and allocations per
// row (go test -bench=Decode -benchmem ./csvreader/export/).
func BenchmarkDecode(b *testing.B) {
	const rows = 100_000
	plain := benchExport(rows)
	mapped, err := ParseMapping([]byte(`{"columns": [{"column": "email", "field": "email", "normalize": ["lower"]}, {"column": "company", "field": "attributes.company", "normalize": ["collapse"]}]}`), "bench.json")
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		data []byte
		opts Options
	}{
		{"csv", plain, Options{}},
		{"gzip", gzipBytes(b, plain), Options{}},
		{"cr-only", bytes.ReplaceAll(plain, []byte("\n"), []byte("\r")), Options{}}, // classic Mac line endings
		{"mapped-e164", bytes.ReplaceAll(plain, []byte("+1 555 "), []byte("(415) 555-")), Options{Mapping: mapped, PhoneRegion: "US"}}, // the slow path: E.164, lower, collapse
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(plain)))
			b.ReportAllocs()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			mallocs := ms.Mallocs
			for b.Loop() {
				r, err := NewReader(bytes.NewReader(bc.data), "bench.csv", int64(len(bc.data)), bc.opts)
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				for {
					row, err := r.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if row.Problem != nil {
						b.Fatalf("line %d: %v", row.Line, row.Problem)
					}
					n++
				}
				if n != rows {
					b.Fatalf("got %d rows, want %d", n, rows)
				}
				r.Close()
			}
			runtime.ReadMemStats(&ms)
			total := float64(b.N) * rows
			b.ReportMetric(total/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(float64(ms.Mallocs-mallocs)/total, "allocs/row")
		})
	}
}
