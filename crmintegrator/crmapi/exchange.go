package crmapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// Exchange sends req, a request of operation op, with hc within timeout
// (0: the request's context alone) and tells observe, when set, the
// answer's status (0: none) and latency: the one HTTP exchange every
// connector makes. On success the
// caller reads resp and then calls done, which drains what is left of the
// body (up to 64 KiB, so the connection can be reused), closes it and ends
// the timeout. A failure is a TransportError.
func Exchange(hc *http.Client, req *http.Request, op string, timeout time.Duration, observe func(op string, status int, d time.Duration)) (resp *http.Response, done func(), err error) {
	cancel := context.CancelFunc(func() {})
	if timeout > 0 {
		var ctx context.Context
		ctx, cancel = context.WithTimeout(req.Context(), timeout)
		req = req.WithContext(ctx)
	}
	start := time.Now()
	resp, err = hc.Do(req)
	if err != nil {
		cancel()
		if observe != nil {
			observe(op, 0, time.Since(start))
		}
		return nil, nil, TransportError(err)
	}
	if observe != nil {
		observe(op, resp.StatusCode, time.Since(start))
	}
	return resp, func() {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
	}, nil
}

// DecodeJSON reads a 2xx answer's JSON body (at most 64 MiB) into out. An
// unreadable one is ambiguous: the CRM acted, but what it answered is lost.
func DecodeJSON(resp *http.Response, out any) error {
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return &Error{Class: ClassAmbiguous, Status: resp.StatusCode, Message: "unreadable answer: " + err.Error(), Err: err}
	}
	return nil
}
