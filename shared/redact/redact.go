// Package redact keeps secrets that ride in URLs and connection strings
// (passwords, query-string keys) out of logs, errors and usage text. It
// works on the text, without url.Parse, so that a malformed URL (a bad
// port, a bad % escape, a space in the password, a missing ']') is
// redacted as well as a valid one: the error url.Parse returns for those
// quotes the URL whole.
//
// All three programs use it: csvreader for DATABASE_URL, crmintegrator
// for CRM_URL and the errors built from it, fakecrm for its token.
package redact

import (
	"errors"
	"net/url"
	"strings"
)

// Mask replaces every secret.
const Mask = "xxxxx"

// safeParams are query parameters whose values are no secret and help to
// read a URL (PostgreSQL's connection settings).
var safeParams = map[string]bool{
	"sslmode": true, "connect_timeout": true, "application_name": true,
	"target_session_attrs": true, "search_path": true,
}

// URL returns s with its password, every query value but a few harmless
// ones, and its fragment replaced by Mask, whether or not s parses. A
// key=value connection string ("host=db password=s3cret") gets its
// password masked.
func URL(s string) string {
	if !strings.Contains(s, "://") {
		return keyValue(s)
	}
	scheme, rest, _ := strings.Cut(s, "://")
	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString("://")
	// The userinfo ends at the last '@': a password may hold '/', '?',
	// '#' or '@' when it was not escaped, and hiding a path with an '@'
	// in it too is the safe mistake.
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		user, _, hasPass := strings.Cut(rest[:i], ":")
		if hasPass || strings.ContainsAny(user, "/?#") {
			if strings.ContainsAny(user, "/?#") {
				user = Mask
			}
			b.WriteString(user)
			b.WriteString(":" + Mask)
		} else {
			b.WriteString(user)
		}
		b.WriteString("@")
		rest = rest[i+1:]
	}
	rest, frag, hasFrag := strings.Cut(rest, "#")
	rest, query, hasQuery := strings.Cut(rest, "?")
	b.WriteString(rest)
	if hasQuery {
		b.WriteString("?")
		b.WriteString(maskQuery(query))
	}
	if hasFrag && frag != "" {
		b.WriteString("#" + Mask)
	}
	return b.String()
}

func maskQuery(q string) string {
	pairs := strings.Split(q, "&")
	for i, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if ok && v != "" && !safeParams[strings.ToLower(k)] {
			pairs[i] = k + "=" + Mask
		}
	}
	return strings.Join(pairs, "&")
}

// keyValue masks the password of a key=value connection string, quoted
// ('se cret', with \' and \\ escapes) or not.
func keyValue(s string) string {
	var b strings.Builder
	for {
		i := indexKey(s, "password")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		j := i + len("password")
		for j < len(s) && s[j] == ' ' {
			j++
		}
		j++ // '='
		for j < len(s) && s[j] == ' ' {
			j++
		}
		b.WriteString(s[:j])
		b.WriteString(Mask)
		s = s[j+valueLen(s[j:]):]
	}
}

// indexKey finds key followed by optional spaces and '=', at the start of
// s or after a space.
func indexKey(s, key string) int {
	for off := 0; ; {
		i := strings.Index(strings.ToLower(s[off:]), key)
		if i < 0 {
			return -1
		}
		i += off
		j := i + len(key)
		for j < len(s) && s[j] == ' ' {
			j++
		}
		if j < len(s) && s[j] == '=' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t') {
			return i
		}
		off = i + 1
	}
}

// valueLen is the length of the value that starts s.
func valueLen(s string) int {
	if s == "" || s[0] != '\'' {
		if i := strings.IndexAny(s, " \t"); i >= 0 {
			return i
		}
		return len(s)
	}
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '\'':
			return i + 1
		}
	}
	return len(s)
}

// secrets are the substrings of s that URL masks, raw and unescaped, for
// Error to look for in an error's text.
func secrets(s string) []string {
	var out []string
	add := func(v string) {
		if v == "" {
			return
		}
		out = append(out, v)
		if u, err := url.PathUnescape(v); err == nil && u != v {
			out = append(out, u)
		}
		if u, err := url.QueryUnescape(v); err == nil && u != v {
			out = append(out, u)
		}
	}
	if !strings.Contains(s, "://") {
		for rest := s; ; {
			i := indexKey(rest, "password")
			if i < 0 {
				break
			}
			j := strings.Index(rest[i:], "=") + i + 1
			for j < len(rest) && rest[j] == ' ' {
				j++
			}
			n := valueLen(rest[j:])
			v := rest[j : j+n]
			add(v)
			add(strings.Trim(v, "'"))
			rest = rest[j+n:]
		}
		return out
	}
	_, rest, _ := strings.Cut(s, "://")
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		user, pass, hasPass := strings.Cut(rest[:i], ":")
		if hasPass {
			add(pass)
			add(user + ":" + pass)
		} else if strings.ContainsAny(user, "/?#") {
			add(user)
		}
		rest = rest[i+1:]
	}
	rest, frag, _ := strings.Cut(rest, "#")
	add(frag)
	if _, q, ok := strings.Cut(rest, "?"); ok {
		for _, p := range strings.Split(q, "&") {
			if k, v, ok := strings.Cut(p, "="); ok && !safeParams[strings.ToLower(k)] {
				add(v)
			}
		}
	}
	return out
}

// Error returns err with the secrets of s (a URL or connection string it
// was built from) taken out of its text: s itself, quoted whole as
// url.Parse's errors do, becomes URL(s); the text url.Parse quotes from a
// malformed part (a bad escape, a bad port) is dropped; and any secret of
// s left is masked. It returns err itself when there is nothing to hide,
// so errors.Is and errors.As still see through it.
func Error(err error, s string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) {
		msg = strings.ReplaceAll(msg, ue.Error(), ue.Op+" "+URL(ue.URL)+": "+unquote(ue.Err.Error()))
	}
	if s != "" {
		msg = strings.ReplaceAll(msg, s, URL(s))
	}
	for _, v := range secrets(s) {
		if len(v) >= 3 {
			msg = strings.ReplaceAll(msg, v, Mask)
		} else { // too short to hide everywhere: where it reads as a password
			msg = strings.ReplaceAll(msg, ":"+v+"@", ":"+Mask+"@")
		}
	}
	if msg == err.Error() {
		return err
	}
	return &redacted{msg: msg, err: err}
}

// unquote drops what an error quotes ("%zz", ":x"): a piece of the input.
func unquote(msg string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(msg, '"')
		if i < 0 {
			b.WriteString(msg)
			return strings.TrimSpace(b.String())
		}
		j := strings.IndexByte(msg[i+1:], '"')
		if j < 0 {
			b.WriteString(msg[:i])
			return strings.TrimSpace(b.String())
		}
		b.WriteString(msg[:i])
		msg = msg[i+1+j+1:]
	}
}

// redacted is an error whose text was redacted. It unwraps to the
// original only for errors.Is against sentinels; its own text is safe.
type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }

// Is lets errors.Is match the sentinels in the original chain without
// exposing that chain's text through Unwrap.
func (e *redacted) Is(target error) bool { return errors.Is(e.err, target) }

// Secret is what usage text shows for a secret value: Mask when it is
// set, "" when not.
func Secret(s string) string {
	if s == "" {
		return ""
	}
	return Mask
}
