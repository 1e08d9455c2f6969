// Package replay runs fixture exports through the whole duo — fakecrm,
// crmintegrator and csvreader, as real processes, and a fresh PostgreSQL
// database per run — and compares what came out with golden files kept
// next to each fixture: csvreader's exit code, its JSON report (without the
// fields that change from run to run), its rejects file (rows sorted by
// line) and the customers it recorded. Any difference is printed as a
// unified diff and makes the exit code 1.
//
// It is the `csvreader replay` command, so that users' CI can replay their
// own sample exports with the released binaries or the Docker image. Run
// runs the program that calls it (os.Executable) as csvreader unless -bin
// names a folder: only csvreader should call it without -bin.
//
// A fixture is a folder holding one or more export files and, optionally,
// options.json (see fixtureOptions). `-update` writes the goldens.
// docs/replay.md is the user guide; testdata/replay/README.md describes
// the fixtures.
package replay

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"crmsync/shared/cli"
)

// Exit codes of Run's errors (Error.ExitCode).
const (
	ExitMatch     = 0 // every fixture matched its goldens
	ExitDiffers   = 1 // some fixture differed (or, with -update, was not deterministic)
	ExitCannotRun = 2 // usage error, or replay itself could not run
)

// Error is every error Run returns: Code is the exit code, Err the message
// (nil when everything worth saying is already printed).
type Error = cli.Error

func cannotRun(format string, args ...any) error {
	return &Error{Code: ExitCannotRun, Err: fmt.Errorf(format, args...)}
}

type config struct {
	dir      string
	bin      string // -bin; empty: find the programs (findPrograms)
	progs    programs
	dsn      string
	update   bool
	runs     int
	parallel int
	match    *regexp.Regexp
	timeout  time.Duration
	keep     bool
	verbose  bool
	stderr   io.Writer // safe for concurrent use
}

// Usage is the head of `csvreader replay -h`; the flags follow it.
const Usage = `Usage: csvreader replay [flags] DIR

Runs every fixture folder under DIR (or DIR itself, when it is one) through
fakecrm, crmintegrator and csvreader, as real processes, with a fresh
database on DATABASE_URL's server for each run, and compares the outcome
with the fixture's golden files (want.*). Differences are printed as
unified diffs. -update writes the goldens instead.

The programs: this csvreader, and crmintegrator and fakecrm from its own
folder, else from $PATH; -bin DIR takes all three from DIR.

DATABASE_URL: postgres://USER:PASS@HOST:PORT/DB of a server where USER may
CREATE DATABASE (each run gets its own, dropped afterwards).

Exit codes: 0 every fixture matches; 1 something differs; 2 replay could
not run (usage, no database, a program missing, no fixture).

Flags may come before or after DIR. See docs/replay.md.

Flags:
`

// Run is `csvreader replay`: args are the arguments after "replay".
// Every error it returns is an *Error carrying the exit code.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	if c == nil {
		return nil // -h
	}
	self, err := os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	if err != nil && c.bin == "" {
		return cannotRun("cannot tell where this csvreader is (%v): point -bin at the folder holding csvreader, crmintegrator and fakecrm", err)
	}
	if c.progs, err = findPrograms(c.bin, self, exec.LookPath); err != nil {
		return &Error{Code: ExitCannotRun, Err: err}
	}
	if c.verbose {
		fmt.Fprintf(c.stderr, "replay: csvreader %s, crmintegrator %s, fakecrm %s\n", c.progs.reader, c.progs.integrator, c.progs.fakecrm)
	}
	fixtures, err := findFixtures(c.dir, c.match)
	if err != nil {
		return &Error{Code: ExitCannotRun, Err: err}
	}
	if len(fixtures) == 0 {
		return cannotRun("no fixture under %s: a fixture is a folder holding an export file", c.dir)
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
			results[i], failed[i] = replayFixture(ctx, c, dir)
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
	if ctx.Err() != nil {
		return cannotRun("interrupted: %w", ctx.Err())
	}
	if nFailed > 0 {
		if !c.update {
			fmt.Fprintln(stdout, "if the new outcome is the right one, rewrite the goldens with: csvreader replay -update (make replay-update in a checkout) and review the diff")
		}
		return &Error{Code: ExitDiffers}
	}
	return nil
}

// parseFlags reads the command line; a nil config and error is -h. DIR may
// come before, between or after the flags.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	c := &config{stderr: &lockedWriter{w: stderr}}
	var match string
	fs := flag.NewFlagSet("csvreader replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.dir, "dir", getenv("REPLAY_DIR"), "`folder` of fixture folders, or one fixture folder; the same as DIR [REPLAY_DIR]")
	fs.StringVar(&c.bin, "bin", getenv("REPLAY_BIN"), "`folder` holding csvreader, crmintegrator and fakecrm, to replay another build (default: this csvreader, the daemons beside it or on $PATH) [REPLAY_BIN]")
	fs.BoolVar(&c.update, "update", false, "write the golden files from this run instead of comparing")
	fs.IntVar(&c.runs, "runs", 1, "replay each fixture `N` times; every run must give the same outcome")
	fs.IntVar(&c.parallel, "parallel", 2, "fixtures replayed at the same time")
	fs.StringVar(&match, "run", "", "only fixtures whose folder name matches this `regexp`")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "longest one replay of one fixture may take")
	fs.BoolVar(&c.keep, "keep", false, "keep each run's work folder (inputs, outputs and daemon logs) and print where")
	fs.BoolVar(&c.verbose, "v", false, "print every fixture, not only the ones that differ, and the programs used")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), Usage)
		fs.PrintDefaults()
	}
	var positional []string
	for rest := args; len(rest) > 0; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil
			}
			return nil, &Error{Code: ExitCannotRun} // the flag package printed why
		}
		if fs.NArg() == 0 {
			break
		}
		// After "--" everything is an argument; else the first one is, and
		// flags may follow it.
		if parsed := len(rest) - fs.NArg(); parsed > 0 && rest[parsed-1] == "--" {
			positional = append(positional, fs.Args()...)
			break
		}
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	dirFlag := false
	fs.Visit(func(f *flag.Flag) { dirFlag = dirFlag || f.Name == "dir" })
	switch {
	case len(positional) > 1:
		return nil, cannotRun("one DIR, got %q (see csvreader replay -h)", positional)
	case len(positional) == 1 && dirFlag:
		return nil, cannotRun("DIR given twice, as -dir and as %q: give one (see csvreader replay -h)", positional[0])
	case len(positional) == 1:
		c.dir = positional[0]
	}
	if c.dir == "" {
		return nil, cannotRun("no fixture folder: csvreader replay [flags] DIR, where DIR holds fixture folders or is one (see csvreader replay -h, docs/replay.md)")
	}
	if c.runs < 1 || c.parallel < 1 {
		return nil, cannotRun("-runs and -parallel must be at least 1")
	}
	if match != "" {
		re, err := regexp.Compile(match)
		if err != nil {
			return nil, cannotRun("-run: %w", err)
		}
		c.match = re
	}
	c.dsn = getenv("DATABASE_URL")
	if c.dsn == "" {
		return nil, cannotRun("DATABASE_URL is not set: point it at a PostgreSQL server where its user may CREATE DATABASE " +
			"(postgres://USER:PASS@HOST:5432/postgres; in CI, a postgres service: see docs/replay.md); " +
			"in a checkout, make replay starts a disposable one")
	}
	return c, nil
}

// programs are the absolute paths of the three programs: they run in a
// work folder.
type programs struct {
	reader, integrator, fakecrm string
}

// findPrograms finds the programs: with bin, all three in that folder;
// else csvreader is self, and each daemon sits beside it (as in a release
// folder or the Docker image's /usr/local/bin) or on $PATH (lookPath).
func findPrograms(bin, self string, lookPath func(string) (string, error)) (programs, error) {
	if bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			return programs{}, fmt.Errorf("-bin: %w", err)
		}
		p := programs{filepath.Join(abs, "csvreader"), filepath.Join(abs, "crmintegrator"), filepath.Join(abs, "fakecrm")}
		for _, path := range []string{p.reader, p.integrator, p.fakecrm} {
			if err := isProgram(path); err != nil {
				return programs{}, fmt.Errorf("-bin %s: %w: point -bin at the folder holding csvreader, crmintegrator and fakecrm (make build puts them in bin/)", bin, err)
			}
		}
		return p, nil
	}
	find := func(name string) (string, error) {
		beside := filepath.Join(filepath.Dir(self), name)
		if isProgram(beside) == nil {
			return beside, nil
		}
		path, err := lookPath(name)
		if err != nil {
			return "", fmt.Errorf("%s is neither beside %s nor on $PATH: install the three programs side by side, or point -bin at the folder holding them", name, self)
		}
		return filepath.Abs(path)
	}
	p := programs{reader: self}
	var err error
	if p.integrator, err = find("crmintegrator"); err != nil {
		return programs{}, err
	}
	if p.fakecrm, err = find("fakecrm"); err != nil {
		return programs{}, err
	}
	return p, nil
}

// isProgram says why path is not an executable file, if it is not.
func isProgram(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// lockedWriter serialises writes from the fixtures replayed at once.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
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
