package row

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
)

// DeliveryKeys are metadata keys describing one delivery or one failure, not the message:
// they are dropped from the message of a replayed dead letter.
var DeliveryKeys = []string{
	KeyEnvelopeID, KeyAttempts,
	"reason_poisoned", "topic_poisoned", "handler_poisoned", "subscriber_poisoned",
}

// DeadLetter is one row of jasper_dead_letters.
type DeadLetter struct {
	ID uuid.UUID
	// ReceivedAt is where the message was received: the topic for rows written by this
	// library, the listener URI for rows written by Jasper.
	ReceivedAt string
	// Source is the handler (middleware), component, or sending service (Jasper).
	Source      string
	MessageType string
	ContentType string
	// Explanation, ExceptionType, ExceptionMessage and ExceptionText describe the failure
	// (ErrorReport in Jasper).
	Explanation      string
	ExceptionType    string
	ExceptionMessage string
	ExceptionText    string
	Attempts         int
	ExecutionTime    *time.Time
	// Timestamp is when the row was written (extension column; Jasper's rows get the time
	// of their insert, or of the migration that added the column).
	Timestamp  *time.Time
	Replayable bool
	// MessageUUID is the Watermill message UUID ("" for rows written by Jasper).
	MessageUUID    string
	CorrelationID  string
	ParentID       string
	SagaID         string
	ReplyURI       string
	ReplyRequested string
	ConversationID *uuid.UUID
	AckRequested   bool
	// Headers is every metadata pair of the message (nil for rows written by Jasper).
	Headers map[string]string
	// HeadersError says why the headers column could not be read, if it could not.
	HeadersError string
	// Body is the payload; ListDeadLetters leaves it nil and sets only BodySize.
	Body     []byte
	BodySize int
}

// envelope is the dead letter as an envelope row, for the message mapping.
func (d DeadLetter) envelope() Envelope {
	e := Envelope{
		ID: d.ID, Destination: d.ReceivedAt, Attempts: d.Attempts, Body: d.Body,
		ConversationID: d.ConversationID, CorrelationID: d.CorrelationID, ParentID: d.ParentID,
		SagaID: d.SagaID, MessageType: d.MessageType, ContentType: d.ContentType,
		ReplyRequested: d.ReplyRequested, AckRequested: d.AckRequested, ReplyURI: d.ReplyURI,
		MessageUUID: d.MessageUUID,
	}
	if d.Headers != nil {
		e.Headers, _ = json.Marshal(d.Headers)
	}
	return e
}

// Message rebuilds the message the dead letter holds, as a replay publishes it: the
// original UUID (the row id for rows written by Jasper), payload and metadata (rows written
// by Jasper: from the columns), without the keys of the failed delivery (the poison keys,
// metadata.EnvelopeID, metadata.Attempts).
func (d DeadLetter) Message() (*message.Message, error) {
	if d.HeadersError != "" {
		return nil, fmt.Errorf("watermill-jasper: dead letter %s: unreadable headers column: %s", d.ID, d.HeadersError)
	}
	msg, err := d.envelope().ToMessage()
	if err != nil {
		return nil, err
	}
	for _, k := range DeliveryKeys {
		delete(msg.Metadata, k)
	}
	return msg, nil
}
