package row

// Metadata keys mapped onto envelope columns; package metadata documents and exports them.
const (
	KeyMessageType    = "jasper_message_type"
	KeyContentType    = "jasper_content_type"
	KeyCorrelationID  = "correlation_id"
	KeyTraceParent    = "traceparent"
	KeyConversationID = "jasper_conversation_id"
	KeySagaID         = "jasper_saga_id"
	KeyReplyURI       = "jasper_reply_uri"
	KeyReplyRequested = "jasper_reply_requested"
	KeyAckRequested   = "jasper_ack_requested"
	KeyDeliverBy      = "jasper_deliver_by"
	KeyAttempts       = "jasper_attempts"
	KeyEnvelopeID     = "jasper_envelope_id"
	KeyDestination    = "jasper_destination"
	KeySource         = "jasper_source"
	KeyPartitionKey   = "partition-key" // Wolverine's envelope header of the same meaning
)
