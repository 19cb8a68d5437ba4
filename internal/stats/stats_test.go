package stats

import (
	"testing"
	"time"
)

func TestHistogramBucketsAreCumulative(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{0, -time.Second, time.Millisecond, 3 * time.Millisecond, 2 * time.Second, time.Hour} {
		h.Observe(d)
	}
	s := h.Snapshot()
	if s.Count != 6 {
		t.Fatalf("Count = %d, want 6", s.Count)
	}
	want := map[float64]uint64{0.001: 3, 0.0025: 3, 0.005: 4, 2.5: 5, 300: 5}
	for i, b := range s.Bounds {
		if w, ok := want[b]; ok && s.Counts[i] != w {
			t.Errorf("bucket le=%v holds %d, want %d", b, s.Counts[i], w)
		}
	}
	if got, want := s.Sum, (time.Millisecond + 3*time.Millisecond + 2*time.Second + time.Hour).Seconds(); got != want {
		t.Errorf("Sum = %v, want %v", got, want)
	}
	var total Snapshot
	total.Add(s)
	total.Add(s)
	if total.Count != 12 || total.Counts[len(total.Counts)-1] != 10 {
		t.Errorf("sum of two snapshots: Count %d, last bucket %d; want 12 and 10", total.Count, total.Counts[len(total.Counts)-1])
	}
}

func TestTableKeysInOrder(t *testing.T) {
	type counters struct{ n int }
	var tb Table[counters]
	tb.Get("b").n = 2
	tb.Get("a").n = 1
	tb.Get("b").n++
	var got []string
	tb.Each(func(k string, c *counters) { got = append(got, k); _ = c })
	if len(got) != 2 || got[0] != "a" || got[1] != "b" || tb.Get("b").n != 3 {
		t.Fatalf("keys %v, b=%d; want [a b], 3", got, tb.Get("b").n)
	}
}
