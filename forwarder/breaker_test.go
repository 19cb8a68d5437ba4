package forwarder

import (
	"slices"
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	t.Parallel()
	b := newBreaker(3, time.Second, 3*time.Second)
	var pauses []time.Duration
	var resumed []string
	b.opened = func(_ string, p time.Duration, _ int) { pauses = append(pauses, p) }
	b.closed = func(d string) { resumed = append(resumed, d) }
	t0 := time.Unix(1000, 0)

	// Two failures and a success: still closed, counter reset.
	b.failure("a", false, t0)
	b.failure("a", false, t0)
	b.answered("a")
	b.failure("a", false, t0)
	b.failure("a", false, t0)
	if b.paused("a") || !b.allow("a", false) {
		t.Fatal("paused before 3 consecutive failures")
	}
	// The third consecutive failure pauses it; a late failure does not extend the pause.
	b.failure("a", false, t0)
	b.failure("a", false, t0)
	if !b.paused("a") || b.allow("a", false) {
		t.Fatal("not paused after 3 consecutive failures")
	}
	if !slices.Equal(pauses, []time.Duration{time.Second}) {
		t.Fatalf("pauses %v", pauses)
	}
	if got := b.excluded(nil); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("excluded %v", got)
	}
	if got := b.takeProbes(t0.Add(500*time.Millisecond), nil); len(got) != 0 {
		t.Fatalf("probe granted during the pause: %v", got)
	}
	// Pause over: one probe, granted once.
	if got := b.takeProbes(t0.Add(time.Second), nil); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("probes %v", got)
	}
	if got := b.takeProbes(t0.Add(time.Second), nil); len(got) != 0 {
		t.Fatalf("second probe granted: %v", got)
	}
	// Failed probes double the pause up to the cap.
	b.failure("a", true, t0.Add(time.Second))
	_ = b.takeProbes(t0.Add(10*time.Second), nil)
	b.failure("a", true, t0.Add(10*time.Second))
	_ = b.takeProbes(t0.Add(20*time.Second), nil)
	b.failure("a", true, t0.Add(20*time.Second))
	if !slices.Equal(pauses, []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}) {
		t.Fatalf("pauses %v", pauses)
	}
	// An unpublished probe is given back; a successful one resumes the destination.
	_ = b.takeProbes(t0.Add(30*time.Second), nil)
	b.probeDone("a")
	if got := b.takeProbes(t0.Add(30*time.Second), nil); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("probe not granted again after probeDone: %v", got)
	}
	b.answered("a")
	if b.paused("a") || !b.allow("a", false) || len(b.excluded(nil)) != 0 {
		t.Fatal("not resumed after a successful probe")
	}
	if !slices.Equal(resumed, []string{"a"}) {
		t.Fatalf("resumed %v", resumed)
	}
	// A probe that finds nothing forgets the circuit.
	for range 3 {
		b.failure("b", false, t0)
	}
	_ = b.takeProbes(t0.Add(time.Minute), nil)
	b.probeEmpty("b")
	if b.paused("b") {
		t.Fatal("circuit kept after an empty probe")
	}
}
