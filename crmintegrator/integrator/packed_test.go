package integrator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// v1HelloReply and v1DeliverArgs are HelloReply and DeliverArgs as a
// reader that predates packed records has them.
type v1HelloReply struct {
	Err           *crmrpc.Error
	Version       string
	MaxRecords    int
	MaxFieldBytes int
	Idempotency   bool
	CallTimeout   time.Duration
}

type v1DeliverArgs struct {
	Token   string
	Records []crmrpc.GobRecord // the attributes a map, as then
}

// rawDial connects and shakes hands as a reader does, and returns a bare
// net/rpc client on the connection.
func rawDial(t *testing.T, addr string) *rpc.Client {
	t.Helper()
	return rawDialToken(t, addr, "")
}

func rawDialToken(t *testing.T, addr, token string) *rpc.Client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := crmrpc.ClientHandshake(nc, token, time.Now().Add(5*time.Second)); err != nil {
		nc.Close()
		t.Fatal(err)
	}
	rc := rpc.NewClient(nc)
	t.Cleanup(func() { rc.Close() })
	return rc
}

func recordsWithAttributes(prefix string, n int) []crmrpc.Record {
	recs := makeRecords(prefix, n)
	for i := range recs {
		recs[i].Contact.Attributes = contact.AttrsOf(map[string]string{"company": "Acme Ltd", "city": "London", "i": strings.Repeat("x", i)})
	}
	recs[1].Contact.Email = "not an address"
	return recs
}

// A reader that predates the handshake speaks gob from its first byte: its
// first call fails with an error that says to upgrade, at once. One that
// shakes hands but sends gob Records, not packed ones, is refused too,
// and the records never reach the CRM.
func TestDeliverOldReader(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{})
	_, addr := startDaemon(t, testConfig(url))

	rc, err := rpc.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var h v1HelloReply
	err = rc.Call(crmrpc.MethodHello, &crmrpc.HelloArgs{}, &h)
	var se rpc.ServerError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "upgrade csvreader") {
		t.Fatalf("old reader's Hello: got %v, want a server error saying to upgrade csvreader", err)
	}

	rc = rawDial(t, addr)
	var reply crmrpc.DeliverReply
	err = rc.Call(crmrpc.MethodDeliver, &v1DeliverArgs{Records: crmrpc.GobRecords(recordsWithAttributes("old", 5))}, &reply)
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "packed") {
		t.Fatalf("Records: got %v, %+v; want refused", err, reply.Err)
	}
	checkAudit(t, crm, 0)
}

// A daemon reports packed records in Hello, and delivers them as it
// delivers Records; the metrics count them.
func TestDeliverPacked(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{})
	s, addr := startDaemon(t, testConfig(url))
	rc := rawDial(t, addr)
	var h crmrpc.HelloReply
	if err := rc.Call(crmrpc.MethodHello, &crmrpc.HelloArgs{}, &h); err != nil || h.PackedRecords != crmrpc.PackedVersion {
		t.Fatalf("Hello: %+v, %v; want PackedRecords %d", h, err, crmrpc.PackedVersion)
	}
	recs := recordsWithAttributes("packed", 7)
	recs[3].MaybeSent = true
	var reply crmrpc.DeliverReply
	args := &crmrpc.DeliverArgs{Packed: string(crmrpc.AppendPackedRecords(nil, recs))}
	if err := rc.Call(crmrpc.MethodDeliver, args, &reply); err != nil || reply.Err != nil {
		t.Fatalf("Deliver: %v, %v", err, reply.Err)
	}
	checkVerdicts(t, crm, recs, reply.Verdicts)
	checkAudit(t, crm, 6)
	if got := s.met.recordsReceived.Load(); got != 7 {
		t.Errorf("records received: got %d, want 7", got)
	}
}

// A packed call the daemon must refuse is refused as a whole, before
// anything reaches the CRM, and the limits refuse it in the very words
// Deliver refuses Records.
func TestDeliverPackedRefused(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{})
	cfg := testConfig(url)
	cfg.MaxRecords, cfg.MaxFieldBytes, cfg.RPCToken = 5, 32, "rpc-token"
	s, addr := startDaemon(t, cfg)
	rc := rawDialToken(t, addr, cfg.RPCToken)
	call := func(args *crmrpc.DeliverArgs) *crmrpc.Error {
		t.Helper()
		if args.Token == "" {
			args.Token = cfg.RPCToken
		}
		var reply crmrpc.DeliverReply
		if err := rc.Call(crmrpc.MethodDeliver, args, &reply); err != nil {
			t.Fatalf("Deliver: %v", err)
		}
		if reply.Err == nil {
			t.Fatalf("got %d verdicts, want the call refused", len(reply.Verdicts))
		}
		return reply.Err
	}
	pack := func(recs []crmrpc.Record) string { return string(crmrpc.AppendPackedRecords(nil, recs)) }
	long := makeRecords("long", 3)
	long[2].Contact.Attributes = contact.AttrsOf(map[string]string{"note": strings.Repeat("n", 33)})

	for _, tc := range []struct {
		name     string
		args     crmrpc.DeliverArgs
		code     string
		contains string
	}{
		{"truncated", crmrpc.DeliverArgs{Packed: pack(makeRecords("t", 2))[:40]},
			crmrpc.CodeMalformedCall, "packed records: record 1"},
		{"unknown version", crmrpc.DeliverArgs{Packed: "\x07\x00"}, crmrpc.CodeMalformedCall, "version 7"},
		{"wrong token", crmrpc.DeliverArgs{Token: "wrong", Packed: "garbage"}, crmrpc.CodeUnauthorized, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			crm.Reset()
			err := call(&tc.args)
			if err.Code != tc.code || !strings.Contains(err.Message, tc.contains) {
				t.Fatalf("got %v, want %s containing %q", err, tc.code, tc.contains)
			}
			if a := crm.Audit(); a.Requests != 0 {
				t.Fatalf("a refused call sent %d requests to the CRM", a.Requests)
			}
		})
	}
	for _, tc := range []struct {
		name string
		recs []crmrpc.Record
		code string
	}{
		{"too many records", makeRecords("many", cfg.MaxRecords+1), crmrpc.CodeTooManyRecords},
		{"field too large", long, crmrpc.CodeFieldTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			crm.Reset()
			packed := call(&crmrpc.DeliverArgs{Packed: pack(tc.recs)})
			_, gob := s.Deliver(context.Background(), tc.recs)
			if *packed != *gob || packed.Code != tc.code {
				t.Fatalf("packed: %+v; Records: %+v; want the same %s", packed, gob, tc.code)
			}
			if a := crm.Audit(); a.Requests != 0 {
				t.Fatalf("a refused call sent %d requests to the CRM", a.Requests)
			}
		})
	}
}

// The client sends packed records exactly when the daemon said it reads
// them; a daemon that does not say so (as one that predates them) gets
// Records. Without a Hello, the client learns it from the reply to the
// first Deliver, which goes as Records.
func TestClientEncodingFollowsDaemon(t *testing.T) {
	for _, tc := range []struct {
		name          string
		packedRecords int
		wantPacked    bool
	}{
		{"daemon reads packed", crmrpc.PackedVersion, true},
		{"daemon predates packed", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			crm, url := startCRM(t, fakecrm.Config{})
			s, err := New(testConfig(url))
			if err != nil {
				t.Fatal(err)
			}
			s.packedRecords = tc.packedRecords
			var mu sync.Mutex
			var packed []bool
			s.deliver = func(ctx context.Context, recs []crmrpc.Record, checked bool) ([]crmrpc.Verdict, int, *crmrpc.Error) {
				mu.Lock()
				packed = append(packed, unpacked(recs))
				mu.Unlock()
				return s.deliverCall(ctx, recs, checked)
			}
			c := dial(t, crmrpc.ClientConfig{Addrs: []string{serve(t, s)}})
			for i := range 3 {
				crm.Reset()
				recs := recordsWithAttributes(fmt.Sprint("enc", i), 4)
				vs, err := c.Deliver(context.Background(), recs)
				if err != nil {
					t.Fatal(err)
				}
				checkVerdicts(t, crm, recs, vs)
			}
			mu.Lock()
			defer mu.Unlock()
			if want := []bool{tc.wantPacked, tc.wantPacked, tc.wantPacked}; !slices.Equal(packed, want) {
				t.Fatalf("packed per call: got %v, want %v", packed, want)
			}
			if got := s.met.recordsReceived.Load(); got != 12 {
				t.Errorf("records received: got %d, want 12", got)
			}
		})
	}
}

// unpacked reports whether recs were unpacked from one payload: a record's
// email then starts right after its external id and the email's one-byte
// length. gob gives every string an allocation of its own.
func unpacked(recs []crmrpc.Record) bool {
	for i := range recs {
		c := &recs[i].Contact
		id, email := uintptr(unsafe.Pointer(unsafe.StringData(c.ExternalID))), uintptr(unsafe.Pointer(unsafe.StringData(c.Email)))
		if len(c.ExternalID) >= 128 || email != id+uintptr(len(c.ExternalID))+1 {
			return false
		}
	}
	return len(recs) > 0
}

// serve serves s on 127.0.0.1:0 until the test ends.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
		<-done
	})
	return ln.Addr().String()
}

// A packed call of 200 ASCII records (its count a two-byte uvarint) is
// validated without the UTF-8 pass; one byte beyond ASCII anywhere, or a
// gob call, keeps the pass, and an invalid record is still refused for it.
func TestDeliverSkipsUTF8PassOnlyWhenASCII(t *testing.T) {
	for _, tc := range []struct {
		name          string
		packedRecords int // what the daemon reads
		bad           string
		wantChecked   bool
		wantCode      string // record 0's rejection, if any
	}{
		{"ASCII", crmrpc.PackedVersion, "", true, ""},
		{"a name beyond ASCII", crmrpc.PackedVersion, "Zoë", false, ""},
		{"invalid UTF-8", crmrpc.PackedVersion, "\xff", false, contact.CodeInvalidUTF8},
		{"gob records", 0, "", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			crm, url := startCRM(t, fakecrm.Config{})
			s, err := New(testConfig(url))
			if err != nil {
				t.Fatal(err)
			}
			s.packedRecords = tc.packedRecords
			var mu sync.Mutex
			var checked []bool
			s.deliver = func(ctx context.Context, recs []crmrpc.Record, ok bool) ([]crmrpc.Verdict, int, *crmrpc.Error) {
				mu.Lock()
				checked = append(checked, ok)
				mu.Unlock()
				return s.deliverCall(ctx, recs, ok)
			}
			c := dial(t, crmrpc.ClientConfig{Addrs: []string{serve(t, s)}})
			recs := makeRecords("ascii", 200)
			if tc.bad != "" {
				recs[0].Contact.LastName = tc.bad
			}
			vs, err := c.Deliver(context.Background(), recs)
			if err != nil {
				t.Fatal(err)
			}
			checkVerdicts(t, crm, recs, vs)
			if tc.wantCode != "" && (vs[0].Outcome != crmrpc.Rejected || vs[0].Code != tc.wantCode) {
				t.Errorf("record 0: %+v, want rejected %s", vs[0], tc.wantCode)
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(checked, []bool{tc.wantChecked}) {
				t.Errorf("calls validated as checked: %v, want [%v]", checked, tc.wantChecked)
			}
		})
	}
}
