package jasper_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

func TestNewRuntimeRefusesBadInput(t *testing.T) {
	t.Parallel()
	db := testdb.PgxDriver(t)
	for _, tt := range []struct {
		name string
		db   database.Driver
		cfg  jasper.Config
		want string
	}{
		{"nil driver", nil, jasper.Config{}, "database.Driver is required"},
		{"bad schema", db, jasper.Config{Schema: "bad-name"}, "Schema"},
		{"forwarder without publisher", db, jasper.Config{Forwarders: []forwarder.Config{{}}}, "Forwarders[0]"},
		{"negative agent period", db, jasper.Config{Agent: durability.Config{RecoveryBatchSize: -1}}, "Agent"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := jasper.NewRuntime(tt.db, tt.cfg, nil)
			if !errors.Is(err, jasper.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalidConfig naming %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("the error is not one line: %q", err)
			}
		})
	}
}

// Start on a schema without tables fails with the command that creates them, and
// MigrateSchema creates them.
func TestStartChecksOrMigratesTheSchema(t *testing.T) {
	t.Parallel()
	db := testdb.PgxDriver(t)
	name := testdb.Schema(t)
	rt, err := jasper.NewRuntime(db, jasper.Config{Schema: name}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = rt.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "schema migrate") {
		t.Fatalf("Start on an empty schema: %v, want an error saying to run schema migrate", err)
	}
	if rt.Agent() != nil {
		t.Fatal("a failed Start left an agent")
	}
	rt, err = jasper.NewRuntime(db, jasper.Config{Schema: name, MigrateSchema: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)
	diffs, err := schema.Verify(context.Background(), db, rt.Schema(), schema.VerifyOptions{})
	if err != nil || len(diffs) != 0 {
		t.Fatalf("after MigrateSchema: %v %v", diffs, err)
	}
}

// The factories need a started runtime; Start twice fails; Stop is idempotent and final.
func TestRuntimeLifecycle(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	rt, err := jasper.NewRuntime(db, jasper.Config{Schema: cfg.Schema}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Subscriber(subscriber.Config{}); !errors.Is(err, jasper.ErrNotStarted) {
		t.Fatalf("Subscriber before Start: %v, want ErrNotStarted", err)
	}
	if _, err := rt.Inbox(middleware.InboxConfig{ConsumerName: "c"}); !errors.Is(err, jasper.ErrNotStarted) {
		t.Fatalf("Inbox before Start: %v, want ErrNotStarted", err)
	}
	ctx := context.Background()
	if err := rt.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx); err == nil {
		t.Fatal("a second Start succeeded")
	}
	node := rt.Agent().NodeID()
	if lockHolderPID(t, db, node) == 0 {
		t.Fatal("the node lock is not held while running")
	}
	if _, err := rt.Subscriber(subscriber.Config{}); err != nil {
		t.Fatal(err)
	}
	if err := rt.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rt.Stop(ctx); err != nil {
		t.Fatalf("a second Stop: %v", err)
	}
	// Stop released the lock, or closed its connection if the release failed: the server
	// then drops the lock when its backend exits, which has no event to wait for (polled).
	for deadline := time.Now().Add(10 * time.Second); ; {
		pid := lockHolderPID(t, db, node)
		if pid == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node lock is still held by backend %d 10 s after Stop", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := rt.Start(ctx); !errors.Is(err, jasper.ErrStopped) {
		t.Fatalf("Start after Stop: %v, want ErrStopped", err)
	}
	if _, err := rt.DeadLetter(middleware.DeadLetterConfig{}); !errors.Is(err, jasper.ErrStopped) {
		t.Fatalf("DeadLetter after Stop: %v, want ErrStopped", err)
	}
}

// The whole path through one runtime: a business transaction publishes through TxPublisher,
// the runtime's forwarder relays to a sink, a durable local queue written by the pool
// publisher (in a transaction carried by the context) is delivered by the runtime's
// subscriber, and Stop leaves nothing owned.
func TestRuntimeEndToEnd(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	sink := &memorySink{copies: map[string]int{}}
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema:     cfg.Schema,
		Forwarders: []forwarder.Config{{Publisher: sink}},
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)
	ctx := context.Background()

	tx, err := testdb.Pool(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := rt.TxPublisher(watermillsql.TxFromPgx(tx))
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish("orders", proxyMessages("e2e", 10)...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sink.reached(10):
	case <-time.After(crashTimeout):
		t.Fatal("the runtime's forwarder did not relay the committed messages")
	}

	queue, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{
		Schema: rt.Schema(), Table: publisher.Incoming,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := rt.Subscriber(subscriber.Config{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := sub.Subscribe(ctx, "local-queue")
	if err != nil {
		t.Fatal(err)
	}
	msg := message.NewMessage("local-1", []byte(`{}`))
	if err := queue.Publish("local-queue", msg); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-out:
		if m.UUID != "local-1" {
			t.Fatalf("delivered %q", m.UUID)
		}
		m.Ack()
	case <-time.After(crashTimeout):
		t.Fatal("the runtime's subscriber delivered nothing")
	}
	node := rt.Agent().NodeID()
	if err := rt.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if in, out := owned(t, db, cfg, schema.IncomingTable, node), owned(t, db, cfg, schema.OutgoingTable, node); in+out != 0 {
		t.Fatalf("%d incoming and %d outgoing envelopes still owned by the stopped node", in, out)
	}
}
