package subscriber_test

import (
	"context"
	"fmt"
	"log"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// A durable local queue: the publisher writes the message into jasper_incoming_envelopes
// (Config.Table = publisher.Incoming, received_at = the topic), and the subscriber delivers
// it. Ack deletes the row; a Nack hands it back for a retry after a back-off.
func ExampleNewSubscriber() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.ExampleDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	db := database.FromPgx(pool)
	cfg, dropSchema := testdb.ExampleSchema(ctx, db)
	defer dropSchema()

	// The node (this process's owner id) and its durability agent, which wakes the
	// subscriptions and releases nacked messages when due. A jasper.Runtime builds both.
	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	agent, err := durability.NewAgent(node, durability.Config{Schema: cfg}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	if err := agent.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer agent.Stop(ctx) // after the subscriber's Close (deferred calls run last first)

	// Publish into the durable local queue "local://orders". Built on the pool, the
	// publisher commits on its own (or joins the transaction of the message's context,
	// publisher.WithTx).
	pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(pool), publisher.Config{
		Schema: cfg,
		Driver: db,
		Table:  publisher.Incoming,
	}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	if err := pub.Publish("local://orders", message.NewMessage("order-42-placed", []byte(`{"order_id":42}`))); err != nil {
		log.Fatal(err)
	}

	sub, err := subscriber.NewSubscriber(agent, subscriber.Config{}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close() // flushes acks, hands back what was claimed and not acked
	msgs, err := sub.Subscribe(ctx, "local://orders")
	if err != nil {
		log.Fatal(err)
	}

	msg := <-msgs
	fmt.Println(msg.UUID, string(msg.Payload), "earlier attempts:", msg.Metadata.Get(metadata.Attempts))
	msg.Ack()
	// Output: order-42-placed {"order_id":42} earlier attempts: 0
}
