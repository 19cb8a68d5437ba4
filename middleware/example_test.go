package middleware_test

import (
	"context"
	"fmt"
	"log"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/middleware"
)

// Exactly-once effects behind a router: the dead-letter middleware outside, the inbox
// inside (the recommended order). The handler writes its business row in the inbox's
// transaction, which also records the message as handled, so the second delivery of the
// same message is acknowledged without running the handler. The transport here is a
// GoChannel; any Watermill subscriber (RabbitMQ, Kafka, package subscriber) works the same.
func ExampleNewInbox() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.ExampleDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	db := database.FromPgx(pool)
	cfg, dropSchema := testdb.ExampleSchema(ctx, db)
	defer dropSchema()
	invoices := cfg.QuoteIdent(cfg.Schema) + ".invoices" // the application's own table
	if _, err := db.Exec(ctx, `CREATE TABLE `+invoices+` (order_id text NOT NULL, message_uuid text NOT NULL)`); err != nil {
		log.Fatal(err)
	}

	// The durability agent of the schema: the middleware work on its tables, and it deletes
	// the expired Handled marks. A jasper.Runtime builds and starts both for you
	// (rt.Inbox, rt.DeadLetter).
	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	agent, err := durability.NewAgent(node, durability.Config{Schema: cfg}, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := agent.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer agent.Stop(ctx)

	inbox, err := middleware.NewInbox(agent, middleware.InboxConfig{ConsumerName: "billing"}, nil)
	if err != nil {
		log.Fatal(err)
	}
	deadLetters, err := middleware.NewDeadLetter(agent, middleware.DeadLetterConfig{MaxAttempts: 3}, nil)
	if err != nil {
		log.Fatal(err)
	}

	// Publish returns once the router has acknowledged the message.
	pubSub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	defer pubSub.Close()

	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	var runs atomic.Int32
	router.AddConsumerHandler("bill", "orders", pubSub, func(msg *message.Message) error {
		runs.Add(1)
		tx, ok := middleware.TxFromContext(msg.Context()) // the inbox's transaction
		if !ok {
			return fault.Permanent(fmt.Errorf("no inbox transaction"))
		}
		_, err := tx.Exec(msg.Context(), `INSERT INTO `+invoices+` (order_id, message_uuid) VALUES ($1, $2)`,
			string(msg.Payload), msg.UUID)
		return err // nil commits the invoice with the Handled mark; an error rolls both back
	}).AddMiddleware(deadLetters.Middleware, inbox.Middleware)
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(ctx) }()
	<-router.Running()

	// The same message twice, as a broker redelivering it would.
	msg := message.NewMessage("order-42-placed", []byte("order-42"))
	for range 2 {
		if err := pubSub.Publish("orders", msg.Copy()); err != nil {
			log.Fatal(err)
		}
	}
	if err := router.Close(); err != nil {
		log.Fatal(err)
	}
	if err := <-routerDone; err != nil {
		log.Fatal(err)
	}

	var rows int64
	if err := database.QueryRow(ctx, db, `SELECT count(*) FROM `+invoices, nil, &rows); err != nil {
		log.Fatal(err)
	}
	fmt.Println("deliveries: 2, handler runs:", runs.Load(), "invoices:", rows)
	// Output: deliveries: 2, handler runs: 1 invoices: 1
}
