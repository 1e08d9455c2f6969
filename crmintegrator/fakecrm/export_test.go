package fakecrm

import "time"

// SetAfterReserve installs a hook that runs once a request holds its
// Idempotency-Key, so tests can catch a request in progress. Set it before
// any request is sent.
func SetAfterReserve(s *Server, f func()) { s.afterReserve = f }

// SetClock replaces the server's clock, so rate-limit tests do not depend
// on how fast requests run. Set it before any request is sent.
func SetClock(s *Server, now func() time.Time) { s.now = now }
