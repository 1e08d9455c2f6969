package ledger_test

import (
	"context"
	"testing"

	"crmsync/csvreader/ledger"
	"crmsync/shared/pgtest"
)

// A Claim retried after its commit's answer was lost must not forget that
// the key it took over came from a crashed run. Attempt 1 took K over from
// a crashed run (Orphaned: hold it back for the call bound) and committed,
// but the answer was lost; attempt 2 finds its own claims row on the same
// line and answers TakenOver without Orphaned, so the record is looked up at
// once while the crashed run's integrator call may still create it.
func TestOrphanedKeptOnClaimRetry(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	crashed := must(ledger.Start(ctx, d, nil))
	must(crashed.Claim(ctx, items("K")))
	ledger.KillLock(t, crashed)

	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	// What attempt 1 committed (takeOver's upsert), its answer lost: the
	// in-memory state is untouched, as Claim updates it only on success.
	if _, err := d.Exec(`UPDATE claims SET run_id = $1, state = 'sending', fingerprint = 'fp-K', claimed_at = now()
		WHERE external_id = 'K'`, r.ID()); err != nil {
		t.Fatal(err)
	}
	got := must(r.Claim(ctx, items("K")))
	if got[0].Status != ledger.TakenOver || !got[0].Orphaned {
		t.Errorf("retried claim of a key taken over from a crashed run = %+v, want TakenOver and Orphaned", got[0])
	}
}

// Orphaned must survive a second takeover. A crashed, its call
// on K possibly still running in the integrator; B takes K over (Orphaned,
// held back) and is interrupted before the call bound passes (drain →
// leave → Mark "failed"), ending "interrupted"; C, started at once, gets K
// as TakenOver without Orphaned because B ended cleanly, and looks K up
// while A's orphaned call can still create it.
func TestOrphanedKeptThroughCleanTakeover(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	a := must(ledger.Start(ctx, d, nil))
	must(a.Claim(ctx, items("K")))
	ledger.KillLock(t, a)

	b := must(ledger.Start(ctx, d, nil))
	got := must(b.Claim(ctx, items("K")))
	if got[0].Status != ledger.TakenOver || !got[0].Orphaned {
		t.Fatalf("B's takeover = %+v, want TakenOver, Orphaned", got[0])
	}
	// The importer marks a record it held back for the call bound as orphan.
	if err := b.Mark(ctx, ledger.Failed, []ledger.Mark{{Key: "K", Reason: "interrupted: ", Orphan: true}}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx, "interrupted", nil); err != nil {
		t.Fatal(err)
	}

	c := must(ledger.Start(ctx, d, nil))
	defer c.Close(ctx, "done", nil)
	got = must(c.Claim(ctx, items("K")))
	if got[0].Status != ledger.TakenOver || !got[0].Orphaned {
		t.Errorf("C's takeover moments after A crashed = %+v, want TakenOver and Orphaned (A's call may still run)", got[0])
	}
}

// The same record (file and line) met again while it is in flight must not
// be handed out a second time. Only one path reaches Claim's in-memory
// "same file and line" branch: the same path given twice on the command
// line (export.Reader names records by the path as given); a Claim retried
// after a lost commit never does, since Claim updates its map only on
// success. Both copies are then sent concurrently, the second with a lookup
// that can run before the first create lands.
func TestSameRecordTwiceIsDuplicate(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	r := must(ledger.Start(ctx, d, nil))
	defer r.Close(ctx, "done", nil)
	must(r.Claim(ctx, items("K"))) // first copy of f.csv: K in flight
	got := must(r.Claim(ctx, items("K")))
	if got[0].Status != ledger.DuplicateInFile {
		t.Errorf("K again from f.csv line 2 while in flight = %+v, want DuplicateInFile (it would be sent twice)", got[0])
	}
	// Nor once the CRM rejected it.
	if err := r.Mark(ctx, ledger.Rejected, []ledger.Mark{{Key: "K", Reason: "invalid_email"}}); err != nil {
		t.Fatal(err)
	}
	got = must(r.Claim(ctx, items("K")))
	if got[0].Status != ledger.DuplicateInFile {
		t.Errorf("K again from f.csv line 2 after the CRM rejected it = %+v, want DuplicateInFile", got[0])
	}
}
