// Command crashnode is one node of the crash tests of package durability: a real OS process
// running, on one schema, the transactional publisher, a forwarder, a subscriber and a
// durability agent, all marked with one node id.
//
// The message path is the library's own, end to end:
//
//  1. publish: -messages messages go through the outbox (publisher, table Outgoing) in
//     transactions of -batch messages that also record each message's UUID in the table
//     sent_log, as business data committed with the outbox rows;
//  2. relay: the forwarder relays the outbox (destination -topic) through the publisher of
//     this library writing the incoming table (table Incoming: a durable local queue,
//     received_at = -topic); the tests' trigger on that table counts every relayed copy in
//     the table forwarded (uuid, first_node, count) in the inserting transaction, with the
//     node id this process sets in the session parameter crashnode.node: a message relayed
//     twice has count 2, and first_node is the node that relayed it first;
//  3. handle: the subscriber consumes the queue -topic (-subscriber-inflight handlers at
//     once); the handler counts each handling in the table handled (uuid, first_node,
//     count) with one INSERT ... ON CONFLICT DO UPDATE SET count = count + 1, then acks.
//
// It then keeps relaying and handling until SIGTERM or SIGINT, when it stops gracefully
// (forwarder, subscriber, agent, node) and exits 0.
//
// It writes events to stdout, one JSON object per line: {"event":"ready","node_id":N},
// {"event":"published","count":N} after each commit, {"event":"log",...} for the log lines
// of the library (the agent's "Envelopes of a dormant node handed back" among them) and
// {"event":"stopped"}. The tests read these lines as events.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

func main() {
	if err := run(); err != nil {
		emit(map[string]any{"event": "error", "error": err.Error()})
		os.Exit(1)
	}
}

var out = struct {
	sync.Mutex
	enc *json.Encoder
}{enc: json.NewEncoder(os.Stdout)}

func emit(v map[string]any) {
	out.Lock()
	defer out.Unlock()
	_ = out.enc.Encode(v)
}

func run() error {
	var (
		dsn            = flag.String("dsn", "", "PostgreSQL DSN")
		schemaName     = flag.String("schema", "public", "schema of the Jasper tables and of the test tables")
		topic          = flag.String("topic", "orders", "outbox destination, and the queue (received_at) it is relayed to")
		prefix         = flag.String("prefix", "m", "prefix of the message UUIDs")
		messages       = flag.Int("messages", 0, "messages to publish")
		batch          = flag.Int("batch", 100, "messages per publishing transaction")
		publishPause   = flag.Duration("publish-pause", 0, "pause between publishing transactions (spreads the run)")
		sinkLatency    = flag.Duration("sink-latency", 0, "latency added to each relayed message (a slow broker)")
		handlerLatency = flag.Duration("handler-latency", 0, "work time of the handler for each message")
		fwdBatch       = flag.Int("forwarder-batch", 100, "forwarder BatchSize")
		fwdWorkers     = flag.Int("forwarder-workers", 2, "forwarder Workers")
		fwdConcurrency = flag.Int("forwarder-concurrency", 8, "forwarder PublishConcurrency")
		subBatch       = flag.Int("subscriber-batch", 50, "subscriber BatchSize")
		subInFlight    = flag.Int("subscriber-inflight", 4, "subscriber MaxInFlight (and handlers)")
		reassign       = flag.Duration("reassign", 2*time.Second, "agent NodeReassignmentPollingTime")
		scheduled      = flag.Duration("scheduled", 500*time.Millisecond, "agent ScheduledJobPollingTime")
	)
	flag.Parse()
	if *dsn == "" {
		return errors.New("-dsn is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// Connections: the node lock and the two LISTENs (forwarder, subscriber) hold three of
	// the pool's for good; the rest serve the claims, acks, agent jobs and publishing. With
	// the pool below, a process uses at most 13, so that the crash tests stay well under
	// PostgreSQL's default max_connections (100) while other test packages run.
	poolCfg, err := pgxpool.ParseConfig(*dsn)
	if err != nil {
		return err
	}
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "crashnode"
	poolCfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	db := database.FromPgx(pool)
	cfg := schema.Config{Schema: *schemaName}
	tables := cfg.QuoteIdent(*schemaName) + "."
	logger := jsonLogger{}

	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, logger)
	if err != nil {
		return err
	}
	defer node.Close()
	// The queue's writes and the handler's counts commit once per message: without waiting
	// for the WAL flush of each. Their commits stay atomic and visible at once, and survive
	// the death of this process (what the tests do); only a crash of PostgreSQL itself could
	// lose them. The outbox, the claims and the acks use the pool above, with the defaults.
	// crashnode.node tells the tables' trigger which node relayed a message.
	fastCfg, err := pgxpool.ParseConfig(*dsn)
	if err != nil {
		return err
	}
	fastCfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	fastCfg.ConnConfig.RuntimeParams["crashnode.node"] = fmt.Sprint(node.ID())
	fastCfg.ConnConfig.RuntimeParams["application_name"] = "crashnode"
	fastCfg.MaxConns = 5
	fastPool, err := pgxpool.NewWithConfig(ctx, fastCfg)
	if err != nil {
		return err
	}
	defer fastPool.Close()
	// The forwarder relays into a durable local queue: this library's publisher writing the
	// incoming table (received_at = the topic), each Publish its own transaction.
	var queue message.Publisher
	queue, err = publisher.NewPublisher(watermillsql.BeginnerFromPgx(fastPool), publisher.Config{Schema: cfg, Table: publisher.Incoming}, logger)
	if err != nil {
		return err
	}
	if *sinkLatency > 0 {
		queue = slowPublisher{queue, *sinkLatency}
	}
	fwd, err := forwarder.NewForwarder(db, forwarder.Config{
		Schema:             cfg,
		Node:               node,
		Publisher:          queue,
		BatchSize:          *fwdBatch,
		Workers:            *fwdWorkers,
		PublishConcurrency: *fwdConcurrency,
		PollInterval:       100 * time.Millisecond,
	}, logger)
	if err != nil {
		return err
	}
	sub, err := subscriber.NewSubscriber(db, subscriber.Config{
		Schema:       cfg,
		Node:         node,
		BatchSize:    *subBatch,
		MaxInFlight:  *subInFlight,
		PollInterval: 100 * time.Millisecond,
	}, logger)
	if err != nil {
		return err
	}
	agent, err := durability.NewAgent(db, node, durability.Config{
		Schema:                      cfg,
		ScheduledJobPollingTime:     *scheduled,
		NodeReassignmentPollingTime: *reassign,
		NodeCheckInterval:           time.Second,
		MetricsSamplingInterval:     -1,
		Wakers:                      []durability.Waker{fwd, sub},
	}, logger)
	if err != nil {
		return err
	}

	// The handlers: the subscription ends when sub.Close does, after the forwarder stopped.
	msgs, err := sub.Subscribe(context.WithoutCancel(ctx), *topic)
	if err != nil {
		return err
	}
	h := &handler{pool: fastPool, tables: tables, node: node.ID(), latency: *handlerLatency}
	var wg, handlers sync.WaitGroup
	for range *subInFlight {
		handlers.Go(func() {
			for msg := range msgs {
				if err := h.handle(msg); err != nil {
					emit(map[string]any{"event": "log", "level": "error", "msg": "handler failed", "error": err.Error()})
					msg.Nack()
					continue
				}
				msg.Ack()
			}
		})
	}
	// Ready before the agent starts: the tests see every line its first passes log.
	emit(map[string]any{"event": "ready", "node_id": node.ID()})
	wg.Go(func() { _ = agent.Run(context.WithoutCancel(ctx)) })
	wg.Go(func() { _ = fwd.Run(context.WithoutCancel(ctx)) })

	pubErr := publish(ctx, pool, cfg, *topic, *prefix, *messages, *batch, *publishPause)
	if pubErr != nil && ctx.Err() == nil {
		emit(map[string]any{"event": "error", "error": pubErr.Error()})
	}
	<-ctx.Done()
	// Graceful stop: the forwarder first (it hands back what it has not sent), then the
	// subscriber (it deletes what was acked and hands back the rest), then the agent (it
	// hands back what is still marked with this node), then the node lock.
	_ = fwd.Close()
	_ = sub.Close()
	handlers.Wait()
	_ = agent.Close()
	wg.Wait()
	_ = node.Close()
	emit(map[string]any{"event": "stopped"})
	return nil
}

// publish commits the messages in transactions of batch messages, each recording the UUIDs
// in sent_log with the outbox rows.
func publish(ctx context.Context, pool *pgxpool.Pool, cfg schema.Config, topic, prefix string, n, batch int, pause time.Duration) error {
	sentLog := cfg.QuoteIdent(cfg.Schema) + ".sent_log"
	for done := 0; done < n; {
		k := min(batch, n-done)
		msgs := make([]*message.Message, k)
		uuids := make([]string, k)
		for i := range msgs {
			uuids[i] = fmt.Sprintf("%s-%06d", prefix, done+i)
			msgs[i] = message.NewMessage(uuids[i], []byte(fmt.Sprintf(`{"n":%d}`, done+i)))
		}
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO `+sentLog+` (uuid) SELECT unnest($1::text[])`, uuids); err != nil {
				return err
			}
			pub, err := publisher.NewPublisher(watermillsql.TxFromPgx(tx), publisher.Config{Schema: cfg}, watermill.NopLogger{})
			if err != nil {
				return err
			}
			return pub.Publish(topic, msgs...)
		})
		if err != nil {
			return err
		}
		done += k
		emit(map[string]any{"event": "published", "count": done})
		if pause > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
		}
	}
	return nil
}

// slowPublisher adds a latency to each Publish (a slow broker).
type slowPublisher struct {
	message.Publisher
	latency time.Duration
}

func (p slowPublisher) Publish(topic string, msgs ...*message.Message) error {
	time.Sleep(p.latency)
	return p.Publisher.Publish(topic, msgs...)
}

// handler counts every handling of a message in handled.
type handler struct {
	pool    *pgxpool.Pool
	tables  string
	node    int32
	latency time.Duration
}

func (h *handler) handle(msg *message.Message) error {
	if h.latency > 0 {
		time.Sleep(h.latency) // the handler's work
	}
	_, err := h.pool.Exec(context.Background(), `INSERT INTO `+h.tables+`handled (uuid, first_node, count) VALUES ($1, $2, 1)
ON CONFLICT (uuid) DO UPDATE SET count = handled.count + 1`, msg.UUID, h.node)
	return err
}

// jsonLogger writes the library's log lines as events.
type jsonLogger struct{ fields watermill.LogFields }

func (l jsonLogger) log(level, msg string, err error, fields watermill.LogFields) {
	all := watermill.LogFields{}
	for k, v := range l.fields {
		all[k] = v
	}
	for k, v := range fields {
		all[k] = v
	}
	ev := map[string]any{"event": "log", "level": level, "msg": msg, "fields": all}
	if err != nil {
		ev["error"] = err.Error()
	}
	emit(ev)
}

func (l jsonLogger) Error(msg string, err error, fields watermill.LogFields) {
	l.log("error", msg, err, fields)
}
func (l jsonLogger) Info(msg string, fields watermill.LogFields) { l.log("info", msg, nil, fields) }
func (l jsonLogger) Debug(string, watermill.LogFields)           {}
func (l jsonLogger) Trace(string, watermill.LogFields)           {}
func (l jsonLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	all := watermill.LogFields{}
	for k, v := range l.fields {
		all[k] = v
	}
	for k, v := range fields {
		all[k] = v
	}
	return jsonLogger{fields: all}
}
