package crmrpc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"sync/atomic"
	"time"

	"crmsync/shared/backoff"
)

// ClientConfig configures Dial. Only Addrs is required.
type ClientConfig struct {
	// Addrs are daemon addresses (host:port), tried in order: a failed
	// dial moves on to the next one, and so does a broken connection.
	Addrs []string
	Token string      // shared RPC token, sent with every call
	TLS   *tls.Config // when set, connections use TLS (ServerName defaults to the host)
	// DialTimeout bounds one dial; default 5s.
	DialTimeout time.Duration
	// CallTimeout bounds one call, reconnects included; 0 means only the
	// caller's context does. Hello reports how long a Deliver may take.
	CallTimeout time.Duration
	// RedialFor is how long a call keeps redialing (every address, with
	// backoff) before it gives up; default 30s. Dial itself tries each
	// address once.
	RedialFor time.Duration
	// SendGate, when set, is asked right before a Deliver is written to a
	// connection, after any wait for a connection, with the call's context
	// and the Instance of the daemon on that connection ("" until it said):
	// an error stops the call with nothing sent, and Deliver returns it
	// wrapped. A reader passes its ledger's check that it still owns what
	// it sends, and records the daemons it sends to.
	SendGate func(ctx context.Context, instance string) error
}

// ConnError says a call may or may not have been carried out: the
// connection broke, or the caller's context ended, after the request was
// written. For Deliver it means some records may have reached the CRM:
// resend every record of the call with MaybeSent set. The client redials on
// the next call.
type ConnError struct {
	Method string
	Addr   string
	Err    error
	// CallTimeout is the bound the daemon at Addr advertised for its calls
	// (HelloReply.CallTimeout): how long it may go on with this one. 0:
	// unknown (a daemon that predates it).
	CallTimeout time.Duration
}

func (e *ConnError) Error() string {
	return fmt.Sprintf("%s on %s: outcome unknown: %v", e.Method, e.Addr, e.Err)
}

func (e *ConnError) Unwrap() error { return e.Err }

// Client calls a crmintegrator daemon. It is safe for concurrent use:
// calls are multiplexed over one connection, which is redialed
// transparently after the daemon restarts or fails over to the next address.
//
// Errors of the typed methods are a *Error (the daemon answered that the
// call failed as a whole), a *ConnError (outcome unknown), or another error
// (nothing was sent: no daemon reachable, context done, Close called).
//
// Deliver sends the records packed (DeliverArgs.Packed) to a daemon that
// reported it reads them, and as gob Records otherwise. What a daemon
// reads is learnt per connection, as a redial may reach another daemon
// (failover, a rolling upgrade): from a Hello, or from the reply to a
// Deliver, so the first Deliver on a connection no Hello was sent on goes
// as Records.
type Client struct {
	cfg  ClientConfig
	lock chan struct{} // guards the fields below; a channel so waiting honours ctx
	cn   *conn         // nil when there is no connection
	next int           // index of the address to try first
	done bool

	// packBufs are buffers for AppendPackedRecords, kept between calls.
	// A block's packed bytes are copied into the string DeliverArgs.Packed,
	// so a buffer is returned at once. (A sync.Pool, emptied by every
	// garbage collection, missed often enough to cost an extra copy of
	// every block.)
	packBufs chan []byte

	lookups  atomic.Int64 // external ids the daemons looked up for our Deliver calls
	maxBound atomic.Int64 // the longest call bound a daemon advertised
}

// Instance is the Instance of the daemon on the current connection, "" when
// there is none or it has not said.
func (c *Client) Instance() string {
	select {
	case c.lock <- struct{}{}:
	default:
		return "" // busy redialing: no current daemon to speak of
	}
	defer func() { <-c.lock }()
	if c.cn == nil {
		return ""
	}
	return c.cn.instanceName()
}

// Lookups is how many external ids the daemons looked up in the CRM for
// this client's Deliver calls so far (to resolve records that may exist).
func (c *Client) Lookups() int64 { return c.lookups.Load() }

// conn is one connection to a daemon and what that daemon said of itself.
type conn struct {
	rc          *rpc.Client
	addr        string
	packed      atomic.Bool  // the daemon said it reads packed records
	callTimeout atomic.Int64 // the bound it advertised for its calls; 0: not heard yet
	instance    atomic.Value // string: its Instance; unset until it said
}

func (cn *conn) instanceName() string {
	s, _ := cn.instance.Load().(string)
	return s
}

// learn records what a reply says of its daemon.
func (c *Client) learn(cn *conn, packedRecords int, callTimeout time.Duration, instance string) {
	cn.packed.Store(packedRecords >= PackedVersion)
	if instance != "" {
		cn.instance.Store(instance)
	}
	if callTimeout > 0 {
		cn.callTimeout.Store(int64(callTimeout))
		for {
			m := c.maxBound.Load()
			if int64(callTimeout) <= m || c.maxBound.CompareAndSwap(m, int64(callTimeout)) {
				break
			}
		}
	}
}

// bound is the call bound to wait out for a call on cn that broke: its
// daemon's, or, before that daemon said, the longest any daemon said.
func (c *Client) bound(cn *conn) time.Duration {
	if b := cn.callTimeout.Load(); b > 0 {
		return time.Duration(b)
	}
	return time.Duration(c.maxBound.Load())
}

// ErrClosed is returned by calls after Close.
var ErrClosed = errors.New("crmrpc: client closed")

// Dial connects to the first reachable address of cfg.Addrs.
func Dial(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("crmrpc: no daemon address")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.RedialFor <= 0 {
		cfg.RedialFor = 30 * time.Second
	}
	c := &Client{cfg: cfg, lock: make(chan struct{}, 1), packBufs: make(chan []byte, 4)}
	c.lock <- struct{}{}
	err := c.dialRound(ctx)
	<-c.lock
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Close closes the connection. Calls in flight fail.
func (c *Client) Close() error {
	c.lock <- struct{}{}
	defer func() { <-c.lock }()
	c.done = true
	if c.cn != nil {
		err := c.cn.rc.Close()
		c.cn = nil
		return err
	}
	return nil
}

// dialRound tries every address once, starting at c.next. Lock held. A
// refusal no retry can fix (a wrong token, an untrusted certificate) ends
// the round at once with that *Error.
func (c *Client) dialRound(ctx context.Context) error {
	var errs []error
	for i := range c.cfg.Addrs {
		j := (c.next + i) % len(c.cfg.Addrs)
		addr := c.cfg.Addrs[j]
		nc, hs, err := c.dialOne(ctx, addr)
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				return fmt.Errorf("crmrpc: connection refused: %w", err)
			}
			errs = append(errs, err)
			continue
		}
		c.cn, c.next = &conn{rc: rpc.NewClient(nc), addr: addr}, j
		c.learn(c.cn, hs.PackedRecords, hs.CallTimeout, hs.Instance)
		return nil
	}
	return fmt.Errorf("crmrpc: no daemon reachable: %w", errors.Join(errs...))
}

// dialOne connects to addr (over TLS when configured) and runs the
// handshake, within DialTimeout.
func (c *Client) dialOne(ctx context.Context, addr string) (net.Conn, *HandshakeReply, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	var nc net.Conn
	var err error
	if c.cfg.TLS == nil {
		nc, err = d.DialContext(ctx, "tcp", addr)
	} else {
		cfg := ModernTLS(c.cfg.TLS)
		if cfg.ServerName == "" {
			if host, _, err := net.SplitHostPort(addr); err == nil {
				cfg.ServerName = host
			}
		}
		nc, err = (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dial %s: %w", addr, tlsFatal(err))
		}
	}
	if err != nil {
		return nil, nil, err
	}
	deadline, _ := ctx.Deadline()
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) }) // a cancelled ctx ends the handshake
	hs, err := ClientHandshake(nc, c.cfg.Token, deadline)
	if !stop() && err == nil {
		err = ctx.Err() // the deadline set by the AfterFunc may outlive the handshake
	}
	if err != nil {
		nc.Close()
		if c.cfg.TLS != nil {
			err = tlsFatal(err) // TLS 1.3 refuses a client certificate after the client's handshake
		}
		return nil, nil, fmt.Errorf("%s: %w", addr, err)
	}
	return nc, hs, nil
}

// conn returns the current connection, redialing with backoff when there
// is none.
func (c *Client) conn(ctx context.Context) (*conn, error) {
	select {
	case c.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-c.lock }()
	if c.done {
		return nil, ErrClosed
	}
	if c.cn != nil {
		return c.cn, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RedialFor)
	defer cancel()
	bo := backoff.Backoff{Base: 50 * time.Millisecond, Max: 2 * time.Second}
	for {
		err := c.dialRound(ctx)
		if err == nil {
			return c.cn, nil
		}
		if e := (*Error)(nil); errors.As(err, &e) {
			return nil, err // refused: redialing cannot help
		}
		if werr := bo.Wait(ctx); werr != nil {
			return nil, err
		}
	}
}

// drop forgets a broken connection and moves on to the next address.
func (c *Client) drop(cn *conn) {
	c.lock <- struct{}{}
	defer func() { <-c.lock }()
	if c.cn == cn {
		cn.rc.Close()
		c.cn = nil
		c.next = (c.next + 1) % len(c.cfg.Addrs)
	}
}

const maxCallAttempts = 4

// call runs one RPC and returns the connection that answered it. args
// gives the arguments for the connection of each attempt. safe says the
// call may be repeated after a broken connection (Hello, Lookup);
// otherwise a break after sending is a *ConnError. retryable tells whether
// the reply says "call again elsewhere" (shutting down), which is always
// safe: nothing was done.
func (c *Client) call(ctx context.Context, method string, args func(*conn) any, reply any, safe bool, retryable func() bool) (*conn, error) {
	return c.callGated(ctx, method, args, reply, safe, retryable, nil)
}

// callGated is call, asking gate (when set) right before each write.
func (c *Client) callGated(ctx context.Context, method string, args func(*conn) any, reply any, safe bool, retryable func() bool, gate func(context.Context, string) error) (*conn, error) {
	if c.cfg.CallTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.CallTimeout)
		defer cancel()
	}
	var last error
	for attempt := 0; attempt < maxCallAttempts; attempt++ {
		cn, err := c.conn(ctx)
		if err != nil {
			if last != nil {
				return nil, fmt.Errorf("%s: %w (after %v)", method, err, last)
			}
			return nil, fmt.Errorf("%s: %w", method, err)
		}
		a := args(cn)
		if gate != nil {
			if err := gate(ctx, cn.instanceName()); err != nil {
				return nil, fmt.Errorf("%s: not sent: %w", method, err)
			}
		}
		call := cn.rc.Go(method, a, reply, make(chan *rpc.Call, 1))
		// net/rpc fails a call inside Go, before writing it, when the
		// connection is already shut down: only then is it certain that
		// nothing was sent. The same ErrShutdown arriving later can follow
		// a request that was written (another caller closed the
		// connection under it), so that one is a ConnError.
		notSent := false
		select {
		case <-call.Done:
			notSent = errors.Is(call.Error, rpc.ErrShutdown)
		default:
			select {
			case <-ctx.Done():
				// The daemon may carry the call out anyway.
				return nil, &ConnError{Method: method, Addr: cn.addr, Err: ctx.Err(), CallTimeout: c.bound(cn)}
			case <-call.Done:
			}
		}
		switch err := call.Error; {
		case err == nil:
			if retryable() {
				c.drop(cn)
				last = errors.New("daemon shutting down")
				continue
			}
			return cn, nil
		case notSent:
			c.drop(cn)
			last = err
			continue
		case isServerError(err):
			return nil, fmt.Errorf("%s on %s: %w", method, cn.addr, err)
		default:
			c.drop(cn)
			if !safe {
				return nil, &ConnError{Method: method, Addr: cn.addr, Err: err, CallTimeout: c.bound(cn)}
			}
			last = err
		}
	}
	return nil, fmt.Errorf("%s: giving up after %d attempts: %w", method, maxCallAttempts, last)
}

// fixed is the args of call for arguments that do not depend on the
// connection.
func fixed(args any) func(*conn) any { return func(*conn) any { return args } }

func isServerError(err error) bool {
	var se rpc.ServerError
	return errors.As(err, &se)
}

// Hello asks the daemon for its version and limits.
func (c *Client) Hello(ctx context.Context) (*HelloReply, error) {
	var reply HelloReply
	cn, err := c.call(ctx, MethodHello, fixed(&HelloArgs{Token: c.cfg.Token}), &reply, true, func() bool {
		return shuttingDown(&reply, &reply.Err)
	})
	if err != nil {
		return nil, err
	}
	if reply.Err != nil {
		return nil, reply.Err
	}
	c.learn(cn, reply.PackedRecords, reply.CallTimeout, reply.Instance)
	return &reply, nil
}

// Deliver sends records and returns one verdict per record, in order. On a
// *ConnError the outcome of every record is unknown: resend them all with
// MaybeSent set.
func (c *Client) Deliver(ctx context.Context, records []Record) ([]Verdict, error) {
	var reply DeliverReply
	var packed string // encoded once, for the first attempt that may use it
	args := func(cn *conn) any {
		if !cn.packed.Load() {
			return &DeliverArgs{Token: c.cfg.Token, Records: records}
		}
		if packed == "" {
			var buf []byte
			select {
			case buf = <-c.packBufs:
			default:
			}
			buf = AppendPackedRecords(buf[:0], records)
			packed = string(buf)
			select {
			case c.packBufs <- buf:
			default:
			}
		}
		return &DeliverArgs{Token: c.cfg.Token, Packed: packed}
	}
	cn, err := c.callGated(ctx, MethodDeliver, args, &reply, false, func() bool {
		return shuttingDown(&reply, &reply.Err)
	}, c.cfg.SendGate)
	if err != nil {
		return nil, err
	}
	c.learn(cn, reply.PackedRecords, reply.CallTimeout, reply.Instance)
	c.lookups.Add(int64(reply.Lookups))
	if reply.Err != nil {
		return nil, reply.Err
	}
	if len(reply.Verdicts) != len(records) {
		return nil, fmt.Errorf("%s: %d verdicts for %d records", MethodDeliver, len(reply.Verdicts), len(records))
	}
	return reply.Verdicts, nil
}

// Lookup asks which CRM ids hold each external id; one result per id, in
// order.
func (c *Client) Lookup(ctx context.Context, ids []string) ([]LookupResult, error) {
	var reply LookupReply
	_, err := c.call(ctx, MethodLookup, fixed(&LookupArgs{Token: c.cfg.Token, ExternalIDs: ids}), &reply, true, func() bool {
		return shuttingDown(&reply, &reply.Err)
	})
	if err != nil {
		return nil, err
	}
	if reply.Err != nil {
		return nil, reply.Err
	}
	if len(reply.Results) != len(ids) {
		return nil, fmt.Errorf("%s: %d results for %d ids", MethodLookup, len(reply.Results), len(ids))
	}
	return reply.Results, nil
}

// shuttingDown reports a CodeShuttingDown reply (e is its Err) and zeroes
// it, so that the reply can be reused for the next attempt: gob leaves
// alone the fields an answer does not carry, and the next daemon may not
// know them all.
func shuttingDown[R any](reply *R, e **Error) bool {
	if *e != nil && (*e).Code == CodeShuttingDown {
		var zero R
		*reply = zero
		return true
	}
	return false
}
