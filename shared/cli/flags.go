package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"crmsync/shared/profiling"
	"crmsync/shared/redact"
)

// Flags is a flag set whose every flag defaults to an environment
// variable, named in its help as "(env NAME)". A bad value, given as a flag
// or in the environment, does not stop parsing: Parse reports them all at
// once, as one usage error.
type Flags struct {
	fs      *flag.FlagSet
	getenv  func(string) string
	errs    []error
	after   []func() // secrets' environment defaults, applied after parsing
	fromEnv map[string]bool
}

// NewFlags returns the flags of program name; -h prints head, then the
// flags. head should say what the program does and what it takes.
func NewFlags(name, head string, getenv func(string) string, stderr io.Writer) *Flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &Flags{fs: fs, getenv: getenv, fromEnv: map[string]bool{}}
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, strings.TrimRight(head, "\n")+"\n\n")
		fmt.Fprint(w, "Every flag defaults to the environment variable named in its help; a secret's\nvalue is never shown.\n\n")
		f.printDefaults(w)
	}
	return f
}

// FlagSet is the underlying flag set, for flags of other packages
// (profiling's hidden -cpuprofile).
func (f *Flags) FlagSet() *flag.FlagSet { return f.fs }

// Args are the arguments left after the flags.
func (f *Flags) Args() []string { return f.fs.Args() }

// Given reports whether the flag was set on the command line or by its
// environment variable.
func (f *Flags) Given(name string) bool {
	given := f.fromEnv[name]
	f.fs.Visit(func(fl *flag.Flag) {
		if fl.Name == name {
			given = true
		}
	})
	return given
}

// Parse parses args. -h returns flag.ErrHelp (the usage is printed); any
// bad value, of a flag or an environment variable, returns one usage error
// naming every one of them.
func (f *Flags) Parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		f.errs = append(f.errs, err)
	}
	for _, fn := range f.after {
		fn()
	}
	if len(f.errs) > 0 {
		return Usage(errors.Join(f.errs...))
	}
	return nil
}

// value is a flag of type T; a bad value is recorded, not returned, so
// that parsing goes on and every mistake is reported at once.
type value[T any] struct {
	f      *Flags
	name   string
	kind   string // the placeholder -h shows when the usage names none
	p      *T
	parse  func(string) (T, error)
	format func(T) string
}

func (v *value[T]) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return v.format(*v.p)
}

func (v *value[T]) Set(s string) error {
	x, err := v.parse(s)
	if err != nil {
		v.f.errs = append(v.f.errs, fmt.Errorf("-%s %q: %s", v.name, s, explain(v.kind, err)))
		return nil
	}
	*v.p = x
	return nil
}

type boolValue struct{ *value[bool] }

func (boolValue) IsBoolFlag() bool { return true }

// explain turns a parse error into what the value should have been.
func explain(kind string, err error) string {
	var ne *strconv.NumError
	if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
		return "out of range"
	}
	switch kind {
	case "int":
		return "not a whole number"
	case "float":
		return "not a number"
	case "duration":
		return "not a duration (like 90s or 10m)"
	case "":
		return "not true or false"
	}
	return err.Error()
}

func define[T any](f *Flags, p *T, name, env string, def T, usage, kind string,
	parse func(string) (T, error), format func(T) string) *value[T] {
	*p = def
	v := &value[T]{f: f, name: name, kind: kind, p: p, parse: parse, format: format}
	if s := f.getenv(env); s != "" {
		x, err := parse(s)
		if err != nil {
			f.errs = append(f.errs, fmt.Errorf("environment variable %s=%q: %s", env, s, explain(kind, err)))
		} else {
			*p = x
			f.fromEnv[name] = true
		}
	}
	return v
}

func (f *Flags) help(usage, env string) string { return usage + " (env " + env + ")" }

func ident(s string) (string, error) { return s, nil }
func same(s string) string           { return s }

// String defines a string flag.
func (f *Flags) String(p *string, name, env, def, usage string) {
	f.fs.Var(define(f, p, name, env, def, usage, "string", ident, same), name, f.help(usage, env))
}

// Duration defines a duration flag ("90s", "5m").
func (f *Flags) Duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	f.fs.Var(define(f, p, name, env, def, usage, "duration", time.ParseDuration, time.Duration.String), name, f.help(usage, env))
}

// Int defines an int flag.
func (f *Flags) Int(p *int, name, env string, def int, usage string) {
	f.fs.Var(define(f, p, name, env, def, usage, "int", strconv.Atoi, strconv.Itoa), name, f.help(usage, env))
}

// Int64 defines an int64 flag.
func (f *Flags) Int64(p *int64, name, env string, def int64, usage string) {
	parse := func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) }
	format := func(n int64) string { return strconv.FormatInt(n, 10) }
	f.fs.Var(define(f, p, name, env, def, usage, "int", parse, format), name, f.help(usage, env))
}

// Float defines a float64 flag.
func (f *Flags) Float(p *float64, name, env string, def float64, usage string) {
	parse := func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }
	format := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	f.fs.Var(define(f, p, name, env, def, usage, "float", parse, format), name, f.help(usage, env))
}

// Bool defines a boolean flag (-name, -name=false).
func (f *Flags) Bool(p *bool, name, env string, def bool, usage string) {
	f.fs.Var(boolValue{define(f, p, name, env, def, usage, "", strconv.ParseBool, strconv.FormatBool)}, name, f.help(usage, env))
}

// Secret defines a string flag for a secret: its environment default is
// applied after parsing, so that -h never shows it (it says whether one is
// set). Prefer the environment or a file: a command line shows in ps.
func (f *Flags) Secret(p *string, name, env, usage string) {
	h := f.help(usage, env)
	if f.getenv(env) != "" {
		h = usage + " (env " + env + ", set: " + redact.Secret(f.getenv(env)) + ")"
	}
	f.fs.Var(&value[string]{f: f, name: name, kind: "string", p: p, parse: ident, format: func(string) string { return "" }}, name, h)
	f.after = append(f.after, func() {
		if *p == "" {
			*p = f.getenv(env)
		}
	})
}

// URL defines a string flag for a URL that may carry a password or
// secret query values: -h shows its default redacted.
func (f *Flags) URL(p *string, name, env, def, usage string) {
	f.fs.Var(define(f, p, name, env, def, usage, "URL", ident, redact.URL), name, f.help(usage, env))
}

// printDefaults is flag.PrintDefaults for these flags, without profiling's
// hidden one, with a placeholder for every flag that takes a value.
func (f *Flags) printDefaults(w io.Writer) {
	f.fs.VisitAll(func(fl *flag.Flag) {
		if fl.Name == profiling.FlagName {
			return
		}
		placeholder, usage := flag.UnquoteUsage(fl)
		if k, ok := kindOf(fl.Value); ok && !strings.Contains(fl.Usage, "`") {
			placeholder = k
		}
		line := "  -" + fl.Name
		if placeholder != "" {
			line += " " + placeholder
		}
		line += "\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t")
		if fl.DefValue != "" && fl.DefValue != "0" && fl.DefValue != "0s" && fl.DefValue != "false" {
			line += fmt.Sprintf(" (default %s)", fl.DefValue)
		}
		fmt.Fprintln(w, line)
	})
}

func kindOf(v flag.Value) (string, bool) {
	switch v := v.(type) {
	case boolValue:
		return "", true
	case *value[string]:
		return v.kind, true
	case *value[int]:
		return v.kind, true
	case *value[int64]:
		return v.kind, true
	case *value[float64]:
		return v.kind, true
	case *value[time.Duration]:
		return v.kind, true
	}
	return "", false
}
