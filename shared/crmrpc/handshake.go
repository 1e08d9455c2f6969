package crmrpc

// The handshake opens every connection (after TLS, before any gob byte):
// the daemon learns the reader's token from a message of bounded size
// before it decodes anything with encoding/gob, which sizes maps and
// buffers from lengths the sender declares and so cannot be fed bytes
// from a stranger.
//
//	reader → daemon: HandshakeMagic, version byte, uint32 token length
//	                 (big-endian, at most MaxTokenBytes), the token
//	daemon → reader: status byte, uint32 payload length (at most
//	                 maxReplyBytes), payload
//
// Status handshakeOK's payload is the daemon's limits (uvarints, see
// HandshakeReply); a refusal's is "code\nmessage". Then both sides speak
// net/rpc's gob codec, as before.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"time"
)

// HandshakeMagic starts the reader's first message. Its first byte is
// zero, which no gob stream starts with (a gob message's byte count is
// never zero), so the daemon tells an old reader from a new one by it.
const HandshakeMagic = "\x00crmsync"

// HandshakeVersion is the version of the handshake this package speaks.
const HandshakeVersion = 1

// MaxTokenBytes is the longest RPC token a handshake may carry.
const MaxTokenBytes = 4096

const (
	maxReplyBytes    = 64 << 10
	handshakeOK      = 0
	handshakeRefused = 1
	// handshakeUpdates is the features bit of HandshakeReply.Updates.
	handshakeUpdates = 1
)

// HandshakeReply is what the daemon tells a reader it admitted.
type HandshakeReply struct {
	// PackedRecords is HelloReply.PackedRecords: the client sends
	// packed records from the first call on.
	PackedRecords int
	// MaxMessageBytes is the largest gob message the daemon reads; a
	// longer one closes the connection.
	MaxMessageBytes int
	// CallTimeout and Instance are HelloReply's: the bound of the
	// daemon's calls and the name of its process, known to the client
	// before its first call on the connection.
	CallTimeout time.Duration
	Instance    string
	// Updates is HelloReply.Updates.
	Updates bool
}

// Handshake errors a daemon tells apart.
var (
	// ErrOldReader: the peer spoke gob from its first byte, as readers
	// that predate the handshake do. Answer it with WriteUpgradeResponse.
	ErrOldReader = errors.New("peer speaks net/rpc without the crmsync handshake (an old csvreader?)")
	// ErrBadHandshake: neither a handshake nor gob.
	ErrBadHandshake = errors.New("malformed handshake")
)

// ClientHandshake sends token on c and reads the daemon's answer, all
// before deadline. A refusal is an *Error (CodeUnauthorized for a wrong
// token), which is fatal.
func ClientHandshake(c net.Conn, token string, deadline time.Time) (*HandshakeReply, error) {
	if len(token) > MaxTokenBytes {
		return nil, &Error{Code: CodeUnauthorized, Message: fmt.Sprintf("the rpc token is longer than %d bytes", MaxTokenBytes)}
	}
	c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	msg := make([]byte, 0, len(HandshakeMagic)+5+len(token))
	msg = append(msg, HandshakeMagic...)
	msg = append(msg, HandshakeVersion)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(token)))
	msg = append(msg, token...)
	if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("handshake: the daemon hung up without answering: is it a crmintegrator older than this reader (upgrade it), or does it want TLS (-tls)? %w", err)
		}
		return nil, fmt.Errorf("handshake: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxReplyBytes {
		return nil, fmt.Errorf("handshake: the daemon's answer claims %d bytes: not a crmintegrator", n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(c, payload); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	switch hdr[0] {
	case handshakeOK:
		var r HandshakeReply
		rd := bytes.NewReader(payload)
		for _, p := range []*int{&r.PackedRecords, &r.MaxMessageBytes} {
			v, err := binary.ReadUvarint(rd)
			if err != nil {
				return nil, fmt.Errorf("handshake: unreadable answer: %w", err)
			}
			*p = int(min(v, 1<<31))
		}
		// Then the call bound (ms) and the instance, length-prefixed;
		// later fields, from newer daemons, are ignored.
		if ms, err := binary.ReadUvarint(rd); err == nil {
			r.CallTimeout = time.Duration(min(ms, 1<<40)) * time.Millisecond
			if n, err := binary.ReadUvarint(rd); err == nil && n <= 64 && int(n) <= rd.Len() {
				b := make([]byte, n)
				rd.Read(b)
				r.Instance = string(b)
				// Then the daemon's features, a bit set: 1 updates.
				if f, err := binary.ReadUvarint(rd); err == nil {
					r.Updates = f&handshakeUpdates != 0
				}
			}
		}
		return &r, nil
	case handshakeRefused:
		code, msg, _ := bytes.Cut(payload, []byte("\n"))
		return nil, &Error{Code: string(code), Message: string(msg)}
	}
	return nil, fmt.Errorf("handshake: unknown status %d: not a crmintegrator", hdr[0])
}

// ReadClientHandshake reads a reader's handshake from r and returns its
// token. It reads at most len(HandshakeMagic)+5+MaxTokenBytes bytes, and
// only the magic's 8 bytes from an old reader (ErrOldReader).
func ReadClientHandshake(r io.Reader) (string, error) {
	var hdr [len(HandshakeMagic) + 5]byte
	if _, err := io.ReadFull(r, hdr[:1]); err != nil {
		return "", err
	}
	if hdr[0] != 0 {
		return "", ErrOldReader
	}
	if _, err := io.ReadFull(r, hdr[1:]); err != nil {
		return "", err
	}
	if string(hdr[:len(HandshakeMagic)]) != HandshakeMagic {
		return "", fmt.Errorf("%w: wrong magic", ErrBadHandshake)
	}
	if v := hdr[len(HandshakeMagic)]; v != HandshakeVersion {
		return "", fmt.Errorf("%w: version %d, this daemon speaks %d", ErrBadHandshake, v, HandshakeVersion)
	}
	n := binary.BigEndian.Uint32(hdr[len(HandshakeMagic)+1:])
	if n > MaxTokenBytes {
		return "", fmt.Errorf("%w: a token of %d bytes (at most %d)", ErrBadHandshake, n, MaxTokenBytes)
	}
	tok := make([]byte, n)
	if _, err := io.ReadFull(r, tok); err != nil {
		return "", err
	}
	return string(tok), nil
}

// WriteHandshakeOK admits the reader.
func WriteHandshakeOK(w io.Writer, r HandshakeReply) error {
	var p []byte
	p = binary.AppendUvarint(p, uint64(max(r.PackedRecords, 0)))
	p = binary.AppendUvarint(p, uint64(max(r.MaxMessageBytes, 0)))
	p = binary.AppendUvarint(p, uint64(max(r.CallTimeout.Milliseconds(), 0)))
	p = binary.AppendUvarint(p, uint64(len(r.Instance)))
	p = append(p, r.Instance...)
	var features uint64
	if r.Updates {
		features |= handshakeUpdates
	}
	p = binary.AppendUvarint(p, features)
	return writeHandshakeReply(w, handshakeOK, p)
}

// WriteHandshakeRefusal refuses the reader; it sees an *Error.
func WriteHandshakeRefusal(w io.Writer, e *Error) error {
	return writeHandshakeReply(w, handshakeRefused, []byte(e.Code+"\n"+e.Message))
}

func writeHandshakeReply(w io.Writer, status byte, p []byte) error {
	p = p[:min(len(p), maxReplyBytes)]
	msg := append([]byte{status}, binary.BigEndian.AppendUint32(nil, uint32(len(p)))...)
	_, err := w.Write(append(msg, p...))
	return err
}

// WriteUpgradeResponse answers the first call of a reader that predates
// the handshake with a net/rpc error (what its rpc.Client reads as a
// ServerError for the call numbered 0, its first), rather than leaving it
// to wait or to read a hang-up as a network failure.
func WriteUpgradeResponse(w io.Writer) error {
	var b bytes.Buffer
	enc := gob.NewEncoder(&b)
	msg := "crmintegrator: this reader predates the connection handshake the daemon requires: upgrade csvreader to the daemon's version"
	if err := enc.Encode(&rpc.Response{Seq: 0, Error: msg}); err != nil {
		return err
	}
	if err := enc.Encode(struct{}{}); err != nil {
		return err
	}
	_, err := w.Write(b.Bytes())
	return err
}

// ModernCipherSuites are the TLS 1.2 suites both programs allow: ECDHE key
// exchange with an AEAD cipher (no CBC, no SHA-1, no RSA key exchange).
// TLS 1.3's suites are all of that kind and are not configurable.
var ModernCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ModernTLS returns a clone of cfg restricted to TLS 1.2 with
// ModernCipherSuites, or TLS 1.3.
func ModernTLS(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	cfg.CipherSuites = ModernCipherSuites
	return cfg
}

// CodeTLSRefused: the TLS handshake failed for a reason retrying cannot
// fix (a certificate the other side does not trust, no common protocol
// version or suite). Fatal.
const CodeTLSRefused = "tls_refused"

// tlsFatal turns a TLS handshake error that cannot succeed on retry into a
// fatal *Error; other errors (a timeout, a reset) are returned as they are.
func tlsFatal(err error) error {
	var (
		cve *tls.CertificateVerificationError
		ua  x509.UnknownAuthorityError
		he  x509.HostnameError
		ci  x509.CertificateInvalidError
		rh  tls.RecordHeaderError
		oe  *net.OpError
	)
	switch {
	case errors.As(err, &cve), errors.As(err, &ua), errors.As(err, &he), errors.As(err, &ci):
		return &Error{Code: CodeTLSRefused, Message: fmt.Sprintf("the daemon's certificate is not trusted (%v): check -tls-ca and -tls-server-name", err)}
	case errors.As(err, &oe) && oe.Op == "remote error": // a TLS alert from the daemon
		return &Error{Code: CodeTLSRefused, Message: fmt.Sprintf("the daemon refused the TLS handshake (%v): check the client certificate (-tls-cert) and that both sides allow TLS 1.2+ with modern suites", err)}
	case errors.As(err, &rh):
		return &Error{Code: CodeTLSRefused, Message: fmt.Sprintf("the daemon does not speak TLS (%v): drop -tls or enable TLS on the daemon", err)}
	}
	return err
}
