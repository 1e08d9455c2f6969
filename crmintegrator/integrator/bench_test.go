package integrator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// BenchmarkDeliverRPC measures Deliver calls of 1000-record blocks, as a
// reader makes it: over real TCP to the daemon, which sends ten
// 100-contact batches as JSON to fakecrm (in-process, over loopback HTTP)
// and answers the verdicts; with one call in flight, and with four as
// csvreader's default workers; with the records packed, and as gob Records
// (to a daemon that does not report packed records). It reports records/s.
//
//	go test -run '^$' -bench DeliverRPC -benchmem ./crmintegrator/integrator/
func BenchmarkDeliverRPC(b *testing.B) {
	for _, blocks := range []int{1, 4} {
		for _, enc := range []string{"packed", "gob"} {
			b.Run(fmt.Sprintf("in-flight=%d/records=%s", blocks, enc), func(b *testing.B) {
				_, crmURL := fakecrmtest.Start(b, fakecrm.Config{Token: "bench"})
				s := benchDaemon(b, Config{CRMURL: crmURL, CRMToken: "bench", CRMTimeout: 10 * time.Second}, enc)
				benchDeliver(b, s, blocks, freshBlocks())
			})
		}
	}
}

// BenchmarkDeliverCodec measures what the RPC of a 1000-record Deliver
// costs, without the CRM: the client encodes the records, the daemon
// decodes them (real serverCodec and service, over TCP) and answers 1000
// Delivered verdicts, which the client decodes. One call in flight. Next to
// ns/op it reports the CPU time the process (both ends) spent per call.
//
//	go test -run '^$' -bench DeliverCodec -benchmem ./crmintegrator/integrator/
func BenchmarkDeliverCodec(b *testing.B) {
	for _, enc := range []string{"packed", "gob"} {
		b.Run("records="+enc, func(b *testing.B) {
			s := benchDaemon(b, Config{CRMURL: "http://127.0.0.1:1"}, enc)
			ids := make([]string, 1000)
			for i := range ids {
				ids[i] = fmt.Sprintf("ct_%016x", i*7919)
			}
			s.deliver = func(_ context.Context, recs []crmrpc.Record, _ bool) ([]crmrpc.Verdict, int, *crmrpc.Error) {
				vs := make([]crmrpc.Verdict, len(recs))
				for i := range vs {
					vs[i] = crmrpc.Verdict{Outcome: crmrpc.Delivered, CRMID: ids[i%len(ids)]}
				}
				return vs, 0, nil
			}
			block := freshBlocks()() // the same records every call: generating them is not measured
			benchDeliver(b, s, 1, func() []crmrpc.Record { return block })
		})
	}
}

// benchDaemon is a daemon for benchmarks, reporting packed records or not
// (enc "packed" or "gob").
func benchDaemon(b *testing.B, cfg Config, enc string) *Server {
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if enc == "gob" {
		s.packedRecords = 0
	}
	return s
}

// freshBlocks returns a function that returns a new block of 1000
// records, with new external ids, at each call.
func freshBlocks() func() []crmrpc.Record {
	next := 0
	return func() []crmrpc.Record {
		recs := make([]crmrpc.Record, 1000)
		for i := range recs {
			id := fmt.Sprintf("B%09d", next)
			next++
			recs[i].Contact = contact.Contact{ExternalID: id, Email: id + "@example.com", FirstName: "Ada", LastName: "Lovelace",
				Phone: "+44 20 7946 0000", Attributes: contact.AttrsOf(map[string]string{"company": "Acme Ltd", "city": "London", "country": "GB", "created_at": "2024-01-01T10:00:00Z"})}
		}
		return recs
	}
}

// benchDeliver serves s and delivers b.N blocks from blockOf through it
// with inFlight calls at a time. It reports records/s and the process's
// CPU time per block.
func benchDeliver(b *testing.B, s *Server, inFlight int, blockOf func() []crmrpc.Record) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(ln)
	defer s.Close(context.Background())
	addr := ln.Addr().String()
	ctx := context.Background()
	c, err := crmrpc.Dial(ctx, crmrpc.ClientConfig{Addrs: []string{addr}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Hello(ctx); err != nil { // learn the encoding outside the timer
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	work := make(chan []crmrpc.Record, inFlight)
	go func() {
		defer close(work)
		for range b.N {
			work <- blockOf()
		}
	}()
	done := make(chan error, inFlight)
	for range inFlight {
		go func() {
			for recs := range work {
				vs, err := c.Deliver(ctx, recs)
				if err == nil && (len(vs) != len(recs) || vs[0].Outcome != crmrpc.Delivered) {
					err = fmt.Errorf("got %d verdicts, first %v", len(vs), vs[0])
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range inFlight {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/time.Since(start).Seconds(), "records/s")
	b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
