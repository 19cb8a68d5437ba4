// Quickstart: the transactional outbox end to end, on the local PostgreSQL and an in-process
// GoChannel.
//
//	go run ./_examples/quickstart
//
// It migrates the Jasper tables into the schema "quickstart", starts a runtime (node,
// durability agent, and a forwarder relaying the outbox to a GoChannel), places orders in
// business transactions that also publish an OrderPlaced message through the runtime's
// publisher (one transaction is rolled back: its message never leaves), consumes the relayed
// messages and prints what happened.
//
// Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/watermill-jasper/watermill-jasper/_examples/exampledb"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/metadata"
)

const (
	schemaName  = "quickstart"
	destination = "rabbitmq://queue/orders" // a Jasper destination URI; here it is just the GoChannel topic
	orders      = 5
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logger := watermill.NopLogger{}

	// 1. The Jasper tables (created when missing), plus a business table.
	pool, db, cfg, err := exampledb.Setup(ctx, schemaName)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS quickstart.orders (id text PRIMARY KEY, amount int NOT NULL)`); err != nil {
		return err
	}
	fmt.Printf("1. migrated schema %q: jasper_outgoing_envelopes, jasper_incoming_envelopes, jasper_dead_letters\n", schemaName)

	// 2. The runtime: node identity, durability agent, and a forwarder relaying the outbox to
	// a GoChannel (in production: RabbitMQ, Kafka, NATS...).
	sink := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64}, logger)
	defer sink.Close()
	received, err := sink.Subscribe(ctx, destination)
	if err != nil {
		return err
	}
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema:     schemaName,
		Forwarders: []forwarder.Config{{Publisher: sink}},
	}, logger)
	if err != nil {
		return err
	}
	if err := rt.Start(ctx); err != nil {
		return err
	}
	defer rt.Stop(context.Background())

	// 3. Business transactions: insert an order and publish OrderPlaced in the same transaction.
	runID := watermill.NewShortUUID()[:6]
	for i := 1; i <= orders; i++ {
		orderID := fmt.Sprintf("order-%s-%d", runID, i)
		rollback := i == 3
		if err := placeOrder(ctx, rt, pool, orderID, 10*i, rollback); err != nil && !errors.Is(err, errRollback) {
			return err
		}
		if rollback {
			fmt.Printf("2. %s: transaction rolled back, its message must never leave\n", orderID)
		} else {
			fmt.Printf("2. %s: order and OrderPlaced committed together\n", orderID)
		}
	}

	// 4. The forwarder relays the committed messages as they commit.
	want := orders - 1
	for got := 0; got < want; {
		select {
		case msg := <-received:
			msg.Ack()
			if msg.Metadata.Get("run") != runID {
				continue // left over from an earlier run that was interrupted
			}
			got++
			fmt.Printf("3. received %s %s payload=%s\n", msg.Metadata.Get(metadata.MessageType), msg.UUID, msg.Payload)
		case <-ctx.Done():
			return errors.New("timed out waiting for the forwarder")
		}
	}
	sent := rt.Forwarders()[0].Stats().Sent
	// Stop finishes the publishes in flight and hands back what was claimed and not sent.
	if err := rt.Stop(ctx); err != nil {
		return err
	}
	counts, err := admin.Counts(ctx, db, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("4. forwarder sent %d message(s); %d envelope(s) left in the outbox; the rolled-back order was never sent\n",
		sent, counts.OutgoingTotal())
	return nil
}

// placeOrder is a business transaction: the order row and its event commit or roll back together.
func placeOrder(ctx context.Context, rt *jasper.Runtime, pool *pgxpool.Pool, orderID string, amount int, rollback bool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO quickstart.orders (id, amount) VALUES ($1, $2)`, orderID, amount); err != nil {
			return err
		}
		pub, err := rt.TxPublisher(watermillsql.TxFromPgx(tx))
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
