package export

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"crmsync/shared/contact"
)

// What real CRMs call the contact's fields, squashed (see squash), for
// messages: "X looks like the email". Only autoAliases map a column.
var hintAliases = map[string][]string{
	"id":         {"recordid", "contactid", "customerid", "externalid", "leid", "euid", "uniqueid", "customerno", "customernumber", "accountid", "userid", "memberid"},
	"email":      {"emailaddress", "mail", "email1", "primaryemail", "workemail", "emailaddr", "eaddress"},
	"first_name": {"firstname", "fname", "givenname", "first", "forename"},
	"last_name":  {"lastname", "lname", "surname", "familyname", "last"},
	"phone":      {"phonenumber", "mobile", "mobilephone", "mobilenumber", "telephone", "tel", "cell", "cellphone", "phone1", "workphone", "homephone"},
}

// autoAliases are the names, squashed, that map a column to a field when
// no column has the field's exact name and no mapping file says otherwise:
// only names that mean that field and nothing else in the exports we know.
// Left out: "first"/"last" (of what?), "mail" (postal?), "tel"/"cell" (too
// short to be sure of), work/home phones and emails (a second number, not
// the contact's), "email1"/"phone1" (numbered siblings follow), account,
// user and member ids (an account holds many contacts; Mailchimp's LEID and
// EUID come together). Each field's own name squashed ("First Name",
// "E-mail", "EMAIL_ADDRESS" without its underscore) is an alias too.
var autoAliases = map[string][]string{
	"id":         {"recordid", "contactid", "customerid", "customernumber", "customerno", "externalid"},
	"email":      {"email", "emailaddress", "primaryemail"},
	"first_name": {"firstname", "givenname", "forename"},
	"last_name":  {"lastname", "surname", "familyname"},
	"phone":      {"phone", "phonenumber", "telephone", "telephonenumber", "mobile", "mobilephone", "mobilenumber"},
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
	names := append([]string{want}, hintAliases[field]...)
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
	if _, ok := hintAliases[key]; ok {
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
		c := nearest(header, f.name)
		if c == "" || normalize(c) == cols.keyName(header) || !cols.isAttribute(c) {
			continue // a column dropped (-drop-columns, a mapping) is no surprise
		}
		msgs = append(msgs, fmt.Sprintf("column %q goes to the attributes, so the CRM's %s stays empty; rename it %s if that is what it holds", c, f.name, f.name))
	}
	return msgs
}

// isAttribute reports whether the column named column (trimmed) is sent
// as an attribute.
func (c columns) isAttribute(column string) bool {
	for _, d := range c.desc {
		if d.Column == column {
			return strings.HasPrefix(d.Field, contact.AttributePrefix)
		}
	}
	return false
}

// keyName is the key column's name, normalised.
func (c columns) keyName(header []string) string {
	if c.key < 0 {
		return ""
	}
	return normalize(header[c.key])
}

// ColumnMapping says where one column of the header goes, for -dry-run.
type ColumnMapping struct {
	Column  string // as in the header, trimmed
	Field   string // a name of contact.Fields, or "attributes.NAME"; "" when not sent
	Source  string // why: one of the Source* values
	Options string // what is done to its values: "required, empty=clear, normalize=e164, region=GB"; "" for nothing
}

// ColumnMapping sources.
const (
	SourceName     = "name"          // the column has the field's name
	SourceAlias    = "alias"         // a built-in alias of the field (see autoAliases)
	SourceKey      = "key"           // named by -key or the mapping file's "key"
	SourceMapping  = "mapping"       // an entry of the mapping file
	SourceOther    = "other"         // no field has its name: an attribute of that name
	SourceDropFlag = "-drop-columns" // dropped by Options.Drop
	SourceDropped  = "dropped"       // dropped by the mapping file ("drop": true, or "unmapped": "drop")
)

// fieldRule is what is done to one column's values beyond where they go:
// a mapping entry's rules, or -phone-region's E.164 for the phone.
type fieldRule struct {
	index    int
	column   string // as in the header, trimmed
	field    string // as in ColumnMapping.Field
	attr     string // the attribute, when the column is one
	required bool
	clear    bool
	norm     []string
	region   string
}

// mapColumns works out which column feeds which field: the mapping file's
// entries first, then the key, then each own field by its exact name or else
// a built-in alias, and every other column to the attributes (or nowhere).
// key is the key column's name (trimmed, any case), "" to find it: an "id"
// column, else an alias of one.
func mapColumns(header []string, key string, o *Options, delim rune) (columns, string, []string, error) {
	cols := columns{key: -1, email: -1, first: -1, last: -1, phone: -1}
	m := o.Mapping
	var notices []string
	seen := make(map[string]int, len(header))
	trimmed := trimAll(header)
	for i, h := range header {
		name := normalize(h)
		switch {
		case name == "":
			return cols, "", nil, fmt.Errorf("%w: column %d has no name; name it or remove it", ErrBadHeader, i+1)
		case !utf8.ValidString(h):
			return cols, "", nil, fmt.Errorf("%w: column %d name %q is not valid UTF-8; save the export as UTF-8", ErrBadHeader, i+1, h)
		case strings.IndexByte(h, 0) >= 0:
			// It would become an attribute name PostgreSQL cannot store,
			// after the CRM had taken the contact.
			return cols, "", nil, fmt.Errorf("%w: column %d name %q holds a NUL byte, which PostgreSQL cannot store; remove it from the header", ErrBadHeader, i+1, h)
		}
		if j, dup := seen[name]; dup {
			return cols, "", nil, fmt.Errorf("%w: %q is both column %d and column %d; names are compared ignoring case and spaces", ErrDuplicateColumn, trimmed[i], j+1, i+1)
		}
		seen[name] = i
	}

	// The mapping file's entries, placed on the header.
	entry := make([]*ColumnRule, len(header))
	source := make([]string, len(header))
	if m != nil {
		for i := range m.Columns {
			c := &m.Columns[i]
			j, ok := seen[normalize(c.Column)]
			if !ok {
				msg := "the export's header has no such column"
				if n := nearestColumn(header, c.Column); n != "" {
					msg += fmt.Sprintf("; the nearest is %q", n)
				}
				return cols, "", nil, m.errorAt(i, "%s: fix the name in the mapping file (the header: %s)", msg, strings.Join(quoteAll(trimmed), ", "))
			}
			entry[j], source[j] = c, SourceMapping
			if c.Field == "external_id" {
				if key != "" && normalize(key) != normalize(c.Column) {
					return cols, "", nil, m.errorAt(i, "maps the key (external_id), but -key names column %q; give one of them", strings.TrimSpace(key))
				}
				key = c.Column
			}
		}
		if m.Key != "" {
			if key != "" && normalize(key) != normalize(m.Key) {
				return cols, "", nil, &MappingError{File: m.file, Entry: -1, Err: fmt.Errorf("\"key\" is %q but -key is %q; give one of them", m.Key, strings.TrimSpace(key))}
			}
			key = m.Key
		}
	}

	// The key.
	var aliased []string // "Email Address" → email, for the notice
	keyName := normalize(key)
	if keyName != "" {
		if j, ok := seen[keyName]; ok {
			cols.key, keyName = j, trimmed[j]
			if e := entry[j]; e != nil && !e.Drop && e.Field != "external_id" {
				return cols, "", nil, m.errorAt(m.index(e), "the column is the key (-key), so it cannot feed %q too; map another column to %s", e.Field, e.Field)
			} else if e != nil && e.Drop {
				return cols, "", nil, m.errorAt(m.index(e), "the column is the key (-key) and cannot be dropped")
			}
			if source[j] == "" {
				source[j] = SourceKey
			}
		}
	} else {
		keyName = "id"
		if j, ok := seen["id"]; ok && entry[j] == nil {
			cols.key, keyName, source[j] = j, trimmed[j], SourceName
		} else if found := aliasColumns(header, "id", entry, -1); len(found) == 1 {
			cols.key, keyName, source[found[0]] = found[0], trimmed[found[0]], SourceAlias
			aliased = append(aliased, fmt.Sprintf("%q → the key (external_id)", keyName))
		} else if len(found) > 1 {
			return cols, "", nil, aliasConflict(trimmed, found, "the key (external_id)", "say which with -key COLUMN, or \"key\" in a mapping file (-map)")
		}
	}

	// The contact's own fields.
	own := []struct {
		name string
		at   *int
	}{{"email", &cols.email}, {"first_name", &cols.first}, {"last_name", &cols.last}, {"phone", &cols.phone}}
	for j, e := range entry {
		for _, f := range own {
			if e != nil && !e.Drop && e.Field == f.name {
				*f.at = j
			}
		}
	}
	for _, f := range own {
		exact := -1
		if j, ok := seen[f.name]; ok && entry[j] == nil {
			exact = j
		}
		found := aliasColumns(header, f.name, entry, exact)
		switch {
		case *f.at >= 0 && exact >= 0:
			i := m.index(entry[*f.at])
			return cols, "", nil, m.errorAt(i, "maps column %q to %s, but column %q has that name; map %q too (to another field, or \"drop\": true), or rename it",
				trimmed[*f.at], f.name, trimmed[exact], trimmed[exact])
		case *f.at < 0 && exact >= 0:
			*f.at, source[exact] = exact, SourceName
		case *f.at < 0 && len(found) == 1:
			*f.at, source[found[0]] = found[0], SourceAlias
			aliased = append(aliased, fmt.Sprintf("%q → %s", trimmed[found[0]], f.name))
			found = nil
		case *f.at < 0 && len(found) > 1:
			return cols, "", nil, aliasConflict(trimmed, found, "the "+f.name, "rename the one that is not, or say which in a mapping file (-map)")
		}
		for _, j := range found {
			if j != cols.key {
				notices = append(notices, fmt.Sprintf("column %q looks like the %s, but column %q is the %s, so %q goes to the attributes; rename it, or map it in a mapping file (-map)",
					trimmed[j], f.name, trimmed[*f.at], f.name, trimmed[j]))
			}
		}
	}
	if len(aliased) > 0 {
		notices = append(notices, fmt.Sprintf("column(s) mapped by their usual names: %s; a mapping file (-map) can say otherwise", strings.Join(aliased, ", ")))
	}
	if cols.key < 0 || cols.email < 0 {
		if cols.key < 0 {
			keyName = normalize(keyName)
		}
		return cols, "", nil, missingColumns(header, keyName, cols, delim)
	}

	// Every other column: an attribute, or nowhere.
	drop := map[string]bool{}
	for _, d := range o.Drop {
		drop[normalize(d)] = true
	}
	used := map[int]bool{cols.key: true, cols.email: true, cols.first: true, cols.last: true, cols.phone: true}
	attrAt := map[string]int{}
	for j, h := range trimmed {
		if used[j] {
			continue
		}
		e := entry[j]
		name := h
		switch {
		case e != nil && e.Drop:
			continue
		case e != nil:
			name = strings.TrimPrefix(e.Field, contact.AttributePrefix)
		case m != nil && m.Unmapped == UnmappedDrop:
			source[j] = SourceDropped
			continue
		case normalize(h) == "id":
			name = "id" // the export's own id, kept as data when another column is the key
			source[j] = SourceOther
		default:
			source[j] = SourceOther
		}
		if drop[normalize(h)] {
			delete(drop, normalize(h))
			source[j] = SourceDropFlag
			continue
		}
		if i, dup := attrAt[normalize(name)]; dup {
			return cols, "", nil, fmt.Errorf("%w: columns %q and %q would both be the attribute %q; map one of them elsewhere in the mapping file, or drop it", ErrDuplicateColumn, trimmed[i], h, name)
		}
		attrAt[normalize(name)] = j
		cols.attrs = append(cols.attrs, attrColumn{j, name})
	}
	if len(drop) > 0 {
		missing := slices.Sorted(maps.Keys(drop))
		return cols, "", nil, fmt.Errorf("%w: -drop-columns names %s, which the header lacks or which is not an attribute column (the header: %s)",
			ErrBadHeader, strings.Join(missing, ", "), strings.Join(header, ", "))
	}
	cols.attrsByName = slices.SortedFunc(slices.Values(cols.attrs), func(a, b attrColumn) int { return strings.Compare(a.name, b.name) })
	cols.rules = buildRules(trimmed, &cols, entry, o.PhoneRegion)
	cols.desc = describe(trimmed, &cols, entry, source)
	return cols, keyName, notices, nil
}

// aliasColumns lists the columns no mapping entry names, other than skip,
// whose squashed names are field's built-in aliases.
func aliasColumns(header []string, field string, entry []*ColumnRule, skip int) []int {
	var found []int
	for j, h := range header {
		if j != skip && entry[j] == nil && slices.Contains(autoAliases[field], squash(h)) {
			found = append(found, j)
		}
	}
	return found
}

func aliasConflict(trimmed []string, found []int, what, fix string) error {
	names := make([]string, len(found))
	for i, j := range found {
		names[i] = fmt.Sprintf("%q (column %d)", trimmed[j], j+1)
	}
	return fmt.Errorf("%w: columns %s all look like %s, and none has its exact name: %s", ErrDuplicateColumn, strings.Join(names, " and "), what, fix)
}

// nearestColumn returns the header column most like name, or "".
func nearestColumn(header []string, name string) string {
	want := squash(name)
	best, bestD := "", max(3, len(want)/3)
	for _, h := range header {
		s := squash(h)
		if s == want {
			return strings.TrimSpace(h)
		}
		if d := editDistance(s, want); d < bestD {
			best, bestD = strings.TrimSpace(h), d
		}
	}
	return best
}

// buildRules collects the columns whose values need more than fill's fast
// path: normalisation, a required value, an empty value that clears.
func buildRules(trimmed []string, cols *columns, entry []*ColumnRule, phoneRegion string) []*fieldRule {
	var rules []*fieldRule
	field := func(j int) (string, string) {
		switch j {
		case cols.key:
			return "external_id", ""
		case cols.email:
			return "email", ""
		case cols.first:
			return "first_name", ""
		case cols.last:
			return "last_name", ""
		case cols.phone:
			return "phone", ""
		}
		for _, a := range cols.attrs {
			if a.index == j {
				return contact.AttributePrefix + a.name, a.name
			}
		}
		return "", ""
	}
	for j := range trimmed {
		name, attr := field(j)
		if name == "" {
			continue
		}
		ru := &fieldRule{index: j, column: trimmed[j], field: name, attr: attr, region: phoneRegion}
		if e := entry[j]; e != nil && !e.Drop {
			ru.required = e.Required && name != "external_id" && name != "email" // the CRM's own rules say it better
			ru.clear = e.Empty == EmptyClear
			ru.norm = e.Normalize
			if e.Region != "" {
				ru.region = e.Region
			}
			if ru.norm == nil && name == "phone" && ru.region != "" {
				ru.norm = []string{NormE164}
			}
		} else if name == "phone" && phoneRegion != "" {
			ru.norm = []string{NormE164}
		}
		if ru.required || ru.clear || len(ru.norm) > 0 {
			rules = append(rules, ru)
		}
	}
	return rules
}

func describe(trimmed []string, cols *columns, entry []*ColumnRule, source []string) []ColumnMapping {
	desc := make([]ColumnMapping, len(trimmed))
	for j, h := range trimmed {
		desc[j] = ColumnMapping{Column: h, Source: source[j]}
	}
	for _, f := range []struct {
		name string
		at   int
	}{{"external_id", cols.key}, {"email", cols.email}, {"first_name", cols.first}, {"last_name", cols.last}, {"phone", cols.phone}} {
		if f.at < 0 {
			continue
		}
		if desc[f.at].Field != "" {
			desc[f.at].Field += "," + f.name // -key email
		} else {
			desc[f.at].Field = f.name
		}
	}
	for _, a := range cols.attrs {
		desc[a.index].Field = contact.AttributePrefix + a.name
	}
	for j, e := range entry {
		if e != nil && e.Drop {
			desc[j].Options = "drop"
		}
	}
	for _, ru := range cols.rules {
		var o []string
		if ru.required {
			o = append(o, "required")
		}
		if ru.clear {
			o = append(o, "empty=clear")
		}
		if len(ru.norm) > 0 {
			o = append(o, "normalize="+strings.Join(ru.norm, "+"))
		}
		if slices.Contains(ru.norm, NormE164) && ru.region != "" {
			o = append(o, "region="+ru.region)
		}
		desc[ru.index].Options = strings.Join(o, ", ")
	}
	return desc
}
