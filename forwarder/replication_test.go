package forwarder

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// quietAgent turns off the agent's periodic jobs that read the outbox, so that what the
// test counts there is the forwarder's.
func quietAgent(s *agentSetup) {
	s.config.NodeReassignmentPollingTime = -1
	s.config.DisableNotify = true
}

// replicationEnv is a schema on a private cluster with wal_level = logical, its publication
// and slot, and an agent on it.
type replicationEnv struct {
	*env
	cluster *testdb.Cluster
	pool    *pgxpool.Pool
	lr      LogicalReplication
}

func newReplicationEnv(t *testing.T) *replicationEnv {
	t.Helper()
	cluster := testdb.StartLogicalCluster(t)
	db, st := cluster.Migrated(t)
	_, pool := cluster.Driver(t)
	return &replicationEnv{
		env: newEnvOn(t, db, st.Schema(), quietAgent), cluster: cluster, pool: pool,
		lr: LogicalReplication{DSN: cluster.DSN(), Create: true, RetryInterval: 200 * time.Millisecond},
	}
}

// waitUntil polls cond (the state it waits for has no event) until it reports "" or
// testTimeout passes, then fails with cond's last account of what it still sees.
func waitUntil(t *testing.T, cond func() (missing string)) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		missing := cond()
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", testTimeout, missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// awaitStreaming waits until f streams its slot (or stops streaming, want false).
func awaitStreaming(t *testing.T, f *Forwarder, want bool) {
	t.Helper()
	waitUntil(t, func() string {
		if s, _ := f.ReplicationStats(); s.Streaming != want {
			return fmt.Sprintf("forwarder streaming = %v, want %v (last error %q)", s.Streaming, want, s.LastError)
		}
		return ""
	})
}

// outboxStatements counts the statements run on the outbox table (pg_stat_statements).
func (e *replicationEnv) outboxStatements(t *testing.T) int64 {
	t.Helper()
	var n int64
	err := e.pool.QueryRow(context.Background(), `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
		WHERE query LIKE '%' || $1 || '%'`, e.schema.Qualified(layout.OutgoingTable)).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// following starts a forwarder of e with cfg following the slot of lr, and waits until it
// streams.
func following(t *testing.T, e *env, lr *LogicalReplication, cfg Config) *Forwarder {
	t.Helper()
	cfg.LogicalReplication = lr
	f := e.forwarder(cfg)
	start(t, f)
	awaitStreaming(t, f, true)
	return f
}

// awaitEmptyOutbox waits for the outbox to be empty: a batch's delete and commit follow its
// publishes, so the last messages arrive before their rows are gone.
func (e *replicationEnv) awaitEmptyOutbox(t *testing.T) {
	t.Helper()
	waitUntil(t, func() string {
		if n := e.outgoing(); n != 0 {
			return fmt.Sprintf("%d outgoing rows left", n)
		}
		return ""
	})
}

// The logical-replication source end to end: the rows waiting before the slot existed go by
// the polling path at start; then each committed transaction arrives through the slot (none
// handed over), and while the outbox is idle the forwarder runs no statement on it.
func TestLogicalReplicationRelaysAndIdlesWithoutStatements(t *testing.T) {
	t.Parallel()
	e := newReplicationEnv(t)
	pubsub := goChannel(t)
	e.insert("orders", newMessages(50, "before")...)
	c := collect(t, pubsub, "orders", 50+200)
	f := following(t, e.env, &e.lr, Config{Publisher: pubsub, PollInterval: 200 * time.Millisecond})
	c.waitCount(t, 50, "the 50 rows of before the slot, by the polling path")
	for i := range 200 {
		e.insert("orders", newMessages(1, fmt.Sprintf("after-%d", i))...)
	}
	select {
	case <-c.done:
	case <-time.After(testTimeout):
		rows, _ := e.db.Query(context.Background(), "SELECT message_uuid, owner_id, attempts FROM "+e.schema.Qualified(layout.OutgoingTable))
		for rows.Next() {
			var id string
			var o, a int
			_ = rows.Scan(&id, &o, &a)
			t.Logf("left in the outbox: message %s, owner %d, attempts %d", id, o, a)
		}
		rows.Close()
		s, _ := f.ReplicationStats()
		t.Fatalf("%d of 250 messages arrived; replication %+v; forwarder %+v", c.distinct(), s, f.Stats())
	}
	e.awaitEmptyOutbox(t)
	s, _ := f.ReplicationStats()
	// A row is handed over when another batch holds it as the slot brings it (the polling
	// path runs on wake-ups, e.g. the first drain): a few at most.
	if s.Transactions < 200 || s.Handover > 20 {
		t.Errorf("replication stats %+v: want at least 200 transactions from the slot and few rows handed over", s)
	}
	t.Logf("replication stats after the run: %+v", s)

	// Idle: no statement on the outbox for 3 s (the slot's keepalives are not statements).
	before := e.outboxStatements(t)
	time.Sleep(3 * time.Second) // the measured interval itself: nothing to wait for
	if n := e.outboxStatements(t) - before; n != 0 {
		t.Errorf("%d statements on the outbox in 3 s of idleness, want 0", n)
	}
}

// While the forwarder follows the slot, the notifications of new envelopes do not wake its
// polling path: the slot brings those rows. 100 transactions, each notifying, are relayed
// with at most a few polls (those of the start-up, which may still be running); each
// notification would otherwise cost a claim statement.
func TestLogicalReplicationNotificationsDoNotPoll(t *testing.T) {
	t.Parallel()
	cluster := testdb.StartLogicalCluster(t)
	db, st := cluster.Migrated(t)
	e := newEnvOn(t, db, st.Schema(), func(s *agentSetup) { s.config.NodeReassignmentPollingTime = -1 })
	lr := LogicalReplication{DSN: cluster.DSN(), Create: true, RetryInterval: 200 * time.Millisecond}
	pubsub := goChannel(t)
	c := collect(t, pubsub, "orders", 100)
	f := following(t, e, &lr, Config{Publisher: pubsub, PollInterval: 200 * time.Millisecond})
	before := f.Stats().Polls
	for i := range 100 {
		e.insert("orders", newMessages(1, fmt.Sprintf("notified-%d", i))...) // NotifyOutgoing
	}
	c.wait(t, "the 100 notified messages")
	polls := f.Stats().Polls - before
	s, _ := f.ReplicationStats()
	t.Logf("%d polls while 100 notified transactions were relayed; replication %+v", polls, s)
	// Each hand-over of rows the slot could not lock wakes the polling path once at most, and
	// hands over one row at least.
	if polls > 5+s.Handover {
		t.Errorf("%d polls while 100 notified transactions were relayed through the slot (%d rows handed over), want at most the start-up's few and one per hand-over", polls, s.Handover)
	}
	if s.Rows < 100 {
		t.Errorf("the slot brought %d rows, want the 100", s.Rows)
	}
}

// One transaction of more rows than a batch holds: the slot brings it whole, and it is
// relayed BatchSize at a time (one lock statement's id list stays bounded), the polling path
// helping (a full batch means the slot is behind). Every message arrives once the outbox is
// empty.
func TestLogicalReplicationTransactionLargerThanABatch(t *testing.T) {
	t.Parallel()
	e := newReplicationEnv(t)
	pubsub := goChannel(t)
	c := collect(t, pubsub, "orders", 350)
	f := following(t, e.env, &e.lr, Config{Publisher: pubsub, BatchSize: 100, PollInterval: 200 * time.Millisecond})
	e.insert("orders", newMessages(350, "big")...) // one transaction
	c.wait(t, "the 350 messages of one transaction")
	e.awaitEmptyOutbox(t)
	if s, _ := f.ReplicationStats(); s.Rows < 350 {
		t.Errorf("the slot brought %d rows, want the transaction's 350", s.Rows)
	}
}

// Two forwarders on one slot: one streams, the other stands by; when the active one stops,
// the stand-by takes the slot over within a few seconds and nothing committed meanwhile is
// lost. (A relay killed with SIGKILL: cmd/watermill-jasper's relay tests.)
func TestLogicalReplicationStandByTakesOver(t *testing.T) {
	t.Parallel()
	e := newReplicationEnv(t)
	pubsub := goChannel(t)
	c := collect(t, pubsub, "orders", 300)
	active := following(t, e.env, &e.lr, Config{Publisher: pubsub, PollInterval: 200 * time.Millisecond})
	standBy := newEnvOn(t, e.db, e.schema, quietAgent).forwarder(Config{Publisher: pubsub, LogicalReplication: &e.lr, PollInterval: 200 * time.Millisecond})
	start(t, standBy)
	if s, _ := standBy.ReplicationStats(); s.Streaming {
		t.Fatal("the stand-by streams the slot the active forwarder streams")
	}
	for i := range 100 {
		e.insert("orders", newMessages(1, fmt.Sprintf("first-%d", i))...)
	}
	if err := active.Close(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	for i := range 200 {
		e.insert("orders", newMessages(1, fmt.Sprintf("second-%d", i))...)
	}
	awaitStreaming(t, standBy, true)
	took := time.Since(killedAt)
	c.wait(t, "every message, the stand-by relaying after the take-over")
	t.Logf("the stand-by streamed the slot %s after the active forwarder closed", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the stand-by took %s to take the slot over, want a few seconds", took)
	}
}

// A slot dropped under a streaming forwarder: it falls back to polling (messages keep
// arriving), says why, and streams again once the slot exists again.
func TestLogicalReplicationFallsBackToPolling(t *testing.T) {
	t.Parallel()
	e := newReplicationEnv(t)
	pubsub := goChannel(t)
	c := collect(t, pubsub, "orders", 100)
	lr := e.lr
	lr.Create = false
	lr.RetryInterval = 2 * time.Second // time to drop the slot before the forwarder tries again
	conn, err := logrepl.Dial(context.Background(), e.cluster.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	cfg := logrepl.Config{Schema: e.schema.Schema}
	if _, err := logrepl.Setup(context.Background(), conn, cfg); err != nil {
		t.Fatal(err)
	}
	f := following(t, e.env, &lr, Config{Publisher: pubsub, PollInterval: 100 * time.Millisecond})
	// Drop the slot: terminate its stream first (an active slot cannot be dropped).
	var pid int
	if err := e.pool.QueryRow(context.Background(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, "wj_outbox_"+e.schema.Schema).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(context.Background(), `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	awaitStreaming(t, f, false)
	// The terminated backend exits on its own time: drop the slot once it is inactive.
	waitUntil(t, func() string {
		if _, err := e.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, "wj_outbox_"+e.schema.Schema); err != nil {
			return fmt.Sprintf("drop the slot: %v", err)
		}
		return ""
	})
	for i := range 100 {
		e.insert("orders", newMessages(1, fmt.Sprintf("polled-%d", i))...)
	}
	c.wait(t, "the messages committed while the slot was missing, by polling")
	// The forwarder tried the slot again meanwhile (2 s after the end of its stream) and was
	// told it is missing.
	waitUntil(t, func() string {
		if s, _ := f.ReplicationStats(); !strings.Contains(s.LastError, "does not exist") {
			return fmt.Sprintf("last error %q does not say the slot is missing", s.LastError)
		}
		return ""
	})
	s, _ := f.ReplicationStats()
	t.Logf("while the slot was missing: %s", s.LastError)
	if _, err := logrepl.Setup(context.Background(), conn, cfg); err != nil {
		t.Fatal(err)
	}
	awaitStreaming(t, f, true)
}

// The database crashes (pg_ctl stop -m immediate, then crash recovery) while the slot streams
// and messages are committed. The relay's batch commits do not wait for the disk
// (store.Store.BeginRelay), so the last of them may be lost with the crash while the slot was
// confirmed past their rows; those rows are back in the table, and the polling path, which
// runs whenever the source follows the slot again, sends them. Every message whose commit was
// acknowledged arrives, the outbox ends empty, and the source follows the slot again.
func TestLogicalReplicationDatabaseCrashLosesNothing(t *testing.T) {
	t.Parallel()
	e := newReplicationEnv(t)
	pubsub := goChannel(t)
	const before, after = 300, 100
	c := collect(t, pubsub, "orders", before+after)
	f := following(t, e.env, &e.lr, Config{Publisher: pubsub, PollInterval: 100 * time.Millisecond})
	// commit writes msg in a transaction of its own until its commit is acknowledged: after
	// an error the commit may have happened, and the same message (same envelope id) written
	// again is a no-op while its row exists.
	commit := func(msg *message.Message) {
		t.Helper()
		r, err := row.FromMessage("orders", msg, row.Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(testTimeout)
		for {
			err := e.store.InsertEnvelopes(context.Background(), store.InsertParams{Outgoing: []row.Envelope{r}, NotifyOutgoing: true})
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("commit %s: %v", msg.UUID, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, msg := range newMessages(before, "before") {
		commit(msg)
	}
	// Crash as soon as the slot has relayed some of them: batches are being sent, deleted
	// and committed meanwhile.
	c.waitCount(t, before/3, "the first messages, through the slot")
	e.cluster.Crash()
	e.cluster.Start()
	for _, msg := range newMessages(after, "after") {
		commit(msg)
	}
	c.wait(t, "every acknowledged message after the crash")
	e.awaitEmptyOutbox(t)
	awaitStreaming(t, f, true)
	s, _ := f.ReplicationStats()
	c.mu.Lock()
	deliveries := c.total
	c.mu.Unlock()
	t.Logf("%d distinct messages, %d deliveries; slot: %d transactions, %d rows, %d handed to polling",
		c.distinct(), deliveries, s.Transactions, s.Rows, s.Handover)
}
