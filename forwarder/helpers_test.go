package forwarder

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// testTimeout bounds every wait of these tests.
const testTimeout = 60 * time.Second

// env is one test's schema and the running durability agent of a node on it, which every
// forwarder of the test is built on.
type env struct {
	t      testing.TB
	db     store.Driver
	schema schema.Config
	store  store.Store
	agent  *durability.Agent
}

// agentSetup is how a test's agent is built.
type agentSetup struct {
	config durability.Config
	logger watermill.LoggerAdapter
}

// agentOption changes how a test's agent is built.
type agentOption func(*agentSetup)

// noNotify turns the agent's LISTEN connection off: forwarders find envelopes by polling.
func noNotify(s *agentSetup) { s.config.DisableNotify = true }

// agentLogger gives the agent a logger (to observe its notification connection).
func agentLogger(l watermill.LoggerAdapter) agentOption {
	return func(s *agentSetup) { s.logger = l }
}

// newEnv migrates a fresh schema and starts an agent on it.
func newEnv(t testing.TB, opts ...agentOption) *env {
	t.Helper()
	db, cfg := testdb.Migrated(t)
	return newEnvOn(t, db, cfg, opts...)
}

// newEnvOn starts an agent on the migrated schema cfg of db.
func newEnvOn(t testing.TB, db store.Driver, cfg schema.Config, opts ...agentOption) *env {
	t.Helper()
	st, err := db.Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, db: db, schema: st.Schema(), store: st, agent: startAgent(t, db, st.Schema(), opts...)}
}

// newAgent builds a node and its agent on db for the schema cfg, with fast timers, without
// starting it; the test's end stops the agent and closes the node.
//
// Timers: the node check runs every 100 ms, so that a claim whose answer was lost is handed
// back quickly; the scheduled-jobs pass (and its recovery wake-ups) runs at start and then
// hourly, so that what wakes a forwarder in these tests is a notification, a hand-back or
// the forwarder's own polling; expired envelopes are left to the forwarder (whose handling
// of them is under test) and the gauges are not sampled.
func newAgent(t testing.TB, db store.Driver, cfg schema.Config, opts ...agentOption) *durability.Agent {
	t.Helper()
	s := agentSetup{config: durability.Config{
		Schema:                      cfg,
		NodeCheckInterval:           100 * time.Millisecond,
		ScheduledJobPollingTime:     time.Hour,
		ExpiredEnvelopesPollingTime: -1,
		MetricsSamplingInterval:     -1,
	}}
	for _, o := range opts {
		o(&s)
	}
	node, err := durability.NewNode(context.Background(), db, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	agent, err := durability.NewAgent(node, s.config, s.logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := agent.Stop(context.Background()); err != nil {
			t.Errorf("stop the agent: %v", err)
		}
	})
	return agent
}

// startAgent is newAgent, started.
func startAgent(t testing.TB, db store.Driver, cfg schema.Config, opts ...agentOption) *durability.Agent {
	t.Helper()
	agent := newAgent(t, db, cfg, opts...)
	if err := agent.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return agent
}

// forwarder builds a forwarder on the test's agent.
func (e *env) forwarder(c Config) *Forwarder {
	e.t.Helper()
	f, err := NewForwarder(e.agent, c, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return f
}

// insert writes the messages as outgoing envelopes to topic (the publisher's mapping) and
// notifies the forwarders.
func (e *env) insert(topic string, msgs ...*message.Message) {
	e.t.Helper()
	envs := make([]row.Envelope, len(msgs))
	for i, m := range msgs {
		r, err := row.FromMessage(topic, m, row.Defaults{})
		if err != nil {
			e.t.Fatal(err)
		}
		envs[i] = r
	}
	e.insertEnvelopes(envs...)
}

func (e *env) insertEnvelopes(envs ...row.Envelope) {
	e.t.Helper()
	if err := e.store.InsertEnvelopes(context.Background(), store.InsertParams{Outgoing: envs, NotifyOutgoing: true}); err != nil {
		e.t.Fatalf("insert envelopes: %v", err)
	}
}

// lockable counts the outgoing rows another relay could lock now: unowned and not locked by
// a transaction (FOR UPDATE SKIP LOCKED, in a transaction rolled back at once).
func (e *env) lockable() int {
	e.t.Helper()
	ctx := context.Background()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var n int
	q := fmt.Sprintf(`SELECT count(*) FROM (SELECT id FROM %s WHERE owner_id = 0 FOR UPDATE SKIP LOCKED) AS free`, e.schema.Qualified(schema.OutgoingTable))
	if err := database.QueryRow(ctx, tx, q, nil, &n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) count(table string, where string, args ...any) int {
	e.t.Helper()
	var n int
	q := fmt.Sprintf(`SELECT count(*) FROM %s`, e.schema.Qualified(table))
	if where != "" {
		q += " WHERE " + where
	}
	if err := database.QueryRow(context.Background(), e.db, q, args, &n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) outgoing() int { return e.count(schema.OutgoingTable, "") }

func (e *env) deadLetters() int { return e.count(schema.DeadLetterTable, "") }

// deadLetter reads the dead letter of an envelope, with its body.
func (e *env) deadLetter(id uuid.UUID) row.DeadLetter {
	e.t.Helper()
	dl, ok, err := e.store.GetDeadLetter(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	if !ok {
		e.t.Fatalf("no dead letter %s", id)
	}
	return dl
}

// start runs f until the test ends (or Close) and waits until it is running.
func start(t testing.TB, f *Forwarder) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- f.Run(context.Background()) }()
	t.Cleanup(func() {
		_ = f.Close()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-f.Running():
	case err := <-errc:
		t.Fatalf("Run returned early: %v", err)
	case <-time.After(testTimeout):
		t.Fatal("forwarder did not start")
	}
}

// waitDeadLettered waits until the forwarder's hook (set with deadLettered) saw n envelopes
// moved to the dead letters.
func waitDeadLettered(t testing.TB, dead <-chan int, n int, what string) {
	t.Helper()
	timeout := time.After(testTimeout)
	for got := 0; got < n; {
		select {
		case k := <-dead:
			got += k
		case <-timeout:
			t.Fatalf("%s: %d of %d envelopes dead-lettered", what, got, n)
		}
	}
}

// deadLettered sets f's dead-letter hook and returns the channel it reports to.
func deadLettered(f *Forwarder) <-chan int {
	dead := make(chan int, 100)
	f.onDeadLettered = func(n int) { dead <- n }
	return dead
}

func newMessages(n int, prefix string) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf("%s-%d", prefix, i)))
	}
	return msgs
}

// goChannel returns a GoChannel pub/sub closed when the test ends.
func goChannel(t testing.TB) *gochannel.GoChannel {
	pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubsub.Close() })
	return pubsub
}

// collector acks every message of a subscription and records it by UUID.
type collector struct {
	mu      sync.Mutex
	byUUID  map[string][]*message.Message
	total   int
	want    int
	done    chan struct{} // closed when len(byUUID) reaches want
	arrived chan struct{} // signalled (coalesced) on every message
}

func collect(t testing.TB, sub message.Subscriber, topic string, want int) *collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{byUUID: map[string][]*message.Message{}, want: want, done: make(chan struct{}), arrived: make(chan struct{}, 1)}
	if want == 0 {
		close(c.done)
	}
	go func() {
		for m := range ch {
			m.Ack()
			c.mu.Lock()
			c.byUUID[m.UUID] = append(c.byUUID[m.UUID], m)
			c.total++
			if len(c.byUUID) == c.want && c.want > 0 {
				close(c.done)
			}
			c.mu.Unlock()
			select {
			case c.arrived <- struct{}{}:
			default:
			}
		}
	}()
	return c
}

func (c *collector) wait(t testing.TB, what string) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(testTimeout):
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Fatalf("%s: received %d distinct messages of %d", what, len(c.byUUID), c.want)
	}
}

// distinct returns how many distinct messages arrived.
func (c *collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byUUID)
}

// waitCount waits until at least k distinct messages arrived.
func (c *collector) waitCount(t testing.TB, k int, what string) {
	t.Helper()
	timeout := time.After(testTimeout)
	for c.distinct() < k {
		select {
		case <-c.arrived:
		case <-timeout:
			t.Fatalf("%s: received %d distinct messages of %d", what, c.distinct(), k)
		}
	}
}

// recorder wraps a publisher, counting publishes per topic and UUID, and can fail topics.
type recorder struct {
	next message.Publisher

	mu        sync.Mutex
	published map[string]int // by UUID, successful publishes
	attempts  map[string]int // by topic, every call
	fail      map[string]error
	onFail    func(topic string, calls int)
}

func newRecorder(next message.Publisher) *recorder {
	return &recorder{next: next, published: map[string]int{}, attempts: map[string]int{}, fail: map[string]error{}}
}

var errBroken = errors.New("broker says no")

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	r.attempts[topic]++
	calls := r.attempts[topic]
	failErr := r.fail[topic]
	onFail := r.onFail
	r.mu.Unlock()
	if failErr != nil {
		if onFail != nil {
			onFail(topic, calls)
		}
		return fmt.Errorf("publish to %s: %w", topic, failErr)
	}
	if err := r.next.Publish(topic, msgs...); err != nil {
		return err
	}
	r.mu.Lock()
	for _, m := range msgs {
		r.published[m.UUID]++
	}
	r.mu.Unlock()
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) publishedCount(uuid string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.published[uuid]
}

func (r *recorder) attemptsOf(topic string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts[topic]
}
