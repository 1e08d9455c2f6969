package fakecrm

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"crmsync/crmintegrator/crmapi"
	"crmsync/shared/contact"
)

func TestIDCode(t *testing.T) {
	tests := []struct {
		id   string
		want uint64
	}{
		{"ct_00000001", 2},
		{"ct_00000000", 1},
		{"ct_00000042", 43},
		{"ct_99999999", 100000000},
		{"ct_123456789", 123456790},
		{"ct_18446744073709551614", math.MaxUint64},
		{"ct_18446744073709551615", 0}, // n+1 would overflow
		{"ct_18446744073709551616", 0}, // not a uint64
		{"ct_0000001", 0},              // seven digits
		{"ct_012345678", 0},            // a leading zero beyond eight digits
		{"ct_+0000001", 0},
		{"ct_0000000a", 0},
		{"ct_0000_001", 0},
		{"CT_00000001", 0},
		{"ct00000001", 0},
		{"c1", 0},
		{"", 0},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			got := idCode(tc.id)
			if got != tc.want {
				t.Fatalf("idCode(%q) = %d, want %d", tc.id, got, tc.want)
			}
			if got > 0 && formatID(got-1) != tc.id {
				t.Errorf("formatID(%d) = %q, want %q", got-1, formatID(got-1), tc.id)
			}
		})
	}
}

// oddContact is the i-th contact of the odd kind: every field in turn
// empty, long (a length that takes a two-byte uvarint), or full of bytes a
// careless encoding would trip on.
func oddContact(i int, ext string) contact.Contact {
	odd := []string{"", "plain", "ünïcödé ✓ 🎉", "nul\x00byte", "quote\" back\\slash", "\u2028line\nbreak\t", strings.Repeat("long", 100), "\xff not utf-8"}
	pick := func(k int) string { return odd[(i+k)%len(odd)] }
	c := contact.Contact{ExternalID: ext, Email: pick(0) + "@example.com", FirstName: pick(1), LastName: pick(2), Phone: pick(3)}
	switch i % 4 {
	case 0: // nil attributes
	case 1:
		c.Attributes = contact.AttrsOf(map[string]string{})
	default:
		c.Attributes = contact.AttrsOf(map[string]string{"company": pick(4), pick(5) + "k": pick(6), "": pick(7)})
	}
	return c
}

// modelStore is what the store must behave like: every contact kept as it
// came, looked up by a scan.
type modelStore struct {
	contacts []crmapi.StoredContact
	nextID   uint64
	creates  int64
}

func (m *modelStore) create(cs []*contact.Contact, createdAt string) {
	for _, c := range cs {
		m.contacts = append(m.contacts, crmapi.StoredContact{ID: formatID(m.nextID), Contact: *c, CreatedAt: createdAt})
		m.nextID++
	}
	m.creates += int64(len(cs))
}

func (m *modelStore) lookup(ext string) []crmapi.StoredContact {
	out := []crmapi.StoredContact{}
	for _, c := range m.contacts {
		if c.ExternalID == ext {
			out = append(out, c)
		}
	}
	return out
}

func (m *modelStore) distinct() int64 {
	seen := map[string]bool{}
	for _, c := range m.contacts {
		seen[c.ExternalID] = true
	}
	return int64(len(seen))
}

// checkLikeModel compares everything the store answers with the model.
func checkLikeModel(t *testing.T, st *store, m *modelStore, exts []string) {
	t.Helper()
	all, nextID, _ := st.snapshot()
	if len(all) != len(m.contacts) || nextID != m.nextID {
		t.Fatalf("got %d contacts and next id %d, want %d and %d", len(all), nextID, len(m.contacts), m.nextID)
	}
	for i := range all {
		if !reflect.DeepEqual(all[i], m.contacts[i]) {
			t.Fatalf("contact %d: got %+v, want %+v", i, all[i], m.contacts[i])
		}
	}
	for _, ext := range append(exts, "never stored") {
		if got, want := st.lookup(ext), m.lookup(ext); !reflect.DeepEqual(got, want) {
			t.Fatalf("lookup(%q): got %+v, want %+v", ext, got, want)
		}
	}
	creates, contacts, distinct := st.counts()
	if creates != m.creates || contacts != int64(len(m.contacts)) || distinct != m.distinct() {
		t.Fatalf("counts = %d, %d, %d; want %d, %d, %d", creates, contacts, distinct, m.creates, len(m.contacts), m.distinct())
	}
}

// TestStoreLikeModel creates batches of odd contacts, many of them
// duplicates, across chunk boundaries and with created_at changing now and
// then, and checks every answer against the model, with the real hash and
// with hashes that collide.
func TestStoreLikeModel(t *testing.T) {
	hashes := []struct {
		name string
		hash func(string) uint64
	}{
		{"maphash", nil},
		{"all collide", func(string) uint64 { return 7 }},
		{"by length", func(s string) uint64 { return uint64(len(s)) }},
	}
	for _, h := range hashes {
		t.Run(h.name, func(t *testing.T) {
			st := newStore()
			if h.hash != nil {
				st.hash = h.hash
			}
			m := &modelStore{nextID: 1}
			rng := rand.New(rand.NewPCG(1, 2))
			exts := []string{"", "a", "b", "ab", "x\x00y", "ünï", strings.Repeat("z", 200)}
			for i := range 40 {
				exts = append(exts, "E"+strconv.Itoa(i))
			}
			total := 2*chunkSize + 300
			if h.name != "maphash" {
				total = chunkSize + 300 // chains as long as the store: keep it quadratic but small
			}
			createdAt := "2024-01-02T03:04:05Z"
			for k := 0; k < total; {
				n := 1 + rng.IntN(150)
				if rng.IntN(3) == 0 {
					createdAt = "2024-01-02T03:04:05." + strconv.Itoa(k) + "Z"
				}
				batch := make([]contact.Contact, n)
				cs := make([]*contact.Contact, n)
				for j := range batch {
					batch[j] = oddContact(k+j, exts[rng.IntN(len(exts))])
					cs[j] = &batch[j]
				}
				ids := make([]string, n)
				st.create(cs, createdAt, ids)
				for j, id := range ids {
					if want := formatID(m.nextID + uint64(j)); id != want {
						t.Fatalf("create gave id %s, want %s", id, want)
					}
				}
				m.create(cs, createdAt)
				k += n
			}
			checkLikeModel(t, st, m, exts)

			// replace rebuilds the same store from a snapshot, with ids
			// that are not the store's own kept as they are.
			all, nextID, _ := st.snapshot()
			foreign := []string{"legacy", "", "ct_1", "ct_000000007", "ct_18446744073709551615"}
			for i := range all {
				if i%5 == 0 {
					all[i].ID = foreign[(i/5)%len(foreign)]
				}
			}
			m.contacts, m.nextID, m.creates = cloneContacts(all), nextID+10, 0
			other := newStore()
			if h.hash != nil {
				other.hash = h.hash
			}
			other.replace(all, nextID+10)
			checkLikeModel(t, other, m, exts)

			// New contacts continue the sequence after a replace.
			c := oddContact(3, "a")
			ids := make([]string, 1)
			other.create([]*contact.Contact{&c}, "later", ids)
			m.create([]*contact.Contact{&c}, "later")
			checkLikeModel(t, other, m, exts)

			other.replace(nil, 1)
			m = &modelStore{nextID: 1}
			checkLikeModel(t, other, m, exts)
		})
	}
}

func TestStoreDuplicatesOldestFirst(t *testing.T) {
	st := newStore()
	mk := func(ext, email, company string) *contact.Contact {
		return &contact.Contact{ExternalID: ext, Email: email, FirstName: "F-" + email, Attributes: contact.AttrsOf(map[string]string{"company": company})}
	}
	ids := make([]string, 3)
	st.create([]*contact.Contact{mk("dup", "one@x.co", "A"), mk("other", "o@x.co", "O"), mk("dup", "two@x.co", "B")}, "t1", ids)
	// Fill past a chunk boundary so the last duplicate lives in another chunk.
	filler := make([]*contact.Contact, chunkSize)
	for i := range filler {
		filler[i] = mk("f"+strconv.Itoa(i), "f@x.co", "F")
	}
	st.create(filler, "t2", make([]string, len(filler)))
	st.create([]*contact.Contact{mk("dup", "three@x.co", "C")}, "t3", ids[:1])

	want := []crmapi.StoredContact{
		{ID: "ct_00000001", Contact: *mk("dup", "one@x.co", "A"), CreatedAt: "t1"},
		{ID: "ct_00000003", Contact: *mk("dup", "two@x.co", "B"), CreatedAt: "t1"},
		{ID: formatID(chunkSize + 4), Contact: *mk("dup", "three@x.co", "C"), CreatedAt: "t3"},
	}
	if got := st.lookup("dup"); !reflect.DeepEqual(got, want) {
		t.Errorf("lookup(dup):\n got %+v\nwant %+v", got, want)
	}
	if got := st.lookup("missing"); got == nil || len(got) != 0 {
		t.Errorf("lookup(missing) = %#v, want an empty, non-nil slice", got)
	}
	if creates, contacts, distinct := st.counts(); creates != chunkSize+4 || contacts != chunkSize+4 || distinct != chunkSize+2 {
		t.Errorf("counts = %d, %d, %d; want %d, %d, %d", creates, contacts, distinct, chunkSize+4, chunkSize+4, chunkSize+2)
	}
}

// TestStateRoundTripOddContacts saves duplicates with odd attributes and
// ids that are not the store's own, and reads them back unchanged.
func TestStateRoundTripOddContacts(t *testing.T) {
	file := filepath.Join(t.TempDir(), "crm.json")
	legacy := []crmapi.StoredContact{
		{ID: "legacy-1", Contact: contact.Contact{ExternalID: "dup", Email: "l@x.co", Attributes: contact.AttrsOf(map[string]string{"k": "v"})}, CreatedAt: "2020-01-01T00:00:00Z"},
		{ID: "ct_7", Contact: contact.Contact{ExternalID: "dup", Email: "m@x.co"}, CreatedAt: "2020-01-01T00:00:00Z"},
	}
	b, err := json.Marshal(stateFile{Version: stateVersion, NextID: 5, Contacts: legacy})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s1, err := New(Config{StateFile: file})
	if err != nil {
		t.Fatal(err)
	}
	// The API refuses invalid UTF-8, and JSON would not keep it.
	valid := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
	var batch []contact.Contact
	for i := range 20 {
		c := oddContact(i, []string{"dup", "ünï\x00", `"q"`, "dup"}[i%4])
		c.Email, c.FirstName, c.LastName, c.Phone = valid(c.Email), valid(c.FirstName), valid(c.LastName), valid(c.Phone)
		c.Attributes = contact.AttrsOf(map[string]string{"odd \" \\ \u2028 \x00 🎉 <&>": valid(oddContact(i+1, "").FirstName), "created_at": "x"})
		batch = append(batch, c)
	}
	cs := make([]*contact.Contact, len(batch))
	for i := range batch {
		cs[i] = &batch[i]
	}
	s1.store.create(cs[:10], "2024-01-02T03:04:05.123Z", make([]string, 10))
	s1.store.create(cs[10:], "2024-01-02T03:04:06Z", make([]string, 10))
	want := s1.Contacts()
	wantDup := s1.store.lookup("dup")
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := New(Config{StateFile: file})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	// JSON drops an empty attributes map (omitempty); nothing else changes.
	for i := range want {
		if len(want[i].Attributes) == 0 {
			want[i].Attributes = nil
		}
	}
	if got := s2.Contacts(); !reflect.DeepEqual(got, want) {
		t.Errorf("after reload:\n got %+v\nwant %+v", got, want)
	}
	if got := s2.store.lookup("dup"); len(got) != len(wantDup) || len(got) != 12 || got[0].ID != "legacy-1" || got[1].ID != "ct_7" || got[2].ID != "ct_00000005" {
		t.Errorf("lookup(dup) after reload: got %+v", got)
	}
	for i, c := range s2.store.lookup("dup") {
		if c.ID != wantDup[i].ID || c.Email != wantDup[i].Email || c.CreatedAt != wantDup[i].CreatedAt {
			t.Errorf("dup %d: got %+v, want %+v", i, c, wantDup[i])
		}
	}
	if _, contacts, distinct := s2.store.counts(); contacts != 22 || distinct != 3 {
		t.Errorf("after reload: %d contacts, %d distinct; want 22, 3", contacts, distinct)
	}
}

// TestStoreConcurrentReads runs snapshot and lookup beside create, for the
// race detector: snapshot reads records outside the lock.
func TestStoreConcurrentReads(t *testing.T) {
	st := newStore()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				all, _, _ := st.snapshot()
				for i, c := range all {
					if want := formatID(uint64(i + 1)); c.ID != want || c.CreatedAt != "t" {
						t.Errorf("contact %d: got %s %q, want %s \"t\"", i, c.ID, c.CreatedAt, want)
						return
					}
				}
				st.lookup("E3")
			}
		})
	}
	const total = 3*chunkSize + 100 - 3*chunkSize%100
	for k := 0; k < total; k += 100 {
		batch := make([]contact.Contact, 100)
		cs := make([]*contact.Contact, 100)
		for j := range batch {
			batch[j] = oddContact(k+j, "E"+strconv.Itoa((k+j)%10))
			cs[j] = &batch[j]
		}
		st.create(cs, "t", make([]string, 100))
	}
	close(stop)
	wg.Wait()
	if got := len(st.lookup("E3")); got != total/10 {
		t.Errorf("lookup(E3) found %d contacts, want %d", got, total/10)
	}
}

// TestStoreCreateAllocs holds create to one allocation a contact, its id,
// for new external ids and duplicates alike.
func TestStoreCreateAllocs(t *testing.T) {
	const size, runs = 100, 50
	for _, dup := range []bool{false, true} {
		st := newStore()
		// Every run gets its own batch, made beforehand (AllocsPerRun
		// runs once more to warm up).
		batches := make([][]*contact.Contact, runs+1)
		for i := range batches {
			batches[i] = make([]*contact.Contact, size)
			for j := range size {
				ext := "D" + strconv.Itoa(j)
				if !dup {
					ext = "N" + strconv.Itoa(i*size+j)
				}
				batches[i][j] = &contact.Contact{ExternalID: ext, Email: "e@x.co", Attributes: contact.AttrsOf(map[string]string{"a": "b"})}
			}
		}
		ids := make([]string, size)
		run := 0
		got := testing.AllocsPerRun(runs, func() {
			st.create(batches[run], "t", ids)
			run++
		})
		if got > size+1 { // the odd one: a new chunk, or its records growing
			t.Errorf("duplicates %v: got %.1f allocations a batch of %d, want at most %d", dup, got, size, size+1)
		}
	}
}
