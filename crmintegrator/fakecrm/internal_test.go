package fakecrm

import (
	"strconv"
	"testing"
	"time"

	"crmsync/shared/contact"
)

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	type step struct {
		at        time.Duration // since t0
		wantOK    bool
		wantAfter int
	}
	tests := []struct {
		name  string
		rate  float64
		burst int
		steps []step
	}{
		{"unlimited", 0, 0, []step{{0, true, 0}, {0, true, 0}, {0, true, 0}}},
		{"burst then wait", 1, 2, []step{{0, true, 0}, {0, true, 0}, {0, false, 1}, {time.Second, true, 0}}},
		{"slow rate rounds up", 0.25, 1, []step{{0, true, 0}, {0, false, 4}, {time.Second, false, 3}, {4 * time.Second, true, 0}}},
		{"fast rate at least 1s", 100, 1, []step{{0, true, 0}, {0, false, 1}, {10 * time.Millisecond, true, 0}}},
		{"burst 0 is one second's worth", 3, 0, []step{{0, true, 0}, {0, true, 0}, {0, true, 0}, {0, false, 1}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bucket
			b.configure(tc.rate, tc.burst, false)
			for i, s := range tc.steps {
				ok, after := b.take(t0.Add(s.at))
				if ok != s.wantOK || after != s.wantAfter {
					t.Errorf("step %d: got ok=%v after=%d, want ok=%v after=%d", i, ok, after, s.wantOK, s.wantAfter)
				}
			}
		})
	}
}

func TestDecideDependsOnlyOnSeedAndK(t *testing.T) {
	f := newFaultState(Faults{FailRate: 0.3, AmbiguousRate: 0.2, Jitter: time.Second})
	for k := uint64(1); k < 100; k++ {
		if a, b := decide(7, k, f), decide(7, k, f); a != b {
			t.Fatalf("k=%d: decide not repeatable: %+v vs %+v", k, a, b)
		}
	}
	// Fractions come out near the knobs over many k.
	const n = 20000
	var fails, ambiguous int
	modes := map[ambiguousMode]int{}
	for k := uint64(1); k <= n; k++ {
		d := decide(42, k, f)
		if d.delay < 0 || d.delay >= time.Second {
			t.Fatalf("k=%d: delay %v outside [0, 1s)", k, d.delay)
		}
		switch {
		case d.fail:
			fails++
		case d.ambiguous != modeNone:
			ambiguous++
			modes[d.ambiguous]++
		}
	}
	if got := float64(fails) / n; got < 0.28 || got > 0.32 {
		t.Errorf("fail fraction %.3f, want about 0.3", got)
	}
	if got := float64(ambiguous) / n; got < 0.18 || got > 0.22 {
		t.Errorf("ambiguous fraction %.3f, want about 0.2", got)
	}
	if len(modes) != len(allModes) {
		t.Errorf("modes drawn %v, want all %d", modes, len(allModes))
	}
}

func TestParseModes(t *testing.T) {
	tests := []struct {
		in      string
		want    []ambiguousMode
		wantErr bool
	}{
		{"", allModes, false},
		{"500", []ambiguousMode{mode500}, false},
		{" reset , hang ", []ambiguousMode{modeReset, modeHang}, false},
		{"502,504", []ambiguousMode{mode502, mode504}, false},
		{"503", nil, true},
		{"500,", nil, true},
	}
	for _, tc := range tests {
		got, err := parseModes(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseModes(%q) error %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && len(got) != len(tc.want) {
			t.Errorf("parseModes(%q) = %v, want %v", tc.in, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("parseModes(%q) = %v, want %v", tc.in, got, tc.want)
			}
		}
	}
}

func TestFormatID(t *testing.T) {
	for n, want := range map[uint64]string{1: "ct_00000001", 42: "ct_00000042", 123456789: "ct_123456789"} {
		if got := formatID(n); got != want {
			t.Errorf("formatID(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestStoreAcrossChunks(t *testing.T) {
	st := newStore()
	const n = 2*chunkSize + 10
	cs := make([]*contact.Contact, n)
	for i := range cs {
		// Every third contact repeats an external id.
		cs[i] = &contact.Contact{ExternalID: strconv.Itoa(i - i%3), Email: "a@b.co"}
	}
	ids := make([]string, n)
	st.create(cs[:chunkSize-1], "t", ids[:chunkSize-1]) // stop just short of a chunk boundary
	st.create(cs[chunkSize-1:], "t", ids[chunkSize-1:])
	all, nextID, _ := st.snapshot()
	if len(all) != n || nextID != n+1 {
		t.Fatalf("got %d contacts and next id %d, want %d and %d", len(all), nextID, n, n+1)
	}
	for i, c := range all {
		if c.ID != ids[i] || c.ID != formatID(uint64(i+1)) || c.ExternalID != cs[i].ExternalID {
			t.Fatalf("contact %d: got %s/%s, want %s/%s", i, c.ID, c.ExternalID, ids[i], cs[i].ExternalID)
		}
	}
	last := strconv.Itoa(n - 1 - (n-1)%3)
	if got := st.lookup(last); len(got) == 0 || got[0].ExternalID != last {
		t.Errorf("lookup(%s) = %v", last, got)
	}
	if got := st.lookup(strconv.Itoa(chunkSize - chunkSize%3)); len(got) != 3 && len(got) != 2 {
		t.Errorf("lookup across a boundary found %d contacts", len(got))
	}
	creates, contacts, distinct := st.counts()
	if creates != n || contacts != n || distinct != (n+2)/3 {
		t.Errorf("counts = %d, %d, %d; want %d, %d, %d", creates, contacts, distinct, n, n, (n+2)/3)
	}
	// replace rebuilds the same store from a snapshot.
	other := newStore()
	other.replace(all, nextID)
	if _, c2, d2 := other.counts(); c2 != contacts || d2 != distinct {
		t.Errorf("after replace: %d contacts, %d distinct; want %d, %d", c2, d2, contacts, distinct)
	}
}

func TestLoneSurrogate(t *testing.T) {
	for _, tc := range []struct {
		body string
		want bool
	}{
		{`{"a":"plain"}`, false},
		{`{"a":"\ud83d\ude00"}`, false},
		{`{"a":"\\ud800"}`, false}, // an escaped backslash, then text
		{`{"a":"x\"\n\u00e9"}`, false},
		{`{"a":"\ud800"}`, true},
		{`{"a":"\udfff"}`, true},
		{`{"a":"\ud800\u0041"}`, true},
		{`{"a":"ok \ud83d\ude00 then \udc00"}`, true},
		{`{"a":"\ud8`, false}, // cut short: the parser refuses it
		{`\`, false},
	} {
		if got := loneSurrogate([]byte(tc.body)); got != tc.want {
			t.Errorf("loneSurrogate(%s) = %v, want %v", tc.body, got, tc.want)
		}
	}
}
