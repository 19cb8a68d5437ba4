package jasper_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testproc"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// crashNodeMain is one node of the crash tests (crash_test.go): a real OS process (this test
// binary started again by internal/testproc) running, on one schema, a Runtime with the
// transactional publisher, a forwarder, a subscriber and the durability agent, all marked with
// one node id (-node-id, chosen by the test).
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
//     count) with one INSERT ... ON CONFLICT DO UPDATE SET count = count + 1, and logs it in
//     handle_log (uuid, partition key) in the same statement, then acks.
//
// It then keeps relaying and handling until SIGTERM or SIGINT, when it stops gracefully
// (Runtime.Stop: forwarder, subscriber, agent, node) and exits 0.
//
// It writes events to stdout, one JSON object per line: {"event":"ready","node_id":N},
// {"event":"published","count":N} after each commit, {"event":"log",...} for the log lines
// of the library (the agent's "Envelopes of a dormant node handed back" among them) and
// {"event":"stopped"}. The tests read these lines as events.
func crashNodeMain() error {
	fs := flag.NewFlagSet("crashnode", flag.ContinueOnError)
	var (
		dsn            = fs.String("dsn", "", "PostgreSQL DSN")
		schemaName     = fs.String("schema", "public", "schema of the Jasper tables and of the test tables")
		nodeID         = fs.Int("node-id", 0, "node id (chosen by the test)")
		topic          = fs.String("topic", "orders", "outbox destination, and the queue (received_at) it is relayed to")
		prefix         = fs.String("prefix", "m", "prefix of the message UUIDs")
		messages       = fs.Int("messages", 0, "messages to publish")
		batch          = fs.Int("batch", 100, "messages per publishing transaction")
		keys           = fs.Int("keys", 0, "partition keys the messages are spread over, in turn (0: no key)")
		replicationDSN = fs.String("replication-dsn", "", "follow the outbox through the schema's replication slot (forwarder.LogicalReplication) with this DSN")
		tableLess      = fs.Bool("table-less", false, "publish table-less (publisher.Config.TableLess): logical decoding messages for the schema's slot, no rows")
		sinkLatency    = fs.Duration("sink-latency", 0, "latency added to each relayed message (a slow broker)")
		handlerLatency = fs.Duration("handler-latency", 0, "work time of the handler for each message")
		fwdBatch       = fs.Int("forwarder-batch", 100, "forwarder BatchSize")
		fwdWorkers     = fs.Int("forwarder-workers", 2, "forwarder Workers")
		fwdConcurrency = fs.Int("forwarder-concurrency", 8, "forwarder PublishConcurrency")
		subBatch       = fs.Int("subscriber-batch", 50, "subscriber BatchSize")
		subInFlight    = fs.Int("subscriber-inflight", 4, "subscriber MaxInFlight (and handlers)")
		reassign       = fs.Duration("reassign", 2*time.Second, "agent NodeReassignmentPollingTime")
		scheduled      = fs.Duration("scheduled", 500*time.Millisecond, "agent ScheduledJobPollingTime")
	)
	if err := fs.Parse(testproc.Args()); err != nil {
		return err
	}
	if *dsn == "" || *nodeID == 0 {
		return errors.New("-dsn and -node-id are required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// Connections: the node lock and the LISTEN connection hold two of the pool's for good;
	// the rest serve the claims, acks, agent jobs and publishing. A process uses at most 13,
	// so that the crash tests stay well under PostgreSQL's default max_connections (100)
	// while other test packages run.
	pool, err := newPool(ctx, *dsn, 8, nil)
	if err != nil {
		return err
	}
	defer pool.Close()
	// The queue's writes and the handler's counts commit once per message: without waiting
	// for the WAL flush of each. Their commits stay atomic and visible at once, and survive
	// the death of this process (what the tests do); only a crash of PostgreSQL itself could
	// lose them. crashnode.node tells the tables' trigger which node relayed a message.
	fastPool, err := newPool(ctx, *dsn, 5, map[string]string{"synchronous_commit": "off", "crashnode.node": fmt.Sprint(*nodeID)})
	if err != nil {
		return err
	}
	defer fastPool.Close()
	logger := jsonLogger{}
	// The forwarder relays into a durable local queue: this library's publisher writing the
	// incoming table (received_at = the topic), each Publish its own transaction.
	var queue message.Publisher
	queue, err = publisher.NewPublisher(watermillsql.BeginnerFromPgx(fastPool), publisher.Config{
		Schema: schemaConfig(*schemaName), Table: publisher.Incoming,
	}, logger)
	if err != nil {
		return err
	}
	if *sinkLatency > 0 {
		queue = slowPublisher{queue, *sinkLatency}
	}
	var lr *forwarder.LogicalReplication
	if *replicationDSN != "" {
		lr = &forwarder.LogicalReplication{DSN: *replicationDSN}
	}
	rt, err := jasper.NewRuntime(database.FromPgx(pool), jasper.Config{
		Schema:    *schemaName,
		Publisher: publisher.Config{TableLess: *tableLess},
		Node:      durability.NodeConfig{ID: int32(*nodeID)},
		Agent: durability.Config{
			ScheduledJobPollingTime:     *scheduled,
			NodeReassignmentPollingTime: *reassign,
			NodeCheckInterval:           time.Second,
			MetricsSamplingInterval:     -1,
		},
		Forwarders: []forwarder.Config{{
			Publisher: queue, BatchSize: *fwdBatch, Workers: *fwdWorkers, PublishConcurrency: *fwdConcurrency,
			PollInterval: 100 * time.Millisecond, LogicalReplication: lr,
		}},
	}, logger)
	if err != nil {
		return err
	}
	// Ready before the runtime starts: the tests see every line the agent's first passes log.
	testproc.Emit(testproc.Event{"event": "ready", "node_id": *nodeID})
	if err := rt.Start(ctx); err != nil {
		return err
	}
	sub, err := rt.Subscriber(subscriber.Config{BatchSize: *subBatch, MaxInFlight: *subInFlight, PollInterval: 100 * time.Millisecond})
	if err != nil {
		return err
	}
	// The handlers: the subscription ends when the runtime stops, after the forwarder.
	msgs, err := sub.Subscribe(context.WithoutCancel(ctx), *topic)
	if err != nil {
		return err
	}
	h := &handler{pool: fastPool, tables: quoteSchema(*schemaName), node: int32(*nodeID), latency: *handlerLatency}
	var handlers sync.WaitGroup
	for range *subInFlight {
		handlers.Go(func() {
			for msg := range msgs {
				if err := h.handle(msg); err != nil {
					testproc.Emit(testproc.Event{"event": "log", "level": "error", "msg": "handler failed", "error": err.Error()})
					msg.Nack()
					continue
				}
				msg.Ack()
			}
		})
	}
	if err := publish(ctx, rt, pool, *schemaName, *topic, *prefix, *messages, *batch, *keys); err != nil && ctx.Err() == nil {
		testproc.Emit(testproc.Event{"event": "error", "error": err.Error()})
	}
	<-ctx.Done()
	// Graceful stop, in the runtime's order: the forwarder first (it hands back what it has
	// not sent), then the subscriber (it deletes what was acked and hands back the rest), then
	// the agent (it hands back what is still marked with this node), then the node lock.
	err = rt.Stop(context.Background())
	handlers.Wait()
	testproc.Emit(testproc.Event{"event": "stopped"})
	return err
}

// newPool opens a pool of at most maxConns connections with extra session parameters.
func newPool(ctx context.Context, dsn string, maxConns int32, params map[string]string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "crashnode"
	for k, v := range params {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	cfg.MaxConns = maxConns
	return pgxpool.NewWithConfig(ctx, cfg)
}

// publish commits the messages in transactions of batch messages, each recording the UUIDs
// in sent_log with the outbox rows. With keys > 0, message i has the partition key
// "<prefix>-k<i mod keys>".
func publish(ctx context.Context, rt *jasper.Runtime, pool *pgxpool.Pool, schemaName, topic, prefix string, n, batch, keys int) error {
	sentLog := quoteSchema(schemaName) + "sent_log"
	for done := 0; done < n; {
		k := min(batch, n-done)
		msgs := make([]*message.Message, k)
		uuids := make([]string, k)
		for i := range msgs {
			uuids[i] = fmt.Sprintf("%s-%06d", prefix, done+i)
			msgs[i] = message.NewMessage(uuids[i], []byte(fmt.Sprintf(`{"n":%d}`, done+i)))
			if keys > 0 {
				msgs[i].Metadata.Set(metadata.PartitionKey, fmt.Sprintf("%s-k%03d", prefix, (done+i)%keys))
			}
		}
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO `+sentLog+` (uuid) SELECT unnest($1::text[])`, uuids); err != nil {
				return err
			}
			pub, err := rt.TxPublisher(watermillsql.TxFromPgx(tx))
			if err != nil {
				return err
			}
			return pub.Publish(topic, msgs...)
		})
		if err != nil {
			return err
		}
		done += k
		testproc.Emit(testproc.Event{"event": "published", "count": done})
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
	_, err := h.pool.Exec(context.Background(), `WITH l AS (INSERT INTO `+h.tables+`handle_log (uuid, pkey) VALUES ($1, NULLIF($3, '')))
INSERT INTO `+h.tables+`handled (uuid, first_node, count) VALUES ($1, $2, 1)
ON CONFLICT (uuid) DO UPDATE SET count = handled.count + 1`, msg.UUID, h.node, msg.Metadata.Get(metadata.PartitionKey))
	return err
}

// jsonLogger writes the library's log lines as events.
type jsonLogger struct{ fields watermill.LogFields }

func (l jsonLogger) log(level, msg string, err error, fields watermill.LogFields) {
	ev := testproc.Event{"event": "log", "level": level, "msg": msg, "fields": l.fields.Add(fields)}
	if err != nil {
		ev["error"] = err.Error()
	}
	testproc.Emit(ev)
}

func (l jsonLogger) Error(msg string, err error, fields watermill.LogFields) {
	l.log("error", msg, err, fields)
}
func (l jsonLogger) Info(msg string, fields watermill.LogFields) { l.log("info", msg, nil, fields) }
func (l jsonLogger) Debug(string, watermill.LogFields)           {}
func (l jsonLogger) Trace(string, watermill.LogFields)           {}
func (l jsonLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return jsonLogger{fields: l.fields.Add(fields)}
}

// schemaConfig is the PostgreSQL schema config of a schema name.
func schemaConfig(name string) schema.Config { return schema.Config{Schema: name} }

// quoteSchema is the quoted schema name followed by a dot, to qualify the test's tables.
func quoteSchema(name string) string { return schemaConfig(name).QuoteIdent(name) + "." }
