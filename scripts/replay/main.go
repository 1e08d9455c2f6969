// Command replay runs fixture exports through the whole duo — fakecrm,
// crmintegrator and csvreader, as real processes from the built binaries,
// and a fresh PostgreSQL database per run — and compares what came out
// with golden files kept next to each fixture: csvreader's exit code, its
// JSON report (without the fields that change from run to run), its
// rejects file (rows sorted by line) and the customers it recorded. Any
// difference is printed as a unified diff and makes the exit code 1.
//
// A fixture is a folder holding one or more export files and, optionally,
// options.json (see fixtureOptions). `replay -update` writes the goldens.
// testdata/replay/README.md is the user guide; `make replay` runs it with
// a disposable PostgreSQL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "replay:", msg)
		}
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(2)
	}
}

// errDiffers is returned when a replay did not match its goldens: exit 1.
var errDiffers = exitError{1, errors.New("")}

type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) ExitCode() int { return e.code }

type config struct {
	dir      string
	bin      string
	dsn      string
	update   bool
	runs     int
	parallel int
	match    *regexp.Regexp
	timeout  time.Duration
	keep     bool
	verbose  bool
}

const usage = `Usage: replay [flags]

Runs every fixture folder under -dir through fakecrm, crmintegrator and
csvreader (the binaries in -bin) with a fresh database on DATABASE_URL's
server, and compares the outcome with the fixture's golden files (want.*).
Differences are printed as unified diffs; the exit code is 1 when anything
differs, 2 when replay itself could not run. -update rewrites the goldens.
See testdata/replay/README.md.

Flags:
`

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	c := config{}
	var match string
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.dir, "dir", env("REPLAY_DIR", "testdata/replay"), "`folder` of fixture folders, or one fixture folder [REPLAY_DIR]")
	fs.StringVar(&c.bin, "bin", env("REPLAY_BIN", "bin"), "`folder` holding csvreader, crmintegrator and fakecrm (make build) [REPLAY_BIN]")
	fs.BoolVar(&c.update, "update", false, "write the golden files from this run instead of comparing")
	fs.IntVar(&c.runs, "runs", 1, "replay each fixture `N` times; every run must give the same outcome")
	fs.IntVar(&c.parallel, "parallel", 2, "fixtures replayed at the same time")
	fs.StringVar(&match, "run", "", "only fixtures whose folder name matches this `regexp`")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "longest one replay of one fixture may take")
	fs.BoolVar(&c.keep, "keep", false, "keep each run's work folder (inputs, outputs and daemon logs) and print where")
	fs.BoolVar(&c.verbose, "v", false, "print every fixture, not only the ones that differ")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return exitError{2, errors.New("")}
	}
	if fs.NArg() > 0 {
		return exitError{2, fmt.Errorf("unexpected arguments %q (see replay -h)", fs.Args())}
	}
	if c.runs < 1 || c.parallel < 1 {
		return exitError{2, errors.New("-runs and -parallel must be at least 1")}
	}
	if match != "" {
		re, err := regexp.Compile(match)
		if err != nil {
			return exitError{2, fmt.Errorf("-run: %w", err)}
		}
		c.match = re
	}
	c.dsn = getenv("DATABASE_URL")
	if c.dsn == "" {
		return exitError{2, errors.New("DATABASE_URL is not set: run `make replay`, or `scripts/with-pg go run ./scripts/replay`, which start a disposable PostgreSQL")}
	}
	// The programs run in a work folder: name them absolutely.
	if abs, err := filepath.Abs(c.bin); err == nil {
		c.bin = abs
	}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(c.bin, b)); err != nil {
			return exitError{2, fmt.Errorf("%s: run make build, or point -bin at the folder holding the binaries", err)}
		}
	}
	fixtures, err := findFixtures(c.dir, c.match)
	if err != nil {
		return exitError{2, err}
	}
	if len(fixtures) == 0 {
		return exitError{2, fmt.Errorf("no fixture under %s: a fixture is a folder holding an export file", c.dir)}
	}

	start := time.Now()
	results := make([]string, len(fixtures))
	failed := make([]bool, len(fixtures))
	sem := make(chan struct{}, c.parallel)
	var wg sync.WaitGroup
	for i, dir := range fixtures {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i], failed[i] = replayFixture(ctx, &c, dir)
		}()
	}
	wg.Wait()

	var nFailed int
	for i, dir := range fixtures {
		if failed[i] {
			nFailed++
		}
		if failed[i] || c.verbose || c.update {
			fmt.Fprintf(stdout, "%s", results[i])
		} else {
			fmt.Fprintf(stdout, "ok   %s\n", fixtureName(c.dir, dir))
		}
	}
	verb := "replayed"
	if c.update {
		verb = "updated"
	}
	fmt.Fprintf(stdout, "%s %d fixtures × %d runs in %.1fs: %d differ\n", verb, len(fixtures), c.runs, time.Since(start).Seconds(), nFailed)
	if nFailed > 0 {
		if !c.update {
			fmt.Fprintln(stdout, "if the new outcome is the right one, rewrite the goldens with: make replay-update (or replay -update) and review the diff")
		}
		return errDiffers
	}
	return ctx.Err()
}

// findFixtures lists the fixture folders under dir: dir itself when it
// holds export files, else its sub-folders that do, sorted by name.
func findFixtures(dir string, match *regexp.Regexp) ([]string, error) {
	if isFixture(dir) {
		return []string{dir}, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("fixtures: %w", err)
	}
	var out []string
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if !e.IsDir() || !isFixture(p) || (match != nil && !match.MatchString(e.Name())) {
			continue
		}
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

func isFixture(dir string) bool {
	opts, err := loadOptions(dir)
	if err != nil {
		return true // report the broken options.json rather than skip it
	}
	files, err := inputFiles(dir, opts)
	return err == nil && len(files) > 0
}

func fixtureName(root, dir string) string {
	if rel, err := filepath.Rel(root, dir); err == nil && rel != "." {
		return rel
	}
	return filepath.Base(dir)
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix) + "\n"
}
