// Package runtimecfg holds the Go runtime settings csvreader and
// crmintegrator share.
package runtimecfg

import (
	"runtime/debug"
	"strconv"
)

// DefaultGCPercent is the GOGC both programs run with unless the GOGC
// environment variable says otherwise. Their live heaps are small and
// bounded (the reader's by its records in flight), and CPU is what limits an
// import: at 200 the collector does about half the work for a heap about a
// third larger (make bench, 1M rows: reader 9.3 → 7.5 CPU-seconds, peak RSS
// 50–70 → 76 MB; integrator 7.7 → 5.7).
const DefaultGCPercent = 200

// SetGC applies DefaultGCPercent when getenv("GOGC") is empty, and returns
// the setting in effect.
func SetGC(getenv func(string) string) string {
	if v := getenv("GOGC"); v != "" {
		return v // the runtime read it at start
	}
	debug.SetGCPercent(DefaultGCPercent)
	return strconv.Itoa(DefaultGCPercent)
}
