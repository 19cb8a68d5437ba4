package jasper_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// The coexistence contract with .NET Jasper 2.0 (docs/coexistence.md), seen through .NET's
// eyes: with Compatibility Jasper2, every kind of row this library writes (outbox envelopes,
// scheduled sends, durable local queue rows, delayed and retried ones, inbox marks of both
// kinds, dead letters of the forwarder and of the middleware) is written, then Jasper 2.0's
// own PostgreSQL statements (docs/coexistence.md lists them) run against the shared tables.
// In the other direction, rows written the way Jasper 2.0 writes them are relayed and
// dead-lettered by this library when they are its to deliver, and left alone otherwise.

// refusingSink is the broker of the test: it keeps what it receives in a memorySink and
// refuses, permanently, every message to one destination.
type refusingSink struct {
	memorySink
	refused string
}

func (s *refusingSink) Publish(topic string, msgs ...*message.Message) error {
	if topic == s.refused {
		return fault.Permanent(errors.New("the broker refuses this queue"))
	}
	return s.memorySink.Publish(topic, msgs...)
}

func TestJasper2RowsAsDotNetReadsThem(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.MigratedAs(t, schema.Jasper2)
	pool := testdb.Pool(t)
	jin, jout, dlq := cfg.Qualified(schema.IncomingTable), cfg.Qualified(schema.OutgoingTable), cfg.Qualified(schema.DeadLetterTable)
	goIn := cfg.Qualified(schema.GoIncomingTable)

	// A .NET node's rows, as Jasper 2.0 writes them: an incoming message of its local queue,
	// a due scheduled one, and outgoing envelopes to TCP, to a RabbitMQ queue and to a
	// RabbitMQ queue the broker refuses, all unowned (their node died).
	dotnetIn, dotnetScheduled, dotnetTCP, dotnetRabbit, dotnetRefused := uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New()
	execSQL(t, pool, fmt.Sprintf(`INSERT INTO %s (id, status, owner_id, execution_time, attempts, body, message_type, content_type, ack_requested, received_at)
VALUES ($1, 'Incoming', 0, NULL, 0, '\x7b7d', 'Payment', 'application/json', false, 'local://durable/payments'),
       ($2, 'Scheduled', 0, now() - interval '1 second', 0, '\x7b7d', 'Payment', 'application/json', false, 'local://durable/payments')`, jin),
		dotnetIn, dotnetScheduled)
	execSQL(t, pool, fmt.Sprintf(`INSERT INTO %s (id, owner_id, destination, attempts, body, message_type, content_type, ack_requested)
VALUES ($1, 0, 'tcp://localhost:2222/', 0, '\x7b7d', 'Order', 'application/json', false),
       ($2, 0, 'rabbitmq://queue/dotnet-orders', 0, '\x7b7d', 'Order', 'application/json', false),
       ($3, 0, 'rabbitmq://queue/refused', 0, '\x7b7d', 'Order', 'application/json', false)`, jout),
		dotnetTCP, dotnetRabbit, dotnetRefused)

	sink := &refusingSink{memorySink: memorySink{copies: map[string]int{}}, refused: "rabbitmq://queue/refused"}
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema:        cfg.Schema,
		Compatibility: schema.Jasper2,
		Forwarders: []forwarder.Config{{
			Publisher: sink, MaxAttempts: 1,
			// Not rabbitmq://queue/parked: those envelopes stay for .NET's eyes below.
			Destinations: []string{"rabbitmq://queue/orders", "rabbitmq://queue/dotnet-*", "rabbitmq://queue/refused"},
		}},
		Publisher: publisher.Config{DestinationURI: func(topic string) (string, error) { return "rabbitmq://queue/" + topic, nil }},
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)

	// The outbox: plain topics mapped to URIs, relayed or parked, and a scheduled send.
	if err := rt.Publisher().Publish("orders", message.NewMessage("go-order", []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
	if err := rt.Publisher().Publish("parked", message.NewMessage("go-parked", []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
	later := message.NewMessage("go-scheduled-send", []byte(`{}`))
	delay.Message(later, delay.For(time.Hour))
	if err := rt.Publisher().Publish("orders", later); err != nil {
		t.Fatal(err)
	}
	if err := rt.Publisher().Publish("not a uri", message.NewMessage("go-bad", nil)); !errors.Is(err, publisher.ErrInvalidTopic) {
		t.Errorf("a destination that is no URI: %v; want ErrInvalidTopic", err)
	}

	// The durable local queue, consumed behind the inbox and the dead-letter middleware: one
	// message handled (its row becomes a Handled mark), one failing (dead-lettered), one
	// nacked once (retried: Scheduled), one delayed for an hour; and a message from another
	// transport (a keyed inbox mark).
	queue := localQueue(t, rt, pool)
	inbox, err := rt.Inbox(middleware.InboxConfig{ConsumerName: "coexistence"})
	if err != nil {
		t.Fatal(err)
	}
	deadLetters, err := rt.DeadLetter(middleware.DeadLetterConfig{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := rt.Subscriber(subscriber.Config{NackBackoff: time.Hour, MaxNackBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	external := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	defer external.Close()
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 16)
	handler := func(msg *message.Message) error {
		if msg.UUID == "go-local-fail" {
			return fault.Permanent(errors.New("the handler gives up"))
		}
		handled <- msg.UUID
		return nil
	}
	router.AddConsumerHandler("local", "local-orders", sub, handler).AddMiddleware(deadLetters.Middleware, inbox.Middleware)
	router.AddConsumerHandler("external", "external-orders", external, handler).AddMiddleware(deadLetters.Middleware, inbox.Middleware)
	nackSub, err := rt.Subscriber(subscriber.Config{NackBackoff: time.Hour, MaxNackBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runCtx := runRouter(t, router)
	delayed := message.NewMessage("go-local-delayed", []byte(`{}`))
	delay.Message(delayed, delay.For(time.Hour))
	for _, m := range []*message.Message{message.NewMessage("go-local-ok", []byte(`{}`)), message.NewMessage("go-local-fail", []byte(`{}`)), delayed} {
		if err := queue.Publish("local-orders", m); err != nil {
			t.Fatal(err)
		}
	}
	if err := queue.Publish("local-retried", message.NewMessage("go-local-nacked", []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
	nacks, err := nackSub.Subscribe(runCtx, "local-retried")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-nacks:
		m.Nack()
	case <-time.After(crashTimeout):
		t.Fatal("the local queue delivered nothing to nack")
	}
	if err := external.Publish("external-orders", message.NewMessage("go-external", []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case id := <-handled:
			got[id] = true
		case <-time.After(crashTimeout):
			t.Fatalf("handled %v; want go-local-ok and go-external", got)
		}
	}
	select {
	case <-sink.reached(2):
	case <-time.After(crashTimeout):
		t.Fatal("the forwarder did not relay go-order and the .NET envelope to rabbitmq://queue/dotnet-orders")
	}
	// Everything is written once the two dead letters, the Handled mark of go-local-ok and the
	// retried go-local-nacked are in the database.
	awaitRows(t, pool, fmt.Sprintf("SELECT count(*) FROM %s", dlq), 2)
	awaitRows(t, pool, fmt.Sprintf("SELECT count(*) FROM %s WHERE status = 'Handled'", goIn), 2)
	awaitRows(t, pool, fmt.Sprintf("SELECT count(*) FROM %s WHERE message_uuid = 'go-local-nacked' AND status = 'Scheduled'", goIn), 1)

	// .NET's eyes. Counts (Enum.Parse<EnvelopeStatus> of every status).
	for _, st := range strings.Fields(queryStrings(t, pool, fmt.Sprintf("SELECT status FROM %s GROUP BY status", jin))) {
		if !slices.Contains([]string{"Incoming", "Scheduled", "Outgoing"}, st) {
			t.Errorf("status %q in %s: Jasper 2.0 cannot parse it", st, schema.IncomingTable)
		}
	}
	// Incoming recovery and scheduled jobs see only .NET's rows, which this library left as
	// they were (unowned, not released, not delivered).
	if got := queryStrings(t, pool, fmt.Sprintf("SELECT id::text FROM %s WHERE owner_id = 0 AND status = 'Incoming' LIMIT 100", jin)); got != dotnetIn.String() {
		t.Errorf("Jasper's incoming recovery reads %q; want only the .NET row %s", got, dotnetIn)
	}
	if got := queryStrings(t, pool, fmt.Sprintf("SELECT id::text FROM %s WHERE status = 'Scheduled' AND execution_time <= now() LIMIT 100", jin)); got != dotnetScheduled.String() {
		t.Errorf("Jasper's scheduled job reads %q; want only the .NET row %s", got, dotnetScheduled)
	}
	// Outgoing recovery: every unowned destination is a URI (ToUri); the .NET envelope to TCP,
	// which no forwarder of this library delivers, is still there and unowned.
	for _, d := range strings.Fields(queryStrings(t, pool, fmt.Sprintf("SELECT DISTINCT destination FROM %s WHERE owner_id = 0", jout))) {
		if u, err := url.Parse(d); err != nil || u.Scheme == "" || u.Host == "" {
			t.Errorf("destination %q of the outbox is no URI for Jasper's ToUri (%v)", d, err)
		}
	}
	if got := queryStrings(t, pool, fmt.Sprintf("SELECT destination || '/' || owner_id FROM %s WHERE id = ANY($1) ORDER BY destination", jout),
		[]uuid.UUID{dotnetTCP, dotnetRabbit, dotnetRefused}); got != "tcp://localhost:2222//0" {
		t.Errorf(".NET's outgoing envelopes left: %q; want only the TCP one, unowned (relayed: dotnet-orders, dead-lettered: refused)", got)
	}
	// Columns Jasper 2.0 reads as non-null are filled on every row this library wrote.
	if n := count(t, pool, fmt.Sprintf(`SELECT count(*) FROM %s WHERE id <> ALL($1) AND (destination IS NULL OR attempts IS NULL
  OR message_type IS NULL OR content_type IS NULL OR ack_requested IS NULL)`, jout), []uuid.UUID{dotnetTCP}); n != 0 {
		t.Errorf("%d outgoing envelopes of this library hold a NULL that Jasper 2.0 reads as non-null", n)
	}
	if n := count(t, pool, fmt.Sprintf("SELECT count(*) FROM %s WHERE message_uuid = 'go-parked'", jout)); n != 1 {
		t.Errorf("the parked outgoing envelope is there %d times; want 1", n)
	}
	if n := count(t, pool, fmt.Sprintf(`SELECT count(*) FROM %s WHERE explanation IS NULL OR exception_text IS NULL
  OR exception_type IS NULL OR exception_message IS NULL OR message_type IS NULL`, dlq)); n != 0 {
		t.Errorf("%d dead letters hold a NULL that Jasper 2.0 reads as non-null", n)
	}
	// This library's own incoming rows are all in its table: the scheduled send, the delayed
	// and the retried local messages, and both inbox marks.
	if got := queryStrings(t, pool, fmt.Sprintf("SELECT status || ':' || COALESCE(message_uuid, message_type) FROM %s ORDER BY 1", goIn)); !strings.Contains(got, "Scheduled:go-local-delayed") ||
		!strings.Contains(got, "Scheduled:go-local-nacked") || !strings.Contains(got, "Scheduled:scheduled-envelope") && !strings.Contains(got, "Scheduled:go-scheduled-send") {
		t.Errorf("%s holds %q; want the delayed, the retried and the scheduled send as Scheduled", schema.GoIncomingTable, got)
	}
}

// execSQL runs a statement on the pool.
func execSQL(t *testing.T, pool *pgxpool.Pool, q string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), q, args...); err != nil {
		t.Fatal(err)
	}
}

// count runs a count query.
func count(t *testing.T, pool *pgxpool.Pool, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// queryStrings runs a query of one text column and returns its values joined by spaces.
func queryStrings(t *testing.T, pool *pgxpool.Pool, q string, args ...any) string {
	t.Helper()
	rows, err := pool.Query(context.Background(), q, args...)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, " ")
}

// awaitRows waits until the count query q answers want (the components write
// asynchronously: the agent's passes, the subscriber's flusher), failing after crashTimeout.
func awaitRows(t *testing.T, pool *pgxpool.Pool, q string, want int64) {
	t.Helper()
	deadline := time.Now().Add(crashTimeout)
	for {
		n := count(t, pool, q)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d after %s; want %d", q, n, crashTimeout, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// localQueue is a publisher into the runtime's durable local queues, on pool.
func localQueue(t *testing.T, rt *jasper.Runtime, pool *pgxpool.Pool) *publisher.Publisher {
	t.Helper()
	queue, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(pool), publisher.Config{Schema: rt.Schema(), Table: publisher.Incoming}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return queue
}

// runRouter runs router until the test ends (then it checks that Run returned no error) and
// returns the context it runs with.
func runRouter(t *testing.T, router *message.Router) context.Context {
	t.Helper()
	runCtx, cancel := context.WithCancel(context.Background())
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(runCtx) }()
	<-router.Running()
	t.Cleanup(func() {
		cancel()
		if err := <-routerDone; err != nil {
			t.Error(err)
		}
	})
	return runCtx
}

// applyEffects runs, until the test ends, a router whose handler consumes topic "work" from a
// subscriber of rt (config sub) behind rt's inbox (consumer name consumer) and records each
// delivery's message UUID in table effects, in the inbox's transaction.
func applyEffects(t *testing.T, rt *jasper.Runtime, sub subscriber.Config, consumer, effects string) {
	t.Helper()
	inbox, err := rt.Inbox(middleware.InboxConfig{ConsumerName: consumer})
	if err != nil {
		t.Fatal(err)
	}
	s, err := rt.Subscriber(sub)
	if err != nil {
		t.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	router.AddConsumerHandler("apply", "work", s, func(msg *message.Message) error {
		tx, ok := middleware.TxFromContext(msg.Context())
		if !ok {
			return errors.New("no inbox transaction")
		}
		_, err := tx.Exec(msg.Context(), "INSERT INTO "+effects+" (message_uuid) VALUES ($1)", msg.UUID)
		return err
	}).AddMiddleware(inbox.Middleware)
	runRouter(t, router)
}
