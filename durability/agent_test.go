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
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// agentTimeout bounds every wait of these tests.
const agentTimeout = 30 * time.Second

// agentEnv is a migrated schema, its store (to write and count rows) and a node.
type agentEnv struct {
	t      *testing.T
	db     database.Driver
	schema schema.Config
	st     store.Store
	node   *Node
}

func newAgentEnv(t *testing.T) *agentEnv {
	t.Helper()
	db, cfg := testdb.Migrated(t)
	return envOn(t, db, cfg)
}

// envOn builds the env of a migrated schema of db, with a node of db closed when the test
// ends.
func envOn(t *testing.T, db database.Driver, cfg schema.Config) *agentEnv {
	t.Helper()
	st, err := db.Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := NewNode(context.Background(), db, NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return &agentEnv{t: t, db: db, schema: st.Schema(), st: st, node: n}
}

// agent returns an agent of the env's node for its schema (not started).
func (e *agentEnv) agent(c Config) *Agent {
	e.t.Helper()
	c.Schema = e.schema
	a, err := NewAgent(e.node, c, watermill.NopLogger{})
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

// start starts a and stops it when the test ends (before the node closes).
func (e *agentEnv) start(a *Agent) {
	e.t.Helper()
	if err := a.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if err := a.Stop(context.Background()); err != nil {
			e.t.Errorf("Stop: %v", err)
		}
	})
}

// startStopHandsBack gives the env's node envelopes, starts and stops a, and checks that
// Stop handed them back.
func (e *agentEnv) startStopHandsBack(a *Agent) {
	e.t.Helper()
	e.outgoing(2, "orders", e.node.ID(), nil)
	e.incoming(1, "invoices", schema.StatusIncoming, e.node.ID(), nil)
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	if err := a.CheckRunning("test"); err != nil {
		e.t.Fatal(err)
	}
	if err := a.Stop(ctx); err != nil {
		e.t.Fatal(err)
	}
	if in, out := e.owned(e.node.ID()); in+out != 0 {
		e.t.Fatalf("own envelopes not handed back when stopping: %d/%d", in, out)
	}
}

// quietConfig turns off every job but those the test sets, and makes the node check rare.
func quietConfig() Config {
	return Config{
		ScheduledJobPollingTime: -1, NodeReassignmentPollingTime: -1, ExpiredEnvelopesPollingTime: -1,
		HandledCleanupPollingTime: -1, MetricsSamplingInterval: -1, NodeCheckInterval: time.Hour,
	}
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

// count counts the rows of a table (PostgreSQL: where uses $n parameters).
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

// insert writes envelopes through the store, with the notifications of p.
func (e *agentEnv) insert(p store.InsertParams) {
	e.t.Helper()
	if err := e.st.InsertEnvelopes(context.Background(), p); err != nil {
		e.t.Fatal(err)
	}
}

// envelopes maps n new messages to rows of topic (or destination) and lets set fill the
// columns the caller decides.
func envelopes(t *testing.T, n int, topic string, set func(*row.Envelope)) []row.Envelope {
	t.Helper()
	out := make([]row.Envelope, n)
	for i := range out {
		r, err := row.FromMessage(topic, message.NewMessage(watermill.NewUUID(), []byte("x")), row.Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		set(&r)
		out[i] = r
	}
	return out
}

func ids(envs []row.Envelope) []uuid.UUID {
	out := make([]uuid.UUID, len(envs))
	for i, e := range envs {
		out[i] = e.ID
	}
	return out
}

// outgoing inserts n outgoing envelopes for destination owned by owner.
func (e *agentEnv) outgoing(n int, destination string, owner int32, deliverBy *time.Time) []uuid.UUID {
	e.t.Helper()
	envs := envelopes(e.t, n, destination, func(r *row.Envelope) { r.OwnerID, r.DeliverBy = owner, deliverBy })
	e.insert(store.InsertParams{Outgoing: envs})
	return ids(envs)
}

// incoming inserts n incoming envelopes of topic with a status, owner and execution time.
func (e *agentEnv) incoming(n int, topic, status string, owner int32, exec *time.Time) []uuid.UUID {
	e.t.Helper()
	envs := envelopes(e.t, n, topic, func(r *row.Envelope) { r.Status, r.OwnerID, r.ExecutionTime = status, owner, exec })
	e.insert(store.InsertParams{Incoming: envs})
	return ids(envs)
}

// owned counts the incoming and outgoing envelopes of owner (on every database).
func (e *agentEnv) owned(owner int32) (in, out int64) {
	e.t.Helper()
	c, err := e.st.Counts(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return c.IncomingByOwner[owner], c.OutgoingByOwner[owner]
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

// reassign runs reassignment passes until one is not skipped and returns what they did
// together: a pass stops where another agent took the lock (between two batches), and the
// next one goes on from there.
func reassign(t *testing.T, a *Agent) ReassignResult {
	t.Helper()
	var done []Reassigned
	res := untilDone(t, func() (ReassignResult, bool, error) {
		r, err := a.ReassignDormantNodes(context.Background())
		done = append(done, r.Dormant...)
		return r, r.Skipped, err
	})
	res.Dormant = nil
	at := map[int32]int{}
	for _, r := range done {
		i, ok := at[r.Owner]
		if !ok {
			at[r.Owner] = len(res.Dormant)
			res.Dormant = append(res.Dormant, r)
			continue
		}
		res.Dormant[i].Incoming += r.Incoming
		res.Dormant[i].Outgoing += r.Outgoing
	}
	return res
}

// runScheduled runs scheduled-jobs passes until one is not skipped and returns what they
// did together (a pass stops where another agent took the lock, between two batches).
func runScheduled(t *testing.T, a *Agent) ScheduledResult {
	t.Helper()
	var total ScheduledResult
	res := untilDone(t, func() (ScheduledResult, bool, error) {
		r, err := a.RunScheduledJobs(context.Background())
		total.Released += r.Released
		total.Sent += r.Sent
		total.DeadLettered += r.DeadLettered
		return r, r.Skipped, err
	})
	res.Released, res.Sent, res.DeadLettered = total.Released, total.Sent, total.DeadLettered
	return res
}

// wakeCount is a wake function's record: it counts the calls and signals each on c without
// blocking, as a wake function must.
type wakeCount struct {
	n atomic.Int64
	c chan struct{}
}

func newWakeCount() *wakeCount { return &wakeCount{c: make(chan struct{}, 1)} }

func (w *wakeCount) wake() {
	w.n.Add(1)
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// wait waits for a wake-up (one since the last wait, or a new one).
func (w *wakeCount) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-w.c:
	case <-time.After(agentTimeout):
		t.Fatalf("%s not woken", what)
	}
}

// jobs records the runs of job only ("": every job) of a on a channel, without blocking;
// a failed run fails the test. Call it before Start.
func jobs(t *testing.T, a *Agent, only string) <-chan string {
	return jobsTolerating(t, a, only, func(error) bool { return false })
}

// jobsTolerating is jobs where a failed run whose error tolerated accepts does not fail the
// test.
func jobsTolerating(t *testing.T, a *Agent, only string, tolerated func(error) bool) <-chan string {
	ch := make(chan string, 100)
	SetJobHook(a, func(job string, err error) {
		if err != nil && !tolerated(err) {
			t.Errorf("job %s: %v", job, err)
		}
		if only != "" && job != only {
			return
		}
		select {
		case ch <- job:
		default:
		}
	})
	return ch
}

// waitFor reads job runs until cond holds.
func waitFor(t *testing.T, runs <-chan string, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(agentTimeout)
	for !cond() {
		select {
		case <-runs:
		case <-timeout:
			t.Fatal(what)
		}
	}
}

func TestAgentConfig(t *testing.T) {
	t.Parallel()
	var c Config
	c.setDefaults()
	if c.ScheduledJobPollingTime != 5*time.Second || c.NodeReassignmentPollingTime != time.Minute ||
		c.RecoveryBatchSize != DefaultRecoveryBatchSize || c.HandledCleanupBatchSize != 1000 ||
		c.MetricsSamplingInterval != 5*time.Second || c.ScheduledJobFirstExecution != 0 || c.FirstNodeReassignmentExecution != 0 ||
		c.NodeCheckInterval != DefaultNodeCheckInterval || c.StatementTimeout != DefaultStatementTimeout {
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
	if _, err := NewAgent(nil, Config{}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("nil node: %v", err)
	}
	if _, err := NewAgent(&Node{}, Config{}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("a Node not made by NewNode: %v", err)
	}
	if _, err := NewNode(context.Background(), nil, NodeConfig{}, nil); err == nil {
		t.Fatal("NewNode without a database")
	}
	n, err := NewNode(context.Background(), testDB(t), NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := NewAgent(n, Config{Schema: schema.Config{Dialect: schema.SQLServer}}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("dialect mismatch: %v", err)
	}
	if _, err := NewAgent(n, Config{RecoveryBatchSize: -1}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("invalid config: %v", err)
	}
	// The zero config is the public schema of the node's database.
	a, err := NewAgent(n, Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := a.Schema(); s.Schema != "public" || s.Dialect != schema.Postgres {
		t.Errorf("default schema %+v", s)
	}
	if a.NodeID() != n.ID() || a.Node() != n || a.Driver() == nil || a.Store() == nil || a.Logger() == nil {
		t.Error("accessors do not return the agent's node, database, store and logger")
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

	a := e.agent(Config{RecoveryBatchSize: 100})
	out, invoices, payments, other := newWakeCount(), newWakeCount(), newWakeCount(), newWakeCount()
	a.OnOutgoing(out.wake)
	a.OnIncoming("invoices", invoices.wake)
	a.OnIncoming("payments", payments.wake)
	a.OnIncoming("other", other.wake)

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

	res = reassign(t, a)
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
	if out.n.Load() == 0 || invoices.n.Load() == 0 || payments.n.Load() == 0 {
		t.Errorf("woken: outgoing %d, invoices %d, payments %d; want each at least once", out.n.Load(), invoices.n.Load(), payments.n.Load())
	}
	if other.n.Load() != 0 {
		t.Errorf("a topic with nothing handed back was woken %d times", other.n.Load())
	}
	if len(got) != 2 {
		t.Errorf("dormant owners %v, want %d and %d", res.Dormant, dead, deadNeg)
	}
	// A pass cut short by another agent taking the lock counts a node again in the next one.
	if s := a.Stats(); s.Recovered != 133+250+7 || s.DormantNodes < 2 || s.Wakeups == 0 {
		t.Errorf("stats: %+v", s)
	}
	// A second pass finds only the live owner.
	res = reassign(t, a)
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
	ch := e.st.Channels()
	if err := e.st.Listen(ctx, conn, ch.Outgoing, ch.Incoming); err != nil {
		t.Fatal(err)
	}
	a := e.agent(Config{})
	reassign(t, a)
	got := map[string]string{}
	for len(got) < 2 {
		channel, payload, err := conn.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("notifications %v: %v", got, err)
		}
		got[channel] = payload
	}
	if p, ok := got[ch.Incoming]; !ok || p != "invoices" {
		t.Errorf("incoming notification: %v", got)
	}
	if _, ok := got[ch.Outgoing]; !ok {
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
	e.insert(store.InsertParams{Incoming: []row.Envelope{due, later, bad}})

	a := e.agent(Config{RecoveryBatchSize: 5})
	out, invoices := newWakeCount(), newWakeCount()
	a.OnOutgoing(out.wake)
	a.OnIncoming("invoices", invoices.wake)

	holder := holdLock(t, e.db, jasperid.ScheduledJobLockID)
	res, err := a.RunScheduledJobs(context.Background())
	if err != nil || !res.Skipped || res.Released != 0 {
		t.Fatalf("with the scheduled-jobs lock held elsewhere: %+v, %v", res, err)
	}
	if out.n.Load()+invoices.n.Load() != 0 {
		t.Error("woken by a skipped pass")
	}
	release(t, holder, jasperid.ScheduledJobLockID)

	res = runScheduled(t, a)
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
	if out.n.Load() == 0 || invoices.n.Load() == 0 {
		t.Errorf("woken: outgoing %d, invoices %d; want both", out.n.Load(), invoices.n.Load())
	}
	if s := a.Stats(); s.ScheduledReleased != 12 || s.ScheduledSent != 1 || s.DeadLettered != 1 {
		t.Errorf("stats %+v", s)
	}
	// Nothing due any more.
	res = runScheduled(t, a)
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
	if left := e.count(schema.IncomingTable, "status = 'Handled'"); left != 3 {
		t.Errorf("%d Handled rows left, want the 3 kept for an hour", left)
	}
	if s := a.Stats(); s.HandledDeleted != 25 {
		t.Errorf("stats: %+v", s)
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

	out, invoices, payments := newWakeCount(), newWakeCount(), newWakeCount()
	a.OnOutgoing(out.wake)
	a.OnIncoming("invoices", invoices.wake)
	a.OnIncoming("payments", payments.wake)
	u, err := a.RecoverUnowned(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u.Outgoing || fmt.Sprint(u.Topics) != "[invoices]" {
		t.Errorf("unowned %+v", u)
	}
	if invoices.n.Load() != 1 || payments.n.Load() != 0 || out.n.Load() != 0 {
		t.Errorf("woken: invoices %d (want 1), payments %d, outgoing %d (want 0)", invoices.n.Load(), payments.n.Load(), out.n.Load())
	}
}

// Start: the reassignment runs at once, the gauges are sampled, and Stop hands the node's
// envelopes back.
func TestAgentStartAndStop(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	dead := deadNodeID()
	e.outgoing(3, "orders", dead, nil)
	e.outgoing(2, "orders", e.node.ID(), nil)
	e.incoming(1, "invoices", schema.StatusIncoming, e.node.ID(), nil)
	a := e.agent(Config{ScheduledJobPollingTime: time.Hour, NodeReassignmentPollingTime: 50 * time.Millisecond})
	if err := a.CheckRunning("forwarder"); !errors.Is(err, ErrAgentNotRunning) || !strings.Contains(err.Error(), "forwarder") {
		t.Errorf("CheckRunning before Start: %v", err)
	}
	runs := jobs(t, a, "")
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.Running() || a.CheckRunning("forwarder") != nil {
		t.Error("not running after Start")
	}
	seen := map[string]bool{}
	// The reassignment runs at once, and again every 50ms (a pass may be skipped while an
	// agent of another test holds the database-wide lock).
	timeout := time.After(agentTimeout)
	for !seen[JobGauges] || !seen[JobScheduled] || a.Stats().Recovered != 3 {
		select {
		case j := <-runs:
			seen[j] = true
		case <-timeout:
			t.Fatalf("jobs run: %v, stats %+v", seen, a.Stats())
		}
	}
	if in, out := e.owned(dead); in+out != 0 {
		t.Errorf("dormant rows not handed back: %d/%d", in, out)
	}
	if g, ok := a.Gauges(); !ok || g.Outgoing != 5 {
		t.Errorf("gauges %+v, %v", g, ok)
	}
	if err := a.Start(ctx); !errors.Is(err, ErrAgentRunning) {
		t.Errorf("second Start: %v", err)
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Running() || !errors.Is(a.CheckRunning("subscriber"), ErrAgentNotRunning) {
		t.Error("running after Stop")
	}
	if in, out := e.owned(e.node.ID()); in+out != 0 {
		t.Errorf("own rows not handed back when stopping: %d/%d", in, out)
	}
	if s := a.Stats(); s.HandedBack != 3 || s.Recovered != 3 {
		t.Errorf("stats %+v", s)
	}
	if err := a.Start(ctx); !errors.Is(err, ErrAgentStopped) {
		t.Errorf("Start after Stop: %v", err)
	}
	if err := a.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// An agent stopped before it started does nothing and cannot start any more.
func TestAgentStopBeforeStart(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	e.outgoing(1, "orders", e.node.ID(), nil)
	a := e.agent(Config{})
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); !errors.Is(err, ErrAgentStopped) {
		t.Errorf("Start after Stop: %v", err)
	}
	if in, out := e.owned(e.node.ID()); in+out != 1 {
		t.Errorf("an agent that never ran handed back rows: %d/%d left", in, out)
	}
}

// When the node's connection is lost, the node check takes the lock again and hands back
// the envelopes marked with the node's id (a claim whose answer was lost would otherwise
// stay owned by a live node forever). A reported unknown outcome hands them back too.
func TestAgentRelockHandsBack(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	c := quietConfig()
	c.NodeCheckInterval = 50 * time.Millisecond
	a := e.agent(c)
	// A check may run while the killed backend is still exiting, its lock still held: that
	// check fails with ErrNodeIDInUse and a later one takes the lock.
	checks := jobsTolerating(t, a, JobNodeCheck, func(err error) bool { return errors.Is(err, ErrNodeIDInUse) })
	e.start(a)
	<-checks
	e.outgoing(4, "orders", e.node.ID(), nil)
	pid := lockHolder(t, e.db, e.node.ID())
	if _, err := e.db.Exec(context.Background(), `SELECT pg_terminate_backend($1, 5000)`, pid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, checks, "the node lock was not taken again", func() bool { return e.node.Relocks() != 0 })
	// The check that took the lock again also handed the envelopes back.
	waitFor(t, checks, "the envelopes were not handed back", func() bool { return a.Stats().HandedBack == 4 })
	if in, out := e.owned(e.node.ID()); in+out != 0 {
		t.Errorf("still owned: %d/%d", in, out)
	}
	if now := lockHolder(t, e.db, e.node.ID()); now == 0 || now == pid {
		t.Errorf("lock holder %d (killed %d)", now, pid)
	}

	// A claim whose answer was lost: the next check hands the node's envelopes back.
	e.incoming(2, "invoices", schema.StatusIncoming, e.node.ID(), nil)
	a.ReportUnknownOutcome()
	waitFor(t, checks, "not handed back after an unknown outcome", func() bool { return a.Stats().HandedBack == 6 })
	if in, out := e.owned(e.node.ID()); in+out != 0 {
		t.Errorf("still owned after an unknown outcome: %d/%d", in, out)
	}
}

// database/sql handles read the same results (JSON topics, NULL floats).
func TestAgentWithDatabaseSQL(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	std := envOn(t, testdb.StdDriver(t), e.schema)
	dead := deadNodeID()
	e.incoming(2, "invoices", schema.StatusIncoming, dead, nil)
	past := time.Now().Add(-time.Second)
	e.incoming(1, "invoices", schema.StatusScheduled, 0, &past)
	a := std.agent(Config{})
	ctx := context.Background()
	if res := reassign(t, a); len(res.Dormant) != 1 {
		t.Fatalf("reassign: %+v", res)
	}
	if res := runScheduled(t, a); res.Released != 1 || res.NextDue != 0 {
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
	// Started, with the LISTEN connection of database/sql, and stopped.
	std.startStopHandsBack(a)
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
	c := quietConfig()
	c.NodeReassignmentPollingTime = time.Hour
	a := e.agent(c)
	passes := jobs(t, a, JobReassignment)
	e.start(a)
	<-passes // the first pass, at start, is skipped: the lock is held
	if in, out := e.owned(dead); in+out != 2 {
		t.Fatalf("rows handed back while the lock was held: %d/%d", in, out)
	}
	release(t, holder, jasperid.ReassignmentLockID)
	waitFor(t, passes, "the skipped pass was not run again", func() bool { return a.Stats().Recovered == 2 })
}
