package export

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"

	"crmsync/shared/contact"
)

// ErrMapping is what every *MappingError is (errors.Is).
var ErrMapping = errors.New("bad mapping file")

// maxMappingBytes bounds a mapping file: a few columns' rules, never more.
const maxMappingBytes = 1 << 20

// Mapping is a mapping file (docs/mapping.md): which column of an export
// feeds which field of the contact, and what is done to its values. Columns
// it does not name map as without it: by their exact name, then by a
// built-in alias, and the others to the attributes (or nowhere, with
// Unmapped "drop").
//
// Make one with LoadMapping or ParseMapping, which check it. A Mapping is
// read-only once loaded and may be shared by Readers.
type Mapping struct {
	Key      string       `json:"key,omitempty"`      // the key column; as -key, and they must agree
	Unmapped string       `json:"unmapped,omitempty"` // UnmappedAttributes ("" too) or UnmappedDrop
	Columns  []ColumnRule `json:"columns"`
	Comment  string       `json:"comment,omitempty"` // for the reader of the file; ignored

	file    string
	offsets []int // byte offset of each entry of Columns in the file, -1 if unknown
	data    []byte
}

// Unmapped values.
const (
	UnmappedAttributes = "attributes"
	UnmappedDrop       = "drop"
)

// ColumnRule is one entry of a mapping file's "columns".
type ColumnRule struct {
	Column    string   `json:"column"`              // as in the header: trimmed, ignoring case
	Field     string   `json:"field,omitempty"`     // a name of contact.Fields, or "attributes.NAME"
	Drop      bool     `json:"drop,omitempty"`      // the column is not sent
	Required  bool     `json:"required,omitempty"`  // an empty value makes the row invalid (CodeMissingRequired)
	Empty     string   `json:"empty,omitempty"`     // EmptyKeep ("" too) or EmptyClear
	Normalize []string `json:"normalize,omitempty"` // NormTrim, NormLower, NormCollapse, NormE164, applied in order
	Region    string   `json:"region,omitempty"`    // for NormE164: the region of national numbers
	Comment   string   `json:"comment,omitempty"`
}

// Empty values.
const (
	EmptyKeep  = "keep"  // an empty value leaves the CRM's value as it is
	EmptyClear = "clear" // an empty value clears the CRM's value
)

// Normalisations.
const (
	NormTrim     = "trim"     // strip leading and trailing white space
	NormLower    = "lower"    // lower case
	NormCollapse = "collapse" // trim, and runs of white space inside become one space
	NormE164     = "e164"     // a phone number in E.164 (+442079460000); see E164
)

var norms = []string{NormTrim, NormLower, NormCollapse, NormE164}

// MappingError is a problem with a mapping file, found when it is loaded
// or, for what depends on the header, when an export is opened with it.
type MappingError struct {
	File      string // the mapping file
	Line, Col int    // where in the file, 1-based; 0 if unknown
	Entry     int    // index in "columns"; -1 for the file as a whole
	Column    string // the entry's column, if any
	Err       error
}

func (e *MappingError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Col)
	}
	b.WriteString(": ")
	if e.Entry >= 0 {
		fmt.Fprintf(&b, "columns[%d]", e.Entry)
		if e.Column != "" {
			fmt.Fprintf(&b, " (column %q)", e.Column)
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *MappingError) Unwrap() error { return e.Err }

// Is makes every MappingError match ErrMapping.
func (e *MappingError) Is(target error) bool { return target == ErrMapping }

// LoadMapping reads and checks the mapping file at path: everything that
// does not need an export's header (that is checked by Open).
func LoadMapping(path string) (*Mapping, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("mapping file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMappingBytes+1))
	if err != nil {
		return nil, fmt.Errorf("mapping file %s: %w", path, err)
	}
	if len(data) > maxMappingBytes {
		return nil, &MappingError{File: path, Entry: -1, Err: fmt.Errorf("larger than %d bytes; a mapping file lists a few columns", maxMappingBytes)}
	}
	return ParseMapping(data, path)
}

// ParseMapping parses and checks a mapping file's content; name is the
// file's name in errors.
func ParseMapping(data []byte, name string) (*Mapping, error) {
	m := &Mapping{file: name, data: data}
	fail := func(entry, offset int, err error) error {
		e := &MappingError{File: name, Entry: entry, Err: err}
		if entry >= 0 && entry < len(m.Columns) {
			e.Column = strings.TrimSpace(m.Columns[entry].Column)
		}
		if offset >= 0 {
			e.Line, e.Col = lineCol(data, offset)
		}
		return e
	}
	var top struct {
		Key      string            `json:"key"`
		Unmapped string            `json:"unmapped"`
		Columns  []json.RawMessage `json:"columns"`
		Comment  string            `json:"comment"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&top); err != nil {
		off, msg := jsonProblem(err, topKeys)
		if errors.Is(err, io.EOF) {
			msg, off = errors.New(`the file is empty; it holds a JSON object: {"columns": [...]}`), -1
		}
		return nil, fail(-1, off, msg)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fail(-1, int(dec.InputOffset()), errors.New("text after the JSON object; a mapping file holds one object"))
	}
	m.Key, m.Unmapped, m.Comment = top.Key, top.Unmapped, top.Comment
	m.offsets = entryOffsets(data, len(top.Columns))
	m.Columns = make([]ColumnRule, len(top.Columns))
	for i, raw := range top.Columns {
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		if err := d.Decode(&m.Columns[i]); err != nil {
			off, msg := jsonProblem(err, entryKeys)
			if off >= 0 && m.offsets[i] >= 0 {
				off += m.offsets[i]
			} else {
				off = m.offsets[i]
			}
			return nil, fail(i, off, msg)
		}
	}
	if err := m.check(); err != nil {
		var me *MappingError
		if errors.As(err, &me) {
			return nil, fail(me.Entry, m.offset(me.Entry), me.Err)
		}
		return nil, fail(-1, -1, err)
	}
	return m, nil
}

var (
	topKeys   = []string{"columns", "key", "unmapped", "comment"}
	entryKeys = []string{"column", "field", "drop", "required", "empty", "normalize", "region", "comment"}
)

// jsonProblem turns a decoding error into the offset it happened at (-1 if
// unknown, relative to what was decoded) and a message saying what to fix.
func jsonProblem(err error, keys []string) (int, error) {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return int(syn.Offset), fmt.Errorf("not valid JSON: %s", strings.TrimPrefix(syn.Error(), "json: "))
	case errors.As(err, &typ):
		want := typ.Type.String()
		switch typ.Type.Kind() {
		case reflect.Slice:
			want = "a list [...]"
		case reflect.Struct:
			want = "an object {...}"
		case reflect.String:
			want = "a string"
		case reflect.Bool:
			want = "true or false"
		}
		where := ""
		if typ.Field != "" {
			where = fmt.Sprintf("%q ", typ.Field)
		}
		return int(typ.Offset), fmt.Errorf("%sis %s, want %s", where, typ.Value, want)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return -1, errors.New("not valid JSON: the file ends inside the object (a missing } or ])")
	}
	if k, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		k = strings.Trim(k, `"`)
		msg := fmt.Sprintf("unknown key %q; the keys are %s", k, strings.Join(keys, ", "))
		if n := nearestName(k, keys); n != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", n)
		}
		return -1, errors.New(msg)
	}
	return -1, err
}

// lineCol turns a byte offset into a 1-based line and column (in bytes).
func lineCol(data []byte, off int) (int, int) {
	off = min(max(off, 0), len(data))
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	return line, off - bytes.LastIndexByte(data[:off], '\n')
}

// entryOffsets finds where each element of the top-level "columns" array
// starts, for messages; -1 for any it cannot place.
func entryOffsets(data []byte, n int) []int {
	offs := make([]int, 0, n)
	dec := json.NewDecoder(bytes.NewReader(data))
	depth, lastKey, inColumns := 0, "", false
	for len(offs) < n {
		before := int(dec.InputOffset())
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if depth == 2 && inColumns {
				offs = append(offs, skipSpace(data, before))
			}
			if depth == 1 && tok == json.Delim('[') {
				inColumns = lastKey == "columns"
			}
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		default:
			if s, ok := tok.(string); ok && depth == 1 {
				lastKey = s
			} else if depth == 2 && inColumns {
				offs = append(offs, skipSpace(data, before)) // a value that is not an object
			}
		}
	}
	for len(offs) < n {
		offs = append(offs, -1)
	}
	return offs
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n' || data[i] == ',') {
		i++
	}
	return i
}

func (m *Mapping) offset(entry int) int {
	if entry >= 0 && entry < len(m.offsets) {
		return m.offsets[entry]
	}
	return -1
}

// errorAt is a problem with entry i found against a header.
func (m *Mapping) errorAt(i int, format string, args ...any) error {
	e := &MappingError{File: m.file, Entry: i, Err: fmt.Errorf(format, args...)}
	if i >= 0 && i < len(m.Columns) {
		e.Column = strings.TrimSpace(m.Columns[i].Column)
	}
	if off := m.offset(i); off >= 0 {
		e.Line, e.Col = lineCol(m.data, off)
	}
	return e
}

// index returns the index of entry e in m.Columns.
func (m *Mapping) index(e *ColumnRule) int {
	for i := range m.Columns {
		if &m.Columns[i] == e {
			return i
		}
	}
	return -1
}

// entryError is a problem with entry i, placed by ParseMapping.
func entryError(i int, format string, args ...any) error {
	return &MappingError{Entry: i, Err: fmt.Errorf(format, args...)}
}

// fieldNames lists the fields a mapping may name, for messages.
func fieldNames() []string {
	names := make([]string, 0, len(contact.Fields)+1)
	for _, f := range contact.Fields {
		names = append(names, f.Name)
	}
	return append(names, contact.AttributePrefix+"NAME")
}

// check validates what does not depend on a header.
func (m *Mapping) check() error {
	switch m.Unmapped {
	case "", UnmappedAttributes, UnmappedDrop:
	default:
		return fmt.Errorf("\"unmapped\" is %q; use %q (the default: other columns go to the attributes) or %q (they are not sent)", m.Unmapped, UnmappedAttributes, UnmappedDrop)
	}
	if m.Key != "" && strings.TrimSpace(m.Key) == "" {
		return errors.New("\"key\" is blank; name the column that identifies a customer, or leave \"key\" out")
	}
	columns := map[string]int{}
	fields := map[string]int{}
	for i := range m.Columns {
		c := &m.Columns[i]
		col := normalize(c.Column)
		if col == "" {
			return entryError(i, "no \"column\": name a column of the export's header")
		}
		if j, dup := columns[col]; dup {
			return entryError(i, "the column is listed twice, in columns[%d] and here; a column feeds one field: merge the entries", j)
		}
		columns[col] = i
		if c.Drop {
			var extra []string
			if c.Field != "" {
				extra = append(extra, `"field"`)
			}
			if c.Required {
				extra = append(extra, `"required"`)
			}
			if c.Empty != "" {
				extra = append(extra, `"empty"`)
			}
			if c.Normalize != nil {
				extra = append(extra, `"normalize"`)
			}
			if c.Region != "" {
				extra = append(extra, `"region"`)
			}
			if len(extra) > 0 {
				return entryError(i, "\"drop\": true goes with nothing else, but the entry also has %s: remove them, or \"drop\"", strings.Join(extra, ", "))
			}
			if m.Key != "" && col == normalize(m.Key) {
				return entryError(i, "the column is the \"key\" and cannot be dropped")
			}
			continue
		}
		if err := checkField(c.Field); err != nil {
			return entryError(i, "%v", err)
		}
		if j, dup := fields[fieldKey(c.Field)]; dup {
			return entryError(i, "field %q is mapped twice, from columns[%d] (column %q) and from this entry; map one column to it and the other elsewhere, or \"drop\": true", c.Field, j, strings.TrimSpace(m.Columns[j].Column))
		}
		fields[fieldKey(c.Field)] = i
		if c.Field == "external_id" && m.Key != "" && col != normalize(m.Key) {
			return entryError(i, "maps the key (external_id), but \"key\" names column %q; keep one of them", strings.TrimSpace(m.Key))
		}
		if m.Key != "" && col == normalize(m.Key) && c.Field != "external_id" {
			return entryError(i, "the column is the \"key\" (external_id), so it cannot feed %q too; map another column to %s", c.Field, c.Field)
		}
		switch c.Empty {
		case "", EmptyKeep:
		case EmptyClear:
			if c.Field == "external_id" || c.Field == "email" {
				return entryError(i, "\"empty\": \"clear\" cannot apply to %s, which every contact must have; leave \"empty\" out", c.Field)
			}
		default:
			return entryError(i, "\"empty\" is %q; use %q (the default: an empty value leaves the CRM's value) or %q (it clears it)", c.Empty, EmptyKeep, EmptyClear)
		}
		e164 := false
		for _, n := range c.Normalize {
			if !slices.Contains(norms, n) {
				msg := fmt.Sprintf("unknown normalisation %q; use %s", n, strings.Join(norms, ", "))
				if s := nearestName(n, norms); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				return entryError(i, "%s", msg)
			}
			if n == NormE164 {
				e164 = true
				if c.Field != "phone" && !strings.HasPrefix(c.Field, contact.AttributePrefix) {
					return entryError(i, "\"e164\" is for phone numbers: the phone field or an attribute, not %s", c.Field)
				}
			}
		}
		if c.Region != "" {
			r, err := ParsePhoneRegion(c.Region)
			if err != nil {
				return entryError(i, "\"region\": %v", err)
			}
			c.Region = r
			if !e164 && (c.Normalize != nil || c.Field != "phone") {
				return entryError(i, "\"region\" is for phone numbers normalised to E.164: add \"e164\" to \"normalize\", or remove \"region\"")
			}
		}
	}
	return nil
}

// fieldKey is how fields are compared: attributes ignoring case, as the
// CRMs compare property names.
func fieldKey(f string) string {
	if a, ok := strings.CutPrefix(f, contact.AttributePrefix); ok {
		return contact.AttributePrefix + normalize(a)
	}
	return f
}

func checkField(f string) error {
	if f == "" {
		return fmt.Errorf("no \"field\": name one of %s, or say \"drop\": true", strings.Join(fieldNames(), ", "))
	}
	if a, ok := strings.CutPrefix(f, contact.AttributePrefix); ok {
		switch {
		case strings.TrimSpace(a) == "":
			return fmt.Errorf("field %q names no attribute: write %sNAME, NAME being the CRM's property", f, contact.AttributePrefix)
		case a != strings.TrimSpace(a):
			return fmt.Errorf("field %q: the attribute name has spaces around it; remove them", f)
		case strings.IndexByte(a, 0) >= 0:
			return fmt.Errorf("field %q holds a NUL byte, which PostgreSQL cannot store", f)
		}
		return nil
	}
	if _, ok := contact.FieldByName(f); ok {
		return nil
	}
	msg := fmt.Sprintf("unknown field %q; the fields are %s", f, strings.Join(fieldNames(), ", "))
	if s := nearestField(f); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	return errors.New(msg)
}

// nearestField suggests a field for a misspelt one: by alias ("Email
// Address", "mobile"), then by a typo or two.
func nearestField(f string) string {
	s := squash(f)
	for field, names := range hintAliases {
		if s == squash(field) || slices.Contains(names, s) {
			if field == "id" {
				return "external_id"
			}
			return field
		}
	}
	if a, ok := strings.CutPrefix(s, "attributes"); ok && a != "" {
		return contact.AttributePrefix + a
	}
	names := fieldNames()
	return nearestName(f, names[:len(names)-1])
}

// nearestName returns the name of names within a typo or two of s, or "".
func nearestName(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(s), strings.ToLower(n)); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// options describes an entry's rules for Reader.Mapping: "required,
// empty=clear, normalize=trim+e164, region=GB".
func (c *ColumnRule) options() string {
	var o []string
	if c.Required {
		o = append(o, "required")
	}
	if c.Empty == EmptyClear {
		o = append(o, "empty=clear")
	}
	if len(c.Normalize) > 0 {
		o = append(o, "normalize="+strings.Join(c.Normalize, "+"))
	}
	if c.Region != "" {
		o = append(o, "region="+c.Region)
	}
	return strings.Join(o, ", ")
}
