package durability_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/envelope"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// A message published with a delay becomes a Jasper scheduled send (a scheduled-envelope
// row wrapping its binary envelope, as the publisher writes it with row.WrapScheduled);
// when it is due the agent moves it to the outbox, where a forwarder claims it and relays
// the message the row maps back to (row.Envelope.ToMessage). That message still carries its
// traceparent: the trace goes on across the delay. A scheduled send written by .NET Jasper
// (no headers column; the trace only in the wrapped envelope's parent-id) gives that
// traceparent too. The test claims the outbox rows itself, as the forwarder does, so that it
// depends on the agent only.
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
	st, err := db.Store(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// Delayed with Watermill's components/delay, written as the publisher writes it.
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"later":true}`))
	msg.Metadata.Set(metadata.TraceParent, traceParent)
	delay.Message(msg, delay.Until(time.Now().Add(-time.Second)))
	due, err := row.DueTime(msg, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	scheduled, err := row.WrapScheduled(topic, msg, row.Defaults{}, due, time.Now())
	if err != nil {
		t.Fatal(err)
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
	if err := st.InsertEnvelopes(ctx, store.InsertParams{Incoming: []row.Envelope{scheduled, wrapper}}); err != nil {
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

	// The agent releases the scheduled sends at once (its first pass) and wakes the
	// forwarders: here, the claim below.
	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	agent, err := durability.NewAgent(node, durability.Config{
		Schema: cfg, ScheduledJobPollingTime: time.Hour, NodeReassignmentPollingTime: -1,
		ExpiredEnvelopesPollingTime: -1, HandledCleanupPollingTime: -1, MetricsSamplingInterval: -1,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	wake := make(chan struct{}, 1)
	agent.OnOutgoing(func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := agent.Stop(context.Background()); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})

	got := map[string]*message.Message{}
	timeout := time.After(wait)
	for len(got) < 2 {
		select {
		case <-wake:
		case <-timeout:
			t.Fatalf("%d of 2 scheduled sends reached the outbox (stats %+v)", len(got), agent.Stats())
		}
		envs, err := agent.Store().ClaimOutgoing(ctx, store.ClaimOutgoingParams{Owner: agent.NodeID(), Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range envs {
			if e.Destination != topic {
				t.Errorf("outgoing envelope %s for %q, want %q", e.ID, e.Destination, topic)
			}
			m, err := e.ToMessage()
			if err != nil {
				t.Fatal(err)
			}
			got[m.UUID] = m
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
