package replay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReplayFixtures builds the three programs and replays every fixture
// under testdata/replay against its goldens, as `make replay` does. It
// needs PostgreSQL, which `make test` provides; it never skips.
func TestReplayFixtures(t *testing.T) {
	needDatabase(t)
	bin := buildPrograms(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := Run(ctx, []string{"-bin", bin, fixturesDir}, os.Getenv, &out, &out)
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out.String())
	}
	t.Logf("\n%s", out.String())
}

// TestReplayCommand runs `csvreader replay` as users do, from the built
// binary without -bin: it must find the daemons beside itself, or on
// $PATH, and exit 0 on a match, 1 on a difference (printing the diff), 2
// when it cannot run.
func TestReplayCommand(t *testing.T) {
	needDatabase(t)
	bin := buildPrograms(t)
	// A csvreader alone in its folder: the daemons come from $PATH.
	alone := t.TempDir()
	if err := copyFile(filepath.Join(bin, "csvreader"), filepath.Join(alone, "csvreader")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(alone, "csvreader"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A copy of one fixture whose golden exit code is wrong.
	broken := filepath.Join(t.TempDir(), "clean")
	if err := os.CopyFS(broken, os.DirFS(filepath.Join(fixturesDir, "clean"))); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, wantExit), []byte("3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	emptyPath := t.TempDir()
	tests := []struct {
		name     string
		reader   string
		path     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"daemons beside csvreader", bin, emptyPath, []string{"replay", "-run", "^clean$", fixturesDir}, 0, "ok   clean"},
		{"flags after DIR", bin, emptyPath, []string{"replay", fixturesDir, "-run", "^clean$", "-v"}, 0, "ok   clean (1 runs"},
		{"daemons on PATH", alone, bin, []string{"replay", "-run", "^clean$", fixturesDir}, 0, "ok   clean"},
		{"daemons nowhere", alone, emptyPath, []string{"replay", fixturesDir}, 2, "crmintegrator is neither beside"},
		{"golden differs", bin, emptyPath, []string{"replay", broken}, 1, "-3\n    +0"},
		{"no DIR", bin, emptyPath, []string{"replay"}, 2, "no fixture folder"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(tc.reader, "csvreader"), tc.args...)
			cmd.Env = append(os.Environ(), "PATH="+tc.path)
			out, err := cmd.CombinedOutput()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode || !strings.Contains(string(out), tc.wantOut) {
				t.Errorf("exit %d, want %d, and output containing %q; output:\n%s", code, tc.wantCode, tc.wantOut, out)
			}
		})
	}
}

var fixturesDir = filepath.Join("..", "..", "testdata", "replay")

func needDatabase(t *testing.T) {
	t.Helper()
	if os.Getenv("DATABASE_URL") == "" {
		t.Fatal("DATABASE_URL is not set: run `make test` (it starts a disposable PostgreSQL) or point DATABASE_URL at a server where this user may CREATE DATABASE")
	}
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// buildPrograms builds csvreader, crmintegrator and fakecrm from this
// checkout, once per test binary, into a temporary folder and returns it:
// `make test` does not run `make build`, and bin/ may be stale.
func buildPrograms(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		builtBin, buildErr = os.MkdirTemp("", "replay-bin-")
		if buildErr != nil {
			return
		}
		root, err := filepath.Abs(filepath.Join("..", ".."))
		if err != nil {
			buildErr = err
			return
		}
		for name, pkg := range map[string]string{
			"csvreader":     "./csvreader",
			"crmintegrator": "./crmintegrator",
			"fakecrm":       "./crmintegrator/cmd/fakecrm",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(builtBin, name), pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(builtBin)
	}
	os.Exit(code)
}

func TestParseFlags(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"DATABASE_URL": "postgres://u:p@127.0.0.1:1/postgres"}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantDir string // when wantErr is ""
		wantErr string
	}{
		{"positional", []string{dir}, env, dir, ""},
		{"positional then flags", []string{dir, "-runs", "2"}, env, dir, ""},
		{"-dir", []string{"-dir", dir}, env, dir, ""},
		{"REPLAY_DIR", nil, map[string]string{"DATABASE_URL": "postgres://x", "REPLAY_DIR": dir}, dir, ""},
		{"positional over REPLAY_DIR", []string{dir}, map[string]string{"DATABASE_URL": "postgres://x", "REPLAY_DIR": "elsewhere"}, dir, ""},
		{"after --", []string{"--", "-odd"}, env, "-odd", ""},
		{"no DIR", nil, env, "", "no fixture folder"},
		{"two DIRs", []string{dir, dir}, env, "", "one DIR"},
		{"-dir and DIR", []string{"-dir", dir, dir}, env, "", "DIR given twice"},
		{"no database", []string{dir}, nil, "", "DATABASE_URL is not set"},
		{"zero runs", []string{"-runs", "0", dir}, env, "", "-runs"},
		{"bad regexp", []string{"-run", "(", dir}, env, "", "-run"},
		{"bad flag", []string{"-nope", dir}, env, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var errb bytes.Buffer
			c, err := parseFlags(tc.args, func(k string) string { return tc.env[k] }, &errb)
			if tc.wantDir != "" {
				if err != nil || c == nil {
					t.Fatalf("got %v, want dir %q", err, tc.wantDir)
				}
				if c.dir != tc.wantDir {
					t.Errorf("dir %q, want %q", c.dir, tc.wantDir)
				}
				return
			}
			var re *Error
			if !errors.As(err, &re) || re.ExitCode() != ExitCannotRun {
				t.Fatalf("got %#v, want an *Error with exit code 2", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if err := Run(context.Background(), []string{"-h"}, func(string) string { return "" }, &out, &errb); err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	for _, want := range []string{"Usage: csvreader replay [flags] DIR", "-update", "-bin", "DATABASE_URL"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, errb.String())
		}
	}
}

func TestFindPrograms(t *testing.T) {
	exe := func(dir string, names ...string) {
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	release, onPath, half, notExec := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	exe(release, "csvreader", "crmintegrator", "fakecrm")
	exe(onPath, "crmintegrator", "fakecrm")
	exe(half, "csvreader", "crmintegrator")
	exe(notExec, "csvreader", "crmintegrator")
	if err := os.WriteFile(filepath.Join(notExec, "fakecrm"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	lookIn := func(dir string) func(string) (string, error) {
		return func(name string) (string, error) {
			p := filepath.Join(dir, name)
			if err := isProgram(p); err != nil {
				return "", err
			}
			return p, nil
		}
	}
	self := func(dir string) string { return filepath.Join(dir, "csvreader") }
	tests := []struct {
		name    string
		bin     string
		self    string
		path    string
		want    programs
		wantErr string
	}{
		{"beside csvreader", "", self(release), onPath,
			programs{self(release), filepath.Join(release, "crmintegrator"), filepath.Join(release, "fakecrm")}, ""},
		{"on PATH", "", "/nowhere/csvreader", onPath,
			programs{"/nowhere/csvreader", filepath.Join(onPath, "crmintegrator"), filepath.Join(onPath, "fakecrm")}, ""},
		{"beside first, then PATH", "", self(half), onPath,
			programs{self(half), filepath.Join(half, "crmintegrator"), filepath.Join(onPath, "fakecrm")}, ""},
		{"missing", "", self(half), half, programs{}, "fakecrm is neither beside"},
		{"-bin takes all three", release, self(half), onPath,
			programs{self(release), filepath.Join(release, "crmintegrator"), filepath.Join(release, "fakecrm")}, ""},
		{"-bin lacking one", half, self(release), onPath, programs{}, "fakecrm"},
		{"-bin not executable", notExec, self(release), onPath, programs{}, "not an executable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := findPrograms(tc.bin, tc.self, lookIn(tc.path))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestLineDiff(t *testing.T) {
	tests := []struct {
		name      string
		want, got string
		diff      string
	}{
		{"equal", "a\nb\n", "a\nb\n", ""},
		{"changed line", "a\nb\nc\n", "a\nB\nc\n", "--- w\n+++ g\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"},
		{"added at end", "a\n", "a\nb\n", "--- w\n+++ g\n@@ -1,1 +1,2 @@\n a\n+b\n"},
		{"from empty", "", "x\n", "--- w\n+++ g\n@@ -0,0 +1,1 @@\n+x\n"},
		{"missing newline", "a\n", "a", "--- w\n+++ g\n@@ -1,1 +1,1 @@\n-a\n+a\n\\ No newline at end of file\n"},
		{
			"two hunks",
			"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n",
			"1\nX\n3\n4\n5\n6\n7\n8\n9\n10\nY\n12\n",
			"--- w\n+++ g\n@@ -1,5 +1,5 @@\n 1\n-2\n+X\n 3\n 4\n 5\n@@ -8,5 +8,5 @@\n 8\n 9\n 10\n-11\n+Y\n 12\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := lineDiff("w", "g", tc.want, tc.got); got != tc.diff {
				t.Errorf("got\n%s\nwant\n%s", got, tc.diff)
			}
		})
	}
}

func TestNormaliseRejectsSortsByLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.csv")
	in := "line;reason;id\n12;b;\"x\ny\"\n3;a;z\n12;a;w\n"
	if err := os.WriteFile(path, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := normaliseRejects(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "line;reason;id\n3;a;z\n12;a;w\n12;b;\"x\ny\"\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
