package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// ScheduledResult is how punctually delayed messages of a durable local queue were delivered
// (the scheduled leg). A message's lateness is its arrival at the subscriber minus its due
// time: the start of its Publish call plus its delay (never earlier than the due time
// components/delay meant).
type ScheduledResult struct {
	// N is how many delayed messages were published and delivered; Early is how many of
	// them arrived before their due time (a bug whenever it is not 0).
	N, Early int
	// LateP50, LateP99 and LateMax are the nearest-rank percentiles of the lateness of the
	// messages that were not early.
	LateP50, LateP99, LateMax time.Duration
	// EarlyMax is how long before its due time the earliest message arrived (0: none early).
	EarlyMax time.Duration
}

// scheduledTopic is the durable local queue of the scheduled leg.
const scheduledTopic = "bench_delayed"

// scheduledGrace bounds the wait for the last delayed message after the last one fell due.
const scheduledGrace = time.Minute

// scheduledLeg measures delayed messages through a jasper.Runtime, as a service uses them: in
// a fresh migrated schema, a runtime whose publisher writes the durable local queue
// (publisher.Incoming) publishes n messages, one Publish call each, delayed with
// delay.Message(m, delay.For(d)) where the delays are spread evenly over [0, spread] and
// published in a random order; the runtime's subscriber delivers them (acked at once) and
// the runtime's durability agent releases them when due. One delayed message first warms the
// connections' statements up and is not counted.
func (e *env) scheduledLeg(ctx context.Context, n int, spread time.Duration) (res ScheduledResult, err error) {
	if n <= 0 || spread < 0 {
		return res, fmt.Errorf("bench: scheduled leg: %d messages over %s", n, spread)
	}
	js, err := newJasperSchema(ctx, e)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, js.close()) }()
	rt, err := jasper.NewRuntime(e.drv, jasper.Config{
		Schema:    js.cfg.Schema,
		Publisher: publisher.Config{Table: publisher.Incoming},
	}, e.logger)
	if err == nil {
		err = rt.Start(ctx)
	}
	if err != nil {
		return res, fmt.Errorf("bench: scheduled leg: %w", err)
	}
	defer func() { err = errors.Join(err, stopRuntime(rt)) }()
	sub, err := rt.Subscriber(subscriber.Config{})
	if err != nil {
		return res, fmt.Errorf("bench: scheduled leg: %w", err)
	}
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	out, err := sub.Subscribe(subCtx, scheduledTopic)
	if err != nil {
		return res, fmt.Errorf("bench: scheduled leg: %w", err)
	}

	pub := rt.Publisher()
	warm := e.newMessage()
	delay.Message(warm, delay.For(time.Millisecond))
	if err := pub.Publish(scheduledTopic, warm); err != nil {
		return res, fmt.Errorf("bench: scheduled leg: warm-up: %w", err)
	}
	select {
	case m := <-out:
		m.Ack()
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(scheduledGrace):
		return res, fmt.Errorf("bench: scheduled leg: the warm-up message did not arrive within %s", scheduledGrace)
	}

	arrivals := make(chan map[string]time.Time, 1)
	go func() {
		arrived := make(map[string]time.Time, n)
		for len(arrived) < n {
			m, ok := <-out
			if !ok {
				break // the leg ended
			}
			now := time.Now()
			m.Ack()
			if _, dup := arrived[m.UUID]; !dup { // at least once: a redelivery does not count
				arrived[m.UUID] = now
			}
		}
		arrivals <- arrived
	}()

	due := make(map[string]time.Time, n)
	for _, i := range rand.Perm(n) {
		d := time.Duration(0)
		if n > 1 {
			d = spread * time.Duration(i) / time.Duration(n-1)
		}
		msg := e.newMessage()
		delay.Message(msg, delay.For(d))
		start := time.Now()
		if err := pub.Publish(scheduledTopic, msg); err != nil {
			return res, fmt.Errorf("bench: scheduled leg: publish: %w", err)
		}
		due[msg.UUID] = start.Add(d)
	}
	e.logf("scheduled: %d delayed messages published, delays spread over %s", n, spread)

	var arrived map[string]time.Time
	select {
	case arrived = <-arrivals:
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(spread + scheduledGrace):
		return res, fmt.Errorf("bench: scheduled leg: the delayed messages did not all arrive within %s of the last due time", scheduledGrace)
	}
	res, err = scheduledFigures(due, arrived)
	if err != nil {
		return res, err
	}
	e.logf("scheduled: %d delivered, %d early (by up to %s), lateness p50 %s, p99 %s, max %s",
		res.N, res.Early, fmtMs(res.EarlyMax), fmtMs(res.LateP50), fmtMs(res.LateP99), fmtMs(res.LateMax))
	return res, nil
}

// scheduledFigures compares the arrival of each message with its due time.
func scheduledFigures(due, arrived map[string]time.Time) (ScheduledResult, error) {
	res := ScheduledResult{N: len(due)}
	late := make([]time.Duration, 0, len(due))
	for id, when := range due {
		at, ok := arrived[id]
		if !ok {
			return res, fmt.Errorf("bench: scheduled leg: message %s was not delivered", id)
		}
		if d := at.Sub(when); d < 0 {
			res.Early++
			res.EarlyMax = max(res.EarlyMax, -d)
		} else {
			late = append(late, d)
		}
	}
	res.LateP50, res.LateP99, res.LateMax = percentile(late, 0.50), percentile(late, 0.99), percentile(late, 1)
	return res, nil
}
