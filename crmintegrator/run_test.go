package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/cli"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestHelpExitsZero(t *testing.T) {
	var stderr bytes.Buffer
	env := map[string]string{"CRM_TOKEN": "tok-SECRET", "INTEGRATOR_RPC_TOKEN": "rpc-SECRET", "CRM_URL": "https://bot:url-SECRET@crm.example.com/?api_key=key-SECRET"}
	err := run(context.Background(), []string{"-h"}, envOf(env), io.Discard, &stderr)
	if err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	out := stderr.String()
	if !strings.Contains(out, "-crm-url") || !strings.Contains(out, "INTEGRATOR_LISTEN") {
		t.Fatalf("usage lacks flags:\n%s", out)
	}
	if strings.Contains(out, "SECRET") {
		t.Fatalf("usage prints a secret from the environment:\n%s", out)
	}
	if !strings.Contains(out, "https://bot:xxxxx@crm.example.com/?api_key=xxxxx") {
		t.Errorf("usage does not show CRM_URL redacted:\n%s", out)
	}
}

func TestBadConfiguration(t *testing.T) {
	emptyFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyFile, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
		code int // exit code main would use
	}{
		{"no crm url", nil, nil, "no CRM url", 2},
		{"bad env duration", []string{"-crm-url", "http://127.0.0.1:1"}, map[string]string{"CRM_TIMEOUT": "soon"}, "CRM_TIMEOUT", 2},
		{"bad log format", []string{"-crm-url", "http://127.0.0.1:1", "-log-format", "xml"}, nil, "-log-format", 2},
		{"client ca without cert", []string{"-crm-url", "http://127.0.0.1:1", "-tls-client-ca", "ca.pem"}, nil, "-tls-client-ca", 2},
		{"missing token file", []string{"-crm-url", "http://127.0.0.1:1", "-crm-token-file", "/nonexistent/token"}, nil, "crm token file", 1},
		{"missing rpc token file", []string{"-crm-url", "http://127.0.0.1:1"}, map[string]string{"INTEGRATOR_RPC_TOKEN_FILE": "/nonexistent/rpc-token"}, "rpc token file", 1},
		{"empty rpc token file", []string{"-crm-url", "http://127.0.0.1:1", "-rpc-token-file", emptyFile}, nil, "is empty", 1},
		{"unknown flag", []string{"-nope"}, nil, "not defined", 2},
		{"salesforce without instance url", []string{"-crm-api", "salesforce"}, nil, "instance URL", 2},
		{"salesforce create", []string{"-crm-api", "salesforce", "-crm-url", "https://x.my.salesforce.com", "-crm-write", "create"}, nil, "upsert", 1},
		{"salesforce batch over 200", []string{"-crm-api", "salesforce", "-crm-url", "https://x.my.salesforce.com", "-max-batch", "201"}, nil, "limit of 200", 1},
		{"hubspot batch over 100", []string{"-crm-api", "hubspot", "-max-batch", "101"}, nil, "limit of 100", 1},
		{"salesforce bad object", []string{"-crm-api", "salesforce", "-crm-url", "https://x.my.salesforce.com", "-crm-object", "Contact/../User"}, nil, "-crm-object", 1},
		{"reserve of all", []string{"-crm-url", "http://127.0.0.1:1", "-crm-reserve", "100%"}, nil, "-crm-reserve", 2},
		{"reserve not a share", []string{"-crm-url", "http://127.0.0.1:1"}, map[string]string{"CRM_RESERVE": "lots"}, "-crm-reserve", 2},
		// Malformed CRM URLs: url.Parse's error quotes them whole.
		{"crm url bad port", []string{"-crm-url", "https://bot:SECRET@crm.example.com:8o/"}, nil, "crm url", 1},
		{"crm url bad escape", []string{"-crm-url", "https://bot:SEC%zzRET@crm.example.com/"}, nil, "crm url", 1},
		{"crm url space in password", []string{"-crm-url", "https://bot:SEC RET SECRET@crm.example.com/"}, nil, "crm url", 1},
		{"crm url missing ]", []string{"-crm-url", "https://bot:SECRET@[::1/"}, nil, "crm url", 1},
		{"crm url query", []string{"-crm-url", "ftp://crm.example.com/?api_key=SECRET"}, nil, "crm url", 1},
		{"crm url from env", nil, map[string]string{"CRM_URL": "https://bot:SECRET@crm.example.com:8o/?k=SECRET"}, "crm url", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out syncBuffer
			err := run(context.Background(), tc.args, envOf(tc.env), &out, &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
			for _, piece := range []string{"SECRET", "SEC", "RET"} {
				if strings.Contains(err.Error()+out.String(), piece) {
					t.Errorf("error or output shows the secret: %v\n%s", err, out.String())
				}
			}
			if code := cli.ExitCode(err); code != tc.code {
				t.Errorf("exit code = %d, want %d", code, tc.code)
			}
		})
	}
}

func TestParseShare(t *testing.T) {
	for in, want := range map[string]float64{"10%": 0.10, "0.10": 0.10, "0": 0, "0%": 0, "2.5%": 0.025, " 5 %": 0.05, "1": -1, "-1%": -1, "NaN": -1, "": -1} {
		got, err := parseShare(in)
		if (err != nil) != (want < 0) || (err == nil && got != want) {
			t.Errorf("parseShare(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

// TestRunServesAndStops runs the daemon as main does, from the environment,
// calls it, reads the side port, and stops it with the context (SIGTERM);
// with the tokens in the environment, and in files as docker-compose.yml
// gives them (a line break at the end).
func TestRunServesAndStops(t *testing.T) {
	const secret = "crm-SECRET-in-env"
	dir := t.TempDir()
	for name, v := range map[string]string{"crm-token": secret + "\n", "rpc-token": "rpc-SECRET\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		secrets map[string]string
	}{
		{"environment", map[string]string{"CRM_TOKEN": secret, "INTEGRATOR_RPC_TOKEN": "rpc-SECRET"}},
		{"files", map[string]string{"CRM_TOKEN_FILE": filepath.Join(dir, "crm-token"), "INTEGRATOR_RPC_TOKEN_FILE": filepath.Join(dir, "rpc-token"),
			"INTEGRATOR_RPC_TOKEN": "not-the-file's"}},
	} {
		t.Run(tc.name, func(t *testing.T) { testRunServesAndStops(t, secret, tc.secrets) })
	}
}

func testRunServesAndStops(t *testing.T, secret string, secrets map[string]string) {
	crm, url := fakecrmtest.Start(t, fakecrm.Config{Token: secret})
	env := map[string]string{
		"CRM_URL":           url,
		"INTEGRATOR_LISTEN": "127.0.0.1:0",
		"INTEGRATOR_HTTP":   "127.0.0.1:0",
		"INTEGRATOR_GRACE":  "5s",
	}
	for k, v := range secrets {
		env[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-log-format", "json", "-log-level", "debug"}, envOf(env), pw, &stderr)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	if !sc.Scan() {
		t.Fatalf("no stdout line; stderr:\n%s", stderr.String())
	}
	addr, ok := strings.CutPrefix(sc.Text(), "listening on ")
	if !ok {
		t.Fatalf("first line %q, want \"listening on HOST:PORT\"", sc.Text())
	}
	go io.Copy(io.Discard, pr)

	c, err := crmrpc.Dial(ctx, crmrpc.ClientConfig{Addrs: []string{addr}, Token: "rpc-SECRET"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	recs := []crmrpc.Record{{Contact: contactOf("run-1")}, {Contact: contactOf("run-2")}}
	vs, err := c.Deliver(ctx, recs)
	if err != nil || vs[0].Outcome != crmrpc.Delivered || vs[1].Outcome != crmrpc.Delivered {
		t.Fatalf("Deliver: %v %+v", err, vs)
	}
	if a := crm.Audit(); a.Contacts != 2 {
		t.Fatalf("CRM holds %d contacts, want 2", a.Contacts)
	}

	// The side port address is in the start log line, written just after
	// the stdout line.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), `"http":"`) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	httpAddr := between(stderr.String(), `"http":"`, `"`)
	resp, err := http.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		t.Fatalf("readyz: %v (logs %s)", err, stderr.String())
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("readyz: got %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: got %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
	for _, s := range []string{secret, "rpc-SECRET"} {
		if strings.Contains(stderr.String(), s) {
			t.Fatalf("logs contain a secret:\n%s", stderr.String())
		}
	}
}

func between(s, a, b string) string {
	_, rest, _ := strings.Cut(s, a)
	v, _, _ := strings.Cut(rest, b)
	return v
}

func contactOf(id string) contact.Contact {
	return contact.Contact{ExternalID: id, Email: id + "@example.com"}
}

func TestVersionFlag(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, func(string) string { return "" }, &out, &errb); err != nil {
		t.Fatalf("-version: %v\n%s", err, errb.String())
	}
	if !strings.HasPrefix(out.String(), "crmintegrator ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("-version printed %q", out.String())
	}
}
