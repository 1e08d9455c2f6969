package importer_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"crmsync/csvreader/export"
	"crmsync/csvreader/importer"
	"crmsync/shared/pgtest"
)

// TestRunReadStage checks what the read stage adds to the report for
// real-world exports: lines that are no rows, suspect rows, a file that
// stops part way; and that the report still adds up.
func TestRunReadStage(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	write := func(body string) string {
		path := filepath.Join(t.TempDir(), "export.csv")
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	const header = "id,first_name,last_name,email,phone,company\n"
	tests := []struct {
		name    string
		body    string
		dryRun  bool
		wantErr error
		want    importer.Report // the counts compared
	}{
		{
			name: "blank rows and the header repeated are no rows",
			body: header + "R1,a,a,r1@example.com,,x\n,,,,,\n" + header + "R2,b,b,r2@example.com,,x\n",
			want: importer.Report{Rows: 2, Valid: 2, Delivered: 2, BlankRows: 1, RepeatedHeaders: 1},
		},
		{
			name: "a runaway quote is a suspect reject",
			body: header + "S1,a,a,s1@example.com,,\"open\nS2,b,b,s2@example.com,,x\nS3,c,c,s3@example.com,,closed\"\nS4,d,d,s4@example.com,,x\n",
			want: importer.Report{Rows: 2, Valid: 1, Delivered: 1, RejectedInvalid: 1, Suspect: 1},
		},
		{
			name:   "the dry run counts the same",
			body:   header + "S1,a,a,s1@example.com,,\"open\nS2,b,b,s2@example.com,,closed\"\n,,,,,\n",
			dryRun: true,
			want:   importer.Report{Rows: 1, RejectedInvalid: 1, Suspect: 1, BlankRows: 1},
		},
		{
			name:    "rows read before the header repeated in another order are unfinished",
			body:    header + "U1,a,a,u1@example.com,,x\nU2,b,b,u2@example.com,,x\nemail,id,first_name,last_name,phone,company\n",
			wantErr: export.ErrRepeatedHeader,
			want:    importer.Report{Rows: 2, Valid: 2, Unfinished: 2},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(t, write(tc.body))
			cfg.DryRun = tc.dryRun
			rep, err := importer.Run(ctx, cfg, d, newCRM())
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got error %v, want %v", err, tc.wantErr)
			}
			got := importer.Report{Rows: rep.Rows, Valid: rep.Valid, Delivered: rep.Delivered, RejectedInvalid: rep.RejectedInvalid,
				Unfinished: rep.Unfinished, Suspect: rep.Suspect, BlankRows: rep.BlankRows, RepeatedHeaders: rep.RepeatedHeaders}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if !rep.Accounted() {
				t.Errorf("report does not add up: %+v", rep)
			}
		})
	}
}

// TestRunMaxRejectRatio: once more than RejectRatioMinimum rows are
// rejected and they are more than the ratio of the rows read, the run
// stops with the reason of the last one.
func TestRunMaxRejectRatio(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	rows := genRows(10)
	for range importer.RejectRatioMinimum + 500 {
		rows = append(rows, "X,bad,row,not-an-email,,x")
	}
	cfg := config(t, writeCSV(t, rows...))
	cfg.MaxRejectRatio = 0.5
	rep, err := importer.Run(ctx, cfg, d, newCRM())
	if !errors.Is(err, importer.ErrTooManyRejects) || !strings.Contains(err.Error(), "invalid_email") {
		t.Fatalf("got %v, want ErrTooManyRejects with the last reason", err)
	}
	if want := int64(importer.RejectRatioMinimum + 1); rep.RejectedInvalid != want {
		t.Errorf("stopped after %d rejects, want %d", rep.RejectedInvalid, want)
	}
}
