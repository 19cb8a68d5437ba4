// Package publisher is the transactional outbox of watermill-jasper: a Watermill
// message.Publisher that writes each message as a Jasper envelope row
// (jasper_outgoing_envelopes) in the application's own database, so the message commits or
// rolls back with the business data. The forwarder later relays committed envelopes to any
// Watermill publisher (RabbitMQ, Kafka, NATS...).
//
// # Transactions
//
// Like watermill-sql's publisher, NewPublisher takes a watermill-sql ContextExecutor:
//
//   - a transaction, sql.TxFromStdSQL(tx) or sql.TxFromPgx(tx): every Publish writes inside
//     it (build one Publisher per transaction; it is cheap);
//   - a pool, sql.BeginnerFromStdSQL(db) or sql.BeginnerFromPgx(pool): a Publish joins the
//     transaction carried by its first message's context (WithTx; the inbox middleware sets
//     it) and otherwise commits on its own.
//
// The rows are written through the storage operations of the database's Driver
// (Config.Driver: database.FromPgx, database.FromStdSQL, sqlserver.FromStdSQL). It is optional
// on PostgreSQL and required on SQL Server. Publishers created per transaction should share
// one Driver and one Coalescer (Config.Coalescer), so that they build no statements of their
// own and notify the forwarders at most once per Config.NotifyInterval together; the runtime
// (jasper.NewRuntime) hands out publishers set up so: Runtime.Publisher on the pool,
// Runtime.TxPublisher in a caller's transaction.
//
// # Messages and rows
//
// The message <-> row mapping is documented in package metadata: the row id is derived from
// (topic, message UUID), so re-publishing a message to the same topic is idempotent;
// message_type, content_type, correlation_id, parent_id (W3C traceparent), conversation_id,
// deliver_by and friends come from documented metadata keys; every metadata pair is kept in
// the headers extension column.
//
// A message delayed with Watermill's components/delay (due in the future) becomes a Jasper
// scheduled send instead: an incoming row with status Scheduled, execution_time = the due
// time, message_type "scheduled-envelope", content_type "binary/envelope", received_at
// "local://durable", whose body is the Jasper binary envelope of the message (destination =
// topic). When it is due, the durability agent moves it to the outgoing table, as Jasper's
// ScheduledSendEnvelopeHandler does; .NET Jasper nodes sharing the database do the same.
//
// The due time is exact: components/delay writes "_watermill_delayed_until" to the whole
// second only (time.RFC3339, rounded down), so the publisher takes the time of the Publish
// call plus "_watermill_delayed_for" (the exact delay), kept within the second the until key
// names, and reads "_watermill_delayed_until" (fractional seconds included) when it is alone.
// A message is never due before the time its delay meant; one due already is written as an
// ordinary envelope at once. With the Incoming table, a delayed message is a row of the topic
// with status Scheduled and execution_time = the due time. The runtime's publishers ask their
// durability agent for a pass at the due time (Config.OnScheduled), so that the row is
// released within milliseconds of it.
//
// # Round trips
//
// A Publish call is one statement, whatever the number of messages (immediate and delayed
// ones, and on PostgreSQL the notification that wakes the forwarders), up to the driver's
// 65535 bind parameters (3855 immediate or 3640 delayed messages); larger calls are split into several
// statements, run in one transaction.
package publisher
