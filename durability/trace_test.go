package durability_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/envelope"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// A message published with a delay becomes a Jasper scheduled send (a scheduled-envelope
// row wrapping its binary envelope); when it is due the agent moves it to the outbox and the
// forwarder relays it. The relayed message still carries its traceparent: the trace goes on
// across the delay. A scheduled send written by .NET Jasper (no headers column; the trace only
// in the wrapped envelope's parent-id) is relayed with that traceparent too.
func TestTraceParentSurvivesScheduledSend(t *testing.T) {
	t.Parallel()
	const (
		traceParent       = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		jasperTraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		topic             = "traced"
		wait              = 30 * time.Second
	)
	ctx := context.Background()
	db, cfg := testdb.Migrated(t)
	d, err := sqldialect.For(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// Published through the outbox with a delay.
	pub, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{Schema: cfg}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"later":true}`))
	msg.Metadata.Set(metadata.TraceParent, traceParent)
	// components/delay writes the due time with second precision (RFC 3339): a whole second,
	// 1 to 2 s from now, stays in the future.
	delay.Message(msg, delay.Until(time.Now().Truncate(time.Second).Add(2*time.Second)))
	if err := pub.Publish(topic, msg); err != nil {
		t.Fatal(err)
	}
	var parentID, messageType string
	var body []byte
	err = database.QueryRow(ctx, db, `SELECT parent_id, message_type, body FROM `+cfg.Qualified(schema.IncomingTable)+` WHERE id = $1`,
		[]any{row.ScheduledEnvelopeID(topic, msg.UUID).String()}, &parentID, &messageType, &body)
	if err != nil {
		t.Fatalf("the scheduled send: %v", err)
	}
	inner, err := envelope.Decode(body)
	if err != nil {
		t.Fatal(err)
	}
	if messageType != row.ScheduledEnvelopeType || parentID != traceParent || inner.ParentID != traceParent {
		t.Fatalf("scheduled send: message_type %q, parent_id %q, wrapped envelope's parent-id %q; want %q and the traceparent %q",
			messageType, parentID, inner.ParentID, row.ScheduledEnvelopeType, traceParent)
	}

	// Written by .NET Jasper, due already.
	past := time.Now().Add(-time.Second).UTC()
	jasperID := uuid.NewString()
	jasperBody, err := envelope.Encode(&envelope.Envelope{
		SentAt: past, MessageType: "Jasper.Traced", ContentType: "application/json", Destination: topic,
		ParentID: jasperTraceParent, ID: jasperID, ScheduledTime: &past, Data: []byte(`{"from":"jasper"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	wrapper := row.Envelope{
		ID: uuid.New(), Status: schema.StatusScheduled, Destination: row.DurableLocalURI, ExecutionTime: &past,
		Body: jasperBody, ParentID: jasperTraceParent, MessageType: row.ScheduledEnvelopeType, ContentType: row.BinaryEnvelopeContentType,
	}
	if _, err := db.Exec(ctx, d.InsertIncoming(1), wrapper.IncomingArgs(nil, d.UUIDs())...); err != nil {
		t.Fatal(err)
	}

	// Node, forwarder to a GoChannel, agent releasing scheduled sends.
	pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubsub.Close() })
	relayed, err := pubsub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	fwd, err := forwarder.NewForwarder(db, forwarder.Config{Schema: cfg, Node: node, Publisher: pubsub}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := durability.NewAgent(db, node, durability.Config{
		Schema: cfg, ScheduledJobPollingTime: 100 * time.Millisecond, NodeReassignmentPollingTime: -1,
		ExpiredEnvelopesPollingTime: -1, HandledCleanupPollingTime: -1, MetricsSamplingInterval: -1,
		Wakers: []durability.Waker{fwd},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []interface {
		Run(context.Context) error
		Close() error
	}{fwd, agent} {
		errc := make(chan error, 1)
		go func() { errc <- r.Run(ctx) }()
		t.Cleanup(func() {
			_ = r.Close()
			if err := <-errc; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}

	got := map[string]*message.Message{}
	timeout := time.After(wait)
	for len(got) < 2 {
		select {
		case m := <-relayed:
			m.Ack()
			got[m.UUID] = m
		case <-timeout:
			t.Fatalf("%d of 2 scheduled sends relayed", len(got))
		}
	}
	for id, want := range map[string]string{msg.UUID: traceParent, jasperID: jasperTraceParent} {
		m := got[id]
		if m == nil {
			t.Errorf("message %s not relayed (got %v)", id, got)
			continue
		}
		if tp := m.Metadata.Get(metadata.TraceParent); tp != want {
			t.Errorf("relayed scheduled send %s: metadata %s = %q, want %q (the trace does not continue)", id, metadata.TraceParent, tp, want)
		}
	}
}
