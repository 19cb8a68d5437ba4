package jasper_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

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

// has reports whether the message uuid arrived.
func (s *memorySink) has(uuid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.copies[uuid] > 0
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
func lockHolderPID(t *testing.T, db database.Querier, id int32) int32 {
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

// publishDirect commits messages for destination "orders" to the outbox on the direct (not
// proxied) pool.
func publishDirect(t *testing.T, cfg schema.Config, msgs []*message.Message) {
	t.Helper()
	publishTo(t, cfg, "orders", msgs)
}

// publishTo commits messages for destination to the outbox on the direct pool, with a
// notification.
func publishTo(t *testing.T, cfg schema.Config, destination string, msgs []*message.Message) {
	t.Helper()
	ctx := context.Background()
	tx, err := testdb.Pool(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	pub, err := publisher.NewPublisher(watermillsql.TxFromPgx(tx), publisher.Config{Schema: cfg, Coalescer: &publisher.Coalescer{}}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	for len(msgs) > 0 {
		n := min(len(msgs), 500)
		if err := pub.Publish(destination, msgs[:n]...); err != nil {
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
	db, proxy := testdb.Proxied(t, 8, 2*time.Second)
	sink := &memorySink{latency: time.Millisecond, copies: map[string]int{}}
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema: cfg.Schema,
		Agent: durability.Config{
			ScheduledJobPollingTime:     200 * time.Millisecond,
			NodeReassignmentPollingTime: time.Second,
			NodeCheckInterval:           200 * time.Millisecond,
			MetricsSamplingInterval:     200 * time.Millisecond,
			StatementTimeout:            5 * time.Second,
		},
		Forwarders: []forwarder.Config{{Publisher: sink, BatchSize: 100, PublishConcurrency: 4, PollInterval: 100 * time.Millisecond}},
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

	startRuntime(t, rt)
	agent := rt.Agent()
	node := agent.Node()
	relocked := make(chan struct{})
	go func() {
		// Node.Relocks has no event: it is polled by the test, not by the code under test.
		for node.Relocks() == 0 {
			time.Sleep(20 * time.Millisecond)
		}
		close(relocked)
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
	// The scheduled send fell due during the cut: only the agent's recovered connection could
	// release it. The counter may miss it (a release that committed while its answer was lost
	// on a connection opened during the cut is not counted), so the message itself is checked.
	if !sink.has("scheduled-during-cut") {
		t.Error("the scheduled send that fell due during the cut was not released")
	}
	if st.ScheduledSent > 1 {
		t.Errorf("scheduled sends released: %d, want at most 1", st.ScheduledSent)
	}
	if st.JobErrors[durability.JobNodeCheck] == 0 {
		t.Error("the node check never failed during the cut: was the connection cut?")
	}
	if g, ok := agent.Gauges(); !ok || time.Since(g.SampledAt) > 5*time.Second {
		t.Errorf("gauges not sampled again after the cut: %+v", g)
	}
}

// owned counts the envelopes of table marked with owner.
func owned(t *testing.T, db database.Querier, cfg schema.Config, table string, owner int32) int64 {
	t.Helper()
	var n int64
	if err := database.QueryRow(context.Background(), db, `SELECT count(*) FROM `+cfg.Qualified(table)+` WHERE owner_id = $1`,
		[]any{owner}, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// startRuntime starts rt and stops it when the test ends.
func startRuntime(t *testing.T, rt *jasper.Runtime) {
	t.Helper()
	if err := rt.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rt.Stop(context.Background()); err != nil {
			t.Errorf("stop the runtime: %v", err)
		}
	})
}

// lostAnswerRig is the setting of the lost-answer tests: a runtime whose every connection goes
// through a TCP proxy, on a pool that sends each statement in one go (no prepare round trip
// first) and does not ping idle connections, so that a claim reaches the server while the
// proxy holds the replies. With lockDirect, the
// node lock's connection is direct (NodeConfig.SessionDB), so the lock stays held through the
// cut and only the component's report of the unknown outcome can get the envelopes handed
// back; otherwise the configuration is the default one, and the cut also takes the lock.
type lostAnswerRig struct {
	direct  database.Driver
	cfg     schema.Config
	proxy   *tcpproxy.Proxy
	proxied database.Driver
}

func newLostAnswerRig(t *testing.T) *lostAnswerRig {
	t.Helper()
	r := &lostAnswerRig{}
	r.direct, r.cfg = testdb.Migrated(t)
	r.proxied, r.proxy = testdb.Proxied(t, 8, time.Second, func(c *pgxpool.Config) {
		c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
		// An idle connection is not pinged before use: the ping's answer would be held too,
		// and the claim never sent.
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	})
	return r
}

func (r *lostAnswerRig) runtime(t *testing.T, lockDirect bool, fwd ...forwarder.Config) *jasper.Runtime {
	t.Helper()
	c := jasper.Config{Schema: r.cfg.Schema, Forwarders: fwd}
	if lockDirect {
		c.Node.SessionDB = r.direct
		c.Agent.NodeCheckInterval = 100 * time.Millisecond
	}
	rt, err := jasper.NewRuntime(r.proxied, c, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)
	return rt
}

// loseAnswer holds the proxy's replies, runs claim (which makes a component send its claim),
// waits until the database shows n envelopes of table marked with the node, then cuts every
// proxied connection (the claim's answer is lost with it) and restores the proxy.
func (r *lostAnswerRig) loseAnswer(t *testing.T, claim func(), claimed func() bool) {
	t.Helper()
	// Open connections that sit idle in the pool, so that the claim needs no new connection
	// (its handshake's answers would be held too).
	var conns []database.Conn
	for range 5 {
		c, err := r.proxied.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		_ = c.Close(false)
	}
	r.proxy.HoldReplies()
	claim()
	deadline := time.Now().Add(crashTimeout)
	for !claimed() {
		if time.Now().After(deadline) {
			t.Fatal("the claim did not run on the server")
		}
		time.Sleep(10 * time.Millisecond) // no event tells that a held claim ran
	}
	r.proxy.Cut()
	if err := r.proxy.Restore(); err != nil {
		t.Fatal(err)
	}
}

// outgoingRows counts the rows of the outbox.
func outgoingRows(t *testing.T, db database.Querier, cfg schema.Config) int64 {
	t.Helper()
	var n int64
	if err := database.QueryRow(context.Background(), db, `SELECT count(*) FROM `+cfg.Qualified(schema.OutgoingTable), nil, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// lockedRows counts the rows of table that another transaction holds locked (a row lock
// test: FOR UPDATE SKIP LOCKED skips them), in a transaction rolled back at once.
func lockedRows(t *testing.T, db database.DB, cfg schema.Config, table string) int64 {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var n int64
	q := `SELECT (SELECT count(*) FROM ` + cfg.Qualified(table) + `) - (SELECT count(*) FROM (SELECT id FROM ` + cfg.Qualified(table) + ` FOR UPDATE SKIP LOCKED) AS free)`
	if err := database.QueryRow(ctx, tx, q, nil, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// gatedSink holds the first Publish until release is closed (entered is closed when it
// starts), then delivers to the memorySink.
type gatedSink struct {
	*memorySink
	once     sync.Once
	entered  chan struct{}
	released chan struct{}
}

func (g *gatedSink) Publish(topic string, msgs ...*message.Message) error {
	g.once.Do(func() {
		close(g.entered)
		<-g.released
	})
	return g.memorySink.Publish(topic, msgs...)
}

// A forwarder's batch holds its rows locked in a transaction while it publishes, without
// marking them. When the connection breaks in the middle of the batch, the transaction dies
// with it: the rows are free again at once, and the next batch relays all of them (those
// published before the cut twice, at least once), the process running on, without the agent
// handing anything back. On a runtime with the default configuration (its node lock goes
// through the same cut connection) and on one whose node lock stays held on a direct
// connection.
func TestConnectionCutMidBatchIsRelayed(t *testing.T) {
	t.Parallel()
	for _, lockDirect := range []bool{false, true} {
		t.Run(fmt.Sprintf("lock_direct=%v", lockDirect), func(t *testing.T) {
			t.Parallel()
			r := newLostAnswerRig(t)
			sink := &gatedSink{memorySink: &memorySink{copies: map[string]int{}}, entered: make(chan struct{}), released: make(chan struct{})}
			rt := r.runtime(t, lockDirect, forwarder.Config{Publisher: sink, Workers: 1})
			agent := rt.Agent()
			msgs := proxyMessages("cut-mid-batch", 50)
			publishDirect(t, r.cfg, msgs)
			select {
			case <-sink.entered:
			case <-time.After(crashTimeout):
				t.Fatal("the forwarder published nothing")
			}
			if n := lockedRows(t, r.direct, r.cfg, schema.OutgoingTable); n != int64(len(msgs)) {
				t.Fatalf("%d rows locked while the batch is published, want %d", n, len(msgs))
			}
			r.proxy.Cut()
			if err := r.proxy.Restore(); err != nil {
				t.Fatal(err)
			}
			close(sink.released)
			select {
			case <-sink.reached(len(msgs)):
			case <-time.After(crashTimeout):
				d, _ := sink.stats()
				t.Fatalf("%d of %d messages delivered; %d envelopes still locked", d, len(msgs), lockedRows(t, r.direct, r.cfg, schema.OutgoingTable))
			}
			// The batch's transaction died with the connection: its rows are relayed again
			// by the next batch, which deletes them.
			deadline := time.Now().Add(crashTimeout)
			for left := outgoingRows(t, r.direct, r.cfg); left != 0; left = outgoingRows(t, r.direct, r.cfg) {
				if time.Now().After(deadline) {
					t.Fatalf("%d envelopes left in the outbox", left)
				}
				time.Sleep(10 * time.Millisecond) // no event tells that a batch committed
			}
			if n := owned(t, r.direct, r.cfg, schema.OutgoingTable, agent.NodeID()); n != 0 {
				t.Errorf("%d envelopes marked with the node's id, want none", n)
			}
			if !agent.Running() {
				t.Error("the agent stopped")
			}
			t.Logf("delivered after the cut; relocks: %d, handed back: %d", agent.Node().Relocks(), agent.Stats().HandedBack)
		})
	}
}

// The subscriber's claim whose answer is lost: a claim of incoming
// envelopes commits, its answer is lost with the connection, and the node's agent hands the
// envelopes back, so they are delivered without a restart.
func TestSubscriberClaimWithLostAnswerIsHandedBack(t *testing.T) {
	t.Parallel()
	for _, lockDirect := range []bool{false, true} {
		t.Run(fmt.Sprintf("lock_direct=%v", lockDirect), func(t *testing.T) {
			t.Parallel()
			r := newLostAnswerRig(t)
			rt := r.runtime(t, lockDirect)
			agent := rt.Agent()
			sub, err := rt.Subscriber(subscriber.Config{})
			if err != nil {
				t.Fatal(err)
			}
			const topic = "lost-answer-queue"
			msgs := proxyMessages("lost-answer-in", 20)
			pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{Schema: r.cfg, Table: publisher.Incoming}, watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			if err := pub.Publish(topic, msgs...); err != nil {
				t.Fatal(err)
			}
			if err := sub.SubscribeInitialize(topic); err != nil { // the layout check, before replies are held
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out <-chan *message.Message
			r.loseAnswer(t, func() {
				if out, err = sub.Subscribe(ctx, topic); err != nil {
					t.Fatal(err)
				}
			}, func() bool {
				return owned(t, r.direct, r.cfg, schema.IncomingTable, agent.NodeID()) == int64(len(msgs))
			})
			got := map[string]bool{}
			timeout := time.After(crashTimeout)
			for len(got) < len(msgs) {
				select {
				case m := <-out:
					got[m.UUID] = true
					m.Ack()
				case <-timeout:
					t.Fatalf("%d of %d messages delivered; %d envelopes still owned by the live node (unknown outcomes reported: %d)",
						len(got), len(msgs), owned(t, r.direct, r.cfg, schema.IncomingTable, agent.NodeID()), agent.Node().UnknownOutcomes())
				}
			}
			if lockDirect && agent.Node().UnknownOutcomes() == 0 {
				t.Error("the subscriber reported no unknown outcome")
			}
			t.Logf("delivered after the lost answer; unknown outcomes reported: %d, relocks: %d, handed back: %d",
				agent.Node().UnknownOutcomes(), agent.Node().Relocks(), agent.Stats().HandedBack)
		})
	}
}
