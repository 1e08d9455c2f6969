package integrator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"io"
	"net"
	"net/rpc"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// The fuzz targets share one fakecrm and one daemon per process (they are
// set up before f.Fuzz and torn down by f.Cleanup) and reset the CRM before
// every input: starting them per input would leave little time to fuzz.
// The fuzzing engine calls the target sequentially within a process.

// fuzzLimits are small, so that inputs reach the call-level limits.
const (
	fuzzMaxRecords    = 40
	fuzzMaxFieldBytes = 64
)

// crashOutput copies the output of a fatal panic to the file named by
// FUZZ_CRASH_LOG. Fuzzing workers' standard error goes nowhere, so a panic
// on a daemon goroutine (not the fuzz function's) would otherwise show up
// only as "fuzzing process hung or terminated unexpectedly".
func crashOutput(tb testing.TB) {
	path := os.Getenv("FUZZ_CRASH_LOG")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	if err := debug.SetCrashOutput(f, debug.CrashOptions{}); err != nil {
		tb.Fatal(err)
	}
	f.Close()
}

type fuzzStack struct {
	crm    *fakecrm.Server
	srv    *Server
	addr   string
	client *crmrpc.Client
}

func newFuzzStack(tb testing.TB) *fuzzStack {
	tb.Helper()
	return newFuzzStackToken(tb, "")
}

// newFuzzStackToken is newFuzzStack with a daemon that requires token.
func newFuzzStackToken(tb testing.TB, token string) *fuzzStack {
	tb.Helper()
	crm, url := fakecrmtest.Start(tb, fakecrm.Config{Seed: 1})
	cfg := Config{
		CRMURL:        url,
		CRMTimeout:    2 * time.Second,
		CallBudget:    3 * time.Second,
		MaxBatch:      7, // several chunks per call, delivered concurrently
		MaxRecords:    fuzzMaxRecords,
		MaxFieldBytes: fuzzMaxFieldBytes,
		IdleTimeout:   10 * time.Second,
		RPCToken:      token,
		// Short, so that an input that stops mid-handshake ends quickly.
		HandshakeTimeout: 300 * time.Millisecond,
		// The CRM is reset under the daemon between inputs, which no real
		// CRM does: what the daemon saw it hold would be stale.
		FateCache: -1,
	}
	srv, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	srv.guard.pace, srv.guard.maxPace = time.Millisecond, 10*time.Millisecond // inputs refused by the hundred
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	s := &fuzzStack{crm: crm, srv: srv, addr: ln.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.client, err = crmrpc.Dial(ctx, crmrpc.ClientConfig{Addrs: []string{s.addr}, Token: token, CallTimeout: 20 * time.Second}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		s.client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
		<-done
	})
	return s
}

// parseFuzzRecords reads records from data, one per line, fields separated
// by '|': external_id|email|first_name|last_name|phone|k=v;k=v. A line
// starting with '~' is sent with MaybeSent. Any byte may appear in a field.
func parseFuzzRecords(data []byte) []crmrpc.Record {
	if len(data) == 0 {
		return nil
	}
	var recs []crmrpc.Record
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		var r crmrpc.Record
		if rest, ok := bytes.CutPrefix(line, []byte("~")); ok {
			r.MaybeSent, line = true, rest
		}
		f := strings.SplitN(string(line), "|", 6)
		f = append(f, make([]string, 6-len(f))...)
		r.Contact = contact.Contact{ExternalID: f[0], Email: f[1], FirstName: f[2], LastName: f[3], Phone: f[4]}
		if f[5] != "" {
			for kv := range strings.SplitSeq(f[5], ";") {
				k, v, _ := strings.Cut(kv, "=")
				r.Contact.Attributes.Set(k, v)
			}
		}
		recs = append(recs, r)
	}
	return recs
}

// FuzzDeliver sends arbitrary records through the real RPC service, over a
// real socket, to fakecrm, twice: once as given, then all again with
// MaybeSent, as a reader does after a crash. It checks one verdict per
// record, that invalid records are rejected with their own code and never
// reach the CRM, that valid ones are created exactly once, and that the
// call-level limits refuse a call before anything is sent. (A key that
// several records of one call share may get one contact for all of them.)
func FuzzDeliver(f *testing.F) {
	for _, seed := range []string{
		"",
		"C-1|ada@example.com|Ada|Lovelace|+44 20|company=Analytical Engines",
		"C-1|ada@example.com\nC-2|bad-email\n|nokey@example.com\nC-4|\nC-5|a b@example.com",
		"~C-1|ada@example.com\n~C-1|ada@example.com\nC-1|again@example.com",
		"C-\xff|x@example.com\nC-6|x@example.com|\xfe\nC-7|y@example.com||||k=\xff",
		"C-1|a@b.c|||||extra|fields\n|\n\n||||",
		strings.Repeat("K|k@example.com\n", fuzzMaxRecords),
		strings.Repeat("K|k@example.com\n", fuzzMaxRecords-1) + "K|k@example.com",
		"C-1|ada@example.com|" + strings.Repeat("x", fuzzMaxFieldBytes+1),
		"C-1|ada@example.com||||" + strings.Repeat("k", fuzzMaxFieldBytes+1) + "=v",
		strings.Repeat("é", 129) + "|long@example.com",
		"\u2028|ünï@exämple.com|<script>|&amp;|\x00|\"=\\",
	} {
		f.Add([]byte(seed))
	}
	crashOutput(f)
	s := newFuzzStack(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		s.crm.Reset()
		recs := parseFuzzRecords(data)

		var wantCode string
		switch {
		case len(recs) > fuzzMaxRecords:
			wantCode = crmrpc.CodeTooManyRecords
		default:
			for i := range recs {
				if _, n := longestField(&recs[i].Contact); n > fuzzMaxFieldBytes {
					wantCode = crmrpc.CodeFieldTooLarge
				}
			}
		}
		vs, err := deliverWithin(t, s.client, recs)
		if wantCode != "" {
			var ce *crmrpc.Error
			if !errors.As(err, &ce) || ce.Code != wantCode {
				t.Fatalf("got verdicts %v, error %v; want the call refused with %s", vs, err, wantCode)
			}
			if a := s.crm.Audit(); a.Requests != 0 {
				t.Fatalf("a refused call sent %d requests to the CRM", a.Requests)
			}
			return
		}
		if err != nil {
			t.Fatalf("Deliver: %v", err)
		}
		first := checkVerdicts(t, s.crm, recs, vs)
		created := s.crm.Audit().Contacts

		// Everything again, as maybe sent: nothing new may be created, and
		// the answers stay the same (the first CRM id for a key).
		for i := range recs {
			recs[i].MaybeSent = true
		}
		vs, err = deliverWithin(t, s.client, recs)
		if err != nil {
			t.Fatalf("Deliver again: %v", err)
		}
		again := checkVerdicts(t, s.crm, recs, vs)
		if got := s.crm.Audit().Contacts; got != created {
			t.Fatalf("resending with MaybeSent created %d contacts", got-created)
		}
		held := map[string]int{}
		for _, c := range s.crm.Contacts() {
			held[c.ExternalID]++
		}
		for key, id := range again {
			if held[key] == 1 && id != first[key] {
				t.Fatalf("key %q: resent as %s, first delivered as %s", key, id, first[key])
			}
		}
	})
}

func deliverWithin(t *testing.T, c *crmrpc.Client, recs []crmrpc.Record) ([]crmrpc.Verdict, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.Deliver(ctx, recs)
}

// checkVerdicts checks one verdict per record against the CRM's contents
// and returns the CRM id given to each delivered key.
func checkVerdicts(t *testing.T, crm *fakecrm.Server, recs []crmrpc.Record, vs []crmrpc.Verdict) map[string]string {
	t.Helper()
	if len(vs) != len(recs) {
		t.Fatalf("got %d verdicts for %d records", len(vs), len(recs))
	}
	byID := map[string]contact.Contact{}
	perKey := map[string]int{}
	for _, c := range crm.Contacts() {
		byID[c.ID] = c.Contact
		perKey[c.ExternalID]++
	}
	validPerKey := map[string]int{}
	delivered := map[string]string{}
	for i, r := range recs {
		v := vs[i]
		p := r.Contact.Validate()
		if p != nil {
			if v.Outcome != crmrpc.Rejected || v.Code != p.Code {
				t.Fatalf("record %d %q: got %v %q, want rejected %s", i, r.Contact.ExternalID, v.Outcome, v.Code, p.Code)
			}
			continue
		}
		validPerKey[r.Contact.ExternalID]++
		if v.Outcome != crmrpc.Delivered {
			t.Fatalf("record %d %q: got %v %s %s, want delivered", i, r.Contact.ExternalID, v.Outcome, v.Code, v.Message)
		}
		got, ok := byID[v.CRMID]
		if !ok || got.ExternalID != r.Contact.ExternalID {
			t.Fatalf("record %d %q: delivered as %q, which the CRM holds as %+v (found %v)", i, r.Contact.ExternalID, v.CRMID, got, ok)
		}
		_, repeat := delivered[r.Contact.ExternalID]
		delivered[r.Contact.ExternalID] = v.CRMID
		// A key repeated in a call is sent once: the repeats get the first
		// record's contact.
		if !r.MaybeSent && !repeat && (got.Email != r.Contact.Email || got.FirstName != r.Contact.FirstName || got.LastName != r.Contact.LastName ||
			got.Phone != r.Contact.Phone || !slices.Equal(got.Attributes, r.Contact.Attributes)) {
			t.Fatalf("record %d: the CRM holds %+v, sent %+v", i, got, r.Contact)
		}
	}
	for key, n := range perKey {
		// A key carried by several valid records may be answered with one
		// contact: a lookup finds another record's contact (MaybeSent), and
		// chunks with identical bodies share an Idempotency-Key. Readers
		// never send a key twice in a call; more contacts than records
		// would be a duplicate, though.
		if want := validPerKey[key]; n > want {
			t.Fatalf("the CRM holds %d contacts for %q, sent by %d valid records", n, key, want)
		}
	}
	return delivered
}

// FuzzRPCWire writes arbitrary bytes to the daemon's RPC port after a valid
// handshake (they reach the frame reader and gob), then closes its side. The daemon must not crash, must close the connection once it
// has answered what it could decode, must count no call as still in flight
// (or Close would wait its whole grace), and must go on serving a
// well-formed client.
func FuzzRPCWire(f *testing.F) {
	for _, seed := range wireSeeds(f) {
		f.Add(seed)
	}
	crashOutput(f)
	s := newFuzzStack(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		// After a valid handshake: the frame reader and gob.
		wireInput(t, s, append(handshakeBytes(""), data...), "")
	})
}

// FuzzPreAuth writes arbitrary bytes to the port of a daemon that requires
// a token, from the first byte: what a stranger can send before it is
// authenticated. The same checks as FuzzRPCWire hold.
func FuzzPreAuth(f *testing.F) {
	const token = "fuzz-token"
	ok := handshakeBytes(token)
	for _, seed := range wireSeeds(f) {
		f.Add(seed)                                          // old readers
		f.Add(append(bytes.Clone(ok), seed...))              // admitted
		f.Add(append(handshakeBytes("fuzz-tokem"), seed...)) // refused
	}
	claim := handshakeBytes("")
	claim[len(claim)-1] = 0x40 // a 1 GiB token
	f.Add(claim)
	f.Add([]byte(crmrpc.HandshakeMagic[:5]))
	f.Add(append([]byte(crmrpc.HandshakeMagic), 2, 0, 0, 0, 0))
	crashOutput(f)
	s := newFuzzStackToken(f, token)
	f.Fuzz(func(t *testing.T, data []byte) {
		wireInput(t, s, data, token)
	})
}

// handshakeBytes is what a reader sends first.
func handshakeBytes(token string) []byte {
	b := append([]byte(crmrpc.HandshakeMagic), crmrpc.HandshakeVersion)
	b = append(b, byte(len(token)>>24), byte(len(token)>>16), byte(len(token)>>8), byte(len(token)))
	return append(b, token...)
}

// wireInput writes data on a fresh connection and checks that the daemon
// hangs up in time, counts no call in flight, and serves a client after.
func wireInput(t *testing.T, s *fuzzStack, data []byte, token string) {
	s.crm.Reset()
	conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	conn.Write(data) // the daemon may hang up early: that is fine
	conn.(*net.TCPConn).CloseWrite()
	if _, err := io.Copy(io.Discard, conn); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the daemon kept the connection open 15s after the client stopped sending")
		}
	}
	conn.Close()

	deadline := time.Now().Add(5 * time.Second)
	for s.srv.active.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls still counted in flight after the connection closed", s.srv.active.Load())
		}
		time.Sleep(time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := crmrpc.Dial(ctx, crmrpc.ClientConfig{Addrs: []string{s.addr}, Token: token, CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("dial after garbage: %v", err)
	}
	defer c.Close()
	if h, err := c.Hello(ctx); err != nil || h.Version != Version {
		t.Fatalf("hello after garbage: %+v, %v", h, err)
	}
}

// wireSeeds are what net/rpc's gob client codec writes for real calls, some
// of them cut short or with a byte flipped, and a little plain garbage.
func wireSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	type call struct {
		method string
		args   any
	}
	// stream encodes calls as one client connection does: one gob stream,
	// types defined once.
	stream := func(calls ...call) []byte {
		var b bytes.Buffer
		w := bufio.NewWriter(&b)
		enc := gob.NewEncoder(w)
		for i, c := range calls {
			if err := enc.Encode(&rpc.Request{ServiceMethod: c.method, Seq: uint64(i)}); err != nil {
				tb.Fatal(err)
			}
			if err := enc.Encode(c.args); err != nil {
				tb.Fatal(err)
			}
		}
		w.Flush()
		return b.Bytes()
	}
	recs := makeRecords("wire", 3)
	recs[1].Contact.Email = "bad"
	recs[2].MaybeSent = true
	hello := call{crmrpc.MethodHello, &crmrpc.HelloArgs{}}
	deliver := call{crmrpc.MethodDeliver, &crmrpc.DeliverArgs{Records: crmrpc.GobRecords(recs)}}
	lookup := call{crmrpc.MethodLookup, &crmrpc.LookupArgs{ExternalIDs: []string{"wire-00000", "nobody"}}}
	unknown := call{"IntegratorV1.Explode", &crmrpc.HelloArgs{}}
	noDot := call{"Hello", &crmrpc.HelloArgs{}}
	wrongBody := call{crmrpc.MethodDeliver, &crmrpc.LookupArgs{ExternalIDs: []string{"x"}}}
	tooMany := call{crmrpc.MethodDeliver, &crmrpc.DeliverArgs{Records: crmrpc.GobRecords(makeRecords("many", fuzzMaxRecords+1))}}
	packed := string(crmrpc.AppendPackedRecords(nil, recs))
	deliverPacked := call{crmrpc.MethodDeliver, &crmrpc.DeliverArgs{Packed: packed}}
	both := call{crmrpc.MethodDeliver, &crmrpc.DeliverArgs{Records: crmrpc.GobRecords(recs), Packed: packed}}
	packedBad := call{crmrpc.MethodDeliver, &crmrpc.DeliverArgs{Packed: packed[:len(packed)/2]}}

	d := stream(deliver)
	flipped := bytes.Clone(d)
	flipped[len(d)/2] ^= 0xff
	h := stream(hello)
	return [][]byte{
		nil,
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		h,
		d,
		stream(lookup),
		stream(unknown, hello),
		stream(noDot, hello),
		stream(wrongBody, hello),
		stream(tooMany),
		stream(deliverPacked, hello),
		stream(both, packedBad, deliverPacked),
		stream(hello, deliver, lookup, hello),
		flipped,
		d[:len(d)/2],
		h[:len(h)-1],
		append(bytes.Clone(h), 0x03, 0xff, 0xff),
	}
}
