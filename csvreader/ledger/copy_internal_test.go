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

// A row written with the reader's CopyAttributes is the row COPY would
// write from the contact's own attributes, escapes included.
func TestCopyRowWithCopyAttributes(t *testing.T) {
	for _, attrs := range []map[string]string{
		nil,
		{},
		{"city": "London"},
		{"z": "last", "a": "first", "m": "tab\there", "q": `say "hi" \ back`, "n": "new\nline", "u": "Zoë 日本"},
	} {
		d := Delivery{Contact: contact.Contact{ExternalID: "C-1", Email: "a@example.com", Attributes: contact.AttrsOf(attrs)},
			CRMID: "ct_1", Fingerprint: "fp", File: "f.csv", Line: 2}
		want, _ := appendCopyRow(nil, nil, 7, &d)
		d.CopyAttributes = CopyAttributes(d.Contact.Attributes)
		got, _ := appendCopyRow(nil, nil, 7, &d)
		if string(got) != string(want) {
			t.Errorf("attributes %v: row\n%q\nwant\n%q", attrs, got, want)
		}
		if n := strings.Count(string(got), "\t") + 1; n != len(customerColumns) || !strings.HasSuffix(string(got), "\n") {
			t.Errorf("row %q: %d fields, want one a column (%d) and a newline", got, n, len(customerColumns))
		}
	}
}

// The reader computes CopyAttributes for every row: one allocation, the
// string.
func TestCopyAttributesAllocs(t *testing.T) {
	sorted := []contact.Attr{{Name: "city", Value: "London"}, {Name: "company", Value: "Acme Ltd"},
		{Name: "country", Value: "GB"}, {Name: "created_at", Value: "2020-01-01T00:00:00Z"}}
	if n := testing.AllocsPerRun(100, func() { _ = CopyAttributes(sorted) }); n != 1 {
		t.Errorf("CopyAttributes: %v allocations, want 1", n)
	}
}
