package integrator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"net"
	"net/rpc"
	"os"
	"testing"
	"time"

	"crmsync/crmintegrator/fakecrm"
	"crmsync/shared/crmrpc"
)

// A client that sends a request header and then nothing is idle: the
// daemon closes its connection after the idle timeout, and Close does not
// wait for a call whose body never came.
func TestStalledRequestIsIdle(t *testing.T) {
	_, url := startCRM(t, fakecrm.Config{})
	cfg := testConfig(url)
	cfg.IdleTimeout = 200 * time.Millisecond
	s, addr := startDaemon(t, cfg)

	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	if err := gob.NewEncoder(w).Encode(&rpc.Request{ServiceMethod: crmrpc.MethodDeliver, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	stall := func() net.Conn {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := crmrpc.ClientHandshake(conn, "", time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(b.Bytes()); err != nil {
			t.Fatal(err)
		}
		return conn
	}

	conn := stall()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var err error
	for err == nil { // the daemon may answer the broken call before it hangs up
		_, err = conn.Read(make([]byte, 512))
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the daemon kept a stalled connection open for 5s with a 200ms idle timeout")
	}

	stall()
	// Once the daemon has read the header, the call counts as active but
	// is still reading its body: Close must not wait for it.
	waitUntil(t, func() bool { return s.active.Load() == 1 && s.reading.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Close(ctx); err != nil || time.Since(start) > time.Second {
		t.Errorf("Close: %v after %v; want nil at once: a stalled request is no call in flight", err, time.Since(start))
	}
}
