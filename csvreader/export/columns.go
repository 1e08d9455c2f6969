package export

import (
	"fmt"
	"strings"
	"unicode"
)

// What real CRMs call the contact's fields, squashed (see squash). They
// only feed messages: a column is mapped by its exact name, never guessed.
var aliases = map[string][]string{
	"id":         {"recordid", "contactid", "customerid", "externalid", "leid", "euid", "uniqueid", "customerno", "customernumber", "accountid", "userid", "memberid"},
	"email":      {"emailaddress", "mail", "email1", "primaryemail", "workemail", "emailaddr", "eaddress"},
	"first_name": {"firstname", "fname", "givenname", "first", "forename"},
	"last_name":  {"lastname", "lname", "surname", "familyname", "last"},
	"phone":      {"phonenumber", "mobile", "mobilephone", "mobilenumber", "telephone", "tel", "cell", "cellphone", "phone1", "workphone", "homephone"},
}

// squash folds a column name for a loose comparison: lower case, letters
// and digits only ("E-mail Address" is "emailaddress").
func squash(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// nearest returns the header column that most looks like field, or "".
func nearest(header []string, field string) string {
	want := squash(field)
	names := append([]string{want}, aliases[field]...)
	for _, n := range names { // an exact squashed match first, in alias order
		for _, h := range header {
			if squash(h) == n {
				return strings.TrimSpace(h)
			}
		}
	}
	best, bestD := "", 3 // a typo or two
	for _, h := range header {
		s := squash(h)
		for _, n := range names {
			if len(n) < 4 {
				continue // "tel" is two edits from too much
			}
			if d := editDistance(s, n); d < bestD {
				best, bestD = strings.TrimSpace(h), d
			}
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// missingColumns explains a header without the key or the email column: what
// is missing, which column looks like it and what to do, and the columns
// found.
func missingColumns(header []string, key string, cols columns, delim rune) error {
	if len(header) == 1 {
		for _, d := range []rune{';', '\t', '|', ','} {
			if d != delim && strings.ContainsRune(header[0], d) {
				flag := string(d)
				if d == '\t' {
					flag = "tab"
				}
				return fmt.Errorf("%w: the header is one column, %q, which holds %q: the file is probably %s-delimited; rerun with -delimiter %s",
					ErrMissingColumn, abbrev(strings.TrimSpace(header[0])), string(d), shellQuote(flag), shellQuote(flag))
			}
		}
	}
	var parts []string
	if cols.key < 0 {
		part := fmt.Sprintf("no %q column (the key, which tells customers apart)", key)
		if c := nearest(header, keyRole(key)); c != "" && normalize(c) != key {
			part += fmt.Sprintf("; %q looks like one: rerun with -key %s", c, shellQuote(c))
		} else {
			part += "; name the column that identifies a customer with -key COLUMN"
		}
		parts = append(parts, part)
	}
	if cols.email < 0 && key != "email" {
		part := `no "email" column`
		if c := nearest(header, "email"); c != "" {
			part += fmt.Sprintf("; %q looks like it: rename that column to email", c)
		}
		parts = append(parts, part)
	}
	found := quoteAll(trimAll(header))
	if len(found) > 20 {
		found = append(found[:20], fmt.Sprintf("and %d more", len(header)-20))
	}
	return fmt.Errorf("%w: the header has %s. Columns found: %s", ErrMissingColumn, strings.Join(parts, ", and "), strings.Join(found, ", "))
}

// keyRole is the alias list that fits the key: an id-like column, unless
// the key is one of the contact's own fields.
func keyRole(key string) string {
	if _, ok := aliases[key]; ok {
		return key
	}
	return "id"
}

// aliasNotices warns of columns that look like a contact field but, named
// otherwise, go to the attributes, leaving the CRM's field empty.
func aliasNotices(header []string, cols columns) []string {
	var msgs []string
	for _, f := range []struct {
		name string
		at   int
	}{{"first_name", cols.first}, {"last_name", cols.last}, {"phone", cols.phone}} {
		if f.at >= 0 {
			continue
		}
		if c := nearest(header, f.name); c != "" && normalize(c) != cols.keyName(header) {
			msgs = append(msgs, fmt.Sprintf("column %q goes to the attributes, so the CRM's %s stays empty; rename it %s if that is what it holds", c, f.name, f.name))
		}
	}
	return msgs
}

// keyName is the key column's name, normalised.
func (c columns) keyName(header []string) string {
	if c.key < 0 {
		return ""
	}
	return normalize(header[c.key])
}
