package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"crmsync/csvreader/importer"
	"crmsync/shared/cli"
)

func TestRunUsage(t *testing.T) {
	secretEnv := map[string]string{
		"DATABASE_URL":        "postgres://u:hunter2pw@127.0.0.1:1/db",
		"CSVREADER_RPC_TOKEN": "tok-s3cret",
	}
	csv := filepath.Join(t.TempDir(), "x.csv")
	if err := os.WriteFile(csv, []byte("id,email\n1,a@example.com\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dsn := func(s string) map[string]string { return map[string]string{"DATABASE_URL": s} }
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		wantErr  string
	}{
		{"help", []string{"-h"}, secretEnv, exitOK, ""},
		{"no file", nil, secretEnv, exitUsage, "no export file"},
		{"no database", []string{"x.csv"}, nil, exitUsage, "DATABASE_URL"},
		{"bad flag", []string{"-nope", "x.csv"}, secretEnv, exitUsage, ""},
		{"bad delimiter", []string{"-delimiter", "ab", "x.csv"}, secretEnv, exitUsage, "-delimiter"},
		{"bad env number", []string{"x.csv"}, map[string]string{"DATABASE_URL": "postgres://x", "CSVREADER_WORKERS": "many"}, exitUsage, "CSVREADER_WORKERS"},
		{"zero workers", []string{"-workers", "0", "x.csv"}, secretEnv, exitUsage, "-workers"},
		{"bad encoding", []string{"-encoding", "ebcdic", "x.csv"}, secretEnv, exitUsage, "-encoding: unknown encoding"},
		{"bad reject ratio", []string{"-max-reject-ratio", "2", "x.csv"}, secretEnv, exitUsage, "-max-reject-ratio"},
		{"bad env ratio", []string{"x.csv"}, map[string]string{"DATABASE_URL": "postgres://x", "CSVREADER_MAX_REJECT_RATIO": "half"}, exitUsage, "CSVREADER_MAX_REJECT_RATIO"},
		{"bad log level", []string{"-log-level", "loud", "x.csv"}, secretEnv, exitUsage, "-log-level"},
		// Malformed DSNs: the parser's error quotes them whole.
		{"dsn bad port", []string{"-dry-run", csv}, dsn("postgres://u:hunter2pw@127.0.0.1:54x/db"), exitFatal, "database"},
		{"dsn bad escape", []string{"-dry-run", csv}, dsn("postgres://u:hunter2pw%zz@127.0.0.1:1/db"), exitFatal, "database"},
		{"dsn space in password", []string{"-dry-run", csv}, dsn("postgres://u:hunter2pw hunter2pw@127.0.0.1:1/db"), exitFatal, "database"},
		{"dsn missing ]", []string{"-dry-run", csv}, dsn("postgres://u:hunter2pw@[::1:1/db"), exitFatal, "database"},
		{"dsn key=value", []string{"-dry-run", csv}, dsn("host=127.0.0.1 port=1 password=hunter2pw connect_timeout=1"), exitFatal, "database"},
		{"dsn password in the query", []string{"-dry-run", csv}, dsn("postgres://u@127.0.0.1:1/db?password=hunter2pw&connect_timeout=1"), exitFatal, "database"},
		{"dsn on the command line", []string{"-dry-run", "-db", "postgres://u:hunter2pw@127.0.0.1:54x/db", csv}, nil, exitFatal, "database"},
		{"missing rpc token file", []string{"x.csv"}, map[string]string{"DATABASE_URL": "postgres://x", "CSVREADER_RPC_TOKEN_FILE": "/nonexistent/rpc-token"}, exitFatal, "rpc token file"},
		{"empty rpc token file", []string{"-rpc-token-file", empty, "x.csv"}, secretEnv, exitFatal, "is empty"},
		{"missing file", []string{"-dry-run", "/nonexistent/x.csv"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2pw@127.0.0.1:1/db?connect_timeout=1"}, exitFatal, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := run(context.Background(), tc.args, func(k string) string { return tc.env[k] }, &out, &errb)
			if code := cli.ExitCode(err); code != tc.wantCode {
				t.Errorf("exit code = %d, want %d (err %v)", code, tc.wantCode, err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("err = %v, want it to mention %q", err, tc.wantErr)
			}
			all := out.String() + errb.String()
			if err != nil {
				all += err.Error()
			}
			for _, secret := range []string{"hunter2pw", "tok-s3cret"} {
				if strings.Contains(all, secret) {
					t.Errorf("output or error shows a secret:\n%s", all)
				}
			}
		})
	}
}

// TestRPCTokenFile: the token in a file (as docker-compose.yml gives it,
// a line break at the end) wins over the environment's.
func TestRPCTokenFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "rpc-token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"environment", nil, map[string]string{"CSVREADER_RPC_TOKEN": "from-env"}, "from-env"},
		{"file from the environment", nil, map[string]string{"CSVREADER_RPC_TOKEN": "from-env", "CSVREADER_RPC_TOKEN_FILE": file}, "from-file"},
		{"file flag", []string{"-rpc-token-file", file}, map[string]string{"CSVREADER_RPC_TOKEN": "from-env"}, "from-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.env["DATABASE_URL"] = "postgres://x"
			o, err := parseFlags(append(tc.args, "x.csv"), func(k string) string { return tc.env[k] }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if o.rpcToken != tc.want {
				t.Errorf("token %q, want %q", o.rpcToken, tc.want)
			}
		})
	}
}

// A CRM that lists its fields (HubSpot's contact properties) refuses an
// export whose attribute columns it lacks, before anything is sent, naming
// them and the fixes.
func TestCheckColumns(t *testing.T) {
	hubspot := checkColumns("hubspot", []string{"email", "firstname", "company", "external_id"})
	// Salesforce's API names ignore case.
	salesforce := checkColumns("salesforce", []string{"Email", "FirstName", "Company__c", "External_Id__c"})
	tests := []struct {
		check func([]string) error
		attrs []string
		want  []string // in the error; none: no error
	}{
		{hubspot, []string{"company"}, nil},
		{hubspot, nil, nil},
		{hubspot, []string{"company", "Plan", "Company "}, []string{`"Plan"`, "-drop-columns \"Plan,Company \"", `"Company " is the CRM's "company"`}},
		{hubspot, []string{"Company"}, []string{`"Company" is the CRM's "company"`}},
		{salesforce, []string{"company__c", "COMPANY__C"}, nil},
		{salesforce, []string{"company"}, []string{`"company"`, "Salesforce"}},
	}
	for _, tc := range tests {
		err := tc.check(tc.attrs)
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%v: got %v, want no error", tc.attrs, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%v: no error", tc.attrs)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q lacks %q", tc.attrs, err, w)
			}
		}
	}
}

func TestVersionFlag(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, func(string) string { return "" }, &out, &errb); err != nil {
		t.Fatalf("-version: %v\n%s", err, errb.String())
	}
	if !strings.HasPrefix(out.String(), "csvreader ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("-version printed %q", out.String())
	}
}

// -http serves the run's counters as Prometheus text while it goes on.
func TestMetricsEndpoint(t *testing.T) {
	var cfg importer.Config
	stop, addr, err := serveMetrics("127.0.0.1:0", &cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	cfg.OnStart(func() importer.Snapshot {
		return importer.Snapshot{Rows: 7, Created: 5, Invalid: 2, RecoveryBacklog: 3, Lookups: 4, Elapsed: time.Second, FileSize: -1}
	})
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"csvreader_rows_read_total 7", `csvreader_rows_total{outcome="created"} 5`, `csvreader_rows_total{outcome="invalid"} 2`,
		"csvreader_recovery_backlog 3", "csvreader_lookups_total 4", "csvreader_rows_per_second 7.0", "# TYPE csvreader_in_flight gauge",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, b)
		}
	}
}

// "replay" as the first argument is the replay command; anywhere else it is
// an export file to import. csvreader/replay tests the command itself.
func TestReplaySubcommand(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantErr    string // in the error; "" for none
		wantStderr string
	}{
		{"replay help", []string{"replay", "-h"}, exitOK, "", "Usage: csvreader replay [flags] DIR"},
		{"no DIR", []string{"replay"}, exitUsage, "replay: no fixture folder", ""},
		{"no database", []string{"replay", t.TempDir()}, exitUsage, "replay: DATABASE_URL is not set", ""},
		{"bad flag", []string{"replay", "-nope"}, exitUsage, "", "flag provided but not defined: -nope"},
		{"csvreader help names it", []string{"-h"}, exitOK, "", "csvreader replay [flags] DIR"},
		// The import's own check after "no export file": "replay" was taken as a file.
		{"file after --", []string{"--", "replay"}, exitUsage, "no database: set -db", ""},
		{"file as ./replay", []string{"./replay"}, exitUsage, "no database: set -db", ""},
		{"file after a flag", []string{"-workers", "2", "replay"}, exitUsage, "no database: set -db", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := run(context.Background(), tc.args, func(string) string { return "" }, &out, &errb)
			if code := cli.ExitCode(err); code != tc.wantCode {
				t.Errorf("exit code = %d, want %d (err %v)", code, tc.wantCode, err)
			}
			switch {
			case tc.wantErr == "" && err != nil && err.Error() != "":
				t.Errorf("err = %q, want no message", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("err = %v, want it to mention %q", err, tc.wantErr)
			}
			if !strings.Contains(errb.String(), tc.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantStderr, errb.String())
			}
		})
	}
}
