// Command crashnode is one node of the crash tests of package durability: a real OS process
// running the transactional publisher, a forwarder and a durability agent on one schema.
//
// It publishes -messages messages (in transactions of -batch messages that also record each
// message's UUID in the table sent_log, as business data committed with the outbox), while
// its forwarder relays the outbox to a sink: a Watermill publisher that inserts each message
// UUID into the table received (ON CONFLICT DO NOTHING) and, when it was there already, into
// duplicates, with this node's id. It then keeps relaying until SIGTERM or SIGINT, when it
// stops gracefully (forwarder, agent, node) and exits 0.
//
// It writes events to stdout, one JSON object per line: {"event":"ready","node_id":N},
// {"event":"published","count":N} after each commit, {"event":"log",...} for the log lines
// of the library (the agent's "Envelopes of a dormant node handed back" among them) and
// {"event":"stopped"}. The tests read these lines as events.
package main

import (
	"context"
	"encoding/json"
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
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
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
		dsn            = flag.String("dsn", "", "PostgreSQL DSN of the node (publisher, forwarder, agent)")
		sinkDSN        = flag.String("sink-dsn", "", "PostgreSQL DSN of the sink tables (default: -dsn)")
		schemaName     = flag.String("schema", "public", "schema of the Jasper tables and of the test tables")
		topic          = flag.String("topic", "orders", "topic (destination) of the messages")
		prefix         = flag.String("prefix", "m", "prefix of the message UUIDs")
		messages       = flag.Int("messages", 0, "messages to publish")
		batch          = flag.Int("batch", 100, "messages per publishing transaction")
		publishPause   = flag.Duration("publish-pause", 0, "pause between publishing transactions (spreads the run)")
		sinkLatency    = flag.Duration("sink-latency", 0, "latency of each sink publish (a slow broker)")
		fwdBatch       = flag.Int("forwarder-batch", 100, "forwarder BatchSize")
		fwdWorkers     = flag.Int("forwarder-workers", 2, "forwarder Workers")
		fwdConcurrency = flag.Int("forwarder-concurrency", 8, "forwarder PublishConcurrency")
		reassign       = flag.Duration("reassign", 2*time.Second, "agent NodeReassignmentPollingTime")
		scheduled      = flag.Duration("scheduled", 500*time.Millisecond, "agent ScheduledJobPollingTime")
	)
	flag.Parse()
	if *dsn == "" {
		return fmt.Errorf("-dsn is required")
	}
	if *sinkDSN == "" {
		*sinkDSN = *dsn
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	pool, err := pgxpool.New(ctx, *dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	sinkCfg, err := pgxpool.ParseConfig(*sinkDSN)
	if err != nil {
		return err
	}
	// The sink stands for a broker: one commit per message, so no WAL flush wait for each
	// (its commits stay atomic and visible; only a crash of PostgreSQL itself could lose them).
	sinkCfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	sinkCfg.MaxConns = 16
	sinkPool, err := pgxpool.NewWithConfig(ctx, sinkCfg)
	if err != nil {
		return err
	}
	defer sinkPool.Close()
	db := database.FromPgx(pool)
	cfg := schema.Config{Schema: *schemaName}
	logger := jsonLogger{}

	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, logger)
	if err != nil {
		return err
	}
	defer node.Close()
	agent, err := durability.NewAgent(db, node, durability.Config{
		Schema:                      cfg,
		ScheduledJobPollingTime:     *scheduled,
		NodeReassignmentPollingTime: *reassign,
		NodeCheckInterval:           time.Second,
		MetricsSamplingInterval:     -1,
	}, logger)
	if err != nil {
		return err
	}
	fwd, err := forwarder.NewForwarder(db, forwarder.Config{
		Schema:             cfg,
		Node:               node,
		Publisher:          &sink{pool: sinkPool, schema: cfg.QuoteIdent(*schemaName), node: node.ID(), latency: *sinkLatency},
		BatchSize:          *fwdBatch,
		Workers:            *fwdWorkers,
		PublishConcurrency: *fwdConcurrency,
		PollInterval:       100 * time.Millisecond,
	}, logger)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = agent.Run(context.WithoutCancel(ctx)) })
	wg.Go(func() { _ = fwd.Run(context.WithoutCancel(ctx)) })
	emit(map[string]any{"event": "ready", "node_id": node.ID()})

	pubErr := publish(ctx, pool, cfg, *topic, *prefix, *messages, *batch, *publishPause)
	if pubErr != nil && ctx.Err() == nil {
		emit(map[string]any{"event": "error", "error": pubErr.Error()})
	}
	<-ctx.Done()
	// Graceful stop: the forwarder first (it hands back what it has not sent), then the
	// agent (it hands back what is still marked with this node), then the node lock.
	_ = fwd.Close()
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
		err := func() error {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(context.WithoutCancel(ctx))
			if _, err := tx.Exec(ctx, `INSERT INTO `+sentLog+` (uuid) SELECT unnest($1::text[])`, uuids); err != nil {
				return err
			}
			pub, err := publisher.NewPublisher(watermillsql.TxFromPgx(tx), publisher.Config{Schema: cfg}, watermill.NopLogger{})
			if err != nil {
				return err
			}
			if err := pub.Publish(topic, msgs...); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}()
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

// sink is the "broker": it records each message once in received, and every further copy
// in duplicates.
type sink struct {
	pool    *pgxpool.Pool
	schema  string
	node    int32
	latency time.Duration
}

func (s *sink) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if s.latency > 0 {
			time.Sleep(s.latency) // a broker's round trip
		}
		_, err := s.pool.Exec(context.Background(), `WITH ins AS (
  INSERT INTO `+s.schema+`.received (uuid, node) VALUES ($1, $2) ON CONFLICT (uuid) DO NOTHING RETURNING 1)
INSERT INTO `+s.schema+`.duplicates (uuid, node) SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM ins)`, m.UUID, s.node)
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *sink) Close() error { return nil }

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
