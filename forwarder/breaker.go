package forwarder

import (
	"sync"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/backoff"
	"github.com/watermill-jasper/watermill-jasper/internal/stats"
)

// breaker is the per-destination circuit breaker (as Jasper's sender
// circuit does): after `after` consecutive failures a destination is paused; its envelopes are not
// claimed until the pause ends, then one envelope (the probe) is tried alone. An answer (a publish sent, or refused for good)
// closes the circuit; a failed probe pauses the destination again for twice as long, up to
// maxPause. Destinations that never failed have no entry.
type breaker struct {
	after int
	// pauses is the pause after the n-th consecutive opening: pause, doubling up to maxPause,
	// without jitter (a pause is per destination, and its probe is a single publish).
	pauses backoff.Policy
	// opened is called (without the lock) when a destination is paused, closed when it
	// resumes after a pause.
	opened func(destination string, pause time.Duration, failures int)
	closed func(destination string)

	mu    sync.Mutex
	dests map[string]*circuit

	// stats are the per-destination counters (destinations.go), kept here, next to the
	// per-destination circuits.
	stats stats.Table[destCounters]
}

type circuit struct {
	failures int       // consecutive failures
	opens    int       // consecutive pauses (0: the circuit is closed)
	until    time.Time // paused until
	probing  bool      // the probe is being published
}

func newBreaker(after int, pause, maxPause time.Duration) *breaker {
	return &breaker{
		after:  after,
		pauses: backoff.Policy{Initial: pause, Max: maxPause, Multiplier: 2, Jitter: -1},
		dests:  map[string]*circuit{},
	}
}

// excluded appends the destinations kept out of regular claims to buf: every destination
// whose circuit is not closed (paused, waiting for its probe, or being probed).
func (b *breaker) excluded(buf []string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	for d, c := range b.dests {
		if c.opens > 0 {
			buf = append(buf, d)
		}
	}
	return buf
}

// takeProbes appends to buf the destinations whose pause is over and that nobody probes
// yet; the caller becomes their prober and must end each probe with answered, failure,
// probeDone or probeEmpty.
func (b *breaker) takeProbes(now time.Time, buf []string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	for d, c := range b.dests {
		if c.opens > 0 && !c.probing && !now.Before(c.until) {
			c.probing = true
			buf = append(buf, d)
		}
	}
	return buf
}

// probesDue reports whether some destination's pause is over and nobody probes it yet (what
// takeProbes would take).
func (b *breaker) probesDue(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.dests {
		if c.opens > 0 && !c.probing && !now.Before(c.until) {
			return true
		}
	}
	return false
}

// nextProbe is when the earliest pause of a destination that nobody probes ends (ok false:
// none is paused).
func (b *breaker) nextProbe() (t time.Time, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.dests {
		if c.opens > 0 && !c.probing && (!ok || c.until.Before(t)) {
			t, ok = c.until, true
		}
	}
	return t, ok
}

// allow is asked right before a publish: probes were granted by takeProbes; other
// publishes are allowed while the circuit is closed.
func (b *breaker) allow(destination string, probe bool) bool {
	if probe {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.dests[destination]
	return c == nil || c.opens == 0
}

// answered records a publish the destination answered: sent, or refused for good (a
// permanent failure says the broker is there). The circuit closes.
func (b *breaker) answered(destination string) {
	b.mu.Lock()
	c := b.dests[destination]
	if c == nil {
		b.mu.Unlock()
		return
	}
	delete(b.dests, destination)
	resumed := c.opens > 0
	b.mu.Unlock()
	if resumed && b.closed != nil {
		b.closed(destination)
	}
}

// failure records a failed publish and pauses the destination when it must be.
func (b *breaker) failure(destination string, probe bool, now time.Time) {
	b.mu.Lock()
	c := b.dests[destination]
	if c == nil {
		c = &circuit{}
		b.dests[destination] = c
	}
	c.failures++
	var open bool
	switch {
	case probe:
		c.probing = false
		open = true
	case c.opens == 0:
		open = c.failures >= b.after
	}
	// Otherwise a publish started before the circuit opened failed late: counted, but the
	// pause already runs.
	if !open {
		b.mu.Unlock()
		return
	}
	c.opens++
	pause := b.pauses.Delay(c.opens)
	c.until = now.Add(pause)
	failures := c.failures
	b.mu.Unlock()
	if b.opened != nil {
		b.opened(destination, pause, failures)
	}
}

// probeDone ends a probe that was not published after all (the forwarder stopped, the
// envelope expired or could not be read): the next claim takes another.
func (b *breaker) probeDone(destination string) {
	b.mu.Lock()
	if c := b.dests[destination]; c != nil {
		c.probing = false
	}
	b.mu.Unlock()
}

// probeEmpty ends a probe that found no envelope: with nothing to send the circuit is
// forgotten; new envelopes are tried normally (and pause it again if it still fails).
func (b *breaker) probeEmpty(destination string) {
	b.mu.Lock()
	delete(b.dests, destination)
	b.mu.Unlock()
}

// paused reports whether destination's circuit is not closed (for tests and logs).
func (b *breaker) paused(destination string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.dests[destination]
	return c != nil && c.opens > 0
}
