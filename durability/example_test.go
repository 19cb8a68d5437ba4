package durability_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// One node and its durability agent, started and stopped by hand (a jasper.Runtime does
// this for you). Components (forwarders, subscribers, the middleware) are built on the
// running agent: they check that it runs, register to be woken when envelopes may be
// waiting for them, and ask it for a scheduled-jobs pass when something falls due.
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

	// The process's node identity: a random id, held by an advisory lock until Close.
	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close() // last: after the components and the agent

	agent, err := durability.NewAgent(node, durability.Config{
		Schema:                  cfg,
		ScheduledJobPollingTime: time.Second, // Jasper's default is 5s
	}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	// Start returns once the jobs run and the LISTEN connection is up.
	if err := agent.Start(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("running:", agent.Running())
	fmt.Println("claims with the node's id:", agent.NodeID() == node.ID())

	// What a component does when it starts.
	if err := agent.CheckRunning("my-component"); err != nil {
		log.Fatal(err)
	}
	wake := make(chan struct{}, 1)
	unregister := agent.OnIncoming("invoices", func() {
		select { // a wake function must not block
		case wake <- struct{}{}:
		default:
		}
	})
	agent.ScheduleAt(time.Now().Add(time.Minute)) // e.g. a nacked message retried in a minute

	g, err := agent.SampleGauges(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("incoming %d, outgoing %d, dead letters %d\n", g.Incoming, g.Outgoing, g.DeadLetters)

	// Stop in order: the components first, then the agent (it hands the node's envelopes
	// back), then the node.
	unregister()
	if err := agent.Stop(ctx); err != nil {
		log.Fatal(err)
	}
	err = agent.CheckRunning("my-component")
	fmt.Println("after Stop:", errors.Is(err, durability.ErrAgentNotRunning))
	// Output:
	// running: true
	// claims with the node's id: true
	// incoming 0, outgoing 0, dead letters 0
	// after Stop: true
}
