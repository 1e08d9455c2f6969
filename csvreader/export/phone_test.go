package export

import (
	"errors"
	"strings"
	"testing"
)

func TestE164(t *testing.T) {
	tests := []struct {
		raw, region string
		want        string // "" with wantErr
		wantErr     string // part of the reason
	}{
		// GB, as people write it.
		{"(020) 7946 0000", "GB", "+442079460000", ""},
		{"+44 20 7946 0000", "GB", "+442079460000", ""},
		{"+44 20 7946 0000", "", "+442079460000", ""},
		{"+44 (0)20 7946 0000", "", "+442079460000", ""},
		{"+44 020 7946 0000", "", "+442079460000", ""},
		{"0044 20 7946 0000", "", "+442079460000", ""},
		{"0044 20 7946 0000", "US", "+442079460000", ""},
		{"020-7946-0000", "GB", "+442079460000", ""},
		{"07700 900123", "GB", "+447700900123", ""},
		{"7700 900123", "gb", "+447700900123", ""},  // a spreadsheet ate the leading 0
		{"447700900123", "GB", "+447700900123", ""}, // and the +
		{" +447700900123 ", "", "+447700900123", ""},
		{"020 7946", "GB", "", "6 digits, while numbers of +44 have 9 to 10 after the trunk prefix 0"},
		// North America.
		{"+1 (415) 555-2671", "", "+14155552671", ""},
		{"415.555.2671", "US", "+14155552671", ""},
		{"1-415-555-2671", "US", "+14155552671", ""},
		{"(415) 555-2671", "CA", "+14155552671", ""},
		{"011 44 20 7946 0000", "US", "+442079460000", ""},
		{"555-2671", "US", "", "7 digits"},
		{"015 555 2671", "US", "", "cannot start with 0 or 1"},
		{"+1 415 555 26710", "", "", "11 digits"},
		// Europe and beyond.
		{"030 1234567", "DE", "+49301234567", ""},
		{"+49 (0)30 1234567", "", "+49301234567", ""},
		{"01 23 45 67 89", "FR", "+33123456789", ""},
		{"06 12 34 56 78", "FR", "+33612345678", ""},
		{"06 1234 5678", "IT", "+390612345678", ""}, // Italy keeps its 0
		{"06 1 234 5678", "HU", "+3612345678", ""},  // trunk 06
		{"0412 345 678", "AU", "+61412345678", ""},
		{"0011 44 20 7946 0000", "AU", "+442079460000", ""},
		{"8 (495) 123-45-67", "RU", "+74951234567", ""},
		{"090-1234-5678", "JP", "+819012345678", ""},
		{"612 345 678", "ES", "+34612345678", ""},
		{"+298 123456", "", "+298123456", ""}, // a code not in the table: only E.164's limits
		// Refused.
		{"", "GB", "", ""},
		{"020 7946 0000", "", "", "give -phone-region"},
		{"+44 20 7946 0000 x123", "GB", "", `extension ("x123")`},
		{"020 7946 0000 ext. 12", "GB", "", "extension"},
		{"1-800-FLOWERS", "US", "", "letters"},
		{"n/a", "GB", "", "letters"},
		{"+44 20 7946 0000 0000 0000", "", "", "at most 15"},
		{"+0 123 4567", "", "", "country code"},
		{"+298 12", "", "", "too short"},
		{"12", "GB", "", "2 digits"},
	}
	for _, tc := range tests {
		t.Run(tc.raw+"/"+tc.region, func(t *testing.T) {
			got, err := E164(tc.raw, tc.region)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("got error %v, want %q", err, tc.want)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %q, %v; want an error containing %q", got, err, tc.wantErr)
			case got != tc.want:
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParsePhoneRegion(t *testing.T) {
	if got, err := ParsePhoneRegion(" gb "); got != "GB" || err != nil {
		t.Errorf("got %q, %v; want GB", got, err)
	}
	if got, err := ParsePhoneRegion(""); got != "" || err != nil {
		t.Errorf("got %q, %v; want empty", got, err)
	}
	_, err := ParsePhoneRegion("UK")
	if !errors.Is(err, ErrPhoneRegion) || !strings.Contains(err.Error(), `"UK"`) || !strings.Contains(err.Error(), "GB") {
		t.Errorf("got %v, want ErrPhoneRegion naming UK and listing GB", err)
	}
	if _, err := E164("020 7946 0000", "XX"); !errors.Is(err, ErrPhoneRegion) {
		t.Errorf("E164 with region XX: got %v, want ErrPhoneRegion", err)
	}
	if len(phoneRegions) < 40 {
		t.Errorf("%d regions, want at least 40", len(phoneRegions))
	}
	for code, r := range phoneRegions {
		if len(code) != 2 || r.min < 4 || r.max < r.min || len(r.code)+r.max > 15 {
			t.Errorf("region %s: bad entry %+v", code, r)
		}
	}
}

// FuzzE164: any input either fails or comes out as "+" and 7 to 15 digits,
// and normalising the output again gives it back.
func FuzzE164(f *testing.F) {
	for _, s := range []string{"(020) 7946 0000", "+44 (0)20 7946 0000", "0044 20", "1-800-FLOWERS", "+1 (415) 555-2671 x12", "8 (495) 123-45-67", "\u00a0+49\u202f30 1234567"} {
		f.Add(s, "GB")
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, raw, region string) {
		if _, ok := phoneRegions[strings.ToUpper(region)]; !ok {
			region = ""
		}
		got, err := E164(raw, region)
		if err != nil || got == "" {
			return
		}
		digits := strings.TrimPrefix(got, "+")
		if !strings.HasPrefix(got, "+") || len(digits) < 7 || len(digits) > 15 || strings.Trim(digits, "0123456789") != "" {
			t.Fatalf("E164(%q, %q) = %q, not E.164", raw, region, got)
		}
		if again, err := E164(got, ""); again != got || err != nil {
			t.Fatalf("E164(%q) = %q, %v; want it unchanged", got, again, err)
		}
	})
}
