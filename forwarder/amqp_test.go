package forwarder

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// amqpURI is the local RabbitMQ of the build machines.
const amqpURI = "amqp://guest:guest@localhost:5672/"

// requireRabbitMQ fails the test (never skips it) when RabbitMQ is not running.
func requireRabbitMQ(t testing.TB) {
	t.Helper()
	conn, err := amqp091.DialConfig(amqpURI, amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("RabbitMQ at localhost:5672 is not reachable (%v); start it with: rabbitmq-server -detached", err)
	}
	_ = conn.Close()
}

// testQueue returns a unique queue name and deletes the queue when the test ends.
func testQueue(t testing.TB, prefix string) string {
	t.Helper()
	name := testdb.RandomName(prefix)
	t.Cleanup(func() {
		conn, err := amqp091.Dial(amqpURI)
		if err != nil {
			t.Errorf("delete queue %s: %v", name, err)
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("delete queue %s: %v", name, err)
			return
		}
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			t.Errorf("delete queue %s: %v", name, err)
		}
	})
	return name
}

// consumeQueue subscribes to a durable queue directly (not through any proxy).
func consumeQueue(t testing.TB, queue string, want int) *collector {
	t.Helper()
	cfg := amqp.NewDurableQueueConfig(amqpURI)
	cfg.Consume.Qos.PrefetchCount = 200
	sub, err := amqp.NewSubscriber(cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return collect(t, sub, queue, want)
}

// amqpEvents is the logger of the watermill-amqp publisher: it reports the connection's
// life cycle (messages of watermill-amqp v2.1.3's connection.go).
type amqpEvents struct {
	lost      chan struct{} // "Received close notification from AMQP, reconnecting"
	connected chan struct{} // "Connected to AMQP"
}

func newAMQPEvents() *amqpEvents {
	return &amqpEvents{lost: make(chan struct{}, 16), connected: make(chan struct{}, 16)}
}

func (l *amqpEvents) Error(msg string, _ error, _ watermill.LogFields) {
	if msg == "Received close notification from AMQP, reconnecting" {
		l.lost <- struct{}{}
	}
}

func (l *amqpEvents) Info(msg string, _ watermill.LogFields) {
	if msg == "Connected to AMQP" {
		l.connected <- struct{}{}
	}
}

func (l *amqpEvents) Debug(string, watermill.LogFields)                {}
func (l *amqpEvents) Trace(string, watermill.LogFields)                {}
func (l *amqpEvents) With(watermill.LogFields) watermill.LoggerAdapter { return l }

// gate stops calls to a publisher and waits for those in flight.
//
// It exists for the race detector only: watermill-amqp v2.1.3 rewrites
// ConnectionWrapper.connected from its reconnect goroutine without synchronisation while
// Publish reads it (ThreeDotsLabs/watermill#693), so under -race no Publish may overlap the
// moment the connection drops. The gate is closed across that moment only: before the cut
// until watermill-amqp has logged the lost connection (its write is done); during the rest
// of the outage Publish runs and fails as it would in production.
type gate struct {
	next   message.Publisher
	mu     sync.RWMutex
	closed bool
}

var errGateClosed = errors.New("test gate: broker connection is being cut")

func (g *gate) Publish(topic string, msgs ...*message.Message) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return errGateClosed
	}
	return g.next.Publish(topic, msgs...)
}

func (g *gate) Close() error { return nil }

func (g *gate) set(closed bool) {
	g.mu.Lock()
	g.closed = closed
	g.mu.Unlock()
}

// The broker becomes unreachable for a few seconds while envelopes are committed: once it
// is back, every envelope is delivered (with publisher confirms) and none is dead-lettered.
func TestBrokerOutage(t *testing.T) {
	t.Parallel()
	requireRabbitMQ(t)
	e := newEnv(t)
	queue := testQueue(t, "wj_fwd_outage_")

	proxy, err := tcpproxy.New("localhost:5672")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()

	pubCfg := amqp.NewDurableQueueConfig("amqp://guest:guest@" + proxy.Addr() + "/")
	pubCfg.Publish.ConfirmDelivery = true
	pubCfg.Connection.Reconnect = &amqp.ReconnectConfig{
		BackoffInitialInterval:     50 * time.Millisecond,
		BackoffRandomizationFactor: 0.2,
		BackoffMultiplier:          1.5,
		BackoffMaxInterval:         300 * time.Millisecond,
	}
	events := newAMQPEvents()
	pub, err := amqp.NewPublisher(pubCfg, events)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	<-events.connected
	g := &gate{next: pub}

	const n = 300
	c := consumeQueue(t, queue, n+1)

	f := e.forwarder(Config{
		Publisher:    g,
		MaxAttempts:  1000, // the breaker must keep attempts far below this
		CircuitPause: 100 * time.Millisecond, MaxCircuitPause: 400 * time.Millisecond,
		PollInterval: 200 * time.Millisecond,
	})
	start(t, f)

	// The path works...
	first := newMessages(1, "before")
	e.insert(queue, first...)
	c.waitCount(t, 1, "first message")

	// ...then the broker disappears while envelopes are committed, and comes back later.
	if raceEnabled {
		g.set(true)
	}
	proxy.Cut()
	if raceEnabled {
		select {
		case <-events.lost:
		case <-time.After(testTimeout):
			t.Fatal("watermill-amqp did not notice the cut")
		}
		g.set(false)
	}
	e.insert(queue, newMessages(n, "during")...)
	outage := 3 * time.Second
	restored := make(chan error, 1)
	time.AfterFunc(outage, func() { restored <- proxy.Restore() }) // the fault itself, not synchronisation
	c.wait(t, "messages after the outage")
	if err := <-restored; err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	st := f.Stats()
	t.Logf("stats after a %s outage: %+v", outage, st)
	if n := e.deadLetters(); n != 0 {
		t.Fatalf("%d envelopes dead-lettered", n)
	}
	if n := e.outgoing(); n != 0 {
		t.Fatalf("%d envelopes left in the outbox", n)
	}
	// The circuit breaker let a probe through per pause instead of retrying every envelope.
	if st.Failed >= n {
		t.Fatalf("%d failed publishes for %d envelopes: the circuit breaker did not hold them back", st.Failed, n)
	}
}
