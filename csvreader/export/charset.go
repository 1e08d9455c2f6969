package export

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Encodings Options.Encoding accepts, by their canonical names.
const (
	EncodingUTF8        = "utf-8"
	EncodingWindows1252 = "windows-1252"
	EncodingLatin1      = "latin-1"
	EncodingUTF16       = "utf-16" // byte order from the BOM, else guessed from the NUL bytes
	EncodingUTF16LE     = "utf-16le"
	EncodingUTF16BE     = "utf-16be"
)

// ErrEncoding is a file that is not in the expected text encoding.
var ErrEncoding = errors.New("wrong text encoding")

// sniffSize is how much of the (decompressed) file is checked for its
// encoding before anything is read: enough to hold thousands of rows, so a
// file with a few accented names is caught before a row is sent. A variable
// so tests can exercise what comes after it.
var sniffSize = 4 << 20

// ParseEncoding returns the canonical name of an encoding given by a user,
// or an error listing the ones supported. "" means UTF-8.
func ParseEncoding(s string) (string, error) {
	switch strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "_", "-")) {
	case "", "utf-8", "utf8":
		return EncodingUTF8, nil
	case "windows-1252", "cp1252", "win-1252", "windows1252":
		return EncodingWindows1252, nil
	case "latin-1", "latin1", "iso-8859-1", "iso8859-1", "l1":
		return EncodingLatin1, nil
	case "utf-16", "utf16":
		return EncodingUTF16, nil
	case "utf-16le", "utf16le":
		return EncodingUTF16LE, nil
	case "utf-16be", "utf16be":
		return EncodingUTF16BE, nil
	}
	return "", fmt.Errorf("%w: unknown encoding %q; use utf-8, windows-1252, latin-1, utf-16, utf-16le or utf-16be", ErrEncoding, s)
}

// iconvName is how iconv spells an encoding, for the messages.
var iconvName = map[string]string{
	EncodingWindows1252: "WINDOWS-1252", EncodingLatin1: "ISO-8859-1",
	EncodingUTF16LE: "UTF-16LE", EncodingUTF16BE: "UTF-16BE",
}

// textReader turns the file's bytes into UTF-8 text: it strips a BOM, picks
// the encoding (the BOM's, else enc), checks the first sniffSize bytes
// against it, and returns a reader of UTF-8 and the encoding used. It fails
// before anything is parsed when the file is clearly in another encoding.
// name and gzipped are for messages.
func textReader(src io.Reader, enc, name string, gzipped bool) (io.Reader, string, error) {
	// Grown as it fills, so a small file does not cost sniffSize.
	prefix := make([]byte, 0, min(sniffSize, 64<<10))
	more := true // the file may go on past the prefix
	for len(prefix) < sniffSize {
		if len(prefix) == cap(prefix) {
			prefix = slices.Grow(prefix, min(cap(prefix), sniffSize-len(prefix)))
		}
		n, err := src.Read(prefix[len(prefix):min(cap(prefix), sniffSize)])
		prefix = prefix[:len(prefix)+n]
		if err == io.EOF {
			more = false
			break
		}
		if err != nil {
			return nil, "", err
		}
	}
	// MultiReader drops the prefix once read, so it is not held for the run.
	rest := func(skip int) io.Reader {
		return io.MultiReader(bytes.NewReader(prefix[skip:]), src)
	}
	if enc == "" {
		enc = EncodingUTF8
	}
	bom := ""
	switch {
	case bytes.HasPrefix(prefix, utf8BOM):
		bom = EncodingUTF8
	case bytes.HasPrefix(prefix, []byte{0xFF, 0xFE}):
		bom = EncodingUTF16LE
	case bytes.HasPrefix(prefix, []byte{0xFE, 0xFF}):
		bom = EncodingUTF16BE
	}
	if bom != "" {
		if enc != EncodingUTF8 && enc != EncodingUTF16 && enc != bom {
			return nil, "", fmt.Errorf("%w: the file starts with a %s byte order mark, but -encoding %s was given; drop -encoding", ErrEncoding, strings.ToUpper(bom), enc)
		}
		skip := len(utf8BOM)
		if bom != EncodingUTF8 {
			skip = 2
			return &utf16Reader{src: rest(skip), be: bom == EncodingUTF16BE}, bom, nil
		}
		enc = EncodingUTF8
		if err := checkUTF8(prefix[skip:], more, name, gzipped); err != nil {
			return nil, "", err
		}
		return rest(skip), enc, nil
	}
	guess := guessUTF16(prefix)
	switch enc {
	case EncodingUTF16:
		if guess == "" {
			return nil, "", fmt.Errorf("%w: -encoding utf-16 but the file has no byte order mark and does not look like UTF-16; give utf-16le or utf-16be", ErrEncoding)
		}
		enc = guess
		fallthrough
	case EncodingUTF16LE, EncodingUTF16BE:
		return &utf16Reader{src: rest(0), be: enc == EncodingUTF16BE}, enc, nil
	case EncodingWindows1252, EncodingLatin1:
		if !utf8.Valid(trimPartialRune(prefix, more)) || isASCII(prefix) {
			return &byteCharsetReader{src: rest(0), latin1: enc == EncodingLatin1}, enc, nil
		}
		// Valid UTF-8 with non-ASCII text is almost never windows-1252:
		// decoding it again would turn "é" into "Ã©" in every row.
		return nil, "", fmt.Errorf("%w: -encoding %s was given, but the file is already valid UTF-8 (it holds multi-byte UTF-8 characters); drop -encoding", ErrEncoding, enc)
	}
	if guess != "" {
		return nil, "", fmt.Errorf("%w: the file looks like %s without a byte order mark (every other byte is NUL), as Excel's \"Unicode Text\" saves it; rerun with -encoding %s, or convert it: %s",
			ErrEncoding, strings.ToUpper(guess), guess, iconvCommand(name, guess, gzipped))
	}
	if err := checkUTF8(prefix, more, name, gzipped); err != nil {
		return nil, "", err
	}
	return rest(0), EncodingUTF8, nil
}

// checkUTF8 fails with a message naming the likely encoding when b, the
// start of the file, is not valid UTF-8. A rune cut by the end of b is fine
// when more follows.
func checkUTF8(b []byte, more bool, name string, gzipped bool) error {
	b = trimPartialRune(b, more)
	if utf8.Valid(b) {
		return nil
	}
	i := 0
	for i < len(b) {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			break
		}
		i += size
	}
	line := 1 + bytes.Count(b[:i], []byte("\n"))
	if !bytes.Contains(b, []byte("\n")) {
		line = 1 + bytes.Count(b[:i], []byte("\r"))
	}
	guess, example := EncodingWindows1252, win1252[b[i]-0x80] // an invalid byte is never ASCII
	return &encodingError{line: line, offset: int64(i), err: fmt.Errorf("%w: the file is not UTF-8: line %d holds byte 0x%02X (%q in windows-1252); it looks like windows-1252 (Excel's \"CSV\" format; latin-1 is the same for letters). Rerun with -encoding %s, or convert it: %s",
		ErrEncoding, line, b[i], example, guess, iconvCommand(name, guess, gzipped))}
}

// encodingError carries where the first bad byte is, for the *Error.
type encodingError struct {
	line   int
	offset int64
	err    error
}

func (e *encodingError) Error() string { return e.err.Error() }
func (e *encodingError) Unwrap() error { return e.err }

// trimPartialRune drops an incomplete UTF-8 sequence at the end of b when
// the rest of it may follow.
func trimPartialRune(b []byte, more bool) []byte {
	if !more {
		return b
	}
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		c := b[len(b)-i]
		if c < 0x80 {
			return b
		}
		if c >= 0xC0 { // a leading byte: is its sequence complete?
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			return b
		}
	}
	return b
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// guessUTF16 recognises UTF-16 text without a BOM by its NUL bytes: ASCII
// text in UTF-16LE has a NUL at every odd offset, in UTF-16BE at every even
// one. A UTF-8 export has almost none.
func guessUTF16(b []byte) string {
	b = b[:min(len(b), 4096)]
	if len(b) < 4 {
		return ""
	}
	var even, odd int
	for i, c := range b {
		if c == 0 {
			if i%2 == 0 {
				even++
			} else {
				odd++
			}
		}
	}
	half := len(b) / 2
	switch {
	case odd > half*3/4 && even < half/8:
		return EncodingUTF16LE
	case even > half*3/4 && odd < half/8:
		return EncodingUTF16BE
	}
	return ""
}

// iconvCommand is the command line that converts the file to UTF-8.
func iconvCommand(name, enc string, gzipped bool) string {
	conv := "iconv -f " + iconvName[enc] + " -t UTF-8"
	switch {
	case name == "stdin":
		return "... | " + conv + " | csvreader ... -"
	case gzipped:
		return fmt.Sprintf("gunzip -c %s | %s > %s", shellQuote(name), conv, shellQuote(utf8Name(name)))
	}
	return fmt.Sprintf("%s %s > %s", conv, shellQuote(name), shellQuote(utf8Name(name)))
}

func utf8Name(name string) string {
	base := strings.TrimSuffix(name, ".gz")
	if i := strings.LastIndexByte(base, '.'); i > strings.LastIndexByte(base, '/') {
		return base[:i] + ".utf8" + base[i:]
	}
	return base + ".utf8"
}

// shellQuote quotes a file name for a command line when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// invalidUTF8 stands in the decoded text for input that has no character
// (an unpaired UTF-16 surrogate, an odd last byte): it is not valid UTF-8,
// so the row holding it is rejected as invalid_utf8 rather than altered.
const invalidUTF8 = 0xFF

// utf16Reader decodes UTF-16 into UTF-8.
type utf16Reader struct {
	src  io.Reader
	be   bool
	in   []byte // undecoded input: at most one code unit and a half carried over
	out  []byte // decoded, not yet returned
	err  error
	read [16 << 10]byte
}

func (u *utf16Reader) Read(p []byte) (int, error) {
	for len(u.out) == 0 {
		if u.err != nil {
			return 0, u.err
		}
		n, err := u.src.Read(u.read[:])
		u.in = append(u.in, u.read[:n]...)
		u.err = err
		u.decode(err != nil)
	}
	n := copy(p, u.out)
	u.out = u.out[n:]
	if len(u.out) == 0 {
		u.out = u.out[:0:0]
	}
	return n, nil
}

// decode turns complete code units of u.in into u.out; at the end of the
// input (final) nothing is carried over.
func (u *utf16Reader) decode(final bool) {
	out := u.out[:0]
	in := u.in
	unit := func(b []byte) rune {
		if u.be {
			return rune(b[0])<<8 | rune(b[1])
		}
		return rune(b[1])<<8 | rune(b[0])
	}
	for len(in) >= 2 {
		r := unit(in)
		switch {
		case utf16.IsSurrogate(r) && r < 0xDC00: // high surrogate: needs the next unit
			if len(in) < 4 {
				if !final {
					goto done
				}
				out = append(out, invalidUTF8)
				in = in[2:]
				continue
			}
			if r2 := unit(in[2:]); r2 >= 0xDC00 && r2 <= 0xDFFF {
				out = utf8.AppendRune(out, utf16.DecodeRune(r, r2))
				in = in[4:]
				continue
			}
			out = append(out, invalidUTF8)
			in = in[2:]
		case utf16.IsSurrogate(r): // low surrogate alone
			out = append(out, invalidUTF8)
			in = in[2:]
		default:
			out = utf8.AppendRune(out, r)
			in = in[2:]
		}
	}
	if final && len(in) == 1 {
		out = append(out, invalidUTF8)
		in = in[1:]
	}
done:
	u.out = out
	u.in = append(u.in[:0], in...)
}

// byteCharsetReader decodes a one-byte-per-character encoding (windows-1252
// or latin-1) into UTF-8.
type byteCharsetReader struct {
	src    io.Reader
	latin1 bool
	out    []byte
	err    error
	read   [16 << 10]byte
}

func (c *byteCharsetReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		n, err := c.src.Read(c.read[:])
		c.err = err
		out := c.out[:0]
		for _, b := range c.read[:n] {
			switch {
			case b < 0x80:
				out = append(out, b)
			case c.latin1:
				out = utf8.AppendRune(out, rune(b))
			default:
				out = utf8.AppendRune(out, win1252[b-0x80])
			}
		}
		c.out = out
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	if len(c.out) == 0 {
		c.out = c.out[:0:0]
	}
	return n, nil
}

// win1252 maps bytes 0x80..0xFF of windows-1252 to Unicode. The five bytes
// windows-1252 leaves undefined (81, 8D, 8F, 90, 9D) map to the C1 control
// of the same value, as the WHATWG encoding standard does.
var win1252 = [128]rune{
	'\u20AC', '\u0081', '\u201A', '\u0192', '\u201E', '\u2026', '\u2020', '\u2021',
	'\u02C6', '\u2030', '\u0160', '\u2039', '\u0152', '\u008D', '\u017D', '\u008F',
	'\u0090', '\u2018', '\u2019', '\u201C', '\u201D', '\u2022', '\u2013', '\u2014',
	'\u02DC', '\u2122', '\u0161', '\u203A', '\u0153', '\u009D', '\u017E', '\u0178',
	0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF,
	0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xBB, 0xBC, 0xBD, 0xBE, 0xBF,
	0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF,
	0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF,
	0xE0, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xEB, 0xEC, 0xED, 0xEE, 0xEF,
	0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF,
}
