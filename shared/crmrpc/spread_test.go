package crmrpc

import (
	"context"
	"net"
	"net/rpc"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// holdDaemon answers Deliver, holding each call while hold is set.
type holdDaemon struct {
	mu       sync.Mutex
	hold     chan struct{} // nil: answer at once
	delivers atomic.Int64
}

func (f *holdDaemon) setHold(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if on {
		f.hold = make(chan struct{})
	} else if f.hold != nil {
		close(f.hold)
		f.hold = nil
	}
}

func (f *holdDaemon) Hello(a *HelloArgs, r *HelloReply) error    { return nil }
func (f *holdDaemon) Lookup(a *LookupArgs, r *LookupReply) error { return nil }
func (f *holdDaemon) Deliver(a *DeliverArgs, r *DeliverReply) error {
	f.delivers.Add(1)
	f.mu.Lock()
	h := f.hold
	f.mu.Unlock()
	if h != nil {
		<-h
	}
	r.Verdicts = make([]Verdict, len(a.Records))
	for i := range r.Verdicts {
		r.Verdicts[i] = Verdict{Outcome: Delivered, CRMID: "c"}
	}
	return nil
}

// killable is a daemon that can be killed (listener and connections
// closed) and started again on the same address.
type killable struct {
	t        *testing.T
	d        *holdDaemon
	instance string
	addr     string
	mu       sync.Mutex
	ln       net.Listener
	conns    []net.Conn
}

func startKillable(t *testing.T, d *holdDaemon, instance, addr string) *killable {
	k := &killable{t: t, d: d, instance: instance, addr: addr}
	k.start()
	t.Cleanup(k.kill)
	return k
}

func (k *killable) start() {
	srv := rpc.NewServer()
	if err := srv.RegisterName(ServiceV1, k.d); err != nil {
		k.t.Fatal(err)
	}
	addr := k.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		k.t.Fatal(err)
	}
	k.mu.Lock()
	k.ln, k.addr = ln, ln.Addr().String()
	k.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			k.mu.Lock()
			k.conns = append(k.conns, c)
			k.mu.Unlock()
			go func() {
				if _, err := ReadClientHandshake(c); err != nil {
					c.Close()
					return
				}
				WriteHandshakeOK(c, HandshakeReply{MaxMessageBytes: 1 << 20, Instance: k.instance})
				srv.ServeConn(c)
			}()
		}
	}()
}

func (k *killable) kill() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ln.Close()
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
	}
}

// Calls go to the daemon with the fewest in flight; one that dies is left
// out (its broken call is a ConnError, nothing is resent by the client),
// and it rejoins once it is back.
func TestClientSpreadsOverDaemons(t *testing.T) {
	ctx := context.Background()
	da, db := &holdDaemon{}, &holdDaemon{}
	a, b := startKillable(t, da, "a", ""), startKillable(t, db, "b", "")
	c, err := Dial(ctx, ClientConfig{Addrs: []string{a.addr, b.addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// parallel sends n calls at once, holding them until each daemon has
	// its share, and returns how many each got.
	parallel := func(n int, ctxs ...context.Context) (int64, int64) {
		t.Helper()
		na0, nb0 := da.delivers.Load(), db.delivers.Load()
		da.setHold(true)
		db.setHold(true)
		var wg sync.WaitGroup
		for i := range n {
			cctx := ctx
			if i < len(ctxs) {
				cctx = ctxs[i]
			}
			wg.Go(func() {
				if _, err := c.Deliver(cctx, make([]Record, 1)); err != nil {
					t.Error(err)
				}
			})
		}
		eventually(t, "calls in flight", func() bool {
			return da.delivers.Load()+db.delivers.Load() == na0+nb0+int64(n)
		})
		na, nb := da.delivers.Load()-na0, db.delivers.Load()-nb0
		da.setHold(false)
		db.setHold(false)
		wg.Wait()
		return na, nb
	}
	if na, nb := parallel(10); na != 5 || nb != 5 {
		t.Errorf("in flight: %d on a, %d on b; want 5 and 5", na, nb)
	}
	// Records a dead run sent through b go to b, however busy it is.
	pinned := WithInstance(ctx, "b")
	if na, nb := parallel(4, pinned, pinned, pinned, pinned); na != 0 || nb != 4 {
		t.Errorf("calls for b: %d on a, %d on b; want all on b", na, nb)
	}

	b.kill()
	eventually(t, "b seen down", func() bool { return !c.Daemons()[1].Connected })
	nb := db.delivers.Load()
	for range 20 {
		if _, err := c.Deliver(ctx, make([]Record, 1)); err != nil {
			t.Fatalf("Deliver with b down: %v", err)
		}
	}
	if got := db.delivers.Load(); got != nb {
		t.Errorf("b received %d calls while down", got-nb)
	}

	b.start()
	eventually(t, "b rejoins", func() bool {
		c.Deliver(ctx, make([]Record, 1)) // a call kicks the redial
		return c.Daemons()[1].Connected
	})
	if na, nb := parallel(6); na != 3 || nb != 3 {
		t.Errorf("after b came back: %d on a, %d on b; want 3 and 3", na, nb)
	}
}
