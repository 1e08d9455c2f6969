package crmrpc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// PackedVerdictsVersion is the newest version of the packed verdicts
// encoding (DeliverReply.PackedVerdicts) this package writes and reads.
// Version 2 adds the CRMRetryAfter flag; it reads version 1 too.
const PackedVerdictsVersion = 2

// Verdict flags in the packed encoding.
const (
	packedAmbiguous = 1 << iota
	packedNotAttempted
	packedCRMRetryAfter // version 2
)

// packedFlags are the flags each version knows.
var packedFlags = [...]byte{1: packedAmbiguous | packedNotAttempted, 2: packedAmbiguous | packedNotAttempted | packedCRMRetryAfter}

// minPackedVerdict is the fewest bytes a packed verdict takes: outcome,
// flags, RetryAfter and three empty strings.
const minPackedVerdict = 6

// AppendPackedVerdicts appends vs in the packed encoding of version
// (1 or 2; anything newer is written as PackedVerdictsVersion): the
// version byte, a uvarint count, then per verdict its outcome byte, a
// flags byte, RetryAfter in nanoseconds as a uvarint (a negative one as
// 0), and CRMID, Code and Message, each a uvarint length then its bytes.
// gob spent a tenth of a daemon's reply on each verdict's field numbers
// and types. Version 1 drops the flags it does not know.
func AppendPackedVerdicts(b []byte, vs []Verdict, version int) []byte {
	version = min(max(version, 1), PackedVerdictsVersion)
	b = append(b, byte(version))
	b = binary.AppendUvarint(b, uint64(len(vs)))
	for i := range vs {
		v := &vs[i]
		var flags byte
		if v.Ambiguous {
			flags |= packedAmbiguous
		}
		if v.NotAttempted {
			flags |= packedNotAttempted
		}
		if v.CRMRetryAfter {
			flags |= packedCRMRetryAfter
		}
		b = append(b, byte(v.Outcome), flags&packedFlags[version])
		b = binary.AppendUvarint(b, uint64(max(v.RetryAfter, 0)))
		for _, s := range [...]string{v.CRMID, v.Code, v.Message} {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

// UnpackVerdicts reads what AppendPackedVerdicts wrote. It never panics
// and allocates no more than p justifies; anything wrong is an error
// saying what and where (a plain error: the daemon's answer was broken,
// not the call). The strings share p's bytes.
func UnpackVerdicts(p string) ([]Verdict, error) {
	vs, err := unpackVerdicts(p)
	if err != nil {
		return nil, errors.New(err.Message)
	}
	return vs, nil
}

func unpackVerdicts(p string) ([]Verdict, *Error) {
	u := unpacker{p: p, rec: -1, kind: "packed verdicts"}
	if len(p) == 0 {
		return nil, u.fail("", "empty")
	}
	if v := p[0]; v < 1 || v > PackedVerdictsVersion {
		return nil, u.fail("", fmt.Sprintf("version %d, this reader reads versions 1 to %d", v, PackedVerdictsVersion))
	}
	u.flags = packedFlags[p[0]]
	u.off = 1
	n, ok := u.uvarint("verdict count")
	if !ok {
		return nil, u.err
	}
	if left := uint64(len(p) - u.off); n > left/minPackedVerdict {
		return nil, u.fail("verdict count", fmt.Sprintf("%d verdicts cannot fit in the %d bytes left", n, left))
	}
	vs := make([]Verdict, n)
	for i := range vs {
		u.rec = i
		if !u.verdict(&vs[i]) {
			return nil, u.err
		}
	}
	if u.off != len(p) {
		u.rec, u.at = -1, u.off
		return nil, u.fail("", fmt.Sprintf("%d bytes after the last verdict", len(p)-u.off))
	}
	return vs, nil
}

func (u *unpacker) verdict(v *Verdict) bool {
	u.at = u.off
	if u.off+2 > len(u.p) {
		return u.failed("outcome", "truncated")
	}
	v.Outcome, u.off = Outcome(u.p[u.off]), u.off+1
	flags := u.p[u.off]
	if flags&^u.flags != 0 {
		return u.failed("flags", fmt.Sprintf("unknown flags %#x", flags))
	}
	u.off++
	v.Ambiguous, v.NotAttempted = flags&packedAmbiguous != 0, flags&packedNotAttempted != 0
	v.CRMRetryAfter = flags&packedCRMRetryAfter != 0
	d, ok := u.uvarint("retry after")
	if !ok {
		return false
	}
	if d > 1<<62 {
		return u.failed("retry after", fmt.Sprintf("%d ns is out of range", d))
	}
	v.RetryAfter = time.Duration(d)
	for _, f := range [...]struct {
		s    *string
		what string
	}{{&v.CRMID, "crm id"}, {&v.Code, "code"}, {&v.Message, "message"}} {
		if *f.s, ok = u.string(f.what); !ok {
			return false
		}
	}
	return true
}
