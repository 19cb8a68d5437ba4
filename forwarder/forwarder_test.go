package forwarder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/fault/faulttest"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

func TestForwardsCommittedEnvelopes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pubsub := goChannel(t)
	const topic = "orders"
	msgs := newMessages(5, "order")
	for i, m := range msgs {
		m.Metadata.Set("tenant", fmt.Sprint(i))
		m.Metadata.Set(metadata.CorrelationID, "corr-"+fmt.Sprint(i))
	}
	msgs[0].Payload = nil // an empty payload round-trips too
	c := collect(t, pubsub, topic, len(msgs))

	// A poll interval longer than the test: delivery relies on the notification.
	f := e.forwarder(Config{Publisher: pubsub, PollInterval: time.Hour})
	start(t, f)
	e.insert(topic, msgs...)
	c.wait(t, "forwarded messages")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	for _, want := range msgs {
		got := c.byUUID[want.UUID]
		if len(got) != 1 {
			t.Fatalf("message %s received %d times", want.UUID, len(got))
		}
		m := got[0]
		if !bytes.Equal(m.Payload, want.Payload) {
			t.Errorf("payload %q, want %q", m.Payload, want.Payload)
		}
		for k, v := range want.Metadata {
			if m.Metadata.Get(k) != v {
				t.Errorf("metadata %s = %q, want %q", k, m.Metadata.Get(k), v)
			}
		}
		if m.Metadata.Get(metadata.Destination) != topic {
			t.Errorf("metadata %s = %q, want %q", metadata.Destination, m.Metadata.Get(metadata.Destination), topic)
		}
		if m.Metadata.Get(metadata.EnvelopeID) != row.EnvelopeID(topic, want.UUID).String() {
			t.Errorf("metadata %s = %q", metadata.EnvelopeID, m.Metadata.Get(metadata.EnvelopeID))
		}
	}
	if n := e.outgoing(); n != 0 {
		t.Fatalf("%d outgoing rows left after delivery", n)
	}
	st := f.Stats()
	if st.Claimed != 5 || st.Sent != 5 || st.Failed != 0 || st.Expired != 0 || st.DeadLettered != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Without notifications (the agent's LISTEN connection is off) the forwarder polls.
func TestPollingWithoutNotify(t *testing.T) {
	t.Parallel()
	e := newEnv(t, noNotify)
	pubsub := goChannel(t)
	c := collect(t, pubsub, "t", 3)
	f := e.forwarder(Config{Publisher: pubsub, PollInterval: 20 * time.Millisecond})
	start(t, f)
	e.insert("t", newMessages(3, "p")...)
	c.wait(t, "polled messages")
}

// Two forwarders on separate nodes share one table: every envelope is published once.
func TestTwoForwardersDeliverExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pubsub := goChannel(t)
	const n = 10000
	const topic = "events"
	msgs := newMessages(n, "e")
	e.insert(topic, msgs...) // a backlog before they start
	c := collect(t, pubsub, topic, n)
	rec := newRecorder(pubsub)

	var forwarders []*Forwarder
	for _, agent := range []*durability.Agent{e.agent, startAgent(t, e.db, e.schema)} {
		f, err := NewForwarder(agent, Config{Publisher: rec, BatchSize: 200}, nil)
		if err != nil {
			t.Fatal(err)
		}
		forwarders = append(forwarders, f)
	}
	for _, f := range forwarders {
		start(t, f)
	}
	c.wait(t, "10,000 envelopes through two forwarders")
	var claimed int64
	for _, f := range forwarders {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		st := f.Stats()
		t.Logf("forwarder stats %+v", st)
		claimed += st.Claimed
	}
	if claimed != n {
		t.Errorf("claimed %d envelopes in total, want %d", claimed, n)
	}
	for _, m := range msgs {
		if got := rec.publishedCount(m.UUID); got != 1 {
			t.Fatalf("message %s published %d times", m.UUID, got)
		}
	}
	c.mu.Lock()
	total := c.total
	c.mu.Unlock()
	if total != n {
		t.Fatalf("subscriber received %d messages, want %d", total, n)
	}
	if left := e.outgoing(); left != 0 {
		t.Fatalf("%d rows left", left)
	}
}

// A destination whose publishes always fail is paused without delaying another one; once
// it has failed MaxAttempts times its envelopes are in the dead letters, and only they are.
func TestFailingDestinationDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pubsub := goChannel(t)
	rec := newRecorder(pubsub)
	rec.fail["bad"] = errBroken
	bad := newMessages(3, "bad")
	good := newMessages(300, "good")
	c := collect(t, pubsub, "good", len(good))

	// Phase 1: a pause far longer than the test, so "bad" stays paused once it breaks.
	f1 := e.forwarder(Config{
		Publisher: rec, BatchSize: 50,
		CircuitBreakAfter: 3, CircuitPause: time.Hour, MaxAttempts: 3,
	})
	pausedCh := make(chan string, 10)
	f1.onPause = func(d string) { pausedCh <- d }
	start(t, f1)

	e.insert("bad", bad...)
	select {
	case d := <-pausedCh:
		if d != "bad" {
			t.Fatalf("paused destination %q, want bad", d)
		}
	case <-time.After(testTimeout):
		t.Fatal("destination bad was not paused")
	}
	attemptsWhenPaused := rec.attemptsOf("bad")

	e.insert("good", good...)
	c.wait(t, "healthy destination while the failing one is paused")
	if got := rec.attemptsOf("bad"); got != attemptsWhenPaused {
		t.Fatalf("bad was tried %d more times while paused", got-attemptsWhenPaused)
	}
	if !f1.breaker.paused("bad") {
		t.Fatal("bad is not paused any more")
	}
	if err := f1.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.count(schema.OutgoingTable, "owner_id <> 0"); n != 0 {
		t.Fatalf("%d envelopes still owned after Close", n)
	}

	// Phase 2: short pauses, so the bad envelopes reach MaxAttempts quickly.
	f2 := e.forwarder(Config{
		Publisher: rec, BatchSize: 50,
		CircuitBreakAfter: 3, CircuitPause: time.Millisecond, MaxCircuitPause: 5 * time.Millisecond,
		MaxAttempts: 3, PollInterval: 10 * time.Millisecond,
	})
	dead := deadLettered(f2)
	start(t, f2)
	waitDeadLettered(t, dead, len(bad), "bad envelopes after MaxAttempts")
	if err := f2.Close(); err != nil {
		t.Fatal(err)
	}

	if n := e.outgoing(); n != 0 {
		t.Fatalf("%d outgoing rows left", n)
	}
	if n := e.deadLetters(); n != len(bad) {
		t.Fatalf("%d dead letters, want %d", n, len(bad))
	}
	rows, err := e.db.Query(context.Background(), fmt.Sprintf(
		`SELECT id, message_uuid, received_at, attempts, explanation, exception_type, exception_message, exception_text, message_type FROM %s`,
		e.schema.Qualified(schema.DeadLetterTable)))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	badIDs := map[string]bool{}
	for _, m := range bad {
		badIDs[m.UUID] = true
	}
	for rows.Next() {
		var id uuid.UUID
		var muuid, receivedAt, explanation, typ, msg, text, mtype string
		var attempts int
		if err := rows.Scan(&id, &muuid, &receivedAt, &attempts, &explanation, &typ, &msg, &text, &mtype); err != nil {
			t.Fatal(err)
		}
		if !badIDs[muuid] || receivedAt != "bad" {
			t.Errorf("unexpected dead letter %s (uuid %s, destination %s)", id, muuid, receivedAt)
		}
		if attempts != 3 {
			t.Errorf("dead letter attempts %d, want 3", attempts)
		}
		if !strings.Contains(explanation, "3 times") || typ != "*errors.errorString" ||
			!strings.Contains(msg, errBroken.Error()) || !strings.Contains(text, "*fmt.wrapError") || mtype == "" {
			t.Errorf("dead letter fields: explanation %q type %q message %q text %q message_type %q", explanation, typ, msg, text, mtype)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// Attempts stayed low: the circuit let one probe at a time through.
	t.Logf("bad destination tried %d times for %d envelopes; phase 2 stats %+v", rec.attemptsOf("bad"), len(bad), f2.Stats())
}

func TestExpiredEnvelopeIsDiscarded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pubsub := goChannel(t)
	rec := newRecorder(pubsub)
	expired := message.NewMessage(watermill.NewUUID(), []byte("too late"))
	expired.Metadata.Set(metadata.DeliverBy, time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano))
	fresh := message.NewMessage(watermill.NewUUID(), []byte("in time"))
	fresh.Metadata.Set(metadata.DeliverBy, time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano))
	c := collect(t, pubsub, "t", 1)

	// Both rows in one statement: one claim takes both, so once the fresh one arrives the
	// expired one has been judged.
	e.insert("t", expired, fresh)
	f := e.forwarder(Config{Publisher: rec})
	start(t, f)
	c.wait(t, "fresh message")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := rec.publishedCount(expired.UUID); n != 0 {
		t.Fatalf("expired message published %d times", n)
	}
	if st := f.Stats(); st.Expired != 1 || st.Sent != 1 {
		t.Fatalf("stats %+v, want 1 expired and 1 sent", st)
	}
	if n := e.outgoing(); n != 0 {
		t.Fatalf("%d rows left", n)
	}
	if n := e.deadLetters(); n != 0 {
		t.Fatalf("%d dead letters, expired envelopes are discarded", n)
	}
}

// blockingPublisher blocks every Publish until release is closed.
type blockingPublisher struct {
	entered chan string
	release chan struct{}
	mu      sync.Mutex
	sent    map[string]bool
}

func (b *blockingPublisher) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		b.entered <- m.UUID
		<-b.release
		b.mu.Lock()
		b.sent[m.UUID] = true
		b.mu.Unlock()
	}
	return nil
}

func (b *blockingPublisher) Close() error { return nil }

func TestCloseReleasesClaimedButUnsent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pub := &blockingPublisher{entered: make(chan string, 100), release: make(chan struct{}), sent: map[string]bool{}}
	const n = 10
	e.insert("t", newMessages(n, "c")...)
	f := e.forwarder(Config{Publisher: pub, Workers: 1, PublishConcurrency: 1, BatchSize: n})
	start(t, f)
	select {
	case <-pub.entered: // the batch is locked and its first message is being published
	case <-time.After(testTimeout):
		t.Fatal("nothing published")
	}
	if free := e.lockable(); free != 0 {
		close(pub.release)
		t.Fatalf("%d rows free to lock while the batch is published, want 0 (all locked)", free)
	}
	closed := make(chan struct{})
	go func() { _ = f.Close(); close(closed) }()
	<-f.closing // Close has been requested...
	close(pub.release)
	<-closed // ...and waited for the publish in flight.

	if len(pub.sent) != 1 {
		t.Fatalf("%d messages published, want only the one in flight", len(pub.sent))
	}
	if left := e.outgoing(); left != n-1 {
		t.Fatalf("%d rows left, want %d (the sent one deleted)", left, n-1)
	}
	if owned := e.count(schema.OutgoingTable, "owner_id <> 0"); owned != 0 {
		t.Fatalf("%d rows still owned after Close", owned)
	}
	if attempted := e.count(schema.OutgoingTable, "attempts <> 0"); attempted != 0 {
		t.Fatalf("%d released rows had an attempt counted", attempted)
	}
	if st := f.Stats(); st.Sent != 1 || st.Released != n-1 {
		t.Fatalf("stats %+v", st)
	}
}

// An unreadable row and a destination that cannot be mapped go to the dead letters at once,
// without blocking the other rows.
func TestPermanentFailuresAreDeadLetteredAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pubsub := goChannel(t)
	unreadable, err := row.FromMessage("t", message.NewMessage(watermill.NewUUID(), []byte("x")), row.Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	unreadable.Headers = []byte("{not json")
	unmapped, err := row.FromMessage("nowhere", message.NewMessage(watermill.NewUUID(), []byte("y")), row.Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	good := newMessages(20, "g")
	c := collect(t, pubsub, "t", len(good))
	envs := []row.Envelope{unreadable, unmapped}
	for _, m := range good {
		r, err := row.FromMessage("t", m, row.Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, r)
	}
	e.insertEnvelopes(envs...)

	errNoRoute := errors.New("no route")
	f := e.forwarder(Config{Publisher: pubsub, Topic: func(d string) (string, error) {
		if d == "nowhere" {
			return "", errNoRoute
		}
		return d, nil
	}})
	start(t, f)
	c.wait(t, "good messages")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.outgoing(); n != 0 {
		t.Fatalf("%d rows left", n)
	}
	if n := e.count(schema.DeadLetterTable, "id = $1 AND explanation LIKE '%cannot be read%' AND attempts = 1", unreadable.ID.String()); n != 1 {
		t.Errorf("unreadable envelope not dead-lettered with an explanation")
	}
	if n := e.count(schema.DeadLetterTable, "id = $1 AND explanation LIKE '%cannot be mapped%' AND exception_message = 'no route'", unmapped.ID.String()); n != 1 {
		t.Errorf("unmapped envelope not dead-lettered with an explanation")
	}
	if st := f.Stats(); st.DeadLettered != 2 || st.Sent != int64(len(good)) {
		t.Fatalf("stats %+v", st)
	}
}

func TestRunAfterCloseAndTwice(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := e.forwarder(Config{Publisher: goChannel(t)})
	start(t, f)
	if err := f.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
	_ = f.Close()
	_ = f.Close()

	g := e.forwarder(Config{Publisher: goChannel(t)})
	_ = g.Close() // before Run: returns at once
	if err := g.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v, want ErrClosed", err)
	}
}

// Cancelling Run's context stops it; claimed rows are handed back.
func TestRunStopsOnContextCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := e.forwarder(Config{Publisher: goChannel(t)})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- f.Run(ctx) }()
	<-f.Running()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Run did not return after cancel")
	}
	_ = f.Close()
}

// A forwarder belongs to a node: without a durability agent it is refused, with one line
// saying how to build one.
func TestNewForwarderRequiresAgent(t *testing.T) {
	t.Parallel()
	_, err := NewForwarder(nil, Config{Publisher: goChannel(t)}, nil)
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("NewForwarder(nil) = %v, want ErrInvalidConfig", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "a *durability.Agent is required") || !strings.Contains(msg, "jasper.NewRuntime") ||
		!strings.Contains(msg, "durability.NewAgent") || strings.Contains(msg, "\n") {
		t.Fatalf("NewForwarder(nil) error %q does not say in one line how to get an agent", msg)
	}
}

// Run refuses to start on an agent that does not run (never started, or stopped): nobody
// would hand back what a lost claim leaves marked with the node's id. Once the agent runs,
// the same forwarder starts.
func TestRunRequiresRunningAgent(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	stopped := startAgent(t, db, cfg)
	if err := stopped.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	notStarted := newAgent(t, db, cfg)
	for name, agent := range map[string]*durability.Agent{"never started": notStarted, "stopped": stopped} {
		f, err := NewForwarder(agent, Config{Publisher: goChannel(t)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = f.Run(context.Background())
		if !errors.Is(err, durability.ErrAgentNotRunning) || !strings.Contains(err.Error(), "forwarder") {
			t.Fatalf("%s agent: Run = %v, want an error naming the forwarder and wrapping durability.ErrAgentNotRunning", name, err)
		}
		select {
		case <-f.Running():
			t.Fatalf("%s agent: Running is closed after a refused Run", name)
		default:
		}
		if name == "never started" {
			if err := agent.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			start(t, f)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	pub := goChannel(t)
	for name, c := range map[string]Config{
		"no publisher":        {},
		"negative batch":      {Publisher: pub, BatchSize: -1},
		"huge batch":          {Publisher: pub, BatchSize: maxBatchSize + 1},
		"negative workers":    {Publisher: pub, Workers: -1},
		"pause above max":     {Publisher: pub, CircuitPause: time.Minute, MaxCircuitPause: time.Second},
		"empty destination":   {Publisher: pub, Destinations: []string{""}},
		"negative attempts":   {Publisher: pub, MaxAttempts: -2},
		"negative poll":       {Publisher: pub, PollInterval: -time.Second},
		"negative breakAfter": {Publisher: pub, CircuitBreakAfter: -1},
	} {
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig", name, err)
		}
	}
	if err := (Config{Publisher: pub}).Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	c := Config{Publisher: pub, CircuitPause: time.Minute}
	c.setDefaults()
	if c.MaxCircuitPause < c.CircuitPause || c.BatchSize != DefaultBatchSize || c.Workers != DefaultWorkers ||
		c.PublishConcurrency != DefaultPublishConcurrency || c.MaxAttempts != DefaultMaxAttempts {
		t.Fatalf("defaults %+v", c)
	}
}

// listenEvents is the agent's logger: it reports when the agent listens again after its
// notification connection was lost.
type listenEvents struct{ again chan struct{} }

func (l *listenEvents) Info(msg string, _ watermill.LogFields) {
	if msg == "Listening for new envelopes again" {
		l.again <- struct{}{}
	}
}

func (l *listenEvents) Error(string, error, watermill.LogFields)         {}
func (l *listenEvents) Debug(string, watermill.LogFields)                {}
func (l *listenEvents) Trace(string, watermill.LogFields)                {}
func (l *listenEvents) With(watermill.LogFields) watermill.LoggerAdapter { return l }

// The agent's notification connection is killed: it listens again and the forwarder is
// woken by its notifications as before (the poll interval is longer than the test).
func TestListenerReconnects(t *testing.T) {
	t.Parallel()
	events := &listenEvents{again: make(chan struct{}, 10)}
	e := newEnv(t, agentLogger(events))
	pubsub := goChannel(t)
	c := collect(t, pubsub, "t", 2)
	start(t, e.forwarder(Config{Publisher: pubsub, PollInterval: time.Hour}))
	e.insert("t", newMessages(1, "before")...)
	c.waitCount(t, 1, "message before the kill")

	d := postgres.Dialect(e.schema)
	var killed bool
	// The agent's LISTEN connection ran these statements last. The timeout makes
	// pg_terminate_backend wait until the backend has exited.
	if err := database.QueryRow(context.Background(), e.db,
		`SELECT bool_and(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE query IN ($1, $2) AND pid <> pg_backend_pid()`,
		[]any{d.ListenOutgoing(), d.ListenIncoming()}, &killed); err != nil || !killed {
		t.Fatalf("kill the LISTEN connection: %v (killed %v)", err, killed)
	}
	select {
	case <-events.again:
	case <-time.After(testTimeout):
		t.Fatal("the agent did not listen again")
	}
	e.insert("t", newMessages(1, "after")...)
	c.wait(t, "message after the listener reconnected")
}

// The same relay over database/sql (pgx's stdlib driver), the agent's notifications
// included.
func TestForwardsWithDatabaseSQL(t *testing.T) {
	t.Parallel()
	_, cfg := testdb.Migrated(t)
	e := newEnvOn(t, testdb.StdDriver(t), cfg)
	pubsub := goChannel(t)
	c := collect(t, pubsub, "t", 50)
	f := e.forwarder(Config{Publisher: pubsub, PollInterval: time.Hour, BatchSize: 20})
	start(t, f)
	e.insert("t", newMessages(50, "s")...)
	c.wait(t, "messages relayed over database/sql")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.outgoing(); n != 0 {
		t.Fatalf("%d rows left", n)
	}
}

// A schema name of up to 63 bytes still gets notifications: the channel name is shortened
// (PostgreSQL rejects channel names of 64 bytes or more in pg_notify).
func TestLongSchemaNameNotifications(t *testing.T) {
	t.Parallel()
	db := testdb.PgxDriver(t)
	name := testdb.RandomName("wj_test_long_")
	name += strings.Repeat("x", schema.MaxIdentifierLength-len(name))
	t.Cleanup(func() {
		if _, err := db.Exec(context.Background(), `DROP SCHEMA IF EXISTS "`+name+`" CASCADE`); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	st, err := db.Store(schema.Config{Schema: name})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ch := st.Channels().Outgoing; len(ch) > 63 {
		t.Fatalf("channel %q is %d bytes", ch, len(ch))
	}
	e := newEnvOn(t, db, st.Schema())
	pubsub := goChannel(t)
	c := collect(t, pubsub, "t", 3)
	start(t, e.forwarder(Config{Publisher: pubsub, PollInterval: time.Hour}))
	e.insert("t", newMessages(3, "l")...) // pg_notify fails here without the shortening
	c.wait(t, "messages of a schema with a 63-byte name")
}

// While the outbox is busy the forwarder polls every ActivePollInterval, so an envelope
// committed without any notification is relayed long before the (idle) PollInterval.
func TestActivePollingWithoutNotify(t *testing.T) {
	t.Parallel()
	e := newEnv(t, noNotify)
	pubsub := goChannel(t)
	c := collect(t, pubsub, "t", 2)
	f := e.forwarder(Config{Publisher: pubsub, PollInterval: time.Hour})
	e.insert("t", newMessages(1, "first")...)
	start(t, f) // drains the backlog at start: the outbox is now busy
	c.waitCount(t, 1, "backlog at start")
	e.insert("t", newMessages(1, "second")...) // nobody listens, next idle poll in an hour
	c.wait(t, "envelope committed while busy")
}

// claimHookDB counts the lock statements of outgoing envelopes (the forwarder's claim) that
// the store runs in its transactions, and lets a test change their outcome.
type claimHookDB struct {
	database.DB
	claim  string // the lock statement of the schema
	claims atomic.Int64
	hook   func(database.Rows, error) (database.Rows, error) // nil: unchanged
}

func (c *claimHookDB) Begin(ctx context.Context) (database.Tx, error) {
	tx, err := c.DB.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return claimHookTx{Tx: tx, db: c}, nil
}

// claimHookTx is a transaction of a claimHookDB.
type claimHookTx struct {
	database.Tx
	db *claimHookDB
}

func (t claimHookTx) Query(ctx context.Context, query string, args ...any) (database.Rows, error) {
	rows, err := t.Tx.Query(ctx, query, args...)
	if query != t.db.claim {
		return rows, err
	}
	t.db.claims.Add(1)
	if t.db.hook != nil {
		return t.db.hook(rows, err)
	}
	return rows, err
}

// newClaimHookEnv is newEnv with the agent (and so its forwarders) on a claimHookDB.
func newClaimHookEnv(t *testing.T, hook func(database.Rows, error) (database.Rows, error), opts ...agentOption) (*env, *claimHookDB) {
	t.Helper()
	base, cfg := testdb.Migrated(t)
	h := &claimHookDB{DB: base, claim: postgres.Dialect(cfg).LockOutgoing(), hook: hook}
	drv, err := postgres.New(h)
	if err != nil {
		t.Fatal(err)
	}
	return newEnvOn(t, drv, cfg, opts...), h
}

// An idle forwarder queries the outbox at most once per PollInterval.
func TestIdleForwarderPollsOncePerInterval(t *testing.T) {
	t.Parallel()
	e, db := newClaimHookEnv(t, nil, noNotify)
	const interval = 100 * time.Millisecond
	start(t, e.forwarder(Config{Publisher: goChannel(t), PollInterval: interval}))
	before := db.claims.Load()
	const window = 20 * interval
	time.Sleep(window) // the quantity under test is the number of queries in an idle window
	if got, limit := db.claims.Load()-before, int64(window/interval)+2; got > limit {
		t.Fatalf("idle forwarder claimed %d times in %v, want at most %d (one per %v)", got, window, limit, interval)
	}
}

// errAnswerLost stands for a connection lost while a lock's answer was on the wire.
var errAnswerLost = errors.New("test: connection lost while reading the answer")

// closeFails is a lock's rows whose end cannot be read.
type closeFails struct{ database.Rows }

func (r closeFails) Close() error {
	_ = r.Rows.Close()
	return errAnswerLost
}

// A batch whose lock answer was lost (the forwarder never saw its rows) or only partly read
// (store.ErrStranded) is rolled back and relays nothing: its envelopes were never marked, so
// the next batch relays every one of them, each once, without the agent handing anything
// back.
func TestLostLockIsRelayedByTheNextBatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		fail func(database.Rows) (database.Rows, error)
		// read: the failed claim's rows reached the forwarder.
		read bool
	}{
		{"answer lost", func(rows database.Rows) (database.Rows, error) {
			for rows.Next() { // the rows are locked; the forwarder never sees them
			}
			_ = rows.Close()
			return nil, errAnswerLost
		}, false},
		{"rows stranded", func(rows database.Rows) (database.Rows, error) { return closeFails{rows}, nil }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var armed atomic.Bool
			e, _ := newClaimHookEnv(t, func(rows database.Rows, err error) (database.Rows, error) {
				if err != nil || !armed.CompareAndSwap(true, false) {
					return rows, err
				}
				return tc.fail(rows)
			})
			const n = 20
			msgs := newMessages(n, "lost")
			pubsub := goChannel(t)
			rec := newRecorder(pubsub)
			c := collect(t, pubsub, "t", n)
			e.insert("t", msgs...)
			armed.Store(true) // the forwarder's first lock takes them all and fails
			f := e.forwarder(Config{Publisher: rec, Workers: 1})
			start(t, f)
			c.wait(t, "envelopes of the failed claim")
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if armed.Load() {
				t.Fatal("no lock failed")
			}
			if st := f.Stats(); st.Claimed != n {
				t.Errorf("claimed %d envelopes, want %d (the failed lock's are not counted)", st.Claimed, n)
			}
			if h := e.agent.Stats().HandedBack; h != 0 {
				t.Errorf("the agent handed back %d envelopes, want none: nothing was marked", h)
			}
			for _, m := range msgs {
				if k := rec.publishedCount(m.UUID); k != 1 {
					t.Errorf("message %s published %d times, want once", m.UUID, k)
				}
			}
			if left := e.outgoing(); left != 0 {
				t.Fatalf("%d envelopes left in the outbox", left)
			}
		})
	}
}

// errPermanent is the one permanent error value of the fault vocabulary's tests: the
// forwarder's, jasperamqp's and the middleware's tests read it the same way.
var errPermanent = faulttest.Permanent

// A publish failing with a permanent error dead-letters the envelope at once: one attempt,
// whatever MaxAttempts.
func TestFaultPermanentIsDeadLetteredAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec := newRecorder(goChannel(t))
	rec.fail["never"] = errPermanent
	f := e.forwarder(Config{Publisher: rec, MaxAttempts: 10})
	dead := deadLettered(f)
	start(t, f)
	msg := newMessages(1, "never")[0]
	e.insert("never", msg)
	waitDeadLettered(t, dead, 1, "permanent failure")
	if got := rec.attemptsOf("never"); got != 1 {
		t.Fatalf("a permanently failing envelope was published %d times, want 1", got)
	}
	dl := e.deadLetter(row.EnvelopeID("never", msg.UUID))
	if dl.Attempts != 1 || !strings.Contains(dl.Explanation, "failed permanently") ||
		!strings.Contains(dl.ExceptionMessage, "the one permanent error") || dl.ExceptionType != "*errors.errorString" {
		t.Fatalf("dead letter: attempts %d, explanation %q, exception %s %q", dl.Attempts, dl.Explanation, dl.ExceptionType, dl.ExceptionMessage)
	}
	if n := e.outgoing(); n != 0 {
		t.Fatalf("%d outgoing rows left", n)
	}
	if st := f.Stats(); st.DeadLettered != 1 || st.Failed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A temporary publish error (the transport, not the message) hands the envelope back
// without counting an attempt: it is never dead-lettered, however often it fails.
func TestTemporaryPublishErrorIsNotAnAttempt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec := newRecorder(goChannel(t))
	rec.fail["flaky"] = fault.Temporary(errors.New("connection lost"))
	flakyCalls := make(chan int, 100)
	rec.onFail = func(_ string, calls int) { flakyCalls <- calls }
	f := e.forwarder(Config{
		Publisher: rec, MaxAttempts: 2,
		CircuitPause: time.Millisecond, MaxCircuitPause: time.Millisecond, PollInterval: 10 * time.Millisecond,
	})
	start(t, f)
	e.insert("flaky", newMessages(1, "flaky")...)
	for calls := 0; calls < 5; { // far more failures than MaxAttempts
		select {
		case calls = <-flakyCalls:
		case <-time.After(testTimeout):
			t.Fatal("flaky destination was not retried")
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.deadLetters(); n != 0 {
		t.Fatalf("%d dead letters: a temporarily failing envelope was dead-lettered", n)
	}
	if n := e.count(schema.OutgoingTable, "COALESCE(attempts, 0) = 0"); n != 1 {
		t.Fatalf("temporary failures were counted as attempts (rows with 0 attempts: %d, want 1)", n)
	}
}

// A destination the broker refuses for good (permanent errors, as jasperamqp reports a
// missing exchange) drains at full speed: every envelope is dead-lettered at once, and the
// refusals never pause the destination, even with a breaker that opens after one failure
// for a minute (with the refusals counted as failures, one envelope a minute would be
// dead-lettered). The other destination is relayed meanwhile.
func TestDestinationRefusedForeverDrainsAtFullSpeed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec := newRecorder(goChannel(t))
	rec.fail["refused"] = errPermanent
	f := e.forwarder(Config{Publisher: rec, MaxAttempts: 5, CircuitBreakAfter: 1, CircuitPause: time.Minute, MaxCircuitPause: time.Minute, BatchSize: 50})
	dead := deadLettered(f)
	const n = 500
	e.insert("refused", newMessages(n, "refused")...)
	e.insert("fine", newMessages(20, "fine")...)
	began := time.Now()
	start(t, f)
	waitDeadLettered(t, dead, n, "destination refused forever")
	t.Logf("%d envelopes of a destination refused forever dead-lettered in %s", n, time.Since(began).Round(time.Millisecond))
	for _, s := range f.DestinationStats() {
		if s.Destination == "refused" && (s.Circuit != CircuitClosed || s.DeadLettered != n || s.Failed != n) {
			t.Fatalf("refused destination: %+v; want %d failed and dead-lettered, circuit closed", s, n)
		}
	}
	if got := rec.attemptsOf("refused"); got != n {
		t.Fatalf("the refused destination got %d publishes, want %d (one per envelope)", got, n)
	}
}
