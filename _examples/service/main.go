// Service: the whole wiring of a production service, as the README shows it. One runtime
// (node, durability agent, a forwarder relaying the outbox to RabbitMQ), a Watermill router
// consuming RabbitMQ behind the dead-letter and inbox middleware, a handler whose business
// writes and outgoing messages commit in the inbox's transaction, and a graceful shutdown.
//
//	go run ./_examples/service
//
// A watermill-amqp subscriber feeds a router whose handler "capture-payment" runs behind the
// dead-letter middleware (outside) and the inbox middleware (inside): exactly-once effects.
// For each order the handler writes a payment row and publishes PaymentCaptured through the
// runtime's publisher, both in the inbox transaction, so the payment, the outgoing envelope
// and the Handled mark commit together; the runtime's forwarder then relays PaymentCaptured
// to RabbitMQ. The example sends, through RabbitMQ:
//
//   - three orders, each published twice with the same message UUID (as a broker or an
//     at-least-once relay may deliver them): one payment each;
//   - an order whose first attempt fails (a transient error): retried in process, one payment;
//   - an order that cannot be parsed (a permanent error): moved to jasper_dead_letters at once
//     and acknowledged, with Watermill's poison metadata keys set.
//
// It checks the counts and exits 1 if one is wrong. The rows stay in the schema
// "service_example" for the CLI (watermill-jasper dead-letters list --schema
// service_example); each run starts by emptying it.
//
// Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable),
// AMQP_URL (default amqp://guest:guest@localhost:5672/).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/watermill-jasper/watermill-jasper/_examples/exampledb"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

const schemaName = "service_example"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

type order struct {
	ID     string `json:"order_id"`
	Amount int    `json:"amount"`
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logger := watermill.NopLogger{}

	amqpURL := exampledb.AMQPURL()
	// 1. The Jasper tables (created when missing) and the business table, emptied.
	pool, db, cfg, err := exampledb.Setup(ctx, schemaName)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+schemaName+`.payments (order_id text PRIMARY KEY, amount int NOT NULL, message_uuid text NOT NULL);
TRUNCATE `+schemaName+`.payments`); err != nil {
		return err
	}
	if _, err := admin.Clear(ctx, db, cfg); err != nil {
		return err
	}
	fmt.Printf("1. schema %q migrated and emptied\n", schemaName)

	// 2. RabbitMQ: the queue the service consumes and the one its events go to, private to
	// this run and deleted when it ends.
	run := watermill.NewShortUUID()
	queue, capturedQueue := "service-example-orders-"+run, "service-example-captured-"+run
	amqpCfg := amqp.NewDurableQueueConfig(amqpURL)
	amqpCfg.Queue.AutoDelete = true
	sub, err := amqp.NewSubscriber(amqpCfg, logger)
	if err != nil {
		return fmt.Errorf("RabbitMQ is not reachable (start it, or set AMQP_URL): %w", err)
	}
	captured, err := sub.Subscribe(ctx, capturedQueue)
	if err != nil {
		return err
	}
	relayTo, err := jasperamqp.NewConfirmPublisher(amqpURL, logger)
	if err != nil {
		return err
	}
	defer relayTo.Close()

	// 3. The runtime: node, durability agent (it also deletes the expired Handled marks) and
	// a forwarder relaying the outbox to RabbitMQ; then the middleware on it: dead letters
	// outside, the inbox inside (the recommended order), and the outbox publisher, which
	// joins the inbox transaction inside the handler.
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema:     schemaName,
		Forwarders: []forwarder.Config{{Publisher: relayTo}},
	}, logger)
	if err != nil {
		return err
	}
	if err := rt.Start(ctx); err != nil {
		return err
	}
	defer rt.Stop(context.Background())
	inbox, err := rt.Inbox(middleware.InboxConfig{ConsumerName: "payments-service"})
	if err != nil {
		return err
	}
	deadLetters, err := rt.DeadLetter(middleware.DeadLetterConfig{MaxAttempts: 3, InitialInterval: 50 * time.Millisecond})
	if err != nil {
		return err
	}
	outbox := rt.Publisher()

	// 4. RabbitMQ -> router.
	pub, err := amqp.NewPublisher(amqpCfg, logger)
	if err != nil {
		return fmt.Errorf("RabbitMQ is not reachable (start it, or set AMQP_URL): %w", err)
	}
	defer pub.Close()

	var flakyAttempts atomic.Int32
	done := make(chan struct{}, 16)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		return err
	}
	router.AddConsumerHandler("capture-payment", queue, sub, func(msg *message.Message) error {
		var o order
		if err := json.Unmarshal(msg.Payload, &o); err != nil {
			return fault.Permanent(fmt.Errorf("order %s: unreadable payload: %w", msg.UUID, err))
		}
		if o.ID == "order-flaky" && flakyAttempts.Add(1) == 1 {
			return errors.New("payment provider timed out") // transient: retried in process
		}
		tx, _ := middleware.TxFromContext(msg.Context())
		if _, err := tx.Exec(msg.Context(), `INSERT INTO `+schemaName+`.payments (order_id, amount, message_uuid) VALUES ($1, $2, $3)`,
			o.ID, o.Amount, msg.UUID); err != nil {
			return err
		}
		event := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"order_id":%q}`, o.ID))
		event.Metadata.Set(metadata.MessageType, "PaymentCaptured")
		return middleware.Publish(msg.Context(), outbox, "rabbitmq://queue/"+capturedQueue, event)
	}).AddMiddleware(
		ackCounter(done), // outermost: counts acknowledged deliveries
		deadLetters.Middleware,
		inbox.Middleware,
	)
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(ctx) }()
	select {
	case <-router.Running():
	case err := <-routerDone:
		return err
	}
	fmt.Printf("2. runtime started; router consuming RabbitMQ queue %s: dead letters -> inbox -> capture-payment\n", queue)

	// 4. The messages: duplicates, a flaky one and a poison one.
	var sends []*message.Message
	for i, amount := range []int{10, 20, 30} {
		m := message.NewMessage(watermill.NewUUID(), fmt.Appendf(nil, `{"order_id":"order-%d","amount":%d}`, i+1, amount))
		sends = append(sends, m, m.Copy()) // the same UUID twice
	}
	sends = append(sends,
		message.NewMessage(watermill.NewUUID(), []byte(`{"order_id":"order-flaky","amount":40}`)),
		message.NewMessage(watermill.NewUUID(), []byte(`{"order_id": not json`)))
	for _, m := range sends {
		if err := pub.Publish(queue, m); err != nil {
			return fmt.Errorf("publish to RabbitMQ: %w", err)
		}
	}
	fmt.Printf("3. published %d messages to RabbitMQ (3 orders twice each, a flaky one, a poison one)\n", len(sends))
	for range sends {
		select {
		case <-done:
		case <-ctx.Done():
			return errors.New("timed out waiting for the router to acknowledge every message")
		}
	}
	// The forwarder relays the four PaymentCaptured events to RabbitMQ.
	for range 4 {
		select {
		case m := <-captured:
			m.Ack()
		case <-ctx.Done():
			return errors.New("timed out waiting for the PaymentCaptured events on RabbitMQ")
		}
	}
	// Graceful shutdown: the router first (no handler runs any more), then the runtime
	// (forwarder, agent, node).
	if err := router.Close(); err != nil {
		return err
	}
	if err := <-routerDone; err != nil {
		return err
	}
	if err := rt.Stop(ctx); err != nil {
		return err
	}

	// 5. What happened.
	var payments int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+schemaName+`.payments`).Scan(&payments); err != nil {
		return err
	}
	counts, err := admin.Counts(ctx, db, cfg)
	if err != nil {
		return err
	}
	dls, err := admin.ListDeadLetters(ctx, db, cfg, admin.ListOptions{})
	if err != nil {
		return err
	}
	fmt.Printf("4. %d deliveries acknowledged; %d payments, 4 PaymentCaptured relayed to RabbitMQ (%d left in the outbox), %d Handled marks, %d dead letter(s)\n",
		len(sends), payments, counts.OutgoingTotal(), counts.IncomingStatus(schema.StatusHandled), counts.DeadLetters)
	for _, d := range dls {
		fmt.Printf("5. dead letter %s: topic %s, handler %s, %d attempt(s), %s: %s\n",
			d.ID, d.ReceivedAt, d.Source, d.Attempts, d.ExceptionType, d.ExceptionMessage)
	}
	fmt.Printf("   inspect it: go run ./cmd/watermill-jasper dead-letters list --schema %s\n", schemaName)
	if payments != 4 || counts.OutgoingTotal() != 0 || counts.IncomingStatus(schema.StatusHandled) != 4 || counts.DeadLetters != 1 ||
		len(dls) != 1 || dls[0].Attempts != 1 || dls[0].Source != "capture-payment" {
		return errors.New("unexpected counts: want 4 payments, an empty outbox, 4 Handled marks, 1 dead letter after 1 attempt")
	}
	fmt.Println("6. every order paid exactly once; the poison message is parked with its error")
	return nil
}

// ackCounter signals done for every message the router will acknowledge.
func ackCounter(done chan<- struct{}) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err == nil {
				done <- struct{}{}
			}
			return out, err
		}
	}
}
