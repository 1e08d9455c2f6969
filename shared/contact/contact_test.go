package contact

import (
	"strings"
	"testing"
)

func TestValidEmail(t *testing.T) {
	tests := []struct {
		email string
		ok    bool
	}{
		{"ada@example.com", true},
		{"a.b+tag@sub.example.co.uk", true},
		{"ünïcode@exämple.de", true},
		{"", false},
		{"no-at.example.com", false},
		{"@example.com", false},     // empty local part
		{"ada@", false},             // empty domain
		{"ada@localhost", false},    // domain without a dot
		{"ada@@example.com", false}, // two @
		{"a@b@example.com", false},  // two @
		{"ada lovelace@example.com", false},
		{"ada@example.com ", false},      // trailing space
		{"ada@exam\tple.com", false},     // tab
		{"ada@example.com\n", false},     // newline
		{"ada@exa\u00a0mple.com", false}, // no-break space
	}
	for _, tc := range tests {
		if got := ValidEmail(tc.email); got != tc.ok {
			t.Errorf("ValidEmail(%q) = %v, want %v", tc.email, got, tc.ok)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Contact{ExternalID: "C-1", Email: "ada@example.com"}
	tests := []struct {
		name string
		c    Contact
		code string // "" = valid
	}{
		{"valid", ok, ""},
		{"missing id", Contact{Email: "ada@example.com"}, CodeMissingExternalID},
		{"id of 128 characters", Contact{ExternalID: strings.Repeat("é", 128), Email: "a@b.c"}, ""},
		{"id of 129 characters", Contact{ExternalID: strings.Repeat("x", 129), Email: "a@b.c"}, CodeExternalIDTooLong},
		{"missing email", Contact{ExternalID: "C-1"}, CodeMissingEmail},
		{"invalid email", Contact{ExternalID: "C-1", Email: "nope"}, CodeInvalidEmail},
		{"invalid utf-8 name", Contact{ExternalID: "C-1", Email: "a@b.c", FirstName: "\xff"}, CodeInvalidUTF8},
		{"invalid utf-8 attribute", Contact{ExternalID: "C-1", Email: "a@b.c", Attributes: AttrsOf(map[string]string{"k": "\xc3"})}, CodeInvalidUTF8},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.c.Validate()
			got := ""
			if p != nil {
				got = p.Code
			}
			if got != tc.code {
				t.Errorf("Validate() = %v, want code %q", p, tc.code)
			}
			// ValidateChecked: the same rules but the UTF-8 pass, whose
			// strings its caller checked.
			want := tc.code
			if want == CodeInvalidUTF8 {
				want = ""
			}
			got = ""
			if p := tc.c.ValidateChecked(); p != nil {
				got = p.Code
			}
			if got != want {
				t.Errorf("ValidateChecked() = %q, want code %q", got, want)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	a := Contact{ExternalID: "C-1", Email: "a@b.c", Attributes: AttrsOf(map[string]string{"x": "1", "y": "2"})}
	b := Contact{ExternalID: "C-1", Email: "a@b.c", Attributes: AttrsOf(map[string]string{"y": "2", "x": "1"})}
	if a.Fingerprint() != b.Fingerprint() {
		t.Error("fingerprint depends on map order")
	}
	// Field boundaries count: moving text between fields changes it.
	c := Contact{ExternalID: "C-1", Email: "a@b.c", FirstName: "ab", LastName: "c"}
	d := Contact{ExternalID: "C-1", Email: "a@b.c", FirstName: "a", LastName: "bc"}
	if c.Fingerprint() == d.Fingerprint() {
		t.Error("fingerprint ignores field boundaries")
	}
}

// Fingerprints are stored in the ledger: they must never change. These are
// the values of the original fmt-based implementation.
func TestFingerprintStable(t *testing.T) {
	for _, tc := range []struct {
		c    Contact
		want string
	}{
		{Contact{ExternalID: "C42", Email: "ada@example.com", FirstName: "Ada", LastName: "Lovelace", Phone: "+44 1",
			Attributes: AttrsOf(map[string]string{"company": "Acme, Ltd", "city": "London", "country": "GB", "created_at": "2024-01-01"})},
			"559da5aaa32294f8e1726d56b843ecca"},
		{Contact{ExternalID: "é", Email: "x@y.z"}, "40d0f793331957d9eadb82c2e6a3e0db"},
	} {
		if got := tc.c.Fingerprint(); got != tc.want {
			t.Errorf("Fingerprint(%+v) = %s, want %s", tc.c, got, tc.want)
		}
	}
}

func BenchmarkFingerprint(b *testing.B) {
	c := Contact{ExternalID: "C0000042", Email: "ada.lovelace42@example.com", FirstName: "Ada", LastName: "Lovelace", Phone: "+44 20 7946 0042",
		Attributes: AttrsOf(map[string]string{"company": "Acme Ltd", "city": "London", "country": "GB", "created_at": "2024-01-01T10:00:00Z"})}
	b.ReportAllocs()
	for b.Loop() {
		c.Fingerprint()
	}
}

func TestASCII(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"", true},
		{"C-1", true},
		{"exactly8", true},
		{"sixteen bytes!!!", true},
		{"\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f", true},
		{"é", false},
		{"seven b\x80", false},  // the last byte of the first word
		{"eight by\xff", false}, // the tail after a whole word
		{"\x80" + strings.Repeat("a", 20), false},
		{strings.Repeat("a", 20) + "\xc3\xa9" + strings.Repeat("b", 20), false},
	} {
		if got := ASCII(tc.s); got != tc.want {
			t.Errorf("ASCII(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
