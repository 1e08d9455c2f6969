package fakecrm

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The fake's SOQL is one shape:
//
//	SELECT field, ... FROM object
//	  [WHERE field = 'value' | WHERE field IN ('value', ...) | WHERE field = null]
//	  [LIMIT n]
//
// Keywords and field names are compared without regard to case; string
// literals take SOQL's escapes (Quoted String Escape Sequences page). As in
// Salesforce, comparisons of text fields ignore case (Comparison Operators
// page: only unique case-sensitive fields compare case-sensitively, and the
// fake has none).

// soqlQuery is a parsed query.
type soqlQuery struct {
	fields []string // describe names, in the order asked
	where  *soqlWhere
	limit  int // -1: none
}

type soqlWhere struct {
	field  string
	values []string
	null   bool // field = null
}

// soqlError is a query Salesforce refuses: MALFORMED_QUERY, INVALID_FIELD
// or INVALID_TYPE, with its message.
type soqlError struct{ code, msg string }

func (e *soqlError) Error() string { return e.code + ": " + e.msg }

type soqlToken struct {
	kind byte // 'w' word, 's' string, 'n' number, or the punctuation itself
	text string
	col  int // 1-based
}

func soqlLex(q string) ([]soqlToken, *soqlError) {
	var toks []soqlToken
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == ',' || c == '(' || c == ')' || c == '=':
			toks = append(toks, soqlToken{kind: c, text: string(c), col: i + 1})
			i++
		case c == '\'':
			s, n, err := soqlString(q, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, soqlToken{kind: 's', text: s, col: i + 1})
			i = n
		case c >= '0' && c <= '9':
			j := i
			for j < len(q) && q[j] >= '0' && q[j] <= '9' {
				j++
			}
			toks = append(toks, soqlToken{kind: 'n', text: q[i:j], col: i + 1})
			i = j
		case c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z':
			j := i
			for j < len(q) && (q[j] == '_' || q[j] == '.' || q[j] >= '0' && q[j] <= '9' || q[j] >= 'A' && q[j] <= 'Z' || q[j] >= 'a' && q[j] <= 'z') {
				j++
			}
			toks = append(toks, soqlToken{kind: 'w', text: q[i:j], col: i + 1})
			i = j
		default:
			r, _ := utf8.DecodeRuneInString(q[i:])
			return nil, soqlAt(i+1, "MALFORMED_QUERY", fmt.Sprintf("line 1:%d no viable alternative at character '%c'", i, r))
		}
	}
	return toks, nil
}

// soqlString reads the literal opening at q[i], returning its value and
// the index after its closing quote.
func soqlString(q string, i int) (string, int, *soqlError) {
	var b strings.Builder
	for j := i + 1; j < len(q); j++ {
		c := q[j]
		switch c {
		case '\'':
			return b.String(), j + 1, nil
		case '\\':
			if j+1 >= len(q) {
				return "", 0, soqlAt(j+1, "MALFORMED_QUERY", "Invalid string literal: a backslash ends the query")
			}
			j++
			switch q[j] {
			case 'n', 'N':
				b.WriteByte('\n')
			case 'r', 'R':
				b.WriteByte('\r')
			case 't', 'T':
				b.WriteByte('\t')
			case 'b', 'B':
				b.WriteByte('\b')
			case 'f', 'F':
				b.WriteByte('\f')
			case '"', '\'', '\\':
				b.WriteByte(q[j])
			case 'u':
				if j+4 >= len(q) {
					return "", 0, soqlAt(j, "MALFORMED_QUERY", "Invalid unicode escape in string literal")
				}
				v, err := strconv.ParseUint(q[j+1:j+5], 16, 16)
				if err != nil {
					return "", 0, soqlAt(j, "MALFORMED_QUERY", "Invalid unicode escape in string literal")
				}
				b.WriteRune(rune(v))
				j += 4
			default:
				// "If you use a backslash character in any other context,
				// an error occurs."
				return "", 0, soqlAt(j, "MALFORMED_QUERY", fmt.Sprintf("Invalid string literal '\\%c'. Illegal character sequence '\\%c' in string literal.", q[j], q[j]))
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, soqlAt(i+1, "MALFORMED_QUERY", "unexpected token: <EOF>: the string literal is not closed")
}

func soqlAt(col int, code, msg string) *soqlError {
	return &soqlError{code: code, msg: fmt.Sprintf("ERROR at Row:1:Column:%d\n%s", col, msg)}
}

// parseSOQL parses q against the object's fields.
func (sf *salesforce) parseSOQL(q string) (soqlQuery, *soqlError) {
	if len(q) > SalesforceMaxSOQL {
		return soqlQuery{}, &soqlError{"MALFORMED_QUERY", fmt.Sprintf("SOQL statements cannot be longer than %d characters.", SalesforceMaxSOQL)}
	}
	toks, err := soqlLex(q)
	if err != nil {
		return soqlQuery{}, err
	}
	p := soqlParser{toks: toks, end: len(q) + 1}
	out := soqlQuery{limit: -1}
	if !p.keyword("SELECT") {
		return out, p.unexpected()
	}
	var names []soqlToken
	for {
		t, ok := p.take('w')
		if !ok || isSOQLKeyword(t.text) {
			if ok {
				p.i--
			}
			return out, p.unexpected()
		}
		names = append(names, t)
		if !p.punct(',') {
			break
		}
	}
	if !p.keyword("FROM") {
		return out, p.unexpected()
	}
	obj, ok := p.take('w')
	if !ok {
		return out, p.unexpected()
	}
	if !strings.EqualFold(obj.text, sf.object) {
		return out, soqlAt(obj.col, "INVALID_TYPE", "sObject type '"+obj.text+"' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.")
	}
	// Fields are checked once the object is known, as Salesforce does.
	for _, t := range names {
		f := sf.field(t.text)
		if f == nil {
			return out, sf.noSuchColumn(t)
		}
		out.fields = append(out.fields, f.name)
	}
	if p.keyword("WHERE") {
		t, ok := p.take('w')
		if !ok || isSOQLKeyword(t.text) {
			return out, p.unexpected()
		}
		f := sf.field(t.text)
		if f == nil {
			return out, sf.noSuchColumn(t)
		}
		w := &soqlWhere{field: f.name}
		switch {
		case p.punct('='):
			if p.keyword("null") {
				w.null = true
				break
			}
			v, ok := p.take('s')
			if !ok {
				return out, p.unexpected()
			}
			w.values = []string{v.text}
		case p.keyword("IN"):
			if !p.punct('(') {
				return out, p.unexpected()
			}
			for {
				v, ok := p.take('s')
				if !ok {
					return out, p.unexpected()
				}
				w.values = append(w.values, v.text)
				if !p.punct(',') {
					break
				}
			}
			if !p.punct(')') {
				return out, p.unexpected()
			}
		default:
			return out, p.unexpected()
		}
		out.where = w
	}
	if p.keyword("LIMIT") {
		n, ok := p.take('n')
		if !ok {
			return out, p.unexpected()
		}
		v, err := strconv.Atoi(n.text)
		if err != nil {
			return out, soqlAt(n.col, "MALFORMED_QUERY", "LIMIT "+n.text+" is out of range")
		}
		out.limit = v
	}
	if p.i < len(p.toks) {
		return out, p.unexpected()
	}
	return out, nil
}

func (sf *salesforce) noSuchColumn(t soqlToken) *soqlError {
	return soqlAt(t.col, "INVALID_FIELD", "No such column '"+t.text+"' on entity '"+sf.object+"'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.")
}

var soqlKeywords = []string{"SELECT", "FROM", "WHERE", "IN", "LIMIT", "AND", "OR", "NOT", "ORDER", "GROUP", "BY", "OFFSET", "LIKE"}

func isSOQLKeyword(s string) bool {
	for _, k := range soqlKeywords {
		if strings.EqualFold(s, k) {
			return true
		}
	}
	return false
}

type soqlParser struct {
	toks []soqlToken
	i    int
	end  int // the column after the query, for <EOF>
}

func (p *soqlParser) keyword(k string) bool {
	if p.i < len(p.toks) && p.toks[p.i].kind == 'w' && strings.EqualFold(p.toks[p.i].text, k) {
		p.i++
		return true
	}
	return false
}

func (p *soqlParser) punct(c byte) bool {
	if p.i < len(p.toks) && p.toks[p.i].kind == c {
		p.i++
		return true
	}
	return false
}

func (p *soqlParser) take(kind byte) (soqlToken, bool) {
	if p.i < len(p.toks) && p.toks[p.i].kind == kind {
		p.i++
		return p.toks[p.i-1], true
	}
	return soqlToken{}, false
}

func (p *soqlParser) unexpected() *soqlError {
	if p.i >= len(p.toks) {
		return soqlAt(p.end, "MALFORMED_QUERY", "unexpected token: <EOF>")
	}
	t := p.toks[p.i]
	text := t.text
	if t.kind == 's' {
		text = "'" + text + "'"
	}
	return soqlAt(t.col, "MALFORMED_QUERY", "unexpected token: "+text)
}

// match reports whether r satisfies the WHERE clause, comparing text
// without regard to case.
func (w *soqlWhere) match(r *sfRecord) bool {
	if w == nil {
		return true
	}
	v, has := r.value(w.field)
	if w.null {
		return !has || v == ""
	}
	for _, want := range w.values {
		if w.field == "Id" {
			if len(want) == 15 && strings.HasPrefix(v, want) || len(want) == 18 && strings.EqualFold(v, want) {
				return true
			}
			continue
		}
		if has && strings.EqualFold(v, want) {
			return true
		}
	}
	return false
}
