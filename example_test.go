package jasper_test

import (
	"context"
	"fmt"
	"log"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
)

// A runtime relays the outbox to a Watermill publisher (here an in-process GoChannel; in
// production watermill-amqp, Kafka, NATS or jasperamqp): a message published inside a
// business transaction leaves the process only once that transaction commits.
func ExampleNewRuntime() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.ExampleDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	db := database.FromPgx(pool)
	cfg, dropSchema := testdb.ExampleSchema(ctx, db) // an application runs `watermill-jasper schema migrate` once
	defer dropSchema()

	broker := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer broker.Close()
	orders, err := broker.Subscribe(ctx, "rabbitmq://queue/orders")
	if err != nil {
		log.Fatal(err)
	}

	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema:     cfg.Schema,
		Forwarders: []forwarder.Config{{Publisher: broker}},
	}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	if err := rt.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer rt.Stop(ctx) // forwarders, subscribers, agent, node: in that order

	// A business transaction: the order row and its event commit together.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// tx.Exec(ctx, `INSERT INTO orders ...`)
		pub, err := rt.TxPublisher(watermillsql.TxFromPgx(tx))
		if err != nil {
			return err
		}
		msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order_id":42}`))
		msg.Metadata.Set(metadata.MessageType, "OrderPlaced")
		return pub.Publish("rabbitmq://queue/orders", msg)
	})
	if err != nil {
		log.Fatal(err)
	}
	msg := <-orders
	msg.Ack()
	fmt.Println(msg.Metadata.Get(metadata.MessageType), string(msg.Payload))
	// Output: OrderPlaced {"order_id":42}
}
