package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/cli"
)

var listeningLine = regexp.MustCompile(`^listening on (127\.0\.0\.1:\d+)$`)

// lockedBuffer collects stderr from run's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// startRun runs run in the background and returns its address once the
// first stdout line says where it listens, and a channel with run's result.
func startRun(t *testing.T, ctx context.Context, args []string, env map[string]string) (string, <-chan error, *lockedBuffer) {
	t.Helper()
	pr, pw := io.Pipe()
	stderr := &lockedBuffer{}
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, envOf(env), pw, stderr)
		pw.Close()
		done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the first line: %v (stderr: %s)", err, stderr)
	}
	go io.Copy(io.Discard, pr) //nolint:errcheck // drain, so run never blocks on stdout
	m := listeningLine.FindStringSubmatch(strings.TrimSuffix(line, "\n"))
	if m == nil {
		t.Fatalf("first line %q, want \"listening on 127.0.0.1:PORT\"", line)
	}
	return "http://" + m[1], done, stderr
}

func post(t *testing.T, url, body string, headers ...string) int {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) //nolint:errcheck
	resp.Body.Close()
	return resp.StatusCode
}

const adaJSON = `{"external_id":"C-1","email":"ada@example.com"}`

func TestRunServesAndShutsDown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	state := filepath.Join(t.TempDir(), "crm.json")
	base, done, stderr := startRun(t, ctx, []string{"-listen", "127.0.0.1:0", "-state", state}, map[string]string{
		"FAKECRM_TOKEN": "s3cret",
	})
	if got := post(t, base+crmapi.PathContacts, adaJSON); got != 401 {
		t.Errorf("without token: got %d, want 401", got)
	}
	if got := post(t, base+crmapi.PathContacts, adaJSON, "Authorization", "Bearer s3cret"); got != 201 {
		t.Errorf("with token: got %d, want 201", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if b, err := os.ReadFile(state); err != nil || !strings.Contains(string(b), `"C-1"`) {
		t.Errorf("state file after shutdown: %v %s", err, b)
	}
	if !strings.Contains(stderr.String(), "seed=") {
		t.Errorf("the random seed is not logged: %s", stderr)
	}
}

func TestRunFlagsAndEnvironment(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want int
	}{
		{"defaults", nil, nil, 201},
		{"env fail rate", nil, map[string]string{"FAKECRM_FAIL_RATE": "1"}, 503},
		{"flag beats env", []string{"-fail-rate", "0"}, map[string]string{"FAKECRM_FAIL_RATE": "1"}, 201},
		{"env max batch", nil, map[string]string{"FAKECRM_MAX_BATCH": "0"}, 201}, // 0 means the default 100
		{"ambiguous 502", []string{"-ambiguous-rate", "1", "-ambiguous-modes", "502"}, nil, 502},
		{"env rate limit", []string{"-burst", "1"}, map[string]string{"FAKECRM_RATE": "0.001"}, 201},
		{"blocked domain", []string{"-blocked-domains", "other.example,example.com"}, nil, 400},
		{"env blocked domain", nil, map[string]string{"FAKECRM_BLOCKED_DOMAINS": "example.com"}, 400},
		{"other domain blocked", []string{"-blocked-domains", "example.org"}, nil, 201},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			base, done, _ := startRun(t, ctx, append([]string{"-listen", "127.0.0.1:0"}, tc.args...), tc.env)
			if got := post(t, base+crmapi.PathContacts, adaJSON); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("run: %v", err)
			}
		})
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		code    int // exit code: 2 for what the operator typed, 1 for what failed
	}{
		{"bad env float", nil, map[string]string{"FAKECRM_FAIL_RATE": "lots"}, "FAKECRM_FAIL_RATE", 2},
		{"bad env duration", nil, map[string]string{"FAKECRM_HANG": "30"}, "FAKECRM_HANG", 2},
		{"bad env bool", nil, map[string]string{"FAKECRM_IDEMPOTENCY": "maybe"}, "FAKECRM_IDEMPOTENCY", 2},
		{"rate out of range", []string{"-fail-rate", "2"}, nil, "fail_rate", 2},
		{"unknown mode", []string{"-ambiguous-modes", "418"}, nil, "418", 2},
		{"address as blocked domain", []string{"-blocked-domains", "ada@example.com"}, nil, "blocked domain", 2},
		{"unknown flag", []string{"-nope"}, nil, "nope", 2},
		{"stray argument", []string{"serve"}, nil, "unexpected arguments", 2},
		{"bad log level", []string{"-log-level", "loud"}, nil, "log-level", 2},
		{"bad address", []string{"-listen", "256.0.0.1:x"}, nil, "listen", 1},
		{"unknown API", []string{"-api", "soap"}, nil, `API "soap"`, 2},
		{"hubspot with a state file", []string{"-api", "hubspot", "-state", "x.json"}, nil, "state file", 2},
		{"hubspot property type", nil, map[string]string{"FAKECRM_API": "hubspot", "FAKECRM_HUBSPOT_PROPERTIES": "x:blob"}, "type", 2},
		{"salesforce with a state file", []string{"-api", "salesforce", "-state", "x.json"}, nil, "state file", 2},
		{"salesforce field name", nil, map[string]string{"FAKECRM_API": "salesforce", "FAKECRM_SALESFORCE_FIELDS": "shoe size"}, "shoe size", 2},
		{"salesforce bad query batch", nil, map[string]string{"FAKECRM_SALESFORCE_QUERY_BATCH": "many"}, "FAKECRM_SALESFORCE_QUERY_BATCH", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"-listen", "127.0.0.1:0"}, tc.args...), envOf(tc.env), &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error()+stderr.String(), tc.wantErr) {
				t.Errorf("got %v, want an error about %q", err, tc.wantErr)
			}
			if code := cli.ExitCode(err); code != tc.code {
				t.Errorf("exit code %d, want %d", code, tc.code)
			}
		})
	}
}

// Every bad value is reported at once, flags and environment alike.
func TestRunReportsEveryBadValue(t *testing.T) {
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-latency", "soon", "-burst", "many"}, envOf(map[string]string{"FAKECRM_FAIL_RATE": "lots"}), &stdout, &stderr)
	for _, want := range []string{"-latency", "-burst", "FAKECRM_FAIL_RATE"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want it to name %s", err, want)
		}
	}
	if cli.ExitCode(err) != cli.ExitUsage {
		t.Errorf("exit code %d, want %d", cli.ExitCode(err), cli.ExitUsage)
	}
}

func TestRunHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, envOf(map[string]string{"FAKECRM_TOKEN": "tok-SECRET"}), &stdout, &stderr); err != nil {
		t.Fatalf("-h: %v", err)
	}
	if strings.Contains(stderr.String(), "tok-SECRET") {
		t.Errorf("usage shows FAKECRM_TOKEN:\n%s", stderr.String())
	}
	for _, s := range []string{"-listen", "FAKECRM_LISTEN", "-ambiguous-rate", "-state"} {
		if !strings.Contains(stderr.String(), s) {
			t.Errorf("usage lacks %s:\n%s", s, stderr.String())
		}
	}
	if stdout.Len() != 0 {
		t.Errorf("-h wrote to stdout: %q", stdout.String())
	}
}

// TestBinarySIGTERM builds the real binary and checks its first line and
// that SIGTERM stops it with exit status 0 and a saved state file.
func TestBinarySIGTERM(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "fakecrm")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	state := filepath.Join(dir, "crm.json")
	cmd := exec.Command(bin, "-listen", "127.0.0.1:0", "-state", state, "-seed", "42")
	cmd.Env = append(os.Environ(), "FAKECRM_HANG=1h")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() }) //nolint:errcheck // already exited when the test passes
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the first line: %v (stderr: %s)", err, stderr.String())
	}
	m := listeningLine.FindStringSubmatch(strings.TrimSuffix(line, "\n"))
	if m == nil {
		t.Fatalf("first line %q, want \"listening on 127.0.0.1:PORT\"", line)
	}
	if got := post(t, "http://"+m[1]+crmapi.PathContacts, adaJSON); got != 201 {
		t.Fatalf("got %d, want 201", got)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v (stderr: %s)", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s of SIGTERM")
	}
	if b, err := os.ReadFile(state); err != nil || !strings.Contains(string(b), `"C-1"`) {
		t.Errorf("state file after SIGTERM: %v %s", err, b)
	}
}

// The environment knobs take effect: the first table above can only see
// that they are accepted, not that they act.
func TestEnvKnobsAct(t *testing.T) {
	t.Run("FAKECRM_RATE", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		base, _, _ := startRun(t, ctx, []string{"-listen", "127.0.0.1:0", "-burst", "1"}, map[string]string{"FAKECRM_RATE": "0.001"})
		if got := post(t, base+crmapi.PathContacts, adaJSON); got != 201 {
			t.Fatalf("first POST: got %d, want 201", got)
		}
		if got := post(t, base+crmapi.PathContacts, adaJSON); got != 429 {
			t.Errorf("second POST beyond a 0.001/s rate: got %d, want 429", got)
		}
	})
	t.Run("FAKECRM_MAX_BATCH", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		base, _, _ := startRun(t, ctx, []string{"-listen", "127.0.0.1:0"}, map[string]string{"FAKECRM_MAX_BATCH": "1"})
		two := `{"contacts":[` + adaJSON + `,{"external_id":"C-2","email":"b@example.com"}]}`
		if got := post(t, base+crmapi.PathBatch, two); got != 413 {
			t.Errorf("batch of 2 with FAKECRM_MAX_BATCH=1: got %d, want 413", got)
		}
	})
}

// A request whose body never comes, and a connection that sends nothing,
// are closed after the read and idle timeouts.
func TestRunTimeouts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, done, _ := startRun(t, ctx, []string{"-listen", "127.0.0.1:0", "-read-timeout", "300ms", "-idle-timeout", "300ms"}, nil)
	host := strings.TrimPrefix(base, "http://")
	for _, tc := range []struct {
		name, send string
	}{
		{"body never sent", "POST " + crmapi.PathBatch + " HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"},
		{"header never finished", "POST " + crmapi.PathBatch + " HTTP/1.1\r\nHost: x\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.send)
			start := time.Now()
			c.SetReadDeadline(start.Add(5 * time.Second))
			_, err = io.Copy(io.Discard, c)
			if err != nil || time.Since(start) > 3*time.Second {
				t.Fatalf("got %v after %v, want the connection closed after ~300ms", err, time.Since(start))
			}
		})
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRunHubSpot(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, done, _ := startRun(t, ctx, []string{"-listen", "127.0.0.1:0", "-hubspot-window", "190", "-hubspot-search-lag", "0"}, map[string]string{
		"FAKECRM_API": "hubspot", "FAKECRM_TOKEN": "pat", "FAKECRM_DAILY": "1", "FAKECRM_HUBSPOT_ID_PROPERTY": "crm_key",
		"FAKECRM_HUBSPOT_PROPERTIES": "tier:number",
	})
	req, _ := http.NewRequest("GET", base+"/crm/v3/properties/contacts/crm_key", nil)
	req.Header.Set("Authorization", "Bearer pat")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"hasUniqueValue":true`) ||
		resp.Header.Get("X-HubSpot-RateLimit-Max") != "190" || resp.Header.Get("X-HubSpot-RateLimit-Daily") != "1" {
		t.Errorf("got %d %s %v, want the unique property with Max 190 and Daily 1", resp.StatusCode, b, resp.Header)
	}
	if got := post(t, base+"/crm/v3/objects/contacts/batch/create", `{"inputs":[{"properties":{"tier":"1"}}]}`, "Authorization", "Bearer pat"); got != 429 {
		t.Errorf("past the daily allocation: got %d, want 429", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

// TestRunSalesforce: the flags and environment reach the Salesforce API,
// and -daily is its allocation too.
func TestRunSalesforce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, done, _ := startRun(t, ctx, []string{"-listen", "127.0.0.1:0", "-salesforce-id-field", "Sync_Key__c", "-salesforce-fields", "tier"}, map[string]string{
		"FAKECRM_API": "salesforce", "FAKECRM_TOKEN": "00Dtok", "FAKECRM_DAILY": "2", "FAKECRM_SALESFORCE_OBJECT": "Lead",
	})
	get := func(path string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer 00Dtok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), resp.Header
	}
	status, body, h := get("/services/data/v60.0/sobjects/Lead/describe")
	if status != 200 || !strings.Contains(body, `{"name":"Sync_Key__c","label":"Sync_Key__c","type":"string","length":255,"custom":true,"externalId":true,"unique":true`) ||
		!strings.Contains(body, `"name":"tier"`) || strings.Contains(body, `"name":"company"`) || h.Get("Sforce-Limit-Info") != "api-usage=1/2" {
		t.Errorf("describe: %d %s %v", status, body, h)
	}
	get("/services/data/v60.0/limits")
	if status, body, _ := get("/services/data/v60.0/limits"); status != 403 || !strings.Contains(body, "REQUEST_LIMIT_EXCEEDED") {
		t.Errorf("past the daily allocation: %d %s, want 403 REQUEST_LIMIT_EXCEEDED", status, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestVersionFlag(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, func(string) string { return "" }, &out, &errb); err != nil {
		t.Fatalf("-version: %v\n%s", err, errb.String())
	}
	if !strings.HasPrefix(out.String(), "fakecrm ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("-version printed %q", out.String())
	}
}
