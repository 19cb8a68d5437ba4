package envelope

import (
	"errors"
	"time"
)

// Header keys Jasper (J2) maps to typed Envelope fields
// (src/Jasper/EnvelopeConstants.cs). Decode never places these keys in
// Envelope.Headers and Encode refuses them there.
const (
	// KeySource is the key of Envelope.Source.
	KeySource = "source"
	// KeyMessageType is the key of Envelope.MessageType.
	KeyMessageType = "message-type"
	// KeyReplyURI is the key of Envelope.ReplyURI.
	KeyReplyURI = "reply-uri"
	// KeyContentType is the key of Envelope.ContentType.
	KeyContentType = "content-type"
	// KeyCorrelationID is the key of Envelope.CorrelationID.
	KeyCorrelationID = "correlation-id"
	// KeyConversationID is the key of Envelope.ConversationID.
	KeyConversationID = "conversation-id"
	// KeyDestination is the key of Envelope.Destination.
	KeyDestination = "destination"
	// KeySagaID is the key of Envelope.SagaID.
	KeySagaID = "saga-id"
	// KeyParentID is the key of Envelope.ParentID.
	KeyParentID = "parent-id"
	// KeyAcceptedContentTypes is the key of Envelope.AcceptedContentTypes.
	KeyAcceptedContentTypes = "accepted-content-types"
	// KeyID is the key of Envelope.ID.
	KeyID = "id"
	// KeyReplyRequested is the key of Envelope.ReplyRequested.
	KeyReplyRequested = "reply-requested"
	// KeyAckRequested is the key of Envelope.AckRequested.
	KeyAckRequested = "ack-requested"
	// KeyTimeToSend is the key of Envelope.ScheduledTime.
	KeyTimeToSend = "time-to-send"
	// KeyAttempts is the key of Envelope.Attempts.
	KeyAttempts = "attempts"
	// KeyDeliverBy is the key of Envelope.DeliverBy.
	KeyDeliverBy = "deliver-by"
)

// J1-only header keys. A J2 reader (and this package) keeps them as plain
// entries of Envelope.Headers, so they survive a decode/encode round trip.
const (
	// KeySentAttempts is J1's Envelope.SentAttempts key.
	KeySentAttempts = "sent-attempts"
	// KeyReceivedAt is J1's Envelope.ReceivedAt (listener URI) key.
	KeyReceivedAt = "received-at"
)

// ErrMalformed is wrapped by every error Decode returns: truncated input,
// impossible lengths, out-of-range sentAt, duplicate header keys, and
// header values the .NET reader would fail to parse.
var ErrMalformed = errors.New("malformed jasper envelope")

// ErrInvalid is wrapped by every error Encode returns: an Envelope that
// cannot be represented in, or would not read back identically from, the
// binary format.
var ErrInvalid = errors.New("invalid jasper envelope")

// Header is one key/value pair of Envelope.Headers.
type Header struct {
	// Key is the header name. Keys are case-sensitive and unique within an
	// envelope, as in the .NET Dictionary<string, string> they come from.
	Key string
	// Value is the header value.
	Value string
}

// Envelope is the Go form of a Jasper Envelope as far as the binary format
// carries it. String fields use "" for absent (.NET null).
type Envelope struct {
	// SentAt is when the envelope was sent (the leading int64). It is
	// stored with 100 ns precision; the zero time.Time is .NET's
	// DateTime.MinValue.
	SentAt time.Time

	// Source is the name of the sending service ("source").
	Source string
	// MessageType is the message type alias ("message-type").
	MessageType string
	// ReplyURI is where replies go ("reply-uri"), as .NET's Uri.ToString()
	// wrote it. It is not validated or canonicalised.
	ReplyURI string
	// ContentType is the MIME type of Data ("content-type").
	ContentType string
	// CorrelationID is the correlation id ("correlation-id"), a free-form
	// string in J2 (a GUID in J1).
	CorrelationID string
	// ConversationID is the conversation GUID ("conversation-id") in
	// lower-case "D" form; "" or the all-zero GUID means absent.
	ConversationID string
	// Destination is the address the envelope is sent to ("destination"),
	// not validated or canonicalised.
	Destination string
	// SagaID identifies the saga state ("saga-id").
	SagaID string
	// ParentID is the OpenTelemetry parent id ("parent-id"), a free-form
	// string in J2 (J1 wrote its CausationId GUID under the same key).
	ParentID string
	// AcceptedContentTypes are the content types accepted for a reply
	// ("accepted-content-types", comma-joined). Written when non-empty;
	// elements must not contain commas.
	AcceptedContentTypes []string
	// ID is the envelope id GUID ("id") in lower-case "D" form; "" or the
	// all-zero GUID means absent. Decode leaves it "" when the header is
	// missing or unparsable, where .NET would keep a fresh random id.
	ID string
	// ReplyRequested is the message type alias of a requested reply
	// ("reply-requested").
	ReplyRequested string
	// AckRequested asks the receiver for an acknowledgement
	// ("ack-requested", written as "True" only when set).
	AckRequested bool
	// ScheduledTime is when the message should be executed or sent
	// ("time-to-send"; J1 ExecutionTime), nil for immediate messages.
	ScheduledTime *time.Time
	// Attempts is the number of processing attempts ("attempts"). .NET
	// writes it only when positive; Encode writes it whenever non-zero so
	// that a negative count read from foreign input survives a round trip.
	Attempts int
	// DeliverBy is the expiry time ("deliver-by"), nil for none.
	DeliverBy *time.Time

	// Headers holds every other header in wire order, including J1-only
	// keys such as sent-attempts and received-at.
	Headers []Header

	// Data is the serialized message.
	Data []byte
}
