package crmrpc

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"math/big"
	"net"
	"net/rpc"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serveHandshake serves rcvr as IntegratorV1 on 127.0.0.1 until the test
// ends, behind the handshake: token "" admits anyone; the reply reports
// packed.
func serveHandshake(t *testing.T, rcvr any, token string, packed int) string {
	t.Helper()
	return serveHandshakeReply(t, rcvr, token, HandshakeReply{PackedRecords: packed})
}

// serveHandshakeReply is serveHandshake admitting readers with hs (its
// MaxMessageBytes set to 1 MiB).
func serveHandshakeReply(t *testing.T, rcvr any, token string, hs HandshakeReply) string {
	t.Helper()
	hs.MaxMessageBytes = 1 << 20
	srv := rpc.NewServer()
	if err := srv.RegisterName(ServiceV1, rcvr); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tok, err := ReadClientHandshake(c)
				if err == nil && token != "" && tok != token {
					WriteHandshakeRefusal(c, &Error{Code: CodeUnauthorized, Message: "wrong token"})
					err = errors.New("refused")
				}
				if err != nil {
					c.Close()
					return
				}
				WriteHandshakeOK(c, hs)
				srv.ServeConn(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func handshakeBytes(token string, version byte) []byte {
	b := append([]byte(HandshakeMagic), version)
	b = binary.BigEndian.AppendUint32(b, uint32(len(token)))
	return append(b, token...)
}

func TestReadClientHandshake(t *testing.T) {
	long := handshakeBytes("", HandshakeVersion)
	binary.BigEndian.PutUint32(long[len(HandshakeMagic)+1:], 1<<30) // a 1 GiB token claim
	tests := []struct {
		name    string
		in      []byte
		token   string
		wantErr error
		maxRead int // bytes the server may read at most
	}{
		{"token", handshakeBytes("s3cret", HandshakeVersion), "s3cret", nil, 19},
		{"no token", handshakeBytes("", HandshakeVersion), "", nil, 13},
		{"old reader's gob", []byte{0x2e, 0x7f, 0x03, 0x01, 0x01, 0x07}, "", ErrOldReader, 1},
		{"http", []byte("GET / HTTP/1.1\r\n"), "", ErrOldReader, 1},
		{"wrong magic", []byte("\x00crmsinc\x01\x00\x00\x00\x00"), "", ErrBadHandshake, 13},
		{"future version", handshakeBytes("", 9), "", ErrBadHandshake, 13},
		{"1 GiB token claim", long, "", ErrBadHandshake, 13},
		{"token one byte too long", handshakeBytes(strings.Repeat("x", MaxTokenBytes+1), HandshakeVersion), "", ErrBadHandshake, 13},
		{"longest token", handshakeBytes(strings.Repeat("x", MaxTokenBytes), HandshakeVersion), strings.Repeat("x", MaxTokenBytes), nil, 13 + MaxTokenBytes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.in)
			tok, err := ReadClientHandshake(r)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) || tok != tc.token {
				t.Fatalf("got %q, %v; want %q, %v", tok, err, tc.token, tc.wantErr)
			}
			if read := len(tc.in) - r.Len(); read > tc.maxRead {
				t.Errorf("read %d bytes, want at most %d", read, tc.maxRead)
			}
		})
	}
}

// A wrong token is refused at the handshake, and Dial says so at once:
// a fatal *Error, no redialing.
func TestHandshakeWrongToken(t *testing.T) {
	var accepts atomic.Int64
	addr := serveHandshake(t, &fakeDaemon{}, "tok", 0)
	proxy := countingProxy(t, addr, &accepts)
	start := time.Now()
	_, err := Dial(context.Background(), ClientConfig{Addrs: []string{proxy}, Token: "guess-Zq9", RedialFor: 10 * time.Second})
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeUnauthorized || !e.Fatal() {
		t.Fatalf("got %v, want a fatal %s", err, CodeUnauthorized)
	}
	if strings.Contains(err.Error(), "guess-Zq9") {
		t.Errorf("the error shows the token: %v", err)
	}
	if n := accepts.Load(); n != 1 || time.Since(start) > 5*time.Second {
		t.Errorf("%d connections in %v, want 1 at once", n, time.Since(start))
	}
	c, err := Dial(context.Background(), ClientConfig{Addrs: []string{addr}, Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if h, err := c.Hello(context.Background()); err != nil || h.Version != "fake" {
		t.Fatalf("Hello: %+v, %v", h, err)
	}
}

// countingProxy forwards connections to addr, counting them.
func countingProxy(t *testing.T, addr string, n *atomic.Int64) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			up, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			go func() { defer up.Close(); copyConn(up, c) }()
			go func() { defer c.Close(); copyConn(c, up) }()
		}
	}()
	return ln.Addr().String()
}

func copyConn(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// A daemon that does not speak the handshake (one that predates it reads
// our magic as gob and hangs up) gives an error that says to upgrade it.
func TestHandshakeOldDaemon(t *testing.T) {
	srv := rpc.NewServer()
	if err := srv.RegisterName(ServiceV1, &fakeDaemon{}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go srv.Accept(ln)
	_, err = Dial(context.Background(), ClientConfig{Addrs: []string{ln.Addr().String()}, DialTimeout: 3 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("got %v, want an error that says to upgrade the daemon", err)
	}
}

// A certificate the client does not trust can never be accepted on a
// retry: Dial stops at once with a fatal CodeTLSRefused.
func TestTLSCertificateErrorIsFatal(t *testing.T) {
	cert := selfSigned(t, "127.0.0.1")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ModernTLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	tests := []struct {
		name string
		cfg  *tls.Config
	}{
		{"unknown authority", &tls.Config{RootCAs: x509.NewCertPool()}},
		{"wrong name", func() *tls.Config {
			pool := x509.NewCertPool()
			pool.AddCert(cert.Leaf)
			return &tls.Config{RootCAs: pool, ServerName: "crm.example.com"}
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := Dial(context.Background(), ClientConfig{Addrs: []string{ln.Addr().String()}, TLS: tc.cfg})
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeTLSRefused || !e.Fatal() {
				t.Fatalf("got %v, want a fatal %s", err, CodeTLSRefused)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func selfSigned(t *testing.T, host string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP(host)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}
