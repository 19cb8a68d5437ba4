package subscriber_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

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

func runPubSubSuite(t *testing.T, maxInFlight int) {
	db, cfg := testdb.Migrated(t)
	tests.TestPubSub(t, features, func(t *testing.T) (message.Publisher, message.Subscriber) {
		c := fastConfig(cfg)
		c.MaxInFlight = maxInFlight
		sub, err := subscriber.NewSubscriber(db, c, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Close() })
		// The real durable-local-queue publisher: incoming rows, notifying subscribers on commit.
		pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)),
			publisher.Config{Schema: cfg, Table: publisher.Incoming, Notify: publisher.NotifyEveryPublish}, watermill.NopLogger{})
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
