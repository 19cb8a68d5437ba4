package jasperamqp

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// testURL is the broker the integration tests use: $WATERMILL_TEST_AMQP_URI (watermill-amqp's
// convention) or the local default.
func testURL() string {
	if u := os.Getenv("WATERMILL_TEST_AMQP_URI"); u != "" {
		return u
	}
	return "amqp://guest:guest@localhost:5672/"
}

// broker is a direct amqp091 connection for arranging and inspecting what the tests publish.
type broker struct {
	t    testing.TB
	conn *amqp091.Connection
	mu   sync.Mutex
}

// newBroker connects to the test broker, failing (never skipping) when it is down.
func newBroker(t testing.TB) *broker {
	t.Helper()
	conn, err := amqp091.Dial(testURL())
	if err != nil {
		t.Fatalf("RabbitMQ is not reachable at %s (%v); start it with: rabbitmq-server -detached",
			RedactURL(testURL()), scrubError(err, testURL()))
	}
	b := &broker{t: t, conn: conn}
	t.Cleanup(func() { _ = conn.Close() })
	return b
}

// ch opens a channel closed at the end of the test.
func (b *broker) ch() *amqp091.Channel {
	b.t.Helper()
	ch, err := b.conn.Channel()
	if err != nil {
		b.t.Fatalf("open channel: %v", err)
	}
	b.t.Cleanup(func() { _ = ch.Close() })
	return ch
}

// name returns a fresh lower-case name (Jasper lower-cases the names in its URIs).
func name(prefix string) string {
	return "jasperamqp-test-" + prefix + "-" + strings.ToLower(watermill.NewULID())
}

// queue declares a durable queue deleted at the end of the test.
func (b *broker) queue(name string) {
	b.t.Helper()
	if _, err := b.ch().QueueDeclare(name, true, false, false, false, nil); err != nil {
		b.t.Fatalf("declare queue %s: %v", name, err)
	}
	b.deleteQueueAtEnd(name)
}

func (b *broker) deleteQueueAtEnd(name string) {
	b.t.Cleanup(func() {
		ch, err := b.conn.Channel()
		if err != nil {
			b.t.Errorf("cleanup: %v", err)
			return
		}
		defer ch.Close()
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			b.t.Errorf("cleanup: delete queue %s: %v", name, err)
		}
	})
}

func (b *broker) deleteExchangeAtEnd(name string) {
	b.t.Cleanup(func() {
		ch, err := b.conn.Channel()
		if err != nil {
			b.t.Errorf("cleanup: %v", err)
			return
		}
		defer ch.Close()
		if err := ch.ExchangeDelete(name, false, false); err != nil {
			b.t.Errorf("cleanup: delete exchange %s: %v", name, err)
		}
	})
}

// get waits up to 10 s for one message on queue.
func (b *broker) get(queue string) amqp091.Delivery {
	b.t.Helper()
	ch := b.ch()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			b.t.Fatalf("get from %s: %v", queue, err)
		}
		if ok {
			return d
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("no message arrived on queue %s", queue)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// count returns the number of ready messages on queue.
func (b *broker) count(queue string) int {
	b.t.Helper()
	q, err := b.ch().QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		b.t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Messages
}

// exists reports whether queue exists (a passive declare on a throwaway channel).
func (b *broker) queueExists(queue string) bool {
	ch, err := b.conn.Channel()
	if err != nil {
		b.t.Fatal(err)
	}
	defer ch.Close()
	_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	return err == nil
}
