package integrator

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/rpc"
	"strings"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

func TestGobInt(t *testing.T) {
	// What gob writes first in a message: its type id.
	for _, id := range []int64{1, -1, 63, -64, 64, -65, 1000, -1000, 1 << 40, -(1 << 40)} {
		u := uint64(id) << 1 // gob's signed encoding, written out: it exports none
		if id < 0 {
			u = uint64(^id)<<1 | 1
		}
		got, ok := gobInt(gobUintBytes(u))
		if !ok || got != id {
			t.Errorf("gobInt(%d): got %d, %v", id, got, ok)
		}
	}
	for _, bad := range [][]byte{nil, {0xfe}, {0x80}, {0xf7, 1, 2}} {
		if _, ok := gobInt(bad); ok {
			t.Errorf("gobInt(%x) accepted", bad)
		}
	}
}

func gobUintBytes(x uint64) []byte {
	if x < 0x80 {
		return []byte{byte(x)}
	}
	var b []byte
	for v := x; v > 0; v >>= 8 {
		b = append([]byte{byte(v)}, b...)
	}
	return append([]byte{byte(-len(b))}, b...)
}

// One peer's wrong tokens are answered one after the other, each gap
// twice the last, up to a cap; they are forgotten after a quiet minute.
func TestWrongTokenPacing(t *testing.T) {
	var g connGuard
	t0 := time.Unix(1000, 0)
	tests := []struct {
		at        time.Duration // since t0
		peer      string
		wantWait  time.Duration
		wantFails int
	}{
		{0, "a", 100 * time.Millisecond, 1},
		{0, "a", 300 * time.Millisecond, 2},                // after the first, then 200ms
		{0, "a", 700 * time.Millisecond, 3},                // 400ms more
		{0, "b", 100 * time.Millisecond, 1},                // another peer is not slowed
		{10 * time.Second, "a", 800 * time.Millisecond, 4}, // the queue is gone; the gap is not
		{20 * time.Second, "a", 1600 * time.Millisecond, 5},
		{30 * time.Second, "a", 3 * time.Second, 6}, // capped
		{30*time.Second + 2*time.Minute, "a", 100 * time.Millisecond, 1},
	}
	for i, tc := range tests {
		wait, fails := g.wrongToken(tc.peer, t0.Add(tc.at))
		if wait != tc.wantWait || fails != tc.wantFails {
			t.Errorf("%d: got wait %v after %d failures, want %v after %d", i, wait, fails, tc.wantWait, tc.wantFails)
		}
	}
}

// The per-peer cap makes a newcomer evict the peer's oldest connection
// that has not shaken hands, never an authenticated one; when all are
// authenticated the newcomer is refused.
func TestConnectionLimits(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{})
	cfg := testConfig(url)
	cfg.MaxConnsPerPeer = 3
	cfg.HandshakeTimeout = 10 * time.Second
	var logs syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s, addr := startDaemon(t, cfg)

	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	dialRaw := func() net.Conn {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc
	}
	waitConns := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			s.mu.Lock()
			got := len(s.conns)
			s.mu.Unlock()
			if got == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d connections, want %d", got, n)
			}
		}
	}
	first, second := dialRaw(), dialRaw()
	waitConns(3)
	third := dialRaw() // evicts first
	waitConns(3)
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := first.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the oldest stranger: got %v, want it closed", err)
	}
	// Shake hands on the two others: nothing left to evict.
	for _, nc := range []net.Conn{second, third} {
		if _, err := crmrpc.ClientHandshake(nc, "", time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	fourth := dialRaw()
	fourth.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := fourth.Read(make([]byte, 1)); err == nil {
		t.Fatal("a fourth connection was served")
	}
	if _, err := c.Hello(context.Background()); err != nil {
		t.Fatalf("the reader lost its connection: %v", err)
	}
	if !strings.Contains(logs.String(), "connection limit reached") {
		t.Errorf("the refusal was not logged:\n%s", logs.String())
	}
}

// A request header that claims a message larger than the header budget
// closes the connection before gob reads it.
func TestMessageOverBudget(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{})
	_, addr := startDaemon(t, testConfig(url))
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := crmrpc.ClientHandshake(nc, "", time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	rc := rpc.NewClient(nc)
	defer rc.Close()
	var h crmrpc.HelloReply
	err = rc.Call(crmrpc.MethodHello, &crmrpc.HelloArgs{Token: strings.Repeat("t", smallBudget)}, &h)
	if err == nil {
		t.Fatalf("a %d-byte Hello was served: %+v", smallBudget, h)
	}
}

// A block over -max-message-bytes is a reader's setting: the call is
// refused with what to change, and the connection goes on.
func TestDeliverOverMessageLimit(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{})
	cfg := testConfig(url)
	cfg.MaxMessageBytes = 16 << 10
	_, addr := startDaemon(t, cfg)
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	big := makeRecords("big", 200)
	for i := range big {
		big[i].Contact.Attributes = contact.AttrsOf(map[string]string{"note": strings.Repeat("n", 200)})
	}
	_, err := c.Deliver(context.Background(), big)
	var ce *crmrpc.ConnError
	if err == nil || errors.As(err, &ce) || !strings.Contains(err.Error(), "-max-message-bytes") {
		t.Fatalf("got %v, want the call refused saying what to change", err)
	}
	vs, err := c.Deliver(context.Background(), makeRecords("small", 2))
	if err != nil || vs[0].Outcome != crmrpc.Delivered {
		t.Fatalf("the next call: %v %+v", err, vs)
	}
}

// The daemon speaks TLS 1.2 with ECDHE and AEAD suites, or TLS 1.3, and
// logs refused handshakes once per peer.
func TestTLSModernOnly(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{})
	ca, serverCert, _ := certs(t)
	cfg := testConfig(url)
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}}
	var logs syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	_, addr := startDaemon(t, cfg)
	tests := []struct {
		name   string
		cfg    *tls.Config
		wantOK bool
	}{
		{"tls 1.3", &tls.Config{RootCAs: ca}, true},
		{"tls 1.2 gcm", &tls.Config{RootCAs: ca, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}, true},
		{"tls 1.2 cbc sha1", &tls.Config{RootCAs: ca, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}, false},
		{"tls 1.2 cbc sha256", &tls.Config{RootCAs: ca, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}}, false},
		{"tls 1.1", &tls.Config{RootCAs: ca, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc.cfg)
			if err == nil {
				c.Close()
			}
			if (err == nil) != tc.wantOK {
				t.Fatalf("got %v, want ok=%v", err, tc.wantOK)
			}
		})
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "refused a tls handshake"); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no refused handshake logged:\n%s", logs.String())
		}
	}
	if n := strings.Count(logs.String(), "refused a tls handshake"); n != 1 {
		t.Errorf("%d lines for three refused handshakes from one peer, want 1:\n%s", n, logs.String())
	}
}
