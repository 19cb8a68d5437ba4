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
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Relaying the outbox to a Watermill GoChannel. With RabbitMQ, pass a watermill-amqp
// publisher instead (Publish.ConfirmDelivery = true, so a row is deleted only once the
// broker has it).
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

	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	orders, err := pubSub.Subscribe(ctx, "orders")
	if err != nil {
		log.Fatal(err)
	}

	fwd, err := forwarder.NewForwarder(db, forwarder.Config{
		Schema:    cfg,
		Publisher: pubSub,
	}, watermill.NopLogger{})
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
	commitToOutbox(ctx, db, cfg, "orders", msg)

	// ...and the forwarder relays it.
	got := <-orders
	got.Ack()
	fmt.Println(got.UUID, string(got.Payload), got.Metadata.Get("tenant"))
	// Output: order-42-placed {"order_id":42} acme
}

// commitToOutbox writes msg as an outgoing envelope and notifies the forwarders, as the
// publisher package does inside the application's transaction.
func commitToOutbox(ctx context.Context, db database.DB, cfg schema.Config, topic string, msg *message.Message) {
	d, err := sqldialect.For(cfg)
	if err != nil {
		log.Fatal(err)
	}
	env, err := row.FromMessage(topic, msg, row.Defaults{})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := db.Exec(ctx, d.InsertOutgoing(1), env.OutgoingArgs(nil, d.UUIDs())...); err != nil {
		log.Fatal(err)
	}
	if _, err := db.Exec(ctx, d.NotifyOutgoing()); err != nil {
		log.Fatal(err)
	}
}
