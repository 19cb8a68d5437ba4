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

	"github.com/watermill-jasper/watermill-jasper/durability"
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
// MaxAttempts) an envelope whose destination jasperamqp refuses permanently (local://x, a
// *DestinationError), and never publishes it again.
func TestForwarderDeadLettersRefusedDestinationAtOnce(t *testing.T) {
	t.Parallel()
	amqpURL := "amqp://guest:guest@localhost:5672/"
	if u := os.Getenv("WATERMILL_TEST_AMQP_URI"); u != "" {
		amqpURL = u
	}
	pub, err := jasperamqp.NewConfirmPublisher(amqpURL, nil)
	if err != nil {
		t.Fatalf("RabbitMQ is not reachable (%v); start it with: rabbitmq-server -detached", err)
	}
	t.Cleanup(func() { _ = pub.Close() })
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

	const destination = "local://x"
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

	if n := counted.callsTo(destination); n != 1 {
		t.Fatalf("the refused envelope was published %d times, want once", n)
	}
	dl, ok, err := agent.Store().GetDeadLetter(ctx, env.ID)
	if err != nil || !ok {
		t.Fatalf("dead letter of %s: found %v, %v", env.ID, ok, err)
	}
	if dl.Attempts != 1 || !strings.Contains(dl.Explanation, "failed permanently") ||
		!strings.Contains(dl.ExceptionText, "*jasperamqp.DestinationError") || !strings.Contains(dl.ExceptionMessage, destination) {
		t.Fatalf("dead letter: attempts %d, explanation %q, exception %q\n%s", dl.Attempts, dl.Explanation, dl.ExceptionMessage, dl.ExceptionText)
	}
	counts, err := agent.Store().Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := counts.OutgoingByDestination[destination]; n != 0 {
		t.Fatalf("%d envelopes left in the outbox", n)
	}
	if st := fwd.Stats(); st.Failed != 1 || st.DeadLettered != 1 || st.Sent != 0 {
		t.Fatalf("forwarder stats %+v", st)
	}
}
