package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fakeClock fires timers immediately and records what was asked.
type fakeClock struct{ slept []time.Duration }

func (c *fakeClock) Now() time.Time { return time.Unix(0, 0) }
func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func()) {
	c.slept = append(c.slept, d)
	ch := make(chan time.Time, 1)
	ch <- time.Unix(0, 0)
	return ch, func() {}
}

func TestNext(t *testing.T) {
	tests := []struct {
		name string
		b    Backoff
		want []time.Duration
	}{
		{"doubles to cap", Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond, Jitter: -1},
			[]time.Duration{10, 20, 40, 50, 50}},
		{"factor 3", Backoff{Base: time.Millisecond, Max: time.Second, Factor: 3, Jitter: -1},
			[]time.Duration{1, 3, 9, 27}},
		{"full jitter at max random", Backoff{Base: 10 * time.Millisecond, Max: time.Second, Jitter: 0.5, Rand: func() float64 { return 1 }},
			[]time.Duration{5, 10, 20}},
		{"jitter at zero random", Backoff{Base: 10 * time.Millisecond, Max: time.Second, Jitter: 0.5, Rand: func() float64 { return 0 }},
			[]time.Duration{10, 20, 40}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.b
			for i, w := range tc.want {
				w *= time.Millisecond
				if got := b.Next(); got != w {
					t.Fatalf("attempt %d: got %v, want %v", i, got, w)
				}
			}
			b.Reset()
			if b.Attempts() != 0 {
				t.Fatalf("got %d attempts after Reset, want 0", b.Attempts())
			}
		})
	}
}

func TestDefaultsJitterStaysInRange(t *testing.T) {
	var b Backoff
	for i := 0; i < 100; i++ {
		d := b.Next()
		if d <= 0 || d > 30*time.Second {
			t.Fatalf("attempt %d: got %v, want in (0, 30s]", i, d)
		}
	}
}

func TestWaitUsesClock(t *testing.T) {
	c := &fakeClock{}
	b := Backoff{Base: time.Hour, Max: 2 * time.Hour, Jitter: -1, Clock: c}
	for i := 0; i < 3; i++ {
		if err := b.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	want := []time.Duration{time.Hour, 2 * time.Hour, 2 * time.Hour}
	for i := range want {
		if c.slept[i] != want[i] {
			t.Fatalf("sleep %d: got %v, want %v", i, c.slept[i], want[i])
		}
	}
}

func TestSleepHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	start := time.Now()
	err := Sleep(ctx, nil, time.Minute)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("Sleep ignored the cancelled context")
	}
	if err := Sleep(ctx, nil, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v on a done context, want context.Canceled", err)
	}
}
