package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// env is one test's database: a migrated random schema with a business table
// effects(message_uuid, attempt), and a running durability agent on it.
type env struct {
	t     *testing.T
	db    database.Driver
	cfg   schema.Config
	agent *durability.Agent
}

// envOption adjusts an env before its agent starts.
type envOption func(*envSetup)

type envSetup struct {
	db     func(t *testing.T, pgx database.Driver) database.Driver
	config durability.Config
}

// onDriver runs the env on the driver db returns (given the pgx driver the schema was
// migrated with) instead.
func onDriver(db func(t *testing.T, pgx database.Driver) database.Driver) envOption {
	return func(s *envSetup) { s.db = db }
}

// noHandledCleanup turns the agent's Handled cleanup timer off: the test calls
// Agent.DeleteExpiredHandled itself.
func noHandledCleanup(s *envSetup) { s.config.HandledCleanupPollingTime = -1 }

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	db, cfg := testdb.Migrated(t)
	s := envSetup{config: durability.Config{
		Schema:                      cfg,
		ScheduledJobPollingTime:     100 * time.Millisecond,
		NodeCheckInterval:           100 * time.Millisecond,
		HandledCleanupPollingTime:   100 * time.Millisecond,
		ExpiredEnvelopesPollingTime: 100 * time.Millisecond,
		// The middleware needs no notifications; each parallel test holds one connection
		// of the shared pool less.
		DisableNotify: true,
	}}
	for _, o := range opts {
		o(&s)
	}
	if s.db != nil {
		db = s.db(t, db)
	}
	e := &env{t: t, db: db, cfg: cfg, agent: startAgent(t, db, s.config)}
	e.exec(`CREATE TABLE %s.effects (message_uuid text NOT NULL, attempt int NOT NULL)`, cfg.QuoteIdent(cfg.Schema))
	return e
}

// startAgent starts a node and its agent on db with config, and stops both when the test
// ends.
func startAgent(t *testing.T, db database.Driver, config durability.Config) *durability.Agent {
	t.Helper()
	ctx := context.Background()
	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := durability.NewAgent(node, config, nil)
	if err == nil {
		err = agent.Start(ctx)
	}
	if err != nil {
		_ = node.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Handing the node's envelopes back fails where the tables are missing (a test of
		// that case): nothing to hand back.
		if err := errors.Join(agent.Stop(ctx), node.Close()); err != nil && !agent.Store().IsMissingTable(err) {
			t.Errorf("stop the agent: %v", err)
		}
	})
	return agent
}

func (e *env) exec(format string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), fmt.Sprintf(format, args...)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) count(where string, args ...any) int {
	e.t.Helper()
	var n int64
	if err := database.QueryRow(context.Background(), e.db, "SELECT count(*) FROM "+where, args, &n); err != nil {
		e.t.Fatal(err)
	}
	return int(n)
}

func (e *env) table(name string) string { return e.cfg.Qualified(name) }
func (e *env) effects() int {
	return e.count(e.cfg.QuoteIdent(e.cfg.Schema) + ".effects")
}
func (e *env) handledMarks() int {
	return e.count(e.table(schema.IncomingTable) + " WHERE status = 'Handled'")
}
func (e *env) deadLetters() int { return e.count(e.table(schema.DeadLetterTable)) }

// writeEffect is the handler's business write, in the inbox transaction.
func (e *env) writeEffect(msg *message.Message, attempt int) error {
	tx, ok := middleware.TxFromContext(msg.Context())
	if !ok {
		return fmt.Errorf("no inbox transaction in the handler's context")
	}
	_, err := tx.Exec(msg.Context(), fmt.Sprintf(`INSERT INTO %s.effects VALUES ($1, $2)`, e.cfg.QuoteIdent(e.cfg.Schema)), msg.UUID, attempt)
	return err
}

func (e *env) inbox(mod func(*middleware.InboxConfig)) *middleware.Inbox {
	e.t.Helper()
	c := middleware.InboxConfig{ConsumerName: "test-consumer"}
	if mod != nil {
		mod(&c)
	}
	in, err := middleware.NewInbox(e.agent, c, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

func (e *env) deadLetterMW(mod func(*middleware.DeadLetterConfig)) *middleware.DeadLetter {
	e.t.Helper()
	c := middleware.DeadLetterConfig{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond}
	if mod != nil {
		mod(&c)
	}
	d, err := middleware.NewDeadLetter(e.agent, c, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// testSub is a message.Subscriber (and Publisher) the test drives: deliver sends a message
// to the router and reports whether it was acked or nacked. Several deliveries may be in
// flight at once (the router handles each in its own goroutine).
type testSub struct {
	ch        chan *message.Message
	closeOnce sync.Once
}

func newTestSub() *testSub { return &testSub{ch: make(chan *message.Message)} }

func (s *testSub) Subscribe(context.Context, string) (<-chan *message.Message, error) {
	return s.ch, nil
}
func (s *testSub) Close() error {
	s.closeOnce.Do(func() { close(s.ch) })
	return nil
}

// deliver sends msg and waits for its Ack (true) or Nack (false).
func (s *testSub) deliver(t *testing.T, msg *message.Message) bool {
	t.Helper()
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	select {
	case s.ch <- msg:
	case <-timeout.C:
		t.Fatalf("message %s was not taken by the router", msg.UUID)
	}
	select {
	case <-msg.Acked():
		return true
	case <-msg.Nacked():
		return false
	case <-timeout.C:
		t.Fatalf("message %s was neither acked nor nacked", msg.UUID)
	}
	return false
}

// deliverUntilAcked redelivers a copy of msg after each Nack, as a broker does, and returns
// how many deliveries it took.
func (s *testSub) deliverUntilAcked(t *testing.T, msg *message.Message, max int) int {
	t.Helper()
	for i := 1; i <= max; i++ {
		m := msg.Copy()
		if s.deliver(t, m) {
			return i
		}
	}
	t.Fatalf("message %s still nacked after %d deliveries", msg.UUID, max)
	return 0
}

// Publish delivers each message (for replays through a publisher) and waits for its Ack.
type publishToSub struct {
	t   *testing.T
	sub *testSub
	mu  sync.Mutex
	got []string
}

func (p *publishToSub) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		p.mu.Lock()
		p.got = append(p.got, topic+"/"+m.UUID)
		p.mu.Unlock()
		if !p.sub.deliver(p.t, m) {
			return fmt.Errorf("message %s nacked", m.UUID)
		}
	}
	return nil
}
func (p *publishToSub) Close() error { return nil }

// startRouter runs a router with one consumer handler "handler" on topic, with mws as
// handler middleware (first = outermost), and stops it when the test ends.
func startRouter(t *testing.T, sub message.Subscriber, topic string, h message.NoPublishHandlerFunc, mws ...message.HandlerMiddleware) {
	t.Helper()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("handler", topic, sub, h).AddMiddleware(mws...)
	runRouter(t, r)
}

func runRouter(t *testing.T, r *message.Router) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- r.Run(context.Background()) }()
	select {
	case <-r.Running():
	case err := <-errc:
		t.Fatalf("router: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close router: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("router: %v", err)
		}
	})
}

// orders names the compositions every retry test runs.
type order struct {
	name string
	mws  func(in *middleware.Inbox, dl *middleware.DeadLetter) []message.HandlerMiddleware
}

var orders = []order{
	{"dead letters outside inbox", func(in *middleware.Inbox, dl *middleware.DeadLetter) []message.HandlerMiddleware {
		return []message.HandlerMiddleware{dl.Middleware, in.Middleware}
	}},
	{"inbox outside dead letters", func(in *middleware.Inbox, dl *middleware.DeadLetter) []message.HandlerMiddleware {
		return []message.HandlerMiddleware{in.Middleware, dl.Middleware}
	}},
}

// gate holds the first delivery in its handler (entered is closed when it gets there) until
// open is called; open is idempotent.
type gate struct {
	entered, release chan struct{}
	once             sync.Once
}

func newGate() *gate {
	return &gate{entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// waitEntered waits until the first delivery is in its handler.
func (g *gate) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(60 * time.Second):
		t.Fatal("no delivery reached the handler")
	}
}
