package stats

import (
	"testing"
	"time"
)

// The relay's cost per sent envelope: one Observe on its destination's histogram.
func BenchmarkHistogramObserveParallel(b *testing.B) {
	var h Histogram
	b.RunParallel(func(pb *testing.PB) {
		d := 3 * time.Millisecond
		for pb.Next() {
			h.Observe(d)
		}
	})
}

// The per-destination lookup of the counters (a sync.Map load).
func BenchmarkTableGetParallel(b *testing.B) {
	type counters struct{ n int }
	var t Table[counters]
	t.Get("rabbitmq://queue/orders")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = t.Get("rabbitmq://queue/orders")
		}
	})
}
