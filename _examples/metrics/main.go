// Metrics: a runtime (node, durability agent, forwarder) exporting watermill-jasper's gauges
// and counters to Prometheus.
//
//	go run ./_examples/metrics                  # publish, relay, print the metrics once, exit
//	go run ./_examples/metrics -serve :2112     # keep running; scrape http://localhost:2112/metrics
//
// It migrates the Jasper tables into the schema "metrics_example" and starts a runtime: its
// node (the lock), its durability agent (scheduled release, recovery, dormant-node
// reassignment, retention and the storage gauges, sampled with one query every second here)
// and a forwarder relaying to an in-process GoChannel; then it publishes messages through the
// outbox, one of them delayed: the agent moves it to the outbox when it falls due. A dormant
// node's envelope is planted too, for the agent to hand back.
//
// Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/watermill-jasper/watermill-jasper/_examples/exampledb"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

const schemaName = "metrics_example"

func main() {
	serve := flag.String("serve", "", "serve /metrics on this address and run until interrupted")
	flag.Parse()
	if err := run(*serve); err != nil {
		fmt.Fprintln(os.Stderr, "metrics:", err)
		os.Exit(1)
	}
}

func run(serve string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	logger := watermill.NopLogger{}
	pool, db, cfg, err := exampledb.Setup(ctx, schemaName)
	if err != nil {
		return err
	}
	defer pool.Close()

	// The runtime: node (its id marks the envelopes it holds, its lock says it is alive),
	// durability agent and a forwarder relaying to an in-process GoChannel.
	broker := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, logger)
	defer broker.Close()
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema: schemaName,
		Agent: durability.Config{
			ScheduledJobPollingTime: 500 * time.Millisecond,
			MetricsSamplingInterval: time.Second,
		},
		Forwarders: []forwarder.Config{{Publisher: broker}},
	}, logger)
	if err != nil {
		return err
	}
	if err := rt.Start(ctx); err != nil {
		return err
	}
	defer rt.Stop(context.Background())

	// The collector reads the agent's latest sample and the counters at scrape time.
	collector, err := rt.Collector()
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector)
	handler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})

	// A dormant node's envelope (its process died holding it): the agent hands it back.
	if _, err := pool.Exec(ctx, `INSERT INTO `+cfg.Qualified(schema.OutgoingTable)+`
	  (id, owner_id, destination, body, message_type) VALUES (gen_random_uuid(), 424242, 'orders', '{}', 'OrderPlaced')`); err != nil {
		return err
	}
	msgs := make([]*message.Message, 10)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf(`{"order":%d}`, i)))
	}
	delay.Message(msgs[0], delay.For(time.Second))
	if err := publish(ctx, rt, pool, msgs); err != nil {
		return err
	}

	if serve != "" {
		fmt.Printf("serving http://%s/metrics (Ctrl-C to stop)\n", serve)
		srv := &http.Server{Addr: serve, Handler: handler, ReadHeaderTimeout: 5 * time.Second}
		go func() { <-ctx.Done(); _ = srv.Close() }()
		if err := srv.ListenAndServe(); err != http.ErrServerClosed {
			return err
		}
		return nil
	}
	// Let the delayed message fall due and the agent take a sample, then scrape once.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2500 * time.Millisecond):
	}
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "watermill_jasper_") {
			fmt.Println(line)
		}
	}
	return sc.Err()
}

// publish commits the messages through the outbox in one transaction.
func publish(ctx context.Context, rt *jasper.Runtime, pool *pgxpool.Pool, msgs []*message.Message) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	pub, err := rt.TxPublisher(watermillsql.TxFromPgx(tx))
	if err != nil {
		return err
	}
	if err := pub.Publish("orders", msgs...); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
