package importer

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"time"

	"crmsync/csvreader/export"
	"crmsync/csvreader/ledger"
)

// dryRun validates the files and counts what a run would do — new,
// changed, unchanged, stale, invalid — without claiming or sending
// anything (ledger.DryRun). With -skipped it lists what it would not
// create, and the changes with their fields.
func dryRun(ctx context.Context, cfg Config, d *sql.DB) (*Report, error) {
	rep := &Report{Files: cfg.Files, DryRun: true, Shard: cfg.Shard.String()}
	if cfg.AsOf.IsZero() {
		var err error
		if cfg.AsOf, err = asOfFiles(cfg.Files); err != nil {
			return rep, err
		}
	}
	rep.AsOf = cfg.AsOf.UTC().Format(time.RFC3339Nano)
	var dr *ledger.DryRun
	var items []ledger.Item
	var skipped *export.SkippedWriter
	if cfg.SkippedPath != "" {
		var err error
		if skipped, err = export.NewSkippedWriter(cfg.SkippedPath); err != nil {
			return rep, err
		}
		defer skipped.Close()
	}
	flush := func() error {
		if len(items) == 0 {
			return nil
		}
		ds, err := dr.Decide(ctx, items)
		if err != nil {
			return err
		}
		for i, dec := range ds {
			var o outcome
			var fields []string
			switch dec.Status {
			case ledger.Claimed:
				rep.New++
				continue
			case ledger.DuplicateInFile:
				rep.DuplicatesInFile++
				o = outDuplicate
			case ledger.Unchanged:
				rep.Unchanged++
				o = outUnchanged
			case ledger.Stale:
				rep.Stale++
				o = outStale
			default: // Updating, Changed: it would be sent (or not) as -changed says
				rep.Changed++
				o, fields = outChanged, dec.Update.Changed
				dec.Why = fmt.Sprintf("changed (-changed %s)", cfg.Changed)
			}
			if skipped != nil {
				skipped.Write(items[i].File, items[i].Line, items[i].Key, o.String(), fields, dec.Why)
			}
		}
		items = items[:0]
		return nil
	}
	var rejects *export.RejectsWriter
	for _, name := range cfg.Files {
		r, err := export.Open(name, cfg.Export)
		if err != nil {
			return rep, err
		}
		if dr == nil {
			rep.Mapping = r.Mapping()
			if dr, err = ledger.StartDryRun(ctx, d, ledger.Sync{AsOf: cfg.AsOf, Mode: cfg.Changed, Clears: clearsOf(cfg, r), Files: cfg.Files}); err != nil {
				r.Close()
				return rep, err
			}
			defer dr.Close(ctx)
		}
		if rejects == nil && cfg.RejectsPath != "" {
			if rejects, err = export.NewRejectsWriter(cfg.RejectsPath, r.Header(), r.Delimiter()); err != nil {
				r.Close()
				return rep, err
			}
			defer rejects.Close()
		}
		for ctx.Err() == nil {
			row, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				r.Close()
				return rep, err
			}
			rep.Rows++
			if !cfg.Shard.Owns(row.Key) {
				rep.OtherShard++
				continue
			}
			if len(row.Suspect) > 0 {
				rep.Suspect++
			}
			if row.Problem != nil {
				rep.RejectedInvalid++
				if rejects != nil {
					rejects.Write(row.Line, row.Fields, row.Problem.Code+": "+row.Problem.Message)
				}
				continue
			}
			rep.Valid++
			c := row.Contact
			items = append(items, ledger.Item{Key: row.Key, Fingerprint: c.Fingerprint(), File: name, Line: int64(row.Line), Contact: &c})
			if len(items) >= cfg.BlockSize {
				if err := flush(); err != nil {
					r.Close()
					return rep, err
				}
			}
		}
		st := r.Stats()
		rep.BlankRows += st.BlankRows
		rep.RepeatedHeaders += st.RepeatedHeaders
		r.Close()
	}
	if err := flush(); err != nil {
		return rep, err
	}
	return rep, ctx.Err()
}
