package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// relayDB is how the relays of relaySuite and the application reach the database.
type relayDB struct {
	args    []string      // relay flags: --dsn, and --session-dsn behind a pooler
	app     *pgxpool.Pool // the application's pool (publishes)
	bouncer *testdb.PgBouncer
}

// The relay suite runs on the database directly and through PgBouncer in transaction mode
// with the documented configuration (docs/deploying.md: --dsn through the pooler with
// default_query_exec_mode=exec, --session-dsn direct; the application's pool through the
// pooler too).
func TestRelaySuiteDirectAndThroughPgBouncer(t *testing.T) {
	t.Parallel()
	// The legs run one after the other: each measures idle wake-ups, which the other's drain
	// of 20,000 messages would disturb.
	t.Run("direct", func(t *testing.T) {
		relaySuite(t, relayDB{args: []string{"--dsn", testdb.PostgresDSN()}, app: testdb.Pool(t)})
	})
	t.Run("pgbouncer", func(t *testing.T) {
		b := testdb.StartPgBouncer(t, 20)
		app, err := pgxpool.New(context.Background(), b.DSN("default_query_exec_mode=exec", "pool_max_conns=4"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(app.Close)
		relaySuite(t, relayDB{
			args:    []string{"--dsn", b.DSN("default_query_exec_mode=exec"), "--session-dsn", testdb.PostgresDSN()},
			app:     app,
			bouncer: b,
		})
	})
}

// relaySuite: 20,000 committed messages, two relays and a third one killed with SIGKILL while
// its batches hold envelopes locked: every message arrives, the outbox ends empty, no relay
// says "node id in use" or fails a statement, each idle relay is woken by the notification of
// a commit (not by its 30 s poll), and after the relays stopped no advisory lock is left.
func relaySuite(t *testing.T, db relayDB) {
	const total = 20000
	conn := rabbit(t)
	q := testQueue(t, conn)
	s := migratedSchema(t)
	destination := "rabbitmq://queue/" + q
	c := consume(t, conn, q)
	relayArgs := func(extra ...string) []string {
		return append(append(slices.Clone(db.args), "--to", amqpURL(), "--verbose", "--progress", "0"), extra...)
	}

	// The victim relays through a proxy whose broker replies are held once the backlog is
	// committed: its batches hold envelopes locked when it is killed.
	victim, victimID := stuckRelay(t, s, destination, c, total-1, db.args...)
	if got := outgoingCount(t, s, ""); got != total-1 {
		t.Fatalf("%d envelopes in the outbox, want %d", got, total-1)
	}
	locked := lockedOutgoing(t, s)
	victim.stop(syscall.SIGKILL)
	relays := []*relayProcess{
		startRelay(t, s, relayArgs("--poll-interval", "30s")...),
		startRelay(t, s, relayArgs("--poll-interval", "30s")...),
	}
	ids := []int32{victimID}
	for _, r := range relays {
		r.waitFor("the node lock", 30*time.Second, func() bool { return r.stderrHas("Node lock taken") })
		ids = append(ids, r.nodeID())
	}
	relays[0].waitFor(fmt.Sprintf("all %d messages on RabbitMQ", total), 120*time.Second, func() bool { return c.distinct() == total })
	relays[0].waitFor("an empty outbox", 30*time.Second, func() bool { return outgoingCount(t, s, "") == 0 })
	c.mu.Lock()
	t.Logf("%s: relay %d killed while its batches held %d envelopes locked; all %d messages arrived through the other two, %d duplicates",
		t.Name(), victimID, locked, total, c.dups)
	c.mu.Unlock()

	// Idle wake-ups: each publish commits one message with a notification; the relays poll
	// only every 30 s, so an arrival within 10 s was woken by LISTEN.
	pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(db.app), publisher.Config{
		Schema: schema.Config{Schema: s}, Notify: publisher.NotifyEveryPublish,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const samples = 100
	var waits []time.Duration
	for i := range samples {
		want := total + i + 1
		committed := time.Now()
		if err := pub.Publish(destination, message.NewMessage(fmt.Sprintf("idle-%d", i), []byte(`{}`))); err != nil {
			t.Fatal(err)
		}
		deadline := committed.Add(10 * time.Second)
		for c.distinct() < want {
			if time.Now().After(deadline) {
				t.Fatalf("message %d published on an idle outbox did not arrive within 10 s: the relays were not woken by the notification (LISTEN)", i)
			}
			time.Sleep(time.Millisecond)
		}
		waits = append(waits, time.Since(committed))
	}
	slices.Sort(waits)
	t.Logf("%s: idle wake-up, commit to arrival at the consumer over %d messages: p50 %s, p99 %s, max %s",
		t.Name(), samples, waits[samples/2].Round(10*time.Microsecond), waits[samples*99/100].Round(10*time.Microsecond), waits[samples-1].Round(10*time.Microsecond))

	for _, r := range relays {
		if code := r.stop(syscall.SIGTERM); code != 0 {
			t.Errorf("relay exited with status %d after SIGTERM:\n%s", code, r)
		}
	}
	for _, r := range append(relays, victim) {
		_, errs := r.lines()
		for _, l := range errs {
			for _, bad := range []string{"node id in use", "SQLSTATE", "prepared statement", "Cannot LISTEN"} {
				if strings.Contains(l, bad) {
					t.Errorf("a relay logged %q: %s", bad, l)
				}
			}
		}
	}
	for _, id := range ids {
		if pid := nodeLockHolder(t, id); pid != 0 {
			t.Errorf("the node lock of relay %d is still held by backend %d after the relays stopped", id, pid)
		}
	}
	if db.bouncer != nil {
		if n := db.bouncer.AdvisoryLocks(t); n != 0 {
			t.Errorf("%d advisory locks held by the pooler's server connections after the relays stopped", n)
		}
	}
}

// Through PgBouncer in transaction mode without --session-dsn, the relay refuses to start with
// one line naming the fix, and leaves no lock on the pooler's server connections.
func TestRelayRefusesPgBouncerWithoutSessionDSN(t *testing.T) {
	t.Parallel()
	b := testdb.StartPgBouncer(t, 5)
	s := migratedSchema(t)
	for _, c := range []struct {
		dsn  string
		want []string
	}{
		{b.DSN(), []string{"--session-dsn", "default_query_exec_mode=exec"}},
		{b.DSN("default_query_exec_mode=simple_protocol"), []string{"--session-dsn"}},
	} {
		r := runCLI(t, "relay", "--dsn", c.dsn, "--schema", s, "--to", "stdout")
		if r.code != 1 {
			t.Fatalf("relay through PgBouncer without --session-dsn: exit status %d, want 1:\n%s", r.code, r)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		last := lines[len(lines)-1]
		for _, w := range append(c.want, "pooler", "docs/deploying.md") {
			if !strings.Contains(last, w) {
				t.Errorf("the relay's error %q does not say %q", last, w)
			}
		}
	}
	if n := b.AdvisoryLocks(t); n != 0 {
		t.Errorf("%d advisory locks left on the pooler's server connections", n)
	}
}
