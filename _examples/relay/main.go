// Relay: a process that relays the outbox (jasper_outgoing_envelopes) to RabbitMQ, as a
// service runs it: one runtime with one forwarder whose publisher is jasperamqp's confirm
// publisher (an envelope is deleted only once RabbitMQ confirmed it). Start several for
// availability: they share the table without sending an envelope twice in normal operation,
// and when one dies (even by SIGKILL), the others' durability agents hand its claimed
// envelopes back and relay them.
//
//	go run ./_examples/relay        # until SIGINT or SIGTERM
//
// Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable),
// AMQP_URL (default amqp://guest:guest@localhost:5672/), SCHEMA (default public).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/watermill-jasper/watermill-jasper/_examples/exampledb"

	"github.com/ThreeDotsLabs/watermill"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := watermill.NewStdLogger(false, false)

	pool, err := exampledb.Open(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	// Jasper destination URIs (rabbitmq://queue/NAME) onto RabbitMQ, with pipelined confirms.
	amqp, err := jasperamqp.NewConfirmPublisher(exampledb.AMQPURL(), logger,
		jasperamqp.WithDeclareQueues(true))
	if err != nil {
		return err
	}
	defer amqp.Close()

	rt, err := jasper.NewRuntime(database.FromPgx(pool), jasper.Config{
		Schema:     exampledb.Env("SCHEMA", ""),
		Forwarders: []forwarder.Config{{Publisher: amqp}},
	}, logger)
	if err != nil {
		return err
	}
	if err := rt.Start(ctx); err != nil {
		return err
	}
	fmt.Println("relay: running; SIGINT or SIGTERM stops")
	<-ctx.Done()
	// Finishes the publishes in flight, hands back what was claimed and not sent, releases
	// the node.
	return rt.Stop(context.Background())
}
