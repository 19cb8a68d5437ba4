package subscriber_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// W3C trace context of the traced messages of these tests.
const (
	traceParent       = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	jasperTraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	traceState        = "congo=t61rcWkgMzE"
)

// publishTraced writes a message carrying a W3C trace context into the durable local queue
// topic, through the library's publisher (table Incoming), and returns it.
func (e *env) publishTraced(topic string) *message.Message {
	t := e.t
	t.Helper()
	pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)),
		publisher.Config{Schema: e.cfg, Driver: e.db, Table: publisher.Incoming, Notify: publisher.NotifyEveryPublish}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"traced":true}`))
	msg.Metadata.Set(metadata.TraceParent, traceParent)
	msg.Metadata.Set("tracestate", traceState)
	if err := pub.Publish(topic, msg); err != nil {
		t.Fatal(err)
	}
	// A running subscriber may already have moved the row to the dead letters (same columns,
	// in the same transaction as its delete): both tables are read in one statement.
	id := row.EnvelopeID(topic, msg.UUID).String()
	where := " WHERE id = $1 AND parent_id = $2"
	if got := queryInt(t, e.db, "SELECT (SELECT count(*) FROM "+e.cfg.Qualified(schema.IncomingTable)+where+
		") + (SELECT count(*) FROM "+e.cfg.Qualified(schema.DeadLetterTable)+where+")", id, traceParent); got != 1 {
		t.Fatalf("the incoming envelope does not hold the traceparent in parent_id")
	}
	return msg
}

// jasperIncoming is an incoming envelope as a .NET Jasper node writes it: Jasper's columns
// only (no headers column), the trace in parent_id; headers sets the headers column anyway
// (an unreadable one makes the row a dead letter).
func jasperIncoming(t *testing.T, topic string, headers []byte) row.Envelope {
	t.Helper()
	r, err := row.FromMessage(topic, message.NewMessage(uuid.NewString(), []byte(`{"from":"jasper"}`)), row.Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	r.Status, r.MessageUUID, r.MessageType, r.Headers = schema.StatusIncoming, "", "Jasper.Traced", headers
	r.ParentID = jasperTraceParent
	return r
}

func checkTrace(t *testing.T, what string, m *message.Message, want string) {
	t.Helper()
	if got := m.Metadata.Get(metadata.TraceParent); got != want {
		t.Errorf("%s: metadata %s = %q, want %q (the trace does not continue)", what, metadata.TraceParent, got, want)
	}
}

// A message the subscriber delivers carries the traceparent it was published with (and
// the rest of its trace context); an envelope written by .NET Jasper is delivered with the
// traceparent of its parent_id column.
func TestTraceParentDelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const topic = "traced"
	msg := e.publishTraced(topic)
	jasper := jasperIncoming(t, topic, nil)
	e.insert(topic, jasper)
	ch := subscribe(t, e.subscriber(fastConfig()), topic)
	for range 2 {
		m := receive(t, ch, wait)
		switch m.UUID {
		case msg.UUID:
			checkTrace(t, "delivered message", m, traceParent)
			if got := m.Metadata.Get("tracestate"); got != traceState {
				t.Errorf("delivered message: tracestate = %q, want %q", got, traceState)
			}
		case jasper.ID.String():
			checkTrace(t, "delivered envelope written by Jasper", m, jasperTraceParent)
		default:
			t.Errorf("unexpected message %s", m.UUID)
		}
		m.Ack()
	}
}

// logEvents signals each error logged with the message want.
type logEvents struct {
	watermill.LoggerAdapter
	want string
	got  chan struct{}
}

func (l *logEvents) Error(msg string, err error, fields watermill.LogFields) {
	if msg == l.want {
		l.got <- struct{}{}
	}
}

func (l *logEvents) With(watermill.LogFields) watermill.LoggerAdapter { return l }

func timeout() <-chan time.Time { return time.After(wait) }

func awaitLog(t *testing.T, l *logEvents) {
	t.Helper()
	select {
	case <-l.got:
	case <-timeout():
		t.Fatalf("no %q logged", l.want)
	}
}

// Dead letters keep the traceparent: one written by the dead-letter middleware behind this
// subscriber (handler failed), in parent_id and in the headers, and again on the message
// delivered after the dead letter is replayed; one of an unreadable envelope moved by the
// subscriber itself, in parent_id.
func TestTraceParentKeptInDeadLetters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const topic = "traced"
	ctx := context.Background()

	dlLog := &logEvents{LoggerAdapter: watermill.NopLogger{}, want: "Message moved to the dead letters", got: make(chan struct{}, 4)}
	dl, err := middleware.NewDeadLetter(e.agent, middleware.DeadLetterConfig{MaxAttempts: 1}, dlLog)
	if err != nil {
		t.Fatal(err)
	}
	subLog := &logEvents{LoggerAdapter: watermill.NopLogger{}, want: "Unreadable envelope moved to the dead letters", got: make(chan struct{}, 4)}
	s, err := subscriber.NewSubscriber(e.agent, fastConfig(), subLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })

	// The handler fails the first delivery of each message and reports the trace of the next.
	var mu sync.Mutex
	failed := map[string]bool{}
	handled := make(chan *message.Message, 4)
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(dl.Middleware)
	router.AddConsumerHandler("traced", topic, s, func(m *message.Message) error {
		mu.Lock()
		first := !failed[m.UUID]
		failed[m.UUID] = true
		mu.Unlock()
		if first {
			return errors.New("handler failed")
		}
		handled <- m
		return nil
	})
	go func() { _ = router.Run(ctx) }()
	t.Cleanup(func() { _ = router.Close() })
	select {
	case <-router.Running():
	case <-timeout():
		t.Fatal("router did not start")
	}

	msg := e.publishTraced(topic)
	unreadable := jasperIncoming(t, topic, []byte("{not json"))
	e.insert(topic, unreadable)
	awaitLog(t, dlLog)
	awaitLog(t, subLog)

	st := e.agent.Store()
	id := row.EnvelopeID(topic, msg.UUID)
	d, ok, err := st.GetDeadLetter(ctx, id)
	if err != nil || !ok {
		t.Fatalf("dead letter %s: found %v, %v", id, ok, err)
	}
	if d.ParentID != traceParent || d.Headers[metadata.TraceParent] != traceParent {
		t.Errorf("dead letter of the failed handler: parent_id %q, headers %s = %q; want %q", d.ParentID, metadata.TraceParent, d.Headers[metadata.TraceParent], traceParent)
	}
	u, ok, err := st.GetDeadLetter(ctx, unreadable.ID)
	if err != nil || !ok {
		t.Fatalf("dead letter %s: found %v, %v", unreadable.ID, ok, err)
	}
	if u.ParentID != jasperTraceParent {
		t.Errorf("dead letter of the unreadable envelope: parent_id %q, want %q", u.ParentID, jasperTraceParent)
	}

	// Replayed into the queue, the message is handled again in the same trace.
	res, err := st.ReplayToIncoming(ctx, store.ReplayParams{Sel: store.Selection{IDs: []uuid.UUID{id}}, Limit: 10})
	if err != nil || len(res) != 1 || !res[0].Moved {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	e.agent.WakeIncoming(topic)
	select {
	case m := <-handled:
		checkTrace(t, "message handled after the replay of its dead letter", m, traceParent)
	case <-timeout():
		t.Fatal("the replayed dead letter was not handled")
	}
}
