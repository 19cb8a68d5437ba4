package forwarder_test

import (
	"context"
	"fmt"
	"log"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// Relaying the outbox to a Watermill GoChannel. With RabbitMQ, pass a jasperamqp confirm
// publisher or a watermill-amqp one instead (Publish.ConfirmDelivery = true, so a row is
// deleted only once the broker has it).
//
// A forwarder belongs to a node and its durability agent; jasper.NewRuntime builds all
// three (and the forwarders of its Config). By hand:
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.ExampleDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	db := database.FromPgx(pool)
	cfg, dropSchema := testdb.ExampleSchema(ctx, db)
	defer dropSchema()

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
	defer agent.Stop(ctx) // after the forwarder: hands back what the node still holds

	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	orders, err := pubSub.Subscribe(ctx, "orders")
	if err != nil {
		log.Fatal(err)
	}

	fwd, err := forwarder.NewForwarder(agent, forwarder.Config{Publisher: pubSub}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := fwd.Run(ctx); err != nil {
			log.Fatal(err)
		}
	}()
	defer fwd.Close() // finishes the batch in flight, hands back what was not sent
	<-fwd.Running()

	// The application commits a message to the outbox (see package publisher)...
	msg := message.NewMessage("order-42-placed", []byte(`{"order_id":42}`))
	msg.Metadata.Set("tenant", "acme")
	commitToOutbox(ctx, agent, "orders", msg)

	// ...and the forwarder relays it.
	got := <-orders
	got.Ack()
	fmt.Println(got.UUID, string(got.Payload), got.Metadata.Get("tenant"))
	// Output: order-42-placed {"order_id":42} acme
}

// commitToOutbox writes msg as an outgoing envelope and notifies the forwarders, as the
// publisher package does inside the application's transaction.
func commitToOutbox(ctx context.Context, agent *durability.Agent, topic string, msg *message.Message) {
	env, err := row.FromMessage(topic, msg, row.Defaults{})
	if err != nil {
		log.Fatal(err)
	}
	if err := agent.Store().InsertEnvelopes(ctx, store.InsertParams{Outgoing: []row.Envelope{env}, NotifyOutgoing: true}); err != nil {
		log.Fatal(err)
	}
}
