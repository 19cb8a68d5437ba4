package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

// Sink names.
const (
	sinkGoChannel = "gochannel"
	sinkAMQP      = "amqp"
)

// counter counts what a sink's consumer receives, by message UUID: distinct messages and
// duplicates, and the time of the first and the target-th distinct arrival. A counter made
// without a target (a latency leg's, newCounter(0)) also records every message's arrival
// time (receivedAt). done is closed when target distinct messages have arrived (never for a
// target of 0).
//
// The benchmark's own messages (env.newMessage) carry their sequence number in their UUID, and
// the counter keeps one bit per sequence number: a million-message drain costs it about 128 KB
// of memory, so that the RSS a drain leg reports is the relay's, not the counter's. Other
// UUIDs (none in the benchmark) are kept in a map.
type counter struct {
	mu       sync.Mutex
	bits     []uint64             // bit s: sequence number s arrived
	other    map[string]struct{}  // UUIDs without a sequence number
	arrivals map[string]time.Time // per UUID, when timed
	distinct int
	total    int64
	target   int
	timed    bool
	done     chan struct{}
	firstAt  time.Time
	lastAt   time.Time // when the target-th distinct message arrived
}

func newCounter(target int) *counter {
	c := &counter{other: map[string]struct{}{}, target: target, done: make(chan struct{}), timed: target == 0}
	if c.timed {
		c.arrivals = map[string]time.Time{}
	}
	return c
}

func (c *counter) add(uuid string) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total++
	if !c.firstSeen(uuid) {
		return
	}
	if c.timed {
		c.arrivals[uuid] = now
	}
	c.distinct++
	if c.distinct == 1 {
		c.firstAt = now
	}
	if c.distinct == c.target {
		c.lastAt = now
		close(c.done)
	}
}

// firstSeen records uuid and reports whether it is its first arrival.
func (c *counter) firstSeen(uuid string) bool {
	seq, ok := messageSeq(uuid)
	if !ok {
		if _, dup := c.other[uuid]; dup {
			return false
		}
		c.other[uuid] = struct{}{}
		return true
	}
	w, bit := int(seq/64), uint64(1)<<(seq%64)
	if w >= len(c.bits) {
		c.bits = slices.Grow(c.bits, w+1-len(c.bits))[:w+1]
	}
	if c.bits[w]&bit != 0 {
		return false
	}
	c.bits[w] |= bit
	return true
}

// counts returns distinct messages and duplicates received so far.
func (c *counter) counts() (distinct int, dups int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.distinct, c.total - int64(c.distinct)
}

// expect sets the target once it is known (a latency leg's messages sent): done is closed
// when that many distinct messages have arrived, at once if they have.
func (c *counter) expect(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.target = n
	if c.distinct >= n {
		close(c.done)
	}
}

// timing is, from t0 (the start of a drain or consume leg), the time to the target-th
// distinct message (elapsed) and to the first, and the rate of the target over elapsed.
func (c *counter) timing(t0 time.Time) (elapsed, firstMsg time.Duration, rate float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	elapsed = c.lastAt.Sub(t0)
	return elapsed, c.firstAt.Sub(t0), float64(c.target) / elapsed.Seconds()
}

// receivedAt is when the message uuid first arrived, for a counter made without a target.
func (c *counter) receivedAt(uuid string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.arrivals[uuid]
	return t, ok
}

// sink is where a relay delivers: a topic on an output publisher, and a consumer counting
// arrivals.
type sink struct {
	kind    string
	topic   string
	counter *counter
	// publisher is the relay's output publisher for GoChannel (nil for AMQP: each relay
	// builds its own AMQP publisher, see amqpPublisherConfig).
	publisher message.Publisher
	close     func() error
}

// newGoChannelSink is an in-process GoChannel with one consumer goroutine that counts and acks.
func newGoChannelSink(ctx context.Context, e *env, target int) (*sink, error) {
	gc := gochannel.NewGoChannel(gochannel.Config{}, e.logger)
	topic := "bench_orders"
	ctx, cancel := context.WithCancel(ctx)
	msgs, err := gc.Subscribe(ctx, topic)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("bench: subscribe to GoChannel: %w", err)
	}
	c := newCounter(target)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range msgs {
			c.add(m.UUID)
			m.Ack()
		}
	}()
	return &sink{
		kind: sinkGoChannel, topic: topic, counter: c, publisher: gc,
		close: func() error {
			cancel()
			err := gc.Close()
			<-done
			return err
		},
	}, nil
}

// newAMQPSink declares a fresh durable queue (deleted by close) and consumes it with an
// amqp091 consumer (auto-ack) that counts arrivals by Watermill's message UUID header. The
// relays publish persistent messages to it through the default exchange with confirms. When
// the broker closes the consumer's connection (another process forcing connections closed,
// say), it reconnects and consumes on: the queue is durable, nothing is lost.
func newAMQPSink(ctx context.Context, e *env, target int) (*sink, error) {
	queue := randomName("wj_bench_")
	consume := func(ctx context.Context) (*amqp.Connection, <-chan amqp.Delivery, error) {
		conn, err := amqp.Dial(e.cfg.AMQPURI)
		if err != nil {
			return nil, nil, fmt.Errorf("bench: connect to RabbitMQ at %s: %w (use --amqp none to skip the RabbitMQ legs)", jasperamqp.RedactURL(e.cfg.AMQPURI), err)
		}
		ch, err := conn.Channel()
		if err == nil {
			_, err = ch.QueueDeclare(queue, true, false, false, false, nil)
		}
		var deliveries <-chan amqp.Delivery
		if err == nil {
			deliveries, err = ch.ConsumeWithContext(ctx, queue, "", true, false, false, false, nil)
		}
		if err != nil {
			_ = conn.Close()
			return nil, nil, fmt.Errorf("bench: consume queue %s: %w", queue, err)
		}
		return conn, deliveries, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	conn, deliveries, err := consume(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	e.mu.Lock()
	e.queues[queue] = struct{}{}
	e.mu.Unlock()
	var connMu sync.Mutex
	c := newCounter(target)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			for d := range deliveries {
				id, _ := d.Headers[wmamqp.DefaultMessageUUIDHeaderKey].(string)
				c.add(id)
			}
			for ctx.Err() == nil {
				nc, nd, err := consume(ctx)
				if err == nil {
					connMu.Lock()
					_ = conn.Close()
					conn, deliveries = nc, nd
					connMu.Unlock()
					e.logf("amqp sink: consumer reconnected to queue %s", queue)
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
			if ctx.Err() != nil {
				return
			}
		}
	}()
	return &sink{
		kind: sinkAMQP, topic: queue, counter: c,
		close: func() error {
			cancel()
			connMu.Lock()
			err := conn.Close()
			connMu.Unlock()
			if errors.Is(err, amqp.ErrClosed) {
				err = nil
			}
			<-done
			return errors.Join(err, e.deleteQueues(queue))
		},
	}, nil
}

// deleteQueues deletes RabbitMQ queues over a fresh connection.
func (e *env) deleteQueues(queues ...string) error {
	if len(queues) == 0 {
		return nil
	}
	conn, err := amqp.Dial(e.cfg.AMQPURI)
	if err != nil {
		return fmt.Errorf("bench: connect to RabbitMQ at %s to delete queues: %w", jasperamqp.RedactURL(e.cfg.AMQPURI), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("bench: delete queues: %w", err)
	}
	for _, q := range queues {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			return fmt.Errorf("bench: delete queue %s: %w", q, err)
		}
		e.mu.Lock()
		delete(e.queues, q)
		e.mu.Unlock()
	}
	return nil
}

// amqpPublisherConfig is the watermill-amqp configuration of Watermill's relay: a durable
// queue config (default exchange, routing key = topic = queue, persistent messages) with
// publisher confirms, otherwise watermill-amqp's defaults.
func amqpPublisherConfig(uri string) wmamqp.Config {
	cfg := wmamqp.NewDurableQueueConfig(uri)
	cfg.Publish.ConfirmDelivery = true
	return cfg
}

func newSink(ctx context.Context, e *env, kind string, target int) (*sink, error) {
	if kind == sinkAMQP {
		return newAMQPSink(ctx, e, target)
	}
	return newGoChannelSink(ctx, e, target)
}
