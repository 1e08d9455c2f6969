package crmapi

import (
	"slices"
	"strings"

	"crmsync/shared/contact"
	"crmsync/shared/jsontext"
)

// The batch bodies are the hot path of both the integrator and fakecrm, and
// encoding/json spends most of its time on reflection there. The appenders
// below write the same bytes as encoding/json for these two types and
// nothing else; codec_test.go holds them to that, fuzz targets included.

// AppendBatchRequest appends the body of POST /v1/contacts/batch to dst:
// byte for byte what json.NewEncoder(w).Encode(BatchRequest{Contacts:
// contacts}) writes, trailing newline included. The integrator's
// idempotency key is a hash of these bytes, so they must never change for
// the same contacts.
func AppendBatchRequest(dst []byte, contacts []contact.Contact) []byte {
	dst = slices.Grow(dst, batchRequestSize(contacts))
	dst = append(dst, `{"contacts":`...)
	if contacts == nil {
		return append(dst, "null}\n"...)
	}
	dst = append(dst, '[')
	for i := range contacts {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendContact(dst, &contacts[i])
	}
	return append(dst, "]}\n"...)
}

// batchRequestSize estimates the encoded size, so that one allocation
// usually holds the whole body; escapes and attributes may exceed it.
func batchRequestSize(contacts []contact.Contact) int {
	n := len(`{"contacts":[]}`) + 1
	for i := range contacts {
		c := &contacts[i]
		n += len(`{"external_id":"","email":"","first_name":"","last_name":"","phone":"","attributes":{}},`)
		n += len(c.ExternalID) + len(c.Email) + len(c.FirstName) + len(c.LastName) + len(c.Phone)
		n += 40 * len(c.Attributes) // a guess: summing the lengths would cost more than a regrowth
	}
	return n
}

func appendContact(dst []byte, c *contact.Contact) []byte {
	dst = append(dst, `{"external_id":`...)
	dst = jsontext.AppendString(dst, c.ExternalID)
	dst = append(dst, `,"email":`...)
	dst = jsontext.AppendString(dst, c.Email)
	if c.FirstName != "" {
		dst = append(dst, `,"first_name":`...)
		dst = jsontext.AppendString(dst, c.FirstName)
	}
	if c.LastName != "" {
		dst = append(dst, `,"last_name":`...)
		dst = jsontext.AppendString(dst, c.LastName)
	}
	if c.Phone != "" {
		dst = append(dst, `,"phone":`...)
		dst = jsontext.AppendString(dst, c.Phone)
	}
	if len(c.Attributes) > 0 {
		dst = append(dst, `,"attributes":`...)
		dst = c.Attributes.AppendJSON(dst) // sorted, as encoding/json sorts a map's keys
	}
	return append(dst, '}')
}

// AppendBatchResponse appends the body of a 200 answer of POST
// /v1/contacts/batch to dst: byte for byte what json.Marshal(resp) returns,
// followed by a newline (as json.Encoder writes it).
func AppendBatchResponse(dst []byte, resp BatchResponse) []byte {
	dst = slices.Grow(dst, batchResponseSize(resp))
	dst = append(dst, `{"results":`...)
	if resp.Results == nil {
		return append(dst, "null}\n"...)
	}
	dst = append(dst, '[')
	for i := range resp.Results {
		r := &resp.Results[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"external_id":`...)
		dst = jsontext.AppendString(dst, r.ExternalID)
		dst = append(dst, `,"status":`...)
		dst = jsontext.AppendString(dst, r.Status)
		if r.ID != "" {
			dst = append(dst, `,"id":`...)
			dst = jsontext.AppendString(dst, r.ID)
		}
		if r.Error != nil {
			dst = append(dst, `,"error":{"code":`...)
			dst = jsontext.AppendString(dst, r.Error.Code)
			dst = append(dst, `,"message":`...)
			dst = jsontext.AppendString(dst, r.Error.Message)
			dst = append(dst, '}')
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}\n"...)
}

// batchResponseSize estimates the encoded size, so that one allocation
// usually holds the whole body.
func batchResponseSize(resp BatchResponse) int {
	n := len(`{"results":[]}`) + 1
	for i := range resp.Results {
		r := &resp.Results[i]
		n += len(`{"external_id":"","status":"","id":""},`) + len(r.ExternalID) + len(r.Status) + len(r.ID)
		if r.Error != nil {
			n += len(`,"error":{"code":"","message":""}`) + len(r.Error.Code) + len(r.Error.Message)
		}
	}
	return n
}

// Update is one contact to update: the CRM's id of it, the names of the
// fields to write (a name of contact.Fields, or contact.AttributePrefix
// and an attribute's name), and the contact as it will be once updated,
// which holds their values ("" clears a field).
type Update struct {
	CRMID   string
	Fields  []string
	Contact contact.Contact
}

// Attribute returns the attribute a field name names, if it names one.
func Attribute(name string) (string, bool) { return strings.CutPrefix(name, contact.AttributePrefix) }

// AppendUpdateRequest appends the body of POST /v1/contacts/batch/update
// to dst: per update its id, its external_id (the CRM refuses an entry
// whose key is not the stored contact's), then the listed own fields in
// contact.Fields order and the listed attributes sorted, "" where the
// value is empty (clear). Names neither of contact.Fields nor attributes
// are left out (the integrator rejects such records first). The same
// updates always give the same bytes: the idempotency key is their hash.
func AppendUpdateRequest(dst []byte, updates []Update) []byte {
	dst = append(dst, `{"contacts":[`...)
	for i := range updates {
		u := &updates[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"id":`...)
		dst = jsontext.AppendString(dst, u.CRMID)
		dst = append(dst, `,"external_id":`...)
		dst = jsontext.AppendString(dst, u.Contact.ExternalID)
		own, attrs := SplitFields(u.Fields)
		for _, f := range own {
			dst = append(dst, ',')
			dst = jsontext.AppendString(dst, f.Name)
			dst = append(dst, ':')
			dst = jsontext.AppendString(dst, f.Get(&u.Contact))
		}
		if len(attrs) > 0 {
			dst = append(dst, `,"attributes":{`...)
			for j, a := range attrs {
				if j > 0 {
					dst = append(dst, ',')
				}
				dst = jsontext.AppendString(dst, a)
				dst = append(dst, ':')
				v, _ := u.Contact.Attributes.Get(a)
				dst = jsontext.AppendString(dst, v)
			}
			dst = append(dst, '}')
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}\n"...)
}

// SplitFields sorts an update's field names into own fields, in
// contact.Fields order without the key (which never changes), and
// attribute names, sorted and distinct. Unknown names are dropped.
func SplitFields(names []string) (own []contact.Field, attrs []string) {
	for _, f := range contact.Fields[1:] {
		if slices.Contains(names, f.Name) {
			own = append(own, f)
		}
	}
	for _, n := range names {
		if a, ok := Attribute(n); ok {
			attrs = append(attrs, a)
		}
	}
	slices.Sort(attrs)
	return own, slices.Compact(attrs)
}

// UnknownField returns the first name of fields that is neither an own
// field of contact.Fields nor an attribute ("attributes.<name>", the name
// not empty), and false when there is none.
func UnknownField(fields []string) (string, bool) {
	for _, n := range fields {
		if a, ok := Attribute(n); ok {
			if a == "" {
				return n, true
			}
			continue
		}
		if _, ok := contact.FieldByName(n); !ok {
			return n, true
		}
	}
	return "", false
}
