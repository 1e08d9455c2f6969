package integrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/crmintegrator/fakecrm/fakecrmtest"
	"crmsync/shared/contact"
	"crmsync/shared/crmrpc"
)

// syncBuffer is a log sink tests can read while the daemon writes.
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

// testConfig is a daemon configuration with small timeouts for tests.
func testConfig(crmURL string) Config {
	return Config{
		CRMURL:          crmURL,
		CRMToken:        "crm-token-for-tests",
		CRMTimeout:      time.Second,
		CallBudget:      2 * time.Second,
		BreakerCooldown: 300 * time.Millisecond,
	}
}

// startCRM starts fakecrm with the token of testConfig.
func startCRM(t *testing.T, cfg fakecrm.Config) (*fakecrm.Server, string) {
	t.Helper()
	if cfg.Token == "" {
		cfg.Token = "crm-token-for-tests"
	}
	return fakecrmtest.Start(t, cfg)
}

// startDaemon serves cfg on 127.0.0.1:0 until the test ends.
func startDaemon(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	return startDaemonOn(t, cfg, "127.0.0.1:0")
}

func startDaemonOn(t *testing.T, cfg Config, addr string) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: got %v, want ErrServerClosed", err)
		}
	})
	return s, ln.Addr().String()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimRight(p, "\n"))
	return len(p), nil
}

func dial(t *testing.T, cfg crmrpc.ClientConfig) *crmrpc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := crmrpc.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func makeRecords(prefix string, n int) []crmrpc.Record {
	recs := make([]crmrpc.Record, n)
	for i := range recs {
		id := fmt.Sprintf("%s-%05d", prefix, i)
		recs[i].Contact = contact.Contact{ExternalID: id, Email: id + "@example.com", FirstName: "Ada"}
	}
	return recs
}

// deliverAll behaves like a reader: it delivers recs in blocks, resends
// Retry verdicts after RetryAfter (with MaybeSent when Ambiguous, or after
// a *ConnError), and returns the CRM id of every external id. It fails the
// test on a rejection or when the work does not finish within limit.
func deliverAll(t *testing.T, c *crmrpc.Client, recs []crmrpc.Record, block int, limit time.Duration) map[string]string {
	t.Helper()
	ids := map[string]string{}
	deadline := time.Now().Add(limit)
	pending := append([]crmrpc.Record(nil), recs...)
	for len(pending) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d records still pending after %v", len(pending), limit)
		}
		var next []crmrpc.Record
		var wait time.Duration
		for start := 0; start < len(pending); start += block {
			blk := pending[start:min(start+block, len(pending))]
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			vs, err := c.Deliver(ctx, blk)
			cancel()
			var ce *crmrpc.ConnError
			switch {
			case errors.As(err, &ce):
				for _, r := range blk {
					r.MaybeSent = true
					next = append(next, r)
				}
				continue
			case err != nil:
				t.Fatalf("Deliver: %v", err)
			}
			for i, v := range vs {
				r := blk[i]
				switch v.Outcome {
				case crmrpc.Delivered:
					if v.CRMID == "" {
						t.Fatalf("%s delivered without a CRM id", r.Contact.ExternalID)
					}
					ids[r.Contact.ExternalID] = v.CRMID
				case crmrpc.Rejected:
					t.Fatalf("%s rejected: %s %s", r.Contact.ExternalID, v.Code, v.Message)
				case crmrpc.Retry:
					r.MaybeSent = r.MaybeSent || v.Ambiguous
					next = append(next, r)
					wait = max(wait, v.RetryAfter)
				default:
					t.Fatalf("%s: no verdict", r.Contact.ExternalID)
				}
			}
		}
		pending = next
		if len(pending) > 0 {
			time.Sleep(min(wait, 2*time.Second))
		}
	}
	return ids
}

// checkAudit fails unless the CRM holds exactly want distinct contacts and
// no duplicate.
func checkAudit(t *testing.T, crm *fakecrm.Server, want int) fakecrm.Audit {
	t.Helper()
	a := crm.Audit()
	if a.DuplicateContacts != 0 || a.DistinctExternalIDs != int64(want) || a.Contacts != int64(want) {
		t.Fatalf("got %d contacts, %d distinct, %d duplicates; want %d, %d, 0 (audit %+v)",
			a.Contacts, a.DistinctExternalIDs, a.DuplicateContacts, want, want, a)
	}
	return a
}

// waitUntil polls cond until it holds, failing the test after 10s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
