package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// waitForLockWaiters waits until n sessions wait for a lock on a statement naming the test's
// schema (the concurrent duplicates blocked on the uncommitted mark).
func (e *env) waitForLockWaiters(n int) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got int64
		err := database.QueryRow(context.Background(), e.db,
			`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND position($1 in query) > 0`,
			[]any{e.cfg.Schema}, &got)
		if err != nil {
			e.t.Fatal(err)
		}
		if int(got) >= n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("only %d of %d deliveries wait for the first one's mark", got, n)
		}
		time.Sleep(2 * time.Millisecond) // polling the database for a state, not a synchronisation by time
	}
}

// The same message delivered 3 times concurrently: its effects exist once. The first
// delivery holds its uncommitted mark while the two others are shown (pg_stat_activity) to
// wait for it; then they find it committed and are acked without running the handler.
func TestInboxConcurrentDuplicatesHaveEffectsOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.inbox(nil)
	sub := newTestSub()
	var calls atomic.Int32
	g := newGate()
	defer g.open() // also when the test fails: the first delivery must not hold its transaction
	startRouter(t, sub, "orders", func(msg *message.Message) error {
		if calls.Add(1) == 1 {
			close(g.entered)
			<-g.release
		}
		return e.writeEffect(msg, 1)
	}, in.Middleware)

	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order":1}`))
	var wg sync.WaitGroup
	acked := make([]bool, 3)
	for i := range 3 {
		wg.Go(func() { acked[i] = sub.deliver(t, msg.Copy()) })
	}
	g.waitEntered(t)
	e.waitForLockWaiters(2)
	g.open()
	wg.Wait()

	for i, a := range acked {
		if !a {
			t.Errorf("delivery %d was nacked", i)
		}
	}
	if calls.Load() != 1 || e.effects() != 1 || e.handledMarks() != 1 {
		t.Fatalf("handler ran %d times, %d effects, %d marks; want 1, 1, 1", calls.Load(), e.effects(), e.handledMarks())
	}
	// The mark: keyed by consumer, handler and UUID, kept for KeepFor, no body.
	var keep time.Time
	var body []byte
	var status, receivedAt, mid string
	err := database.QueryRow(context.Background(), e.db,
		`SELECT status, received_at, message_uuid, body, keep_until FROM `+e.table(schema.IncomingTable)+` WHERE id = $1`,
		[]any{middleware.InboxKey("test-consumer", "handler", msg.UUID).String()}, &status, &receivedAt, &mid, &body, &keep)
	if err != nil {
		t.Fatal(err)
	}
	if status != "Handled" || receivedAt != "orders" || mid != msg.UUID || len(body) != 0 {
		t.Errorf("mark: status %q received_at %q message_uuid %q body %q", status, receivedAt, mid, body)
	}
	if d := time.Until(keep); d < middleware.DefaultKeepFor-time.Hour || d > middleware.DefaultKeepFor+time.Hour {
		t.Errorf("keep_until %s is not about now + %s", keep, middleware.DefaultKeepFor)
	}
}

// When the first of concurrent duplicates fails, a waiting one takes over and handles it.
func TestInboxConcurrentDuplicateTakesOverAfterRollback(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.inbox(nil)
	sub := newTestSub()
	var calls atomic.Int32
	g := newGate()
	defer g.open() // also when the test fails: the first delivery must not hold its transaction
	startRouter(t, sub, "orders", func(msg *message.Message) error {
		n := calls.Add(1)
		if err := e.writeEffect(msg, int(n)); err != nil {
			return err
		}
		if n == 1 {
			close(g.entered)
			<-g.release
			return errors.New("first delivery fails")
		}
		return nil
	}, in.Middleware)

	msg := message.NewMessage(watermill.NewUUID(), nil)
	results := make(chan bool, 2)
	for range 2 {
		go func() { results <- sub.deliver(t, msg.Copy()) }()
	}
	g.waitEntered(t)
	e.waitForLockWaiters(1)
	g.open()
	r1, r2 := <-results, <-results
	if r1 == r2 {
		t.Fatalf("want one nack and one ack, got %v and %v", r1, r2)
	}
	if calls.Load() != 2 || e.effects() != 1 || e.handledMarks() != 1 {
		t.Fatalf("handler ran %d times, %d effects, %d marks; want 2, 1, 1", calls.Load(), e.effects(), e.handledMarks())
	}
	if e.count(e.cfg.QuoteIdent(e.cfg.Schema)+".effects WHERE attempt = 2") != 1 {
		t.Error("the surviving effect is not the second delivery's")
	}
}

// A handler that fails twice then succeeds: its effects exist once and nothing is left from
// the failed attempts, with the inbox alone (the broker redelivers) and with dead letters in
// either order (retried in process).
func TestInboxFailTwiceThenSucceed(t *testing.T) {
	t.Parallel()
	cases := append([]order{{"inbox alone, redelivered", nil}}, orders...)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			in := e.inbox(nil)
			mws := []message.HandlerMiddleware{in.Middleware}
			if c.mws != nil {
				mws = c.mws(in, e.deadLetterMW(nil))
			}
			sub := newTestSub()
			var calls atomic.Int32
			startRouter(t, sub, "orders", func(msg *message.Message) error {
				n := int(calls.Add(1))
				if err := e.writeEffect(msg, n); err != nil {
					return err
				}
				if n <= 2 {
					return fmt.Errorf("attempt %d fails", n)
				}
				return nil
			}, mws...)

			msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
			deliveries := sub.deliverUntilAcked(t, msg, 5)
			if c.mws == nil && deliveries != 3 {
				t.Errorf("took %d deliveries, want 3", deliveries)
			}
			if c.mws != nil && deliveries != 1 {
				t.Errorf("took %d deliveries, want 1 (retried in process)", deliveries)
			}
			if calls.Load() != 3 || e.effects() != 1 || e.handledMarks() != 1 || e.deadLetters() != 0 {
				t.Fatalf("calls %d effects %d marks %d dead letters %d; want 3 1 1 0", calls.Load(), e.effects(), e.handledMarks(), e.deadLetters())
			}
			if e.count(e.cfg.QuoteIdent(e.cfg.Schema)+".effects WHERE attempt = 3") != 1 {
				t.Error("the effect left is not the successful attempt's")
			}
			if e.count(e.table(schema.IncomingTable)) != 1 {
				t.Error("rows other than the one mark are left in the incoming table")
			}
			// A later redelivery is a duplicate.
			if !sub.deliver(t, msg.Copy()) || calls.Load() != 3 {
				t.Errorf("redelivery after success ran the handler (calls %d)", calls.Load())
			}
		})
	}
}

// Two messages with the same payload are two messages; the same UUID for two handlers (or
// consumers) is handled by each.
func TestInboxKeysOnIdentityNotPayload(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.inbox(nil)
	sub := newTestSub()
	var calls atomic.Int32
	startRouter(t, sub, "orders", func(msg *message.Message) error {
		calls.Add(1)
		return e.writeEffect(msg, 1)
	}, in.Middleware)
	for range 2 {
		if !sub.deliver(t, message.NewMessage(watermill.NewUUID(), []byte("same payload"))) {
			t.Fatal("nacked")
		}
	}
	if calls.Load() != 2 {
		t.Errorf("two messages with one payload: handler ran %d times", calls.Load())
	}
	if middleware.InboxKey("a", "h", "1") == middleware.InboxKey("b", "h", "1") ||
		middleware.InboxKey("a", "h", "1") == middleware.InboxKey("a", "h2", "1") ||
		middleware.InboxKey("a", "h", "1") != middleware.InboxKey("a", "h", "1") {
		t.Error("InboxKey does not separate consumers and handlers, or is not deterministic")
	}
}

// The handler's writes, the mark and the messages it publishes through the outbox publisher
// (built on the pool) commit together, or not at all.
func TestInboxHandlerWritesAndOutboxPublishInOneTransaction(t *testing.T) {
	t.Parallel()
	for _, std := range []bool{false, true} {
		t.Run(fmt.Sprintf("database/sql=%v", std), func(t *testing.T) {
			t.Parallel()
			var beginner wmsql.ContextExecutor = wmsql.BeginnerFromPgx(testdb.Pool(t))
			var opts []envOption
			if std {
				beginner = wmsql.BeginnerFromStdSQL(testdb.StdDB(t))
				opts = append(opts, onDriver(func(t *testing.T, _ database.Driver) database.Driver { return testdb.StdDriver(t) }))
			}
			e := newEnv(t, opts...)
			outbox, err := publisher.NewPublisher(beginner, publisher.Config{Schema: e.cfg}, nil)
			if err != nil {
				t.Fatal(err)
			}
			in := e.inbox(nil)
			sub := newTestSub()
			startRouter(t, sub, "orders", func(msg *message.Message) error {
				if err := e.writeEffect(msg, 1); err != nil {
					return err
				}
				out := message.NewMessage(watermill.NewUUID(), []byte("invoice"))
				if err := middleware.Publish(msg.Context(), outbox, "invoices", out); err != nil {
					return err
				}
				if msg.Metadata.Get("fail") != "" {
					return errors.New("fails after writing and publishing")
				}
				return nil
			}, in.Middleware)

			failing := message.NewMessage(watermill.NewUUID(), nil)
			failing.Metadata.Set("fail", "yes")
			if sub.deliver(t, failing) {
				t.Fatal("failing handler acked")
			}
			if e.effects() != 0 || e.count(e.table(schema.OutgoingTable)) != 0 || e.handledMarks() != 0 {
				t.Fatalf("a failed handler left effects %d, outgoing %d, marks %d", e.effects(), e.count(e.table(schema.OutgoingTable)), e.handledMarks())
			}
			if !sub.deliver(t, message.NewMessage(watermill.NewUUID(), nil)) {
				t.Fatal("nacked")
			}
			if e.effects() != 1 || e.count(e.table(schema.OutgoingTable)+" WHERE destination = 'invoices'") != 1 || e.handledMarks() != 1 {
				t.Fatalf("effects %d, outgoing %d, marks %d; want 1 each", e.effects(), e.count(e.table(schema.OutgoingTable)), e.handledMarks())
			}
		})
	}
}

// Messages the handler returns are published inside the transaction when Publisher is set.
func TestInboxPublishesProducedMessagesInTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	outbox, err := publisher.NewPublisher(wmsql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{Schema: e.cfg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	in := e.inbox(func(c *middleware.InboxConfig) { c.Publisher = outbox })
	sub := newTestSub()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddHandler("handler", "orders", sub, "shipments", failingPublisher{}, func(msg *message.Message) ([]*message.Message, error) {
		if err := e.writeEffect(msg, 1); err != nil {
			return nil, err
		}
		return []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("ship"))}, nil
	}).AddMiddleware(in.Middleware)
	runRouter(t, r)

	if !sub.deliver(t, message.NewMessage(watermill.NewUUID(), nil)) {
		t.Fatal("nacked: the produced message went to the router's publisher")
	}
	if e.effects() != 1 || e.count(e.table(schema.OutgoingTable)+" WHERE destination = 'shipments'") != 1 {
		t.Fatalf("effects %d outgoing %d", e.effects(), e.count(e.table(schema.OutgoingTable)))
	}
}

type failingPublisher struct{}

func (failingPublisher) Publish(string, ...*message.Message) error {
	return errors.New("the router's publisher must not be used")
}
func (failingPublisher) Close() error { return nil }

// insertIncoming writes an incoming row as the subscriber sees it when it delivers it.
func (e *env) insertIncoming(topic string, msg *message.Message, owner int32) row.Envelope {
	e.t.Helper()
	env, err := row.FromMessage(topic, msg, row.Defaults{})
	if err != nil {
		e.t.Fatal(err)
	}
	env.Status, env.OwnerID = schema.StatusIncoming, owner
	args := env.IncomingArgs(nil, uuidText{})
	cols := strings.Join(row.IncomingColumns, ", ")
	ph := make([]string, len(args))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	if _, err := e.db.Exec(context.Background(), fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", e.table(schema.IncomingTable), cols, strings.Join(ph, ", ")), args...); err != nil {
		e.t.Fatal(err)
	}
	return env
}

type uuidText struct{}

func (uuidText) Arg(u uuid.UUID) any   { return u.String() }
func (uuidText) Dest(u *uuid.UUID) any { return u }

// A message delivered by this library's subscriber (metadata.EnvelopeID, its row of the
// topic Incoming) marks its own row instead of inserting one.
func TestInboxMarksTheSubscribersOwnRow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.inbox(func(c *middleware.InboxConfig) { c.KeepFor = time.Hour })
	sub := newTestSub()
	var calls atomic.Int32
	startRouter(t, sub, "local-orders", func(msg *message.Message) error {
		calls.Add(1)
		return e.writeEffect(msg, 1)
	}, in.Middleware)

	orig := message.NewMessage(watermill.NewUUID(), []byte("payload"))
	env := e.insertIncoming("local-orders", orig, 7)
	delivered, err := env.ToMessage() // what the subscriber delivers
	if err != nil {
		t.Fatal(err)
	}
	if !sub.deliver(t, delivered) {
		t.Fatal("nacked")
	}
	var status string
	var owner int32
	var body []byte
	var keep time.Time
	err = database.QueryRow(context.Background(), e.db, `SELECT status, owner_id, body, keep_until FROM `+e.table(schema.IncomingTable)+` WHERE id = $1`,
		[]any{env.ID.String()}, &status, &owner, &body, &keep)
	if err != nil {
		t.Fatal(err)
	}
	if status != "Handled" || owner != 0 || len(body) != 0 || time.Until(keep) < 59*time.Minute || time.Until(keep) > 61*time.Minute {
		t.Errorf("own row: status %q owner %d body %q keep_until %s", status, owner, body, keep)
	}
	if n := e.count(e.table(schema.IncomingTable)); n != 1 {
		t.Errorf("%d incoming rows, want only the subscriber's own", n)
	}
	// Delivered again (e.g. recovered after a crash before the ack): a duplicate.
	again, _ := env.ToMessage()
	if !sub.deliver(t, again) || calls.Load() != 1 || e.effects() != 1 {
		t.Errorf("redelivery of the own row: calls %d effects %d", calls.Load(), e.effects())
	}

	// An envelope id of no row of this topic (the metadata came from elsewhere, e.g. a
	// relayed message): a keyed mark.
	other := message.NewMessage(watermill.NewUUID(), nil)
	other.Metadata.Set(metadata.EnvelopeID, uuid.NewString())
	if !sub.deliver(t, other) {
		t.Fatal("nacked")
	}
	if e.count(e.table(schema.IncomingTable)+" WHERE id = $1", middleware.InboxKey("test-consumer", "handler", other.UUID).String()) != 1 {
		t.Error("no keyed mark for a message whose envelope id names no row of the topic")
	}
}

// The inbox deletes no mark: the agent's Handled cleanup deletes the expired ones, in
// bounded batches, and touches nothing else; a message whose mark expired and was deleted is
// handled again.
func TestAgentCleanupDeletesExpiredMarks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, noHandledCleanup)
	inc := e.table(schema.IncomingTable)
	e.exec(`INSERT INTO %s (id, status, owner_id, body, message_type, keep_until)
SELECT gen_random_uuid(), 'Handled', 0, '', 't', now() - interval '1 minute' FROM generate_series(1, 2500)`, inc)
	e.exec(`INSERT INTO %s (id, status, owner_id, body, message_type, keep_until)
SELECT gen_random_uuid(), 'Handled', 0, '', 't', now() + interval '1 hour' FROM generate_series(1, 10)`, inc)
	e.exec(`INSERT INTO %s (id, status, owner_id, body, message_type, keep_until, received_at)
VALUES (gen_random_uuid(), 'Incoming', 0, '', 't', now() - interval '1 hour', 'q')`, inc)

	if n := e.deleteExpiredHandled(2500); n != 2500 {
		t.Fatalf("the agent deleted %d expired marks, want 2500", n)
	}
	if e.count(inc) != 11 || e.count(inc+" WHERE status = 'Incoming'") != 1 {
		t.Fatalf("left %d rows, want the 10 live marks and the Incoming row", e.count(inc))
	}

	// A mark the inbox wrote, once expired, goes the same way.
	e.exec(`DELETE FROM %s`, inc)
	in := e.inbox(func(c *middleware.InboxConfig) { c.KeepFor = time.Millisecond })
	sub := newTestSub()
	var calls atomic.Int32
	startRouter(t, sub, "orders", func(*message.Message) error {
		calls.Add(1)
		return nil
	}, in.Middleware)
	msg := message.NewMessage(watermill.NewUUID(), nil)
	if !sub.deliver(t, msg.Copy()) || e.handledMarks() != 1 {
		t.Fatalf("first delivery: %d marks", e.handledMarks())
	}
	if n := e.deleteExpiredHandled(1); n != 1 {
		t.Fatalf("the agent deleted %d expired marks, want the inbox's", n)
	}
	if !sub.deliver(t, msg.Copy()) || calls.Load() != 2 {
		t.Errorf("a message whose mark was deleted was not handled again (calls %d)", calls.Load())
	}
}

// deleteExpiredHandled runs the agent's Handled cleanup until want marks are deleted: a pass
// deletes nothing while another agent of the database holds the cleanup lock, and the mark
// of a KeepFor of 1ms expires on the database clock. It returns how many were deleted.
func (e *env) deleteExpiredHandled(want int64) int64 {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var total int64
	for total < want && time.Now().Before(deadline) {
		n, err := e.agent.DeleteExpiredHandled(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		total += n
		if n == 0 {
			time.Sleep(5 * time.Millisecond) // polling for a state (the lock free, the mark expired), not a synchronisation by time
		}
	}
	return total
}

func TestInboxTransactionAccessors(t *testing.T) {
	t.Parallel()
	if _, ok := middleware.TxFromContext(context.Background()); ok {
		t.Error("TxFromContext outside an inbox")
	}
	if _, ok := middleware.ExecutorFromContext(context.Background()); ok {
		t.Error("ExecutorFromContext outside an inbox")
	}
	if err := middleware.Publish(context.Background(), failingPublisher{}, "t", message.NewMessage("1", nil)); !errors.Is(err, middleware.ErrNoTransaction) {
		t.Errorf("Publish outside an inbox: %v", err)
	}

	e := newEnv(t)
	in := e.inbox(nil)
	sub := newTestSub()
	startRouter(t, sub, "orders", func(msg *message.Message) error {
		tx, _ := middleware.TxFromContext(msg.Context())
		if err := tx.Commit(msg.Context()); !errors.Is(err, middleware.ErrTxOwnedByInbox) {
			return fmt.Errorf("Commit: %v", err)
		}
		if err := tx.Rollback(msg.Context()); !errors.Is(err, middleware.ErrTxOwnedByInbox) {
			return fmt.Errorf("Rollback: %v", err)
		}
		exec, ok := middleware.ExecutorFromContext(msg.Context())
		if !ok {
			return errors.New("no executor")
		}
		if _, err := exec.ExecContext(msg.Context(), fmt.Sprintf(`INSERT INTO %s.effects VALUES ($1, 1)`, e.cfg.QuoteIdent(e.cfg.Schema)), msg.UUID); err != nil {
			return err
		}
		if ptx, ok := publisher.TxFromContext(msg.Context()); !ok || ptx == nil {
			return errors.New("the publisher does not see the inbox transaction")
		}
		return nil
	}, in.Middleware)
	if !sub.deliver(t, message.NewMessage(watermill.NewUUID(), nil)) || e.effects() != 1 {
		t.Fatalf("effects %d", e.effects())
	}
}

func TestInboxConfigErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for name, c := range map[string]struct {
		agent  *durability.Agent
		config middleware.InboxConfig
	}{
		"no agent":       {nil, middleware.InboxConfig{ConsumerName: "c"}},
		"no consumer":    {e.agent, middleware.InboxConfig{}},
		"keep too short": {e.agent, middleware.InboxConfig{ConsumerName: "c", KeepFor: time.Microsecond}},
	} {
		if _, err := middleware.NewInbox(c.agent, c.config, nil); !errors.Is(err, middleware.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	for name, c := range map[string]struct {
		agent  *durability.Agent
		config middleware.DeadLetterConfig
	}{
		"no agent":          {nil, middleware.DeadLetterConfig{}},
		"bad attempts":      {e.agent, middleware.DeadLetterConfig{MaxAttempts: -1}},
		"bad multiplier":    {e.agent, middleware.DeadLetterConfig{Multiplier: 0.5}},
		"negative interval": {e.agent, middleware.DeadLetterConfig{MaxInterval: -time.Second}},
	} {
		if _, err := middleware.NewDeadLetter(c.agent, c.config, nil); !errors.Is(err, middleware.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	_, err := middleware.NewInbox(nil, middleware.InboxConfig{ConsumerName: "c"}, nil)
	if err == nil || !strings.Contains(err.Error(), "jasper.NewRuntime") || !strings.Contains(err.Error(), "durability.NewAgent") {
		t.Errorf("nil agent: %v, want the ways to build one", err)
	}
}

// Missing tables give an error naming them; the message is nacked, nothing is lost.
func TestInboxMissingTables(t *testing.T) {
	t.Parallel()
	db := testdb.PgxDriver(t)
	agent := startAgent(t, db, durability.Config{Schema: schema.Config{Schema: testdb.Schema(t)}, DisableNotify: true})
	in, err := middleware.NewInbox(agent, middleware.InboxConfig{ConsumerName: "c"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = in.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, nil })(message.NewMessage("1", nil))
	if err == nil || !strings.Contains(err.Error(), "jasper_incoming_envelopes") || !strings.Contains(err.Error(), "schema migrate") {
		t.Errorf("missing tables: %v", err)
	}
	dl, err := middleware.NewDeadLetter(agent, middleware.DeadLetterConfig{MaxAttempts: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dl.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, errors.New("fails") })(message.NewMessage("1", nil))
	if err == nil || !strings.Contains(err.Error(), "schema migrate") {
		t.Errorf("missing tables: %v", err)
	}
}
