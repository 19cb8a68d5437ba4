package subscriber_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
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
		return newTestPublisher(t, db, cfg), sub
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
