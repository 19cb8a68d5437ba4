// Package backoff is the one back-off shape of watermill-jasper: a wait that starts at
// Initial, grows by Multiplier after each failure up to Max, with up to Jitter of itself
// added at random so that processes retrying the same thing do not retry in step. Every
// retry loop of the module (durability jobs, the LISTEN connection, the forwarder's
// statements, the subscriber's claims, the dead-letter middleware's attempts) uses it.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is a back-off shape. The zero value waits 1 s, doubling up to 30 s, with 25% jitter.
type Policy struct {
	// Initial is the first wait. Default 1s. Negative: no wait at all.
	Initial time.Duration
	// Max caps the wait. Default 30s (at least Initial).
	Max time.Duration
	// Multiplier grows the wait after each failure. Default 2 (values below 1 mean 1).
	Multiplier float64
	// Jitter is the fraction of the wait added at random (0..Jitter). Default 0.25; negative:
	// none.
	Jitter float64
}

func (p Policy) normalized() Policy {
	if p.Initial == 0 {
		p.Initial = time.Second
	}
	if p.Max == 0 {
		p.Max = 30 * time.Second
	}
	p.Max = max(p.Max, p.Initial)
	if p.Multiplier == 0 {
		p.Multiplier = 2
	}
	p.Multiplier = max(p.Multiplier, 1)
	if p.Jitter == 0 {
		p.Jitter = 0.25
	}
	return p
}

// Delay is the wait after the n-th consecutive failure (n >= 1), without jitter.
func (p Policy) Delay(n int) time.Duration {
	p = p.normalized()
	if p.Initial < 0 {
		return 0
	}
	d := float64(p.Initial)
	for i := 1; i < n && d < float64(p.Max); i++ {
		d *= p.Multiplier
	}
	return min(time.Duration(d), p.Max)
}

// Jittered is Delay(n) plus up to Jitter of it, at random.
func (p Policy) Jittered(n int) time.Duration {
	d := p.Delay(n)
	j := p.normalized().Jitter
	if d <= 0 || j <= 0 {
		return d
	}
	return d + rand.N(time.Duration(float64(d)*j)+1)
}

// Sleep waits Jittered(n), or until ctx ends (then it returns ctx's error).
func (p Policy) Sleep(ctx context.Context, n int) error {
	d := p.Jittered(n)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
