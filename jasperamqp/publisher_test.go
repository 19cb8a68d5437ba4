package jasperamqp

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/fault"
)

// newPublisherFunc builds a publisher for a test and closes it when the test ends.
type newPublisherFunc func(t testing.TB, opts ...Option) message.Publisher

// forEachPublisher runs test as a subtest for each constructor: NewPublisher (watermill-amqp)
// and NewConfirmPublisher (amqp091 with pipelined confirms), which must behave alike.
func forEachPublisher(t *testing.T, test func(t *testing.T, newPub newPublisherFunc)) {
	t.Run("watermill-amqp", func(t *testing.T) { test(t, newTestPublisher) })
	t.Run("confirm", func(t *testing.T) { test(t, newTestConfirmPublisher) })
}

func newTestPublisher(t testing.TB, opts ...Option) message.Publisher {
	return newTestPublisherWith(t, NewPublisher, opts...)
}

func newTestConfirmPublisher(t testing.TB, opts ...Option) message.Publisher {
	return newTestPublisherWith(t, NewConfirmPublisher, opts...)
}

func newTestPublisherWith(t testing.TB, constructor func(string, watermill.LoggerAdapter, ...Option) (message.Publisher, error), opts ...Option) message.Publisher {
	t.Helper()
	newBroker(t) // fails with the start hint when the broker is down
	pub, err := constructor(testURL(), watermill.NopLogger{}, opts...)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	t.Cleanup(func() {
		if err := pub.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return pub
}

func TestPublishToDurableQueue(t *testing.T) {
	forEachPublisher(t, func(t *testing.T, newPub newPublisherFunc) {
		b := newBroker(t)
		q := name("queue")
		b.deleteQueueAtEnd(q)
		pub := newPub(t, WithDeclareQueues(true))

		msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order":42}`))
		msg.Metadata.Set("jasper_message_type", "order-created")
		msg.Metadata.Set("jasper_content_type", "application/json")
		msg.Metadata.Set("correlation_id", "corr-1")
		if err := pub.Publish("rabbitmq://queue/"+q, msg); err != nil {
			t.Fatalf("Publish: %v", err)
		}

		// The publisher declared the queue durable: redeclaring it non-durable is refused.
		ch, err := b.conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		_, err = ch.QueueDeclare(q, false, false, false, false, nil)
		var ae *amqp091.Error
		if !errors.As(err, &ae) || ae.Code != amqp091.PreconditionFailed {
			t.Errorf("queue %s is not durable: redeclaring it non-durable gave %v", q, err)
		}
		_ = ch.Close()

		d := b.get(q)
		if string(d.Body) != `{"order":42}` {
			t.Errorf("body %q", d.Body)
		}
		if d.DeliveryMode != amqp091.Persistent {
			t.Errorf("delivery mode %d, want %d (persistent)", d.DeliveryMode, amqp091.Persistent)
		}
		if d.Exchange != "" || d.RoutingKey != q {
			t.Errorf("published to exchange %q key %q, want the default exchange with key %q", d.Exchange, d.RoutingKey, q)
		}
		if got := d.Headers[amqp.DefaultMessageUUIDHeaderKey]; got != msg.UUID {
			t.Errorf("header %s = %v, want %s", amqp.DefaultMessageUUIDHeaderKey, got, msg.UUID)
		}
		for k, v := range msg.Metadata {
			if d.Headers[k] != v {
				t.Errorf("header %s = %v, want %q", k, d.Headers[k], v)
			}
		}
		if d.MessageId != msg.UUID || d.ContentType != "application/json" {
			t.Errorf("message-id %q content-type %q", d.MessageId, d.ContentType)
		}
		// And watermill-amqp's own unmarshaling gives the message back.
		back, err := Marshaler{}.Unmarshal(d)
		if err != nil || !back.Equals(msg) {
			t.Errorf("unmarshal: %v, %+v", err, back)
		}
	})
}

func TestPublishToMissingQueue(t *testing.T) {
	forEachPublisher(t, func(t *testing.T, newPub newPublisherFunc) {
		b := newBroker(t)
		q := name("missing")
		pub := newPub(t) // DeclareQueues false: check only

		err := pub.Publish("rabbitmq://queue/"+q, message.NewMessage(watermill.NewUUID(), []byte("x")))
		if !errors.Is(err, ErrDestinationNotFound) {
			t.Fatalf("publish to a missing queue: %v, want ErrDestinationNotFound", err)
		}
		var de *DestinationError
		if errors.As(err, &de) {
			t.Errorf("a missing queue is not a permanent failure: %v", err)
		}
		for _, want := range []string{q, "WithDeclareQueues"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		if b.queueExists(q) {
			b.deleteQueueAtEnd(q)
			t.Fatalf("queue %s was created without DeclareQueues", q)
		}

		// Once the queue exists the same publisher delivers (failures are not cached).
		b.queue(q)
		if err := pub.Publish("rabbitmq://queue/"+q, message.NewMessage(watermill.NewUUID(), []byte("y"))); err != nil {
			t.Fatalf("publish after creating the queue: %v", err)
		}
		if got := b.get(q); string(got.Body) != "y" {
			t.Errorf("body %q", got.Body)
		}
	})
}

func TestPublishToExchangeWithRoutingKey(t *testing.T) {
	forEachPublisher(t, func(t *testing.T, newPub newPublisherFunc) {
		b := newBroker(t)
		ex := name("exchange")
		ch := b.ch()
		if err := ch.ExchangeDeclare(ex, "direct", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		b.deleteExchangeAtEnd(ex)
		created, cancelled := name("created"), name("cancelled")
		for q, key := range map[string]string{created: "order.created", cancelled: "order.cancelled"} {
			b.queue(q)
			if err := ch.QueueBind(q, key, ex, false, nil); err != nil {
				t.Fatal(err)
			}
		}
		pub := newPub(t)

		// .NET canonical spelling: upper-case scheme and host, trailing slash.
		topic := "RABBITMQ://EXCHANGE/" + ex + "/routing/order.created/"
		msg := message.NewMessage(watermill.NewUUID(), []byte("created"))
		if err := pub.Publish(topic, msg); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		d := b.get(created)
		if string(d.Body) != "created" || d.Exchange != ex || d.RoutingKey != "order.created" ||
			d.Headers[amqp.DefaultMessageUUIDHeaderKey] != msg.UUID || d.DeliveryMode != amqp091.Persistent {
			t.Errorf("got body %q exchange %q key %q headers %v mode %d", d.Body, d.Exchange, d.RoutingKey, d.Headers, d.DeliveryMode)
		}
		if n := b.count(cancelled); n != 0 {
			t.Errorf("%d messages went to the queue bound to another key", n)
		}
	})
}

func TestPublishToFanoutExchange(t *testing.T) {
	forEachPublisher(t, func(t *testing.T, newPub newPublisherFunc) {
		b := newBroker(t)
		ex, q := name("fanout"), name("fanout-q")
		if err := b.ch().ExchangeDeclare(ex, "fanout", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		b.deleteExchangeAtEnd(ex)
		b.queue(q)
		if err := b.ch().QueueBind(q, "", ex, false, nil); err != nil {
			t.Fatal(err)
		}
		pub := newPub(t)
		if err := pub.Publish("rabbitmq://exchange/"+ex, message.NewMessage(watermill.NewUUID(), []byte("fan"))); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if d := b.get(q); string(d.Body) != "fan" || d.RoutingKey != "" {
			t.Errorf("body %q key %q", d.Body, d.RoutingKey)
		}
	})
}

func TestPublishToMissingExchange(t *testing.T) {
	forEachPublisher(t, func(t *testing.T, newPub newPublisherFunc) {
		b := newBroker(t)
		ex := name("missing-ex")
		topic := "rabbitmq://exchange/" + ex + "/routing/k"

		pub := newPub(t)
		err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x")))
		if !errors.Is(err, ErrDestinationNotFound) || !strings.Contains(err.Error(), ex) {
			t.Fatalf("publish to a missing exchange: %v, want ErrDestinationNotFound naming it", err)
		}

		// No queue is bound: without DropUnroutable the confirm publisher reports ErrUnroutable.
		declaring := newPub(t, WithDeclareExchanges(true, "topic"), WithDropUnroutable(true))
		b.deleteExchangeAtEnd(ex)
		if err := declaring.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
			t.Fatalf("publish with WithDeclareExchanges: %v", err)
		}
		// Declared durable, of type topic: an equivalent declaration passes, another type fails.
		if err := b.ch().ExchangeDeclare(ex, "topic", true, false, false, false, nil); err != nil {
			t.Errorf("exchange %s is not a durable topic exchange: %v", ex, err)
		}
		err = b.ch().ExchangeDeclare(ex, "fanout", true, false, false, false, nil)
		var ae *amqp091.Error
		if !errors.As(err, &ae) || ae.Code != amqp091.PreconditionFailed {
			t.Errorf("redeclaring %s as fanout: %v, want 406", ex, err)
		}
	})
}

func TestPublishRejectsNonRabbitMQDestinations(t *testing.T) {
	forEachPublisher(t, func(t *testing.T, newPub newPublisherFunc) {
		pub := newPub(t)
		msg := func() *message.Message { return message.NewMessage(watermill.NewUUID(), []byte("x")) }

		for _, topic := range []string{"local://x", "local://durable/orders", "tcp://localhost:2222/", "sqs://orders"} {
			err := pub.Publish(topic, msg())
			if !errors.Is(err, ErrNotRabbitMQ) {
				t.Errorf("%s: %v, want ErrNotRabbitMQ", topic, err)
				continue
			}
			var de *DestinationError
			if !errors.As(err, &de) || !fault.IsPermanent(err) || de.URI != topic {
				t.Errorf("%s: %#v is not a permanent *DestinationError", topic, err)
			}
			if !strings.Contains(err.Error(), topic) || !strings.Contains(err.Error(), "rabbitmq://queue/NAME") {
				t.Errorf("%s: unclear error %q", topic, err)
			}
			if strings.HasPrefix(topic, "local:") && !strings.Contains(err.Error(), "local") {
				t.Errorf("%s: error %q does not say it is a local queue", topic, err)
			}
		}
		for _, topic := range []string{"rabbitmq://topic/x", "rabbitmq://queue/", "orders"} {
			err := pub.Publish(topic, msg())
			var de *DestinationError
			if !errors.Is(err, ErrInvalidDestination) || !errors.As(err, &de) || !fault.IsPermanent(err) {
				t.Errorf("%s: %v, want a permanent ErrInvalidDestination", topic, err)
			}
		}
		if err := pub.Publish("rabbitmq://queue/x", msg(), nil); err == nil || !strings.Contains(err.Error(), "message 2 of 2 is nil") {
			t.Errorf("nil message: %v", err)
		}
		if err := pub.Publish("rabbitmq://queue/does-not-matter"); err != nil {
			t.Errorf("publishing no message: %v", err)
		}
	})
}

func TestPublishHonoursContext(t *testing.T) {
	forEachPublisher(t, func(t *testing.T, newPub newPublisherFunc) {
		b := newBroker(t)
		q := name("ctx")
		b.queue(q)
		pub := newPub(t, WithPublishTimeout(30*time.Second))

		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		msg := message.NewMessage(watermill.NewUUID(), []byte("late"))
		msg.SetContext(ctx)
		if err := pub.Publish("rabbitmq://queue/"+q, msg); !errors.Is(err, context.Canceled) {
			t.Errorf("publish with a cancelled context: %v", err)
		}

		// With a live context (and the timeout) the publish goes through the waiting path.
		ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		msg = message.NewMessage(watermill.NewUUID(), []byte("on time"))
		msg.SetContext(ctx)
		if err := pub.Publish("rabbitmq://queue/"+q, msg); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if d := b.get(q); string(d.Body) != "on time" {
			t.Errorf("got %q (the cancelled message must not have been sent)", d.Body)
		}
	})
}

func TestCloseRejectsLaterPublishes(t *testing.T) {
	newBroker(t)
	pub, err := NewPublisher(testURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := pub.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := pub.Publish("rabbitmq://queue/x", message.NewMessage("1", nil)); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
}

func TestNewPublisherNeverShowsThePassword(t *testing.T) {
	newBroker(t)
	const secret = "Wr0ngS3cret"
	logger := watermill.NewCaptureLogger()
	for _, u := range []string{
		"amqp://guest:" + secret + "@localhost:5672/",    // refused by the broker
		"amqp://guest:" + secret + "@127.0.0.1:1/",       // nothing listens
		"amqp://guest:" + secret + "@local host:5672/",   // does not parse
		"http://guest:" + secret + "@localhost:5672/",    // wrong scheme
		"amqp://guest:" + secret + "@localhost:5672/%zz", // bad escape
	} {
		_, err := NewPublisher(u, logger)
		if err == nil {
			t.Errorf("%s: no error", RedactURL(u))
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows the password: %v", err)
		}
		if !strings.Contains(err.Error(), "guest:xxxxx@") {
			t.Errorf("error %q does not name the (redacted) URL", err)
		}
	}
	if _, err := NewPublisher("", logger); err == nil || !strings.Contains(err.Error(), "empty AMQP URL") {
		t.Errorf("empty URL: %v", err)
	}

	// A working publisher logs the redacted URL only.
	pub, err := NewPublisher(testURL(), logger)
	if err != nil {
		t.Fatal(err)
	}
	_ = pub.Close()
	pw := password(testURL())
	seenURL := false
	for _, msgs := range logger.Captured() {
		for _, m := range msgs {
			line := fmt.Sprint(m.Msg, m.Fields, m.Err)
			if strings.Contains(line, secret) || (pw != "" && strings.Contains(line, ":"+pw+"@")) {
				t.Errorf("log shows a password: %s", line)
			}
			seenURL = seenURL || m.Fields["amqp_url"] == RedactURL(testURL())
		}
	}
	if !seenURL {
		t.Error("logs do not name the broker (redacted amqp_url field)")
	}
}

// TestConcurrentPublishArrivesExactlyOnce publishes 2,000 messages from 64 goroutines, one
// message per Publish call, and checks that each arrives exactly once.
func TestConcurrentPublishArrivesExactlyOnce(t *testing.T) {
	forEachPublisher(t, func(t *testing.T, newPub newPublisherFunc) {
		const total, workers = 2000, 64
		b := newBroker(t)
		q := name("concurrent")
		b.queue(q)
		pub := newPub(t)
		topic := "rabbitmq://queue/" + q

		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, total)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1) - 1
					if i >= total {
						return
					}
					msg := message.NewMessage(fmt.Sprintf("msg-%04d", i), []byte(strconv.FormatInt(i, 10)))
					if err := pub.Publish(topic, msg); err != nil {
						errs <- fmt.Errorf("message %d: %w", i, err)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			return
		}

		// Confirmed means enqueued: everything is there before we start consuming.
		if n := b.count(q); n != total {
			t.Errorf("queue holds %d messages after all confirms, want %d", n, total)
		}
		seen := make(map[string]int, total)
		ch := b.ch()
		deliveries, err := ch.Consume(q, "", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		timeout := time.After(60 * time.Second)
		for len(seen) < total {
			select {
			case d := <-deliveries:
				id, _ := d.Headers[amqp.DefaultMessageUUIDHeaderKey].(string)
				seen[id]++
				i, _ := strconv.Atoi(string(d.Body))
				if want := fmt.Sprintf("msg-%04d", i); id != want {
					t.Errorf("message %s carries payload %q", id, d.Body)
				}
			case <-timeout:
				t.Fatalf("only %d of %d distinct messages arrived", len(seen), total)
			}
		}
		// Nothing beyond the 2,000: no late duplicates.
		select {
		case d := <-deliveries:
			t.Errorf("extra delivery %v", d.Headers[amqp.DefaultMessageUUIDHeaderKey])
		case <-time.After(300 * time.Millisecond):
		}
		for id, n := range seen {
			if n != 1 {
				t.Errorf("%s arrived %d times", id, n)
			}
		}
		if n := b.count(q); n != 0 {
			t.Errorf("%d messages left over", n)
		}
	})
}

// TestPublishThroughput logs the publish rate with confirms for 1 and 64 concurrent publishers
// (one message per Publish call, persistent, durable queue) so that changes in throughput show
// up in the test log. It asserts correctness only, never speed.
func TestPublishThroughput(t *testing.T) {
	b := newBroker(t)
	pub := newTestPublisher(t)
	payload := make([]byte, 256)
	for _, tc := range []struct{ workers, total int }{{1, 300}, {64, 4000}} {
		q := name(fmt.Sprintf("throughput-%d", tc.workers))
		b.queue(q)
		topic := "rabbitmq://queue/" + q
		// Warm up: first-message topology check.
		if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), payload)); err != nil {
			t.Fatal(err)
		}
		var next atomic.Int64
		var failed atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range tc.workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(tc.total) {
					if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), payload)); err != nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		if failed.Load() > 0 {
			t.Fatalf("%d publishes failed", failed.Load())
		}
		if n := b.count(q); n != tc.total+1 {
			t.Errorf("queue holds %d messages, want %d", n, tc.total+1)
		}
		t.Logf("%2d concurrent publisher(s), confirms on, %d-byte persistent messages, channel pool %d: %d msgs in %v = %.0f msgs/s",
			tc.workers, len(payload), DefaultChannelPoolSize, tc.total, elapsed.Round(time.Millisecond), float64(tc.total)/elapsed.Seconds())
	}
}

func TestSubscriberConfigConsumesAJasperQueue(t *testing.T) {
	b := newBroker(t)
	q := name("sub")
	b.deleteQueueAtEnd(q)

	sub, err := amqp.NewSubscriber(NewSubscriberConfig(testURL(), WithDeclareQueues(true)), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, err := sub.Subscribe(ctx, "rabbitmq://queue/"+q) // a plain queue name works too
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	pub := newTestPublisher(t)
	sent := message.NewMessage(watermill.NewUUID(), []byte("hello"))
	sent.Metadata.Set("jasper_message_type", "greeting")
	if err := pub.Publish("rabbitmq://queue/"+q, sent); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	select {
	case got := <-msgs:
		if !got.Equals(sent) {
			t.Errorf("got %s %q %v, want %s %q %v", got.UUID, got.Payload, got.Metadata, sent.UUID, sent.Payload, sent.Metadata)
		}
		got.Ack()
	case <-ctx.Done():
		t.Fatal("no message consumed")
	}

	// Without DeclareQueues a missing queue is reported, not created.
	missing := name("sub-missing")
	sub2, err := amqp.NewSubscriber(NewSubscriberConfig(testURL()), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	if _, err := sub2.Subscribe(ctx, missing); !errors.Is(err, ErrDestinationNotFound) {
		t.Errorf("subscribe to a missing queue: %v, want ErrDestinationNotFound", err)
	}
	if b.queueExists(missing) {
		b.deleteQueueAtEnd(missing)
		t.Errorf("queue %s was created", missing)
	}
}

func TestPublisherConfig(t *testing.T) {
	cfg := NewPublisherConfig("amqp://guest:guest@localhost:5672/")
	if err := cfg.ValidatePublisher(); err != nil {
		t.Fatal(err)
	}
	if !cfg.Publish.ConfirmDelivery || cfg.Publish.ChannelPoolSize != DefaultChannelPoolSize || cfg.Publish.Transactional {
		t.Errorf("publish config %+v", cfg.Publish)
	}
	if cfg.Connection.Reconnect == nil || cfg.Connection.Reconnect.BackoffMaxInterval <= 0 {
		t.Errorf("reconnect config %+v", cfg.Connection.Reconnect)
	}
	p, err := cfg.Marshaler.Marshal(message.NewMessage("id-1", []byte("x")))
	if err != nil || p.DeliveryMode != amqp091.Persistent {
		t.Errorf("marshaled delivery mode %d (%v), want persistent", p.DeliveryMode, err)
	}
	if got := cfg.Exchange.GenerateName("rabbitmq://exchange/e/routing/k"); got != "e" {
		t.Errorf("exchange %q", got)
	}
	if got := cfg.Publish.GenerateRoutingKey("rabbitmq://exchange/e/routing/k"); got != "k" {
		t.Errorf("routing key %q", got)
	}
	if got := cfg.Exchange.GenerateName("local://x"); got != invalidTopicExchange {
		t.Errorf("a local topic maps to exchange %q", got)
	}
	if err := cfg.TopologyBuilder.ExchangeDeclare(nil, invalidTopicExchange, cfg); err == nil {
		t.Error("the topology builder accepts a non-RabbitMQ topic")
	}

	cfg = NewPublisherConfig("amqp://x", WithChannelPoolSize(-1), WithDeclareExchanges(true, ""), nil)
	if cfg.Publish.ChannelPoolSize != 0 || cfg.Exchange.Type != DefaultExchangeType {
		t.Errorf("options not applied: %+v %+v", cfg.Publish, cfg.Exchange)
	}

	sc := NewSubscriberConfig("amqp://guest:guest@localhost:5672/", WithPrefetchCount(10))
	if err := sc.ValidateSubscriber(); err != nil {
		t.Fatal(err)
	}
	if sc.Queue.GenerateName("rabbitmq://queue/orders") != "orders" || sc.Queue.GenerateName("orders") != "orders" ||
		sc.Exchange.GenerateName("orders") != "" || sc.Consume.Qos.PrefetchCount != 10 || !sc.Queue.Durable {
		t.Errorf("subscriber config %+v", sc)
	}
}

// BenchmarkPublish measures confirmed publishes of 256-byte persistent messages to a durable
// queue, one message per Publish call: serially and from 64 goroutines.
// Run: go test -run '^$' -bench Publish ./jasperamqp/
func BenchmarkPublish(b *testing.B) {
	for _, goroutines := range []int{1, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			br := newBroker(b)
			q := name("bench")
			br.queue(q)
			pub := newTestPublisher(b)
			topic := "rabbitmq://queue/" + q
			payload := make([]byte, 256)
			if err := pub.Publish(topic, message.NewMessage("warm-up", payload)); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), payload)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
