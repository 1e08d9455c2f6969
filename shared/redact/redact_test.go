package redact

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strings"
	"testing"

	"github.com/lib/pq"
)

// The secret in every case is "S3cr3t" or a piece of it, so one check
// covers them all.
const secret = "S3cr3t"

var cases = []struct {
	name string
	in   string
	want string // URL(in)
}{
	{"valid", "postgres://importer:S3cr3t@db.internal:5432/crm?sslmode=verify-full",
		"postgres://importer:xxxxx@db.internal:5432/crm?sslmode=verify-full"},
	{"no password", "postgres://importer@db:5432/crm", "postgres://importer@db:5432/crm"},
	{"no userinfo", "https://crm.example.com/api", "https://crm.example.com/api"},
	{"bad port", "postgres://u:S3cr3t@db:54x2/crm", "postgres://u:xxxxx@db:54x2/crm"},
	{"bad % escape", "postgres://u:S3%zzcr3t@db/crm", "postgres://u:xxxxx@db/crm"},
	{"bad % escape at the end", "postgres://u:S3cr3t%@db/crm", "postgres://u:xxxxx@db/crm"},
	{"space in password", "postgres://u:S3c r3t S3cr3t@db/crm", "postgres://u:xxxxx@db/crm"},
	{"missing ]", "postgres://u:S3cr3t@[::1:5432/crm", "postgres://u:xxxxx@[::1:5432/crm"},
	{"@ and / in password", "postgres://u:S3/cr@3t@S3cr3t@db/crm", "postgres://u:xxxxx@db/crm"},
	{"? and # in password", "postgres://u:S3?cr#3tS3cr3t@db/crm", "postgres://u:xxxxx@db/crm"},
	{"password in the query", "postgres://u@db/crm?sslmode=disable&password=S3cr3t", "postgres://u@db/crm?sslmode=disable&password=xxxxx"},
	{"crm key in the query", "https://crm.example.com/?api_key=S3cr3t&x=1", "https://crm.example.com/?api_key=xxxxx&x=xxxxx"},
	{"crm key, bad port", "https://crm.example.com:8o/?token=S3cr3t", "https://crm.example.com:8o/?token=xxxxx"},
	{"fragment", "https://crm.example.com/#S3cr3t", "https://crm.example.com/#xxxxx"},
	{"basic auth in a crm url", "https://bot:S3cr3t@crm.example.com", "https://bot:xxxxx@crm.example.com"},
	{"key=value", "host=db user=u password=S3cr3t dbname=crm", "host=db user=u password=xxxxx dbname=crm"},
	{"key=value quoted", "host=db password='S3c r3t \\' S3cr3t' dbname=crm", "host=db password=xxxxx dbname=crm"},
	{"key=value spaced", "host=db password = S3cr3t", "host=db password = xxxxx"},
	{"key=value upper case", "host=db PASSWORD=S3cr3t", "host=db PASSWORD=xxxxx"},
	{"not a url", "S3cr3t", "S3cr3t"}, // nothing says it is a secret: callers mask whole values themselves
}

func TestURL(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := URL(tc.in); got != tc.want {
				t.Fatalf("URL(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

// What url.Parse and lib/pq say about each case, redacted, holds no
// piece of the secret.
func TestError(t *testing.T) {
	for _, tc := range cases {
		if tc.in == secret {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			var errs []error
			if _, err := url.Parse(tc.in); err != nil {
				errs = append(errs, err)
			}
			if _, err := pq.NewConnector(tc.in); err != nil {
				errs = append(errs, err)
			}
			if _, err := pq.ParseURL(tc.in); err != nil && strings.Contains(tc.in, "://") {
				errs = append(errs, fmt.Errorf("database: %w", err))
			}
			errs = append(errs, fmt.Errorf("dial %s: connection refused", tc.in))
			for _, err := range errs {
				got := Error(err, tc.in).Error()
				t.Logf("%v\n  -> %s", err, got)
				for _, piece := range []string{secret, "S3c", "cr3t", "%zz", "r3t"} {
					if strings.Contains(got, piece) {
						t.Errorf("Error(%q) = %q: holds %q", err, got, piece)
					}
				}
			}
		})
	}
}

func TestErrorKeepsWhatIsSafe(t *testing.T) {
	sentinel := fs.ErrNotExist
	err := fmt.Errorf("open: %w", sentinel)
	if got := Error(err, "postgres://u:S3cr3t@db/crm"); got != err {
		t.Errorf("nothing to hide: got %v, want the error itself", got)
	}
	err = fmt.Errorf("connect postgres://u:S3cr3t@db/crm: %w", sentinel)
	got := Error(err, "postgres://u:S3cr3t@db/crm")
	if !errors.Is(got, sentinel) || got.Error() != "connect postgres://u:xxxxx@db/crm: file does not exist" {
		t.Errorf("got %q (Is: %v)", got, errors.Is(got, sentinel))
	}
	if Error(nil, "x") != nil {
		t.Error("Error(nil) != nil")
	}
	// A one-letter password is hidden where it reads as one, and the rest
	// of the text is left alone.
	got = Error(errors.New("bad port in u:a@db:x, a message"), "postgres://u:a@db:x/crm")
	if got.Error() != "bad port in u:xxxxx@db:x, a message" {
		t.Errorf("got %q", got)
	}
}
