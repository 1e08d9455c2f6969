package export

import (
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// SkippedWriter lists rows that were not sent and why (-skipped):
// duplicates, unchanged and stale keys, changes not sent, and the changes
// sent, with the names of the fields that changed. Safe for concurrent use.
type SkippedWriter struct {
	mu sync.Mutex
	f  *os.File
	w  *csv.Writer
}

// SkippedHeader is the skipped file's header.
var SkippedHeader = []string{"file", "line", "key", "status", "fields", "why"}

// NewSkippedWriter creates the file at path.
func NewSkippedWriter(path string) (*SkippedWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("skipped file: %w", err)
	}
	w := csv.NewWriter(f)
	w.Write(SkippedHeader)
	return &SkippedWriter{f: f, w: w}, nil
}

// Write lists one row; fields are the changed fields' names, if any.
func (s *SkippedWriter) Write(file string, line int64, key, status string, fields []string, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w.Write([]string{file, strconv.FormatInt(line, 10), key, status, strings.Join(fields, " "), why})
}

// Close flushes and syncs the file.
func (s *SkippedWriter) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w.Flush()
	return errors.Join(s.w.Error(), s.f.Sync(), s.f.Close())
}
