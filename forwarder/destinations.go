package forwarder

import (
	"sync/atomic"

	"github.com/watermill-jasper/watermill-jasper/internal/stats"
)

// CircuitState is the state of a destination's circuit breaker.
type CircuitState int

const (
	// CircuitClosed: the destination is relayed normally.
	CircuitClosed CircuitState = 0
	// CircuitOpen: the destination is paused; its envelopes are not claimed.
	CircuitOpen CircuitState = 1
	// CircuitHalfOpen: the pause is over and one envelope (the probe) is being published.
	CircuitHalfOpen CircuitState = 2
)

// DestinationStats counts what a Forwarder did for one destination since it was created
// (the same outcomes as Stats), with the destination's circuit state at the time of the call.
type DestinationStats struct {
	Destination  string
	Sent         int64
	Failed       int64
	Expired      int64
	DeadLettered int64
	Circuit      CircuitState
	// Lag is the histogram of the relay lag of the sent envelopes: from when the row was
	// written (its timestamp column: the start of the writing transaction on PostgreSQL) to
	// the broker's confirmation. Envelopes whose row has no timestamp are not counted.
	Lag Histogram
}

// Histogram is a latency histogram read at one moment: cumulative counts per upper bound in
// seconds (Bounds, shared: do not modify), their total (Count) and the sum of the
// durations in seconds (Sum). Add sums two.
type Histogram = stats.Snapshot

// destCounters are one destination's counters (atomic adds on the relay path).
type destCounters struct {
	sent, failed, expired, deadLettered atomic.Int64
	lag                                 stats.Histogram
}

// state returns destination's circuit state.
func (b *breaker) state(destination string) CircuitState {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.dests[destination]
	switch {
	case c == nil || c.opens == 0:
		return CircuitClosed
	case c.probing:
		return CircuitHalfOpen
	default:
		return CircuitOpen
	}
}

// DestinationStats returns the counters of every destination the forwarder relayed,
// expired, dead-lettered or failed to publish to, sorted by destination, each with its
// circuit state. It reads atomics and the breaker's small map: cheap enough for every scrape.
func (f *Forwarder) DestinationStats() []DestinationStats {
	out := stats.Collect(&f.breaker.stats, func(dest string, c *destCounters) DestinationStats {
		return DestinationStats{
			Destination:  dest,
			Sent:         c.sent.Load(),
			Failed:       c.failed.Load(),
			Expired:      c.expired.Load(),
			DeadLettered: c.deadLettered.Load(),
			Lag:          c.lag.Snapshot(),
		}
	})
	for i := range out {
		out[i].Circuit = f.breaker.state(out[i].Destination)
	}
	return out
}
