package crmrpc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"crmsync/shared/backoff"
)

// ClientConfig configures Dial. Only Addrs is required.
type ClientConfig struct {
	// Addrs are daemon addresses (host:port). The client keeps a
	// connection to every one it can reach and sends each call to the
	// daemon with the fewest calls of this client in flight (ties: round
	// robin for Deliver, the first listed for Hello and Lookup), so
	// several daemons share the work; a daemon that is
	// down or whose connection broke is left out until a redial (in the
	// background, with backoff) reaches it again.
	Addrs []string
	Token string      // shared RPC token, sent with every call
	TLS   *tls.Config // when set, connections use TLS (ServerName defaults to the host)
	// DialTimeout bounds one dial; default 5s.
	DialTimeout time.Duration
	// CallTimeout bounds one call, reconnects included; 0 means only the
	// caller's context does. Hello reports how long a Deliver may take.
	CallTimeout time.Duration
	// RedialFor is how long a call waits for some daemon to be reachable
	// (every address redialed, with backoff) before it gives up; default
	// 30s. Dial itself tries each address once.
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

// Client calls crmintegrator daemons. It is safe for concurrent use: calls
// are multiplexed over one connection per daemon, spread over the daemons
// by how many calls each has in flight, and redialed transparently after a
// daemon restarts; while one is down the others take its share.
//
// Errors of the typed methods are a *Error (the daemon answered that the
// call failed as a whole), a *ConnError (outcome unknown), or another error
// (nothing was sent: no daemon reachable, context done, Close called).
//
// Deliver sends the records packed (DeliverArgs.Packed) to a daemon that
// reported it reads them, and as gob Records otherwise. What a daemon
// reads is learnt per connection, as a redial may reach another daemon
// (a restart, a rolling upgrade): from the handshake, a Hello, or the
// reply to a Deliver.
type Client struct {
	cfg     ClientConfig
	mu      sync.Mutex    // guards slots' state, done and changed
	slots   []*slot       // one per address, in the order given
	rr      int           // where the next Deliver's search for a tie starts
	changed chan struct{} // closed (and replaced) when a dial ends
	done    bool
	life    context.Context // background dials; cancelled by Close
	stop    context.CancelFunc
	dials   sync.WaitGroup

	// packBufs are buffers for AppendPackedRecords, kept between calls.
	// A block's packed bytes are copied into the string DeliverArgs.Packed,
	// so a buffer is returned at once. (A sync.Pool, emptied by every
	// garbage collection, missed often enough to cost an extra copy of
	// every block.)
	packBufs chan []byte

	lookups  atomic.Int64 // external ids the daemons looked up for our Deliver calls
	maxBound atomic.Int64 // the longest call bound a daemon advertised
}

// slot is one daemon address and its connection. Fields guarded by
// Client.mu.
type slot struct {
	addr     string
	cn       *conn // nil while down
	inflight int   // this client's calls on it now, abandoned ones included
	calls    int64 // calls sent to it so far
	dialing  bool
	retryAt  time.Time // a down slot is redialed from then on
	lastErr  error     // why the last dial failed
	refused  bool      // lastErr is a refusal no retry can fix (*Error)
	bo       backoff.Backoff
}

// WithInstance asks that calls made with ctx go to the daemon whose
// Instance is instance, when the client holds a connection to it; else
// they go where they would have gone (and SendGate, told the instance,
// may refuse). A reader sends records a dead run sent only through that
// daemon this way.
func WithInstance(ctx context.Context, instance string) context.Context {
	return context.WithValue(ctx, instanceKey{}, instance)
}

// InstanceOf is the instance WithInstance put in ctx, "" for none.
func InstanceOf(ctx context.Context) string {
	s, _ := ctx.Value(instanceKey{}).(string)
	return s
}

type instanceKey struct{}

// Instance is the Instance of the first listed daemon the client is
// connected to, "" when there is none or it has not said.
func (c *Client) Instance() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.slots {
		if s.cn != nil {
			return s.cn.instanceName()
		}
	}
	return ""
}

// DaemonStats is what the client did with one daemon address.
type DaemonStats struct {
	Addr      string
	Connected bool
	InFlight  int   // calls in flight on it now
	Calls     int64 // calls sent to it so far
}

// Daemons reports, per address in the order given, the connection and
// the calls in flight and sent so far.
func (c *Client) Daemons() []DaemonStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]DaemonStats, len(c.slots))
	for i, s := range c.slots {
		out[i] = DaemonStats{Addr: s.addr, Connected: s.cn != nil, InFlight: s.inflight, Calls: s.calls}
	}
	return out
}

// Lookups is how many external ids the daemons looked up in the CRM for
// this client's Deliver calls so far (to resolve records that may exist).
func (c *Client) Lookups() int64 { return c.lookups.Load() }

// conn is one connection to a daemon and what that daemon said of itself.
type conn struct {
	rc          *rpc.Client
	addr        string
	packed      atomic.Int32 // the newest packed records version the daemon said it reads; 0: none
	updates     atomic.Bool  // the daemon said it takes updates
	callTimeout atomic.Int64 // the bound it advertised for its calls; 0: not heard yet
	instance    atomic.Value // string: its Instance; unset until it said
}

func (cn *conn) instanceName() string {
	s, _ := cn.instance.Load().(string)
	return s
}

// learn records what a reply says of its daemon.
func (c *Client) learn(cn *conn, packedRecords int, callTimeout time.Duration, instance string, updates bool) {
	cn.packed.Store(int32(min(max(packedRecords, 0), PackedVersion)))
	cn.updates.Store(updates)
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

// Dial connects to every reachable address of cfg.Addrs, trying each once
// (all at once); it fails when none is reachable. The others are redialed
// in the background while calls go on.
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
	c := &Client{cfg: cfg, changed: make(chan struct{}), packBufs: make(chan []byte, 4)}
	c.life, c.stop = context.WithCancel(context.WithoutCancel(ctx))
	for _, a := range cfg.Addrs {
		c.slots = append(c.slots, &slot{addr: a, bo: backoff.Backoff{Base: 50 * time.Millisecond, Max: 2 * time.Second}})
	}
	// The first round honours ctx: a dial outlives it only in the
	// background.
	stop := context.AfterFunc(ctx, c.stop)
	defer stop()
	c.mu.Lock()
	c.kick(time.Now())
	for c.dialingLocked() {
		ch := c.changed
		c.mu.Unlock()
		<-ch
		c.mu.Lock()
	}
	err := c.downErrLocked()
	live := c.liveLocked()
	c.mu.Unlock()
	if ctx.Err() != nil {
		c.Close()
		return nil, ctx.Err()
	}
	if !live {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connections. Calls in flight fail.
func (c *Client) Close() error {
	c.mu.Lock()
	c.done = true
	var errs []error
	for _, s := range c.slots {
		if s.cn != nil {
			errs = append(errs, s.cn.rc.Close())
			s.cn = nil
		}
	}
	c.mu.Unlock()
	c.stop()
	c.dials.Wait()
	return errors.Join(errs...)
}

// kick starts a background dial of every slot that is down and due. Lock
// held.
func (c *Client) kick(now time.Time) {
	if c.done {
		return
	}
	for _, s := range c.slots {
		if s.cn == nil && !s.dialing && !now.Before(s.retryAt) {
			s.dialing = true
			c.dials.Add(1)
			go c.dial(s)
		}
	}
}

// dial connects s (over TLS when configured) and tells the waiting calls.
func (c *Client) dial(s *slot) {
	defer c.dials.Done()
	nc, hs, err := c.dialOne(c.life, s.addr)
	c.mu.Lock()
	defer c.mu.Unlock()
	s.dialing = false
	switch {
	case err == nil && c.done:
		nc.Close()
	case err == nil:
		cn := &conn{addr: s.addr}
		// A connection the daemon closed (it died, restarted) is dropped
		// as soon as its reader sees it, not at the next call that picks
		// it: calls go to the other daemons meanwhile.
		cn.rc = rpc.NewClient(&watchedConn{Conn: nc, broken: func() { go c.drop(cn, 0) }})
		s.cn = cn
		s.lastErr, s.refused = nil, false
		s.bo.Reset()
		c.learn(s.cn, hs.PackedRecords, hs.CallTimeout, hs.Instance, hs.Updates)
	default:
		var e *Error
		s.lastErr, s.refused = err, errors.As(err, &e)
		s.retryAt = time.Now().Add(s.bo.Next())
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// watchedConn tells when reading it fails: the connection is over.
type watchedConn struct {
	net.Conn
	once   sync.Once
	broken func()
}

func (w *watchedConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if err != nil {
		w.once.Do(w.broken)
	}
	return n, err
}

func (c *Client) dialingLocked() bool {
	for _, s := range c.slots {
		if s.dialing {
			return true
		}
	}
	return false
}

func (c *Client) liveLocked() bool {
	for _, s := range c.slots {
		if s.cn != nil {
			return true
		}
	}
	return false
}

// downErrLocked says why no daemon can be reached: a refusal no retry can
// fix (a wrong token, an untrusted certificate) when one said so, else
// every address's last dial error.
func (c *Client) downErrLocked() error {
	var errs []error
	for _, s := range c.slots {
		if s.refused {
			return fmt.Errorf("crmrpc: connection refused: %w", s.lastErr)
		}
		if s.lastErr != nil {
			errs = append(errs, s.lastErr)
		}
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

// pick returns a connection for a call, counted in flight on its slot
// until the caller calls c.release: pin's when pin is set (an error when
// it is down), else the one to the daemon ctx asks for (WithInstance) if
// connected, else the one with the fewest calls in flight
// (leastLoadedLocked). When no daemon is connected it waits, up to RedialFor,
// for a redial to reach one.
func (c *Client) pick(ctx context.Context, pin *slot, rotate bool) (*slot, *conn, error) {
	want := InstanceOf(ctx)
	var giveUp <-chan time.Time
	for {
		c.mu.Lock()
		if c.done {
			c.mu.Unlock()
			return nil, nil, ErrClosed
		}
		c.kick(time.Now()) // a daemon that came back rejoins
		best := pin
		if pin == nil {
			best = c.leastLoadedLocked(want, rotate)
		} else if pin.cn == nil {
			c.mu.Unlock()
			return nil, nil, fmt.Errorf("crmrpc: %s: not connected", pin.addr)
		}
		if best != nil {
			best.inflight++
			best.calls++
			cn := best.cn
			c.mu.Unlock()
			return best, cn, nil
		}
		// Nothing connected: wait for a dial to end, or for the next one
		// to be due.
		if !c.dialingLocked() && c.anyRefusedLocked() {
			err := c.downErrLocked()
			c.mu.Unlock()
			return nil, nil, err
		}
		ch := c.changed
		var next time.Time
		for _, s := range c.slots {
			if !s.dialing && (next.IsZero() || s.retryAt.Before(next)) {
				next = s.retryAt
			}
		}
		c.mu.Unlock()
		if giveUp == nil {
			t := time.NewTimer(c.cfg.RedialFor)
			defer t.Stop()
			giveUp = t.C
		}
		due := time.NewTimer(time.Hour)
		if !next.IsZero() {
			due.Reset(max(time.Until(next), time.Millisecond))
		}
		select {
		case <-ch:
		case <-due.C:
		case <-giveUp:
			due.Stop()
			c.mu.Lock()
			err := c.downErrLocked()
			c.mu.Unlock()
			return nil, nil, err
		case <-ctx.Done():
			due.Stop()
			return nil, nil, ctx.Err()
		}
		due.Stop()
	}
}

// leastLoadedLocked is the connected slot whose daemon is want, if any,
// else the connected one with the fewest calls in flight; nil when none is
// connected. Ties go round robin when rotate is set (Deliver: so that a
// reader with fewer blocks in flight than daemons still spreads them), to
// the first listed otherwise. Lock held.
func (c *Client) leastLoadedLocked(want string, rotate bool) *slot {
	var best *slot
	at, n := 0, len(c.slots)
	if rotate {
		at = c.rr
	}
	for k := range n {
		i := (at + k) % n
		s := c.slots[i]
		if s.cn == nil {
			continue
		}
		if want != "" && s.cn.instanceName() == want {
			return s
		}
		if best == nil || s.inflight < best.inflight {
			best = s
			if rotate {
				c.rr = (i + 1) % n
			}
		}
	}
	return best
}

func (c *Client) anyRefusedLocked() bool {
	for _, s := range c.slots {
		if s.refused {
			return true
		}
	}
	return false
}

// release ends a call pick counted on s.
func (c *Client) release(s *slot) {
	c.mu.Lock()
	s.inflight--
	c.mu.Unlock()
}

// drop forgets a broken connection; its address is redialed after pause
// (in the background, kicked by the next call), and calls meanwhile go
// to the other daemons.
func (c *Client) drop(cn *conn, pause time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.slots {
		if s.cn == cn {
			cn.rc.Close()
			s.cn = nil
			s.retryAt = time.Now().Add(pause)
			return
		}
	}
}

const maxCallAttempts = 4

// call runs one RPC and returns the connection that answered it. args
// gives the arguments for the connection of each attempt. safe says the
// call may be repeated after a broken connection (Hello, Lookup);
// otherwise a break after sending is a *ConnError. retryable tells whether
// the reply says "call again elsewhere" (shutting down), which is always
// safe: nothing was done. pin, when set, is the only daemon tried.
func (c *Client) call(ctx context.Context, method string, args func(*conn) any, reply any, safe bool, retryable func() bool, pin *slot) (*conn, error) {
	return c.callGated(ctx, method, args, reply, safe, retryable, nil, pin)
}

// shutdownPause is how long a daemon that answered shutting down is left
// out before it is redialed: its successor may take over its address.
const shutdownPause = time.Second

// callGated is call, asking gate (when set) right before each write.
// args may return an *Error instead of arguments: the call then ends with
// it, nothing sent.
func (c *Client) callGated(ctx context.Context, method string, args func(*conn) any, reply any, safe bool, retryable func() bool, gate func(context.Context, string) error, pin *slot) (*conn, error) {
	if c.cfg.CallTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.CallTimeout)
		defer cancel()
	}
	var last error
	for attempt := 0; attempt < maxCallAttempts; attempt++ {
		s, cn, err := c.pick(ctx, pin, method == MethodDeliver)
		if err != nil {
			if last != nil {
				return nil, fmt.Errorf("%s: %w (after %v)", method, err, last)
			}
			return nil, fmt.Errorf("%s: %w", method, err)
		}
		a := args(cn)
		if e, ok := a.(*Error); ok {
			c.release(s)
			return nil, e
		}
		if gate != nil {
			if err := gate(ctx, cn.instanceName()); err != nil {
				c.release(s)
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
				// The daemon may carry the call out anyway: it stays in
				// flight on its daemon, for picking, until it ends or the
				// connection does.
				go func() {
					<-call.Done
					c.release(s)
				}()
				return nil, &ConnError{Method: method, Addr: cn.addr, Err: ctx.Err(), CallTimeout: c.bound(cn)}
			case <-call.Done:
			}
		}
		c.release(s)
		switch err := call.Error; {
		case err == nil:
			if retryable() {
				c.drop(cn, shutdownPause)
				last = errors.New("daemon shutting down")
				continue
			}
			return cn, nil
		case notSent:
			c.drop(cn, 0)
			last = err
			continue
		case isServerError(err):
			return nil, fmt.Errorf("%s on %s: %w", method, cn.addr, err)
		default:
			c.drop(cn, 0)
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

// Hello asks a daemon for its version and limits.
func (c *Client) Hello(ctx context.Context) (*HelloReply, error) {
	return c.hello(ctx, nil)
}

// DaemonHello is one daemon's answer to HelloAll.
type DaemonHello struct {
	Addr string
	*HelloReply
}

// HelloAll asks every daemon the client is connected to for its version
// and limits, so that a caller can honour the strictest. It fails when a
// daemon refused the call (a *Error) or none answered.
func (c *Client) HelloAll(ctx context.Context) ([]DaemonHello, error) {
	c.mu.Lock()
	var live []*slot
	for _, s := range c.slots {
		if s.cn != nil {
			live = append(live, s)
		}
	}
	c.mu.Unlock()
	var out []DaemonHello
	var errs []error
	for _, s := range live {
		h, err := c.hello(ctx, s)
		if e := (*Error)(nil); errors.As(err, &e) {
			return nil, fmt.Errorf("%s: %w", s.addr, err)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, DaemonHello{s.addr, h})
	}
	if len(out) == 0 {
		if len(errs) == 0 {
			return c.helloAny(ctx)
		}
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// helloAny is HelloAll when no daemon was connected: the first to be.
func (c *Client) helloAny(ctx context.Context) ([]DaemonHello, error) {
	h, err := c.Hello(ctx)
	if err != nil {
		return nil, err
	}
	return []DaemonHello{{"", h}}, nil
}

func (c *Client) hello(ctx context.Context, pin *slot) (*HelloReply, error) {
	var reply HelloReply
	cn, err := c.call(ctx, MethodHello, fixed(&HelloArgs{Token: c.cfg.Token}), &reply, true, func() bool {
		return shuttingDown(&reply, &reply.Err)
	}, pin)
	if err != nil {
		return nil, err
	}
	if reply.Err != nil {
		return nil, reply.Err
	}
	c.learn(cn, reply.PackedRecords, reply.CallTimeout, reply.Instance, reply.Updates)
	return &reply, nil
}

// Deliver sends records and returns one verdict per record, in order. On a
// *ConnError the outcome of every record is unknown: resend them all with
// MaybeSent set.
//
// A block holding an update (Record.CRMID) goes only to a daemon that said
// it takes updates; for any other the call fails, before anything is sent,
// with a fatal *Error (CodeDaemonPredatesUpdates): such a daemon would
// ignore CRMID and create a duplicate. A record with Fields but no CRMID
// fails the call the same way (CodeMalformedCall).
func (c *Client) Deliver(ctx context.Context, records []Record) ([]Verdict, error) {
	for i := range records {
		if r := &records[i]; !r.IsUpdate() && len(r.Fields) > 0 {
			// A caller's bug: meant as an update, it would be created.
			return nil, &Error{Code: CodeMalformedCall, Message: fmt.Sprintf(
				"record %d (key %q) names fields to update but carries no CRM id: it would be created again; nothing was sent", i, r.Contact.ExternalID)}
		}
	}
	var reply DeliverReply
	var packed string // encoded once, for the first attempt that may use it
	var buf []byte    // packed's bytes, back to the pool when the call is over
	defer func() {
		if buf != nil {
			select {
			case c.packBufs <- buf:
			default:
			}
		}
	}()
	version := int32(PackedVersionOf(records))
	args := func(cn *conn) any {
		if version >= 2 && !cn.updates.Load() {
			return &Error{Code: CodeDaemonPredatesUpdates,
				Message: fmt.Sprintf("daemon %s predates updates: it would create the contacts this block updates; upgrade crmintegrator", cn.addr)}
		}
		if cn.packed.Load() < version {
			return &DeliverArgs{Token: c.cfg.Token, Records: GobRecords(records), PackedVerdicts: true, VerdictsVersion: PackedVerdictsVersion}
		}
		if packed == "" {
			if buf == nil {
				select {
				case buf = <-c.packBufs:
				default:
				}
			}
			buf = AppendPackedRecords(buf[:0], records)
			// The string shares buf's bytes instead of copying them (130
			// MB of the reader's 2.2 GB of allocations per 1M rows):
			// net/rpc encodes the arguments before Go returns, and buf
			// goes back to the pool only once Deliver returns.
			packed = unsafe.String(unsafe.SliceData(buf), len(buf))
		}
		return &DeliverArgs{Token: c.cfg.Token, Packed: packed, PackedVerdicts: true, VerdictsVersion: PackedVerdictsVersion}
	}
	cn, err := c.callGated(ctx, MethodDeliver, args, &reply, false, func() bool {
		return shuttingDown(&reply, &reply.Err)
	}, c.cfg.SendGate, nil)
	if err != nil {
		return nil, err
	}
	c.learn(cn, reply.PackedRecords, reply.CallTimeout, reply.Instance, reply.Updates)
	c.lookups.Add(int64(reply.Lookups))
	if reply.Err != nil {
		return nil, reply.Err
	}
	verdicts := reply.Verdicts
	if reply.PackedVerdicts != "" {
		if verdicts, err = UnpackVerdicts(reply.PackedVerdicts); err != nil {
			return nil, fmt.Errorf("%s: %w", MethodDeliver, err)
		}
	}
	if len(verdicts) != len(records) {
		return nil, fmt.Errorf("%s: %d verdicts for %d records", MethodDeliver, len(verdicts), len(records))
	}
	return verdicts, nil
}

// Lookup asks which CRM ids hold each external id; one result per id, in
// order.
func (c *Client) Lookup(ctx context.Context, ids []string) ([]LookupResult, error) {
	var reply LookupReply
	_, err := c.call(ctx, MethodLookup, fixed(&LookupArgs{Token: c.cfg.Token, ExternalIDs: ids}), &reply, true, func() bool {
		return shuttingDown(&reply, &reply.Err)
	}, nil)
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
