// Package middleware holds Watermill router middleware over Jasper's tables: an idempotent
// inbox (Inbox) and dead-lettering into jasper_dead_letters (DeadLetter).
//
// Both work on the database and schema of a durability agent (*durability.Agent): take them
// from a jasper.Runtime (rt.Inbox, rt.DeadLetter), or build them on an agent of your own
// (durability.NewNode, durability.NewAgent, Agent.Start) with NewInbox and NewDeadLetter.
//
// # Inbox: exactly-once effects
//
// For each message, Inbox.Middleware opens a database transaction, records the message as
// handled in jasper_incoming_envelopes (status Handled, keep_until = now + KeepFor), runs the
// handler with the transaction in the message's context, and commits:
//
//	inbox, _ := rt.Inbox(middleware.InboxConfig{ConsumerName: "billing"})
//	// or: middleware.NewInbox(agent, middleware.InboxConfig{ConsumerName: "billing"}, logger)
//	router.AddMiddleware(inbox.Middleware)
//
//	func handle(msg *message.Message) error {
//		tx, _ := middleware.TxFromContext(msg.Context())
//		if _, err := tx.Exec(msg.Context(), "INSERT INTO invoices ...", ...); err != nil {
//			return err // rolled back: no invoice, no mark; the redelivery runs again
//		}
//		// Written by the outbox publisher inside the same transaction:
//		return middleware.Publish(msg.Context(), outbox, "invoices", message.NewMessage(watermill.NewUUID(), body))
//	}
//
// The handler's writes, the Handled mark and every message published through this library's
// publisher (package publisher, built on the pool) commit together or not at all. A handler
// error rolls everything back, so a redelivery runs the handler again; a message already
// handled is acknowledged without running the handler.
//
// The mark is inserted first, before the handler runs, with ON CONFLICT DO NOTHING. Under
// READ COMMITTED a concurrent delivery of the same message inserts the same primary key,
// waits for the first transaction, and then finds the committed row (a duplicate: acked
// without running the handler) or, if the first rolled back, inserts it and runs.
//
// The key of a mark is InboxKey(ConsumerName, handler name, message UUID): a UUIDv5, so one
// message is handled once per consumer and router handler, and two handlers (or two
// services sharing the database under different consumer names) each handle it once.
//
// A message delivered by this library's subscriber (it carries metadata.EnvelopeID, and its
// row has received_at = the handler's topic and status Incoming) marks its own row Handled
// instead of inserting a second one; the subscriber then keeps that row on Ack.
//
// A mark is kept for InboxConfig.KeepFor. The inbox never deletes marks: the durability
// agent's Handled cleanup job (durability.JobHandled) is their only owner, deleting the marks
// past keep_until every durability.Config.HandledCleanupPollingTime, in batches of
// HandledCleanupBatchSize, each its own transaction, under one lock shared by every agent of
// the database. Keep the agent running (a jasper.Runtime does) or the marks accumulate.
//
// # Dead letters
//
// DeadLetter.Middleware reads a handler's error in the module's one error vocabulary (package
// fault, docs/errors.md): an ordinary error is retried in process with exponential back-off,
// up to MaxAttempts tries; a permanent one (fault.Permanent, or matched by
// DeadLetterConfig.IsPermanent) is not retried; a temporary one (fault.Temporary) counts no
// attempt and is never dead-lettered: the message is nacked at once, for its redelivery. The
// wait before attempt n+1 is InitialInterval times Multiplier^(n-1), capped at MaxInterval,
// without jitter. After the last attempt of an ordinary error, or at once for a permanent
// one, the middleware writes the message to jasper_dead_letters with Jasper's fields
// (exception_type = the Go type of the root error, exception_message, exception_text = the
// whole error chain, explanation, source = the handler name, received_at = the topic,
// attempts, body, headers), sets Watermill's poison metadata keys (reason_poisoned,
// topic_poisoned, handler_poisoned, subscriber_poisoned) and acknowledges the message. The
// admin package lists, shows, replays and purges dead letters.
//
// # Order
//
// The recommended order is dead letters outside, inbox inside:
//
//	router.AddMiddleware(deadLetters.Middleware, inbox.Middleware)
//
// Each attempt then runs in its own transaction, and a dead letter is written on its own
// after the last one rolled back. The other order also works and loses no retry:
//
//	router.AddMiddleware(inbox.Middleware, deadLetters.Middleware)
//
// There the dead-letter middleware runs each attempt inside a savepoint of the inbox
// transaction (rolled back when it fails), and on giving up writes the dead letter in that
// transaction and withdraws the Handled mark, so a replayed dead letter is handled again.
// It holds the transaction (and a connection) open across the back-off waits, which is why
// the first order is recommended.
//
// Do not also add Watermill's Retry or PoisonQueue around these: DeadLetter already retries
// and never returns the error it dead-lettered.
package middleware
