package crmapi

import (
	"bytes"
	"encoding/json"
	"io"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"crmsync/shared/contact"
)

// The batch bodies are decoded by a small parser that knows only their
// shape: objects with the exact field names, string values, JSON white
// space. Whatever else it meets — another field, a field twice, a name in
// other case, null, a number, invalid UTF-8, a lone surrogate, bytes after
// the value — makes it give up, and the whole document goes to
// encoding/json. So every error message and every edge case stays
// encoding/json's, and what the parser accepts it decodes to exactly what
// json.Unmarshal would (codec_test.go's fuzz targets compare the two).
//
// Every string of one object (a contact, a result) shares one allocation.

// UnmarshalBatchRequest decodes a body of POST /v1/contacts/batch into req:
// json.Unmarshal(data, req), with the same result and the same errors, only
// faster for the bodies AppendBatchRequest writes.
func UnmarshalBatchRequest(data []byte, req *BatchRequest) error {
	if req.Contacts == nil {
		if r, ok := parseBatchRequest(data); ok {
			*req = r
			return nil
		}
	}
	return json.Unmarshal(data, req)
}

// maxFastAnswer caps the Content-Length of an answer read whole for the
// fast parser; a larger one is streamed to encoding/json as before. 100
// results fit many times over.
const maxFastAnswer = 4 << 20

// decodeBatchResponse reads the 200 answer of a batch from body, whose
// Content-Length is length (-1: unknown), into out: what
// json.NewDecoder(body).Decode(out) would do, same result and same errors.
func decodeBatchResponse(body io.Reader, length int64, out *BatchResponse) error {
	if length < 0 || length > maxFastAnswer || out.Results != nil {
		return json.NewDecoder(body).Decode(out)
	}
	buf := make([]byte, length)
	n, err := readFull(body, buf)
	if n == len(buf) {
		if r, ok := parseBatchResponse(buf); ok {
			*out = r
			return nil
		}
	}
	// The decoder sees the stream it would have read: the bytes already
	// read, then the rest of the body, or the error reading stopped at.
	rest := body
	if err != nil {
		rest = errReader{err}
	}
	return json.NewDecoder(io.MultiReader(bytes.NewReader(buf[:n]), rest)).Decode(out)
}

// readFull is io.ReadFull that keeps the reader's own error (io.ReadFull
// turns an early io.EOF into io.ErrUnexpectedEOF, which json.Decoder
// would not have seen).
func readFull(r io.Reader, buf []byte) (n int, err error) {
	for n < len(buf) && err == nil {
		var m int
		m, err = r.Read(buf[n:])
		n += m
	}
	return n, err
}

// errReader replays the error a read of the body ended with.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// maxPresize caps the slices list sizes up front: attributes, errors and
// strings hold braces too.
const maxPresize = 4 * MaxBatch

// parseBatchRequest is the fast path of UnmarshalBatchRequest; ok is false
// when data is not a batch request it fully understands.
func parseBatchRequest(data []byte) (req BatchRequest, ok bool) {
	p := parser{data: data, buf: make([]byte, 0, 1024), attrs: make([]span, 0, 32)}
	req.Contacts, ok = list(&p, "contacts", p.contact)
	return req, ok
}

// parseBatchResponse is the fast path of decodeBatchResponse; ok is false
// when data is not a batch answer it fully understands.
func parseBatchResponse(data []byte) (resp BatchResponse, ok bool) {
	p := parser{data: data, buf: make([]byte, 0, 1024)}
	resp.Results, ok = list(&p, "results", p.result)
	return resp, ok
}

// list reads a whole document {"<key>":[item,...]}, or {}, calling item
// for each element.
func list[T any](p *parser, key string, item func(*T) bool) ([]T, bool) {
	if !p.next('{') {
		return nil, false
	}
	if p.next('}') {
		return nil, p.end()
	}
	if !p.key(key) || !p.next('[') {
		return nil, false
	}
	// Each item is an object: counting braces (a fast count of one byte)
	// bounds their number and sizes the slice in one go.
	items := make([]T, 0, min(max(1, bytes.Count(p.data, []byte{'{'})-1), maxPresize))
	if !p.next(']') {
		for {
			var zero T
			items = append(items, zero)
			if !item(&items[len(items)-1]) {
				return nil, false
			}
			if p.next(',') {
				continue
			}
			if !p.next(']') {
				return nil, false
			}
			break
		}
	}
	return items, p.next('}') && p.end()
}

// parser reads one JSON document of a known shape. Its methods report
// false on anything they do not fully understand.
type parser struct {
	data []byte
	pos  int
	buf  []byte // the decoded strings of the current object
	// attrs holds the current contact's attributes as spans of buf: key,
	// value, key, value...
	attrs []span
	// arena is where contacts' Attrs are carved from, so that a batch's
	// attributes take a few allocations rather than one per contact.
	arena []contact.Attr
}

// span is a decoded string: buf[start:end].
type span struct{ start, end int }

func (p *parser) space() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// next skips white space and consumes c if it comes next.
func (p *parser) next(c byte) bool {
	p.space()
	if p.pos < len(p.data) && p.data[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

// end reports whether only white space is left.
func (p *parser) end() bool {
	p.space()
	return p.pos == len(p.data)
}

// name reads an object key and the colon after it and returns the key's
// raw bytes. A key with an escape is not understood (encoding/json would
// unescape it, and then also match it case-insensitively).
func (p *parser) name() ([]byte, bool) {
	if !p.next('"') {
		return nil, false
	}
	start := p.pos
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case '"':
			k := p.data[start:p.pos]
			p.pos++
			return k, p.next(':')
		case '\\':
			return nil, false
		}
		p.pos++
	}
	return nil, false
}

// key reads the key want and the colon after it.
func (p *parser) key(want string) bool {
	k, ok := p.name()
	return ok && string(k) == want
}

// str reads a string value and appends its decoded content to p.buf.
func (p *parser) str() (span, bool) {
	if !p.next('"') {
		return span{}, false
	}
	start := len(p.buf)
	for {
		// A run of bytes copied as they are. Multi-byte UTF-8 sequences
		// hold no ASCII bytes, so a run never splits one.
		i, high := p.pos, byte(0)
		for i < len(p.data) && plain[p.data[i]] {
			high |= p.data[i]
			i++
		}
		run := p.data[p.pos:i]
		if high >= utf8.RuneSelf && !utf8.Valid(run) {
			return span{}, false // encoding/json replaces the bad bytes
		}
		p.buf = append(p.buf, run...)
		p.pos = i
		if i == len(p.data) {
			return span{}, false
		}
		switch p.data[i] {
		case '"':
			p.pos++
			return span{start, len(p.buf)}, true
		case '\\':
			if !p.escape() {
				return span{}, false
			}
		default: // a control byte: invalid JSON
			return span{}, false
		}
	}
}

// plain marks the bytes a JSON string holds as they are: all but control
// bytes, '"' and '\\'.
var plain = func() (t [256]bool) {
	for b := ' '; b < 256; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// escape decodes the escape at p.pos as encoding/json's unquote does.
func (p *parser) escape() bool {
	if p.pos+1 >= len(p.data) {
		return false
	}
	var b byte
	switch p.data[p.pos+1] {
	case '"', '\\', '/':
		b = p.data[p.pos+1]
	case 'b':
		b = '\b'
	case 'f':
		b = '\f'
	case 'n':
		b = '\n'
	case 'r':
		b = '\r'
	case 't':
		b = '\t'
	case 'u':
		r := getu4(p.data[p.pos:])
		if r < 0 {
			return false
		}
		p.pos += 6
		if utf16.IsSurrogate(r) {
			// A valid pair is one rune; anything else is U+FFFD, and
			// what follows is read on its own.
			r = utf16.DecodeRune(r, getu4(p.data[p.pos:]))
			if r != unicode.ReplacementChar {
				p.pos += 6
			}
		}
		p.buf = utf8.AppendRune(p.buf, r)
		return true
	default:
		return false
	}
	p.buf = append(p.buf, b)
	p.pos += 2
	return true
}

// getu4 decodes \uXXXX at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// Bits of the fields an object has shown, to leave duplicates to
// encoding/json.
const (
	fExternalID = 1 << iota
	fEmail
	fFirstName
	fLastName
	fPhone
	fAttributes
	fStatus
	fID
	fError
	fCode
	fMessage
)

// fields reads the members of an object whose '{' has been consumed, up to
// its '}', calling member for each name; member reads the value.
func (p *parser) fields(member func(name []byte) bool) bool {
	if p.next('}') {
		return true
	}
	for {
		k, ok := p.name()
		if !ok || !member(k) {
			return false
		}
		if p.next(',') {
			continue
		}
		return p.next('}')
	}
}

// contact reads one contact into c.
func (p *parser) contact(c *contact.Contact) bool {
	if !p.next('{') {
		return false
	}
	p.buf, p.attrs = p.buf[:0], p.attrs[:0]
	var seen int
	var ext, email, first, last, phone span
	hasAttrs := false
	ok := p.fields(func(k []byte) bool {
		var bit int
		var dst *span
		switch string(k) {
		case "external_id":
			bit, dst = fExternalID, &ext
		case "email":
			bit, dst = fEmail, &email
		case "first_name":
			bit, dst = fFirstName, &first
		case "last_name":
			bit, dst = fLastName, &last
		case "phone":
			bit, dst = fPhone, &phone
		case "attributes":
			bit = fAttributes
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		if dst == nil {
			hasAttrs = true
			return p.attributes()
		}
		var ok bool
		*dst, ok = p.str()
		return ok
	})
	if !ok {
		return false
	}
	s := string(p.buf)
	c.ExternalID, c.Email = s[ext.start:ext.end], s[email.start:email.end]
	c.FirstName, c.LastName, c.Phone = s[first.start:first.end], s[last.start:last.end], s[phone.start:phone.end]
	if hasAttrs {
		n := len(p.attrs) / 2
		if n > len(p.arena) {
			p.arena = make([]contact.Attr, max(n, 256))
		}
		a := p.arena[:0:n] // full slice expression: a later Set must not reach into the next contact's
		p.arena = p.arena[n:]
		for i := 0; i < len(p.attrs); i += 2 {
			k, v := p.attrs[i], p.attrs[i+1]
			a = append(a, contact.Attr{Name: s[k.start:k.end], Value: s[v.start:v.end]})
		}
		c.Attributes = contact.SortAttrs(a) // a repeated key: the last wins, as in encoding/json
	}
	return true
}

// attributes reads an object of strings into p.attrs.
func (p *parser) attributes() bool {
	if !p.next('{') {
		return false
	}
	if p.next('}') {
		return true
	}
	for {
		k, ok := p.str()
		if !ok || !p.next(':') {
			return false
		}
		v, ok := p.str()
		if !ok {
			return false
		}
		p.attrs = append(p.attrs, k, v)
		if p.next(',') {
			continue
		}
		return p.next('}')
	}
}

// result reads one batch result into r.
func (p *parser) result(r *BatchResult) bool {
	if !p.next('{') {
		return false
	}
	p.buf = p.buf[:0]
	var seen int
	var ext, status, id, code, msg span
	ok := p.fields(func(k []byte) bool {
		var bit int
		var dst *span
		switch string(k) {
		case "external_id":
			bit, dst = fExternalID, &ext
		case "status":
			bit, dst = fStatus, &status
		case "id":
			bit, dst = fID, &id
		case "error":
			bit = fError
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		if dst == nil {
			return p.next('{') && p.fields(func(k []byte) bool {
				switch string(k) {
				case "code":
					bit, dst = fCode, &code
				case "message":
					bit, dst = fMessage, &msg
				default:
					return false
				}
				if seen&bit != 0 {
					return false
				}
				seen |= bit
				var ok bool
				*dst, ok = p.str()
				return ok
			})
		}
		var ok bool
		*dst, ok = p.str()
		return ok
	})
	if !ok {
		return false
	}
	s := string(p.buf)
	r.ExternalID, r.Status, r.ID = s[ext.start:ext.end], s[status.start:status.end], s[id.start:id.end]
	if seen&fError != 0 {
		r.Error = &ErrorDetail{Code: s[code.start:code.end], Message: s[msg.start:msg.end]}
	}
	return true
}
