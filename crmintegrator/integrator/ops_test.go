package integrator

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/crmrpc"
)

func TestClientReconnectsAfterRestart(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{})
	cfg := testConfig(url)
	s1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	go s1.Serve(ln)
	// A dead address first: the client fails over to the daemon.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{deadAddr, addr}, RedialFor: 5 * time.Second})
	if _, err := c.Deliver(context.Background(), makeRecords("r1", 3)); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A call made while the daemon is down goes through once it comes back
	// on the same address a moment later.
	hello := make(chan error, 1)
	go func() {
		_, err := c.Hello(context.Background())
		hello <- err
	}()
	time.Sleep(200 * time.Millisecond)
	startDaemonOn(t, cfg, addr)
	if err := <-hello; err != nil {
		t.Fatalf("Hello after restart: %v", err)
	}
	deliverAll(t, c, makeRecords("r2", 3), 3, 10*time.Second)
	checkAudit(t, crm, 6)
}

func TestDeliverAfterBrokenConnectionIsConnError(t *testing.T) {
	// A daemon that reads the call and drops the connection: the outcome
	// is unknown and the client must say so.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
			go func() {
				if _, err := crmrpc.ReadClientHandshake(c); err == nil {
					crmrpc.WriteHandshakeOK(c, crmrpc.HandshakeReply{})
					buf := make([]byte, 1)
					c.Read(buf)
				}
				time.Sleep(50 * time.Millisecond)
				c.Close()
			}()
		}
	}()
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{ln.Addr().String()}})
	_, err = c.Deliver(context.Background(), makeRecords("x", 1))
	var ce *crmrpc.ConnError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want *crmrpc.ConnError", err)
	}
}

// certs makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA.
func certs(t *testing.T) (ca *x509.CertPool, server, client tls.Certificate) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	ca = x509.NewCertPool()
	ca.AddCert(caCert)
	leaf := func(serial int64, usage x509.ExtKeyUsage) tls.Certificate {
		k := key()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	return ca, leaf(2, x509.ExtKeyUsageServerAuth), leaf(3, x509.ExtKeyUsageClientAuth)
}

func TestTLSAndTokens(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{})
	ca, serverCert, clientCert := certs(t)
	cfg := testConfig(url)
	cfg.RPCToken = "rpc-secret"
	cfg.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientCAs:    ca, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS12,
	}
	_, addr := startDaemon(t, cfg)

	good := &tls.Config{RootCAs: ca, Certificates: []tls.Certificate{clientCert}}
	tests := []struct {
		name     string
		cfg      crmrpc.ClientConfig
		wantCode string // "" success, "-" a connection failure
	}{
		{"mutual tls and token", crmrpc.ClientConfig{Token: "rpc-secret", TLS: good}, ""},
		{"wrong token", crmrpc.ClientConfig{Token: "nope", TLS: good}, crmrpc.CodeUnauthorized},
		{"no token", crmrpc.ClientConfig{TLS: good}, crmrpc.CodeUnauthorized},
		{"no client certificate", crmrpc.ClientConfig{Token: "rpc-secret", TLS: &tls.Config{RootCAs: ca}}, crmrpc.CodeTLSRefused},
		{"untrusted server", crmrpc.ClientConfig{Token: "rpc-secret", TLS: &tls.Config{Certificates: []tls.Certificate{clientCert}}}, crmrpc.CodeTLSRefused},
		{"plain tcp", crmrpc.ClientConfig{Token: "rpc-secret"}, "-"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Addrs = []string{addr}
			tc.cfg.RedialFor = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			c, err := crmrpc.Dial(ctx, tc.cfg)
			if err == nil {
				defer c.Close()
				_, err = c.Deliver(ctx, makeRecords("tls-"+strings.ReplaceAll(tc.name, " ", "-"), 2))
			}
			var e *crmrpc.Error
			switch tc.wantCode {
			case "":
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
			case "-":
				if err == nil || errors.As(err, &e) {
					t.Fatalf("got %v, want a connection failure", err)
				}

			default:
				if !errors.As(err, &e) || e.Code != tc.wantCode {
					t.Fatalf("got %v, want %s", err, tc.wantCode)
				}
			}
		})
	}
}

func TestGracefulShutdownFinishesCalls(t *testing.T) {
	crm, url := startCRM(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 300 * time.Millisecond}})
	cfg := testConfig(url)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{ln.Addr().String()}, RedialFor: 200 * time.Millisecond})

	var wg sync.WaitGroup
	results := make([]error, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vs, err := c.Deliver(context.Background(), makeRecords("grace"+string(rune('a'+i)), 10))
			if err == nil && vs[0].Outcome != crmrpc.Delivered {
				err = errors.New("not delivered: " + vs[0].Code)
			}
			results[i] = err
		}()
	}
	// Close once every call is waiting on the CRM (one batch each).
	waitUntil(t, func() bool { return crm.Audit().Requests >= 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	for i, err := range results {
		if err != nil {
			t.Errorf("call %d in flight at shutdown: %v", i, err)
		}
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: got %v", err)
	}
	checkAudit(t, crm, 30)
	if _, err := c.Hello(context.Background()); err == nil {
		t.Fatal("Hello succeeded after Close")
	}
}

func TestSecretsNeverLeak(t *testing.T) {
	const crmSecret, rpcSecret = "crm-SECRET-0b5e", "rpc-SECRET-77aa"
	_, url := startCRM(t, fakecrm.Config{Token: "the-right-token"})
	var logs syncBuffer
	cfg := testConfig(url)
	cfg.CRMToken = crmSecret
	cfg.RPCToken = rpcSecret
	cfg.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, addr := startDaemon(t, cfg)

	var errs []string
	if _, err := crmrpc.Dial(context.Background(), crmrpc.ClientConfig{Addrs: []string{addr}, Token: "wrong"}); err != nil {
		errs = append(errs, err.Error())
	}
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}, Token: rpcSecret})
	if _, err := c.Deliver(context.Background(), makeRecords("sec", 2)); err != nil {
		errs = append(errs, err.Error())
	}
	if _, err := c.Lookup(context.Background(), []string{"sec-00000"}); err != nil {
		errs = append(errs, err.Error())
	}
	if err := s.Ready(context.Background()); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) != 4 {
		t.Fatalf("got errors %q, want four failures", errs)
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for name, text := range map[string]string{"logs": logs.String(), "errors": strings.Join(errs, "\n"), "metrics": rec.Body.String()} {
		for _, secret := range []string{crmSecret, rpcSecret} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contain a secret:\n%s", name, text)
			}
		}
	}
	if !strings.Contains(logs.String(), "crm refused the daemon's credentials") {
		t.Errorf("the 401 was not logged:\n%s", logs.String())
	}
}

func TestSidePort(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{})
	s, addr := startDaemon(t, testConfig(url))
	c := dial(t, crmrpc.ClientConfig{Addrs: []string{addr}})
	if _, err := c.Deliver(context.Background(), makeRecords("m", 3)); err != nil {
		t.Fatal(err)
	}
	h := httptest.NewServer(s.Handler())
	defer h.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(h.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: got %d", code)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz: got %d %s", code, body)
	}
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: got %d", code)
	}
	for _, want := range []string{
		`crmintegrator_crm_requests_total{op="create",code="200"} 1`,
		`crmintegrator_crm_request_duration_seconds_count 2`, // the create and the readiness probe
		`crmintegrator_crm_requests_total{op="ping",code="200"} 1`,
		`crmintegrator_crm_request_duration_seconds_bucket{le="+Inf"} 2`,
		`crmintegrator_verdicts_total{outcome="delivered"} 3`,
		`crmintegrator_rpc_calls_total{method="Deliver",result="ok"} 1`,
		`crmintegrator_records_received_total 3`,
		`crmintegrator_crm_inflight 0`,
		`crmintegrator_breaker_state 0`,
		`# TYPE crmintegrator_retries_total counter`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Every sample line is "name{labels} value" or "name value".
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		if !strings.HasPrefix(line, "#") && len(strings.Fields(line)) != 2 {
			t.Errorf("bad exposition line %q", line)
		}
	}
	if !bytes.Contains([]byte(body), []byte("# HELP crmintegrator_breaker_state")) {
		t.Error("no HELP line")
	}
}
