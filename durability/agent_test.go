package durability

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/jasperid"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// agentTimeout bounds every wait of these tests.
const agentTimeout = 30 * time.Second

type agentEnv struct {
	t       *testing.T
	db      database.DB
	schema  schema.Config
	dialect sqldialect.Dialect
	node    *Node
}

func newAgentEnv(t *testing.T) *agentEnv {
	t.Helper()
	db, cfg := testdb.Migrated(t)
	d, err := sqldialect.For(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(context.Background(), db, NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return &agentEnv{t: t, db: db, schema: cfg, dialect: d, node: n}
}

func (e *agentEnv) agent(c Config) *Agent {
	e.t.Helper()
	c.Schema = e.schema
	a, err := NewAgent(e.db, e.node, c, watermill.NopLogger{})
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

func (e *agentEnv) table(name string) string { return e.schema.Qualified(name) }

func (e *agentEnv) exec(q string, args ...any) int64 {
	e.t.Helper()
	n, err := e.db.Exec(context.Background(), q, args...)
	if err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return n
}

func (e *agentEnv) count(table, where string, args ...any) int64 {
	e.t.Helper()
	var n int64
	q := "SELECT count(*) FROM " + e.table(table)
	if where != "" {
		q += " WHERE " + where
	}
	if err := database.QueryRow(context.Background(), e.db, q, args, &n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// outgoing inserts n outgoing envelopes for destination owned by owner.
func (e *agentEnv) outgoing(n int, destination string, owner int32, deliverBy *time.Time) []uuid.UUID {
	e.t.Helper()
	ids := make([]uuid.UUID, n)
	for i := range n {
		r, err := row.FromMessage(destination, message.NewMessage(watermill.NewUUID(), []byte("x")), row.Defaults{})
		if err != nil {
			e.t.Fatal(err)
		}
		r.OwnerID, r.DeliverBy = owner, deliverBy
		e.exec(e.dialect.InsertOutgoing(1), r.OutgoingArgs(nil, e.dialect.UUIDs())...)
		ids[i] = r.ID
	}
	return ids
}

// incoming inserts n incoming envelopes of topic with a status, owner and execution time.
func (e *agentEnv) incoming(n int, topic, status string, owner int32, exec *time.Time) []uuid.UUID {
	e.t.Helper()
	ids := make([]uuid.UUID, n)
	for i := range n {
		r, err := row.FromMessage(topic, message.NewMessage(watermill.NewUUID(), []byte("x")), row.Defaults{})
		if err != nil {
			e.t.Fatal(err)
		}
		r.Status, r.OwnerID, r.ExecutionTime = status, owner, exec
		e.exec(e.dialect.InsertIncoming(1), r.IncomingArgs(nil, e.dialect.UUIDs())...)
		ids[i] = r.ID
	}
	return ids
}

func (e *agentEnv) owned(owner int32) (in, out int64) {
	return e.count(schema.IncomingTable, "owner_id = $1", owner), e.count(schema.OutgoingTable, "owner_id = $1", owner)
}

// deadNodeID returns a random node id nobody holds.
func deadNodeID() int32 { return jasperid.NewNodeID() }

// release releases the advisory lock of id that holdLock took on conn.
func release(t *testing.T, conn database.Conn, id int32) {
	t.Helper()
	var ok bool
	if err := database.QueryRow(context.Background(), conn, `SELECT pg_advisory_unlock($1::bigint)`, []any{int64(id)}, &ok); err != nil || !ok {
		t.Fatalf("unlock %d: %v %v", id, ok, err)
	}
}

// untilDone runs a job again while it reports that another agent held its lock: the global
// locks are database-wide, and the agents of tests running in parallel in other schemas (or
// other packages) take them too.
func untilDone[R any](t *testing.T, job func() (R, bool, error)) R {
	t.Helper()
	deadline := time.Now().Add(agentTimeout)
	for {
		r, skipped, err := job()
		if err != nil {
			t.Fatal(err)
		}
		if !skipped {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatal("the job's lock stayed held by another session")
		}
		time.Sleep(10 * time.Millisecond) // lock contention has no event to wait for
	}
}

type countingWaker struct{ n atomic.Int64 }

func (w *countingWaker) Wake() { w.n.Add(1) }

func TestAgentConfig(t *testing.T) {
	t.Parallel()
	var c Config
	c.setDefaults()
	if c.ScheduledJobPollingTime != 5*time.Second || c.NodeReassignmentPollingTime != time.Minute ||
		c.RecoveryBatchSize != DefaultRecoveryBatchSize || c.HandledCleanupBatchSize != 1000 ||
		c.MetricsSamplingInterval != 5*time.Second || c.ScheduledJobFirstExecution != 0 || c.FirstNodeReassignmentExecution != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{RecoveryBatchSize: -1}, "RecoveryBatchSize"},
		{Config{RecoveryBatchSize: MaxBatchSize + 1}, "RecoveryBatchSize"},
		{Config{HandledCleanupBatchSize: -3}, "HandledCleanupBatchSize"},
		{Config{ScheduledJobFirstExecution: -time.Second}, "ScheduledJobFirstExecution"},
		{Config{FirstNodeReassignmentExecution: -time.Second}, "FirstNodeReassignmentExecution"},
		{Config{StatementTimeout: -time.Second}, "StatementTimeout"},
		{Config{Wakers: []Waker{nil}}, "Wakers[0]"},
		{Config{Schema: schema.Config{Schema: "bad name"}}, "Schema"},
	} {
		err := tc.c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want ErrInvalidConfig naming %s", tc.c, err, tc.want)
		}
	}
	// Negative polling times turn jobs off and are valid.
	if err := (Config{ScheduledJobPollingTime: -1, NodeReassignmentPollingTime: -1, MetricsSamplingInterval: -1}).Validate(); err != nil {
		t.Fatal(err)
	}
	if got := jasperid.DeterministicHashCode("watermill-jasper-handled-cleanup"); got != HandledCleanupLockID {
		t.Errorf("HandledCleanupLockID = %d, the hash of its name is %d", HandledCleanupLockID, got)
	}
	for _, id := range []int32{jasperid.ScheduledJobLockID, jasperid.IncomingMessageLockID, jasperid.OutgoingMessageLockID, jasperid.ReassignmentLockID} {
		if id == HandledCleanupLockID {
			t.Errorf("HandledCleanupLockID collides with Jasper's lock id %d", id)
		}
	}
	db := testDB(t)
	if _, err := NewAgent(db, nil, Config{}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("nil node: %v", err)
	}
	if _, err := NewAgent(nil, &Node{}, Config{}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("nil db: %v", err)
	}
	if _, err := NewAgent(db, &Node{}, Config{Schema: schema.Config{Dialect: schema.SQLServer}}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("dialect mismatch: %v", err)
	}
}

// Rows of an owner whose lock nobody holds are handed back; rows of an owner whose lock
// another session holds (a live .NET node) and this node's rows are not touched.
func TestReassignDormantNodes(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	dead, live := deadNodeID(), deadNodeID()
	holdLock(t, e.db, live)
	var deadNeg int32 = -1 - (deadNodeID() & 0x3fffffff) // a negative id: sign-extended keys
	e.outgoing(250, "orders", dead, nil)
	e.incoming(130, "invoices", schema.StatusIncoming, dead, nil)
	e.incoming(3, "payments", schema.StatusIncoming, dead, nil)
	e.outgoing(7, "orders", deadNeg, nil)
	e.outgoing(5, "orders", live, nil)
	e.incoming(4, "invoices", schema.StatusIncoming, live, nil)
	e.outgoing(6, "orders", e.node.ID(), nil)
	e.incoming(2, "invoices", schema.StatusIncoming, e.node.ID(), nil)
	e.outgoing(9, "orders", 0, nil)

	w := &countingWaker{}
	a := e.agent(Config{RecoveryBatchSize: 100, Wakers: []Waker{w}})

	// Another agent (Go or .NET) running the reassignment: skipped, nothing touched.
	holder := holdLock(t, e.db, jasperid.ReassignmentLockID)
	res, err := a.ReassignDormantNodes(context.Background())
	if err != nil || !res.Skipped || len(res.Dormant) != 0 {
		t.Fatalf("with the reassignment lock held elsewhere: %+v, %v", res, err)
	}
	if in, out := e.owned(dead); in != 133 || out != 250 {
		t.Fatalf("dormant rows touched while the lock was held elsewhere: %d/%d", in, out)
	}
	release(t, holder, jasperid.ReassignmentLockID)

	res = untilDone(t, func() (ReassignResult, bool, error) {
		r, err := a.ReassignDormantNodes(context.Background())
		return r, r.Skipped, err
	})
	got := map[int32]Reassigned{}
	for _, r := range res.Dormant {
		got[r.Owner] = r
	}
	if r := got[dead]; r.Incoming != 133 || r.Outgoing != 250 {
		t.Errorf("dead node %d: %+v, want 133 incoming and 250 outgoing", dead, r)
	}
	if r := got[deadNeg]; r.Outgoing != 7 {
		t.Errorf("dead node %d (negative id): %+v", deadNeg, r)
	}
	if len(res.Alive) != 1 || res.Alive[0] != live {
		t.Errorf("alive owners %v, want [%d]", res.Alive, live)
	}
	if in, out := e.owned(dead); in+out != 0 {
		t.Errorf("dead node still owns %d/%d", in, out)
	}
	if in, out := e.owned(live); in != 4 || out != 5 {
		t.Errorf("live node's rows touched: %d/%d", in, out)
	}
	if in, out := e.owned(e.node.ID()); in != 2 || out != 6 {
		t.Errorf("own rows touched: %d/%d", in, out)
	}
	if in, out := e.owned(0); in != 133 || out != 9+250+7 {
		t.Errorf("unowned rows: %d/%d", in, out)
	}
	if w.n.Load() == 0 {
		t.Error("Wakers not woken")
	}
	if s := a.Stats(); s.Recovered != 133+250+7 || s.DormantNodes != 2 {
		t.Errorf("stats: %+v", s)
	}
	// A second pass finds only the live owner.
	res = untilDone(t, func() (ReassignResult, bool, error) {
		r, err := a.ReassignDormantNodes(context.Background())
		return r, r.Skipped, err
	})
	if len(res.Dormant) != 0 || len(res.Alive) != 1 {
		t.Fatalf("second pass: %+v", res)
	}
}

// Handing back notifies the forwarders and the subscribers of the topics concerned.
func TestReassignNotifies(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	dead := deadNodeID()
	e.outgoing(1, "orders", dead, nil)
	e.incoming(1, "invoices", schema.StatusIncoming, dead, nil)
	ctx, cancel := context.WithTimeout(context.Background(), agentTimeout)
	defer cancel()
	conn, err := e.db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(true)
	for _, q := range []string{e.dialect.ListenOutgoing(), e.dialect.ListenIncoming()} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	a := e.agent(Config{})
	untilDone(t, func() (ReassignResult, bool, error) {
		r, err := a.ReassignDormantNodes(ctx)
		return r, r.Skipped, err
	})
	got := map[string]string{}
	for len(got) < 2 {
		ch, payload, err := conn.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("notifications %v: %v", got, err)
		}
		got[ch] = payload
	}
	if p, ok := got[e.dialect.IncomingChannel()]; !ok || p != "invoices" {
		t.Errorf("incoming notification: %v", got)
	}
	if _, ok := got[e.dialect.OutgoingChannel()]; !ok {
		t.Errorf("outgoing notification: %v", got)
	}
}

func TestRunScheduledJobs(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	past, future := time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	e.incoming(12, "invoices", schema.StatusScheduled, 0, &past)
	e.incoming(2, "invoices", schema.StatusScheduled, 0, &future)
	e.incoming(3, "invoices", schema.StatusIncoming, 0, nil)

	// Scheduled sends: two readable (one due later), one whose body is not an envelope.
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"a":1}`))
	msg.Metadata.Set("k", "v")
	due, err := row.WrapScheduled("rabbitmq://queue/orders", msg, row.Defaults{}, past, past.Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	later, err := row.WrapScheduled("rabbitmq://queue/orders", message.NewMessage(watermill.NewUUID(), nil), row.Defaults{}, future, past)
	if err != nil {
		t.Fatal(err)
	}
	bad := due
	bad.ID, bad.Body, bad.Headers, bad.MessageUUID = uuid.New(), []byte("not an envelope"), nil, ""
	for _, r := range []row.Envelope{due, later, bad} {
		e.exec(e.dialect.InsertIncoming(1), r.IncomingArgs(nil, e.dialect.UUIDs())...)
	}

	w := &countingWaker{}
	a := e.agent(Config{RecoveryBatchSize: 5, Wakers: []Waker{w}})

	holder := holdLock(t, e.db, jasperid.ScheduledJobLockID)
	res, err := a.RunScheduledJobs(context.Background())
	if err != nil || !res.Skipped || res.Released != 0 {
		t.Fatalf("with the scheduled-jobs lock held elsewhere: %+v, %v", res, err)
	}
	release(t, holder, jasperid.ScheduledJobLockID)

	res = untilDone(t, func() (ScheduledResult, bool, error) {
		r, err := a.RunScheduledJobs(context.Background())
		return r, r.Skipped, err
	})
	if res.Released != 12 || res.Sent != 1 || res.DeadLettered != 1 || res.Skipped {
		t.Fatalf("result %+v, want 12 released, 1 sent, 1 dead-lettered", res)
	}
	if res.NextDue < 50*time.Minute || res.NextDue > time.Hour {
		t.Errorf("NextDue %s, want about an hour", res.NextDue)
	}
	if n := e.count(schema.IncomingTable, "status = 'Incoming' AND owner_id = 0"); n != 15 {
		t.Errorf("%d Incoming rows, want 15", n)
	}
	if n := e.count(schema.IncomingTable, "status = 'Scheduled'"); n != 3 {
		t.Errorf("%d Scheduled rows left, want 3 (not due)", n)
	}
	// The scheduled send became the outgoing envelope of the original message.
	var dest, uuidCol, headers string
	var owner int32
	err = database.QueryRow(context.Background(), e.db, `SELECT destination, message_uuid, headers, owner_id FROM `+e.table(schema.OutgoingTable), nil,
		&dest, &uuidCol, &headers, &owner)
	if err != nil {
		t.Fatal(err)
	}
	if dest != "rabbitmq://queue/orders" || uuidCol != msg.UUID || owner != 0 || !strings.Contains(headers, `"k":"v"`) {
		t.Errorf("outgoing envelope: %s %s %s %d", dest, uuidCol, headers, owner)
	}
	var explanation, received string
	err = database.QueryRow(context.Background(), e.db, `SELECT explanation, received_at FROM `+e.table(schema.DeadLetterTable)+` WHERE id = $1`,
		[]any{bad.ID.String()}, &explanation, &received)
	if err != nil {
		t.Fatalf("dead letter of the unreadable scheduled send: %v", err)
	}
	if !strings.Contains(explanation, "scheduled send cannot be read") || received != row.DurableLocalURI {
		t.Errorf("dead letter: %q %q", explanation, received)
	}
	if n := e.count(schema.IncomingTable, "id = $1", bad.ID.String()); n != 0 {
		t.Error("the unreadable scheduled send is still scheduled (would be retried forever)")
	}
	if w.n.Load() == 0 {
		t.Error("Wakers not woken")
	}
	// Nothing due any more.
	res = untilDone(t, func() (ScheduledResult, bool, error) {
		r, err := a.RunScheduledJobs(context.Background())
		return r, r.Skipped, err
	})
	if res.Released+res.Sent+res.DeadLettered != 0 {
		t.Fatalf("second pass: %+v", res)
	}
}

func TestDeleteExpiredEnvelopes(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	past, future := time.Now().Add(-time.Second), time.Now().Add(time.Hour)
	e.outgoing(23, "orders", 0, &past)
	e.outgoing(2, "orders", e.node.ID(), &past) // held by a live node: its forwarder decides
	e.outgoing(3, "orders", 0, &future)
	e.outgoing(4, "orders", 0, nil)
	a := e.agent(Config{RecoveryBatchSize: 10})
	var total int64
	untilDone(t, func() (int64, bool, error) {
		n, err := a.DeleteExpiredEnvelopes(context.Background())
		total += n
		return total, total < 23, err
	})
	if left := e.count(schema.OutgoingTable, ""); left != 9 {
		t.Errorf("%d envelopes left, want 9", left)
	}
	if s := a.Stats(); s.Discarded != 23 {
		t.Errorf("stats: %+v", s)
	}
}

func TestDeleteExpiredHandled(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	e.incoming(25, "t", schema.StatusHandled, 0, nil)
	e.incoming(3, "t", schema.StatusHandled, 0, nil)
	e.incoming(2, "t", schema.StatusIncoming, 0, nil)
	e.exec(`UPDATE ` + e.table(schema.IncomingTable) + ` SET keep_until = now() - interval '1 second' WHERE id IN (
	  SELECT id FROM ` + e.table(schema.IncomingTable) + ` WHERE status = 'Handled' LIMIT 25)`)
	e.exec(`UPDATE ` + e.table(schema.IncomingTable) + ` SET keep_until = now() + interval '1 hour' WHERE status = 'Handled' AND keep_until IS NULL`)
	a := e.agent(Config{HandledCleanupBatchSize: 10})
	holder := holdLock(t, e.db, HandledCleanupLockID)
	if n, err := a.DeleteExpiredHandled(context.Background()); err != nil || n != 0 {
		t.Fatalf("with the cleanup lock held elsewhere: %d, %v", n, err)
	}
	release(t, holder, HandledCleanupLockID)
	var total int64
	untilDone(t, func() (int64, bool, error) {
		n, err := a.DeleteExpiredHandled(context.Background())
		total += n
		return total, total < 25, err
	})
	if left := e.count(schema.IncomingTable, ""); left != 5 {
		t.Errorf("%d rows left, want 5", left)
	}
}

func TestSampleGaugesAndRecoverUnowned(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	dead, live := deadNodeID(), deadNodeID()
	holdLock(t, e.db, live)
	later := time.Now().Add(time.Hour)
	e.incoming(4, "invoices", schema.StatusIncoming, 0, nil)
	e.incoming(1, "payments", schema.StatusIncoming, dead, nil)
	e.incoming(1, "refunds", schema.StatusIncoming, live, nil)
	e.incoming(2, "invoices", schema.StatusScheduled, 0, &later)
	e.incoming(3, "invoices", schema.StatusHandled, 0, nil)
	e.outgoing(5, "orders", dead, nil)
	e.outgoing(2, "orders", live, nil)
	e.outgoing(1, "orders", e.node.ID(), nil)
	e.exec(`UPDATE `+e.table(schema.OutgoingTable)+` SET "timestamp" = now() - interval '90 seconds' WHERE owner_id = $1`, dead)
	e.exec(`INSERT INTO ` + e.table(schema.DeadLetterTable) + ` (id, body, message_type) VALUES (gen_random_uuid(), '', 't')`)
	a := e.agent(Config{})
	if _, ok := a.Gauges(); ok {
		t.Fatal("gauges before the first sample")
	}
	g, err := a.SampleGauges(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if g.Incoming != 6 || g.Scheduled != 2 || g.Handled != 3 || g.Outgoing != 8 || g.DeadLetters != 1 || g.DormantOwned != 6 {
		t.Errorf("gauges %+v", g)
	}
	if g.OldestOutgoingAge < 89*time.Second || g.OldestOutgoingAge > 5*time.Minute {
		t.Errorf("oldest outgoing age %s, want about 90s", g.OldestOutgoingAge)
	}
	if got, ok := a.Gauges(); !ok || got != g {
		t.Errorf("Gauges() = %+v, %v", got, ok)
	}

	w := &countingWaker{}
	a.AddWaker(w)
	u, err := a.RecoverUnowned(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u.Outgoing || fmt.Sprint(u.Topics) != "[invoices]" || w.n.Load() != 1 {
		t.Errorf("unowned %+v, woken %d", u, w.n.Load())
	}
}

// Run: the reassignment runs at once, the gauges are sampled, and stopping hands the node's
// envelopes back.
func TestAgentRunAndStop(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	dead := deadNodeID()
	e.outgoing(3, "orders", dead, nil)
	e.outgoing(2, "orders", e.node.ID(), nil)
	e.incoming(1, "invoices", schema.StatusIncoming, e.node.ID(), nil)
	w := &countingWaker{}
	a := e.agent(Config{Wakers: []Waker{w}, ScheduledJobPollingTime: time.Hour, NodeReassignmentPollingTime: 50 * time.Millisecond})
	jobs := make(chan string, 100)
	SetJobHook(a, func(job string, err error) {
		if err != nil {
			t.Errorf("job %s: %v", job, err)
		}
		select {
		case jobs <- job:
		default:
		}
	})
	errc := make(chan error, 1)
	go func() { errc <- a.Run(context.Background()) }()
	seen := map[string]bool{}
	timeout := time.After(agentTimeout)
	// The reassignment runs at once, and again every 50ms (a pass may be skipped while an
	// agent of another test holds the database-wide lock).
	for !seen[JobGauges] || !seen[JobScheduled] || a.Stats().Recovered != 3 {
		select {
		case j := <-jobs:
			seen[j] = true
		case <-timeout:
			t.Fatalf("jobs run: %v, stats %+v", seen, a.Stats())
		}
	}
	if in, out := e.owned(dead); in+out != 0 {
		t.Errorf("dormant rows not handed back: %d/%d", in, out)
	}
	if err := a.Run(context.Background()); !errors.Is(err, ErrAgentRunning) {
		t.Errorf("second Run: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if in, out := e.owned(e.node.ID()); in+out != 0 {
		t.Errorf("own rows not handed back when stopping: %d/%d", in, out)
	}
	if s := a.Stats(); s.HandedBack != 3 || s.Recovered != 3 {
		t.Errorf("stats %+v", s)
	}
	if err := a.Run(context.Background()); !errors.Is(err, ErrAgentClosed) {
		t.Errorf("Run after Close: %v", err)
	}
	_ = a.Close()
}

// When the node's connection is lost, the node check takes the lock again and hands back
// the envelopes marked with the node's id (a claim whose answer was lost would otherwise
// stay owned by a live node forever).
func TestAgentRelockHandsBack(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	a := e.agent(Config{NodeCheckInterval: 50 * time.Millisecond, ScheduledJobPollingTime: -1,
		NodeReassignmentPollingTime: -1, MetricsSamplingInterval: -1, ExpiredEnvelopesPollingTime: -1, HandledCleanupPollingTime: -1})
	checks := make(chan error, 100)
	SetJobHook(a, func(job string, err error) {
		if job == JobNodeCheck {
			checks <- err
		}
	})
	errc := make(chan error, 1)
	go func() { errc <- a.Run(context.Background()) }()
	defer func() {
		_ = a.Close()
		<-errc
	}()
	if err := <-checks; err != nil {
		t.Fatal(err)
	}
	e.outgoing(4, "orders", e.node.ID(), nil)
	pid := lockHolder(t, e.db, e.node.ID())
	if _, err := e.db.Exec(context.Background(), `SELECT pg_terminate_backend($1, 5000)`, pid); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(agentTimeout)
	for e.node.Relocks() == 0 {
		select {
		case <-checks:
		case <-timeout:
			t.Fatal("the node lock was not taken again")
		}
	}
	// The check that took the lock again also handed the envelopes back.
	for a.Stats().HandedBack != 4 {
		select {
		case <-checks:
		case <-timeout:
			t.Fatalf("handed back %d of 4", a.Stats().HandedBack)
		}
	}
	if in, out := e.owned(e.node.ID()); in+out != 0 {
		t.Errorf("still owned: %d/%d", in, out)
	}
	if now := lockHolder(t, e.db, e.node.ID()); now == 0 || now == pid {
		t.Errorf("lock holder %d (killed %d)", now, pid)
	}
}

// database/sql handles read the same results (JSON topics, NULL floats).
func TestAgentWithDatabaseSQL(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	std, err := database.FromStdSQL(testdb.StdDB(t))
	if err != nil {
		t.Fatal(err)
	}
	dead := deadNodeID()
	e.incoming(2, "invoices", schema.StatusIncoming, dead, nil)
	past := time.Now().Add(-time.Second)
	e.incoming(1, "invoices", schema.StatusScheduled, 0, &past)
	a, err := NewAgent(std, e.node, Config{Schema: e.schema}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if res := untilDone(t, func() (ReassignResult, bool, error) {
		r, err := a.ReassignDormantNodes(ctx)
		return r, r.Skipped, err
	}); len(res.Dormant) != 1 {
		t.Fatalf("reassign: %+v", res)
	}
	if res := untilDone(t, func() (ScheduledResult, bool, error) {
		r, err := a.RunScheduledJobs(ctx)
		return r, r.Skipped, err
	}); res.Released != 1 || res.NextDue != 0 {
		t.Fatalf("scheduled: %+v", res)
	}
	if u, err := a.RecoverUnowned(ctx); err != nil || len(u.Topics) != 1 {
		t.Fatalf("recover: %+v, %v", u, err)
	}
	if g, err := a.SampleGauges(ctx); err != nil || g.Incoming != 3 || g.OldestOutgoingAge != 0 {
		t.Fatalf("gauges: %+v, %v", g, err)
	}
	if _, err := a.DeleteExpiredEnvelopes(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DeleteExpiredHandled(ctx); err != nil {
		t.Fatal(err)
	}
}

// After its connection was lost, a node whose id another session took meanwhile is told so
// by Check (ErrNodeIDInUse) instead of sharing the id.
func TestNodeCheckIDTakenWhileDisconnected(t *testing.T) {
	t.Parallel()
	db := testDB(t)
	n, err := NewNode(context.Background(), db, NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	pid := lockHolder(t, db, n.ID())
	if _, err := db.Exec(context.Background(), `SELECT pg_terminate_backend($1, 5000)`, pid); err != nil {
		t.Fatal(err)
	}
	holdLock(t, db, n.ID()) // another process starts with the same id
	if err := n.Check(context.Background()); !errors.Is(err, ErrNodeIDInUse) {
		t.Fatalf("Check = %v, want ErrNodeIDInUse", err)
	}
	if n.Relocks() != 0 {
		t.Errorf("Relocks = %d, want 0", n.Relocks())
	}
}

// A pass that finds its lock held by another session (maybe an agent of another schema:
// Jasper's lock ids are database-wide) runs again soon, not a whole period later.
func TestAgentRetriesSkippedPassSoon(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	dead := deadNodeID()
	e.outgoing(2, "orders", dead, nil)
	holder := holdLock(t, e.db, jasperid.ReassignmentLockID)
	a := e.agent(Config{NodeReassignmentPollingTime: time.Hour, ScheduledJobPollingTime: -1, MetricsSamplingInterval: -1})
	passes := make(chan struct{}, 100)
	SetJobHook(a, func(job string, err error) {
		if job == JobReassignment {
			passes <- struct{}{}
		}
	})
	errc := make(chan error, 1)
	go func() { errc <- a.Run(context.Background()) }()
	defer func() {
		_ = a.Close()
		<-errc
	}()
	<-passes // the first pass, at start, is skipped: the lock is held
	if in, out := e.owned(dead); in+out != 2 {
		t.Fatalf("rows handed back while the lock was held: %d/%d", in, out)
	}
	release(t, holder, jasperid.ReassignmentLockID)
	timeout := time.After(agentTimeout)
	for a.Stats().Recovered != 2 {
		select {
		case <-passes:
		case <-timeout:
			t.Fatal("the skipped pass was not run again")
		}
	}
}
