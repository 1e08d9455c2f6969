package integrator

// The connection layer: what a peer can make the daemon hold before and
// after it proved it knows the token. Before: a goroutine, a socket and a
// few hundred bytes, for at most HandshakeTimeout, and only MaxConns of
// those (MaxConnsPerPeer per address), the oldest unauthenticated one
// making way for a newer one. After: gob messages of bounded size, each
// within ReadTimeout once begun, with a fixed number of type definitions
// per connection, and no map a sender declares is ever allocated.

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/rpc"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"crmsync/shared/crmrpc"
)

const (
	// maxTypeDefs bounds the gob type definitions one connection may send:
	// they stay in the decoder for the connection's life. A reader sends
	// about a dozen.
	maxTypeDefs = 256
	// smallBudget bounds a request header, a Hello's body and the type
	// definitions sent with them.
	smallBudget = 64 << 10
	// wrongTokenDelay and maxWrongTokenDelay pace the refusals of one
	// peer's wrong tokens: each recent failure doubles the delay.
	wrongTokenDelay    = 100 * time.Millisecond
	maxWrongTokenDelay = 3 * time.Second
	// failMemory is how long a peer's wrong tokens are remembered, and
	// logEvery how often one kind of problem of one peer is logged.
	failMemory = time.Minute
	logEvery   = time.Minute
	// maxPeers bounds the peers remembered (connections, failures, logs).
	maxPeers = 4096
)

// errConnLimit is logged when a connection is refused for want of room.
var errConnLimit = errors.New("connection limit reached")

// Serve accepts RPC connections on ln until Close. It always closes ln and
// returns ErrServerClosed after Close. Accept errors, running out of file
// descriptors included, are logged and waited out, never returned.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept: %w", err)
			}
			tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Make room: the oldest connection that has not
				// authenticated is the cheapest to lose.
				s.evict("")
				s.guard.log(s.log, "accept", "", "out of file descriptors; dropping the oldest unauthenticated connection and waiting", "error", err, "wait", tempDelay)
			} else {
				s.guard.log(s.log, "accept", "", "accept failed; waiting", "error", err, "wait", tempDelay)
			}
			time.Sleep(tempDelay)
			continue
		}
		tempDelay = 0
		sc := newServerConn(c, s.cfg.IdleTimeout)
		if !s.admitConn(sc) {
			c.Close()
			if s.closing.Load() {
				return ErrServerClosed
			}
			continue
		}
		go s.serveConn(sc)
	}
}

// admitConn registers sc, making room under the limits by closing the
// oldest unauthenticated connection (of its peer first); it reports false
// when there is no room, or the server is closing.
func (s *Server) admitConn(sc *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	if s.guard.conns(sc.peer) >= s.cfg.MaxConnsPerPeer && !s.evictLocked(sc.peer) ||
		len(s.conns) >= s.cfg.MaxConns && !s.evictLocked("") {
		s.guard.log(s.log, "limit", sc.peer, "refused a connection", "remote", sc.peer, "error", errConnLimit,
			"max_conns", s.cfg.MaxConns, "max_conns_per_peer", s.cfg.MaxConnsPerPeer)
		return false
	}
	s.conns[sc] = struct{}{}
	s.guard.addConn(sc.peer, 1)
	s.wg.Add(1)
	return true
}

// evict closes the oldest unauthenticated connection (of peer, unless "").
func (s *Server) evict(peer string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.evictLocked(peer)
}

func (s *Server) evictLocked(peer string) bool {
	var oldest *serverConn
	for c := range s.conns {
		if !c.authed.Load() && (peer == "" || c.peer == peer) && (oldest == nil || c.since.Before(oldest.since)) {
			oldest = c
		}
	}
	if oldest == nil {
		return false
	}
	s.releaseLocked(oldest)
	oldest.Close()
	return true
}

// releaseLocked forgets c; once, whoever comes first (eviction or the
// connection's end).
func (s *Server) releaseLocked(c *serverConn) {
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		s.guard.addConn(c.peer, -1)
	}
}

func (s *Server) serveConn(c *serverConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		s.releaseLocked(c)
		s.mu.Unlock()
		c.Close()
	}()
	nc, ok := s.handshake(c)
	if !ok {
		return
	}
	buf := bufio.NewWriter(nc)
	fr := &frameReader{c: c, nc: nc, br: bufio.NewReader(nc), max: s.cfg.MaxMessageBytes, timeout: s.cfg.ReadTimeout}
	s.rpc.ServeCodec(&serverCodec{
		s:   s,
		c:   c,
		fr:  fr,
		dec: gob.NewDecoder(fr),
		enc: gob.NewEncoder(buf),
		buf: buf,
	})
}

// handshake runs TLS (when configured) and the crmsync handshake within
// HandshakeTimeout, and returns the connection to speak gob on once the
// peer is admitted.
func (s *Server) handshake(c *serverConn) (net.Conn, bool) {
	var nc net.Conn = c.raw
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if s.cfg.TLS != nil {
		tc := tls.Server(nc, s.guard.tlsConfig(s.cfg.TLS))
		if err := tc.Handshake(); err != nil {
			if !c.closed() {
				s.guard.log(s.log, "tls", c.peer, "refused a tls handshake", "remote", c.peer, "error", err)
			}
			return nil, false
		}
		nc = tc
	}
	tok, err := crmrpc.ReadClientHandshake(nc)
	switch {
	case errors.Is(err, crmrpc.ErrOldReader):
		s.guard.log(s.log, "old", c.peer, "refused a reader that predates the handshake: it was told to upgrade", "remote", c.peer)
		if crmrpc.WriteUpgradeResponse(nc) == nil {
			lingerClose(nc)
		}
		return nil, false
	case err != nil:
		if !c.closed() {
			s.guard.log(s.log, "handshake", c.peer, "no valid handshake; closing", "remote", c.peer, "error", err)
		}
		return nil, false
	}
	if s.cfg.RPCToken != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.RPCToken)) != 1 {
		wait, fails := s.guard.wrongToken(c.peer, time.Now())
		s.guard.log(s.log, "token", c.peer, "refused a wrong rpc token", "remote", c.peer, "recent_failures", fails, "delay", wait)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.done:
			return nil, false
		}
		nc.SetDeadline(time.Now().Add(time.Second))
		crmrpc.WriteHandshakeRefusal(nc, &crmrpc.Error{Code: crmrpc.CodeUnauthorized,
			Message: "missing or wrong rpc token: set the reader's token to the daemon's -rpc-token"})
		return nil, false
	}
	err = crmrpc.WriteHandshakeOK(nc, crmrpc.HandshakeReply{PackedRecords: s.packedRecords, MaxMessageBytes: s.cfg.MaxMessageBytes,
		CallTimeout: s.callTimeout(), Instance: s.instance, Updates: s.updates})
	if err != nil {
		return nil, false
	}
	nc.SetDeadline(time.Time{})
	c.mu.Lock()
	c.last = time.Now()
	c.mu.Unlock()
	c.authed.Store(true)
	return nc, true
}

// lingerClose half-closes nc and reads what the peer still sends, briefly,
// so that closing does not reset the connection before the peer has read
// our last words (a close with unread data sends RST).
func lingerClose(nc net.Conn) {
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	nc.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, nc, 1<<20)
}

// serverConn is one accepted connection. Its read deadline is an idle
// deadline between messages (IdleTimeout after the last request was read
// or answer written, none while a call runs) and ReadTimeout from the
// start of a message: bytes trickling in reset neither.
type serverConn struct {
	raw    net.Conn
	peer   string // the remote IP
	since  time.Time
	authed atomic.Bool
	done   chan struct{}
	once   sync.Once

	mu      sync.Mutex
	idle    time.Duration
	pending int       // calls whose header was read, not yet answered
	inBody  bool      // a request body is being read
	waiting bool      // the frame reader waits for a message
	last    time.Time // last request read or answer written
}

func newServerConn(c net.Conn, idle time.Duration) *serverConn {
	peer := c.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	return &serverConn{raw: c, peer: peer, since: time.Now(), done: make(chan struct{}), idle: idle}
}

// Close closes the connection (a TLS one too, from under it).
func (c *serverConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.raw.Close()
}

func (c *serverConn) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// idleDeadlineLocked sets nc's read deadline for a wait between messages.
func (c *serverConn) idleDeadlineLocked(nc net.Conn) {
	running := c.pending
	if c.inBody {
		running-- // a call whose body has not arrived is no work in flight
	}
	if c.idle <= 0 || running > 0 {
		nc.SetReadDeadline(time.Time{}) // a slow call is not idleness
		return
	}
	nc.SetReadDeadline(c.last.Add(c.idle))
}

// frameReader passes gob messages from br to the decoder, one whole
// message at a time (gob then copies it whole), after checking the byte count that starts each one
// against max and the budget left for the current request: gob would
// reserve a buffer of the size a message claims (up to 10 MB at once)
// before a byte of it arrived, while here a message costs only what has
// arrived of it. It also counts type definitions and sets the deadlines
// serverConn describes. Errors are sticky.
type frameReader struct {
	c       *serverConn
	nc      net.Conn
	br      *bufio.Reader
	max     int
	timeout time.Duration
	budget  int      // bytes the messages of the current phase may still take
	skip    int      // a message over the limits but not over this is skipped, not fatal
	msg     [][]byte // what is left of the current message, count included
	defs    int      // type definitions so far
	err     error
}

// chunkBytes is the unit in which a message's bytes are read and held: a
// message costs what has arrived of it, rounded up to this.
const chunkBytes = 64 << 10

// errMessageTooLarge is wrapped by the errors of messages over a limit.
var errMessageTooLarge = errors.New("rpc message too large")

// skippedError is a message over the limit that was read and dropped as
// it arrived: the stream is still in step, so the call is refused with a
// message that says what to change, and the connection goes on.
type skippedError struct{ size, limit int }

func (e *skippedError) Error() string {
	return fmt.Sprintf("rpc message of %d bytes over the daemon's limit of %d: lower the reader's -block-size, or raise the daemon's -max-message-bytes", e.size, e.limit)
}

func (e *skippedError) Is(target error) bool { return target == errMessageTooLarge }

func (f *frameReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if len(f.msg) == 0 {
		err := f.next()
		if _, skipped := err.(*skippedError); skipped {
			return 0, err
		}
		if f.err = err; f.err != nil {
			return 0, f.err
		}
	}
	n := copy(p, f.msg[0])
	if f.msg[0] = f.msg[0][n:]; len(f.msg[0]) == 0 {
		f.msg[0] = nil
		f.msg = f.msg[1:]
	}
	return n, nil
}

// next reads a whole message into f.msg.
func (f *frameReader) next() error {
	f.c.mu.Lock()
	f.c.waiting = true
	f.c.idleDeadlineLocked(f.nc)
	f.c.mu.Unlock()
	b, err := f.br.Peek(1)
	f.c.mu.Lock()
	f.c.waiting = false
	if err == nil && f.timeout > 0 {
		f.nc.SetReadDeadline(time.Now().Add(f.timeout))
	}
	f.c.mu.Unlock()
	if err != nil {
		return err
	}
	// gob's count: one byte below 0x80, else minus the number of
	// big-endian bytes that follow.
	prefix, size := 1, uint64(b[0])
	if b[0] >= 0x80 {
		n := -int(int8(b[0]))
		if n < 1 || n > 8 {
			return fmt.Errorf("rpc: malformed message length")
		}
		hdr, err := f.br.Peek(1 + n)
		if err != nil {
			return err
		}
		size = 0
		for _, x := range hdr[1:] {
			size = size<<8 | uint64(x)
		}
		prefix += n
	}
	if size == 0 {
		return fmt.Errorf("rpc: empty message")
	}
	if size > uint64(f.max) || size > uint64(f.budget) {
		limit := f.budget
		if size > uint64(f.max) {
			limit = f.max
		}
		if size <= uint64(f.skip) {
			// Costs the bandwidth, within the message deadline, not memory.
			if _, err := io.CopyN(io.Discard, f.br, int64(prefix)+int64(size)); err != nil {
				return err
			}
			return &skippedError{int(size), limit}
		}
		return fmt.Errorf("%w: %d bytes (the limit here is %d)", errMessageTooLarge, size, min(f.max, f.budget))
	}
	f.budget -= int(size)
	hdr, err := f.br.Peek(prefix + int(min(size, 9)))
	if err != nil {
		return err
	}
	id, ok := gobInt(hdr[prefix:])
	if !ok {
		return fmt.Errorf("rpc: malformed message type")
	}
	if id < 0 {
		if f.defs++; f.defs > maxTypeDefs {
			return fmt.Errorf("rpc: more than %d type definitions on one connection", maxTypeDefs)
		}
	}
	// Chunk by chunk as bytes arrive, never the claim at once.
	f.msg = f.msg[:0]
	for left := prefix + int(size); left > 0; {
		c := make([]byte, min(left, chunkBytes))
		if _, err := io.ReadFull(f.br, c); err != nil {
			f.msg = nil
			return err
		}
		f.msg = append(f.msg, c)
		left -= len(c)
	}
	return nil
}

// gobInt decodes the signed integer gob starts a message with (the type
// id: negative for a type definition).
func gobInt(b []byte) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	u := uint64(b[0])
	if b[0] >= 0x80 {
		n := -int(int8(b[0]))
		if n < 1 || n > 8 || len(b) < 1+n {
			return 0, false
		}
		u = 0
		for _, x := range b[1 : 1+n] {
			u = u<<8 | uint64(x)
		}
	}
	if u&1 != 0 {
		return ^int64(u >> 1), true
	}
	return int64(u >> 1), true
}

// serverCodec is net/rpc's gob codec plus the bookkeeping Close needs (a
// call counts as active from its header until its answer is written), a
// budget per request, and a decoding of DeliverArgs that allocates
// nothing for Records a sender declares.
type serverCodec struct {
	s      *Server
	c      *serverConn
	fr     *frameReader
	dec    *gob.Decoder
	enc    *gob.Encoder
	buf    *bufio.Writer
	closed bool
}

func (c *serverCodec) ReadRequestHeader(r *rpc.Request) error {
	c.fr.budget, c.fr.skip = smallBudget, 0
	if err := c.decode(r); err != nil {
		c.logLimit(err)
		return err
	}
	c.c.mu.Lock()
	c.c.pending++
	c.c.inBody = true
	c.c.mu.Unlock()
	c.s.active.Add(1)
	c.s.reading.Add(1)
	return nil
}

// deliverWire is DeliverArgs as a daemon that reads packed records
// decodes it: the elements of Records are empty structs, so what a sender
// declares in them (an attributes map of 2^25 entries) is skipped, never
// allocated. Readers send Packed to such a daemon from their first call:
// its handshake says so.
type deliverWire struct {
	Token   string
	Records []struct{}
	Packed  string
}

// ReadRequestBody is called exactly once after every header read, with a
// nil body when the header names no known method.
func (c *serverCodec) ReadRequestBody(body any) error {
	defer func() {
		c.c.mu.Lock()
		c.c.inBody = false
		c.c.last = time.Now()
		c.c.mu.Unlock()
		c.s.reading.Add(-1)
	}()
	cfg := &c.s.cfg
	switch args := body.(type) {
	case *crmrpc.LookupArgs:
		c.fr.budget = smallBudget + cfg.MaxRecords*(cfg.MaxFieldBytes+10)
	case *crmrpc.DeliverArgs:
		// A block too large is a reader's setting, not an attack: it is
		// refused with what to change (up to 4 times the limit).
		c.fr.budget, c.fr.skip = cfg.MaxMessageBytes, 4*cfg.MaxMessageBytes
		if c.s.packedRecords >= crmrpc.PackedVersion {
			var w deliverWire
			if err := c.decode(&w); err != nil {
				c.logLimit(err)
				return err
			}
			if len(w.Records) > 0 {
				return fmt.Errorf("records sent as gob Records: this daemon reads packed records only; upgrade csvreader")
			}
			args.Token, args.Packed = w.Token, w.Packed
			return nil
		}
	default:
		c.fr.budget = smallBudget
	}
	err := c.decode(body)
	c.logLimit(err)
	return err
}

// logLimit logs a message over a limit, once in a while per peer.
func (c *serverCodec) logLimit(err error) {
	if se := (*skippedError)(nil); errors.As(err, &se) {
		c.s.guard.log(c.s.log, "size", c.c.peer, "refused an rpc call over the message limit", "remote", c.c.peer, "error", err)
	} else if errors.Is(err, errMessageTooLarge) {
		c.s.guard.log(c.s.log, "size", c.c.peer, "refused an rpc message over the limit; closing", "remote", c.c.peer, "error", err)
	}
}

// decode is dec.Decode, except that a panic becomes an error and hangs up.
// encoding/gob can panic on crafted input (a nil pointer dereference while
// skipping a value of a malformed type, found by FuzzRPCWire), and on a
// connection goroutine that would take the whole daemon down. The decoder
// may be out of step after any error, so the connection is closed.
func (c *serverCodec) decode(v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			c.s.guard.log(c.s.log, "panic", c.c.peer, "undecodable rpc request; closing the connection", "remote", c.c.peer, "panic", fmt.Sprint(p))
			err = fmt.Errorf("rpc: undecodable request: %v", p)
		}
		if se := (*skippedError)(nil); err != nil && !errors.As(err, &se) {
			c.fr.err = err // net/rpc may read on after a bad body: stop it
			c.c.Close()
		}
	}()
	return c.dec.Decode(v)
}

func (c *serverCodec) WriteResponse(r *rpc.Response, body any) (err error) {
	defer func() {
		c.c.mu.Lock()
		c.c.pending--
		c.c.last = time.Now()
		if c.c.waiting {
			c.c.idleDeadlineLocked(c.fr.nc)
		}
		c.c.mu.Unlock()
		c.s.active.Add(-1)
	}()
	if err = c.enc.Encode(r); err != nil {
		if c.buf.Flush() == nil {
			// Gob couldn't encode the header. Should not happen, so if it
			// does, shut down the connection to signal that it did.
			c.Close()
		}
		return err
	}
	if err = c.enc.Encode(body); err != nil {
		if c.buf.Flush() == nil {
			c.Close()
		}
		return err
	}
	return c.buf.Flush()
}

func (c *serverCodec) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return c.c.Close()
}

// connGuard keeps what the connection layer knows per peer: connections,
// recent wrong tokens, and when each kind of problem was last logged. Its
// zero value is ready to use.
type connGuard struct {
	mu    sync.Mutex
	peers map[string]*peerState
	logs  map[string]*logState
	tls   *tls.Config
	once  sync.Once
	// pace overrides wrongTokenDelay and maxWrongTokenDelay when set
	// (tests that send many wrong tokens).
	pace, maxPace time.Duration
}

type peerState struct {
	conns    int
	fails    int       // wrong tokens within failMemory of each other
	lastFail time.Time // of the last one
	next     time.Time // when the next refusal may be answered
}

type logState struct {
	at         time.Time
	suppressed int
}

// tlsConfig is cfg restricted to modern protocols and suites, made once.
func (g *connGuard) tlsConfig(cfg *tls.Config) *tls.Config {
	g.once.Do(func() { g.tls = crmrpc.ModernTLS(cfg) })
	return g.tls
}

func (g *connGuard) peerLocked(peer string, now time.Time) *peerState {
	if g.peers == nil {
		g.peers = map[string]*peerState{}
	}
	p := g.peers[peer]
	if p == nil {
		if len(g.peers) >= maxPeers {
			for k, q := range g.peers {
				if q.conns == 0 && now.Sub(q.lastFail) > failMemory {
					delete(g.peers, k)
				}
			}
		}
		if len(g.peers) >= maxPeers { // all recent: forget any idle one
			for k, q := range g.peers {
				if q.conns == 0 {
					delete(g.peers, k)
					break
				}
			}
		}
		p = &peerState{}
		g.peers[peer] = p
	}
	return p
}

func (g *connGuard) conns(peer string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p := g.peers[peer]; p != nil {
		return p.conns
	}
	return 0
}

func (g *connGuard) addConn(peer string, n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.peerLocked(peer, time.Now())
	p.conns += n
	if p.conns <= 0 && time.Since(p.lastFail) > failMemory {
		delete(g.peers, peer)
	}
}

// wrongToken records a wrong token from peer at now and returns how long
// to hold the refusal back: the peer's refusals are answered one after
// the other, each recent failure doubling the gap, so that guessing from
// many connections at once is no faster than from one.
func (g *connGuard) wrongToken(peer string, now time.Time) (time.Duration, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.peerLocked(peer, now)
	if now.Sub(p.lastFail) > failMemory {
		p.fails = 0
	}
	p.fails++
	p.lastFail = now
	base, most := wrongTokenDelay, maxWrongTokenDelay
	if g.pace > 0 {
		base, most = g.pace, g.maxPace
	}
	gap := min(base<<min(p.fails-1, 16), most)
	at := p.next
	if at.Before(now) {
		at = now
	}
	at = at.Add(gap)
	p.next = at
	return at.Sub(now), p.fails
}

// log logs msg at most once per logEvery for each kind and peer, with the
// number of times it was left out since.
func (g *connGuard) log(l *slog.Logger, kind, peer, msg string, attrs ...any) {
	now := time.Now()
	key := kind + "|" + peer
	g.mu.Lock()
	if g.logs == nil {
		g.logs = map[string]*logState{}
	}
	st := g.logs[key]
	if st == nil {
		if len(g.logs) >= maxPeers {
			for k, v := range g.logs {
				if now.Sub(v.at) > logEvery {
					delete(g.logs, k)
				}
			}
		}
		if len(g.logs) >= maxPeers {
			key = kind + "|other peers" // too many peers: one line for the rest
			if st = g.logs[key]; st == nil {
				st = &logState{}
				g.logs[key] = st
			}
		} else {
			st = &logState{}
			g.logs[key] = st
		}
	}
	if !st.at.IsZero() && now.Sub(st.at) < logEvery {
		st.suppressed++
		g.mu.Unlock()
		return
	}
	suppressed := st.suppressed
	st.at, st.suppressed = now, 0
	g.mu.Unlock()
	if suppressed > 0 {
		attrs = append(attrs, "suppressed_since_last", suppressed)
	}
	l.Log(context.Background(), slog.LevelWarn, msg, attrs...)
}
