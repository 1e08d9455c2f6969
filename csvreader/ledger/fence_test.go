package ledger_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"crmsync/csvreader/ledger"
	"crmsync/shared/pgtest"
)

// A live run loses its lock. Meanwhile another run starts (turning the
// first run's block into claims rows, still the first run's), takes one
// key over and delivers another. When the first run holds its lock again
// it may send nothing until the fencing check has run, and then not the
// two keys that are no longer its own.
func TestFenceAfterLostLock(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	a := must(ledger.Start(ctx, d, nil))
	defer a.Close(ctx, "done", nil)
	if err := a.SetCallBound(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	must(a.Claim(ctx, items("K1", "K2", "K3")))
	if !a.CanSend() {
		t.Fatal("a fresh run may not send")
	}
	ledger.KillLock(t, a) // its lock connection is gone
	if a.CanSend() || !errors.Is(a.SendGate(), ledger.ErrFenced) {
		t.Fatal("a run without its lock may send")
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := a.Permit(short, []string{"K3"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Permit without the lock: got %v, want it to wait", err)
	}

	b := must(ledger.Start(ctx, d, nil))
	defer b.Close(ctx, "done", nil)
	got := must(b.Claim(ctx, items("K1", "K2")))
	if !slices.Equal(statuses(got), []ledger.Status{ledger.TakenOver, ledger.TakenOver}) {
		t.Fatalf("b's claims: %v, want both taken over", statuses(got))
	}
	// a sends only within the lease of its last proof, and its calls run
	// for at most its call bound: the wait is what is left of both.
	if !got[0].Orphaned || got[0].Wait < 30*time.Second || got[0].Wait > time.Minute+ledger.LockLease {
		t.Errorf("taken over from a run still running: got %+v, want Orphaned with a wait of about a's call bound", got[0])
	}
	if _, err := b.Confirm(ctx, []ledger.Delivery{delivery("K2")}); err != nil {
		t.Fatal(err)
	}

	ledger.ResumeLock(t, a)
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel()
	lost, err := a.Permit(pctx, []string{"K1", "K2", "K3"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lost, []int{0, 1}) {
		t.Errorf("lost = %v, want [0 1]: K1 is b's, K2 b delivered", lost)
	}
	if !a.CanSend() {
		t.Error("after the fencing check the run may still not send")
	}
	// Lost keys are reported once; K3 is still a's to settle.
	if lost := must(a.Permit(pctx, []string{"K1", "K3"})); len(lost) != 0 {
		t.Errorf("second Permit lost = %v, want none", lost)
	}
	if _, err := a.Confirm(ctx, []ledger.Delivery{delivery("K3")}); err != nil {
		t.Fatal(err)
	}
	var owner int64
	d.QueryRow(`SELECT run_id FROM claims WHERE external_id = 'K1'`).Scan(&owner)
	if owner != b.ID() {
		t.Errorf("K1's claim belongs to run %d, want b (%d)", owner, b.ID())
	}
}

// The shortcut through the same integrator process (Decision.Via) holds
// only when the owner's calls are all that may be outstanding. Here run a
// sent K through integrator W and died; b took K over (so K must wait out
// a's calls) and died too, having sent only through X; c, on X, takes K
// over: b's calls it may shortcut, a's it may not.
func TestViaShortcutRemembersEarlierOwners(t *testing.T) {
	ctx := context.Background()
	d := pgtest.New(t)
	a := must(ledger.Start(ctx, d, nil))
	if err := a.SetCallBound(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := a.NoteIntegrator(ctx, "W"); err != nil {
		t.Fatal(err)
	}
	must(a.Claim(ctx, items("K", "L")))
	ledger.KillLock(t, a)

	b := must(ledger.Start(ctx, d, nil))
	if err := b.SetCallBound(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	got := must(b.Claim(ctx, items("K")))
	if !got[0].Orphaned || got[0].Wait < 50*time.Second || got[0].Via != "" {
		t.Fatalf("b's takeover from a = %+v, want Orphaned with about a minute to wait, no shortcut", got[0])
	}
	if err := b.NoteIntegrator(ctx, "X"); err != nil {
		t.Fatal(err)
	}
	ledger.KillLock(t, b)

	c := must(ledger.Start(ctx, d, nil))
	defer c.Close(ctx, "done", nil)
	if err := c.SetCallBound(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	c.SetIntegrator("X")
	got = must(c.Claim(ctx, items("K")))
	if !got[0].Orphaned || got[0].Via != "" || got[0].Wait < 50*time.Second {
		t.Errorf("c's takeover of K = %+v: a's calls through W may still run; want no shortcut and a's wait", got[0])
	}

	// A key only b held (its block) may take the shortcut.
	d2 := pgtest.New(t)
	e := must(ledger.Start(ctx, d2, nil))
	if err := e.SetCallBound(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := e.NoteIntegrator(ctx, "X"); err != nil {
		t.Fatal(err)
	}
	must(e.Claim(ctx, items("M")))
	ledger.KillLock(t, e)
	f := must(ledger.Start(ctx, d2, nil))
	defer f.Close(ctx, "done", nil)
	f.SetIntegrator("X")
	got = must(f.Claim(ctx, items("M")))
	if !got[0].Orphaned || got[0].Via != "X" || got[0].ViaWait > ledger.ViaWait || got[0].Wait < 50*time.Second {
		t.Errorf("takeover of a key only a run on X sent = %+v, want the shortcut through X", got[0])
	}
}
