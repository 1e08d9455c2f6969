package crmrpc

import (
	"bufio"
	"encoding/gob"
	"fmt"
	"io"
	"testing"

	"crmsync/shared/contact"
)

// benchBlock is a block as the 1M-record benchmark's readers send it.
func benchBlock(n int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		id := fmt.Sprintf("B%09d", i)
		recs[i].Contact = contact.Contact{ExternalID: id, Email: id + "@example.com", FirstName: "Ada", LastName: "Lovelace",
			Phone: "+44 20 7946 0000", Attributes: contact.AttrsOf(map[string]string{"company": "Acme Ltd", "city": "London", "country": "GB", "created_at": "2024-01-01T10:00:00Z"})}
	}
	return recs
}

// gobPipe is one gob stream, as one net/rpc connection carries: an encoder
// writing into a pipe a decoder reads, so types are sent once.
type gobPipe struct {
	enc *gob.Encoder
	w   *bufio.Writer
	dec *gob.Decoder
}

func newGobPipe(b *testing.B) *gobPipe {
	pr, pw := io.Pipe()
	b.Cleanup(func() { pr.Close(); pw.Close() })
	w := bufio.NewWriter(pw)
	return &gobPipe{enc: gob.NewEncoder(w), w: w, dec: gob.NewDecoder(bufio.NewReader(pr))}
}

func (p *gobPipe) roundTrip(b *testing.B, in, out any) {
	errc := make(chan error, 1)
	go func() {
		err := p.enc.Encode(in)
		if err == nil {
			err = p.w.Flush()
		}
		errc <- err
	}()
	if err := p.dec.Decode(out); err != nil {
		b.Fatal(err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkCodecRecords measures encoding and decoding the arguments of a
// 1000-record Deliver call on one gob stream, as net/rpc does: the records
// as gob's Records, and packed (encode, gob, decode).
//
//	go test -run '^$' -bench Codec -benchmem ./shared/crmrpc/
func BenchmarkCodecRecords(b *testing.B) {
	recs := benchBlock(1000)
	b.Run("gob", func(b *testing.B) {
		p := newGobPipe(b)
		b.ReportAllocs()
		for b.Loop() {
			var got DeliverArgs
			p.roundTrip(b, &DeliverArgs{Records: GobRecords(recs)}, &got)
		}
	})
	b.Run("packed", func(b *testing.B) {
		p := newGobPipe(b)
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			buf = AppendPackedRecords(buf[:0], recs)
			var got DeliverArgs
			p.roundTrip(b, &DeliverArgs{Packed: string(buf)}, &got)
			if _, err := UnpackRecords(got.Packed, len(recs)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCodecVerdicts measures the reply of a 1000-record Deliver call
// in gob. It is a small fraction of the records' cost, which is why
// verdicts have no packed encoding.
func BenchmarkCodecVerdicts(b *testing.B) {
	vs := make([]Verdict, 1000)
	for i := range vs {
		vs[i] = Verdict{Outcome: Delivered, CRMID: fmt.Sprintf("ct_%016x", i*7919)}
	}
	b.Run("gob", func(b *testing.B) {
		p := newGobPipe(b)
		b.ReportAllocs()
		for b.Loop() {
			var got DeliverReply
			p.roundTrip(b, &DeliverReply{Verdicts: vs}, &got)
		}
	})
}
