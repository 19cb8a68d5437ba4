// Package row is the one place where a Watermill message becomes a Jasper envelope row and
// back (docs/envelope-mapping.md). Every package that reads or writes envelopes
// uses it; the SQL that moves rows lives in the store drivers (internal/store/postgres,
// internal/store/sqlserver).
package row

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
)

// Envelope is one row of jasper_outgoing_envelopes or jasper_incoming_envelopes (Jasper 2.0
// layout plus extensions). Empty strings are stored as NULL in nullable columns.
type Envelope struct {
	ID      uuid.UUID
	OwnerID int32
	// Status is the incoming status (Incoming, Scheduled, Handled); unused for outgoing rows.
	Status string
	// Destination is the outgoing destination, or the incoming received_at (the topic).
	Destination    string
	ExecutionTime  *time.Time
	DeliverBy      *time.Time
	Attempts       int
	Body           []byte
	ConversationID *uuid.UUID
	CorrelationID  string
	ParentID       string
	SagaID         string
	MessageType    string
	ContentType    string
	ReplyRequested string
	AckRequested   bool
	ReplyURI       string
	// MessageUUID is the Watermill message UUID, verbatim (extension column message_uuid).
	MessageUUID string
	// Headers is every metadata pair as a JSON object (extension column headers); nil for rows
	// written by Jasper, whose metadata is rebuilt from the columns.
	Headers []byte
	// PartitionKey is the message's partition key (metadata KeyPartitionKey; extension
	// column partition_key): rows of one key are claimed one at a time, oldest first.
	PartitionKey string
	// WrittenAt is when the row was written (extension column timestamp), read by the
	// outgoing claims only (ClaimedOutgoingColumns); nil when not read or NULL. It is never
	// written: the column's default sets it.
	WrittenAt *time.Time
}

// Defaults fill columns Jasper requires when the message's metadata does not.
type Defaults struct {
	MessageType string // default "watermill-message"
	ContentType string // default "application/json"
}

// DefaultMessageType and DefaultContentType are used when Defaults leaves them empty.
const (
	DefaultMessageType = "watermill-message"
	DefaultContentType = "application/json"
)

// ErrInvalidMessage is wrapped by every error about a message that cannot become a row.
var ErrInvalidMessage = errors.New("watermill-jasper: invalid message")

// idNamespace seeds the deterministic envelope ids (UUIDv5 of topic and message UUID).
var idNamespace = uuid.MustParse("6f0e5c7e-61a2-4a8b-9c3f-2b1d9a7e4c10")

// EnvelopeID derives a row id from a topic and a message UUID: the same message published
// twice to one topic gets one id (an idempotent re-publish), and to two topics two ids.
func EnvelopeID(topic, messageUUID string) uuid.UUID {
	return uuid.NewSHA1(idNamespace, []byte(topic+"\x00"+messageUUID))
}

// FromMessage maps a message published to topic into an envelope row. Status, OwnerID and
// ExecutionTime are left for the caller (outbox or durable queue) to decide.
func FromMessage(topic string, msg *message.Message, d Defaults) (Envelope, error) {
	if msg == nil {
		return Envelope{}, fmt.Errorf("%w: nil message", ErrInvalidMessage)
	}
	if d.MessageType == "" {
		d.MessageType = DefaultMessageType
	}
	if d.ContentType == "" {
		d.ContentType = DefaultContentType
	}
	md := msg.Metadata
	e := Envelope{
		ID:             EnvelopeID(topic, msg.UUID),
		Destination:    topic,
		Body:           msg.Payload,
		CorrelationID:  md.Get(KeyCorrelationID),
		ParentID:       md.Get(KeyTraceParent),
		SagaID:         md.Get(KeySagaID),
		MessageType:    firstNonEmpty(md.Get(KeyMessageType), md.Get("name"), d.MessageType),
		ContentType:    firstNonEmpty(md.Get(KeyContentType), d.ContentType),
		ReplyRequested: md.Get(KeyReplyRequested),
		ReplyURI:       md.Get(KeyReplyURI),
		MessageUUID:    msg.UUID,
		PartitionKey:   md.Get(KeyPartitionKey),
	}
	if e.Body == nil {
		e.Body = []byte{} // body is NOT NULL
	}
	if v := md.Get(KeyConversationID); v != "" {
		id, err := uuid.Parse(v)
		if err != nil {
			return Envelope{}, fmt.Errorf("%w: metadata %s=%q is not a UUID", ErrInvalidMessage, KeyConversationID, v)
		}
		e.ConversationID = &id
	}
	if v := md.Get(KeyAckRequested); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Envelope{}, fmt.Errorf("%w: metadata %s=%q is not a boolean", ErrInvalidMessage, KeyAckRequested, v)
		}
		e.AckRequested = b
	}
	if v := md.Get(KeyDeliverBy); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return Envelope{}, fmt.Errorf("%w: metadata %s=%q is not an RFC 3339 time", ErrInvalidMessage, KeyDeliverBy, v)
		}
		t = t.UTC()
		e.DeliverBy = &t
	}
	if len(md) > 0 {
		h, err := json.Marshal(map[string]string(md))
		if err != nil {
			return Envelope{}, fmt.Errorf("%w: metadata: %w", ErrInvalidMessage, err)
		}
		e.Headers = h
	}
	return e, nil
}

// DueTime returns when a message delayed with Watermill's components/delay and published at
// publishedAt is due, or the zero time when it is not delayed. It is the one place that reads
// the delay metadata.
//
// components/delay writes two keys: "_watermill_delayed_until", the due time in RFC 3339
// truncated to the whole second (so up to a second early), and "_watermill_delayed_for", the
// exact delay as a Go duration string, measured from when the delay was made (delay.For: a
// moment before the publish). So:
//
//   - with "_watermill_delayed_for", the due time is publishedAt plus that delay, which is
//     never earlier than the due time meant. With "_watermill_delayed_until" too, it is kept
//     within the second that key names: at least the until time, and at most the until time
//     plus one second when that is given in whole seconds (the due time meant lies before it),
//     or the until time itself when it has fractional seconds (it is then exact). A message
//     published long after its delay was made (a message re-published with its metadata)
//     is thus due when its until key says rather than a whole delay later;
//   - with "_watermill_delayed_until" alone, the due time is that time (fractional seconds
//     are read).
//
// A due time after publishedAt is rounded up to the microsecond, the precision of
// PostgreSQL's timestamp columns (SQL Server's datetimeoffset keeps 100 ns), so that the
// stored execution time is never earlier than it; a zero delay gives publishedAt itself. An
// unreadable value is an error wrapping ErrInvalidMessage that names the key and the value.
func DueTime(msg *message.Message, publishedAt time.Time) (time.Time, error) {
	forV, untilV := msg.Metadata.Get(delay.DelayedForKey), msg.Metadata.Get(delay.DelayedUntilKey)
	if forV == "" && untilV == "" {
		return time.Time{}, nil
	}
	var until time.Time
	if untilV != "" {
		t, err := time.Parse(time.RFC3339Nano, untilV)
		if err != nil {
			return time.Time{}, fmt.Errorf("%w: metadata %s=%q is not an RFC 3339 time", ErrInvalidMessage, delay.DelayedUntilKey, untilV)
		}
		until = t.UTC()
	}
	if forV == "" {
		return ceilMicrosecond(until), nil
	}
	d, err := time.ParseDuration(forV)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: metadata %s=%q is not a Go duration (like \"1.5s\")", ErrInvalidMessage, delay.DelayedForKey, forV)
	}
	publishedAt = publishedAt.UTC()
	due := publishedAt.Add(d)
	if !until.IsZero() {
		latest := until
		if until.Nanosecond() == 0 {
			latest = until.Add(time.Second)
		}
		switch {
		case due.After(latest):
			due = latest
		case due.Before(until):
			due = until
		}
	}
	if !due.After(publishedAt) {
		return due, nil // due already (a zero delay stays exactly so)
	}
	return ceilMicrosecond(due), nil
}

// ceilMicrosecond rounds t up to the microsecond.
func ceilMicrosecond(t time.Time) time.Time {
	if r := t.Truncate(time.Microsecond); !r.Equal(t) {
		return r.Add(time.Microsecond)
	}
	return t.Round(0)
}

// ToMessage rebuilds the Watermill message from a row. Rows written by this library get
// their metadata back exactly; rows written by Jasper get metadata from the columns. Either
// way the delivery keys (envelope id, attempts) are set.
func (e Envelope) ToMessage() (*message.Message, error) {
	md := message.Metadata{}
	if len(e.Headers) > 0 {
		if err := json.Unmarshal(e.Headers, (*map[string]string)(&md)); err != nil {
			return nil, fmt.Errorf("watermill-jasper: envelope %s: unreadable headers column: %w", e.ID, err)
		}
	} else {
		conv := ""
		if e.ConversationID != nil {
			conv = e.ConversationID.String()
		}
		jasperFields{
			MessageType: e.MessageType, ContentType: e.ContentType, CorrelationID: e.CorrelationID,
			ParentID: e.ParentID, ConversationID: conv, SagaID: e.SagaID, ReplyURI: e.ReplyURI,
			ReplyRequested: e.ReplyRequested, AckRequested: e.AckRequested, DeliverBy: e.DeliverBy,
		}.setMetadata(md)
	}
	if e.PartitionKey != "" {
		md.Set(KeyPartitionKey, e.PartitionKey)
	}
	md.Set(KeyEnvelopeID, e.ID.String())
	md.Set(KeyAttempts, strconv.Itoa(e.Attempts))
	id := e.MessageUUID
	if id == "" {
		id = e.ID.String()
	}
	msg := message.NewMessage(id, e.Body)
	msg.Metadata = md
	return msg, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if strings.TrimSpace(v) != "" {
			return v
		}
	}
	return ""
}

// jasperFields are the envelope fields that have a metadata key: the columns of a row written
// by Jasper, or the typed headers of a binary envelope.
type jasperFields struct {
	Source, MessageType, ContentType, CorrelationID, ParentID, ConversationID string
	SagaID, ReplyURI, ReplyRequested                                          string
	AckRequested                                                              bool
	DeliverBy                                                                 *time.Time
}

// setMetadata sets the metadata keys of the fields that have a value.
func (f jasperFields) setMetadata(md message.Metadata) {
	for _, kv := range [...][2]string{
		{KeySource, f.Source}, {KeyMessageType, f.MessageType}, {KeyContentType, f.ContentType},
		{KeyCorrelationID, f.CorrelationID}, {KeyTraceParent, f.ParentID},
		{KeyConversationID, f.ConversationID}, {KeySagaID, f.SagaID}, {KeyReplyURI, f.ReplyURI},
		{KeyReplyRequested, f.ReplyRequested},
	} {
		if kv[1] != "" {
			md.Set(kv[0], kv[1])
		}
	}
	if f.AckRequested {
		md.Set(KeyAckRequested, "true")
	}
	if f.DeliverBy != nil {
		md.Set(KeyDeliverBy, f.DeliverBy.UTC().Format(time.RFC3339Nano))
	}
}
