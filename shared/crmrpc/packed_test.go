package crmrpc

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"fmt"
	"slices"
	"strings"
	"testing"

	"crmsync/shared/contact"
)

func packedRecordsForTest() []Record {
	return []Record{
		{Contact: contact.Contact{ExternalID: "C-1", Email: "ada@example.com", FirstName: "Ada", LastName: "Lovelace", Phone: "+44 20",
			Attributes: contact.AttrsOf(map[string]string{"company": "Analytical Engines", "city": "London", "": "empty name", "empty value": ""})}},
		{MaybeSent: true, Contact: contact.Contact{ExternalID: "C-2", Email: "bad"}},
		{},
		{Contact: contact.Contact{ExternalID: "C-\xff\x00", Email: strings.Repeat("é", 300), Phone: strings.Repeat("9", 128),
			Attributes: contact.AttrsOf(map[string]string{strings.Repeat("k", 200): strings.Repeat("v", 20000)})}},
	}
}

func TestPackedRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		recs []Record
	}{
		{"none", nil},
		{"one empty", []Record{{}}},
		{"empty attributes", []Record{{Contact: contact.Contact{ExternalID: "x", Attributes: contact.AttrsOf(map[string]string{})}}}},
		{"mixed", packedRecordsForTest()},
		{"updates", append(packedRecordsForTest(),
			Record{CRMID: "ct_00000007", Fields: []string{"email", "attributes.company"}, Contact: contact.Contact{ExternalID: "C-7", Email: "new@example.com"}},
			Record{CRMID: "x", Fields: []string{}, MaybeSent: true})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := AppendPackedRecords(nil, tc.recs)
			got, err := UnpackRecords(string(p), len(tc.recs))
			if err != nil {
				t.Fatalf("UnpackRecords: %v", err)
			}
			if !equalRecords(got, tc.recs) {
				t.Fatalf("got %+v, want %+v", got, tc.recs)
			}
			if want := gobRoundTrip(t, tc.recs); !equalRecords(got, want) {
				t.Fatalf("got %+v, gob gives %+v", got, want)
			}
		})
	}
}

// The layout is the contract: pin it, byte by byte.
func TestPackedLayout(t *testing.T) {
	recs := []Record{
		{MaybeSent: true, Contact: contact.Contact{ExternalID: "id", Email: "a@b.c", Attributes: contact.AttrsOf(map[string]string{"k": "vv"})}},
		{Contact: contact.Contact{Phone: strings.Repeat("9", 130)}},
	}
	want := []byte{1, 2, // version, count
		1, 2, 'i', 'd', 5, 'a', '@', 'b', '.', 'c', 0, 0, 0, 1, 1, 'k', 2, 'v', 'v',
		0, 0, 0, 0, 0, 0x82, 0x01}
	want = append(want, strings.Repeat("9", 130)...)
	want = append(want, 0)
	if got := AppendPackedRecords(nil, recs); !bytes.Equal(got, want) {
		t.Fatalf("got  %x\nwant %x", got, want)
	}
}

// Version 2 is version 1 plus an update's CRM id and field names; a block
// without updates is written as version 1, which older daemons read.
func TestPackedLayoutUpdate(t *testing.T) {
	recs := []Record{
		{Contact: contact.Contact{ExternalID: "id"}},
		{CRMID: "c1", Fields: []string{"email", "attributes.k"}, Contact: contact.Contact{ExternalID: "k", Email: "e"}},
	}
	want := []byte{2, 2, // version, count
		0, 2, 'i', 'd', 0, 0, 0, 0, 0,
		2, 1, 'k', 1, 'e', 0, 0, 0, 0, 2, 'c', '1', 2, 5, 'e', 'm', 'a', 'i', 'l', 12}
	want = append(want, "attributes.k"...)
	if got := AppendPackedRecords(nil, recs); !bytes.Equal(got, want) {
		t.Fatalf("got  %x\nwant %x", got, want)
	}
	if got := AppendPackedRecords(nil, recs[:1]); got[0] != 1 {
		t.Fatalf("a block of creates is written as version %d, want 1", got[0])
	}
}

// Every own field of contact.Fields, the CRM id and the field names cross
// both encodings: a field added to contact.Fields that a codec drops fails
// here.
func TestPackedCarriesEveryField(t *testing.T) {
	var rec Record
	names := []string{}
	for i, f := range &contact.Fields {
		f.Set(&rec.Contact, "value of "+f.Name+strings.Repeat("x", i))
		names = append(names, f.Name)
	}
	rec.Contact.Attributes = contact.AttrsOf(map[string]string{"company": "Acme"})
	rec.CRMID, rec.Fields = "ct_00000001", append(names, contact.AttributePrefix+"company")
	for _, tc := range []struct {
		name string
		got  func() Record
	}{
		{"packed", func() Record {
			got, err := UnpackRecords(string(AppendPackedRecords(nil, []Record{rec})), 1)
			if err != nil {
				t.Fatal(err)
			}
			return got[0]
		}},
		{"gob", func() Record { return gobRoundTrip(t, []Record{rec})[0] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.got()
			for _, f := range &contact.Fields {
				if g, w := f.Get(&got.Contact), f.Get(&rec.Contact); g != w {
					t.Errorf("%s: got %q, want %q", f.Name, g, w)
				}
			}
			if got.CRMID != rec.CRMID || !slices.Equal(got.Fields, rec.Fields) || !slices.Equal(got.Contact.Attributes, rec.Contact.Attributes) {
				t.Errorf("got %+v, want %+v", got, rec)
			}
		})
	}
}

func TestUnpackRecordsRefuses(t *testing.T) {
	valid := AppendPackedRecords(nil, []Record{{Contact: contact.Contact{ExternalID: "id", Email: "e", Attributes: contact.AttrsOf(map[string]string{"k": "v"})}}})
	// valid is 01 01 | 00 02 'i' 'd' 01 'e' 00 00 00 01 01 'k' 01 'v'
	cat := func(parts ...[]byte) string { return string(bytes.Join(parts, nil)) }
	for _, tc := range []struct {
		name, p  string
		code     string
		contains string
	}{
		{"empty", "", CodeMalformedCall, "at byte 0: empty"},
		{"version 0", "\x00\x00", CodeMalformedCall, "version 0, this daemon reads versions 1 to 2"},
		{"version 3", "\x03\x00", CodeMalformedCall, "version 3"},
		{"update flag in version 1", "\x01\x01\x02\x00\x00\x00\x00\x00\x00", CodeMalformedCall, "record 0: flags at byte 2: unknown flags 0x02 in version 1"},
		{"unknown flag in version 2", "\x02\x01\x04\x00\x00\x00\x00\x00\x00", CodeMalformedCall, "unknown flags 0x04 in version 2"},
		{"update without crm id", "\x02\x01\x02\x00\x00\x00\x00\x00\x00\x00\x00", CodeMalformedCall, "record 0: crm id at byte 9: empty in an update"},
		{"update truncated", "\x02\x01\x02\x00\x00\x00\x00\x00\x00", CodeMalformedCall, "record 0: crm id at byte 9: truncated"},
		{"field count too big", "\x02\x01\x02\x00\x00\x00\x00\x00\x00\x01x\x05\x00", CodeMalformedCall, "record 0: field count at byte 11: 5 field names cannot fit in the 1 bytes left"},
		{"no count", "\x01", CodeMalformedCall, "record count at byte 1: truncated"},
		{"count overflows", cat([]byte{1}, bytes.Repeat([]byte{0xff}, 10), []byte{1}), CodeMalformedCall, "overflows 64 bits"},
		{"count too big for the bytes", "\x01\x02" + "\x00\x00\x00\x00\x00\x00\x00", CodeMalformedCall, "2 records cannot fit in the 7 bytes left"},
		{"huge count", cat([]byte{1}, binary.AppendUvarint(nil, 1<<62)), CodeMalformedCall, "cannot fit"},
		{"more than max", cat([]byte{1, 4}, bytes.Repeat([]byte{0, 0, 0, 0, 0, 0, 0}, 4)), CodeTooManyRecords,
			"4 records in one call, at most 3 allowed: send smaller blocks"},
		{"string past the end", "\x01\x01\x00\x00\x09abc\x00\x00\x00\x00", CodeMalformedCall, "record 0: email at byte 4: length 9 exceeds the 7 bytes left"},
		{"truncated record", string(valid[:len(valid)-1]), CodeMalformedCall, "record 0: attribute value at byte 14: length 1 exceeds the 0 bytes left"},
		{"attribute count too big", cat(valid[:11], []byte{5, 0, 0, 0, 0}), CodeMalformedCall, "record 0: attribute count at byte 11: 5 attributes cannot fit in the 4 bytes left"},
		{"duplicate attribute", cat(valid[:11], []byte{2, 1, 'k', 0, 1, 'k', 1, 'v'}), CodeMalformedCall, "record 0: attributes at byte 19: 2 attributes with only 1 distinct names"},
		{"duplicate attribute, apart", cat(valid[:11], []byte{3, 1, 'k', 0, 1, 'a', 0, 1, 'k', 1, 'v'}), CodeMalformedCall, "record 0: attributes at byte 22: 3 attributes with only 2 distinct names"},
		{"trailing bytes", cat(valid, []byte{0}), CodeMalformedCall, "at byte 16: 1 bytes after the last record"},
		{"trailing bytes, no records", "\x01\x00\x00", CodeMalformedCall, "1 bytes after the last record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := UnpackRecords(tc.p, 3)
			if err == nil || err.Code != tc.code || !strings.Contains(err.Message, tc.contains) {
				t.Fatalf("got %v, %v; want %s containing %q", recs, err, tc.code, tc.contains)
			}
			if !err.Fatal() {
				t.Errorf("%s is not fatal", err.Code)
			}
		})
	}
}

// Every field of a block shares the payload's bytes: decoding costs one
// allocation for the records and one per packedAttrArena attributes, none
// per field or per record.
func TestUnpackRecordsAllocations(t *testing.T) {
	recs := make([]Record, 100)
	for i := range recs {
		recs[i].Contact = contact.Contact{ExternalID: "id", Email: "a@b.c", FirstName: "F", LastName: "L", Phone: "P",
			Attributes: contact.AttrsOf(map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"})}
	}
	p := string(AppendPackedRecords(nil, recs))
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := UnpackRecords(p, len(recs)); err != nil {
			t.Fatal(err)
		}
	})
	if want := float64(1 + (4*len(recs)+packedAttrArena-1)/packedAttrArena); allocs > want {
		t.Errorf("got %v allocations, want at most %v", allocs, want)
	}
}

// Readers before contact.Attrs wrote a map's attributes in its random
// order: they decode sorted, the same as in order.
func TestUnpackRecordsSortsAttributes(t *testing.T) {
	p := string([]byte{1, 1, 0, 2, 'i', 'd', 1, 'e', 0, 0, 0, 3, 1, 'z', 1, '1', 1, 'b', 1, '2', 1, 'm', 1, '3'})
	recs, err := UnpackRecords(p, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := contact.Attrs{{Name: "b", Value: "2"}, {Name: "m", Value: "3"}, {Name: "z", Value: "1"}}
	if len(recs) != 1 || !slices.Equal(recs[0].Contact.Attributes, want) {
		t.Fatalf("got %+v, want attributes %v", recs, want)
	}
	if again := AppendPackedRecords(nil, recs); string(again) != string([]byte{1, 1, 0, 2, 'i', 'd', 1, 'e', 0, 0, 0, 3, 1, 'b', 1, '2', 1, 'm', 1, '3', 1, 'z', 1, '1'}) {
		t.Errorf("re-packed as %q, want the attributes in order", again)
	}
}

// FuzzPackedRecords checks the packed encoding two ways. The input as a
// payload: decoding never panics, refuses with one of two codes, and what
// it accepts encodes and decodes back to itself. The input as records (the
// fuzzDeliver line format): packing and unpacking them gives what gob's
// encoding and decoding gives.
func FuzzPackedRecords(f *testing.F) {
	const maxRecords = 50
	f.Add([]byte{})
	f.Add([]byte("\x01\x00"))
	f.Add(AppendPackedRecords(nil, packedRecordsForTest()[:3]))
	f.Add([]byte("C-1|ada@example.com|Ada|Lovelace|+44 20|company=Analytical Engines;city=London\n~C-2|x|||\n"))
	f.Add([]byte("\x01\x01\x00\x00\x00\x00\x00\x00\x02\x01k\x00\x01k\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := UnpackRecords(string(data), maxRecords)
		switch {
		case err != nil:
			if err.Code != CodeMalformedCall && err.Code != CodeTooManyRecords {
				t.Fatalf("refused with %s: %s", err.Code, err.Message)
			}
			if recs != nil {
				t.Fatalf("refused (%v) with %d records", err, len(recs))
			}
		case len(recs) > maxRecords:
			t.Fatalf("accepted %d records, at most %d allowed", len(recs), maxRecords)
		default:
			again, err := UnpackRecords(string(AppendPackedRecords(nil, recs)), maxRecords)
			if err != nil || !equalRecords(again, recs) {
				t.Fatalf("re-encoded: got %+v, %v; want %+v", again, err, recs)
			}
		}

		recs = recordsFromLines(data)
		got, err := UnpackRecords(string(AppendPackedRecords(nil, recs)), len(recs))
		if err != nil {
			t.Fatalf("UnpackRecords of %d records: %v", len(recs), err)
		}
		if want := gobRoundTrip(t, recs); !equalRecords(got, want) || !equalRecords(got, recs) {
			t.Fatalf("packed gives %+v, gob %+v, sent %+v", got, want, recs)
		}
	})
}

// recordsFromLines reads records one per line, fields separated by '|':
// external_id|email|first_name|last_name|phone|k=v;k=v, a leading '~'
// for MaybeSent. Any byte may appear in a field.
func recordsFromLines(data []byte) []Record {
	var recs []Record
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		var r Record
		if rest, ok := bytes.CutPrefix(line, []byte("~")); ok {
			r.MaybeSent, line = true, rest
		}
		f := strings.SplitN(string(line), "|", 6)
		f = append(f, make([]string, 6-len(f))...)
		r.Contact = contact.Contact{ExternalID: f[0], Email: f[1], FirstName: f[2], LastName: f[3], Phone: f[4]}
		if f[5] != "" {
			for kv := range strings.SplitSeq(f[5], ";") {
				k, v, _ := strings.Cut(kv, "=")
				r.Contact.Attributes.Set(k, v)
			}
		}
		recs = append(recs, r)
	}
	return recs
}

func gobRoundTrip(t *testing.T, recs []Record) []Record {
	t.Helper()
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(&DeliverArgs{Records: GobRecords(recs)}); err != nil {
		t.Fatal(err)
	}
	var got DeliverArgs
	if err := gob.NewDecoder(&b).Decode(&got); err != nil {
		t.Fatal(err)
	}
	out := make([]Record, len(got.Records))
	for i := range got.Records {
		out[i] = got.Records[i].Record()
	}
	return out
}

// equalRecords compares records as the daemon sees them: a nil and an
// empty slice or map are the same.
func equalRecords(a, b []Record) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := &a[i].Contact, &b[i].Contact
		if a[i].MaybeSent != b[i].MaybeSent || a[i].CRMID != b[i].CRMID || !slices.Equal(a[i].Fields, b[i].Fields) ||
			!slices.Equal(x.Attributes, y.Attributes) {
			return false
		}
		for _, f := range &contact.Fields {
			if f.Get(x) != f.Get(y) {
				return false
			}
		}
	}
	return true
}

// PackedASCII vouches for the strings of a call only when every byte past
// the header is ASCII: a count of 128 records or more (two bytes of
// uvarint, the second above 0x7f) does not spoil it, a long string's
// length or a non-ASCII byte does.
func TestPackedASCII(t *testing.T) {
	recs := func(n int, c contact.Contact) []Record {
		out := make([]Record, n)
		for i := range out {
			out[i] = Record{Contact: c}
			out[i].Contact.ExternalID = fmt.Sprintf("C-%d", i)
		}
		return out
	}
	plain := contact.Contact{Email: "a@example.com", FirstName: "Ada", Attributes: contact.AttrsOf(map[string]string{"city": "London"})}
	for _, tc := range []struct {
		name   string
		packed string
		want   bool
	}{
		{"one record", string(AppendPackedRecords(nil, recs(1, plain))), true},
		{"1000 records", string(AppendPackedRecords(nil, recs(1000, plain))), true},
		{"a non-ASCII name", string(AppendPackedRecords(nil, recs(3, contact.Contact{Email: "a@example.com", FirstName: "Zoë"}))), false},
		{"invalid UTF-8", string(AppendPackedRecords(nil, recs(3, contact.Contact{Email: "a@example.com", LastName: "\xff"}))), false},
		{"a 200-byte value", string(AppendPackedRecords(nil, recs(2, contact.Contact{Email: "a@example.com",
			Attributes: contact.AttrsOf(map[string]string{"note": strings.Repeat("x", 200)})}))), false},
		{"empty", "", false},
		{"a count cut short", "\x01\x80", false},
	} {
		if got := PackedASCII(tc.packed); got != tc.want {
			t.Errorf("%s: PackedASCII = %v, want %v", tc.name, got, tc.want)
		}
	}
}
