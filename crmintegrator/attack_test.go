package main

// Attacks on the real daemon: the binary built from this source, run as a
// subprocess on 127.0.0.1 with its address space capped (ulimit -v) and
// its open files capped (ulimit -n), so that a regression fails the test
// (the daemon dies of "out of memory" or exits on EMFILE) rather than the
// machine. Each test runs a real import alongside the attack, checks the
// daemon's peak resident memory (VmHWM), and that it exits 0 on SIGTERM
// and not before.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/rpc"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

const (
	attackToken = "attack-rpc-token-8c1f"
	// maxRSS is the peak resident memory a daemon under attack may reach.
	// Idle, it holds about 10 MB; before the handshake, the 2^25-entry map
	// cost 2.4 GB per message.
	maxRSS = 100 << 20
	// addressSpace caps the daemon's virtual memory: the Go runtime needs
	// about 1 GB of reservations to start; one 2^25-entry map does not fit.
	addressSpace = 2 << 30
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// daemonBinary builds crmintegrator from this source, once per test run.
func daemonBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "crmintegrator-attack-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "crmintegrator")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

type daemonProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	addr    string
	http    string
	stderr  *syncBuffer
	exited  chan struct{}
	waitErr error
}

// startDaemonProc starts the daemon with at most nofile open files and
// short timeouts, against crmURL; extra flags come last.
func startDaemonProc(t *testing.T, crmURL string, nofile int, extra ...string) *daemonProc {
	t.Helper()
	bin := daemonBinary(t)
	args := append([]string{
		"-c", fmt.Sprintf(`ulimit -n %d && ulimit -v %d && exec "$0" "$@"`, nofile, addressSpace>>10), bin,
		"-crm-url", crmURL, "-listen", "127.0.0.1:0", "-http", "127.0.0.1:0",
		"-rpc-token", attackToken, "-handshake-timeout", "1s", "-read-timeout", "1s", "-idle-timeout", "2s",
		"-grace", "5s",
	}, extra...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(os.Environ(), "GOMEMLIMIT=64MiB")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{t: t, cmd: cmd, stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = d.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-d.exited
		if t.Failed() {
			t.Logf("daemon stderr:\n%s", d.stderr.String())
		}
	})
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		<-d.exited
		t.Fatalf("daemon printed nothing: %v\n%s", d.waitErr, d.stderr.String())
	}
	addr, ok := strings.CutPrefix(sc.Text(), "listening on ")
	if !ok {
		t.Fatalf("first line %q", sc.Text())
	}
	go io.Copy(io.Discard, stdout)
	d.addr = addr
	re := regexp.MustCompile(`http=(\S+)`)
	for deadline := time.Now().Add(10 * time.Second); d.http == ""; time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(d.stderr.String()); m != nil {
			d.http = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no start line:\n%s", d.stderr.String())
		}
	}
	return d
}

// status reads a field of /proc/PID/status, in bytes for kB fields.
func (d *daemonProc) status(field string) int64 {
	d.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		d.t.Fatalf("daemon status: %v (exited: %v)\n%s", err, d.waitErr, d.stderr.String())
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			n, _ := strconv.ParseInt(f[0], 10, 64)
			if len(f) > 1 && f[1] == "kB" {
				n <<= 10
			}
			return n
		}
	}
	d.t.Fatalf("no %s in status", field)
	return 0
}

func (d *daemonProc) openFiles() int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	return len(ents)
}

// alive fails the test when the daemon has exited.
func (d *daemonProc) alive() {
	d.t.Helper()
	select {
	case <-d.exited:
		d.t.Fatalf("the daemon exited under attack: %v\n%s", d.waitErr, d.stderr.String())
	default:
	}
}

// finish checks the peak memory and that the daemon is alive, then stops
// it with SIGTERM and wants exit status 0.
func (d *daemonProc) finish() {
	d.t.Helper()
	d.alive()
	hwm := d.status("VmHWM")
	d.t.Logf("peak resident memory (VmHWM): %.1f MiB", float64(hwm)/(1<<20))
	if hwm > maxRSS {
		d.t.Errorf("peak resident memory %.1f MiB, want at most %d MiB", float64(hwm)/(1<<20), maxRSS>>20)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		if d.waitErr != nil {
			d.t.Errorf("after SIGTERM: %v, want exit status 0", d.waitErr)
		}
	case <-time.After(15 * time.Second):
		d.t.Error("the daemon did not stop on SIGTERM")
	}
}

// metric reads one metric from the side port.
func (d *daemonProc) metric(name string) int64 {
	d.t.Helper()
	resp, err := http.Get("http://" + d.http + "/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// importer delivers blocks to the daemon until stopped, as a reader does;
// every block must be delivered.
type importer struct {
	stop      chan struct{}
	done      chan struct{}
	delivered atomic.Int64
	err       error
}

func startImport(t *testing.T, addr string) *importer {
	t.Helper()
	ctx := context.Background()
	c, err := crmrpc.Dial(ctx, crmrpc.ClientConfig{Addrs: []string{addr}, Token: attackToken, RedialFor: 20 * time.Second})
	if err != nil {
		t.Fatalf("reader: %v", err)
	}
	im := &importer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(im.done)
		defer c.Close()
		for block := 0; ; block++ {
			recs := make([]crmrpc.Record, 50)
			for i := range recs {
				id := fmt.Sprintf("%s-%d-%d", t.Name(), block, i)
				recs[i].Contact = contact.Contact{ExternalID: id, Email: fmt.Sprintf("u%d.%d@example.com", block, i), FirstName: "Ada"}
			}
			vs, err := c.Deliver(ctx, recs)
			for _, v := range vs {
				if err == nil && v.Outcome != crmrpc.Delivered {
					err = fmt.Errorf("verdict %v %s", v.Outcome, v.Code)
				}
			}
			if err != nil {
				im.err = fmt.Errorf("block %d: %w", block, err)
				return
			}
			im.delivered.Add(int64(len(recs)))
			select {
			case <-im.stop:
				return
			default:
			}
		}
	}()
	return im
}

// finish stops the import and wants at least two blocks delivered
// (one after the attack), with no failure.
func (im *importer) finish(t *testing.T) int64 {
	t.Helper()
	before := im.delivered.Load()
	for deadline := time.Now().Add(20 * time.Second); im.delivered.Load() < max(before+50, 100); time.Sleep(5 * time.Millisecond) {
		if im.err != nil || time.Now().After(deadline) {
			break
		}
	}
	close(im.stop)
	<-im.done
	if im.err != nil {
		t.Fatalf("the import failed during the attack: %v", im.err)
	}
	if n := im.delivered.Load(); n < max(before+50, 100) {
		t.Fatalf("the import delivered %d records (%d before the attack ended): it stalled", n, before)
	}
	return im.delivered.Load()
}

func crm(t *testing.T) string {
	_, url := fakecrmtest.Start(t, fakecrm.Config{})
	return url
}

// gobUint is gob's encoding of an unsigned integer.
func gobUint(x uint64) []byte {
	if x < 0x80 {
		return []byte{byte(x)}
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], x)
	i := 0
	for b[i] == 0 {
		i++
	}
	return append([]byte{byte(-(8 - i))}, b[i:]...)
}

// gobMessages splits a gob stream into its messages (counts stripped).
func gobMessages(t *testing.T, b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n, w := uint64(b[0]), 1
		if b[0] >= 0x80 {
			k := -int(int8(b[0]))
			n = 0
			for _, x := range b[1 : 1+k] {
				n = n<<8 | uint64(x)
			}
			w += k
		}
		out = append(out, b[w:w+int(n)])
		b = b[w+int(n):]
	}
	return out
}

func gobStream(msgs [][]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = append(append(out, gobUint(uint64(len(m)))...), m...)
	}
	return out
}

// hugeMapCall is a Deliver call, as net/rpc's gob codec writes it, whose
// one record declares an attributes map of 2^25 entries and carries one.
func hugeMapCall(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := gob.NewEncoder(&b)
	if err := enc.Encode(&rpc.Request{ServiceMethod: crmrpc.MethodDeliver}); err != nil {
		t.Fatal(err)
	}
	args := &crmrpc.DeliverArgs{Token: "guess", Records: crmrpc.GobRecords([]crmrpc.Record{{Contact: contact.Contact{
		ExternalID: "m", Email: "m@example.com", Attributes: contact.AttrsOf(map[string]string{"KEYMARK": "V"})}}})}
	if err := enc.Encode(args); err != nil {
		t.Fatal(err)
	}
	msgs := gobMessages(t, b.Bytes())
	last := msgs[len(msgs)-1]
	mark := []byte("\x01\x07KEYMARK")
	i := bytes.Index(last, mark)
	if i < 0 {
		t.Fatal("no map count in the encoding")
	}
	patched := append(append(append([]byte{}, last[:i]...), gobUint(1<<25)...), last[i+1:]...)
	msgs[len(msgs)-1] = patched
	return gobStream(msgs)
}

func handshake(t *testing.T, c net.Conn, token string) error {
	t.Helper()
	_, err := crmrpc.ClientHandshake(c, token, time.Now().Add(5*time.Second))
	return err
}

// drain reads c until the daemon closes it, and fails when it does not
// within limit.
func drain(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("the daemon kept the connection open for %v", limit)
	}
	return time.Since(start)
}

// Forty messages that each declare a 2^25-entry map (2.4 GB each to gob
// before the handshake): from a reader without the handshake, after a
// wrong token, and even after the right one.
func TestAttackHugeMapClaim(t *testing.T) {
	d := startDaemonProc(t, crm(t), 1024)
	im := startImport(t, d.addr)
	call := hugeMapCall(t)
	for _, mode := range []string{"no handshake", "wrong token", "right token"} {
		per := 5 // ten messages over two connections at a time
		if mode == "wrong token" {
			per = 2 // refusals are paced: 100ms, 200ms, 400ms, 800ms
		}
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					c, err := net.Dial("tcp", d.addr)
					if err != nil {
						t.Error(err)
						return
					}
					switch mode {
					case "wrong token":
						if err := handshake(t, c, "guess"); err == nil {
							t.Error("a wrong token was admitted")
						}
					case "right token":
						if err := handshake(t, c, attackToken); err != nil {
							t.Error(err)
						}
					}
					c.Write(call)
					c.(*net.TCPConn).CloseWrite()
					if mode == "right token" {
						// Records decode as empty structs: gob skips the map
						// (and fails at the end of the message, where the
						// 2^25 entries are not), never allocating it. The
						// daemon answers or hangs up.
						var resp rpc.Response
						c.SetReadDeadline(time.Now().Add(10 * time.Second))
						err := gob.NewDecoder(c).Decode(&resp)
						if err == nil && !strings.Contains(resp.Error, "packed") || errors.Is(err, os.ErrDeadlineExceeded) {
							t.Errorf("got %+v, %v; want Records refused", resp, err)
						}
					} else {
						drain(t, c, 10*time.Second)
					}
					c.Close()
				}
			}()
		}
		wg.Wait()
		d.alive()
		t.Logf("%s: resident memory %.1f MiB", mode, float64(d.status("VmRSS"))/(1<<20))
	}
	im.finish(t)
	d.finish()
}

// 1,100 idle connections (no byte sent) against a 1024 open files limit:
// the daemon holds at most its -max-conns, the oldest unauthenticated
// making way, and goes on serving the import.
func TestAttackIdleConnections(t *testing.T) {
	d := startDaemonProc(t, crm(t), 1024)
	im := startImport(t, d.addr)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 1100 {
		c, err := net.DialTimeout("tcp", d.addr, 5*time.Second)
		if err != nil {
			continue // the backlog may be full: the attacker's problem
		}
		conns = append(conns, c)
	}
	d.alive()
	if n := d.openFiles(); n > 256+64 {
		t.Errorf("the daemon holds %d open files under the flood, want at most -max-conns (256) and a few", n)
	}
	im.finish(t)
	d.finish()
}

// With limits above the open files limit, the flood runs the daemon out of
// file descriptors: accept's EMFILE is logged and waited out (dropping
// the oldest unauthenticated connection), never a reason to exit.
func TestAttackOutOfFileDescriptors(t *testing.T) {
	d := startDaemonProc(t, crm(t), 128, "-max-conns", "100000", "-max-conns-per-peer", "100000", "-handshake-timeout", "3s")
	im := startImport(t, d.addr)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 300 {
		if c, err := net.DialTimeout("tcp", d.addr, 5*time.Second); err == nil {
			conns = append(conns, c)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(d.stderr.String(), "out of file descriptors"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the daemon never ran out of file descriptors: the test does not test")
		}
	}
	d.alive()
	im.finish(t)
	if n := strings.Count(d.stderr.String(), "out of file descriptors"); n > 2 {
		t.Errorf("EMFILE logged %d times, want rate-limited", n)
	}
	d.finish()
}

// A token claimed to be 1 GiB long, in the handshake and as an old
// reader's gob string, followed by megabytes of junk: refused at once.
func TestAttackHugeTokenClaims(t *testing.T) {
	d := startDaemonProc(t, crm(t), 1024)
	im := startImport(t, d.addr)
	claim := append([]byte(crmrpc.HandshakeMagic), crmrpc.HandshakeVersion)
	claim = binary.BigEndian.AppendUint32(claim, 1<<30)
	// An old reader's Hello whose token string claims 1 GiB: the message
	// count says so first.
	oldClaim := gobUint(1<<30 + 64)
	junk := bytes.Repeat([]byte("A"), 4<<20)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", d.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if i%2 == 0 {
				c.Write(claim)
			} else {
				c.Write(oldClaim)
			}
			c.Write(junk) // the daemon may hang up first
			if took := drain(t, c, 5*time.Second); took > 3*time.Second {
				t.Errorf("closed after %v, want at once", took)
			}
		}()
	}
	wg.Wait()
	im.finish(t)
	d.finish()
}

// Large messages sent in half: without the handshake they cost nothing;
// after it, only the bytes that arrived, and for -read-timeout.
func TestAttackHalfSentMessages(t *testing.T) {
	d := startDaemonProc(t, crm(t), 1024)
	im := startImport(t, d.addr)

	// A Deliver carrying 8 MiB, of which half is sent.
	var b bytes.Buffer
	enc := gob.NewEncoder(&b)
	enc.Encode(&rpc.Request{ServiceMethod: crmrpc.MethodDeliver, Seq: 1})
	enc.Encode(&crmrpc.DeliverArgs{Token: attackToken, Packed: strings.Repeat("p", 8<<20)})
	half := b.Bytes()[:b.Len()/2]

	var conns []net.Conn
	// First the authenticated ones (under the per-peer cap with the
	// import's connection: unauthenticated newcomers would evict only
	// those still shaking hands), then 200 strangers.
	const authed = 10
	for i := range 200 + authed {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			continue
		}
		conns = append(conns, c)
		if i < authed {
			if err := handshake(t, c, attackToken); err != nil {
				t.Fatal(err)
			}
		}
		c.Write(half)
	}
	d.alive()
	rss := d.status("VmRSS")
	t.Logf("resident memory with 210 half-sent 8 MiB messages (10 authenticated): %.1f MiB", float64(rss)/(1<<20))
	start := time.Now()
	for _, c := range conns {
		drain(t, c, 10*time.Second)
		c.Close()
	}
	t.Logf("all closed after %v (-read-timeout 1s, -handshake-timeout 1s)", time.Since(start))
	im.finish(t)
	d.finish()
}

// One byte every 300ms: before the handshake the handshake deadline ends
// it, after it the message deadline does; neither is reset by the bytes.
func TestAttackSlowBytes(t *testing.T) {
	d := startDaemonProc(t, crm(t), 1024)
	im := startImport(t, d.addr)
	var b bytes.Buffer
	gob.NewEncoder(&b).Encode(&rpc.Request{ServiceMethod: crmrpc.MethodHello})
	hs := append([]byte(crmrpc.HandshakeMagic), crmrpc.HandshakeVersion)
	hs = binary.BigEndian.AppendUint32(hs, uint32(len(attackToken)))
	hs = append(hs, attackToken...)
	for _, tc := range []struct {
		name   string
		admit  bool
		stream []byte
	}{
		{"handshake", false, hs},
		{"message", true, b.Bytes()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", d.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc.admit {
				if err := handshake(t, c, attackToken); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			closed := make(chan time.Duration, 1)
			go func() { closed <- drain(t, c, 20*time.Second) }()
			tick := time.NewTicker(300 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i = (i + 1) % len(tc.stream) {
				select {
				case took := <-closed:
					if took > 4*time.Second {
						t.Errorf("closed after %v, want about 1s", took)
					}
					t.Logf("closed after %v", time.Since(start))
					return
				case <-tick.C:
					c.Write(tc.stream[i : i+1])
				}
			}
		})
	}
	im.finish(t)
	d.finish()
}

// Wrong tokens from one peer are refused one after the other, each recent
// one doubling the wait, logged once (without the token), and never count
// as records received; a reader with the right token gets in meanwhile.
func TestAttackWrongTokens(t *testing.T) {
	d := startDaemonProc(t, crm(t), 1024)
	const guesses = 5
	start := time.Now()
	var wg sync.WaitGroup
	var last atomic.Int64
	for i := range guesses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", d.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_, err = crmrpc.ClientHandshake(c, fmt.Sprintf("guess-%d-0a7f", i), time.Now().Add(30*time.Second))
			var e *crmrpc.Error
			if !errors.As(err, &e) || e.Code != crmrpc.CodeUnauthorized {
				t.Errorf("guess %d: got %v, want %s", i, err, crmrpc.CodeUnauthorized)
			}
			if took := int64(time.Since(start)); took > last.Load() {
				last.Store(took)
			}
		}()
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(d.stderr.String(), "refused a wrong rpc token"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no wrong token logged")
		}
	}
	admitted := time.Now()
	im := startImport(t, d.addr)
	if took := time.Since(admitted); took > time.Second {
		t.Errorf("the right token waited %v behind the wrong ones", took)
	}
	wg.Wait()
	// Gaps of 100, 200, 400, 800 and 1600ms: the fifth refusal comes 3.1s
	// after the first guess.
	if took := time.Duration(last.Load()); took < 3*time.Second {
		t.Errorf("%d wrong tokens answered within %v, want them paced (3.1s)", guesses, took)
	}
	delivered := im.finish(t)
	logs := d.stderr.String()
	if n := strings.Count(logs, "refused a wrong rpc token"); n != 1 {
		t.Errorf("wrong token logged %d times, want once a minute:\n%s", n, logs)
	}
	if strings.Contains(logs, "guess-") || strings.Contains(logs, attackToken) {
		t.Errorf("the logs show a token:\n%s", logs)
	}
	if got := d.metric("crmintegrator_records_received_total"); got != delivered {
		t.Errorf("records_received_total = %d, want the %d the import delivered", got, delivered)
	}
	d.finish()
}
