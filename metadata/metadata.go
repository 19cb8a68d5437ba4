// Package metadata names the Watermill message metadata keys that watermill-jasper maps to
// Jasper envelope columns. Set them on a message before publishing to fill the columns; the
// subscriber and forwarder set them on the messages they deliver.
//
// Every metadata pair is also stored verbatim (the headers extension column), so a message
// written by this library round-trips exactly; the keys below only decide what goes into
// Jasper's own columns, which .NET Jasper nodes read.
//
// Tracing: the W3C traceparent travels under the key TraceParent ("traceparent", the W3C
// header name) through the outbox, scheduled sends, the forwarder, the subscriber and dead
// letters, so a handler continues the producer's trace by extracting it from the delivered
// message's metadata, e.g. with OpenTelemetry:
// propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier(msg.Metadata)); injecting
// the handler's span the same way into a message it publishes continues the trace further.
// This library creates no spans and does not depend on OpenTelemetry.
package metadata

import "github.com/watermill-jasper/watermill-jasper/internal/row"

const (
	// MessageType fills message_type (Jasper's message alias, which .NET handlers are found by).
	// Fallbacks: the "name" key that Watermill's CQRS marshalers set, then the publisher's
	// configured default ("watermill-message").
	MessageType = row.KeyMessageType
	// ContentType fills content_type. Fallback: the publisher's default ("application/json",
	// Jasper's default serializer).
	ContentType = row.KeyContentType
	// CorrelationID fills correlation_id; it is Watermill's own correlation id key
	// (middleware.CorrelationIDMetadataKey).
	CorrelationID = row.KeyCorrelationID
	// TraceParent (W3C trace context) fills parent_id, so a trace continues across the outbox.
	// Delivered and relayed messages carry it back under this key, also those of rows written
	// by .NET Jasper (from parent_id). Other trace keys ("tracestate", "baggage") round-trip
	// with every metadata pair (headers column), but no Jasper column holds them.
	TraceParent = row.KeyTraceParent
	// ConversationID fills conversation_id; it must be a UUID.
	ConversationID = row.KeyConversationID
	// SagaID fills saga_id.
	SagaID = row.KeySagaID
	// ReplyURI fills reply_uri.
	ReplyURI = row.KeyReplyURI
	// ReplyRequested fills reply_requested (a message type alias).
	ReplyRequested = row.KeyReplyRequested
	// AckRequested fills ack_requested ("true" or "false").
	AckRequested = row.KeyAckRequested
	// DeliverBy is the expiry (RFC 3339) filling deliver_by: an outgoing envelope not sent by
	// then is discarded, as Jasper does.
	DeliverBy = row.KeyDeliverBy
	// Attempts is set on delivered messages: how many times delivery was attempted before.
	Attempts = row.KeyAttempts
	// EnvelopeID is set on delivered messages: the id of the row they came from.
	EnvelopeID = row.KeyEnvelopeID
	// Destination is set on messages relayed by the forwarder: the Jasper destination URI of
	// the outgoing envelope (the output topic may differ, see the forwarder's topic mapping).
	Destination = row.KeyDestination
	// Source is the Jasper "source" header (the sending service's name), kept in dead letters.
	Source = row.KeySource
	// PartitionKey fills partition_key: messages of one partition key are relayed and
	// delivered one at a time, in the order they were written; different keys go in parallel,
	// and messages without a key are unordered (docs/ordering.md). The name is Wolverine's
	// header "partition-key".
	PartitionKey = row.KeyPartitionKey
)
