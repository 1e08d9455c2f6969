// Package contact defines the customer record the CRM stores and the
// validation rules the CRM applies to it. The reader, the integrator and
// fakecrm all validate through this package, so a row the reader accepts is
// a row the CRM accepts, and the rejects file uses the CRM's own codes.
//
// Everything here is pure and safe for concurrent use.
package contact

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Contact is one customer as the CRM's JSON API carries it.
type Contact struct {
	ExternalID string `json:"external_id"`
	Email      string `json:"email"`
	FirstName  string `json:"first_name,omitempty"`
	LastName   string `json:"last_name,omitempty"`
	Phone      string `json:"phone,omitempty"`
	Attributes Attrs  `json:"attributes,omitempty"`
}

// MaxExternalIDLen is the longest external_id the CRM accepts, in characters.
const MaxExternalIDLen = 128

// Rejection codes, as the CRM reports them per contact.
const (
	CodeMissingExternalID = "missing_external_id"
	CodeExternalIDTooLong = "external_id_too_long"
	CodeMissingEmail      = "missing_email"
	CodeInvalidEmail      = "invalid_email"
	CodeInvalidUTF8       = "invalid_utf8"
)

// Problem is why a contact is invalid: a stable code and a human message.
type Problem struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (p *Problem) Error() string { return p.Code + ": " + p.Message }

// Validate applies the CRM's rules (docs/crm-api.md) and returns the first
// problem found, or nil when the CRM would accept the contact.
func (c *Contact) Validate() *Problem {
	if p := c.ValidateChecked(); p != nil {
		return p
	}
	if !c.validUTF8() {
		return &Problem{CodeInvalidUTF8, "a field is not valid UTF-8"}
	}
	return nil
}

// ValidateChecked is Validate for a contact whose every string is known to
// be valid UTF-8 (the reader checked the fields, and the header's names,
// it took them from whole): it skips that pass over the contact.
func (c *Contact) ValidateChecked() *Problem {
	switch n := utf8.RuneCountInString(c.ExternalID); {
	case n == 0:
		return &Problem{CodeMissingExternalID, "external_id is required"}
	case n > MaxExternalIDLen:
		return &Problem{CodeExternalIDTooLong, fmt.Sprintf("external_id has %d characters, at most %d allowed", n, MaxExternalIDLen)}
	}
	if c.Email == "" {
		return &Problem{CodeMissingEmail, "email is required"}
	}
	if !ValidEmail(c.Email) {
		return &Problem{CodeInvalidEmail, fmt.Sprintf("email %q is not a valid address", c.Email)}
	}
	return nil
}

func (c *Contact) validUTF8() bool {
	for _, s := range []string{c.ExternalID, c.Email, c.FirstName, c.LastName, c.Phone} {
		if !utf8.ValidString(s) {
			return false
		}
	}
	for _, a := range c.Attributes {
		if !utf8.ValidString(a.Name) || !utf8.ValidString(a.Value) {
			return false
		}
	}
	return true
}

// ASCII reports whether every byte of s is below 0x80. Such a string is
// valid UTF-8, and so is every piece of it: a buffer found ASCII once
// stands for each string cut from it (ValidateChecked).
func ASCII(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		if w&0x8080808080808080 != 0 {
			return false
		}
	}
	for ; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// ValidEmail reports whether s is an address the CRM accepts: exactly one
// '@', a non-empty local part, a domain containing a dot, and no white space.
func ValidEmail(s string) bool {
	at := strings.IndexByte(s, '@')
	if at <= 0 || strings.IndexByte(s[at+1:], '@') >= 0 {
		return false
	}
	domain := s[at+1:]
	if !strings.Contains(domain, ".") {
		return false
	}
	for _, r := range s {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f' || r == 0x85 || r == 0xA0 {
			return false
		}
	}
	return true
}

// Fingerprint is a stable digest of the contact's content. Two contacts with
// the same fingerprint would be stored identically by the CRM.
//
// It hashes "len:value" for each field, then each attribute's name and
// value, in their order (by name). It runs once per row, so it builds that
// text in one buffer instead of going through fmt.
func (c *Contact) Fingerprint() string {
	var stack [256]byte
	b := stack[:0]
	for _, s := range [...]string{c.ExternalID, c.Email, c.FirstName, c.LastName, c.Phone} {
		b = appendField(b, s)
	}
	for _, a := range c.Attributes {
		b = appendField(appendField(b, a.Name), a.Value)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

func appendField(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}
