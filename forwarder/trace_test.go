package forwarder

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// W3C trace context of the traced messages of these tests.
const (
	traceParent       = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	jasperTraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	traceState        = "congo=t61rcWkgMzE"
)

// tracedMessage is a message whose metadata carries a W3C trace context.
func tracedMessage(payload string) *message.Message {
	m := message.NewMessage(watermill.NewUUID(), []byte(payload))
	m.Metadata.Set(metadata.TraceParent, traceParent)
	m.Metadata.Set("tracestate", traceState)
	return m
}

// parentID reads the parent_id column of the envelope of messageUUID in table.
func (e *env) parentID(table, topic, messageUUID string) string {
	e.t.Helper()
	var p *string
	if err := database.QueryRow(context.Background(), e.db, `SELECT parent_id FROM `+e.schema.Qualified(table)+` WHERE id = $1`,
		[]any{row.EnvelopeID(topic, messageUUID).String()}, &p); err != nil {
		e.t.Fatalf("parent_id of %s in %s: %v", messageUUID, table, err)
	}
	if p == nil {
		return ""
	}
	return *p
}

// jasperRow is the outgoing envelope a .NET Jasper node writes: Jasper's columns only, no
// headers column, the trace in parent_id.
func jasperRow(t *testing.T, topic string) row.Envelope {
	t.Helper()
	r, err := row.FromMessage(topic, message.NewMessage(uuid.NewString(), []byte(`{"from":"jasper"}`)), row.Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	r.Headers, r.MessageUUID, r.MessageType = nil, "", "Jasper.Traced"
	r.ParentID = jasperTraceParent
	return r
}

// checkTrace fails unless m carries want as its traceparent.
func checkTrace(t *testing.T, what string, m *message.Message, want string) {
	t.Helper()
	if got := m.Metadata.Get(metadata.TraceParent); got != want {
		t.Errorf("%s: metadata %s = %q, want %q (the trace does not continue)", what, metadata.TraceParent, got, want)
	}
}

// The traceparent of a message committed to the outbox (with the publisher's mapping,
// row.FromMessage) is stored in parent_id and the relayed message carries it (and the rest of the trace context), so the consumer continues
// the producer's trace; an envelope written by .NET Jasper (no headers column) is relayed
// with the traceparent of its parent_id.
func TestTraceParentRelayed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pubsub := goChannel(t)
	const topic = "traced"
	msg := tracedMessage("traced")
	jasper := jasperRow(t, topic)
	c := collect(t, pubsub, topic, 2)

	e.insert(topic, msg)
	e.insertEnvelopes(jasper)
	if got := e.parentID(schema.OutgoingTable, topic, msg.UUID); got != traceParent {
		t.Fatalf("outgoing parent_id = %q, want the message's traceparent %q", got, traceParent)
	}

	start(t, e.forwarder(Config{Publisher: pubsub}))
	c.wait(t, "relayed traced messages")
	c.mu.Lock()
	defer c.mu.Unlock()
	got := c.byUUID[msg.UUID][0]
	checkTrace(t, "relayed message", got, traceParent)
	if s := got.Metadata.Get("tracestate"); s != traceState {
		t.Errorf("relayed message: tracestate = %q, want %q", s, traceState)
	}
	checkTrace(t, "relayed envelope written by Jasper", c.byUUID[jasper.ID.String()][0], jasperTraceParent)
}

// Relayed to RabbitMQ (jasperamqp, publisher confirms), the message arrives with its
// traceparent as an AMQP header, which a Watermill AMQP subscriber gives back as metadata.
func TestTraceParentRelayedToRabbitMQ(t *testing.T) {
	t.Parallel()
	requireRabbitMQ(t)
	e := newEnv(t)
	queue := testQueue(t, "wj_fwd_trace_")
	c := consumeQueue(t, queue, 2) // declares the queue
	pub, err := jasperamqp.NewConfirmPublisher(amqpURI, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })

	destination := "rabbitmq://queue/" + queue
	msg := tracedMessage("traced")
	jasper := jasperRow(t, destination)
	e.insert(destination, msg)
	e.insertEnvelopes(jasper)
	start(t, e.forwarder(Config{Publisher: pub, PublishConcurrency: 4}))
	c.wait(t, "traced messages through RabbitMQ")
	c.mu.Lock()
	defer c.mu.Unlock()
	checkTrace(t, "message from RabbitMQ", c.byUUID[msg.UUID][0], traceParent)
	checkTrace(t, "envelope written by Jasper, from RabbitMQ", c.byUUID[jasper.ID.String()][0], jasperTraceParent)
}

// An envelope the forwarder moves to the dead letters keeps its traceparent: in parent_id,
// in the headers, and in the message a replay would publish.
func TestTraceParentKeptInForwarderDeadLetter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rec := newRecorder(goChannel(t))
	rec.fail["never"] = errPermanent
	f := e.forwarder(Config{Publisher: rec})
	dead := deadLettered(f)
	msg := tracedMessage("undeliverable")
	e.insert("never", msg)
	start(t, f)
	waitDeadLettered(t, dead, 1, "traced envelope")
	dl := e.deadLetter(row.EnvelopeID("never", msg.UUID))
	if dl.ParentID != traceParent {
		t.Errorf("dead letter parent_id = %q, want %q", dl.ParentID, traceParent)
	}
	if h := dl.Headers[metadata.TraceParent]; h != traceParent {
		t.Errorf("dead letter headers: %s = %q, want %q", metadata.TraceParent, h, traceParent)
	}
	replayed, err := dl.Message()
	if err != nil {
		t.Fatal(err)
	}
	checkTrace(t, "message of the dead letter", replayed, traceParent)
}
