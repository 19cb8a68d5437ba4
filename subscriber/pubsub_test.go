package subscriber_test

import (
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// features are what the subscriber honestly offers: messages persist across subscribers;
// no exactly-once delivery (at least once), no order (batches are claimed in no particular
// order and a nacked message comes back later), no consumer groups (one queue per topic).
var features = tests.Features{
	ConsumerGroups:      false,
	ExactlyOnceDelivery: false,
	GuaranteedOrder:     false,
	Persistent:          true,
}

// suiteAgents gives each test of the universal suite a node and an agent of its own, made
// by the test's first constructor call and shared by the subscribers of its later calls, as
// the subscribers of one process share its runtime's node (TestConcurrentSubscribe makes 50
// subscribers: a node and an agent each would hold 100 connections).
type suiteAgents struct {
	db  database.Driver
	cfg schema.Config

	mu     sync.Mutex
	byTest map[*testing.T]*durability.Agent
}

func (s *suiteAgents) agent(t *testing.T) *durability.Agent {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.byTest[t]; a != nil {
		return a
	}
	a := startAgent(t, s.db, s.cfg)
	s.byTest[t] = a
	t.Cleanup(func() {
		s.mu.Lock()
		delete(s.byTest, t)
		s.mu.Unlock()
	})
	return a
}

func runPubSubSuite(t *testing.T, maxInFlight int) {
	db, cfg := testdb.Migrated(t)
	agents := &suiteAgents{db: db, cfg: cfg, byTest: map[*testing.T]*durability.Agent{}}
	tests.TestPubSub(t, features, func(t *testing.T) (message.Publisher, message.Subscriber) {
		c := fastConfig()
		c.MaxInFlight = maxInFlight
		sub, err := subscriber.NewSubscriber(agents.agent(t), c, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Close() })
		// The real durable-local-queue publisher: incoming rows, notifying subscribers on commit.
		pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)),
			publisher.Config{Schema: cfg, Driver: db, Table: publisher.Incoming, Notify: publisher.NotifyEveryPublish}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		return pub, sub
	}, nil)
}

func TestPubSub(t *testing.T) {
	t.Parallel()
	runPubSubSuite(t, 1)
}

func TestPubSubFourInFlight(t *testing.T) {
	t.Parallel()
	runPubSubSuite(t, 4)
}
