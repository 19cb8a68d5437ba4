package jasperamqp

import (
	"context"
	"errors"
	"fmt"
	"net/url"
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

	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
)

// fastReconnect keeps the reconnection tests short.
var fastReconnect = WithReconnect(&amqp.ReconnectConfig{
	BackoffInitialInterval:     50 * time.Millisecond,
	BackoffRandomizationFactor: 0.2,
	BackoffMultiplier:          1.5,
	BackoffMaxInterval:         500 * time.Millisecond,
})

// consumeAll consumes queue until want distinct message UUIDs arrived (then 300 ms more, to see
// late duplicates) and returns how often each UUID arrived, keyed by UUID.
func consumeAll(t *testing.T, b *broker, queue string, want int, check func(amqp091.Delivery)) map[string]int {
	t.Helper()
	seen := make(map[string]int, want)
	deliveries, err := b.ch().Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(60 * time.Second)
	for len(seen) < want {
		select {
		case d := <-deliveries:
			seen[d.MessageId]++
			if check != nil {
				check(d)
			}
		case <-timeout:
			t.Fatalf("only %d of %d distinct messages arrived on %s", len(seen), want, queue)
		}
	}
	for {
		select {
		case d := <-deliveries:
			seen[d.MessageId]++
		case <-time.After(300 * time.Millisecond):
			return seen
		}
	}
}

// TestConfirmPublisherExactlyOnce publishes 5,000 messages from 64 goroutines, one message per
// Publish call, and checks that each arrives exactly once, with its payload, headers and
// properties.
func TestConfirmPublisherExactlyOnce(t *testing.T) {
	const total, workers = 5000, 64
	b := newBroker(t)
	q := name("confirm-once")
	b.queue(q)
	pub := newTestConfirmPublisher(t)
	topic := "rabbitmq://queue/" + q

	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				msg := message.NewMessage(fmt.Sprintf("msg-%05d", i), []byte(strconv.FormatInt(i, 10)))
				msg.Metadata.Set("jasper_content_type", "text/plain")
				msg.Metadata.Set("n", strconv.FormatInt(i, 10))
				if err := pub.Publish(topic, msg); err != nil {
					errs <- fmt.Errorf("message %d: %w", i, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if n := b.count(q); n != total {
		t.Errorf("queue holds %d messages after all confirms, want %d", n, total)
	}
	seen := consumeAll(t, b, q, total, func(d amqp091.Delivery) {
		i, _ := strconv.Atoi(string(d.Body))
		want := fmt.Sprintf("msg-%05d", i)
		if d.MessageId != want || d.Headers[amqp.DefaultMessageUUIDHeaderKey] != want || d.Headers["n"] != string(d.Body) ||
			d.ContentType != "text/plain" || d.DeliveryMode != amqp091.Persistent {
			t.Errorf("message %q: payload %q headers %v content-type %q mode %d", d.MessageId, d.Body, d.Headers, d.ContentType, d.DeliveryMode)
		}
	})
	if len(seen) != total {
		t.Errorf("%d distinct messages arrived, want %d", len(seen), total)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s arrived %d times", id, n)
		}
	}
}

// TestConfirmPublisherKeepsOrderWithinACall checks that the messages of one Publish call arrive
// in order.
func TestConfirmPublisherKeepsOrderWithinACall(t *testing.T) {
	b := newBroker(t)
	q := name("confirm-order")
	b.queue(q)
	pub := newTestConfirmPublisher(t)
	msgs := make([]*message.Message, 50)
	for i := range msgs {
		msgs[i] = message.NewMessage(fmt.Sprintf("m-%02d", i), []byte(strconv.Itoa(i)))
	}
	if err := pub.Publish("rabbitmq://queue/"+q, msgs...); err != nil {
		t.Fatal(err)
	}
	for i := range msgs {
		if d := b.get(q); string(d.Body) != strconv.Itoa(i) {
			t.Fatalf("message %d: got %q", i, d.Body)
		}
	}
}

// TestConfirmPublisherUnroutable: a message no queue receives is an error (mandatory flag and
// basic.return), not a silent drop.
func TestConfirmPublisherUnroutable(t *testing.T) {
	b := newBroker(t)
	ex := name("unbound")
	if err := b.ch().ExchangeDeclare(ex, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	b.deleteExchangeAtEnd(ex)
	bound := name("bound")
	b.queue(bound)
	if err := b.ch().QueueBind(bound, "yes", ex, false, nil); err != nil {
		t.Fatal(err)
	}
	pub := newTestConfirmPublisher(t)
	msg := func(id string) *message.Message { return message.NewMessage(id, []byte(id)) }

	// Concurrent calls, routable and not, on the same channels: each gets its own outcome.
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			key, want := "yes", error(nil)
			if i%2 == 1 {
				key, want = "no", ErrUnroutable
			}
			err := pub.Publish("rabbitmq://exchange/"+ex+"/routing/"+key, msg(fmt.Sprintf("u-%02d", i)))
			if !errors.Is(err, want) {
				t.Errorf("key %s: %v, want %v", key, err, want)
			}
			if err != nil && (errors.Is(err, ErrDestinationNotFound) || !strings.Contains(err.Error(), ex) ||
				!strings.Contains(err.Error(), "NO_ROUTE")) {
				t.Errorf("unclear error for an unbound routing key: %v", err)
			}
		})
	}
	wg.Wait()
	if n := b.count(bound); n != 20 {
		t.Errorf("%d messages on the bound queue, want 20", n)
	}

	// A queue deleted after its check: the message is returned, not dropped; the queue is
	// checked again before the next message (declared when DeclareQueues is set).
	q := name("deleted")
	b.queue(q)
	declaring := newTestConfirmPublisher(t, WithDeclareQueues(true))
	for _, p := range []message.Publisher{pub, declaring} {
		if err := p.Publish("rabbitmq://queue/"+q, msg("before")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.ch().QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	err := pub.Publish("rabbitmq://queue/"+q, msg("after"))
	if !errors.Is(err, ErrUnroutable) || !errors.Is(err, ErrDestinationNotFound) || !strings.Contains(err.Error(), q) {
		t.Errorf("publish to a deleted queue: %v, want ErrUnroutable and ErrDestinationNotFound", err)
	}
	if err := pub.Publish("rabbitmq://queue/"+q, msg("again")); !errors.Is(err, ErrDestinationNotFound) || errors.Is(err, ErrUnroutable) {
		t.Errorf("second publish: %v, want the topology check's ErrDestinationNotFound", err)
	}
	if err := declaring.Publish("rabbitmq://queue/"+q, msg("after")); !errors.Is(err, ErrUnroutable) {
		t.Errorf("publish to a deleted queue: %v, want ErrUnroutable", err)
	}
	if err := declaring.Publish("rabbitmq://queue/"+q, msg("redeclared")); err != nil {
		t.Errorf("publish after the queue was redeclared: %v", err)
	}
	if d := b.get(q); string(d.Body) != "redeclared" {
		t.Errorf("got %q", d.Body)
	}

	// DropUnroutable restores RabbitMQ's default.
	dropping := newTestConfirmPublisher(t, WithDropUnroutable(true))
	if err := dropping.Publish("rabbitmq://exchange/"+ex+"/routing/no", msg("dropped")); err != nil {
		t.Errorf("with DropUnroutable: %v", err)
	}
}

// TestConfirmPublisherNack provokes real nacks: a queue that rejects publishes once full.
func TestConfirmPublisherNack(t *testing.T) {
	b := newBroker(t)
	q := name("full")
	if _, err := b.ch().QueueDeclare(q, true, false, false, false, amqp091.Table{
		"x-max-length": int32(3), "x-overflow": "reject-publish",
	}); err != nil {
		t.Fatal(err)
	}
	b.deleteQueueAtEnd(q)
	pub := newTestConfirmPublisher(t)
	var acked, nacked int
	for i := range 6 {
		err := pub.Publish("rabbitmq://queue/"+q, message.NewMessage(fmt.Sprintf("n-%d", i), []byte("x")))
		switch {
		case err == nil:
			acked++
		case errors.Is(err, ErrNacked):
			nacked++
		default:
			t.Errorf("message %d: %v", i, err)
		}
	}
	if acked != 3 || nacked != 3 {
		t.Errorf("%d acked, %d nacked; want 3 and 3", acked, nacked)
	}
	// The channel is still usable.
	if _, err := b.ch().QueuePurge(q, false); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish("rabbitmq://queue/"+q, message.NewMessage("after", []byte("x"))); err != nil {
		t.Errorf("after the nacks: %v", err)
	}
}

// TestConfirmPublisherReopensAClosedChannel: publishing to an exchange deleted after its check
// makes RabbitMQ close the channel (404); the call fails, the channel is reopened, the other
// destinations keep working, and the exchange is checked again before its next message.
func TestConfirmPublisherReopensAClosedChannel(t *testing.T) {
	b := newBroker(t)
	ex := name("gone")
	if err := b.ch().ExchangeDeclare(ex, "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	bq := name("gone-q")
	b.queue(bq)
	if err := b.ch().QueueBind(bq, "", ex, false, nil); err != nil {
		t.Fatal(err)
	}
	q := name("alive")
	b.queue(q)
	pub := newTestConfirmPublisher(t, WithConfirmChannels(1))
	if err := pub.Publish("rabbitmq://exchange/"+ex, message.NewMessage("first", nil)); err != nil {
		t.Fatal(err)
	}
	if err := b.ch().ExchangeDelete(ex, false, false); err != nil {
		t.Fatal(err)
	}
	err := pub.Publish("rabbitmq://exchange/"+ex, message.NewMessage("second", nil))
	if !errors.Is(err, ErrConnectionLost) || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Errorf("publish to a deleted exchange: %v, want ErrConnectionLost naming NOT_FOUND", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := pub.Publish("rabbitmq://queue/"+q, message.NewMessage("other", nil))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrConnectionLost) || time.Now().After(deadline) {
			t.Fatalf("publish to another destination: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := pub.Publish("rabbitmq://exchange/"+ex, message.NewMessage("third", nil)); !errors.Is(err, ErrDestinationNotFound) {
		t.Errorf("publish to the deleted exchange again: %v, want ErrDestinationNotFound from the check", err)
	}
	if n := b.count(q); n != 1 {
		t.Errorf("%d messages on %s, want 1", n, q)
	}
}

// proxyURL returns the test broker's URL with its host:port replaced by addr.
func proxyURL(t *testing.T, addr string) (proxied, target string) {
	t.Helper()
	u, err := url.Parse(testURL())
	if err != nil {
		t.Fatal(err)
	}
	target = u.Host
	if u.Port() == "" {
		target += ":5672"
	}
	u.Host = addr
	return u.String(), target
}

// TestConfirmPublisherSurvivesConnectionDrops publishes 5,000 messages from 64 goroutines
// through a TCP proxy that cuts every connection twice mid-run. Calls fail with
// ErrConnectionLost and are retried (as the forwarder does), the publisher reconnects by itself,
// and every message whose Publish returned nil is in the queue.
func TestConfirmPublisherSurvivesConnectionDrops(t *testing.T) {
	const total, workers = 5000, 64
	b := newBroker(t)
	q := name("drops")
	b.queue(q)
	_, target := proxyURL(t, "")
	proxy, err := tcpproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	u, _ := proxyURL(t, proxy.Addr())
	logger := watermill.NewCaptureLogger()
	p, err := NewConfirmPublisher(u, logger, fastReconnect)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	topic := "rabbitmq://queue/" + q

	var next, confirmed, failures atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				id := fmt.Sprintf("d-%05d", i)
				for attempt := 1; ; attempt++ {
					err := p.Publish(topic, message.NewMessage(id, []byte(id)))
					if err == nil {
						confirmed.Add(1)
						break
					}
					failures.Add(1)
					if !errors.Is(err, ErrConnectionLost) {
						t.Errorf("%s: %v, want ErrConnectionLost", id, err)
						return
					}
					if attempt > 2000 {
						t.Errorf("%s: still failing after %d attempts: %v", id, attempt, err)
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
	cuts := 0
	for _, at := range []int64{total / 4, total / 2} {
		for confirmed.Load() < at && next.Load() < total {
			time.Sleep(time.Millisecond)
		}
		proxy.Cut()
		cuts++
		time.Sleep(300 * time.Millisecond) // the broker is "down"
		if err := proxy.Restore(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if failures.Load() == 0 {
		t.Fatal("no Publish call failed: the connection drops were not observed")
	}
	reconnects := 0
	for _, m := range logger.Captured()[watermill.InfoLogLevel] {
		if strings.Contains(m.Msg, "reconnected") {
			reconnects++
		}
	}
	if reconnects < cuts {
		t.Errorf("%d reconnections logged after %d cuts", reconnects, cuts)
	}
	seen := consumeAll(t, b, q, total, nil)
	dups := 0
	for i := range total {
		id := fmt.Sprintf("d-%05d", i)
		switch n := seen[id]; {
		case n == 0:
			t.Errorf("%s was confirmed but did not arrive", id)
		case n > 1:
			dups += n - 1
		}
	}
	if len(seen) != total {
		t.Errorf("%d distinct messages arrived, want %d", len(seen), total)
	}
	t.Logf("%d cuts: %d failed calls (retried), %d reconnections, %d duplicates (confirm lost with the connection), all %d confirmed messages arrived",
		cuts, failures.Load(), reconnects, dups, total)
}

// TestConfirmPublisherFailsFastWhileDisconnected: with the broker unreachable Publish fails at
// once with ErrConnectionLost, and Close does not hang.
func TestConfirmPublisherFailsFastWhileDisconnected(t *testing.T) {
	b := newBroker(t)
	q := name("down")
	b.queue(q)
	_, target := proxyURL(t, "")
	proxy, err := tcpproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	u, _ := proxyURL(t, proxy.Addr())
	p, err := NewConfirmPublisher(u, nil, fastReconnect)
	if err != nil {
		t.Fatal(err)
	}
	topic := "rabbitmq://queue/" + q
	if err := p.Publish(topic, message.NewMessage("up", nil)); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	deadline := time.Now().Add(5 * time.Second)
	for {
		start := time.Now()
		err := p.Publish(topic, message.NewMessage("down", nil))
		if errors.Is(err, ErrConnectionLost) {
			if d := time.Since(start); d > time.Second {
				t.Errorf("Publish took %v to fail", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish with the broker unreachable: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A destination not checked yet: the topology check cannot connect either.
	other := name("down-other")
	b.queue(other)
	if err := p.Publish("rabbitmq://queue/"+other, message.NewMessage("down", nil)); !errors.Is(err, ErrConnectionLost) {
		t.Errorf("publish to an unchecked destination while disconnected: %v, want ErrConnectionLost", err)
	}
	start := time.Now()
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v while disconnected", d)
	}
	if err := p.Publish(topic, message.NewMessage("closed", nil)); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// TestConfirmPublisherCloseWaitsForCallsInFlight: Close lets the calls in flight finish (their
// messages confirmed), is idempotent and safe to call concurrently.
func TestConfirmPublisherCloseWaitsForCallsInFlight(t *testing.T) {
	b := newBroker(t)
	q := name("close")
	b.queue(q)
	p, err := NewConfirmPublisher(testURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	topic := "rabbitmq://queue/" + q
	if err := p.Publish(topic, message.NewMessage("warm-up", nil)); err != nil {
		t.Fatal(err)
	}
	var ok, closed atomic.Int64
	var wg sync.WaitGroup
	started := make(chan struct{})
	var once sync.Once
	for w := range 32 {
		wg.Go(func() {
			for i := 0; ; i++ {
				once.Do(func() { close(started) })
				err := p.Publish(topic, message.NewMessage(fmt.Sprintf("c-%d-%d", w, i), []byte("x")))
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrClosed):
					closed.Add(1)
					return
				default:
					t.Errorf("Publish during Close: %v", err)
					return
				}
			}
		})
	}
	<-started
	time.Sleep(200 * time.Millisecond)
	var cw sync.WaitGroup
	for range 3 {
		cw.Go(func() {
			if err := p.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	cw.Wait()
	wg.Wait()
	if err := p.Close(); err != nil {
		t.Errorf("Close again: %v", err)
	}
	if n := int64(b.count(q)); n != ok.Load()+1 {
		t.Errorf("%d messages in the queue, %d confirmed: a call in flight was cut by Close", n, ok.Load()+1)
	}
	if closed.Load() != 32 {
		t.Errorf("%d goroutines saw ErrClosed, want 32", closed.Load())
	}
}

func TestConfirmPublisherHonoursContext(t *testing.T) {
	b := newBroker(t)
	q := name("confirm-ctx")
	b.queue(q)
	pub := newTestConfirmPublisher(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	msg := message.NewMessage("late", nil)
	msg.SetContext(ctx)
	if err := pub.Publish("rabbitmq://queue/"+q, msg); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	timed := newTestConfirmPublisher(t, WithPublishTimeout(time.Nanosecond))
	if err := timed.Publish("rabbitmq://queue/"+q, message.NewMessage("x", nil)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired PublishTimeout: %v", err)
	}
}

// TestConstructorsNeverShowThePassword covers both constructors.
func TestConstructorsNeverShowThePassword(t *testing.T) {
	newBroker(t)
	const secret = "Wr0ngS3cret"
	for name, constructor := range map[string]func(string, watermill.LoggerAdapter, ...Option) (message.Publisher, error){
		"NewPublisher": NewPublisher, "NewConfirmPublisher": NewConfirmPublisher,
	} {
		logger := watermill.NewCaptureLogger()
		for _, u := range []string{
			"amqp://guest:" + secret + "@localhost:5672/",
			"amqp://guest:" + secret + "@127.0.0.1:1/",
			"amqp://guest:" + secret + "@local host:5672/",
			"amqp://guest:" + secret + "@localhost:5672/%zz",
		} {
			_, err := constructor(u, logger)
			if err == nil {
				t.Errorf("%s(%s): no error", name, RedactURL(u))
				continue
			}
			if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "guest:xxxxx@") {
				t.Errorf("%s: error %q shows the password or does not name the URL", name, err)
			}
		}
		for _, msgs := range logger.Captured() {
			for _, m := range msgs {
				if line := fmt.Sprint(m.Msg, m.Fields, m.Err); strings.Contains(line, secret) {
					t.Errorf("%s: log shows the password: %s", name, line)
				}
			}
		}
	}
}

// TestConfirmPublisherThroughput logs the confirmed publish rate for 1 and 64 concurrent callers
// (one 256-byte persistent message per Publish call, durable queue), and for 64 callers with 1,
// 2 and 4 channels, and 256 callers. It asserts correctness only, never speed.
func TestConfirmPublisherThroughput(t *testing.T) {
	b := newBroker(t)
	payload := make([]byte, 256)
	for _, tc := range []struct{ workers, channels, total int }{
		{1, DefaultConfirmChannels, 1000},
		{64, DefaultConfirmChannels, 10000},
		{64, 1, 10000},
		{64, 4, 10000},
		{256, DefaultConfirmChannels, 10000},
	} {
		pub := newTestConfirmPublisher(t, WithConfirmChannels(tc.channels))
		q := name(fmt.Sprintf("confirm-throughput-%d-%d", tc.workers, tc.channels))
		b.queue(q)
		topic := "rabbitmq://queue/" + q
		if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), payload)); err != nil {
			t.Fatal(err)
		}
		var next, failed atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range tc.workers {
			wg.Go(func() {
				for next.Add(1) <= int64(tc.total) {
					if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), payload)); err != nil {
						failed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		if failed.Load() > 0 {
			t.Fatalf("%d publishes failed", failed.Load())
		}
		if n := b.count(q); n != tc.total+1 {
			t.Errorf("queue holds %d messages, want %d", n, tc.total+1)
		}
		t.Logf("confirm publisher: %2d concurrent caller(s), %d channel(s), %d-byte persistent messages: %d msgs in %v = %.0f msgs/s",
			tc.workers, tc.channels, len(payload), tc.total, elapsed.Round(time.Millisecond), float64(tc.total)/elapsed.Seconds())
		if _, err := b.ch().QueuePurge(q, false); err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkConfirmPublish measures confirmed publishes of 256-byte persistent messages to a
// durable queue, one message per Publish call, serially and from 64 goroutines.
// Run: go test -run '^$' -bench ConfirmPublish ./jasperamqp/
func BenchmarkConfirmPublish(b *testing.B) {
	for _, goroutines := range []int{1, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			br := newBroker(b)
			q := name("confirm-bench")
			br.queue(q)
			pub := newTestConfirmPublisher(b)
			topic := "rabbitmq://queue/" + q
			payload := make([]byte, 256)
			if err := pub.Publish(topic, message.NewMessage("warm-up", payload)); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range goroutines {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if err := pub.Publish(topic, message.NewMessage(watermill.NewUUID(), payload)); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
