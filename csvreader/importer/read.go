package importer

import (
	"fmt"
	"io"
	"strings"

	"crmsync/csvreader/export"
)

// read streams every file into blocks. It returns a fatal read error.
func (p *pipeline) read(first *export.Reader) (err error) {
	defer func() {
		if err != nil {
			p.fatal(err)
		}
		p.readDone.Store(true)
		if p.pending.Load() == 0 {
			p.closeStop()
		}
	}()
	header := first.Header()
	for i, name := range p.cfg.Files {
		r := first
		if i > 0 {
			if r, err = export.Open(name, p.cfg.Export); err != nil {
				return err
			}
			if strings.Join(r.Header(), "\x00") != strings.Join(header, "\x00") {
				r.Close()
				return fmt.Errorf("%s: its columns differ from %s's; import it in a run of its own", name, p.cfg.Files[0])
			}
		}
		p.offMu.Lock()
		p.offset = func() (int64, int64) { return r.Offset(), r.Size() }
		p.offMu.Unlock()
		err = p.readFile(r)
		st := r.Stats()
		p.n.blank.Add(st.BlankRows)
		p.n.repeatedHeaders.Add(st.RepeatedHeaders)
		r.Close()
		if err != nil || p.readCtx.Err() != nil || p.stopped() {
			return err
		}
	}
	return nil
}

func (p *pipeline) readFile(r *export.Reader) error {
	var blk []*rec
	bytes := 0
	flush := func() bool {
		if len(blk) == 0 {
			return true
		}
		for range blk {
			select {
			case p.room <- struct{}{}:
			case <-p.stop:
				return false
			}
		}
		p.add()
		select {
		case p.blocks <- &item{recs: blk}:
		case <-p.stop:
			return false
		}
		blk, bytes = nil, 0
		return true
	}
	name := r.Name()
	for p.readCtx.Err() == nil {
		row, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			// The rows read but not yet in a block are never sent: count
			// them, so the report still adds up.
			p.n.unfinished.Add(int64(len(blk)))
			return err
		}
		p.n.rows.Add(1)
		if !p.cfg.Shard.Owns(row.Key) {
			p.n.otherShard.Add(1) // its reader sends, skips or rejects it
			continue
		}
		if len(row.Suspect) > 0 {
			p.n.suspect.Add(1)
		}
		if row.Problem != nil {
			p.n.invalid.Add(1)
			if err := p.reject(name, int64(row.Line), row.Fields, row.Problem.Code+": "+row.Problem.Message); err != nil {
				return err
			}
			continue
		}
		p.n.valid.Add(1)
		blk = append(blk, &rec{c: row.Contact, fp: row.Contact.Fingerprint(),
			file: name, line: int64(row.Line), fields: row.Fields})
		for _, f := range row.Fields {
			bytes += len(f)
		}
		if len(blk) >= p.cfg.BlockSize || bytes >= p.cfg.BlockBytes {
			if !flush() {
				return nil
			}
		}
	}
	flush()
	return nil
}

// reject writes a row to the rejects file and enforces -max-rejects.
// With several input files, the reason names the row's file.
func (p *pipeline) reject(file string, line int64, fields []string, reason string) error {
	if len(p.cfg.Files) > 1 {
		reason = fmt.Sprintf("%s: %s", file, reason)
	}
	if err := p.rejects.Write(int(line), fields, reason); err != nil {
		return fmt.Errorf("rejects file: %w", err)
	}
	rejected := p.n.invalid.Load() + p.n.crmRejected.Load()
	if max := p.cfg.MaxRejects; max > 0 && rejected > int64(max) {
		return fmt.Errorf("%w: more than %d (-max-rejects); the export looks broken, see %s; the last was line %d: %s", ErrTooManyRejects, max, p.cfg.RejectsPath, line, reason)
	}
	if ratio, rows := p.cfg.MaxRejectRatio, p.n.rows.Load(); ratio > 0 && rejected > RejectRatioMinimum && float64(rejected) > ratio*float64(rows) {
		return fmt.Errorf("%w: %d of the first %d rows were rejected, more than %.0f%% (-max-reject-ratio); the export looks broken, see %s; the last was line %d: %s",
			ErrTooManyRejects, rejected, rows, 100*ratio, p.cfg.RejectsPath, line, reason)
	}
	return nil
}
