// Package buildinfo says which build of a program is running: its module
// version, the commit it was built from and when, as the Go toolchain
// stamped them into the binary (debug.ReadBuildInfo).
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Info is what the binary knows of its build.
type Info struct {
	Version  string // module version: "(devel)" for a build from a checkout
	Commit   string // vcs.revision; "" when not stamped
	Time     string // vcs.time (the commit's time, RFC 3339); "" when not stamped
	Modified bool   // built from a working tree with uncommitted changes
	Go       string
}

// Read returns the binary's build information.
func Read() Info {
	in := Info{Version: "(unknown)", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	in.Version = bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Commit = s.Value
		case "vcs.time":
			in.Time = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// String is the line -version prints: "csvreader (devel) commit 1a2b3c4d5e6f (2026-12-02T18:00:00Z, modified) go1.26.8".
func (in Info) String(program string) string {
	s := program + " " + in.Version
	if in.Commit != "" {
		c := in.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		s += " commit " + c
		switch {
		case in.Time != "" && in.Modified:
			s += fmt.Sprintf(" (%s, modified)", in.Time)
		case in.Time != "":
			s += fmt.Sprintf(" (%s)", in.Time)
		case in.Modified:
			s += " (modified)"
		}
	}
	return s + " " + in.Go
}
