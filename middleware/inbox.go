package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/defaults"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/stats"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/tracing"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// DefaultKeepFor is how long a Handled mark is kept, so how late a duplicate is still
// recognised. Wolverine keeps its marks 5 minutes, which covers a broker redelivering at
// once; duplicates also come much later: a consumer down overnight whose broker redelivers
// its unacknowledged messages when it comes back, a forwarder or outbox relay that re-sends
// after a crash and a failover, a producer replaying a batch. A day covers those. The cost
// is one small row (about 250 bytes with its index entries, no body) per message for a day:
// about 2 GB at a steady 100 messages a second; lower it for higher rates.
const DefaultKeepFor = 24 * time.Hour

// ErrInvalidConfig is wrapped by every configuration error of NewInbox and NewDeadLetter.
var ErrInvalidConfig = errors.New("watermill-jasper: invalid middleware config")

// errNilAgent is the error of NewInbox and NewDeadLetter given no agent.
var errNilAgent = fmt.Errorf("%w: the *durability.Agent is nil; build one with jasper.NewRuntime (rt.Inbox, rt.DeadLetter), or durability.NewNode then durability.NewAgent", ErrInvalidConfig)

// InboxConfig configures an Inbox. The database and the schema are the agent's: the Jasper
// tables and the handler's own tables are in that database, and the handler's writes and the
// Handled mark commit in one transaction of it.
type InboxConfig struct {
	// ConsumerName names this consumer (a service, or one logical subscriber of a topic) in
	// the key of its marks: InboxKey(ConsumerName, handler name, message UUID). Two
	// services sharing a database must use two names. Required; keep it stable, a new name
	// forgets every mark.
	ConsumerName string
	// KeepFor is how long a Handled mark is kept after the message was handled: a duplicate
	// arriving later is handled again. Default DefaultKeepFor (24h; see there why). The inbox
	// deletes no mark itself: the durability agent's Handled cleanup job
	// (durability.JobHandled, every durability.Config.HandledCleanupPollingTime, in batches of
	// HandledCleanupBatchSize) deletes the marks past their keep_until, so a mark may outlive
	// KeepFor by up to one polling time, and marks accumulate while no agent runs.
	KeepFor time.Duration
	// Publisher, when set, publishes the messages the handler returns inside the handler's
	// transaction, to the router's publish topic, instead of returning them to the router
	// (which publishes them after the commit). Use this library's outbox publisher built on
	// the pool (a jasper.Runtime's Publisher, or publisher.NewPublisher(
	// sql.BeginnerFromPgx(pool), ...)). Without it, a router publish failing after the commit
	// makes the redelivery a duplicate and the returned messages are never published: prefer
	// Publish inside the handler, or set this.
	Publisher message.Publisher
	// Defaults fill message_type and content_type of the marks when the message's metadata
	// does not (see package metadata).
	Defaults publisher.Defaults
	// TracerProvider, when set, traces every message the inbox handles with an OpenTelemetry
	// span "process <topic>" (kind consumer, messaging semantic conventions, with
	// messaging.consumer.group.name = ConsumerName), a child of the trace context of the
	// message's metadata (traceparent, tracestate; e.g. set by the forwarder and carried by
	// the broker), or of the context's span when it belongs to that trace (this library's
	// subscriber's). The handler runs with the span in the message's context, so its own
	// spans and the messages it publishes continue the trace. Nil: no spans, no cost. The
	// runtime sets its own (jasper.Config.TracerProvider) when this is nil.
	TracerProvider trace.TracerProvider
}

func (c *InboxConfig) setDefaults() {
	defaults.Set(&c.KeepFor, DefaultKeepFor)
}

// Validate checks the config, after defaults are applied.
func (c InboxConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.ConsumerName == "":
		return fmt.Errorf("%w: InboxConfig.ConsumerName is empty; name the consumer (e.g. the service name), it keys the marks", ErrInvalidConfig)
	case c.KeepFor < time.Millisecond:
		return fmt.Errorf("%w: InboxConfig.KeepFor is %s, it must be at least 1ms", ErrInvalidConfig, c.KeepFor)
	}
	return nil
}

// Inbox is the idempotent inbox middleware (see the package documentation). Its Middleware
// may be used by any number of handlers and goroutines. It has nothing to run or close: the
// agent's Handled cleanup job deletes the expired marks.
type Inbox struct {
	store  store.Store
	config InboxConfig
	logger watermill.LoggerAdapter
	tracer *tracing.Tracer // nil: tracing off
	topics stats.Table[inboxCounters]
}

// NewInbox returns an Inbox on the tables of agent's schema, in agent's database. The
// Jasper tables must exist (schema.Migrate, or `watermill-jasper schema migrate`). Keep the
// agent running while the inbox is used: it deletes the expired marks. logger may be nil.
func NewInbox(agent *durability.Agent, config InboxConfig, logger watermill.LoggerAdapter) (*Inbox, error) {
	config.setDefaults()
	logger, err := setup(agent, config.Validate, logger)
	if err != nil {
		return nil, err
	}
	return &Inbox{store: agent.Store(), config: config, logger: logger, tracer: tracing.New(config.TracerProvider)}, nil
}

// setup checks what both middleware constructors need, an agent and a valid config, and
// returns the logger to use.
func setup(agent *durability.Agent, validate func() error, logger watermill.LoggerAdapter) (watermill.LoggerAdapter, error) {
	if agent == nil {
		return nil, errNilAgent
	}
	if err := validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return logger, nil
}

// inboxNamespace seeds InboxKey.
var inboxNamespace = uuid.MustParse("2d4c8a1e-5b7f-4e0a-9c63-8f1d2b7a4e59")

// InboxKey is the id of the Handled mark of a message: the UUIDv5 (SHA-1), in a namespace of
// this library, of consumer, handler and message UUID joined by NUL bytes. handler is the
// router handler's name (message.HandlerNameFromCtx; "" outside a router).
func InboxKey(consumer, handler, messageUUID string) uuid.UUID {
	return uuid.NewSHA1(inboxNamespace, []byte(consumer+"\x00"+handler+"\x00"+messageUUID))
}

// markKind says how a message was marked.
type markKind int

const (
	markDuplicate markKind = iota // handled before
	markKeyed                     // a new mark row keyed by InboxKey
	markOwnRow                    // the subscriber's own incoming row
)

// Middleware is the inbox as a message.HandlerMiddleware.
func (in *Inbox) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if in.tracer != nil {
			return in.handleTraced(msg, h)
		}
		return in.handle(msg, h)
	}
}

// handleTraced is handle inside a process span, held in the message's context meanwhile.
func (in *Inbox) handleTraced(msg *message.Message, h message.HandlerFunc) ([]*message.Message, error) {
	orig := msg.Context()
	topic := message.SubscribeTopicFromCtx(orig)
	ctx, span := in.tracer.Start(tracing.ParentForDelivery(orig, msg), tracing.Process, topic, msg,
		attribute.String(tracing.AttrConsumerGroup, in.config.ConsumerName))
	msg.SetContext(ctx)
	produced, err := in.handle(msg, h)
	msg.SetContext(orig)
	tracing.End(span, err)
	return produced, err
}

func (in *Inbox) handle(msg *message.Message, h message.HandlerFunc) (produced []*message.Message, err error) {
	orig := msg.Context()
	handler := message.HandlerNameFromCtx(orig)
	topic := message.SubscribeTopicFromCtx(orig)
	// BEGIN and the mark go to the database in one round trip where the driver allows it
	// (pgx): the mark is the transaction's first statement.
	tx, kind, id, err := in.beginMarked(orig, msg, handler, topic)
	finished := false
	defer func() {
		msg.SetContext(orig)
		if tx != nil && !finished { // an error, a duplicate, or a panic: nothing of this attempt stays
			_ = tx.Rollback(context.WithoutCancel(orig))
		}
	}()
	if err != nil {
		return nil, in.dbErrorf(orig, msg, "begin a transaction and record the message as handled", err)
	}
	counters := in.topics.Get(topic)
	if kind == markDuplicate {
		counters.duplicates.Add(1)
		in.logger.Debug("Inbox: message handled before, acknowledged without running the handler", watermill.LogFields{
			"message_uuid": msg.UUID, "consumer": in.config.ConsumerName, "handler": handler, "topic": topic,
		})
		return nil, nil
	}

	st := &txState{inbox: in, tx: tx, ops: in.store.With(tx)}
	msg.SetContext(st.context(orig))
	produced, err = h(msg)
	msg.SetContext(orig)
	if err != nil {
		return nil, err
	}
	if st.deadLettered.Load() {
		// The dead-letter middleware inside gave up and wrote the dead letter in this
		// transaction: withdraw the mark so that a replay is handled.
		if err := st.ops.DeleteHandledMark(orig, id); err != nil {
			return nil, in.dbErrorf(orig, msg, "withdraw the mark of a dead-lettered message", err)
		}
		produced = nil
	}
	if len(produced) > 0 && in.config.Publisher != nil {
		if err := in.publishProduced(orig, st, produced); err != nil {
			return nil, in.errorf(msg, "publish the produced messages", err)
		}
		produced = nil
	}
	finished = true
	if err := tx.Commit(context.WithoutCancel(orig)); err != nil {
		return nil, in.dbErrorf(orig, msg, "commit", err)
	}
	counters.handled.Add(1)
	return produced, nil
}

func (in *Inbox) publishProduced(ctx context.Context, st *txState, produced []*message.Message) error {
	topic := message.PublishTopicFromCtx(ctx)
	if topic == "" {
		return fmt.Errorf("the handler returned %d message(s) but has no publish topic (use Publish inside the handler)", len(produced))
	}
	pctx := st.context(ctx)
	for _, m := range produced {
		if m != nil {
			m.SetContext(pctx)
		}
	}
	return in.config.Publisher.Publish(topic, produced...)
}

func (in *Inbox) errorf(msg *message.Message, op string, err error) error {
	return fmt.Errorf("watermill-jasper inbox %q: message %s: %s: %w", in.config.ConsumerName, msg.UUID, op, withTablesHint(in.store, err))
}

// dbErrorf is errorf for a failure of the inbox's own database work (the transaction and its
// mark). When the database did not answer the statement (a lost connection, a timeout: not
// IsStatementError), the failure says nothing about the message: it is temporary
// (fault.Temporary), so the dead-letter middleware outside retries it without counting an
// attempt, and a database outage never dead-letters good messages.
func (in *Inbox) dbErrorf(ctx context.Context, msg *message.Message, op string, err error) error {
	e := in.errorf(msg, op, err)
	if ctx.Err() == nil && !in.store.IsStatementError(err) && !in.store.IsMissingTable(err) {
		return fault.Temporary(e)
	}
	return e
}

// withTablesHint names the fix when err says the Jasper tables are missing.
func withTablesHint(s store.Store, err error) error {
	if s.IsMissingTable(err) {
		return fmt.Errorf("the Jasper tables are missing in schema %q; create them with `watermill-jasper schema migrate` or schema.Migrate: %w", s.Schema().Schema, err)
	}
	return err
}

// errHeldElsewhere is wrapped by the error of a delivery whose envelope another delivery
// holds (its status is not Incoming): the message is nacked, not acknowledged.
var errHeldElsewhere = errors.New("the envelope is held by another delivery")

// beginMarked starts the inbox transaction with the mark as its first statement and says
// how the message was marked. The returned Tx, when not nil, is the caller's to end, also
// when err is not nil.
func (in *Inbox) beginMarked(ctx context.Context, msg *message.Message, handler, topic string) (database.Tx, markKind, uuid.UUID, error) {
	key := InboxKey(in.config.ConsumerName, handler, msg.UUID)
	id, own := ownRowID(msg, topic)
	if !own {
		tx, inserted, err := in.store.BeginInsertHandled(ctx, in.markParams(msg, topic, key))
		return tx, keyedKind(inserted), key, err
	}
	tx, marked, err := in.store.BeginMarkHandled(ctx, store.MarkHandledParams{ID: id, Topic: topic, Keep: in.config.KeepFor})
	switch {
	case err != nil:
		return tx, 0, id, err
	case marked:
		return tx, markOwnRow, id, nil
	}
	ops := in.store.With(tx)
	status, found, err := ops.IncomingStatus(ctx, id, topic)
	switch {
	case err != nil:
		return tx, 0, id, err
	case found && status == schema.StatusHandled:
		return tx, markDuplicate, id, nil
	case found:
		// The row exists but is not Incoming: another delivery of it holds it (handed back
		// and claimed again, or a retry is scheduled). This delivery did not handle it, so it
		// must not be acknowledged: the acknowledgement deletes the row, and the message
		// would be lost. It fails, temporarily, and the row's own delivery handles it.
		return tx, 0, id, fault.Temporary(fmt.Errorf("%w: envelope %s is %s, held by another delivery of it; not handled by this one",
			errHeldElsewhere, id, status))
	}
	// No row of this topic with that id: the metadata came along from elsewhere (a relayed
	// message keeps its envelope id); fall back to a keyed mark.
	inserted, err := ops.InsertHandled(ctx, in.markParams(msg, topic, key))
	return tx, keyedKind(inserted), key, err
}

func keyedKind(inserted bool) markKind {
	if !inserted {
		return markDuplicate
	}
	return markKeyed
}

// markParams are the keyed mark id of msg.
func (in *Inbox) markParams(msg *message.Message, topic string, id uuid.UUID) store.InsertHandledParams {
	e := in.markEnvelope(msg, topic)
	e.ID = id
	return store.InsertHandledParams{Mark: e, Keep: in.config.KeepFor}
}

// ownRowID returns the envelope id of a message delivered by this library's subscriber.
func ownRowID(msg *message.Message, topic string) (uuid.UUID, bool) {
	v := msg.Metadata.Get(metadata.EnvelopeID)
	if v == "" || topic == "" {
		return uuid.Nil, false
	}
	id, err := uuid.Parse(v)
	return id, err == nil
}

// markEnvelope is the mark row of a message: the mapped columns (message type, correlation
// id...), status Handled, received_at = topic, without body or headers.
func (in *Inbox) markEnvelope(msg *message.Message, topic string) row.Envelope {
	e, err := row.FromMessage(topic, msg, in.config.Defaults)
	if err != nil {
		// A metadata value that cannot fill its column does not stop the mark.
		e, _ = row.FromMessage(topic, withoutColumnKeys(msg), in.config.Defaults)
	}
	e.Destination = topic
	e.Status = schema.StatusHandled
	e.OwnerID = 0
	e.Body = []byte{}
	e.Headers = nil
	e.DeliverBy = nil
	return e
}

// withoutColumnKeys copies msg without the metadata keys whose values must parse (UUID,
// boolean, time), for when one does not.
func withoutColumnKeys(msg *message.Message) *message.Message {
	c := message.NewMessage(msg.UUID, msg.Payload)
	for k, v := range msg.Metadata {
		switch k {
		case metadata.ConversationID, metadata.AckRequested, metadata.DeliverBy:
			continue
		}
		c.Metadata.Set(k, v)
	}
	return c
}

// Schema returns the normalized schema config of the inbox.
func (in *Inbox) Schema() schema.Config { return in.store.Schema() }
