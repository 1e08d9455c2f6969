package importer

import (
	"context"
	"database/sql"
	"fmt"
	"io"

	"github.com/lib/pq"

	"crmsync/csvreader/export"
	"crmsync/csvreader/ledger"
)

// dryRun validates the files and counts what a run would do, without
// claiming or sending anything. Keys met earlier in the files are tracked in
// a temporary table, so memory stays bounded however large the files are.
func dryRun(ctx context.Context, cfg Config, d *sql.DB) (*Report, error) {
	rep := &Report{Files: cfg.Files, DryRun: true, Shard: cfg.Shard.String()}
	conn, err := d.Conn(ctx)
	if err != nil {
		return rep, fmt.Errorf("dry run: connect: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `CREATE TEMP TABLE IF NOT EXISTS dry_run_seen (k text PRIMARY KEY)`); err != nil {
		return rep, fmt.Errorf("dry run: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `DROP TABLE IF EXISTS dry_run_seen`)

	var keys []string
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		rows, err := conn.QueryContext(ctx,
			`INSERT INTO dry_run_seen SELECT DISTINCT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING k`, pq.Array(keys))
		if err != nil {
			return fmt.Errorf("dry run: %w", err)
		}
		var firsts []string
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				rows.Close()
				return err
			}
			firsts = append(firsts, k)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rep.DuplicatesInFile += int64(len(keys) - len(firsts))
		done, err := ledger.Delivered(ctx, d, firsts)
		if err != nil {
			return err
		}
		rep.AlreadyDelivered += int64(len(done))
		rep.New += int64(len(firsts) - len(done))
		keys = keys[:0]
		return nil
	}
	var rejects *export.RejectsWriter
	for _, name := range cfg.Files {
		r, err := export.Open(name, cfg.Export)
		if err != nil {
			return rep, err
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
			keys = append(keys, row.Key)
			if len(keys) >= cfg.BlockSize {
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
