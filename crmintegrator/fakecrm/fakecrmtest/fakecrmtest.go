// Package fakecrmtest starts a fakecrm.Server for tests, on a real loopback
// socket, and stops it when the test ends.
package fakecrmtest

import (
	"net/http/httptest"
	"testing"

	"crmsync/crmintegrator/fakecrm"
)

// Start serves a fake CRM configured by cfg on 127.0.0.1 and returns it
// with its base URL (no trailing slash). The server is closed by
// tb.Cleanup: hanging requests are released first, so cleanup is prompt.
func Start(tb testing.TB, cfg fakecrm.Config) (*fakecrm.Server, string) {
	tb.Helper()
	srv, err := fakecrm.New(cfg)
	if err != nil {
		tb.Fatalf("fakecrmtest: %v", err)
	}
	ts := httptest.NewServer(srv)
	tb.Cleanup(func() {
		// The CRM first, so hangs end and the state file is saved; then
		// the listener, which waits for handlers to return.
		if err := srv.Close(); err != nil {
			tb.Errorf("fakecrmtest: close: %v", err)
		}
		ts.Close()
	})
	return srv, ts.URL
}
