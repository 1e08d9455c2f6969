package fakecrm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"crmsync/crmintegrator/crmapi"
)

// stateVersion is the state file's format; a file of another version is
// refused rather than misread.
const stateVersion = 1

// stateFile is what -state holds: the contacts and the finished
// idempotency keys. Counters are not kept; they describe one run.
type stateFile struct {
	Version         int                    `json:"version"`
	SavedAt         time.Time              `json:"saved_at"`
	NextID          uint64                 `json:"next_id"`
	Contacts        []crmapi.StoredContact `json:"contacts"`
	IdempotencyKeys []savedKey             `json:"idempotency_keys"`
}

// load reads the state file; a missing file is an empty CRM.
func (s *Server) load() error {
	b, err := os.ReadFile(s.file)
	if errors.Is(err, fs.ErrNotExist) {
		s.log.Info("no state file yet, starting empty", "file", s.file)
		return nil
	}
	if err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("load state %s: %w (fix or delete the file to start empty)", s.file, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("load state %s: version %d, want %d (delete the file to start empty)", s.file, st.Version, stateVersion)
	}
	s.store.replace(st.Contacts, st.NextID)
	s.idem.replace(st.IdempotencyKeys)
	s.markSaved()
	s.log.Info("state loaded", "file", s.file, "contacts", len(st.Contacts), "idempotency_keys", len(st.IdempotencyKeys))
	return nil
}

// savedVersions are the store versions last written, guarded by saveMu.
type savedVersions struct{ contacts, keys uint64 }

func (s *Server) versions() savedVersions {
	_, cv := s.store.stamp()
	s.idem.mu.Lock()
	kv := s.idem.version
	s.idem.mu.Unlock()
	return savedVersions{cv, kv}
}

func (s *Server) markSaved() {
	s.saveMu.Lock()
	s.saved = s.versions()
	s.saveMu.Unlock()
}

// save writes the state file atomically: a temporary file in the same
// directory, synced, then renamed over the old one, so a crash leaves
// either the old state or the new, never half of one.
func (s *Server) save() error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	contacts, nextID, cv := s.store.snapshot()
	keys, kv := s.idem.snapshot()
	b, err := json.Marshal(stateFile{
		Version: stateVersion, SavedAt: time.Now().UTC(), NextID: nextID,
		Contacts: contacts, IdempotencyKeys: keys,
	})
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := writeFileAtomic(s.file, b); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	s.saved = savedVersions{cv, kv}
	s.log.Debug("state saved", "file", s.file, "contacts", len(contacts), "idempotency_keys", len(keys))
	return nil
}

// saveLoop saves every interval when something changed, until Close.
func (s *Server) saveLoop(every time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.saveMu.Lock()
			dirty := s.versions() != s.saved
			s.saveMu.Unlock()
			if !dirty {
				continue
			}
			if err := s.save(); err != nil {
				s.log.Error("periodic save failed; will retry", "err", err)
			}
		}
	}
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	// Make the rename itself durable; not every platform can sync a
	// directory, so failure here is not an error.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
