package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/integrator"
	"crmsync/csvreader/importer"
	"crmsync/shared/cli"
	"crmsync/shared/crmrpc"
)

// daemon is one more integrator on the stack's CRM, that a test can kill:
// its listener and every connection closed at once, as when its machine
// goes away.
type daemon struct {
	srv   *integrator.Server
	addr  string
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (s *stack) extraIntegrator(cfg integrator.Config) *daemon {
	s.t.Helper()
	srv := s.newIntegrator(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	d := &daemon{srv: srv, addr: ln.Addr().String(), ln: ln}
	go srv.Serve(&trackingListener{ln, d})
	s.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	return d
}

type trackingListener struct {
	net.Listener
	d *daemon
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.d.mu.Lock()
		l.d.conns = append(l.d.conns, c)
		l.d.mu.Unlock()
	}
	return c, err
}

func (d *daemon) kill() {
	d.ln.Close()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		c.Close()
	}
}

// deliverCalls is how many Deliver calls srv answered, from its /metrics.
func deliverCalls(t *testing.T, srv *integrator.Server) int64 {
	t.Helper()
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var n int64
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, `crmintegrator_rpc_calls_total{method="Deliver"`) {
			v, err := strconv.ParseInt(line[strings.LastIndexByte(line, ' ')+1:], 10, 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			n += v
		}
	}
	return n
}

// Two integrators, both up: each takes a fair share of the blocks.
func TestStackSpreadsOverIntegrators(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 5 * time.Millisecond}}, integrator.Config{})
	b := s.extraIntegrator(integrator.Config{})
	rep, out, err := s.reader(context.Background(), s.dsn, "-integrator", s.addr+","+b.addr,
		"-workers", "6", "-block-size", "100", exportFile(t, 6000))
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if rep.Delivered != 6000 || !rep.Accounted() {
		t.Errorf("report = %+v", rep)
	}
	na, nb := deliverCalls(t, s.integ), deliverCalls(t, b.srv)
	if total := na + nb; total < 60 || na*10 < total*3 || nb*10 < total*3 {
		t.Errorf("Deliver calls: %d on the first, %d on the second; want each at least 30%% of 60 or more", na, nb)
	}
	t.Logf("Deliver calls: %d and %d", na, nb)
	s.assertExactlyOnce(6000)
}

// One of two integrators dies mid-run: its share moves to the other, the
// calls it broke are resent with MaybeSent, and nothing is lost or sent
// twice.
func TestStackIntegratorKilledWhileSpread(t *testing.T) {
	s := newStack(t, fakecrm.Config{Seed: 5, DisableIdempotency: true, Faults: fakecrm.Faults{Latency: 20 * time.Millisecond}},
		integrator.Config{})
	b := s.extraIntegrator(integrator.Config{})
	const rows = 10000
	file := exportFile(t, rows)
	done := make(chan struct{})
	var rep *importer.Report
	var out string
	var err error
	go func() {
		defer close(done)
		rep, out, err = s.reader(context.Background(), s.dsn, "-integrator", s.addr+","+b.addr,
			"-workers", "4", "-block-size", "50", file)
	}()
	waitFor(t, func() bool { return s.crm.Audit().Creates > 2000 && deliverCalls(t, b.srv) > 0 })
	b.kill()
	atKill, aBefore := s.crm.Audit().Creates, deliverCalls(t, s.integ)
	<-done
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if atKill >= rows {
		t.Fatalf("the run was over (%d created) before the kill", atKill)
	}
	if rep.Delivered != rows || rep.Failed != 0 || !rep.Accounted() {
		t.Errorf("report = %+v", rep)
	}
	if after := deliverCalls(t, s.integ); after <= aBefore {
		t.Errorf("the surviving integrator answered no call after the kill (%d before, %d after)", aBefore, after)
	}
	t.Logf("killed with %d created; %d retries, %d lookups", atKill, rep.Retries, rep.Lookups)
	s.assertExactlyOnce(rows)
}

// Three readers split one export by key, at once, against one stack:
// between them every key is delivered once, each report adds up, and the
// rows outside a reader's shard sum to the rows the others read.
func TestStackShardedReaders(t *testing.T) {
	s := newStack(t, fakecrm.Config{Faults: fakecrm.Faults{Latency: 2 * time.Millisecond}}, integrator.Config{})
	const valid = 6000
	file := exportFile(t, valid,
		"K000007,Again,Dup,again@example.com,,Acme",
		"K004242,Again,Dup,again2@example.com,,Acme",
		"BAD,Bad,Email,bad-email,,Acme",
		",No,Key,nokey@example.com,,Acme")
	const fileRows = valid + 4

	// The dry run counts the shard's keys only.
	want2 := 0
	for i := range valid {
		if importer.ShardOf(fmt.Sprintf("K%06d", i), 3) == 2 {
			want2++
		}
	}
	dry, out, err := s.reader(context.Background(), s.dsn, "-dry-run", "-shard", "2/3", file)
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if dry.New != int64(want2) || dry.Shard != "2/3" || dry.Rows != fileRows || !dry.Accounted() {
		t.Errorf("dry run of shard 2/3 = %+v, want %d new", dry, want2)
	}

	reps := make([]*importer.Report, 3)
	var wg sync.WaitGroup
	for i := range reps {
		wg.Go(func() {
			rep, out, err := s.reader(context.Background(), s.dsn, "-shard", fmt.Sprintf("%d/3", i+1), "-block-size", "200", file)
			if err != nil && cli.ExitCode(err) != exitOK {
				t.Errorf("shard %d/3: %v\n%s", i+1, err, out)
			}
			reps[i] = rep
		})
	}
	wg.Wait()
	var own, delivered, dupes, invalid int64
	for i, r := range reps {
		if !r.Accounted() || r.Rows != fileRows || r.OtherShard == 0 || r.Shard != fmt.Sprintf("%d/3", i+1) {
			t.Errorf("shard %d/3 report = %+v", i+1, r)
		}
		own += r.Rows - r.OtherShard
		delivered += r.Delivered
		dupes += r.DuplicatesInFile
		invalid += r.RejectedInvalid
		if r.Unchanged != 0 {
			t.Errorf("shard %d/3 met %d keys another reader delivered: the shards overlap", i+1, r.Unchanged)
		}
	}
	if own != fileRows || delivered != valid || dupes != 2 || invalid != 2 {
		t.Errorf("over the shards: %d own rows (want %d), %d delivered (want %d), %d duplicates (want 2), %d invalid (want 2)",
			own, fileRows, delivered, valid, dupes, invalid)
	}
	if reps[1].Delivered != int64(want2) {
		t.Errorf("shard 2/3 delivered %d, its dry run counted %d", reps[1].Delivered, want2)
	}
	s.assertExactlyOnce(valid)
}

func TestShardUsage(t *testing.T) {
	tests := []struct {
		flag, env, wantErr string
	}{
		{"0/3", "", "-shard"},
		{"4/3", "", "-shard"},
		{"1/0", "", "-shard"},
		{"x", "", "-shard"},
		{"1/3/3", "", "-shard"},
		{"", "2/", "CSVREADER_SHARD"},
	}
	for _, tc := range tests {
		t.Run(tc.flag+tc.env, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": "postgres://u@127.0.0.1:1/db", "CSVREADER_SHARD": tc.env}
			args := []string{"x.csv"}
			if tc.flag != "" {
				args = append([]string{"-shard", tc.flag}, args...)
			}
			var out bytes.Buffer
			err := run(context.Background(), args, func(k string) string { return env[k] }, &out, &out)
			if code := cli.ExitCode(err); code != exitUsage || err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("exit %d, err %v; want %d naming %s", code, err, exitUsage, tc.wantErr)
			}
		})
	}
}

// With several integrators the run honours the strictest: the smallest
// limits, the longest call bound, the fields every one has.
func TestStrictest(t *testing.T) {
	h := func(maxRec, maxField int, bound time.Duration, fields ...string) crmrpc.DaemonHello {
		return crmrpc.DaemonHello{HelloReply: &crmrpc.HelloReply{MaxRecords: maxRec, MaxFieldBytes: maxField, CallTimeout: bound, Fields: fields}}
	}
	got := strictest([]crmrpc.DaemonHello{h(1000, 0, 5*time.Second, "email", "city"), h(500, 4096, 9*time.Second), h(0, 2048, time.Second, "city", "zip")})
	if got.MaxRecords != 500 || got.MaxFieldBytes != 2048 || got.CallTimeout != 9*time.Second || len(got.Fields) != 1 || got.Fields[0] != "city" {
		t.Errorf("strictest = %+v", got)
	}
}
