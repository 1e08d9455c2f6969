package export

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// ErrPhoneRegion is returned for a region the phone table does not know.
var ErrPhoneRegion = errors.New("unknown phone region")

// phoneRegion is what E.164 normalisation needs to know of a country: its
// calling code, the trunk prefix dialled before national numbers, its
// international call prefix, and how long its national numbers are. The
// lengths are a sanity check that catches a digit lost or a field pasted
// into the wrong column, not a validation against the numbering plan.
type phoneRegion struct {
	code     string // calling code, without "+"
	trunk    string // national trunk prefix, "" if none (Italy keeps its leading 0)
	intl     string // international call prefix besides "00", "" if just "00"
	min, max int    // digits of the national significant number
}

// phoneRegions are common regions by ISO 3166 alpha-2 code. Lengths are
// the national significant number's (after the trunk prefix), as the ITU
// and the national regulators publish them, with some slack where a
// country mixes lengths.
var phoneRegions = map[string]phoneRegion{
	"US": {"1", "1", "011", 10, 10}, "CA": {"1", "1", "011", 10, 10},
	"MX": {"52", "", "", 10, 10}, "BR": {"55", "0", "", 10, 11}, "AR": {"54", "0", "", 10, 11},
	"CL": {"56", "", "", 9, 9}, "CO": {"57", "", "", 10, 10}, "PE": {"51", "0", "", 8, 9},
	"GB": {"44", "0", "", 9, 10}, "IE": {"353", "0", "", 7, 9}, "FR": {"33", "0", "", 9, 9},
	"DE": {"49", "0", "", 6, 13}, "AT": {"43", "0", "", 4, 13}, "CH": {"41", "0", "", 9, 9},
	"NL": {"31", "0", "", 9, 9}, "BE": {"32", "0", "", 8, 9}, "LU": {"352", "", "", 4, 11},
	"ES": {"34", "", "", 9, 9}, "PT": {"351", "", "", 9, 9}, "IT": {"39", "", "", 6, 11},
	"DK": {"45", "", "", 8, 8}, "NO": {"47", "", "", 8, 8}, "SE": {"46", "0", "", 6, 10},
	"FI": {"358", "0", "", 5, 12}, "IS": {"354", "", "", 7, 9}, "PL": {"48", "", "", 9, 9},
	"CZ": {"420", "", "", 9, 9}, "SK": {"421", "0", "", 9, 9}, "HU": {"36", "06", "", 8, 9},
	"RO": {"40", "0", "", 9, 9}, "BG": {"359", "0", "", 7, 9}, "GR": {"30", "", "", 10, 10},
	"HR": {"385", "0", "", 8, 9}, "SI": {"386", "0", "", 8, 8}, "EE": {"372", "", "", 7, 8},
	"LV": {"371", "", "", 8, 8}, "LT": {"370", "8", "", 8, 8}, "UA": {"380", "0", "", 9, 9},
	"TR": {"90", "0", "", 10, 10}, "RU": {"7", "8", "810", 10, 10}, "IL": {"972", "0", "", 8, 9},
	"AE": {"971", "0", "", 8, 9}, "SA": {"966", "0", "", 8, 9}, "EG": {"20", "0", "", 9, 10},
	"ZA": {"27", "0", "", 9, 9}, "NG": {"234", "0", "", 8, 10}, "KE": {"254", "0", "", 9, 9},
	"IN": {"91", "0", "", 10, 10}, "CN": {"86", "0", "", 9, 11}, "HK": {"852", "", "", 8, 8},
	"SG": {"65", "", "", 8, 8}, "JP": {"81", "0", "010", 9, 10}, "KR": {"82", "0", "001", 8, 10},
	"TW": {"886", "0", "", 8, 9}, "PH": {"63", "0", "", 8, 10}, "MY": {"60", "0", "", 9, 10},
	"TH": {"66", "0", "", 8, 9}, "VN": {"84", "0", "", 9, 10}, "AU": {"61", "0", "0011", 9, 9},
	"NZ": {"64", "0", "", 8, 10},
}

// ParsePhoneRegion checks an ISO 3166 alpha-2 region code (any case) against
// the phone table and returns it in upper case; "" stays "".
func ParsePhoneRegion(s string) (string, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if _, ok := phoneRegions[s]; ok || s == "" {
		return s, nil
	}
	return "", fmt.Errorf("%w %q: use an ISO 3166 two-letter code, one of %s (docs/mapping.md); for another country, write the numbers with +CC",
		ErrPhoneRegion, s, strings.Join(slices.Sorted(mapKeys(phoneRegions)), " "))
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// E164 normalises a phone number to E.164 ("+442079460000"). Spaces,
// dashes, dots, slashes and parentheses are dropped, and so is a "(0)"
// after the country code. A number starting with "+", "00" or the
// region's international prefix is international; any other is national
// to region (an ISO 3166 code; "" means none), with or without its trunk
// prefix, since spreadsheets drop leading zeros. An empty value stays
// empty. The error says why the number is refused: it has letters or an
// extension (E.164 cannot hold one), it has no country code and no region
// is given, or its length does not fit.
func E164(raw, region string) (string, error) {
	var reg *phoneRegion
	if region != "" {
		r, ok := phoneRegions[strings.ToUpper(region)]
		if !ok {
			_, err := ParsePhoneRegion(region)
			return "", err
		}
		reg = &r
	}
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", nil
	}
	plus := strings.HasPrefix(s, "+")
	if plus {
		s = s[1:]
	}
	var digits [32]byte
	d := digits[:0]
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			if len(d) == cap(d) {
				return "", errors.New("too many digits for a phone number")
			}
			d = append(d, c)
		case c == ' ' || c == '-' || c == '.' || c == '/' || c == ')' || c == '\t':
		case c == '(':
			// "+44 (0)20 ...": the trunk prefix, not dialled from abroad.
			if strings.HasPrefix(s[i:], "(0)") && (plus || len(d) > 0) {
				i += 2
			}
		case c == 'x' || c == 'X' || c == '#' || c == 'e' || c == 'E' || c == ',' || c == ';':
			if len(d) > 0 && isExtension(s[i:]) {
				return "", fmt.Errorf("it has an extension (%q), which E.164 cannot hold: put the extension in a column of its own", strings.TrimSpace(s[i:]))
			}
			return "", errors.New("it holds letters or symbols; only digits, spaces, + - . / ( ) are allowed")
		default:
			r := []rune(s[i:])[0]
			if unicode.IsSpace(r) || r == '‐' || r == '‑' || r == '–' || r == '—' {
				i += len(string(r)) - 1
				continue
			}
			return "", errors.New("it holds letters or symbols; only digits, spaces, + - . / ( ) are allowed")
		}
	}
	num := string(d)
	if !plus {
		switch {
		case reg != nil && reg.intl != "" && strings.HasPrefix(num, reg.intl):
			num, plus = num[len(reg.intl):], true
		case strings.HasPrefix(num, "00"):
			num, plus = num[2:], true
		}
	}
	if plus {
		return international(num)
	}
	if reg == nil {
		return "", errors.New("it has no country code (+CC or 00CC) and no region is given: give -phone-region (or \"region\" in the mapping file) or write the number as +CC")
	}
	return national(num, reg)
}

// isExtension reports whether s, the rest of a number from a letter on,
// looks like an extension: "x123", "ext. 123", "extension 123", "#123".
func isExtension(s string) bool {
	l := strings.ToLower(s)
	for _, p := range []string{"extension", "ext.", "ext", "x", "#", ",", ";"} {
		if rest, ok := strings.CutPrefix(l, p); ok {
			rest = strings.TrimSpace(rest)
			return rest != "" && strings.Trim(rest, "0123456789 ") == ""
		}
	}
	return false
}

func national(num string, reg *phoneRegion) (string, error) {
	nsn := num
	trunk := reg.trunk != "" && strings.HasPrefix(num, reg.trunk)
	switch {
	case trunk && fits(num[len(reg.trunk):], reg):
		nsn = num[len(reg.trunk):]
	case fits(num, reg):
	case strings.HasPrefix(num, reg.code) && fits(num[len(reg.code):], reg):
		nsn = num[len(reg.code):] // the country code without its "+" (a spreadsheet ate it)
	case trunk:
		nsn = num[len(reg.trunk):] // for the message
	}
	if !fits(nsn, reg) {
		return "", lengthError(len(nsn), reg)
	}
	return "+" + reg.code + nsn, nil
}

func international(num string) (string, error) {
	if num == "" || num[0] == '0' {
		return "", errors.New("no valid country code after the international prefix")
	}
	if len(num) > 15 {
		return "", fmt.Errorf("%d digits, while E.164 allows at most 15 with the country code", len(num))
	}
	// Calling codes are prefix-free: at most one of 1, 2 or 3 digits is one.
	for n := 1; n <= 3 && n < len(num); n++ {
		reg := regionByCode(num[:n])
		if reg == nil {
			continue
		}
		nsn := num[n:]
		if reg.trunk != "" && strings.HasPrefix(nsn, reg.trunk) && !fits(nsn, reg) && fits(nsn[len(reg.trunk):], reg) {
			nsn = nsn[len(reg.trunk):] // "+44 020 ...": a trunk 0 kept after the country code
		}
		if !fits(nsn, reg) {
			return "", lengthError(len(nsn), reg)
		}
		return "+" + reg.code + nsn, nil
	}
	if len(num) < 7 {
		return "", fmt.Errorf("%d digits is too short for an international number", len(num))
	}
	return "+" + num, nil
}

// regionByCode returns a region of calling code, or nil. Regions sharing
// a code (US and CA) share its rules.
func regionByCode(code string) *phoneRegion {
	for _, r := range phoneRegions {
		if r.code == code {
			return &r
		}
	}
	return nil
}

func fits(nsn string, reg *phoneRegion) bool {
	if len(nsn) < reg.min || len(nsn) > reg.max || len(reg.code)+len(nsn) > 15 {
		return false
	}
	if reg.code == "1" && (nsn[0] < '2' || nsn[3] < '2') {
		return false // NANP: area code and exchange start with 2-9
	}
	return true
}

func lengthError(n int, reg *phoneRegion) error {
	want := fmt.Sprintf("%d", reg.min)
	if reg.max != reg.min {
		want = fmt.Sprintf("%d to %d", reg.min, reg.max)
	}
	if reg.code == "1" && n == 10 {
		return errors.New("not a North American number: the area code and the exchange cannot start with 0 or 1")
	}
	trunk := ""
	if reg.trunk != "" {
		trunk = fmt.Sprintf(" after the trunk prefix %s", reg.trunk)
	}
	return fmt.Errorf("%d digits, while numbers of +%s have %s%s", n, reg.code, want, trunk)
}
