package subscriber_test

import (
	"context"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
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

// suiteMaxConns bounds the pool of the universal suite: every constructor call has a node
// and an agent of its own (two connections held: the node lock and the LISTEN connection),
// and TestConcurrentClose holds a dozen at once, more than the shared test pool has.
const suiteMaxConns = 40

var (
	suitePoolOnce sync.Once
	suitePoolV    *pgxpool.Pool
	suitePoolErr  error
)

// suitePool is the pool of the universal suites of this test binary.
func suitePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	suitePoolOnce.Do(func() {
		cfg, err := pgxpool.ParseConfig(testdb.PostgresDSN())
		if err != nil {
			suitePoolErr = err
			return
		}
		cfg.MaxConns = suiteMaxConns
		suitePoolV, suitePoolErr = pgxpool.NewWithConfig(context.Background(), cfg)
	})
	if suitePoolErr != nil {
		t.Fatal(suitePoolErr)
	}
	return suitePoolV
}

// ownedSubscriber is a Subscriber with the node and agent made for it: Close closes the
// Subscriber, then stops the agent and closes the node, so that the suite's many
// constructor calls give their connections back as soon as the suite closes them.
type ownedSubscriber struct {
	*subscriber.Subscriber
	stop func() error
}

func (s ownedSubscriber) Close() error {
	if err := s.Subscriber.Close(); err != nil {
		return err
	}
	return s.stop()
}

func runPubSubSuite(t *testing.T, maxInFlight int) {
	_, cfg := testdb.Migrated(t)
	pool := suitePool(t)
	db := database.FromPgx(pool)
	tests.TestPubSub(t, features, func(t *testing.T) (message.Publisher, message.Subscriber) {
		a, stopAgent := newAgent(t, db, cfg)
		if err := a.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		c := fastConfig()
		c.MaxInFlight = maxInFlight
		sub, err := subscriber.NewSubscriber(a, c, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		owned := ownedSubscriber{Subscriber: sub, stop: stopAgent}
		t.Cleanup(func() { _ = owned.Close() })
		// The real durable-local-queue publisher: incoming rows, notifying subscribers on commit.
		pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(pool),
			publisher.Config{Schema: cfg, Driver: db, Table: publisher.Incoming, Notify: publisher.NotifyEveryPublish}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		return pub, owned
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
