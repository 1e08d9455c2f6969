package fakecrm

// SetAfterReserve installs a hook that runs once a request holds its
// Idempotency-Key, so tests can catch a request in progress. Set it before
// any request is sent.
func SetAfterReserve(s *Server, f func()) { s.afterReserve = f }
