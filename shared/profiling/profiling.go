// Package profiling backs the programs' hidden -cpuprofile flag, which
// scripts/bench and engineers use to see where the time goes. It is not part
// of the operator interface, so -h does not list it.
package profiling

import (
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
)

// FlagName is the hidden flag's name.
const FlagName = "cpuprofile"

// Flag registers the hidden -cpuprofile FILE flag on fs.
func Flag(fs *flag.FlagSet) *string {
	return fs.String(FlagName, "", "write a CPU profile to `FILE` (hidden)")
}

// PrintDefaults prints fs's flags like fs.PrintDefaults, without the hidden one.
func PrintDefaults(fs *flag.FlagSet) {
	shown := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	shown.SetOutput(fs.Output())
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != FlagName {
			shown.Var(f.Value, f.Name, f.Usage)
			shown.Lookup(f.Name).DefValue = f.DefValue
		}
	})
	shown.PrintDefaults()
}

// StartCPU starts a CPU profile into path; stop ends it and closes the
// file. An empty path profiles nothing.
func StartCPU(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("-%s: %w", FlagName, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-%s: %w", FlagName, err)
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}
