package durability_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
)

// One node, its durability agent and a forwarder. A message delayed with Watermill's
// components/delay is stored as a Jasper scheduled send; when it falls due the agent moves
// it to the outbox and wakes the forwarder, which relays it (here to a GoChannel).
func ExampleNewAgent() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.ExampleDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	db := database.FromPgx(pool)
	cfg, dropSchema := testdb.ExampleSchema(ctx, db)
	defer dropSchema()

	// The process's node identity: a random id, held by an advisory lock.
	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close() // last: after the forwarder and the agent

	agent, err := durability.NewAgent(db, node, durability.Config{
		Schema:                  cfg,
		ScheduledJobPollingTime: 100 * time.Millisecond, // Jasper's default is 5s
	}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := agent.Run(ctx); err != nil {
			log.Fatal(err)
		}
	}()
	defer agent.Close() // hands the node's envelopes back
	<-agent.Running()

	pubSub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	defer pubSub.Close()
	reminders, err := pubSub.Subscribe(ctx, "rabbitmq://queue/payment-reminders")
	if err != nil {
		log.Fatal(err)
	}
	fwd, err := forwarder.NewForwarder(db, forwarder.Config{Schema: cfg, Node: node, Publisher: pubSub}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	agent.AddWaker(fwd) // woken when the agent released scheduled sends
	go func() {
		if err := fwd.Run(ctx); err != nil {
			log.Fatal(err)
		}
	}()
	defer fwd.Close() // first
	<-fwd.Running()

	pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(pool), publisher.Config{Schema: cfg}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	reminder := message.NewMessage("order-42-reminder", []byte(`{"order_id":42}`))
	// components/delay writes the due time in whole seconds (RFC 3339), rounding it down:
	// a delay under a second may already be due when published, and is then sent at once.
	delay.Message(reminder, delay.For(2*time.Second))
	if err := pub.Publish("rabbitmq://queue/payment-reminders", reminder); err != nil {
		log.Fatal(err)
	}

	got := <-reminders
	got.Ack()
	fmt.Println(got.UUID, string(got.Payload), got.Metadata.Get(metadata.Destination))

	// Stop in order: forwarders (and subscribers) first, then the agent, then the node.
	if err := fwd.Close(); err != nil {
		log.Fatal(err)
	}
	if err := agent.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("scheduled sends released:", agent.Stats().ScheduledSent)
	// Output:
	// order-42-reminder {"order_id":42} rabbitmq://queue/payment-reminders
	// scheduled sends released: 1
}
