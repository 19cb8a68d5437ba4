package row_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/internal/envelope"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
)

func TestWrapUnwrapScheduledRoundTrip(t *testing.T) {
	due := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	sent := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	m := message.NewMessage("m-1", []byte("payload"))
	m.Metadata = message.Metadata{
		row.KeyMessageType:    "Ping",
		row.KeyConversationID: "0f8fad5b-d9cb-469f-a165-70867728950e",
		row.KeyAckRequested:   "true",
		row.KeySource:         "billing",
		"destination":         "reserved key, kept only in the headers column",
		"plain":               "v",
	}
	e, err := row.WrapScheduled("pings", m, row.Defaults{}, due, sent)
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != row.ScheduledEnvelopeID("pings", "m-1") || e.ID == row.EnvelopeID("pings", "m-1") {
		t.Errorf("wrapper id %s", e.ID)
	}
	if e.Status != "Scheduled" || e.OwnerID != 0 || e.Destination != row.DurableLocalURI || !e.ExecutionTime.Equal(due) ||
		e.MessageType != row.ScheduledEnvelopeType || e.ContentType != row.BinaryEnvelopeContentType {
		t.Errorf("wrapper row %+v", e)
	}
	inner, err := envelope.Decode(e.Body)
	if err != nil {
		t.Fatal(err)
	}
	if inner.Destination != "pings" || inner.Source != "billing" || !inner.AckRequested || !inner.SentAt.Equal(sent) ||
		inner.ConversationID != "0f8fad5b-d9cb-469f-a165-70867728950e" || inner.MessageType != "Ping" {
		t.Errorf("inner envelope %+v", inner)
	}

	topic, back, err := row.UnwrapScheduled(e)
	if err != nil {
		t.Fatal(err)
	}
	if topic != "pings" || back.UUID != "m-1" || string(back.Payload) != "payload" || fmt.Sprint(back.Metadata) != fmt.Sprint(m.Metadata) {
		t.Errorf("unwrapped %q %q %v %q", topic, back.UUID, back.Metadata, back.Payload)
	}
}

// A scheduled send written by .NET Jasper has no headers or message_uuid column values.
func TestUnwrapScheduledFromJasper(t *testing.T) {
	deliverBy := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	body, err := envelope.Encode(&envelope.Envelope{
		SentAt:        time.Now(),
		MessageType:   "Ping",
		ContentType:   "application/json",
		CorrelationID: "c-1",
		Destination:   "rabbitmq://queue/pings",
		ParentID:      "00-abc-def-01",
		ID:            "0f8fad5b-d9cb-469f-a165-70867728950e",
		DeliverBy:     &deliverBy,
		Headers:       []envelope.Header{{Key: "tenant", Value: "t1"}},
		Data:          []byte("{}"),
	})
	if err != nil {
		t.Fatal(err)
	}
	topic, msg, err := row.UnwrapScheduled(row.Envelope{MessageType: row.ScheduledEnvelopeType, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	want := message.Metadata{
		row.KeyMessageType:   "Ping",
		row.KeyContentType:   "application/json",
		row.KeyCorrelationID: "c-1",
		row.KeyTraceParent:   "00-abc-def-01",
		row.KeyDeliverBy:     deliverBy.Format(time.RFC3339Nano),
		"tenant":             "t1",
	}
	if topic != "rabbitmq://queue/pings" || msg.UUID != "0f8fad5b-d9cb-469f-a165-70867728950e" || string(msg.Payload) != "{}" ||
		fmt.Sprint(msg.Metadata) != fmt.Sprint(want) {
		t.Errorf("unwrapped %q %q %v %q", topic, msg.UUID, msg.Metadata, msg.Payload)
	}
}

func TestUnwrapScheduledErrors(t *testing.T) {
	noDest, _ := envelope.Encode(&envelope.Envelope{Data: []byte("x")})
	for name, e := range map[string]row.Envelope{
		"wrong type":     {MessageType: "Ping", Body: noDest},
		"garbage body":   {MessageType: row.ScheduledEnvelopeType, Body: []byte{1, 2, 3}},
		"no destination": {MessageType: row.ScheduledEnvelopeType, Body: noDest},
	} {
		if _, _, err := row.UnwrapScheduled(e); !errors.Is(err, row.ErrNotScheduledSend) {
			t.Errorf("%s: %v, want ErrNotScheduledSend", name, err)
		}
	}
	bad := message.NewMessage("m", nil)
	bad.Metadata.Set("k", "bad\xff")
	if _, err := row.WrapScheduled("t", bad, row.Defaults{}, time.Now(), time.Now()); !errors.Is(err, row.ErrInvalidMessage) {
		t.Errorf("invalid UTF-8 metadata: %v, want ErrInvalidMessage", err)
	}
}
