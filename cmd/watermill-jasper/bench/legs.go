package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Implementation names.
const (
	implOurs      = "ours"
	implWatermill = "watermill"
	implRaw       = "raw loop"
	implRawClaim  = "raw claim loop"
)

// outbox is one implementation's outbox in its own fresh schema.
type outbox interface {
	// close drops the schema.
	close() error
	// topic is the topic messages for sink s are published to.
	topic(s *sink) string
	// output builds the relay's output publisher for s (built before any timing starts);
	// owned reports whether the relay must close it.
	output(s *sink) (pub message.Publisher, owned bool, err error)
	// prefill writes n messages for topic, quickly and untimed.
	prefill(ctx context.Context, topic string, n int) error
	// left counts the messages the relay has not yet acknowledged (deleted or acked).
	left(ctx context.Context) (int64, error)
	// heldBack counts the committed messages the relay does not read yet, by its design (nil:
	// it reads every committed message; see awaitCount).
	heldBack() heldFunc
	// businessTx runs one business transaction: an order and its message, committed together.
	businessTx(ctx context.Context, topic string, msg *message.Message) error
	// startRelay starts the relay to out.
	startRelay(ctx context.Context, out message.Publisher, owned bool) (relay, error)
}

type outboxFactory func(ctx context.Context, e *env) (outbox, error)

// withOutbox creates an outbox, runs fn and drops the outbox's schema whatever happens.
func withOutbox(ctx context.Context, e *env, newOutbox outboxFactory, fn func(o outbox) error) (err error) {
	o, err := newOutbox(ctx, e)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, o.close()) }()
	return fn(o)
}

// withSink creates a sink, runs fn and closes the sink whatever happens.
func withSink(ctx context.Context, e *env, kind string, target int, fn func(s *sink) error) (err error) {
	s, err := newSink(ctx, e, kind, target)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	return fn(s)
}

// drainLeg prefills n messages, then times the relay draining them into a fresh sink.
func (e *env) drainLeg(ctx context.Context, impl string, newOutbox outboxFactory, kind string, n int) (DrainResult, error) {
	var res DrainResult
	err := withOutbox(ctx, e, newOutbox, func(o outbox) error {
		return withSink(ctx, e, kind, n, func(s *sink) error {
			topic := o.topic(s)
			e.logf("drain %s %s %d: prefilling", impl, kind, n)
			if err := o.prefill(ctx, topic, n); err != nil {
				return err
			}
			out, owned, err := o.output(s)
			if err != nil {
				return err
			}
			res, err = e.timedDrain(ctx, impl, s, n, func(ctx context.Context) (relay, error) {
				return o.startRelay(ctx, out, owned)
			}, o.left, o.heldBack())
			return err
		})
	})
	return res, err
}

// latencyLeg runs the relay to a fresh sink and measures commit -> sink latency at the
// configured steady rate.
func (e *env) latencyLeg(ctx context.Context, impl string, newOutbox outboxFactory, kind string) (LatencyResult, error) {
	var res LatencyResult
	err := withOutbox(ctx, e, newOutbox, func(o outbox) error {
		return withSink(ctx, e, kind, 0, func(s *sink) error {
			topic := o.topic(s)
			out, owned, err := o.output(s)
			if err != nil {
				return err
			}
			r, err := o.startRelay(ctx, out, owned)
			if err != nil {
				return err
			}
			// Let the relay settle (LISTEN set up, first empty poll done).
			select {
			case <-time.After(500 * time.Millisecond):
			case <-ctx.Done():
				return errors.Join(ctx.Err(), r.stop())
			}
			res, err = e.timedLatency(ctx, impl, s, e.cfg.Rate, e.cfg.LatencyDuration, func(ctx context.Context, msg *message.Message) error {
				return o.businessTx(ctx, topic, msg)
			}, o.heldBack())
			return errors.Join(err, r.stop())
		})
	})
	return res, err
}

// idleLeg counts the statements of a relay with nothing to do.
func (e *env) idleLeg(ctx context.Context, impl string, newOutbox outboxFactory) (IdleResult, error) {
	var res IdleResult
	err := withOutbox(ctx, e, newOutbox, func(o outbox) error {
		return withSink(ctx, e, sinkGoChannel, 0, func(s *sink) error {
			out, owned, err := o.output(s)
			if err != nil {
				return err
			}
			res, err = e.timedIdle(ctx, impl, e.cfg.IdleDuration, func(ctx context.Context) (relay, error) {
				return o.startRelay(ctx, out, owned)
			})
			return err
		})
	})
	return res, err
}

// publishVariant is one way of running the business transaction.
type publishVariant struct {
	name      string
	newOutbox outboxFactory
	tx        func(o outbox) func(ctx context.Context) error
}

// publishRounds is how many slices each publish variant's measurement is cut into; the
// variants take turns slice by slice, so that a change of the machine's load during the
// phase (other processes, autovacuum, checkpoints) weighs on all of them alike.
const publishRounds = 4

// publishRounds is how many slices each publish variant's measurement is cut into with the
// configured duration: publishRounds, or 1 when the slices would be shorter than 500ms.
func (e *env) publishRounds() int {
	if e.cfg.PublishDuration < time.Duration(publishRounds)*500*time.Millisecond {
		return 1
	}
	return publishRounds
}

// publishLegs measures every variant for the configured duration with the configured number
// of goroutines, each in its own schema, interleaved in rounds.
func (e *env) publishLegs(ctx context.Context, variants []publishVariant) (res []PublishResult, err error) {
	outs := make([]outbox, 0, len(variants))
	defer func() {
		for _, o := range outs {
			err = errors.Join(err, o.close())
		}
	}()
	for _, v := range variants {
		o, err := v.newOutbox(ctx, e)
		if err != nil {
			return nil, err
		}
		outs = append(outs, o)
	}
	rounds := e.publishRounds()
	slice := e.cfg.PublishDuration / time.Duration(rounds)
	res = make([]PublishResult, len(variants))
	for r := range rounds {
		for i, v := range variants {
			warmup := 250 * time.Millisecond
			if r == 0 {
				warmup = min(slice/4, time.Second)
			}
			label := v.name
			if rounds > 1 {
				label = fmt.Sprintf("%s [%d/%d]", v.name, r+1, rounds)
			}
			p, err := e.timedPublish(ctx, label, e.cfg.Publishers, warmup, slice, v.tx(outs[i]))
			if err != nil {
				return nil, err
			}
			e.legs.legDone()
			res[i].Name = v.name
			res[i].Txs += p.Txs
			res[i].Elapsed += p.Elapsed
		}
	}
	for i := range res {
		res[i].TPS = float64(res[i].Txs) / res[i].Elapsed.Seconds()
		e.logf("publish %s: %.0f tx/s", res[i].Name, res[i].TPS)
	}
	return res, nil
}

// rawLeg prefills a fresh outbox and runs a raw loop over it (loop: runRawLoop or
// runRawClaimLoop).
func (e *env) rawLeg(ctx context.Context, n int, loop func(j *jasperSchema, ctx context.Context, n int) (RawResult, error)) (RawResult, error) {
	var res RawResult
	err := withOutbox(ctx, e, newOursOutbox(oursOptions{}), func(o outbox) error {
		j := o.(*oursOutbox).js
		e.logf("raw loop %d: prefilling", n)
		if err := j.prefill(ctx, "bench_orders", n); err != nil {
			return err
		}
		var err error
		res, err = loop(j, ctx, n)
		return err
	})
	return res, err
}
