// Outbox to RabbitMQ: the transactional outbox end to end, on the local PostgreSQL and RabbitMQ.
//
//	go run ./_examples/outbox-amqp
//
// It migrates the Jasper tables into the schema "outbox_amqp", places orders in business
// transactions that also publish an OrderPlaced message through the outbox publisher (one
// transaction is rolled back: its message never leaves), relays the committed messages with the
// forwarder to RabbitMQ through jasperamqp's confirm publisher (the outbox row is deleted only
// once RabbitMQ confirmed the message), consumes them back from the queue with watermill-amqp
// and prints what happened.
//
// The destination of every message is a Jasper URI, rabbitmq://queue/outbox-amqp-orders: the
// queue is declared (durable) by the subscriber and by the publisher (WithDeclareQueues).
//
// Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable),
// AMQP_URL (default amqp://guest:guest@localhost:5672/).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

const (
	schemaName  = "outbox_amqp"
	queue       = "outbox-amqp-orders"
	destination = "rabbitmq://queue/" + queue // a Jasper destination URI: the queue on RabbitMQ
	orders      = 5
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "outbox-amqp:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logger := watermill.NopLogger{}

	dsn := os.Getenv("DATABASE_URL")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	amqpURL := os.Getenv("AMQP_URL")
	if amqpURL == "" {
		amqpURL = "amqp://guest:guest@localhost:5672/"
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return errors.New("PostgreSQL is not reachable; start it or set DATABASE_URL")
	}
	db := database.FromPgx(pool)
	cfg := schema.Config{Schema: schemaName}

	// 1. The Jasper tables (idempotent), plus a business table.
	if err := schema.Migrate(ctx, db, cfg); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS outbox_amqp.orders (id text PRIMARY KEY, amount int NOT NULL)`); err != nil {
		return err
	}
	fmt.Printf("1. migrated schema %q: jasper_outgoing_envelopes, jasper_incoming_envelopes, jasper_dead_letters\n", schemaName)

	// 2. Consume the queue on RabbitMQ (declared durable when missing). Subscribing first means
	// the queue exists before the forwarder sends anything.
	sub, err := amqp.NewSubscriber(jasperamqp.NewSubscriberConfig(amqpURL, jasperamqp.WithDeclareQueues(true)), logger)
	if err != nil {
		return fmt.Errorf("RabbitMQ at %s is not reachable (start it, or set AMQP_URL): %w", jasperamqp.RedactURL(amqpURL), err)
	}
	defer sub.Close()
	received, err := sub.Subscribe(ctx, destination)
	if err != nil {
		return err
	}
	fmt.Printf("2. consuming queue %q on %s\n", queue, jasperamqp.RedactURL(amqpURL))

	// 3. Business transactions: insert an order and publish OrderPlaced in the same transaction.
	runID := watermill.NewShortUUID()[:6]
	for i := 1; i <= orders; i++ {
		orderID := fmt.Sprintf("order-%s-%d", runID, i)
		rollback := i == 3
		if err := placeOrder(ctx, pool, orderID, 10*i, rollback); err != nil && !errors.Is(err, errRollback) {
			return err
		}
		if rollback {
			fmt.Printf("3. %s: transaction rolled back, its message must never leave\n", orderID)
		} else {
			fmt.Printf("3. %s: order and OrderPlaced committed together\n", orderID)
		}
	}
	counts, err := admin.Counts(ctx, db, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("4. outbox holds %d envelope(s)\n", counts.OutgoingTotal())

	// 4. Relay the committed envelopes to RabbitMQ: the forwarder claims them, the confirm
	// publisher routes each by its destination URI, and the row is deleted once RabbitMQ
	// confirmed the message.
	out, err := jasperamqp.NewConfirmPublisher(amqpURL, logger, jasperamqp.WithDeclareQueues(true))
	if err != nil {
		return err
	}
	defer out.Close()
	fwd, err := forwarder.NewForwarder(db, forwarder.Config{Schema: cfg, Publisher: out}, logger)
	if err != nil {
		return err
	}
	fwdDone := make(chan error, 1)
	go func() { fwdDone <- fwd.Run(ctx) }()

	want := orders - 1
	for got := 0; got < want; {
		select {
		case msg := <-received:
			msg.Ack()
			if msg.Metadata.Get("run") != runID {
				continue // left in the queue by an earlier run that was interrupted
			}
			got++
			fmt.Printf("5. received from RabbitMQ: %s %s payload=%s\n", msg.Metadata.Get(metadata.MessageType), msg.UUID, msg.Payload)
		case <-ctx.Done():
			return errors.New("timed out waiting for the messages on RabbitMQ")
		}
	}
	if err := fwd.Close(); err != nil {
		return err
	}
	if err := <-fwdDone; err != nil {
		return err
	}
	st := fwd.Stats()
	counts, err = admin.Counts(ctx, db, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("6. forwarder sent %d message(s) to RabbitMQ; %d envelope(s) left in the outbox; the rolled-back order was never sent\n",
		st.Sent, counts.OutgoingTotal())
	return nil
}

// placeOrder is a business transaction: the order row and its event commit or roll back together.
func placeOrder(ctx context.Context, pool *pgxpool.Pool, orderID string, amount int, rollback bool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO outbox_amqp.orders (id, amount) VALUES ($1, $2)`, orderID, amount); err != nil {
			return err
		}
		pub, err := publisher.NewPublisher(watermillsql.TxFromPgx(tx), publisher.Config{Schema: schema.Config{Schema: schemaName}}, watermill.NopLogger{})
		if err != nil {
			return err
		}
		msg := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order_id":%q,"amount":%d}`, orderID, amount)))
		msg.Metadata.Set(metadata.MessageType, "OrderPlaced")
		msg.Metadata.Set("run", orderID[6:12])
		if err := pub.Publish(destination, msg); err != nil {
			return err
		}
		if rollback {
			return errRollback
		}
		return nil
	})
}

var errRollback = errors.New("rollback")
