package export

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"crmsync/shared/contact"
)

// TestMappingFixtures reads each testdata/mapping/CASE/input.csv with its
// map.json and compares the mapping in use, what Clears says and the rows
// with CASE/want.txt.
func TestMappingFixtures(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{name: "hubspot"},
		{name: "crm_properties"},
		{name: "e164_region", opts: Options{PhoneRegion: "us"}},
		{name: "unmapped_drop", opts: Options{Drop: []string{"company"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join("testdata", "mapping", tc.name)
			m, err := LoadMapping(filepath.Join(dir, "map.json"))
			if err != nil {
				t.Fatal(err)
			}
			tc.opts.Mapping = m
			var desc strings.Builder
			got, err := transcript(t, tc.opts, func(o Options) (*Reader, error) {
				r, err := Open(filepath.Join(dir, "input.csv"), o)
				if err == nil {
					for _, c := range r.Mapping() {
						fmt.Fprintf(&desc, "column %q -> %q (%s) %q\n", c.Column, c.Field, c.Source, c.Options)
					}
					var clears []string
					for _, f := range append(fieldNames(), "attributes.company", "attributes.subscription_plan", "attributes.fax") {
						if r.Clears(f) {
							clears = append(clears, f)
						}
					}
					fmt.Fprintf(&desc, "clears %q\n", clears)
				}
				return r, err
			})
			if err != nil {
				t.Fatal(err)
			}
			got = desc.String() + got
			golden := filepath.Join(dir, "want.txt")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("no golden file (run go test -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("got:\n%s\nwant (%s):\n%s", got, golden, want)
			}
		})
	}
}

// TestMappingFileErrors: a bad mapping file is refused, by LoadMapping or
// by Open against the header, naming the file, where in it, the entry and
// what to do.
func TestMappingFileErrors(t *testing.T) {
	header := filepath.Join("testdata", "mapping", "bad", "header.csv")
	tests := []struct {
		file   string // under testdata/mapping/bad/
		atOpen bool   // LoadMapping takes it; Open against header.csv refuses it
		want   string // the whole message after the file's name
	}{
		{file: "syntax.json", want: `:3:24: not valid JSON: invalid character '"' after object key:value pair`},
		{file: "unknown_option.json", want: `:3:3: columns[1] (column "Mobile"): unknown key "requird"; the keys are column, field, drop, required, empty, normalize, region, comment (did you mean "required"?)`},
		{file: "unknown_key.json", want: `: unknown key "colums"; the keys are columns, key, unmapped, comment (did you mean "columns"?)`},
		{file: "field_twice.json", want: `:3:3: columns[1] (column "Email Address"): field "email" is mapped twice, from columns[0] (column "E-mail") and from this entry; map one column to it and the other elsewhere, or "drop": true`},
		{file: "unknown_field.json", want: `:2:3: columns[0] (column "E-mail"): unknown field "mail"; the fields are external_id, email, first_name, last_name, phone, attributes.NAME (did you mean "email"?)`},
		{file: "bad_empty.json", want: `:2:3: columns[0] (column "Mobile"): "empty" is "null"; use "keep" (the default: an empty value leaves the CRM's value) or "clear" (it clears it)`},
		{file: "bad_normalize.json", want: `:2:3: columns[0] (column "Mobile"): unknown normalisation "e.164"; use trim, lower, collapse, e164 (did you mean "e164"?)`},
		{file: "bad_region.json", want: `:2:3: columns[0] (column "Mobile"): "region": unknown phone region "UK": use an ISO 3166 two-letter code, one of`},
		{file: "bad_type.json", want: `:2:59: columns[0] (column "Mobile"): "required" is string, want true or false`},
		{file: "unknown_column.json", atOpen: true, want: `:2:3: columns[0] (column "Mobil"): the export's header has no such column; the nearest is "Mobile": fix the name in the mapping file (the header: "Record ID", "email", "E-mail", "Mobile")`},
		{file: "exact_conflict.json", atOpen: true, want: `:2:3: columns[0] (column "E-mail"): maps column "E-mail" to email, but column "email" has that name; map "email" too (to another field, or "drop": true), or rename it`},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", "mapping", "bad", tc.file)
			m, err := LoadMapping(path)
			if tc.atOpen {
				if err != nil {
					t.Fatalf("LoadMapping: %v", err)
				}
				_, err = Open(header, Options{Mapping: m})
				var e *Error
				if !errors.As(err, &e) || e.Name != header || e.Line != 1 {
					t.Errorf("Open: got %v, want an *Error naming %s, line 1", err, header)
				}
			}
			var me *MappingError
			if !errors.Is(err, ErrMapping) || !errors.As(err, &me) || me.File != path {
				t.Fatalf("got %v, want a *MappingError of %s", err, path)
			}
			got := me.Error()
			if !strings.HasPrefix(got, path+tc.want) {
				t.Errorf("got  %s\nwant %s%s", got, path, tc.want)
			}
		})
	}
}

// TestMappingChecks: what LoadMapping refuses, and what it takes.
func TestMappingChecks(t *testing.T) {
	tests := []struct {
		name, json string
		want       string // part of the error; "" for none
	}{
		{"minimal", `{"columns": []}`, ""},
		{"comments", `{"comment": "x", "columns": [{"column": "a", "field": "attributes.a", "comment": "y"}]}`, ""},
		{"phone region implies e164", `{"columns": [{"column": "m", "field": "phone", "region": "gb"}]}`, ""},
		{"empty file", ``, "the file is empty"},
		{"not an object", `[]`, "is array, want an object"},
		{"entry not an object", `{"columns": ["Email"]}`, `columns[0]: is string, want an object`},
		{"truncated", `{"columns": [{"column": "a"`, "ends inside the object"},
		{"text after", `{"columns": []} {}`, "text after the JSON object"},
		{"bad unmapped", `{"unmapped": "ignore", "columns": []}`, `"unmapped" is "ignore"; use "attributes"`},
		{"blank key", `{"key": " ", "columns": []}`, `"key" is blank`},
		{"no column", `{"columns": [{"field": "email"}]}`, `columns[0]: no "column"`},
		{"no field", `{"columns": [{"column": "a"}]}`, `no "field": name one of external_id, email`},
		{"column twice", `{"columns": [{"column": "A", "field": "email"}, {"column": " a ", "drop": true}]}`, `columns[1] (column "a"): the column is listed twice, in columns[0]`},
		{"drop and field", `{"columns": [{"column": "a", "drop": true, "field": "email", "required": true}]}`, `"drop": true goes with nothing else, but the entry also has "field", "required"`},
		{"drop the key", `{"key": "ID", "columns": [{"column": "id", "drop": true}]}`, `is the "key" and cannot be dropped`},
		{"key fed elsewhere", `{"key": "ID", "columns": [{"column": "id", "field": "attributes.id"}]}`, `is the "key" (external_id), so it cannot feed "attributes.id" too`},
		{"key twice", `{"key": "ID", "columns": [{"column": "no", "field": "external_id"}]}`, `maps the key (external_id), but "key" names column "ID"`},
		{"clear the email", `{"columns": [{"column": "e", "field": "email", "empty": "clear"}]}`, `"empty": "clear" cannot apply to email`},
		{"e164 on a name", `{"columns": [{"column": "n", "field": "first_name", "normalize": ["e164"]}]}`, `"e164" is for phone numbers`},
		{"region without e164", `{"columns": [{"column": "f", "field": "attributes.fax", "region": "GB"}]}`, `"region" is for phone numbers normalised to E.164`},
		{"attribute unnamed", `{"columns": [{"column": "f", "field": "attributes."}]}`, `names no attribute`},
		{"attribute spaced", `{"columns": [{"column": "f", "field": "attributes. x"}]}`, `spaces around it`},
		{"attribute twice", `{"columns": [{"column": "a", "field": "attributes.Plan"}, {"column": "b", "field": "attributes.plan"}]}`, `field "attributes.plan" is mapped twice`},
		{"alias as field", `{"columns": [{"column": "a", "field": "Email Address"}]}`, `(did you mean "email"?)`},
		{"typo in field", `{"columns": [{"column": "a", "field": "last-name"}]}`, `(did you mean "last_name"?)`},
		{"attribute without prefix", `{"columns": [{"column": "a", "field": "attributes_company"}]}`, `(did you mean "attributes.company"?)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMapping([]byte(tc.json), "map.json")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want no error", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "map.json")):
				t.Fatalf("got %v, want an error naming map.json and containing %q", err, tc.want)
			}
		})
	}
}

// TestAliases: how a header maps without a mapping file.
func TestAliases(t *testing.T) {
	tests := []struct {
		name, header string
		key          string
		want         string // "field<-column" for the own fields, then the attributes; or the error's part
		wantErr      error
		wantNotice   string
	}{
		{name: "canonical", header: "id,email,first_name,last_name,phone,company",
			want: "external_id<-id email<-email first_name<-first_name last_name<-last_name phone<-phone attributes:company"},
		{name: "hubspot", header: "Record ID,First Name,Last Name,Email,Phone Number,Company Name",
			want:       "external_id<-Record ID email<-Email first_name<-First Name last_name<-Last Name phone<-Phone Number attributes:Company Name",
			wantNotice: `"Record ID" → the key (external_id), "First Name" → first_name`},
		{name: "punctuation and case", header: "CUSTOMER_NO,E-Mail,first-name,SURNAME,Mobile",
			want: "external_id<-CUSTOMER_NO email<-E-Mail first_name<-first-name last_name<-SURNAME phone<-Mobile attributes:"},
		{name: "exact name wins", header: "id,email,E-mail,phone,Mobile",
			want:       "external_id<-id email<-email phone<-phone attributes:E-mail,Mobile",
			wantNotice: `column "E-mail" looks like the email, but column "email" is the email, so "E-mail" goes to the attributes`},
		{name: "id wins over its aliases", header: "Record ID,ID,email",
			want: "external_id<-ID email<-email attributes:Record ID"},
		{name: "-key: id aliases stay data", header: "Record ID,no,email", key: "no",
			want: "external_id<-no email<-email attributes:Record ID"},
		{name: "-key keeps id as data", header: "ID,No,email", key: "no",
			want: "external_id<-No email<-email attributes:ID"},
		{name: "-key email", header: "E-mail,name", key: "e-mail",
			want: "external_id,email<-E-mail attributes:name"},
		{name: "unsafe aliases are not mapped", header: "id,email,first,last,tel,Work Phone,fname,LEID",
			want:       "external_id<-id email<-email attributes:first,last,tel,Work Phone,fname,LEID",
			wantNotice: `column "fname" goes to the attributes, so the CRM's first_name stays empty`},
		{name: "two email aliases", header: "id,E-mail,Email Address", wantErr: ErrDuplicateColumn,
			want: `columns "E-mail" (column 2) and "Email Address" (column 3) all look like the email, and none has its exact name: rename the one that is not, or say which in a mapping file (-map)`},
		{name: "two key aliases", header: "Record ID,Contact ID,email", wantErr: ErrDuplicateColumn,
			want: `columns "Record ID" (column 1) and "Contact ID" (column 2) all look like the key (external_id), and none has its exact name: say which with -key COLUMN, or "key" in a mapping file (-map)`},
		{name: "two phones", header: "id,email,Mobile,Phone Number", wantErr: ErrDuplicateColumn, want: `"Mobile" (column 3) and "Phone Number" (column 4) all look like the phone`},
		{name: "mailchimp", header: "Email Address,First Name,Last Name,Phone Number,LEID,EUID", wantErr: ErrMissingColumn,
			want: `no "id" column (the key, which tells customers apart); "LEID" looks like one: rerun with -key LEID. Columns found`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var notices []string
			r, err := NewReader(strings.NewReader(tc.header+"\n"), "t.csv", -1, Options{Key: tc.key, Notify: func(n Notice) { notices = append(notices, n.Message) }})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want %v containing %s", err, tc.wantErr, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := describeCols(r); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			if all := strings.Join(notices, "\n"); !strings.Contains(all, tc.wantNotice) {
				t.Errorf("notices %q, want one containing %q", all, tc.wantNotice)
			}
		})
	}
}

func describeCols(r *Reader) string {
	var own, attrs []string
	for _, c := range r.Mapping() {
		switch {
		case strings.HasPrefix(c.Field, contact.AttributePrefix):
			attrs = append(attrs, c.Column)
		case c.Field != "":
			own = append(own, c.Field+"<-"+c.Column)
		}
	}
	// In Fields order, as contact.Fields lists them.
	var sorted []string
	for _, f := range contact.Fields {
		for _, o := range own {
			if strings.HasPrefix(o, f.Name+"<-") || strings.HasPrefix(o, f.Name+",") {
				sorted = append(sorted, o)
			}
		}
	}
	if got := strings.Join(attrs, ","); got != strings.Join(r.AttributeColumns(), ",") && !strings.Contains(got, "ID") {
		sorted = append(sorted, "(AttributeColumns "+strings.Join(r.AttributeColumns(), ",")+")")
	}
	return strings.Join(sorted, " ") + " attributes:" + strings.Join(attrs, ",")
}

// TestMappingAgainstHeader: mapping problems only a header shows, and how
// the mapping meets -key and the built-in aliases.
func TestMappingAgainstHeader(t *testing.T) {
	tests := []struct {
		name, header, json string
		key                string
		want               string // describeCols, or part of the error
		wantErr            bool
	}{
		{name: "mapping beats an alias", header: "id,E-mail,Email Address", json: `{"columns": [{"column": "Email Address", "field": "email"}]}`,
			want: "external_id<-id email<-Email Address attributes:E-mail"},
		{name: "mapping names the key", header: "Record ID,Contact ID,email", json: `{"key": "contact id", "columns": []}`,
			want: "external_id<-Contact ID email<-email attributes:Record ID"},
		{name: "key by entry", header: "Record ID,Contact ID,email", json: `{"columns": [{"column": "Record ID", "field": "external_id", "normalize": ["lower"]}]}`,
			want: "external_id<-Record ID email<-email attributes:Contact ID"},
		{name: "-key agrees", header: "no,email", key: " NO ", json: `{"key": "no", "columns": []}`,
			want: "external_id<-no email<-email attributes:"},
		{name: "-key disagrees", header: "no,id,email", key: "id", json: `{"key": "no", "columns": []}`, wantErr: true,
			want: `map.json: "key" is "no" but -key is "id"; give one of them`},
		{name: "-key disagrees with an entry", header: "no,id,email", key: "id", json: `{"columns": [{"column": "no", "field": "external_id"}]}`, wantErr: true,
			want: `map.json:1:14: columns[0] (column "no"): maps the key (external_id), but -key names column "id"`},
		{name: "-key column mapped elsewhere", header: "no,email", key: "no", json: `{"columns": [{"column": "no", "field": "attributes.no"}]}`, wantErr: true,
			want: `the column is the key (-key), so it cannot feed "attributes.no" too`},
		{name: "attribute twice", header: "id,email,Company Name,company", json: `{"columns": [{"column": "Company Name", "field": "attributes.company"}]}`, wantErr: true,
			want: `duplicate column: columns "Company Name" and "company" would both be the attribute "company"`},
		{name: "email mapped away, none left", header: "id,email", json: `{"columns": [{"column": "email", "field": "attributes.old_email"}]}`, wantErr: true,
			want: `missing required column: the header has no "email" column`},
		{name: "unmapped drop keeps named fields", header: "id,email,First Name,x", json: `{"unmapped": "drop", "columns": []}`,
			want: "external_id<-id email<-email first_name<-First Name attributes:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseMapping([]byte(tc.json), "map.json")
			if err != nil {
				t.Fatal(err)
			}
			r, err := NewReader(strings.NewReader(tc.header+"\n"), "t.csv", -1, Options{Key: tc.key, Mapping: m})
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "t.csv: line 1: ") {
					t.Fatalf("got %v, want an error naming t.csv and containing %s", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := describeCols(r); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestClearsFeedsMerge: "empty": "clear" reaches contact.Merge through
// Reader.Clears, for an own field and an attribute; "keep" leaves both.
func TestClearsFeedsMerge(t *testing.T) {
	m, err := ParseMapping([]byte(`{"columns": [
		{"column": "phone", "field": "phone", "empty": "clear"},
		{"column": "plan", "field": "attributes.plan", "empty": "clear"}]}`), "map.json")
	if err != nil {
		t.Fatal(err)
	}
	stored := contact.Contact{ExternalID: "1", Email: "a@example.com", FirstName: "Ann", Phone: "+441", Attributes: contact.AttrsOf(map[string]string{"plan": "gold", "tier": "1"})}
	for _, tc := range []struct {
		name    string
		mapping *Mapping
		want    string
	}{
		{"clear", m, "Ann  map[tier:1] [phone attributes.plan]"},
		{"keep", nil, "Ann +441 map[plan:gold tier:1] []"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReader(strings.NewReader("id,email,first_name,phone,plan,tier\n1,a@example.com,,,,\n"), "t.csv", -1, Options{Mapping: tc.mapping})
			if err != nil {
				t.Fatal(err)
			}
			row, err := r.Next()
			if err != nil || row.Problem != nil {
				t.Fatalf("row: %v %v", err, row.Problem)
			}
			out, changed := contact.Merge(&stored, &row.Contact, r.Clears)
			if got := fmt.Sprint(out.FirstName, " ", out.Phone, " ", out.Attributes.Map(), " ", changed); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPhoneRegionOption: -phone-region normalises the phone column by
// default; an unknown region stops before any row.
func TestPhoneRegionOption(t *testing.T) {
	input := "id,email,phone\n1,a@example.com,020 7946 0000\n2,b@example.com,12\n"
	r, err := NewReader(strings.NewReader(input), "t.csv", -1, Options{PhoneRegion: "GB"})
	if err != nil {
		t.Fatal(err)
	}
	row, _ := r.Next()
	if row.Contact.Phone != "+442079460000" || row.Fields[2] != "020 7946 0000" || row.Problem != nil {
		t.Errorf("got phone %q, fields %q, problem %v; want +442079460000 and the raw field kept", row.Contact.Phone, row.Fields, row.Problem)
	}
	row, _ = r.Next()
	want := `line 3: column "phone" (phone): "12" is not a phone number of region GB: 2 digits, while numbers of +44 have 9 to 10 after the trunk prefix 0`
	if row.Problem == nil || row.Problem.Code != CodeInvalidPhone || row.Problem.Message != want {
		t.Errorf("got %+v, want invalid_phone %q", row.Problem, want)
	}
	if got := r.Mapping()[2].Options; got != "normalize=e164, region=GB" {
		t.Errorf("phone column options %q", got)
	}
	_, err = NewReader(strings.NewReader(input), "t.csv", -1, Options{PhoneRegion: "EU"})
	if !errors.Is(err, ErrPhoneRegion) || !strings.HasPrefix(err.Error(), `t.csv: -phone-region: unknown phone region "EU"`) {
		t.Errorf("got %v, want ErrPhoneRegion naming EU", err)
	}
	// Without -phone-region the phone goes on verbatim, as before.
	r, _ = NewReader(strings.NewReader(input), "t.csv", -1, Options{})
	if row, _ := r.Next(); row.Contact.Phone != "020 7946 0000" || r.cols.rules != nil {
		t.Errorf("got phone %q, rules %v; want it verbatim and no rules", row.Contact.Phone, r.cols.rules)
	}
}

// FuzzParseMapping: any bytes either load or fail with a *MappingError
// naming the file; never a panic.
func FuzzParseMapping(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "mapping", "*", "*.json"))
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseMapping(data, "map.json")
		var me *MappingError
		if err != nil && (!errors.As(err, &me) || me.File != "map.json") {
			t.Fatalf("error %v is not a *MappingError naming the file", err)
		}
		if err == nil {
			// And it maps a header of its own columns without panicking.
			var header []string
			for _, c := range m.Columns {
				header = append(header, strings.ReplaceAll(strings.ReplaceAll(c.Column, ",", ""), "\"", ""))
			}
			header = append(header, "id", "email")
			NewReader(strings.NewReader(strings.Join(header, ",")+"\n"), "t.csv", -1, Options{Mapping: m})
		}
	})
}
