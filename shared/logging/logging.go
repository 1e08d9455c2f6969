// Package logging builds the structured logger both programs configure with
// -log-format and -log-level, so they log alike.
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// New returns a log/slog logger writing format ("text" or "json") at level
// ("debug", "info", "warn" or "error") to w.
func New(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}
