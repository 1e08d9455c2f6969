// Package runtimecfg holds the Go runtime settings csvreader and
// crmintegrator share.
package runtimecfg

import (
	"runtime/debug"
)

// SetGC applies percent as GOGC unless the GOGC environment variable is
// set, and a soft memory limit of limit bytes (when positive) unless
// GOMEMLIMIT is set. Both programs' live heaps are small and bounded (the
// reader's by its records in flight), and CPU is what limits an import: the
// collector's work falls with the percent, for a larger heap (make bench,
// 1M rows: reader 9.3 → 7.5 CPU-seconds, integrator 7.7 → 5.7 at 200
// against 100). The limit keeps
// the larger heap that GOGC allows from growing past what the program needs:
// near it, the collector runs sooner. It is soft: a live heap above it is
// collected more often, never refused.
func SetGC(getenv func(string) string, percent int, limit int64) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(percent)
	}
	if limit > 0 && getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(limit)
	}
}
