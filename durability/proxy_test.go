package durability_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// The subscriber is woken by the agent (Agent.AddWaker).
var _ durability.Waker = (*subscriber.Subscriber)(nil)

// memorySink is an in-process "broker": it counts every copy of every message and signals
// when a number of distinct messages has arrived.
type memorySink struct {
	latency time.Duration

	mu      sync.Mutex
	copies  map[string]int
	waiters []sinkWaiter
}

type sinkWaiter struct {
	n  int
	ch chan struct{}
}

func (s *memorySink) Publish(_ string, msgs ...*message.Message) error {
	if s.latency > 0 {
		time.Sleep(s.latency) // a broker's round trip
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		s.copies[m.UUID]++
	}
	kept := s.waiters[:0]
	for _, w := range s.waiters {
		if len(s.copies) >= w.n {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	s.waiters = kept
	return nil
}

func (s *memorySink) Close() error { return nil }

// reached is closed once n distinct messages have arrived.
func (s *memorySink) reached(n int) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	if len(s.copies) >= n {
		close(ch)
		return ch
	}
	s.waiters = append(s.waiters, sinkWaiter{n: n, ch: ch})
	return ch
}

func (s *memorySink) stats() (distinct, duplicates int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.copies {
		duplicates += c - 1
	}
	return len(s.copies), duplicates
}

// lockHolderPID returns the backend holding the advisory lock of id, or 0.
func lockHolderPID(t *testing.T, db database.DB, id int32) int32 {
	t.Helper()
	var pid int32
	err := database.QueryRow(context.Background(), db, `SELECT COALESCE(max(pid), 0) FROM pg_locks WHERE locktype = 'advisory'
	  AND granted AND objsubid = 1 AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid`,
		[]any{int64(id)}, &pid)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// publishDirect commits messages to the outbox on the direct (not proxied) pool.
func publishDirect(t *testing.T, cfg schema.Config, msgs []*message.Message) {
	t.Helper()
	ctx := context.Background()
	tx, err := testdb.Pool(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	pub, err := publisher.NewPublisher(watermillsql.TxFromPgx(tx), publisher.Config{Schema: cfg}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	for len(msgs) > 0 {
		n := min(len(msgs), 500)
		if err := pub.Publish("orders", msgs[:n]...); err != nil {
			t.Fatal(err)
		}
		msgs = msgs[n:]
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func proxyMessages(prefix string, n int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(fmt.Sprintf("%s-%05d", prefix, i), []byte(`{}`))
	}
	return msgs
}

// The database connection of the node, its agent and its forwarder is cut for 10 seconds by
// a TCP proxy in the middle of a relay. Without a restart, the node lock is taken again on a
// new connection, the agent's jobs work again (a scheduled send that fell due during the
// cut is released) and every message is delivered; the envelopes the node held when its
// lock was lost are handed back, so none stays owned.
func TestConnectionCutRecovers(t *testing.T) {
	t.Parallel()
	const cut = 10 * time.Second
	direct, cfg := testdb.Migrated(t)

	db, proxy := proxiedDB(t, 8, 2*time.Second)

	node, err := durability.NewNode(context.Background(), db, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	agent, err := durability.NewAgent(db, node, durability.Config{
		Schema:                      cfg,
		ScheduledJobPollingTime:     200 * time.Millisecond,
		NodeReassignmentPollingTime: time.Second,
		NodeCheckInterval:           200 * time.Millisecond,
		MetricsSamplingInterval:     200 * time.Millisecond,
		StatementTimeout:            5 * time.Second,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	relocked := make(chan struct{})
	var once sync.Once
	durability.SetJobHook(agent, func(job string, err error) {
		if job == durability.JobNodeCheck && err == nil && node.Relocks() > 0 {
			once.Do(func() { close(relocked) })
		}
	})
	sink := &memorySink{latency: time.Millisecond, copies: map[string]int{}}
	fwd, err := forwarder.NewForwarder(db, forwarder.Config{
		Schema: cfg, Node: node, Publisher: sink, BatchSize: 100, PublishConcurrency: 4, PollInterval: 100 * time.Millisecond,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}

	before := proxyMessages("before", 2000)
	publishDirect(t, cfg, before)
	during := proxyMessages("during", 1000)
	// The scheduled send is written during the cut (on the direct connection) and falls due
	// during it, so only the agent's recovered connection can release it: written before
	// the cut, it could fall due while the agent's release statement was on the wire when
	// the proxy cut it, committed by the server with its answer lost (then delivered, but
	// not counted by the agent).
	scheduled := message.NewMessage("scheduled-during-cut", []byte(`{}`))
	delay.Message(scheduled, delay.For(2*time.Second))
	total := len(before) + 1 + len(during)

	var wg sync.WaitGroup
	wg.Go(func() { _ = agent.Run(context.Background()) })
	wg.Go(func() { _ = fwd.Run(context.Background()) })
	defer func() {
		_ = fwd.Close()
		_ = agent.Close()
		wg.Wait()
	}()

	select {
	case <-sink.reached(500):
	case <-time.After(crashTimeout):
		t.Fatal("the relay did not start")
	}
	oldPID := lockHolderPID(t, direct, node.ID())
	proxy.Cut()
	cutAt := time.Now()
	t.Logf("connection cut after %d messages", func() int { d, _ := sink.stats(); return d }())
	publishDirect(t, cfg, append(during, scheduled))
	// The node's session ends with its connection: its lock is free during the cut.
	for lockHolderPID(t, direct, node.ID()) != 0 {
		if time.Since(cutAt) > cut/2 {
			t.Fatal("the node lock is still held after its connection was cut")
		}
		time.Sleep(20 * time.Millisecond) // the backend's exit has no event to wait for
	}
	time.Sleep(cut - time.Since(cutAt)) // the outage itself
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	restoredAt := time.Now()

	select {
	case <-relocked:
		t.Logf("node lock taken again %s after the connection came back", time.Since(restoredAt))
	case <-time.After(crashTimeout):
		t.Fatal("the node lock was not taken again")
	}
	select {
	case <-sink.reached(total):
		t.Logf("all %d messages delivered %s after the connection came back", total, time.Since(restoredAt))
	case <-time.After(crashTimeout):
		d, _ := sink.stats()
		t.Fatalf("%d of %d messages delivered", d, total)
	}
	if pid := lockHolderPID(t, direct, node.ID()); pid == 0 || pid == oldPID {
		t.Errorf("lock holder after the cut: %d (before: %d)", pid, oldPID)
	}
	// Nothing stays in the outbox nor owned by the node (polled: no event says "idle").
	deadline := time.Now().Add(crashTimeout)
	for {
		var left, owned int64
		err := database.QueryRow(context.Background(), direct, `SELECT count(*), count(*) FILTER (WHERE owner_id <> 0) FROM `+
			cfg.Qualified(schema.OutgoingTable), nil, &left, &owned)
		if err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d envelopes left in the outbox (%d owned)", left, owned)
		}
		time.Sleep(50 * time.Millisecond)
	}
	distinct, dups := sink.stats()
	st := agent.Stats()
	t.Logf("%d distinct messages, %d duplicates; agent: %d envelopes handed back after the lock was lost, %d scheduled sends released, job errors during the cut %v",
		distinct, dups, st.HandedBack, st.ScheduledSent, st.JobErrors)
	if distinct != total {
		t.Errorf("%d distinct messages delivered, want %d", distinct, total)
	}
	if st.ScheduledSent != 1 {
		t.Errorf("scheduled sends released: %d, want 1", st.ScheduledSent)
	}
	if st.JobErrors[durability.JobNodeCheck] == 0 {
		t.Error("the node check never failed during the cut: was the connection cut?")
	}
	if g, ok := agent.Gauges(); !ok || time.Since(g.SampledAt) > 5*time.Second {
		t.Errorf("gauges not sampled again after the cut: %+v", g)
	}
}

// A pass that fails is tried again soon, not a whole period later: with the reassignment's
// period at one hour, a pass that failed while the connection was cut runs again, and
// succeeds, within seconds of the connection coming back.
func TestFailedPassRetriedBeforeItsPeriod(t *testing.T) {
	t.Parallel()
	_, cfg := testdb.Migrated(t)
	db, proxy := proxiedDB(t, 4, time.Second)
	node, err := durability.NewNode(context.Background(), db, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	agent, err := durability.NewAgent(db, node, durability.Config{
		Schema:                         cfg,
		FirstNodeReassignmentExecution: 0,
		NodeReassignmentPollingTime:    time.Hour,
		StatementTimeout:               time.Second,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	failed, succeeded := make(chan struct{}), make(chan struct{})
	var failOnce, okOnce sync.Once
	durability.SetJobHook(agent, func(job string, err error) {
		if job != durability.JobReassignment {
			return
		}
		if err != nil {
			failOnce.Do(func() { close(failed) })
			return
		}
		select {
		case <-failed:
			okOnce.Do(func() { close(succeeded) })
		default:
		}
	})
	proxy.Cut()
	var wg sync.WaitGroup
	wg.Go(func() { _ = agent.Run(context.Background()) })
	defer func() {
		_ = agent.Close()
		wg.Wait()
	}()
	select {
	case <-failed:
	case <-time.After(crashTimeout):
		t.Fatal("the reassignment pass did not fail while the connection was cut")
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	select {
	case <-succeeded:
		t.Logf("reassignment pass succeeded %s after the connection came back (period: 1h)", time.Since(restored))
	case <-time.After(crashTimeout):
		t.Fatalf("no successful reassignment pass %s after the connection came back: failed passes wait for the period", crashTimeout)
	}
}

// proxiedDB returns a pool of at most maxConns connections to the test database through a
// TCP proxy the test can cut; both are closed when the test ends.
func proxiedDB(t *testing.T, maxConns int32, connectTimeout time.Duration, configure ...func(*pgxpool.Config)) (database.DB, *tcpproxy.Proxy) {
	t.Helper()
	pc, err := pgxpool.ParseConfig(testdb.PostgresDSN())
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := tcpproxy.New(net.JoinHostPort(pc.ConnConfig.Host, strconv.Itoa(int(pc.ConnConfig.Port))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	host, port, _ := net.SplitHostPort(proxy.Addr())
	p, _ := strconv.Atoi(port)
	pc.ConnConfig.Host, pc.ConnConfig.Port = host, uint16(p)
	pc.ConnConfig.ConnectTimeout = connectTimeout
	pc.MaxConns = maxConns
	for _, f := range configure {
		f(pc)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return database.FromPgx(pool), proxy
}

// A claim that commits on the server but whose answer never reaches the forwarder (the
// connection breaks while the reply is on its way) leaves envelopes marked with a node that
// is alive, so no reassignment will ever hand them back. The forwarder reports the unknown
// outcome to its node, and the node's agent hands the envelopes back at its next check: they
// are delivered without a restart.
func TestClaimWithLostAnswerIsHandedBack(t *testing.T) {
	t.Parallel()
	r := newLostAnswerRig(t)
	direct, cfg, proxy, node, agent := r.direct, r.cfg, r.proxy, r.node, r.agent
	sink := &memorySink{copies: map[string]int{}}
	fwd, err := forwarder.NewForwarder(r.proxied, forwarder.Config{
		// One worker that claims only when woken: its claim is the one sent while replies are held.
		Schema: cfg, Node: node, Publisher: sink, Workers: 1, DisableNotify: true, PollInterval: time.Hour,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	agent.AddWaker(fwd)
	r.runAgent(t)
	var wg sync.WaitGroup
	defer func() {
		_ = fwd.Close()
		wg.Wait()
	}()

	// The forwarder's first claim is the one whose answer is held: the envelopes are there
	// before it starts, and the proxied pool has a connection open already (opening one
	// needs the server's replies).
	msgs := proxyMessages("lost-answer", 50)
	publishDirect(t, cfg, msgs)
	if _, err := r.proxied.Exec(context.Background(), "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	proxy.HoldReplies()
	wg.Go(func() { _ = fwd.Run(context.Background()) })
	// The claim marks the envelopes on the server; its answer is held.
	deadline := time.Now().Add(crashTimeout)
	for owned(t, direct, cfg, schema.OutgoingTable, node.ID()) != int64(len(msgs)) {
		if time.Now().After(deadline) {
			d, _ := sink.stats()
			t.Fatalf("the forwarder did not claim the envelopes (%d owned by node %d, %d delivered)",
				owned(t, direct, cfg, schema.OutgoingTable, node.ID()), node.ID(), d)
		}
		time.Sleep(10 * time.Millisecond) // no event tells that a held claim committed
	}
	proxy.Cut() // the answer is lost with the connection
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sink.reached(len(msgs)):
	case <-time.After(crashTimeout):
		d, _ := sink.stats()
		t.Fatalf("%d of %d messages delivered; %d envelopes still owned by the live node %d (unknown outcomes reported: %d)",
			d, len(msgs), owned(t, direct, cfg, schema.OutgoingTable, node.ID()), node.ID(), node.UnknownOutcomes())
	}
	if node.UnknownOutcomes() == 0 {
		t.Error("the forwarder reported no unknown outcome")
	}
	t.Logf("delivered after the lost answer; unknown outcomes reported: %d, handed back: %d", node.UnknownOutcomes(), agent.Stats().HandedBack)
}

// owned counts the envelopes of table marked with owner.
func owned(t *testing.T, db database.DB, cfg schema.Config, table string, owner int32) int64 {
	t.Helper()
	var n int64
	if err := database.QueryRow(context.Background(), db, `SELECT count(*) FROM `+cfg.Qualified(table)+` WHERE owner_id = $1`,
		[]any{owner}, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The subscriber's side of TestClaimWithLostAnswerIsHandedBack: a claim of incoming
// envelopes commits, its answer is lost with the connection, and the node's agent hands the
// envelopes back, so they are delivered without a restart.
func TestSubscriberClaimWithLostAnswerIsHandedBack(t *testing.T) {
	t.Parallel()
	r := newLostAnswerRig(t)
	direct, cfg, proxy, node, agent := r.direct, r.cfg, r.proxy, r.node, r.agent
	sub, err := subscriber.NewSubscriber(r.proxied, subscriber.Config{
		Schema: cfg, Node: node, DisableNotify: true, DisableScheduledRelease: true,
		PollInterval: time.Hour, RetryInterval: 50 * time.Millisecond,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	agent.AddWaker(sub)
	r.runAgent(t)

	const topic = "lost-answer-queue"
	msgs := proxyMessages("lost-answer-in", 20)
	pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{Schema: cfg, Table: publisher.Incoming}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := sub.SubscribeInitialize(topic); err != nil { // the layout check, before replies are held
		t.Fatal(err)
	}
	proxy.HoldReplies()
	out, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(crashTimeout)
	for owned(t, direct, cfg, schema.IncomingTable, node.ID()) != int64(len(msgs)) {
		if time.Now().After(deadline) {
			t.Fatal("the subscriber did not claim the envelopes")
		}
		time.Sleep(10 * time.Millisecond) // no event tells that a held claim committed
	}
	proxy.Cut() // the answer is lost with the connection
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	timeout := time.After(crashTimeout)
	for len(got) < len(msgs) {
		select {
		case m := <-out:
			got[m.UUID] = true
			m.Ack()
		case <-timeout:
			t.Fatalf("%d of %d messages delivered; %d envelopes still owned by the live node (unknown outcomes reported: %d)",
				len(got), len(msgs), owned(t, direct, cfg, schema.IncomingTable, node.ID()), node.UnknownOutcomes())
		}
	}
	if node.UnknownOutcomes() == 0 {
		t.Error("the subscriber reported no unknown outcome")
	}
	t.Logf("delivered after the lost answer; unknown outcomes reported: %d, handed back: %d", node.UnknownOutcomes(), agent.Stats().HandedBack)
}

// lostAnswerRig is the setting of the lost-answer tests: a node and its agent on the direct
// connection (their lock stays held) and a proxied pool of one connection that sends every
// statement in one go (no prepare round trip first), so that a claim reaches the server
// while the proxy holds the replies.
type lostAnswerRig struct {
	direct, proxied database.DB
	cfg             schema.Config
	proxy           *tcpproxy.Proxy
	node            *durability.Node
	agent           *durability.Agent
}

func newLostAnswerRig(t *testing.T) *lostAnswerRig {
	t.Helper()
	r := &lostAnswerRig{}
	r.direct, r.cfg = testdb.Migrated(t)
	r.proxied, r.proxy = proxiedDB(t, 1, time.Second, func(c *pgxpool.Config) {
		c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	})
	var err error
	r.node, err = durability.NewNode(context.Background(), r.direct, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.node.Close() })
	r.agent, err = durability.NewAgent(r.direct, r.node, durability.Config{Schema: r.cfg, NodeCheckInterval: 100 * time.Millisecond}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// runAgent runs the agent until the test ends (after the test's own deferred closes).
func (r *lostAnswerRig) runAgent(t *testing.T) {
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.agent.Run(context.Background()) })
	t.Cleanup(func() {
		_ = r.agent.Close()
		wg.Wait()
	})
}
