package backoff

import (
	"context"
	"testing"
	"time"
)

func TestDelayGrowsAndCaps(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := p.Delay(i + 1); got != w*time.Millisecond {
			t.Fatalf("Delay(%d) = %s, want %s", i+1, got, w*time.Millisecond)
		}
	}
	if d := (Policy{Initial: -1}).Delay(3); d != 0 {
		t.Fatalf("negative Initial: Delay = %s, want 0", d)
	}
	if d := (Policy{}).Delay(1); d != time.Second {
		t.Fatalf("zero policy: Delay(1) = %s, want 1s", d)
	}
}

func TestJitterStaysInRange(t *testing.T) {
	p := Policy{Initial: time.Second, Jitter: 0.5}
	for range 100 {
		if d := p.Jittered(1); d < time.Second || d > 1500*time.Millisecond {
			t.Fatalf("Jittered(1) = %s, want within [1s, 1.5s]", d)
		}
	}
	if d := (Policy{Initial: time.Second, Jitter: -1}).Jittered(1); d != time.Second {
		t.Fatalf("no jitter: %s", d)
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := (Policy{Initial: time.Hour}).Sleep(ctx, 1); err != context.Canceled {
		t.Fatalf("Sleep = %v, want context.Canceled", err)
	}
}
