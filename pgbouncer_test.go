package jasper_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// A runtime whose database goes through PgBouncer in transaction mode, with the documented
// configuration (docs/deploying.md: the pool in exec mode, NodeConfig.SessionDB direct): the
// application's business transactions publish to a durable local queue (one in ten rolled
// back), a subscriber behind the inbox applies each message's effect, and every committed
// message is applied exactly once, none of the rolled back. The agent receives the commits'
// notifications (its LISTEN runs on the direct session). After Stop no advisory lock is left, on the pooler's server connections
// or elsewhere.
func TestRuntimeThroughPgBouncer(t *testing.T) {
	t.Parallel()
	const messages = 500
	bouncer := testdb.StartPgBouncer(t, 20)
	direct, cfg := testdb.Migrated(t)
	pooled, pool := bouncer.Driver(t, 10, pgx.QueryExecModeExec)
	rt, err := jasper.NewRuntime(pooled, jasper.Config{Schema: cfg.Schema, Node: durability.NodeConfig{SessionDB: direct}}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = rt.Stop(context.Background())
		}
	})
	if !rt.Agent().Node().Pooled() {
		t.Error("the node does not say its database goes through a pooler")
	}
	node := rt.Agent().NodeID()
	effects := cfg.QuoteIdent(cfg.Schema) + ".effects"
	execSQL(t, testdb.Pool(t), "CREATE TABLE "+effects+" (message_uuid text NOT NULL)")

	applyEffects(t, rt, subscriber.Config{PollInterval: 30 * time.Second}, "pgbouncer", effects)

	ctx := context.Background()
	committed := 0
	for i := range messages {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		queue, err := publisher.NewPublisher(watermillsql.TxFromPgx(tx), publisher.Config{Schema: rt.Schema(), Table: publisher.Incoming}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := queue.Publish("work", message.NewMessage(fmt.Sprintf("work-%04d", i), []byte(`{}`))); err != nil {
			t.Fatal(err)
		}
		if i%10 == 9 {
			err = tx.Rollback(ctx)
		} else {
			err = tx.Commit(ctx)
			committed++
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	direct2 := testdb.Pool(t)
	for count(t, direct2, "SELECT count(*) FROM "+effects) < int64(committed) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d effects after 20 s: the subscriber was not woken by LISTEN (it polls every 30 s)", count(t, direct2, "SELECT count(*) FROM "+effects), committed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d committed messages applied %s after the last commit; %d notifications received", committed, time.Since(start).Round(time.Millisecond), rt.Agent().Stats().Notifications)
	if rt.Agent().Stats().Notifications == 0 {
		t.Error("the agent received no notification: LISTEN does not work (it must run on the direct SessionDB)")
	}
	if n := count(t, direct2, "SELECT count(*) FROM (SELECT message_uuid FROM "+effects+" GROUP BY message_uuid HAVING count(*) > 1) d"); n != 0 {
		t.Errorf("%d messages applied more than once", n)
	}
	if n := count(t, direct2, "SELECT count(*) FROM "+effects+" WHERE right(message_uuid, 1) = '9'"); n != 0 {
		t.Errorf("%d messages of rolled-back transactions applied", n)
	}
	awaitRows(t, direct2, "SELECT count(*) FROM "+cfg.Qualified(schema.IncomingTable)+" WHERE status <> 'Handled'", 0)

	stopped = true
	if err := rt.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if n := bouncer.AdvisoryLocks(t); n != 0 {
		t.Errorf("%d advisory locks held by the pooler's server connections after Stop", n)
	}
	if n := count(t, direct2, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
	  AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid`, int64(node)); n != 0 {
		t.Errorf("the node lock of node %d is still held after Stop", node)
	}
}
