// Package stats holds the counters the components keep on their hot paths for metrics: a
// table of counters per key (a destination, a topic) and a fixed-bucket latency histogram,
// both updated with atomic adds and read at collection time by package metrics.
package stats

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Table maps a key (a destination, a topic) to its counters C, created zeroed on first use.
// Keys are few (one per broker topic or queue), so entries are never removed. The zero
// value is ready to use.
type Table[C any] struct{ m sync.Map } // string -> *C

// Get returns key's counters.
func (t *Table[C]) Get(key string) *C {
	if c, ok := t.m.Load(key); ok {
		return c.(*C)
	}
	c, _ := t.m.LoadOrStore(key, new(C))
	return c.(*C)
}

// Each calls f for every key, in key order.
func (t *Table[C]) Each(f func(key string, c *C)) {
	var keys []string
	t.m.Range(func(k, _ any) bool {
		keys = append(keys, k.(string))
		return true
	})
	sort.Strings(keys)
	for _, k := range keys {
		c, _ := t.m.Load(k)
		f(k, c.(*C))
	}
}

// Collect reads every key's counters of t into a slice, in key order.
func Collect[C, S any](t *Table[C], read func(key string, c *C) S) []S {
	var out []S
	t.Each(func(key string, c *C) { out = append(out, read(key, c)) })
	return out
}

// LatencyBounds are the upper bounds, in seconds, of a Histogram's buckets (Prometheus' "le"):
// from a millisecond to five minutes, about three per decade.
var LatencyBounds = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

// Histogram counts durations in the buckets of LatencyBounds (the last bucket, +Inf, holds
// the rest). The zero value is ready to use; Observe is two atomic adds.
type Histogram struct {
	buckets [17]atomic.Uint64 // len(LatencyBounds)+1: per bucket, not cumulative
	sumNs   atomic.Int64
}

// Observe counts d (negative durations, from clock skew, count as 0).
func (h *Histogram) Observe(d time.Duration) {
	d = max(d, 0)
	s := d.Seconds()
	i := sort.SearchFloat64s(LatencyBounds, s) // first bound >= s
	h.buckets[i].Add(1)
	h.sumNs.Add(int64(d))
}

// Snapshot is a Histogram read at one moment.
type Snapshot struct {
	// Bounds are the buckets' upper bounds in seconds (LatencyBounds; do not modify).
	Bounds []float64
	// Counts holds, per bound of LatencyBounds, how many durations were at most that bound
	// (cumulative, as Prometheus buckets are); the +Inf bucket is Count.
	Counts []uint64
	// Sum is the total of the durations, in seconds.
	Sum float64
	// Count is how many durations were observed.
	Count uint64
}

// Snapshot reads h. The counts are consistent with each other (cumulative, Count their
// total); Sum may lag or lead them by the Observe calls running meanwhile.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Bounds: LatencyBounds, Counts: make([]uint64, len(LatencyBounds))}
	var cum uint64
	for i := range LatencyBounds {
		cum += h.buckets[i].Load()
		s.Counts[i] = cum
	}
	s.Count = cum + h.buckets[len(LatencyBounds)].Load()
	s.Sum = time.Duration(h.sumNs.Load()).Seconds()
	return s
}

// Add adds o's counts to s (summing the histograms of several components).
func (s *Snapshot) Add(o Snapshot) {
	if s.Counts == nil {
		s.Bounds, s.Counts = LatencyBounds, make([]uint64, len(LatencyBounds))
	}
	for i := range o.Counts {
		s.Counts[i] += o.Counts[i]
	}
	s.Sum += o.Sum
	s.Count += o.Count
}
