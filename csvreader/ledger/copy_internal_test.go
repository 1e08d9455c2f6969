package ledger

import (
	"strings"
	"testing"

	"crmsync/shared/contact"
)

func TestAppendCopyText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"plain", "plain"},
		{"tab\there", `tab\there`},
		{"a\nb\rc", `a\nb\rc`},
		{`back\slash`, `back\\slash`},
		{"\\\t\n\r", `\\\t\n\r`},
		{"end\\", `end\\`},
		{`{"k":"say \"hi\""}`, `{"k":"say \\"hi\\""}`},
		{"Zoë 日本", "Zoë 日本"},
	} {
		if got := string(appendCopyText([]byte("x|"), tc.in)); got != "x|"+tc.want {
			t.Errorf("appendCopyText(%q) = %q, want %q", tc.in, got, "x|"+tc.want)
		}
		if got := string(appendCopyText(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("appendCopyText([]byte %q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A customers row holds each field escaped once, the attributes as their
// JSON object escaped for COPY, and one field per column.
func TestAppendCopyRow(t *testing.T) {
	for _, tc := range []struct {
		attrs map[string]string
		want  string // the attributes field
	}{
		{nil, `{}`},
		{map[string]string{"city": "London"}, `{"city":"London"}`},
		{map[string]string{"z": "last", "a": "first", "m": "tab\there", "q": `say "hi" \ back`, "n": "new\nline", "u": "Zoë 日本"},
			`{"a":"first","m":"tab\\there","n":"new\\nline","q":"say \\"hi\\" \\\\ back","u":"Zoë 日本","z":"last"}`},
	} {
		d := Delivery{Contact: contact.Contact{ExternalID: "C-1", Email: "a\tb@example.com", Attributes: contact.AttrsOf(tc.attrs)},
			CRMID: "ct_1", Fingerprint: "fp", File: "f.csv", Line: 2}
		got, _ := appendCopyRow(nil, nil, 7, &d)
		want := "C-1\ta\\tb@example.com\t\t\t\t" + tc.want + "\tct_1\tfp\t7\tf.csv\t2\n"
		if string(got) != want {
			t.Errorf("attributes %v: row\n%q\nwant\n%q", tc.attrs, got, want)
		}
		if n := strings.Count(string(got), "\t") + 1; n != len(customerColumns) {
			t.Errorf("row %q: %d fields, want one a column (%d)", got, n, len(customerColumns))
		}
	}
}

// The COPY writes a row into its buffers: no allocation once they have
// grown.
func TestAppendCopyRowAllocs(t *testing.T) {
	d := Delivery{Contact: contact.Contact{ExternalID: "C-1", Email: "a@example.com", Attributes: contact.Attrs{{Name: "city", Value: "London"},
		{Name: "company", Value: "Acme Ltd"}, {Name: "country", Value: "GB"}, {Name: "created_at", Value: "2020-01-01T00:00:00Z"}}},
		CRMID: "ct_1", Fingerprint: "fp", File: "f.csv", Line: 2}
	b, scratch := appendCopyRow(nil, nil, 7, &d)
	if n := testing.AllocsPerRun(100, func() { b, scratch = appendCopyRow(b[:0], scratch, 7, &d) }); n != 0 {
		t.Errorf("appendCopyRow: %v allocations, want 0", n)
	}
}
