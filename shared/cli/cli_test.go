package cli

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type opts struct {
	s     string
	d     time.Duration
	n     int
	n64   int64
	x     float64
	b     bool
	token string
	url   string
}

func newTestFlags(env map[string]string) (*Flags, *opts, *bytes.Buffer) {
	var out bytes.Buffer
	o := &opts{}
	f := NewFlags("prog", "Usage: prog [flags]\n\nDoes things.", func(k string) string { return env[k] }, &out)
	f.String(&o.s, "name", "PROG_NAME", "def", "a `name`")
	f.Duration(&o.d, "timeout", "PROG_TIMEOUT", 10*time.Second, "how long")
	f.Int(&o.n, "workers", "PROG_WORKERS", 4, "how many")
	f.Int64(&o.n64, "seed", "PROG_SEED", 0, "seed")
	f.Float(&o.x, "rate", "PROG_RATE", 0.5, "share")
	f.Bool(&o.b, "dry-run", "PROG_DRY_RUN", false, "do nothing")
	f.Secret(&o.token, "token", "PROG_TOKEN", "the token")
	f.URL(&o.url, "db", "PROG_DB", "", "database URL")
	return f, o, &out
}

func TestFlags(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want opts
		errs []string // in the usage error; none: no error
	}{
		{name: "defaults", want: opts{s: "def", d: 10 * time.Second, n: 4, x: 0.5}},
		{name: "environment", env: map[string]string{"PROG_NAME": "env", "PROG_TIMEOUT": "1m", "PROG_WORKERS": "8", "PROG_SEED": "-3",
			"PROG_RATE": "0.25", "PROG_DRY_RUN": "true", "PROG_TOKEN": "tok", "PROG_DB": "postgres://u:pw@h/d"},
			want: opts{s: "env", d: time.Minute, n: 8, n64: -3, x: 0.25, b: true, token: "tok", url: "postgres://u:pw@h/d"}},
		{name: "flags win over the environment", env: map[string]string{"PROG_WORKERS": "8", "PROG_TOKEN": "envtok"},
			args: []string{"-workers", "2", "-dry-run", "-token", "flagtok", "file.csv"},
			want: opts{s: "def", d: 10 * time.Second, n: 2, x: 0.5, b: true, token: "flagtok"}},
		{name: "every bad value at once", env: map[string]string{"PROG_TIMEOUT": "soon"},
			args: []string{"-workers", "many", "-rate", "half", "-dry-run=maybe"},
			errs: []string{`PROG_TIMEOUT="soon": not a duration`, `-workers "many": not a whole number`, `-rate "half": not a number`, `-dry-run "maybe": not true or false`}},
		{name: "out of range", args: []string{"-seed", "99999999999999999999"}, errs: []string{"out of range"}},
		{name: "unknown flag", args: []string{"-nope"}, errs: []string{"not defined: -nope"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, o, _ := newTestFlags(tc.env)
			err := f.Parse(tc.args)
			if len(tc.errs) > 0 {
				if ExitCode(err) != ExitUsage {
					t.Fatalf("got %v (exit %d), want a usage error", err, ExitCode(err))
				}
				for _, w := range tc.errs {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *o != tc.want {
				t.Errorf("got %+v, want %+v", *o, tc.want)
			}
		})
	}
}

func TestHelpShowsNoSecret(t *testing.T) {
	f, _, out := newTestFlags(map[string]string{"PROG_TOKEN": "s3cr3t-token-value", "PROG_DB": "postgres://u:hunter2@h/d?password=hunter3"})
	if err := f.Parse([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	h := out.String()
	for _, secret := range []string{"s3cr3t-token-value", "hunter2", "hunter3"} {
		if strings.Contains(h, secret) {
			t.Errorf("-h shows %q:\n%s", secret, h)
		}
	}
	for _, want := range []string{"Usage: prog [flags]", "Does things.", "-name name", "a name (env PROG_NAME) (default def)",
		"-timeout duration", "(default 10s)", "-dry-run\n", "-token string", "(env PROG_TOKEN, set:", "-db URL"} {
		if !strings.Contains(h, want) {
			t.Errorf("-h lacks %q:\n%s", want, h)
		}
	}
}

func TestGiven(t *testing.T) {
	f, _, _ := newTestFlags(map[string]string{"PROG_WORKERS": "3"})
	if err := f.Parse([]string{"-dry-run"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"dry-run": true, "workers": true, "rate": false} {
		if got := f.Given(name); got != want {
			t.Errorf("Given(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("boom"), 1},
		{Usagef("bad %s", "flag"), 2},
		{&Error{Code: 4}, 4},
		{errors.Join(errors.New("x"), &Error{Code: 3}), 3},
	}
	for _, tc := range tests {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if (&Error{Code: 3}).Error() != "" {
		t.Error("an Error without Err must print nothing")
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	good, empty := filepath.Join(dir, "good"), filepath.Join(dir, "empty")
	os.WriteFile(good, []byte("  tok-123\n"), 0o600)
	os.WriteFile(empty, []byte("\n \n"), 0o600)
	if s, err := ReadSecret(good, "token"); err != nil || s != "tok-123" {
		t.Errorf("good: %q, %v", s, err)
	}
	if _, err := ReadSecret(empty, "token"); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty: %v", err)
	}
	if _, err := ReadSecret(filepath.Join(dir, "missing"), "token"); err == nil || !strings.Contains(err.Error(), "read token file") {
		t.Errorf("missing: %v", err)
	}
	if _, err := CertPool(good, "CA file"); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("CertPool of a non-PEM file: %v", err)
	}
}
