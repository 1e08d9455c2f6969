package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReplayFixtures builds the three programs and replays every fixture
// under testdata/replay against its goldens, as `make replay` does. It
// needs PostgreSQL, which `make test` provides; it never skips.
func TestReplayFixtures(t *testing.T) {
	if os.Getenv("DATABASE_URL") == "" {
		t.Fatal("DATABASE_URL is not set: run `make test` (it starts a disposable PostgreSQL) or point DATABASE_URL at a server where this user may CREATE DATABASE")
	}
	bin := buildPrograms(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"-dir", filepath.Join("..", "..", "testdata", "replay"), "-bin", bin}, os.Getenv, &out, &out)
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out.String())
	}
	t.Logf("\n%s", out.String())
}

// buildPrograms builds csvreader, crmintegrator and fakecrm into a
// temporary folder and returns it.
func buildPrograms(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for name, pkg := range map[string]string{
		"csvreader":     "./csvreader",
		"crmintegrator": "./crmintegrator",
		"fakecrm":       "./crmintegrator/cmd/fakecrm",
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return bin
}

func TestRunWithoutDatabase(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), nil, func(string) string { return "" }, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Errorf("got %v, want an error naming DATABASE_URL", err)
	}
	if ec, ok := err.(exitError); !ok || ec.ExitCode() != 2 {
		t.Errorf("got %#v, want exit code 2", err)
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
