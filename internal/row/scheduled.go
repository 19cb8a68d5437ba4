package row

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/envelope"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
)

// Jasper's wrapped scheduled send (docs/envelope-mapping.md): a message to be sent later is stored as
// an incoming row of this type whose body is the binary envelope of the original message.
const (
	// ScheduledEnvelopeType is the message_type of a wrapped scheduled send
	// (TransportConstants.ScheduledEnvelope).
	ScheduledEnvelopeType = "scheduled-envelope"
	// BinaryEnvelopeContentType is its content_type (TransportConstants.SerializedEnvelope).
	BinaryEnvelopeContentType = "binary/envelope"
	// DurableLocalURI is its received_at (J2 TransportConstants.DurableLocalUri).
	DurableLocalURI = "local://durable"
)

// ErrNotScheduledSend is wrapped by UnwrapScheduled's errors: the row is not a scheduled send
// this library can forward (wrong message type, unreadable body, no destination).
var ErrNotScheduledSend = errors.New("watermill-jasper: not a readable scheduled send")

// ScheduledEnvelopeID derives the id of the scheduled-send row wrapping a message published
// to topic: deterministic, so a re-publish is idempotent, and distinct from the id of the
// envelope it wraps (EnvelopeID), as Jasper gives the wrapper its own id.
func ScheduledEnvelopeID(topic, messageUUID string) uuid.UUID {
	return uuid.NewSHA1(idNamespace, []byte("scheduled-envelope\x00"+topic+"\x00"+messageUUID))
}

// WrapScheduled maps a message published to topic but due at due into a Jasper scheduled
// send: an incoming row (status Scheduled, owner 0, execution_time due, message_type
// scheduled-envelope, content_type binary/envelope, received_at local://durable) whose body
// is the binary envelope of the original message: destination topic, id EnvelopeID(topic,
// msg.UUID), the mapped Jasper fields (message-type, content-type, correlation-id, ...),
// time-to-send due, sent at sentAt, every metadata pair as a header (except keys the binary
// format reserves for its own fields), data = payload. The row's headers column keeps every
// metadata pair, so UnwrapScheduled gives back the message exactly.
func WrapScheduled(topic string, msg *message.Message, d Defaults, due, sentAt time.Time) (Envelope, error) {
	orig, err := FromMessage(topic, msg, d)
	if err != nil {
		return Envelope{}, err
	}
	due = due.UTC()
	inner := envelope.Envelope{
		SentAt:         sentAt.UTC(),
		Source:         msg.Metadata.Get(KeySource),
		MessageType:    orig.MessageType,
		ReplyURI:       orig.ReplyURI,
		ContentType:    orig.ContentType,
		CorrelationID:  orig.CorrelationID,
		Destination:    topic,
		SagaID:         orig.SagaID,
		ParentID:       orig.ParentID,
		ID:             orig.ID.String(),
		ReplyRequested: orig.ReplyRequested,
		AckRequested:   orig.AckRequested,
		ScheduledTime:  &due,
		DeliverBy:      orig.DeliverBy,
		Data:           orig.Body,
	}
	if orig.ConversationID != nil {
		inner.ConversationID = orig.ConversationID.String()
	}
	keys := make([]string, 0, len(msg.Metadata))
	for k := range msg.Metadata {
		if !reservedEnvelopeKey(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		inner.Headers = append(inner.Headers, envelope.Header{Key: k, Value: msg.Metadata[k]})
	}
	body, err := envelope.Encode(&inner)
	if err != nil {
		return Envelope{}, fmt.Errorf("%w: message %s cannot be written as a Jasper envelope: %w", ErrInvalidMessage, msg.UUID, err)
	}
	return Envelope{
		ID:             ScheduledEnvelopeID(topic, msg.UUID),
		OwnerID:        0,
		Status:         layout.StatusScheduled,
		Destination:    DurableLocalURI,
		ExecutionTime:  &due,
		Body:           body,
		ConversationID: orig.ConversationID,
		CorrelationID:  orig.CorrelationID,
		ParentID:       orig.ParentID,
		MessageType:    ScheduledEnvelopeType,
		ContentType:    BinaryEnvelopeContentType,
		MessageUUID:    msg.UUID,
		Headers:        orig.Headers,
	}, nil
}

// UnwrapScheduled turns a scheduled-send row (written by WrapScheduled or by Jasper) back into
// the message to send and its topic (the wrapped envelope's destination). Rows written by this
// library give the message back exactly (UUID, metadata, payload); rows written by Jasper give
// metadata rebuilt from the envelope's fields and headers, and the wrapped envelope's id as
// the message UUID. Errors wrap ErrNotScheduledSend; such a row belongs in the dead letters.
func UnwrapScheduled(env Envelope) (topic string, msg *message.Message, err error) {
	if env.MessageType != ScheduledEnvelopeType {
		return "", nil, fmt.Errorf("%w: envelope %s has message type %q, not %q", ErrNotScheduledSend, env.ID, env.MessageType, ScheduledEnvelopeType)
	}
	inner, err := envelope.Decode(env.Body)
	if err != nil {
		return "", nil, fmt.Errorf("%w: envelope %s: %w", ErrNotScheduledSend, env.ID, err)
	}
	if inner.Destination == "" {
		return "", nil, fmt.Errorf("%w: envelope %s: the wrapped envelope has no destination", ErrNotScheduledSend, env.ID)
	}
	md := message.Metadata{}
	if len(env.Headers) > 0 {
		if err := json.Unmarshal(env.Headers, (*map[string]string)(&md)); err != nil {
			return "", nil, fmt.Errorf("%w: envelope %s: unreadable headers column: %w", ErrNotScheduledSend, env.ID, err)
		}
	} else {
		for _, h := range inner.Headers {
			md.Set(h.Key, h.Value)
		}
		jasperFields{
			Source: inner.Source, MessageType: inner.MessageType, ContentType: inner.ContentType,
			CorrelationID: inner.CorrelationID, ParentID: inner.ParentID, ConversationID: inner.ConversationID,
			SagaID: inner.SagaID, ReplyURI: inner.ReplyURI, ReplyRequested: inner.ReplyRequested,
			AckRequested: inner.AckRequested, DeliverBy: inner.DeliverBy,
		}.setMetadata(md)
	}
	id := env.MessageUUID
	if id == "" {
		id = inner.ID
	}
	if id == "" {
		id = env.ID.String()
	}
	msg = message.NewMessage(id, inner.Data)
	msg.Metadata = md
	return inner.Destination, msg, nil
}

// reservedEnvelopeKey reports whether k names a typed field of the binary envelope, which
// cannot also be a free header (envelope.Encode refuses it).
func reservedEnvelopeKey(k string) bool {
	switch k {
	case envelope.KeySource, envelope.KeyMessageType, envelope.KeyReplyURI, envelope.KeyContentType,
		envelope.KeyCorrelationID, envelope.KeyConversationID, envelope.KeyDestination, envelope.KeySagaID,
		envelope.KeyParentID, envelope.KeyAcceptedContentTypes, envelope.KeyID, envelope.KeyReplyRequested,
		envelope.KeyAckRequested, envelope.KeyTimeToSend, envelope.KeyAttempts, envelope.KeyDeliverBy:
		return true
	}
	return false
}
