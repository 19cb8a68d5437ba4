package jasperamqp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
)

// ErrClosed is returned by Publish after Close.
var ErrClosed = errors.New("jasperamqp: publisher is closed")

// drain sets closed (so that enter refuses new Publish calls) and waits up to timeout for the
// calls in flight. It returns false when closed was set already.
func drain(mu *sync.Mutex, closed *bool, inflight *sync.WaitGroup, timeout time.Duration, logger watermill.LoggerAdapter) bool {
	mu.Lock()
	was := *closed
	*closed = true
	mu.Unlock()
	if was {
		return false
	}
	drained := make(chan struct{})
	go func() {
		inflight.Wait()
		close(drained)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		logger.Error("jasperamqp: closing with Publish calls still waiting for confirms", nil,
			watermill.LogFields{"close_timeout": timeout.String()})
	}
	return true
}

// prepare checks the AMQP URL and returns the options and the logger (nil: none) of a new
// publisher, the logger carrying the redacted URL.
func prepare(amqpURL string, logger watermill.LoggerAdapter, opts []Option) (Options, watermill.LoggerAdapter, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	if err := checkAMQPURL(amqpURL); err != nil {
		return Options{}, nil, err
	}
	return buildOptions(opts), logger.With(watermill.LogFields{"amqp_url": RedactURL(amqpURL)}), nil
}

// enter counts a Publish call in flight, or refuses it with ErrClosed once closed is set; mu
// guards closed and the count's Add, so that Close can wait for the calls it let in.
func enter(mu *sync.Mutex, closed *bool, inflight *sync.WaitGroup) error {
	mu.Lock()
	defer mu.Unlock()
	if *closed {
		return ErrClosed
	}
	inflight.Add(1)
	return nil
}

// NewPublisher connects to the broker at amqpURL and returns a message.Publisher for relaying
// Jasper envelopes: Publish's topic is the envelope's destination URI (see ParseDestination), and
// every message is published with NewPublisherConfig's settings (persistent, confirmed, pooled
// channels, reconnecting).
//
// Per Publish call it:
//   - rejects a destination that is not rabbitmq:// (local://..., tcp://...) or is malformed
//     with a *DestinationError (errors.Is ErrNotRabbitMQ or ErrInvalidDestination, and
//     fault.ErrPermanent), before touching the broker: the forwarder should dead-letter such envelopes;
//   - before the first message to a queue or exchange, checks on a separate connection that it
//     exists (ErrDestinationNotFound otherwise, which is worth retrying) or declares it durable
//     (Options.DeclareQueues, Options.DeclareExchanges);
//   - returns only when the broker has confirmed every message (a nack or a lost channel is an
//     error), when the first message's context is done, or after Options.PublishTimeout.
//
// Publish is safe for concurrent use. Up to Options.ChannelPoolSize calls wait for their confirms
// in parallel, each on its own channel; within one call the messages are published one after the
// other, each waiting for its confirm, so give concurrent calls one message each for throughput,
// and several messages in one call only when their order matters.
//
// Limits inherited from watermill-amqp v2.1.3:
//   - no pipelining within a channel: a channel publishes one message and waits for its confirm
//     before the next, so throughput grows with concurrent callers up to ChannelPoolSize and is a
//     fraction of what fully pipelined confirms reach (measured on a loaded 2-vCPU machine with a
//     local broker, 256-byte persistent messages: ~0.5-0.8k msgs/s for one caller, ~2.5-5k msgs/s
//     for 64 callers, ~9k msgs/s for one raw amqp091 channel with deferred confirms);
//   - a confirm is awaited without deadline (hence PublishTimeout and the context check);
//   - after a connection loss the calls in flight fail, and Publish fails with "not connected to
//     AMQP" until the connection is back (re-dialled with Options.Reconnect);
//   - a queue deleted after its first check is not noticed: RabbitMQ drops what is routed to it.
//
// NewConfirmPublisher has the same topics, checks and marshaling without these limits
// (pipelined confirms, unroutable messages reported): prefer it for relays.
//
// The AMQP URL's password is never logged nor returned in an error.
func NewPublisher(amqpURL string, logger watermill.LoggerAdapter, opts ...Option) (message.Publisher, error) {
	o, logger, err := prepare(amqpURL, logger, opts)
	if err != nil {
		return nil, err
	}

	inner, err := amqp.NewPublisher(publisherConfig(amqpURL, o, true), logger)
	if err != nil {
		return nil, fmt.Errorf("jasperamqp: create publisher for %s: %w", RedactURL(amqpURL), scrubError(err, amqpURL))
	}
	logger.Info("jasperamqp: publisher connected", watermill.LogFields{
		"channel_pool_size": o.ChannelPoolSize,
		"declare_queues":    o.DeclareQueues,
		"declare_exchanges": o.DeclareExchanges,
	})
	return &publisher{
		inner:  inner,
		topo:   &topologyChecker{url: amqpURL, opts: o, logger: logger},
		opts:   o,
		logger: logger,
	}, nil
}

func checkAMQPURL(amqpURL string) error {
	if amqpURL == "" {
		return errors.New("jasperamqp: empty AMQP URL (want amqp://USER:PASSWORD@HOST:PORT/VHOST)")
	}
	u, err := url.Parse(amqpURL)
	if err != nil {
		return fmt.Errorf("jasperamqp: AMQP URL %s does not parse (want amqp://USER:PASSWORD@HOST:PORT/VHOST)", RedactURL(amqpURL))
	}
	if s := strings.ToLower(u.Scheme); s != "amqp" && s != "amqps" {
		return fmt.Errorf("jasperamqp: AMQP URL %s: scheme must be amqp or amqps", RedactURL(amqpURL))
	}
	return nil
}

// publisher is the message.Publisher returned by NewPublisher.
type publisher struct {
	inner  *amqp.Publisher
	topo   *topologyChecker
	opts   Options
	logger watermill.LoggerAdapter

	mu       sync.Mutex // guards closed and inflight.Add
	closed   bool
	inflight sync.WaitGroup
}

// Publish implements message.Publisher; see NewPublisher.
func (p *publisher) Publish(topic string, messages ...*message.Message) error {
	d, err := checkPublish(topic, messages)
	if err != nil || len(messages) == 0 {
		return err
	}

	if err := enter(&p.mu, &p.closed, &p.inflight); err != nil {
		return err
	}

	ctx := messages[0].Context()
	if err := context.Cause(ctx); err != nil {
		p.inflight.Done()
		return fmt.Errorf("jasperamqp: publish to %s: %w", topic, err)
	}
	if p.opts.PublishTimeout <= 0 && ctx.Done() == nil {
		defer p.inflight.Done()
		return p.publish(d, topic, messages)
	}

	// watermill-amqp ignores contexts and waits for confirms without a deadline: wait beside it.
	if p.opts.PublishTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.opts.PublishTimeout)
		defer cancel()
	}
	done := make(chan error, 1)
	go func() {
		defer p.inflight.Done()
		done <- p.publish(d, topic, messages)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("jasperamqp: publish to %s: stopped waiting for the broker's confirm, the message may still arrive: %w",
			topic, context.Cause(ctx))
	}
}

func (p *publisher) publish(d Destination, topic string, messages []*message.Message) error {
	if err := p.topo.ensure(d); err != nil {
		return fmt.Errorf("jasperamqp: publish to %s: %w", topic, err)
	}
	if err := p.inner.Publish(topic, messages...); err != nil {
		if p.inner.Closed() {
			return fmt.Errorf("jasperamqp: publish to %s: %w (%w)", topic, ErrClosed, err)
		}
		return fmt.Errorf("jasperamqp: publish %d message(s) to %s (exchange %q, routing key %q): %w",
			len(messages), topic, d.AMQPExchange(), d.RoutingKey, err)
	}
	return nil
}

func notAMQPReason(d Destination) string {
	if d.Kind == Local {
		return "a Jasper local (in-process) queue, not on RabbitMQ: route local:// destinations elsewhere " +
			"(for example to jasper_incoming_envelopes)"
	}
	return fmt.Sprintf("a %s:// destination, not RabbitMQ: relay it with a publisher for that transport", d.Scheme)
}

// Close waits up to Options.CloseTimeout for Publish calls in flight, then closes the channels and
// the connections. Publish returns ErrClosed afterwards. Close is idempotent.
func (p *publisher) Close() error {
	if !drain(&p.mu, &p.closed, &p.inflight, p.opts.CloseTimeout, p.logger) {
		return nil // closed before
	}
	return errors.Join(p.inner.Close(), p.topo.close())
}
