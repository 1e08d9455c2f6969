package crmrpc

import (
	"encoding/binary"
	"fmt"

	"crmsync/shared/contact"
)

// PackedVersion is the newest version of the packed records encoding (see
// DeliverArgs.Packed) that this package writes and reads. It reads every
// version since 1, and writes the oldest one that carries a block
// (PackedVersionOf), so that a daemon reading only version 1 still takes
// blocks of creates packed.
const PackedVersion = 2

// PackedVersionOf is the version AppendPackedRecords writes for recs: 2
// when a record is an update, else 1.
func PackedVersionOf(recs []Record) int {
	for i := range recs {
		if recs[i].IsUpdate() {
			return 2
		}
	}
	return 1
}

// The packed records encoding. gob spends most of a Deliver call's
// decoding on the Attributes maps, field by field through reflection; this
// is a flat layout the daemon slices strings out of.
//
//	packed  = version count record*          version = 0x01 or 0x02; count = uvarint
//	record  = flags string{5} attrs [update] flags = one byte: 0x01 MaybeSent, 0x02 update (version 2), other bits 0
//	string  = len bytes                      len = uvarint; any bytes (UTF-8 is checked later, per record)
//	attrs   = n (name value){n}              n = uvarint; names distinct, in order since attributes are sorted (read in any)
//	update  = crmid n name{n}                present with flag 0x02: Record.CRMID (not empty) and Record.Fields
//
// The five strings are the contact's own fields in contact.Fields order
// (ExternalID, Email, FirstName, LastName, Phone). No attributes decode as
// nil Attrs, and no field names as a nil slice, as gob gives. Nothing may
// follow the last record. A uvarint is encoding/binary's (little-endian
// groups of 7 bits, at most 10 bytes). Version 2 is version 1 plus the
// update flag.
const (
	packedMaybeSent = 0x01
	packedUpdate    = 0x02
	// minPackedRecord is the size of the smallest record: the flags, the
	// own fields empty and no attributes. A count is checked against it
	// before anything is allocated.
	minPackedRecord = 1 + len(contact.Fields) + 1
	// packedAttrArena is how many attributes one allocation holds when a
	// block is unpacked: 64 records of 4.
	packedAttrArena = 256
)

// PackedASCII reports whether every byte of packed after its version and
// count is ASCII. Then every string of its records is (and is valid UTF-8,
// for contact.Contact.ValidateChecked), as is every length: no string is
// 128 bytes or longer. Any other packed, malformed ones included, says
// false.
func PackedASCII(packed string) bool {
	if len(packed) == 0 {
		return false
	}
	_, n := binary.Uvarint([]byte(packed[1:min(len(packed), 1+binary.MaxVarintLen64)]))
	if n <= 0 {
		return false
	}
	return contact.ASCII(packed[1+n:])
}

// AppendPackedRecords appends the packed encoding of recs to dst and
// returns the extended buffer.
func AppendPackedRecords(dst []byte, recs []Record) []byte {
	dst = append(dst, byte(PackedVersionOf(recs)))
	dst = binary.AppendUvarint(dst, uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		var flags byte
		if r.MaybeSent {
			flags |= packedMaybeSent
		}
		if r.IsUpdate() {
			flags |= packedUpdate
		}
		c := &r.Contact
		dst = append(dst, flags)
		for _, f := range &contact.Fields {
			dst = appendPackedString(dst, f.Get(c))
		}
		dst = binary.AppendUvarint(dst, uint64(len(c.Attributes)))
		for _, a := range c.Attributes {
			dst = appendPackedString(appendPackedString(dst, a.Name), a.Value)
		}
		if r.IsUpdate() {
			dst = appendPackedString(dst, r.CRMID)
			dst = binary.AppendUvarint(dst, uint64(len(r.Fields)))
			for _, name := range r.Fields {
				dst = appendPackedString(dst, name)
			}
		}
	}
	return dst
}

func appendPackedString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// UnpackRecords decodes the packed encoding of records. Every string of
// the result is a substring of p: the fields of a block share the
// allocation of p (which gob made), and decoding allocates only the
// records, sized exactly, and the attributes' arena (packedAttrArena a
// piece).
//
// It never panics and allocates no more than p justifies: a count or a
// length is checked against the bytes left before it is used. More than
// maxRecords records is a CodeTooManyRecords error worded as for Records;
// anything else wrong is a CodeMalformedCall error saying what and where.
// Field sizes are not checked here: the caller applies its limits to the
// records, as it does to Records.
func UnpackRecords(p string, maxRecords int) ([]Record, *Error) {
	u := unpacker{p: p, rec: -1}
	if len(p) == 0 {
		return nil, u.fail("", "empty")
	}
	if v := p[0]; v < 1 || v > PackedVersion {
		return nil, u.fail("", fmt.Sprintf("version %d, this daemon reads versions 1 to %d", v, PackedVersion))
	}
	u.version = p[0]
	u.off = 1
	n, ok := u.uvarint("record count")
	if !ok {
		return nil, u.err
	}
	if left := uint64(len(p) - u.off); n > left/uint64(minPackedRecord) {
		return nil, u.fail("record count", fmt.Sprintf("%d records cannot fit in the %d bytes left", n, left))
	}
	if n > uint64(max(maxRecords, 0)) {
		return nil, &Error{Code: CodeTooManyRecords,
			Message: fmt.Sprintf("%d records in one call, at most %d allowed: send smaller blocks", n, maxRecords)}
	}
	if n == 0 {
		return u.end(nil)
	}
	recs := make([]Record, n)
	for i := range recs {
		u.rec = i
		if !u.record(&recs[i]) {
			return nil, u.err
		}
	}
	return u.end(recs)
}

// unpacker reads p from off; err says why it stopped.
type unpacker struct {
	kind    string // what p holds, for errors; "": packed records
	p       string
	off     int
	version byte
	flags   byte // packed verdicts: the flags their version knows
	// For messages: the record being read (-1 before the first) and the
	// offset where the item being read starts.
	rec, at int
	err     *Error
	// arena is where records' Attrs are carved from: a block's attributes
	// take a few allocations, not one per record.
	arena []contact.Attr
}

func (u *unpacker) record(r *Record) bool {
	u.at = u.off
	if u.off >= len(u.p) {
		return u.failed("flags", "truncated")
	}
	flags := u.p[u.off]
	known := byte(packedMaybeSent)
	if u.version >= 2 {
		known |= packedUpdate
	}
	if flags&^known != 0 {
		return u.failed("flags", fmt.Sprintf("unknown flags %#02x in version %d", flags, u.version))
	}
	u.off++
	r.MaybeSent = flags&packedMaybeSent != 0
	c := &r.Contact
	for _, f := range &contact.Fields {
		v, ok := u.string(f.Name)
		if !ok {
			return false
		}
		f.Set(c, v)
	}
	if !u.attributes(c) {
		return false
	}
	if flags&packedUpdate == 0 {
		return true
	}
	return u.update(r)
}

// update reads an update's CRM id and field names.
func (u *unpacker) update(r *Record) bool {
	id, ok := u.string("crm id")
	if !ok {
		return false
	}
	if id == "" {
		return u.failed("crm id", "empty in an update")
	}
	r.CRMID = id
	n, ok := u.uvarint("field count")
	if !ok {
		return false
	}
	if n == 0 {
		return true
	}
	// A name takes at least one byte.
	if left := uint64(len(u.p) - u.off); n > left {
		return u.failed("field count", fmt.Sprintf("%d field names cannot fit in the %d bytes left", n, left))
	}
	r.Fields = make([]string, n)
	for i := range r.Fields {
		if r.Fields[i], ok = u.string("field name"); !ok {
			return false
		}
	}
	return true
}

// attributes reads a contact's attributes.
func (u *unpacker) attributes(c *contact.Contact) bool {
	n, ok := u.uvarint("attribute count")
	if !ok {
		return false
	}
	if n == 0 {
		return true
	}
	// An attribute takes at least two bytes: two empty strings.
	if left := uint64(len(u.p) - u.off); n > left/2 {
		return u.failed("attribute count", fmt.Sprintf("%d attributes cannot fit in the %d bytes left", n, left))
	}
	// The count is a claim: the arena is never sized by it, and a record
	// with more attributes than it holds grows its own slice with entries
	// that cost bytes.
	if int(n) > len(u.arena) {
		u.arena = make([]contact.Attr, packedAttrArena)
	}
	var a []contact.Attr
	if int(n) <= len(u.arena) {
		a, u.arena = u.arena[:0:n], u.arena[n:] // full slice expression: a later Set must not reach the next record's
	}
	for range n {
		k, ok := u.string("attribute name")
		if !ok {
			return false
		}
		v, ok := u.string("attribute value")
		if !ok {
			return false
		}
		a = append(a, contact.Attr{Name: k, Value: v})
	}
	// This package writes them in order; readers before it wrote a map's.
	attrs := contact.SortAttrs(a)
	if uint64(len(attrs)) != n {
		u.at = u.off
		return u.failed("attributes", fmt.Sprintf("%d attributes with only %d distinct names", n, len(attrs)))
	}
	c.Attributes = attrs
	return true
}

// string reads a length-prefixed string.
func (u *unpacker) string(what string) (string, bool) {
	n, ok := u.uvarint(what)
	if !ok {
		return "", false
	}
	if left := uint64(len(u.p) - u.off); n > left {
		return "", u.failed(what, fmt.Sprintf("length %d exceeds the %d bytes left", n, left))
	}
	s := u.p[u.off : u.off+int(n)]
	u.off += int(n)
	return s, true
}

// uvarint reads what binary.Uvarint reads, from a string.
func (u *unpacker) uvarint(what string) (uint64, bool) {
	u.at = u.off
	// Most lengths and counts are below 128: one byte.
	if u.off < len(u.p) && u.p[u.off] < 0x80 {
		u.off++
		return uint64(u.p[u.off-1]), true
	}
	var x uint64
	var shift uint
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if u.off+i >= len(u.p) {
			return 0, u.failed(what, "truncated")
		}
		b := u.p[u.off+i]
		if b < 0x80 {
			if i == binary.MaxVarintLen64-1 && b > 1 {
				break
			}
			u.off += i + 1
			return x | uint64(b)<<shift, true
		}
		x |= uint64(b&0x7f) << shift
		shift += 7
	}
	return 0, u.failed(what, "varint overflows 64 bits")
}

func (u *unpacker) end(recs []Record) ([]Record, *Error) {
	if u.off != len(u.p) {
		u.rec, u.at = -1, u.off
		return nil, u.fail("", fmt.Sprintf("%d bytes after the last record", len(u.p)-u.off))
	}
	return recs, nil
}

func (u *unpacker) failed(what, problem string) bool {
	u.err = u.fail(what, problem)
	return false
}

// fail builds the error: where (record, field, byte offset) and what.
func (u *unpacker) fail(what, problem string) *Error {
	where := fmt.Sprintf("at byte %d", u.at)
	if what != "" {
		where = what + " " + where
	}
	kind, item := "packed records", "record"
	if u.kind != "" {
		kind, item = u.kind, "verdict"
	}
	if u.rec >= 0 && what != "" {
		where = fmt.Sprintf("%s %d: %s", item, u.rec, where)
	}
	return &Error{Code: CodeMalformedCall, Message: kind + ": " + where + ": " + problem}
}
