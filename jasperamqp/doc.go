// Package jasperamqp relays Jasper outbox envelopes to RabbitMQ: through watermill-amqp (v2)
// with NewPublisher, or natively on amqp091-go with pipelined confirms with NewConfirmPublisher.
//
// Jasper stores the destination of every outgoing envelope as a URI in
// jasper_outgoing_envelopes.destination. The RabbitMQ transport writes three shapes:
//
//	rabbitmq://queue/NAME                  -> default exchange "", routing key NAME
//	rabbitmq://exchange/NAME               -> exchange NAME, routing key ""
//	rabbitmq://exchange/NAME/routing/KEY   -> exchange NAME, routing key KEY
//
// ParseDestination understands them (and the .NET canonical forms Jasper's Uri.ToString()
// produces). NewPublisher returns a message.Publisher whose topic is that destination URI, so a
// forwarder can hand it the destination column verbatim. It wraps watermill-amqp's publisher with
// publisher confirms, persistent delivery, a channel pool for concurrent Publish calls and
// reconnection with back-off, and it adds what a relay needs on top:
//
//   - per-message validation: a destination that is not rabbitmq:// (local://..., tcp://...) or
//     is malformed fails with a *DestinationError, which is permanent (errors.Is(err,
//     fault.ErrPermanent)), so the forwarder dead-letters the envelope instead of retrying forever;
//   - topology checks: before the first message to a destination the queue (or exchange) is
//     checked to exist, and created durable when WithDeclareQueues / WithDeclareExchanges is set.
//     Without the check RabbitMQ silently drops a message sent to a missing queue and still
//     confirms it, and the outbox row would be deleted;
//   - the messages' contexts and an optional WithPublishTimeout bound how long Publish blocks
//     (watermill-amqp itself waits for confirms without a deadline).
//
// NewConfirmPublisher is the same publisher built directly on amqp091-go for throughput: a few
// confirm-mode channels shared by all Publish calls, each call waiting for its own confirms, so
// confirms are pipelined across concurrent callers (watermill-amqp v2 publishes one message and
// waits for its confirm before the next on each channel). It also publishes with the mandatory
// flag, so that a message RabbitMQ cannot route fails with ErrUnroutable instead of being dropped,
// turns nacks into ErrNacked and connection or channel losses into ErrConnectionLost, and
// re-dials in the background. Use it for relays; NewPublisher remains for code that wants
// watermill-amqp's publisher underneath.
//
// Local destinations (local://QUEUE, local://durable/QUEUE) are Jasper's in-process queues, not
// AMQP: route them elsewhere (for example into jasper_incoming_envelopes) before this publisher.
//
// NewPublisherConfig returns the underlying amqp.Config for callers who build their own
// watermill-amqp publisher, and NewSubscriberConfig one for consuming a Jasper queue by name.
//
// The AMQP URL's password never appears in logs or errors: see RedactURL.
package jasperamqp
