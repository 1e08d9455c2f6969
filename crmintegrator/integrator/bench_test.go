package integrator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// BenchmarkDeliverRPC measures Deliver calls of 1000-record blocks, as a
// reader makes it: gob over real TCP to the daemon, which sends ten
// 100-contact batches as JSON to fakecrm (in-process, over loopback HTTP)
// and answers the verdicts; with one call in flight, and with four as
// csvreader's default workers. It reports records/s.
//
//	go test -run '^$' -bench DeliverRPC -benchmem ./crmintegrator/integrator/
func BenchmarkDeliverRPC(b *testing.B) {
	for _, blocks := range []int{1, 4} {
		b.Run(fmt.Sprintf("in-flight=%d", blocks), func(b *testing.B) { benchDeliver(b, blocks) })
	}
}

func benchDeliver(b *testing.B, inFlight int) {
	_, crmURL := fakecrmtest.Start(b, fakecrm.Config{Token: "bench"})
	cfg := Config{CRMURL: crmURL, CRMToken: "bench", CRMTimeout: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
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
	const block = 1000
	next := 0
	blockOf := func() []crmrpc.Record {
		recs := make([]crmrpc.Record, block)
		for i := range recs {
			id := fmt.Sprintf("B%09d", next)
			next++
			recs[i].Contact = contact.Contact{ExternalID: id, Email: id + "@example.com", FirstName: "Ada", LastName: "Lovelace",
				Phone: "+44 20 7946 0000", Attributes: map[string]string{"company": "Acme Ltd", "city": "London", "country": "GB", "created_at": "2024-01-01T10:00:00Z"}}
		}
		return recs
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
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
	b.ReportMetric(float64(b.N*block)/time.Since(start).Seconds(), "records/s")
}
