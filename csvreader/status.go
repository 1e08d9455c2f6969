package main

import (
	"io"
	"sync"
)

// terminal is stderr when it is a terminal: progress is one status line
// rewritten in place, as pv or rsync show it, and a log line first clears
// the status line, then the status is drawn again below it. It implements
// importer.StatusLine for the progress and io.Writer for the logs.
type terminal struct {
	mu   sync.Mutex
	w    io.Writer
	last string // the status line shown, "" when none
}

// clearLine returns the cursor to the line's start and erases the line.
const clearLine = "\r\x1b[K"

func (t *terminal) Status(line string, final bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if final {
		io.WriteString(t.w, clearLine+line+"\n")
		t.last = ""
		return
	}
	io.WriteString(t.w, clearLine+line)
	t.last = line
}

func (t *terminal) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last != "" {
		io.WriteString(t.w, clearLine)
	}
	n, err := t.w.Write(p)
	if t.last != "" {
		io.WriteString(t.w, t.last)
	}
	return n, err
}
