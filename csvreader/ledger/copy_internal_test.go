package ledger

import "testing"

func TestAppendCopyText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"plain", "plain"},
		{"tab\there", `tab\there`},
		{"a\nb\rc", `a\nb\rc`},
		{`back\slash`, `back\\slash`},
		{"\\\t\n\r", `\\\t\n\r`},
		{"end\\", `end\\`},
		{`{"k":"say \"hi\""}`, `{"k":"say \\"hi\\""}`},
		{"Zoë 日本", "Zoë 日本"},
	} {
		if got := string(appendCopyText([]byte("x|"), tc.in)); got != "x|"+tc.want {
			t.Errorf("appendCopyText(%q) = %q, want %q", tc.in, got, "x|"+tc.want)
		}
		if got := string(appendCopyText(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("appendCopyText([]byte %q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
