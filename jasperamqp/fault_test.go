package jasperamqp_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/fault/faulttest"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

// relayAgent starts a node and its durability agent on a fresh schema, as a runtime does,
// for a forwarder to be built on; the end of the test stops both.
func relayAgent(t *testing.T) *durability.Agent {
	t.Helper()
	ctx := context.Background()
	db, cfg := testdb.Migrated(t)
	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	agent, err := durability.NewAgent(node, durability.Config{Schema: cfg, NodeCheckInterval: 100 * time.Millisecond}, nil)
	if err == nil {
		err = agent.Start(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Stop(ctx) })
	return agent
}

// countingPublisher counts the Publish calls per topic.
type countingPublisher struct {
	message.Publisher
	mu    sync.Mutex
	calls map[string]int
}

func (p *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	p.calls[topic]++
	p.mu.Unlock()
	return p.Publisher.Publish(topic, msgs...)
}

func (p *countingPublisher) callsTo(topic string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[topic]
}

// deadLetterEvents is the forwarder's logger: it reports when envelopes were moved to the
// dead letters (the statement has run).
type deadLetterEvents struct{ moved chan struct{} }

func (l *deadLetterEvents) Info(msg string, _ watermill.LogFields) {
	if msg == "Envelopes moved to the dead letters" {
		l.moved <- struct{}{}
	}
}

func (l *deadLetterEvents) Error(string, error, watermill.LogFields)         {}
func (l *deadLetterEvents) Debug(string, watermill.LogFields)                {}
func (l *deadLetterEvents) Trace(string, watermill.LogFields)                {}
func (l *deadLetterEvents) With(watermill.LogFields) watermill.LoggerAdapter { return l }

// A forwarder relaying to the confirm publisher dead-letters at once (one attempt, whatever
// MaxAttempts), and never publishes again, an envelope whose publish fails permanently in
// the fault vocabulary: the very error value the forwarder's and the middleware's tests use
// (faulttest.Permanent, returned here by the publisher's marshaler), and jasperamqp's own
// permanent error, a *DestinationError for a destination it refuses (local://x).
func TestForwarderDeadLettersPermanentFailuresAtOnce(t *testing.T) {
	t.Parallel()
	amqpURL := "amqp://guest:guest@localhost:5672/"
	if u := os.Getenv("WATERMILL_TEST_AMQP_URI"); u != "" {
		amqpURL = u
	}
	queue := "wj-fault-" + watermill.NewShortUUID()
	for _, tt := range []struct {
		name, destination, exception string
	}{
		{"the one permanent error", "rabbitmq://queue/" + queue, faulttest.Permanent.Error()},
		{"destination refused", "local://x", "*jasperamqp.DestinationError"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pub, err := jasperamqp.NewConfirmPublisher(amqpURL, nil, jasperamqp.WithDeclareQueues(true),
				jasperamqp.WithMarshaler(poisonMarshaler{}))
			if err != nil {
				t.Fatalf("RabbitMQ is not reachable (%v); start it with: rabbitmq-server -detached", err)
			}
			t.Cleanup(func() {
				_ = pub.Close()
				deleteQueue(t, amqpURL, queue)
			})
			dl, calls, st := relayOne(t, pub, tt.destination)
			if calls != 1 {
				t.Fatalf("the envelope was published %d times, want once", calls)
			}
			if dl.Attempts != 1 || !strings.Contains(dl.Explanation, "failed permanently") || !strings.Contains(dl.ExceptionText, tt.exception) {
				t.Fatalf("dead letter: attempts %d, explanation %q, exception %q\n%s", dl.Attempts, dl.Explanation, dl.ExceptionMessage, dl.ExceptionText)
			}
			if st.Failed != 1 || st.DeadLettered != 1 || st.Sent != 0 {
				t.Fatalf("forwarder stats %+v", st)
			}
		})
	}
}

// poisonMarshaler is jasperamqp's marshaler, failing with faulttest.Permanent for every
// message: a message the broker can never take.
type poisonMarshaler struct{ jasperamqp.Marshaler }

func (poisonMarshaler) Marshal(*message.Message) (amqp091.Publishing, error) {
	return amqp091.Publishing{}, faulttest.Permanent
}

// deleteQueue deletes a queue a test declared.
func deleteQueue(t *testing.T, amqpURL, queue string) {
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Errorf("delete queue %s: %v", queue, err)
		return
	}
	defer conn.Close()
	if ch, err := conn.Channel(); err == nil {
		_, _ = ch.QueueDelete(queue, false, false, false)
	}
}

// relayOne relays one envelope to destination through pub with a forwarder on a fresh
// runtime-like node and agent, waits until it is dead-lettered, and returns the dead letter,
// the publish calls for destination and the forwarder's counters; the outbox must be empty.
func relayOne(t *testing.T, pub message.Publisher, destination string) (row.DeadLetter, int, forwarder.Stats) {
	t.Helper()
	counted := &countingPublisher{Publisher: pub, calls: map[string]int{}}
	agent := relayAgent(t)
	events := &deadLetterEvents{moved: make(chan struct{}, 10)}
	fwd, err := forwarder.NewForwarder(agent, forwarder.Config{Publisher: counted, MaxAttempts: 10, PollInterval: 20 * time.Millisecond}, events)
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- fwd.Run(context.Background()) }()
	select {
	case <-fwd.Running():
	case err := <-runErr:
		t.Fatalf("Run: %v", err)
	}
	ctx := context.Background()
	env, err := row.FromMessage(destination, message.NewMessage(watermill.NewUUID(), []byte(`{}`)), row.Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Store().InsertEnvelopes(ctx, store.InsertParams{Outgoing: []row.Envelope{env}, NotifyOutgoing: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-events.moved:
	case <-time.After(time.Minute):
		t.Fatalf("the envelope was not dead-lettered: %+v", fwd.Stats())
	}
	if err := fwd.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	dl, ok, err := agent.Store().GetDeadLetter(ctx, env.ID)
	if err != nil || !ok {
		t.Fatalf("dead letter of %s: found %v, %v", env.ID, ok, err)
	}
	counts, err := agent.Store().Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := counts.OutgoingByDestination[destination]; n != 0 {
		t.Fatalf("%d envelopes left in the outbox", n)
	}
	return dl, counted.callsTo(destination), fwd.Stats()
}
