package forwarder

import (
	"sort"
	"sync"
	"sync/atomic"
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
}

// destCounters are one destination's counters (atomic adds on the relay path).
type destCounters struct {
	sent, failed, expired, deadLettered atomic.Int64
}

// destTable maps a destination to its counters. Destinations are few (one per broker
// topic or queue), so entries are never removed.
type destTable struct{ m sync.Map } // string -> *destCounters

func (t *destTable) get(destination string) *destCounters {
	if c, ok := t.m.Load(destination); ok {
		return c.(*destCounters)
	}
	c, _ := t.m.LoadOrStore(destination, &destCounters{})
	return c.(*destCounters)
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
	var out []DestinationStats
	f.breaker.stats.m.Range(func(k, v any) bool {
		c := v.(*destCounters)
		out = append(out, DestinationStats{
			Destination:  k.(string),
			Sent:         c.sent.Load(),
			Failed:       c.failed.Load(),
			Expired:      c.expired.Load(),
			DeadLettered: c.deadLettered.Load(),
		})
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Destination < out[j].Destination })
	for i := range out {
		out[i].Circuit = f.breaker.state(out[i].Destination)
	}
	return out
}
