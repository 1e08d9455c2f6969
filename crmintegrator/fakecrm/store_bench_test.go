package fakecrm

import (
	"runtime"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	"crmsync/shared/contact"
)

// BenchmarkStoreCreate fills a store with 1M contacts in 100-contact
// batches shaped like the bench export, as the batch endpoint would: each
// batch is freshly decoded (one string allocation and the attributes as
// sorted Attrs, as crmapi's parser makes them) and handed to create with one
// created_at. Besides the time, it reports what the store costs the
// garbage collector once full: the heap left after a full GC and how long
// that GC took (its mark work is proportional to the pointers it finds),
// and the GC CPU time spent while filling.
//
//	go test -run '^$' -bench BenchmarkStoreCreate -benchtime 1x ./crmintegrator/fakecrm/
func BenchmarkStoreCreate(b *testing.B) {
	const total, size = 1_000_000, 100
	samples := []metrics.Sample{
		{Name: "/cpu/classes/gc/total:cpu-seconds"},
		{Name: "/gc/heap/allocs:objects"},
		{Name: "/gc/heap/allocs:bytes"},
	}
	read := func() (gcCPU float64, objects, bytes uint64) {
		metrics.Read(samples)
		return samples[0].Value.Float64(), samples[1].Value.Uint64(), samples[2].Value.Uint64()
	}
	var storeTime time.Duration
	var storeObjects, storeBytes uint64
	var gcCPU, heapMB, fullGC float64
	ids := make([]string, size)
	batch := make([]contact.Contact, size)
	valid := make([]*contact.Contact, size)
	for b.Loop() {
		st := newStore()
		runtime.GC()
		gc0, _, _ := read()
		for k := 0; k < total; k += size {
			for j := range batch {
				batch[j] = benchContact(k + j)
				valid[j] = &batch[j]
			}
			at := benchCreatedAt(k / size)
			_, o0, b0 := read()
			t0 := time.Now()
			st.create(valid, at, ids)
			storeTime += time.Since(t0)
			_, o1, b1 := read()
			storeObjects += o1 - o0
			storeBytes += b1 - b0
		}
		gc1, _, _ := read()
		gcCPU += gc1 - gc0
		t0 := time.Now()
		runtime.GC()
		fullGC += time.Since(t0).Seconds()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heapMB += float64(ms.HeapAlloc) / (1 << 20)
		if _, contacts, _ := st.counts(); contacts != total {
			b.Fatalf("got %d contacts, want %d", contacts, total)
		}
		runtime.KeepAlive(st)
	}
	n := float64(b.N)
	b.ReportMetric(float64(storeTime.Nanoseconds())/n/total, "store-ns/contact")
	b.ReportMetric(float64(storeObjects)/n/total, "store-allocs/contact")
	b.ReportMetric(float64(storeBytes)/n/total, "store-B/contact")
	b.ReportMetric(gcCPU/n*1e3, "fill-gc-cpu-ms")
	b.ReportMetric(fullGC/n*1e3, "full-gc-ms")
	b.ReportMetric(heapMB/n, "live-heap-MB")
}

// BenchmarkStoreSnapshot decodes 1M stored contacts, as a save of the
// state file or GET /admin/contacts does, and one lookup, as the CRM's
// GET /v1/contacts does.
//
//	go test -run '^$' -bench BenchmarkStoreSnapshot -benchtime 1x ./crmintegrator/fakecrm/
func BenchmarkStoreSnapshot(b *testing.B) {
	const total, size = 1_000_000, 100
	st := newStore()
	ids := make([]string, size)
	batch := make([]contact.Contact, size)
	valid := make([]*contact.Contact, size)
	for k := 0; k < total; k += size {
		for j := range batch {
			batch[j] = benchContact(k + j)
			valid[j] = &batch[j]
		}
		st.create(valid, benchCreatedAt(k/size), ids)
	}
	runtime.GC()
	b.Run("snapshot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if all, _, _ := st.snapshot(); len(all) != total {
				b.Fatalf("got %d contacts, want %d", len(all), total)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/total, "ns/contact")
	})
	b.Run("lookup", func(b *testing.B) {
		b.ReportAllocs()
		ext := benchContact(total / 2).ExternalID
		for b.Loop() {
			if got := st.lookup(ext); len(got) != 1 {
				b.Fatalf("got %d contacts, want 1", len(got))
			}
		}
	})
}

// benchContact is the k-th contact of the bench export, decoded.
func benchContact(k int) contact.Contact {
	firsts := [...]string{"Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret"}
	lasts := [...]string{"Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton"}
	companies := [...]string{"Analytical Engines", "Acme Ltd", "Initech", "Globex"}
	cities := [...]string{"London", "Paris", "Berlin", "Madrid", "Rome"}
	countries := [...]string{"GB", "FR", "DE", "ES", "IT"}
	id := "C" + strconv.Itoa(1_000_000_000 + k)[1:]
	first, last := firsts[k%len(firsts)], lasts[(k/7)%len(lasts)]
	email := id + "." + last + "@example.com"
	phone := "+44 20 7946 " + strconv.Itoa(1000+k%9000)
	company, city, country := companies[k%len(companies)], cities[(k/3)%len(cities)], countries[(k/3)%len(countries)]
	created := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(k) * time.Minute).Format(time.RFC3339)
	// One allocation holds every string, as the parser does it.
	all := id + email + first + last + phone + company + city + country + created
	cut := func(s string) string {
		v := all[:len(s)]
		all = all[len(s):]
		return v
	}
	c := contact.Contact{ExternalID: cut(id), Email: cut(email), FirstName: cut(first), LastName: cut(last), Phone: cut(phone)}
	co, ci, cn, cr := cut(company), cut(city), cut(country), cut(created)
	c.Attributes = contact.Attrs{{Name: "city", Value: ci}, {Name: "company", Value: co}, {Name: "country", Value: cn}, {Name: "created_at", Value: cr}}
	return c
}

// benchCreatedAt is the created_at of the i-th batch.
func benchCreatedAt(i int) string {
	return time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * 1234567 * time.Nanosecond).Format(time.RFC3339Nano)
}
