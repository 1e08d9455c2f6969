package fakecrm_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"crmsync/crmintegrator/crmapi"
	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
)

// BenchmarkBatch posts 100-contact batches over loopback HTTP from several
// goroutines and reports contacts created per second. Bodies are encoded
// up front so the figure is the server's, plus the HTTP round trip.
//
//	go test -run '^$' -bench BenchmarkBatch -benchtime 3s ./crmintegrator/fakecrm/
func BenchmarkBatch(b *testing.B) {
	for _, keyed := range []bool{false, true} {
		name := "plain"
		if keyed {
			name = "idempotency-key"
		}
		b.Run(name, func(b *testing.B) { benchBatch(b, keyed) })
	}
}

func benchBatch(b *testing.B, keyed bool) {
	srv, base := fakecrmtest.Start(b, fakecrm.Config{})
	const size = 100
	bodies := make([][]byte, 16)
	for i := range bodies {
		ids := make([]string, size)
		for j := range ids {
			ids[j] = fmt.Sprintf("B%d-%d", i, j)
		}
		body, err := json.Marshal(batchOf(ids...))
		if err != nil {
			b.Fatal(err)
		}
		bodies[i] = body
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	var seq atomic.Int64

	b.SetParallelism(4)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.Add(1)
			req, err := http.NewRequest("POST", base+crmapi.PathBatch, bytes.NewReader(bodies[n%int64(len(bodies))]))
			if err != nil {
				b.Error(err)
				return
			}
			req.Header.Set("Content-Type", "application/json")
			if keyed {
				req.Header.Set(crmapi.HeaderIdempotencyKey, "bench-"+strconv.FormatInt(n, 10))
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body) //nolint:errcheck
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("got %d, want 200", resp.StatusCode)
				return
			}
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N*size)/elapsed.Seconds(), "contacts/s")
	if got, want := srv.Audit().Contacts, int64(b.N*size); got != want {
		b.Errorf("got %d contacts, want %d", got, want)
	}
}
