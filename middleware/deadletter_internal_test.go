package middleware

import (
	"testing"
	"time"
)

// The waits between attempts are exactly as DeadLetterConfig documents them: InitialInterval,
// times Multiplier after each failed attempt, capped at MaxInterval, without jitter.
func TestDeadLetterWaits(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	for name, c := range map[string]struct {
		config DeadLetterConfig
		want   []time.Duration
	}{
		"defaults":          {DeadLetterConfig{}, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 6400 * ms, 10 * time.Second, 10 * time.Second}},
		"multiplier 3":      {DeadLetterConfig{InitialInterval: 10 * ms, MaxInterval: 100 * ms, Multiplier: 3}, []time.Duration{10 * ms, 30 * ms, 90 * ms, 100 * ms}},
		"constant":          {DeadLetterConfig{InitialInterval: 5 * ms, Multiplier: 1}, []time.Duration{5 * ms, 5 * ms, 5 * ms}},
		"initial above max": {DeadLetterConfig{InitialInterval: time.Minute, MaxInterval: time.Second}, []time.Duration{time.Second, time.Second}},
		"no wait":           {DeadLetterConfig{InitialInterval: -1}, []time.Duration{0, 0}},
	} {
		c.config.setDefaults()
		p := c.config.backoff()
		for i, want := range c.want {
			if got := p.Jittered(i + 1); got != want {
				t.Errorf("%s: wait after attempt %d is %s, want %s", name, i+1, got, want)
			}
		}
	}
}
