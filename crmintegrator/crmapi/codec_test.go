package crmapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"crmsync/shared/contact"
)

// nasty are strings that exercise every branch of encoding/json's string
// encoder and decoder.
var nasty = []string{
	"",
	"plain",
	`quote " backslash \ slash /`,
	"<script>&amp;</script>",
	"\b\f\n\r\t\x00\x01\x1f\x7f",
	"line\u2028para\u2029",
	"héllo wörld 日本語 🎉",
	"\xff\xfe invalid \xc3 utf8 \xed\xa0\x80 surrogate",
	"\xf4\x90\x80\x80 beyond U+10FFFF",
	"\ufffd already replaced",
	"ends in half a rune \xe6\x97",
	strings.Repeat("long ", 200),
}

func jsonEncode(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sampleContacts() [][]contact.Contact {
	var sets [][]contact.Contact
	sets = append(sets, nil, []contact.Contact{}, []contact.Contact{{}})
	for _, s := range nasty {
		sets = append(sets, []contact.Contact{
			{ExternalID: s, Email: s, FirstName: s, LastName: s, Phone: s, Attributes: contact.AttrsOf(map[string]string{s: s, "k" + s: "v"})},
			{ExternalID: "x", Email: "e@example.com", Attributes: contact.AttrsOf(map[string]string{})},
			{ExternalID: s, Email: "", LastName: s},
		})
	}
	many := make(map[string]string)
	for i := range 40 { // more attributes than the encoder's stack array
		many[fmt.Sprintf("key-%02d", 40-i)] = fmt.Sprint(i)
	}
	// Keys that sort differently bytewise than by rune or case.
	sets = append(sets, []contact.Contact{
		{ExternalID: "m", Email: "m@example.com", Attributes: contact.AttrsOf(many)},
		{ExternalID: "s", Email: "s@example.com", Attributes: contact.AttrsOf(map[string]string{"b": "1", "B": "2", "a": "3", "é": "4", "\xff": "5", "\ufffd": "6", "": "7", "a\x00": "8"})},
	})
	return sets
}

func TestAppendBatchRequest(t *testing.T) {
	for i, cs := range sampleContacts() {
		want := jsonEncode(t, BatchRequest{Contacts: cs})
		if got := AppendBatchRequest(nil, cs); !bytes.Equal(got, want) {
			t.Errorf("set %d: got\n%s\nwant\n%s", i, got, want)
		}
		// Appending keeps what dst holds.
		if got := AppendBatchRequest([]byte("prefix"), cs); !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Errorf("set %d: the prefix was not kept: %q", i, got)
		}
	}
}

func sampleResults() []BatchResponse {
	out := []BatchResponse{{}, {Results: []BatchResult{}}}
	for _, s := range nasty {
		out = append(out, BatchResponse{Results: []BatchResult{
			{ExternalID: s, Status: StatusCreated, ID: s},
			{ExternalID: s, Status: StatusRejected, Error: &ErrorDetail{Code: s, Message: s}},
			{ExternalID: s, Status: s, Error: &ErrorDetail{}},
			{},
		}})
	}
	return out
}

func TestAppendBatchResponse(t *testing.T) {
	for i, r := range sampleResults() {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, '\n')
		got := AppendBatchResponse(nil, r)
		if !bytes.Equal(got, want) {
			t.Errorf("set %d: got\n%s\nwant\n%s", i, got, want)
		}
	}
}

// requestInputs are bodies for the decoder: the fast path must take those
// marked fast, and every one must decode exactly as json.Unmarshal does.
var requestInputs = []struct {
	name string
	body string
	fast bool
}{
	{"empty object", `{}`, true},
	{"no contacts", `{"contacts":[]}`, true},
	{"one contact", `{"contacts":[{"external_id":"a","email":"a@example.com"}]}` + "\n", true},
	{"every field", `{"contacts":[{"external_id":"a","email":"e","first_name":"f","last_name":"l","phone":"p","attributes":{"k":"v","j":""}}]}`, true},
	{"empty attributes", `{"contacts":[{"external_id":"a","attributes":{}}]}`, true},
	{"empty contact", `{"contacts":[{}]}`, true},
	{"fields in any order", `{"contacts":[{"attributes":{"k":"v"},"phone":"p","email":"e","external_id":"a"}]}`, true},
	{"white space", " \t\r\n{ \"contacts\" : [ { \"external_id\" : \"a\" , \"attributes\" : { \"k\" : \"v\" } } , {} ] } \n\t", true},
	{"escapes", `{"contacts":[{"external_id":"\"\\\/\b\f\n\r\t","email":"\u003c\u0026\u003E\u2028\u00e9\uFFFD\u0000"}]}`, true},
	{"surrogate pair", `{"contacts":[{"external_id":"\ud83c\udf89"}]}`, true},
	{"lone high surrogate", `{"contacts":[{"external_id":"a\ud83cb"}]}`, true},
	{"lone low surrogate", `{"contacts":[{"external_id":"\udf89"}]}`, true},
	{"two high surrogates", `{"contacts":[{"external_id":"\ud83c\ud83c\udf89"}]}`, true},
	{"surrogate then escape", `{"contacts":[{"external_id":"\ud83c\n"}]}`, true},
	{"raw UTF-8", `{"contacts":[{"external_id":"日本語 🎉","email":"é"}]}`, true},
	{"repeated attribute", `{"contacts":[{"attributes":{"k":"1","k":"2"}}]}`, true},

	{"null", `null`, false},
	{"empty", ``, false},
	{"only space", ` `, false},
	{"contacts null", `{"contacts":null}`, false},
	{"contact null", `{"contacts":[null]}`, false},
	{"field null", `{"contacts":[{"external_id":null}]}`, false},
	{"attributes null", `{"contacts":[{"attributes":null}]}`, false},
	{"attribute null", `{"contacts":[{"attributes":{"k":null}}]}`, false},
	{"number", `{"contacts":[{"external_id":12}]}`, false},
	{"number attribute", `{"contacts":[{"attributes":{"k":1}}]}`, false},
	{"bool", `{"contacts":[{"email":true}]}`, false},
	{"type error then more", `{"contacts":[{"external_id":1,"email":"e"},{"external_id":"b"}]}`, false},
	{"unknown field", `{"contacts":[{"external_id":"a","nick":"x"}]}`, false},
	{"unknown top field", `{"contacts":[],"extra":1}`, false},
	{"upper case field", `{"contacts":[{"EMAIL":"e"}]}`, false},
	{"upper case top", `{"Contacts":[{"email":"e"}]}`, false},
	{"kelvin sign folds to k", "{\"contacts\":[{\"\u212aey\":\"x\",\"external_id\":\"a\"}]}", false},
	{"escaped field name", `{"contacts":[{"\u0065mail":"e"}]}`, false},
	{"duplicate field", `{"contacts":[{"email":"a","email":"b"}]}`, false},
	{"duplicate attributes", `{"contacts":[{"attributes":{"a":"1"},"attributes":{"b":"2"}}]}`, false},
	{"duplicate contacts", `{"contacts":[{"email":"a","phone":"p"}],"contacts":[{"email":"b"}]}`, false},
	{"field and folded twin", `{"contacts":[{"email":"a","Email":"b"}]}`, false},
	{"invalid UTF-8", "{\"contacts\":[{\"email\":\"\xff\"}]}", false},
	{"encoded surrogate", "{\"contacts\":[{\"email\":\"\xed\xa0\x80\"}]}", false},
	{"control byte", "{\"contacts\":[{\"email\":\"a\nb\"}]}", false},
	{"bad escape", `{"contacts":[{"email":"\x41"}]}`, false},
	{"single quote escape", `{"contacts":[{"email":"\'"}]}`, false},
	{"short unicode escape", `{"contacts":[{"email":"\u12"}]}`, false},
	{"bad hex", `{"contacts":[{"email":"\u12g4"}]}`, false},
	{"trailing comma", `{"contacts":[{"email":"a"},]}`, false},
	{"trailing comma in object", `{"contacts":[{"email":"a",}]}`, false},
	{"missing colon", `{"contacts":[{"email" "a"}]}`, false},
	{"trailing data", `{"contacts":[]} x`, false},
	{"two documents", `{"contacts":[]}{}`, false},
	{"truncated", `{"contacts":[{"email":"a"`, false},
	{"truncated string", `{"contacts":[{"email":"a`, false},
	{"truncated escape", `{"contacts":[{"email":"\`, false},
	{"array", `[]`, false},
	{"string", `"contacts"`, false},
	{"contacts object", `{"contacts":{}}`, false},
	{"non-breaking space", "{\"contacts\":[]}\u00a0", false},
	{"byte order mark", "\ufeff{\"contacts\":[]}", false},
}

// sameUnmarshal fails the test unless UnmarshalBatchRequest and
// json.Unmarshal agree on data: the same value, the same error.
func sameUnmarshal(t testing.TB, data []byte) {
	t.Helper()
	var got, want BatchRequest
	gotErr := UnmarshalBatchRequest(data, &got)
	wantErr := json.Unmarshal(data, &want)
	if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || reflect.TypeOf(gotErr) != reflect.TypeOf(wantErr) {
		t.Fatalf("%q: got error %v, want %v", data, gotErr, wantErr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: got %#v, want %#v", data, got, want)
	}
	if r, ok := parseBatchRequest(data); ok {
		if wantErr != nil {
			t.Fatalf("%q: the fast path accepted what encoding/json refuses: %v", data, wantErr)
		}
		if !reflect.DeepEqual(r, want) {
			t.Fatalf("%q: fast path got %#v, want %#v", data, r, want)
		}
	}
}

func TestUnmarshalBatchRequest(t *testing.T) {
	for _, tc := range requestInputs {
		t.Run(tc.name, func(t *testing.T) {
			sameUnmarshal(t, []byte(tc.body))
			if _, ok := parseBatchRequest([]byte(tc.body)); ok != tc.fast {
				t.Errorf("fast path took it: %v, want %v", ok, tc.fast)
			}
		})
	}
	// Everything the encoder writes takes the fast path.
	for i, cs := range sampleContacts() {
		body := AppendBatchRequest(nil, cs)
		sameUnmarshal(t, body)
		if _, ok := parseBatchRequest(body); !ok && cs != nil { // null is left to encoding/json
			t.Errorf("set %d: the fast path refused the encoder's output %q", i, body)
		}
	}
}

func TestUnmarshalBatchRequestIntoUsedValue(t *testing.T) {
	// A request that already holds contacts is merged into by
	// encoding/json; that stays encoding/json's job.
	body := []byte(`{"contacts":[{"email":"b"}]}`)
	got := BatchRequest{Contacts: []contact.Contact{{ExternalID: "a", Email: "a"}}}
	want := BatchRequest{Contacts: []contact.Contact{{ExternalID: "a", Email: "a"}}}
	if err := UnmarshalBatchRequest(body, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v, want %#v", got, want)
	}
}

var responseInputs = []struct {
	name string
	body string
	fast bool
}{
	{"empty object", `{}`, true},
	{"no results", `{"results":[]}`, true},
	{"created", `{"results":[{"external_id":"a","status":"created","id":"ct_1"}]}` + "\n", true},
	{"rejected", `{"results":[{"external_id":"a","status":"rejected","error":{"code":"c","message":"m \u003c"}}]}`, true},
	{"empty error", `{"results":[{"error":{}}]}`, true},
	{"empty result", `{"results":[{}]}`, true},
	{"white space", "\n{ \"results\" : [ { \"error\" : { \"message\" : \"m\" , \"code\" : \"c\" } , \"id\" : \"\" } ] }\n", true},

	{"error null", `{"results":[{"error":null}]}`, false},
	{"results null", `{"results":null}`, false},
	{"unknown field", `{"results":[{"status":"created","extra":true}]}`, false},
	{"unknown error field", `{"results":[{"error":{"code":"c","hint":"h"}}]}`, false},
	{"duplicate error", `{"results":[{"error":{"code":"c"},"error":{"message":"m"}}]}`, false},
	{"duplicate code", `{"results":[{"error":{"code":"c","code":"d"}}]}`, false},
	{"folded field", `{"results":[{"Status":"created"}]}`, false},
	{"number", `{"results":[{"id":1}]}`, false},
	{"trailing data", `{"results":[]} {"results":[{}]}`, false},
	{"truncated", `{"results":[{"id":"a"}`, false},
	{"empty", ``, false},
	{"invalid UTF-8", "{\"results\":[{\"id\":\"\xc3\"}]}", false},
}

// sameDecode fails the test unless decodeBatchResponse and json.Decoder
// agree on what body yields (length is the Content-Length to claim).
func sameDecode(t testing.TB, body func() io.Reader, length int64) {
	t.Helper()
	var got, want BatchResponse
	gotErr := decodeBatchResponse(body(), length, &got)
	wantErr := json.NewDecoder(body()).Decode(&want)
	if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || reflect.TypeOf(gotErr) != reflect.TypeOf(wantErr) {
		t.Fatalf("got error %v, want %v", gotErr, wantErr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
}

// sameParse fails the test unless parseBatchResponse, when it accepts
// data, agrees with json.Unmarshal.
func sameParse(t testing.TB, data []byte) {
	t.Helper()
	r, ok := parseBatchResponse(data)
	if !ok {
		return
	}
	var want BatchResponse
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatalf("%q: the fast path accepted what encoding/json refuses: %v", data, err)
	}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("%q: fast path got %#v, want %#v", data, r, want)
	}
}

var errBroken = errors.New("connection broken")

// readers are the ways an answer's body may arrive.
func readers(data []byte) map[string]func() io.Reader {
	return map[string]func() io.Reader{
		"whole":        func() io.Reader { return bytes.NewReader(data) },
		"one byte":     func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
		"data and EOF": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) },
		"cut short":    func() io.Reader { return bytes.NewReader(data[:len(data)/2]) },
		"broken": func() io.Reader {
			return io.MultiReader(bytes.NewReader(data[:len(data)/2]), iotest.ErrReader(errBroken))
		},
		"broken after": func() io.Reader { return io.MultiReader(bytes.NewReader(data), iotest.ErrReader(errBroken)) },
	}
}

func TestDecodeBatchResponse(t *testing.T) {
	var bodies [][]byte
	for _, tc := range responseInputs {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.body)
			sameParse(t, data)
			if _, ok := parseBatchResponse(data); ok != tc.fast {
				t.Errorf("fast path took it: %v, want %v", ok, tc.fast)
			}
		})
		bodies = append(bodies, []byte(tc.body))
	}
	for i, r := range sampleResults() {
		body := AppendBatchResponse(nil, r)
		sameParse(t, body)
		if _, ok := parseBatchResponse(body); !ok && r.Results != nil {
			t.Errorf("set %d: the fast path refused the encoder's output %q", i, body)
		}
		bodies = append(bodies, body)
	}
	for i, data := range bodies {
		for name, r := range readers(data) {
			for _, length := range []int64{-1, int64(len(data)), int64(len(data) / 2), int64(len(data)) + 10, maxFastAnswer + 1} {
				t.Run(fmt.Sprintf("%d/%s/length=%d", i, name, length), func(t *testing.T) {
					sameDecode(t, r, length)
				})
			}
		}
	}
}

func TestBatchSizeEstimates(t *testing.T) {
	// Without escapes, the first allocation holds the whole body.
	cs, r := benchContacts(), benchResults()
	if n, body := batchRequestSize(cs), AppendBatchRequest(nil, cs); n < len(body) {
		t.Errorf("batchRequestSize: got %d, want at least %d", n, len(body))
	}
	if n, body := batchResponseSize(r), AppendBatchResponse(nil, r); n < len(body) {
		t.Errorf("batchResponseSize: got %d, want at least %d", n, len(body))
	}
}

// FuzzAppendBatchRequest holds the request encoder to json.Encoder's bytes,
// and the fast decoder to taking every body the encoder writes.
func FuzzAppendBatchRequest(f *testing.F) {
	for _, s := range nasty {
		f.Add(s, s, s, "", s, s, s, uint8(3))
	}
	f.Add("A1", "a@example.com", "Ada", "Lovelace", "+44 20", "company", "Acme & Sons", uint8(1))
	f.Fuzz(func(t *testing.T, ext, email, first, last, phone, key, value string, n uint8) {
		c := contact.Contact{ExternalID: ext, Email: email, FirstName: first, LastName: last, Phone: phone}
		if n > 0 {
			for i := range int(n % 20) { // up to 19 keys: past the scan, into the binary search
				c.Attributes.Set(key+strings.Repeat(value[:min(len(value), i%3)], i), value+last[:min(len(last), i)])
			}
		}
		cs := []contact.Contact{c, {ExternalID: value, Email: key}}
		want := jsonEncode(t, BatchRequest{Contacts: cs})
		got := AppendBatchRequest(nil, cs)
		if !bytes.Equal(got, want) {
			t.Fatalf("got\n%q\nwant\n%q", got, want)
		}
		if _, ok := parseBatchRequest(got); !ok {
			t.Fatalf("the fast path refused the encoder's output %q", got)
		}
		sameUnmarshal(t, got)
	})
}

// FuzzUnmarshalBatchRequest holds UnmarshalBatchRequest to json.Unmarshal
// on any input: the same value and the same error.
func FuzzUnmarshalBatchRequest(f *testing.F) {
	for _, tc := range requestInputs {
		f.Add([]byte(tc.body))
	}
	for _, cs := range sampleContacts() {
		f.Add(AppendBatchRequest(nil, cs))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sameUnmarshal(t, data)
	})
}

// FuzzAppendBatchResponse holds the answer encoder to json.Marshal's bytes.
func FuzzAppendBatchResponse(f *testing.F) {
	for _, s := range nasty {
		f.Add(s, s, s, s, s, true)
	}
	f.Fuzz(func(t *testing.T, ext, status, id, code, msg string, withError bool) {
		r := BatchResponse{Results: []BatchResult{{ExternalID: ext, Status: status, ID: id}, {ExternalID: id, Status: msg}}}
		if withError {
			r.Results[0].Error = &ErrorDetail{Code: code, Message: msg}
		}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, '\n')
		got := AppendBatchResponse(nil, r)
		if !bytes.Equal(got, want) {
			t.Fatalf("got\n%q\nwant\n%q", got, want)
		}
		if _, ok := parseBatchResponse(got); !ok {
			t.Fatalf("the fast path refused the encoder's output %q", got)
		}
		sameParse(t, got)
	})
}

// FuzzDecodeBatchResponse holds the client's answer decoder to
// json.Decoder on any body, whole, cut short or broken off.
func FuzzDecodeBatchResponse(f *testing.F) {
	for _, tc := range responseInputs {
		f.Add([]byte(tc.body), uint16(len(tc.body)+1))
	}
	for _, r := range sampleResults() {
		b := AppendBatchResponse(nil, r)
		f.Add(b, uint16(len(b)+1))
	}
	f.Fuzz(func(t *testing.T, data []byte, claim uint16) {
		sameParse(t, data)
		// The Content-Length the answer claims: unknown (-1), too short,
		// right or too long.
		length := int64(claim)%int64(len(data)+8) - 1
		for _, r := range readers(data) {
			sameDecode(t, r, length)
			sameDecode(t, r, int64(len(data)))
		}
	})
}

// benchContacts is a batch like the integrator's benchmark sends.
func benchContacts() []contact.Contact {
	cs := make([]contact.Contact, MaxBatch)
	for i := range cs {
		id := fmt.Sprintf("B%09d", i)
		cs[i] = contact.Contact{ExternalID: id, Email: id + "@example.com", FirstName: "Ada", LastName: "Lovelace",
			Phone: "+44 20 7946 0000", Attributes: contact.AttrsOf(map[string]string{"company": "Acme & Sons Ltd", "city": "London", "country": "GB", "created_at": "2024-01-01T10:00:00Z"})}
	}
	return cs
}

func benchResults() BatchResponse {
	r := BatchResponse{Results: make([]BatchResult, MaxBatch)}
	for i := range r.Results {
		r.Results[i] = BatchResult{ExternalID: fmt.Sprintf("B%09d", i), Status: StatusCreated, ID: fmt.Sprintf("ct_%08d", i)}
		if i%10 == 0 {
			r.Results[i] = BatchResult{ExternalID: fmt.Sprintf("B%09d", i), Status: StatusRejected,
				Error: &ErrorDetail{Code: contact.CodeInvalidEmail, Message: `email "x" is not a valid address`}}
		}
	}
	return r
}

// go test -run '^$' -bench 'Batch(Request|Response)' -benchmem ./crmintegrator/crmapi/
func BenchmarkEncodeBatchRequest(b *testing.B) {
	cs := benchContacts()
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			buf := new(bytes.Buffer)
			if err := json.NewEncoder(buf).Encode(BatchRequest{Contacts: cs}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			AppendBatchRequest(nil, cs)
		}
	})
}

func BenchmarkDecodeBatchRequest(b *testing.B) {
	body := AppendBatchRequest(nil, benchContacts())
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			var req BatchRequest
			if err := json.Unmarshal(body, &req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			var req BatchRequest
			if err := UnmarshalBatchRequest(body, &req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkEncodeBatchResponse(b *testing.B) {
	r := benchResults()
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			out, err := json.Marshal(r)
			if err != nil {
				b.Fatal(err)
			}
			_ = append(out, '\n')
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			AppendBatchResponse(nil, r)
		}
	})
}

func BenchmarkDecodeBatchResponse(b *testing.B) {
	body := AppendBatchResponse(nil, benchResults())
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			var out BatchResponse
			if err := json.NewDecoder(bytes.NewReader(body)).Decode(&out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			var out BatchResponse
			if err := decodeBatchResponse(bytes.NewReader(body), int64(len(body)), &out); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The generic update body carries every own field of contact.Fields it
// lists (the key as external_id), "" for a cleared one, and the listed
// attributes; unlisted fields stay out.
func TestAppendUpdateRequestCarriesEveryField(t *testing.T) {
	var c contact.Contact
	var names []string
	for i, f := range &contact.Fields {
		f.Set(&c, "v"+strings.Repeat("x", i))
		names = append(names, f.Name)
	}
	c.Attributes = contact.AttrsOf(map[string]string{"company": "Acme", "unlisted": "x"})
	body := AppendUpdateRequest(nil, []Update{
		{CRMID: "ct_1", Fields: append(names, contact.AttributePrefix+"company", contact.AttributePrefix+"city"), Contact: c},
		{CRMID: "ct_2", Fields: names[1:], Contact: contact.Contact{ExternalID: "K2"}},
	})
	var got struct {
		Contacts []map[string]any `json:"contacts"`
	}
	if err := json.Unmarshal(body, &got); err != nil || len(got.Contacts) != 2 {
		t.Fatalf("%s: %v", body, err)
	}
	for _, f := range &contact.Fields {
		if got.Contacts[0][f.Name] != f.Get(&c) {
			t.Errorf("field %s: got %v, want %q", f.Name, got.Contacts[0][f.Name], f.Get(&c))
		}
		if f.Name != contact.Fields[0].Name && got.Contacts[1][f.Name] != "" {
			t.Errorf("cleared field %s: got %v, want \"\"", f.Name, got.Contacts[1][f.Name])
		}
	}
	want := map[string]any{"company": "Acme", "city": ""}
	if !reflect.DeepEqual(got.Contacts[0]["attributes"], want) || got.Contacts[0]["id"] != "ct_1" {
		t.Errorf("got %s, want id ct_1 and attributes %v", body, want)
	}
	if _, ok := got.Contacts[1]["attributes"]; ok {
		t.Errorf("an update listing no attribute carries attributes: %s", body)
	}
	if again := AppendUpdateRequest(nil, []Update{{CRMID: "ct_1", Fields: names, Contact: c}}); string(again) != string(AppendUpdateRequest(nil, []Update{{CRMID: "ct_1", Fields: names, Contact: c}})) {
		t.Error("the same update encodes to other bytes")
	}
}

// The create body carries every field of contact.Fields under its name.
func TestAppendBatchRequestCarriesEveryField(t *testing.T) {
	var c contact.Contact
	for i, f := range &contact.Fields {
		f.Set(&c, "v"+strings.Repeat("x", i))
	}
	var got struct {
		Contacts []map[string]any `json:"contacts"`
	}
	body := AppendBatchRequest(nil, []contact.Contact{c})
	if err := json.Unmarshal(body, &got); err != nil || len(got.Contacts) != 1 {
		t.Fatalf("%s: %v", body, err)
	}
	for _, f := range &contact.Fields {
		if got.Contacts[0][f.Name] != f.Get(&c) {
			t.Errorf("field %s: got %v, want %q", f.Name, got.Contacts[0][f.Name], f.Get(&c))
		}
	}
}
