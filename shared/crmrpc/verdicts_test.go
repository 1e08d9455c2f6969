package crmrpc

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestPackedVerdictsRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		vs   []Verdict
		want []Verdict // nil: vs
	}{
		{"none", []Verdict{}, nil},
		{"delivered", []Verdict{{Outcome: Delivered, CRMID: "ct_1"}, {Outcome: Delivered, CRMID: "003RM0000068xV6YAI"}}, nil},
		{"every field", []Verdict{{Outcome: Retry, CRMID: "x", RetryAfter: 1500 * time.Millisecond, Ambiguous: true,
			Code: "crm_unavailable", Message: "503 from the CRM: «Zoë» \u2028", NotAttempted: true, CRMRetryAfter: true}}, nil},
		{"rejected", []Verdict{{Outcome: Rejected, Code: "invalid_email", Message: strings.Repeat("m", 300)}}, nil},
		{"an outcome a newer daemon may add", []Verdict{{Outcome: Outcome(200)}}, nil},
		{"a negative retry after goes as 0", []Verdict{{Outcome: Retry, RetryAfter: -time.Second}}, []Verdict{{Outcome: Retry}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := UnpackVerdicts(string(AppendPackedVerdicts(nil, tc.vs, PackedVerdictsVersion)))
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == nil {
				want = tc.vs
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

// A caller that reads version 1 only (VerdictsVersion 0 or 1) gets
// version 1, without the flag it does not know; a newer version asked for
// is answered with the newest this package writes.
func TestPackedVerdictsVersions(t *testing.T) {
	v := []Verdict{{Outcome: Retry, RetryAfter: time.Second, Ambiguous: true, NotAttempted: true, CRMRetryAfter: true}}
	for _, tc := range []struct {
		asked, wrote int
		crm          bool
	}{{0, 1, false}, {1, 1, false}, {2, 2, true}, {9, 2, true}} {
		p := string(AppendPackedVerdicts(nil, v, tc.asked))
		if int(p[0]) != tc.wrote {
			t.Errorf("asked for %d: wrote version %d, want %d", tc.asked, p[0], tc.wrote)
		}
		got, err := UnpackVerdicts(p)
		if err != nil {
			t.Fatalf("asked for %d: %v", tc.asked, err)
		}
		want := v[0]
		want.CRMRetryAfter = tc.crm
		if !reflect.DeepEqual(got, []Verdict{want}) {
			t.Errorf("asked for %d: got %+v, want %+v", tc.asked, got, want)
		}
	}
}

func TestUnpackVerdictsRefuses(t *testing.T) {
	good := string(AppendPackedVerdicts(nil, []Verdict{{Outcome: Delivered, CRMID: "ct_1"}}, 1))
	for _, tc := range []struct {
		name, p, want string
	}{
		{"empty", "", "empty"},
		{"a newer version", "\x03" + good[1:], "version 3, this reader reads versions 1 to 2"},
		{"version 0", "\x00" + good[1:], "version 0"},
		{"truncated", good[:len(good)-1], "verdict 0: message at byte 11: truncated"},
		{"trailing bytes", good + "x", "1 bytes after the last verdict"},
		{"a count the bytes cannot hold", "\x01\x7f\x00", "127 verdicts cannot fit"},
		{"unknown flags", "\x01\x01\x01\x80\x00\x00\x00\x00", "unknown flags 0x80"},
		{"a version 2 flag in version 1", "\x01\x01\x01\x04\x00\x00\x00\x00", "unknown flags 0x4"},
		{"unknown flags in version 2", "\x02\x01\x01\x08\x00\x00\x00\x00", "unknown flags 0x8"},
		{"a string longer than what is left", "\x01\x01\x01\x00\x00\x7f\x00\x00", "length 127 exceeds"},
		{"a retry after out of range", "\x01\x01\x03\x00\xff\xff\xff\xff\xff\xff\xff\xff\x7f\x00\x00\x00", "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs, err := UnpackVerdicts(tc.p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "packed verdicts: ") {
				t.Fatalf("UnpackVerdicts = %+v, %v; want an error about %q", vs, err, tc.want)
			}
		})
	}
}

func FuzzPackedVerdicts(f *testing.F) {
	f.Add(string(AppendPackedVerdicts(nil, []Verdict{{Outcome: Retry, RetryAfter: time.Second, Ambiguous: true, Code: "c", Message: "m", CRMRetryAfter: true}}, PackedVerdictsVersion)))
	f.Add("\x01\x00")
	f.Fuzz(func(t *testing.T, p string) {
		vs, err := UnpackVerdicts(p)
		if err != nil {
			return
		}
		again, err := UnpackVerdicts(string(AppendPackedVerdicts(nil, vs, int(p[0]))))
		if err != nil || !reflect.DeepEqual(again, vs) {
			t.Fatalf("re-encoded %+v: %+v, %v", vs, again, err)
		}
	})
}
