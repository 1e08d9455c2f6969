package crmrpc

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"crmsync/shared/contact"
)

// OldHelloReply and OldDeliverArgs are HelloReply and DeliverArgs as they
// were before packed records: what a daemon that predates them decodes
// and answers. (Exported because net/rpc serves only exported types.)
type OldHelloReply struct {
	Err           *Error
	Version       string
	MaxRecords    int
	MaxFieldBytes int
	Idempotency   bool
	CallTimeout   time.Duration
}

type OldDeliverArgs struct {
	Token   string
	Records []OldRecord
}

// OldRecord and OldContact are Record and contact.Contact as such a
// daemon has them: the attributes a map. Frozen here so that a change of
// GobRecord's wire shape fails the tests that talk to an old daemon.
type OldRecord struct {
	Contact   OldContact
	MaybeSent bool
}

type OldContact struct {
	ExternalID, Email, FirstName, LastName, Phone string
	Attributes                                    map[string]string
}

// oldDaemon is a daemon that predates packed records.
type oldDaemon struct {
	mu       sync.Mutex
	received [][]Record // the records of each Deliver
}

func (d *oldDaemon) Hello(a *HelloArgs, r *OldHelloReply) error {
	r.Version, r.MaxRecords = "old", DefaultMaxRecords
	return nil
}

func (d *oldDaemon) Deliver(a *OldDeliverArgs, r *DeliverReply) error {
	d.mu.Lock()
	recs := make([]Record, len(a.Records))
	for i, o := range a.Records {
		c := o.Contact
		recs[i] = Record{Contact: contact.Contact{ExternalID: c.ExternalID, Email: c.Email, FirstName: c.FirstName, LastName: c.LastName,
			Phone: c.Phone, Attributes: contact.AttrsOf(c.Attributes)}, MaybeSent: o.MaybeSent}
	}
	d.received = append(d.received, recs)
	d.mu.Unlock()
	r.Verdicts = make([]Verdict, len(a.Records))
	for i := range r.Verdicts {
		r.Verdicts[i] = Verdict{Outcome: Delivered, CRMID: "old-" + a.Records[i].Contact.ExternalID}
	}
	return nil
}

func (d *oldDaemon) Lookup(a *LookupArgs, r *LookupReply) error { return nil }

// newDaemon reads packed records, and says how each Deliver came.
type newDaemon struct {
	mu     sync.Mutex
	packed []bool // per Deliver: the records came packed
	// per Deliver: the call asked for packed verdicts (answered so)
	packedVerdicts []bool
	received       [][]Record
	hellos         atomic.Int64
	shuttingDown   atomic.Bool // answer Deliver with shutting_down
	// packedVersion, when set, is the packed version it says it reads
	// (else PackedVersion); updates says it takes updates.
	packedVersion int
	updates       bool
}

func (d *newDaemon) reads() int { return cmp.Or(d.packedVersion, PackedVersion) }

func (d *newDaemon) Hello(a *HelloArgs, r *HelloReply) error {
	d.hellos.Add(1)
	r.Version, r.MaxRecords, r.PackedRecords, r.Updates = "new", DefaultMaxRecords, d.reads(), d.updates
	return nil
}

func (d *newDaemon) Deliver(a *DeliverArgs, r *DeliverReply) error {
	r.PackedRecords, r.Updates = d.reads(), d.updates
	if d.shuttingDown.Load() {
		r.Err = &Error{Code: CodeShuttingDown}
		return nil
	}
	var recs []Record
	for i := range a.Records {
		recs = append(recs, a.Records[i].Record())
	}
	if a.Packed != "" {
		if recs, r.Err = UnpackRecords(a.Packed, DefaultMaxRecords); r.Err != nil {
			return nil
		}
	}
	d.mu.Lock()
	d.packed = append(d.packed, a.Packed != "")
	d.received = append(d.received, recs)
	d.packedVerdicts = append(d.packedVerdicts, a.PackedVerdicts)
	d.mu.Unlock()
	r.Verdicts = make([]Verdict, len(recs))
	for i := range r.Verdicts {
		r.Verdicts[i] = Verdict{Outcome: Delivered, CRMID: "new-" + recs[i].Contact.ExternalID}
	}
	if a.PackedVerdicts { // as crmintegrator answers
		r.PackedVerdicts, r.Verdicts = string(AppendPackedVerdicts(nil, r.Verdicts, a.VerdictsVersion)), nil
	}
	return nil
}

func (d *newDaemon) Lookup(a *LookupArgs, r *LookupReply) error { return nil }

// serveRPC serves rcvr as IntegratorV1 on 127.0.0.1 until the test ends;
// its handshake says it reads packed records when it is a newDaemon.
func serveRPC(t *testing.T, rcvr any) string {
	t.Helper()
	var hs HandshakeReply
	if d, ok := rcvr.(*newDaemon); ok {
		hs.PackedRecords, hs.Updates = d.reads(), d.updates
	}
	return serveHandshakeReply(t, rcvr, "", hs)
}

// A block holding an update goes only to a daemon that said it takes
// updates: any other would ignore CRMID and create a duplicate. The
// refusal comes before anything is sent, and is fatal. A block of creates
// still goes packed to a daemon that reads only version 1.
func TestClientUpdatesNeedADaemonThatTakesThem(t *testing.T) {
	creates := packedRecordsForTest()
	mixed := append(slices.Clone(creates), Record{CRMID: "ct_00000009", Fields: []string{"email"},
		Contact: contact.Contact{ExternalID: "C-9", Email: "new@example.com"}})
	for _, tc := range []struct {
		name       string
		daemon     any
		hello      bool
		recs       []Record
		refused    bool
		wantPacked bool
	}{
		{"predates packed records", &oldDaemon{}, false, mixed, true, false},
		{"reads packed v1, no updates", &newDaemon{packedVersion: 1}, false, mixed, true, false},
		{"no updates, after hello", &newDaemon{packedVersion: 1}, true, mixed, true, false},
		{"creates to a v1 daemon go packed", &newDaemon{packedVersion: 1}, false, creates, false, true},
		{"takes updates (handshake)", &newDaemon{updates: true}, false, mixed, false, true},
		{"takes updates (hello)", &newDaemon{updates: true}, true, mixed, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c, err := Dial(ctx, ClientConfig{Addrs: []string{serveRPC(t, tc.daemon)}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc.hello {
				if _, err := c.Hello(ctx); err != nil {
					t.Fatal(err)
				}
			}
			vs, err := c.Deliver(ctx, tc.recs)
			var got [][]Record
			var packed []bool
			switch d := tc.daemon.(type) {
			case *oldDaemon:
				d.mu.Lock()
				got = d.received
				d.mu.Unlock()
			case *newDaemon:
				d.mu.Lock()
				got, packed = d.received, d.packed
				d.mu.Unlock()
			}
			if tc.refused {
				var e *Error
				if !errors.As(err, &e) || e.Code != CodeDaemonPredatesUpdates || !e.Fatal() ||
					!strings.Contains(e.Message, "predates updates") || !strings.Contains(e.Message, "upgrade crmintegrator") {
					t.Fatalf("Deliver: %v, %v; want a fatal %s error", vs, err, CodeDaemonPredatesUpdates)
				}
				if len(got) != 0 {
					t.Fatalf("the daemon got %d calls, want none", len(got))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || !equalRecords(got[0], tc.recs) {
				t.Fatalf("the daemon got %+v, want %+v", got, tc.recs)
			}
			if !slices.Equal(packed, []bool{tc.wantPacked}) {
				t.Errorf("packed: got %v, want %v", packed, tc.wantPacked)
			}
		})
	}
}

func checkDelivered(t *testing.T, vs []Verdict, err error, recs []Record, prefix string) {
	t.Helper()
	if err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	for i, v := range vs {
		if want := prefix + recs[i].Contact.ExternalID; v.Outcome != Delivered || v.CRMID != want {
			t.Fatalf("verdict %d: got %v %q, want delivered %q", i, v.Outcome, v.CRMID, want)
		}
	}
}

// A new client talking to a daemon that predates packed records sends
// Records, whether or not its caller asked Hello first.
func TestClientOldDaemon(t *testing.T) {
	recs := packedRecordsForTest()
	for _, hello := range []bool{true, false} {
		name := map[bool]string{true: "after hello", false: "without hello"}[hello]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			d := &oldDaemon{}
			c, err := Dial(ctx, ClientConfig{Addrs: []string{serveRPC(t, d)}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if hello {
				h, err := c.Hello(ctx)
				if err != nil || h.Version != "old" || h.PackedRecords != 0 {
					t.Fatalf("Hello: %+v, %v", h, err)
				}
			}
			for range 2 {
				vs, err := c.Deliver(ctx, recs)
				checkDelivered(t, vs, err, recs, "old-")
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			for i, got := range d.received {
				if !equalRecords(got, recs) {
					t.Fatalf("Deliver %d: the daemon got %+v, want %+v", i, got, recs)
				}
			}
		})
	}
}

// A new client talking to a new daemon sends packed records from the
// first Deliver on: the handshake said the daemon reads them.
func TestClientNewDaemon(t *testing.T) {
	recs := packedRecordsForTest()
	for _, hello := range []bool{true, false} {
		name := map[bool]string{true: "after hello", false: "without hello"}[hello]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			d := &newDaemon{}
			c, err := Dial(ctx, ClientConfig{Addrs: []string{serveRPC(t, d)}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if hello {
				if h, err := c.Hello(ctx); err != nil || h.PackedRecords != PackedVersion {
					t.Fatalf("Hello: %+v, %v", h, err)
				}
			}
			for range 3 {
				vs, err := c.Deliver(ctx, recs)
				checkDelivered(t, vs, err, recs, "new-")
			}
			if n, want := d.hellos.Load(), map[bool]int64{true: 1, false: 0}[hello]; n != want {
				t.Errorf("%d Hello calls, want %d", n, want)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if want := []bool{true, true, true}; !slices.Equal(d.packed, want) {
				t.Errorf("packed per Deliver: got %v, want %v", d.packed, want)
			}
			if want := []bool{true, true, true}; !slices.Equal(d.packedVerdicts, want) {
				t.Errorf("packed verdicts asked per Deliver: got %v, want %v", d.packedVerdicts, want)
			}
			for i, got := range d.received {
				if !equalRecords(got, recs) {
					t.Fatalf("Deliver %d: the daemon got %+v, want %+v", i, got, recs)
				}
			}
		})
	}
}

// What a daemon reads belongs to the connection: a client that fails over
// from a new daemon to an old one (a rolling upgrade) sends the old one
// Records, in the same Deliver call and after it. (The new daemon's
// shutting_down reply said it reads packed records; the old one's reply,
// decoded into the same value, says nothing.)
func TestClientFailoverToOldDaemon(t *testing.T) {
	ctx := context.Background()
	nd, od := &newDaemon{}, &oldDaemon{}
	c, err := Dial(ctx, ClientConfig{Addrs: []string{serveRPC(t, nd), serveRPC(t, od)}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	recs := packedRecordsForTest()
	vs, err := c.Deliver(ctx, recs)
	checkDelivered(t, vs, err, recs, "new-")

	nd.shuttingDown.Store(true) // the client moves on to the next address
	for range 2 {
		vs, err = c.Deliver(ctx, recs)
		checkDelivered(t, vs, err, recs, "old-")
	}
	od.mu.Lock()
	defer od.mu.Unlock()
	if len(od.received) != 2 || !equalRecords(od.received[0], recs) || !equalRecords(od.received[1], recs) {
		t.Fatalf("the old daemon got %+v, want the records twice", od.received)
	}
}
