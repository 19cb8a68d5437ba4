package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Defaults of InboxConfig.
const (
	// DefaultKeepFor is how long a Handled mark is kept, so how late a duplicate is still
	// recognised. Wolverine keeps its marks 5 minutes, which covers a broker redelivering at
	// once; duplicates also come much later: a consumer down overnight whose broker
	// redelivers its unacknowledged messages when it comes back, a forwarder or outbox
	// relay that re-sends after a crash and a failover, a producer replaying a batch. A day
	// covers those. The cost is one small row (about 250 bytes with its index entries, no
	// body) per message for a day: about 2 GB at a steady 100 messages a second; lower it
	// for higher rates.
	DefaultKeepFor = 24 * time.Hour
	// DefaultCleanupInterval is how often Inbox.Run deletes expired marks.
	DefaultCleanupInterval = time.Minute
	// DefaultCleanupBatchSize is how many expired marks one statement deletes.
	DefaultCleanupBatchSize = 1000
)

// ErrInvalidConfig is wrapped by every configuration error of NewInbox and NewDeadLetter.
var ErrInvalidConfig = errors.New("watermill-jasper: invalid middleware config")

// InboxConfig configures an Inbox.
type InboxConfig struct {
	// DB is the database holding both the Jasper tables and the handler's own tables: the
	// handler's writes and the Handled mark commit in one transaction of DB. Required.
	DB database.DB
	// Schema says where the Jasper tables are. Default: PostgreSQL, schema "public".
	Schema schema.Config
	// ConsumerName names this consumer (a service, or one logical subscriber of a topic) in
	// the key of its marks: InboxKey(ConsumerName, handler name, message UUID). Two
	// services sharing a database must use two names. Required; keep it stable, a new name
	// forgets every mark.
	ConsumerName string
	// KeepFor is how long a Handled mark is kept after the message was handled: a duplicate
	// arriving later is handled again. Default DefaultKeepFor (24h; see there why).
	KeepFor time.Duration
	// CleanupInterval is how often Run deletes the expired marks. Default 1 minute.
	CleanupInterval time.Duration
	// CleanupBatchSize is how many expired marks one DELETE removes (each batch is its own
	// short statement). Default 1000.
	CleanupBatchSize int
	// Publisher, when set, publishes the messages the handler returns inside the handler's
	// transaction, to the router's publish topic, instead of returning them to the router
	// (which publishes them after the commit). Use this library's outbox publisher built on
	// the pool (publisher.NewPublisher(sql.BeginnerFromPgx(pool), ...)). Without it, a
	// router publish failing after the commit makes the redelivery a duplicate and the
	// returned messages are never published: prefer Publish inside the handler, or set this.
	Publisher message.Publisher
	// Defaults fill message_type and content_type of the marks when the message's metadata
	// does not (see package metadata).
	Defaults publisher.Defaults
	// Logger; default none.
	Logger watermill.LoggerAdapter
}

func (c *InboxConfig) setDefaults() {
	if c.Schema.Dialect == "" && c.DB != nil {
		c.Schema.Dialect = c.DB.Dialect()
	}
	if c.KeepFor == 0 {
		c.KeepFor = DefaultKeepFor
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
	if c.CleanupBatchSize == 0 {
		c.CleanupBatchSize = DefaultCleanupBatchSize
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate checks the config, after defaults are applied.
func (c InboxConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.DB == nil:
		return fmt.Errorf("%w: InboxConfig.DB is nil; pass database.FromPgx(pool) or database.FromStdSQL(db)", ErrInvalidConfig)
	case c.ConsumerName == "":
		return fmt.Errorf("%w: InboxConfig.ConsumerName is empty; name the consumer (e.g. the service name), it keys the marks", ErrInvalidConfig)
	case c.KeepFor < time.Millisecond:
		return fmt.Errorf("%w: InboxConfig.KeepFor is %s, it must be at least 1ms", ErrInvalidConfig, c.KeepFor)
	case c.CleanupInterval < 0:
		return fmt.Errorf("%w: InboxConfig.CleanupInterval is negative (%s)", ErrInvalidConfig, c.CleanupInterval)
	case c.CleanupBatchSize < 1:
		return fmt.Errorf("%w: InboxConfig.CleanupBatchSize is %d, it must be positive", ErrInvalidConfig, c.CleanupBatchSize)
	}
	if err := c.Schema.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.Schema.Dialect != c.DB.Dialect() {
		return fmt.Errorf("%w: InboxConfig.Schema says dialect %s but DB is %s", ErrInvalidConfig, c.Schema.Dialect, c.DB.Dialect())
	}
	return nil
}

// Inbox is the idempotent inbox middleware (see the package documentation). Its Middleware
// may be used by any number of handlers and goroutines; Run deletes expired marks.
type Inbox struct {
	db      database.DB
	dialect sqldialect.Dialect
	codec   row.UUIDCodec
	config  InboxConfig
	keepMS  int64
	logger  watermill.LoggerAdapter

	mu      sync.Mutex
	running bool
	closed  bool
	closing chan struct{}
	done    chan struct{}
}

// NewInbox returns an Inbox. The Jasper tables must exist (schema.Migrate, or
// `watermill-jasper schema migrate`).
func NewInbox(config InboxConfig) (*Inbox, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, err
	}
	d, err := sqldialect.For(config.Schema)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	config.Schema = d.Schema()
	return &Inbox{
		db: config.DB, dialect: d, codec: d.UUIDs(), config: config,
		keepMS: config.KeepFor.Milliseconds(), logger: config.Logger,
		closing: make(chan struct{}), done: make(chan struct{}),
	}, nil
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
	markDuplicate markKind = iota // handled before (or being handled by another delivery)
	markKeyed                     // a new mark row keyed by InboxKey
	markOwnRow                    // the subscriber's own incoming row
)

// Middleware is the inbox as a message.HandlerMiddleware.
func (in *Inbox) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		return in.handle(msg, h)
	}
}

func (in *Inbox) handle(msg *message.Message, h message.HandlerFunc) (produced []*message.Message, err error) {
	orig := msg.Context()
	handler := message.HandlerNameFromCtx(orig)
	topic := message.SubscribeTopicFromCtx(orig)
	// BEGIN and the mark go to the database in one round trip where the driver allows it
	// (database.BeginExec): the mark is the transaction's first statement.
	tx, kind, id, err := in.beginMarked(orig, msg, handler, topic)
	finished := false
	defer func() {
		msg.SetContext(orig)
		if tx != nil && !finished { // an error, a duplicate, or a panic: nothing of this attempt stays
			_ = tx.Rollback(context.WithoutCancel(orig))
		}
	}()
	if err != nil {
		return nil, in.errorf(msg, "begin a transaction and record the message as handled", err)
	}
	if kind == markDuplicate {
		in.logger.Debug("Inbox: message handled before, acknowledged without running the handler", watermill.LogFields{
			"message_uuid": msg.UUID, "consumer": in.config.ConsumerName, "handler": handler, "topic": topic,
		})
		return nil, nil
	}

	st := &txState{inbox: in, tx: tx, markID: id}
	msg.SetContext(st.context(orig))
	produced, err = h(msg)
	msg.SetContext(orig)
	if err != nil {
		return nil, err
	}
	if st.deadLettered.Load() {
		// The dead-letter middleware inside gave up and wrote the dead letter in this
		// transaction: withdraw the mark so that a replay is handled.
		if _, err := tx.Exec(orig, in.dialect.DeleteHandledMark(), in.codec.Arg(id)); err != nil {
			return nil, in.errorf(msg, "withdraw the mark of a dead-lettered message", err)
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
		return nil, in.errorf(msg, "commit", err)
	}
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
	if in.dialect.IsMissingTable(err) {
		return fmt.Errorf("watermill-jasper inbox %q: message %s: %s: the Jasper tables are missing in schema %q; create them with `watermill-jasper schema migrate` or schema.Migrate: %w",
			in.config.ConsumerName, msg.UUID, op, in.config.Schema.Schema, err)
	}
	return fmt.Errorf("watermill-jasper inbox %q: message %s: %s: %w", in.config.ConsumerName, msg.UUID, op, err)
}

// beginMarked starts the inbox transaction with the mark as its first statement and says
// how the message was marked. The returned Tx, when not nil, is the caller's to end, also
// when err is not nil.
func (in *Inbox) beginMarked(ctx context.Context, msg *message.Message, handler, topic string) (database.Tx, markKind, uuid.UUID, error) {
	if id, ok := ownRowID(msg, topic); ok {
		tx, n, err := database.BeginExec(ctx, in.db, in.dialect.MarkIncomingHandled(), in.codec.Arg(id), topic, in.keepMS)
		if err != nil {
			return nil, 0, id, err
		}
		if n == 1 {
			return tx, markOwnRow, id, nil
		}
		kind, err := in.ownRowStatus(ctx, tx, id, topic)
		if err != nil || kind != markKeyed {
			return tx, kind, id, err
		}
		// No row of this topic with that id: the metadata came along from elsewhere (a
		// relayed message keeps its envelope id); fall back to a keyed mark.
		key := InboxKey(in.config.ConsumerName, handler, msg.UUID)
		n, err = tx.Exec(ctx, in.dialect.InsertHandled(), in.markArgs(msg, topic, key)...)
		return tx, keyedKind(n), key, err
	}
	key := InboxKey(in.config.ConsumerName, handler, msg.UUID)
	tx, n, err := database.BeginExec(ctx, in.db, in.dialect.InsertHandled(), in.markArgs(msg, topic, key)...)
	return tx, keyedKind(n), key, err
}

func keyedKind(inserted int64) markKind {
	if inserted == 0 {
		return markDuplicate
	}
	return markKeyed
}

// markArgs are the bind values of InsertHandled for the mark row id of msg.
func (in *Inbox) markArgs(msg *message.Message, topic string, id uuid.UUID) []any {
	e := in.markEnvelope(msg, topic)
	e.ID = id
	return append(e.IncomingArgs(make([]any, 0, len(row.IncomingColumns)+1), in.codec), in.keepMS)
}

// ownRowStatus says, after MarkIncomingHandled marked no row, why: markDuplicate when the
// row exists but cannot be marked (handled already, or in the hands of another delivery),
// markKeyed when there is no such row.
func (in *Inbox) ownRowStatus(ctx context.Context, tx database.Tx, id uuid.UUID, topic string) (markKind, error) {
	var status string
	err := database.QueryRow(ctx, tx, in.dialect.IncomingStatus(), []any{in.codec.Arg(id), topic}, &status)
	switch {
	case errors.Is(err, database.ErrNoRows):
		return markKeyed, nil
	case err != nil:
		return 0, err
	}
	if status != schema.StatusHandled {
		in.logger.Info("Inbox: the delivered envelope is not Incoming any more (another delivery holds it); acknowledged without running the handler",
			watermill.LogFields{"envelope_id": id.String(), "status": status, "topic": topic})
	}
	return markDuplicate, nil
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

// Cleanup deletes every Handled mark whose keep_until has passed, in batches of
// CleanupBatchSize rows (each its own short statement, skipping rows locked by others), and
// returns how many it deleted. Run calls it every CleanupInterval.
func (in *Inbox) Cleanup(ctx context.Context) (int64, error) {
	var total int64
	for {
		n, err := in.db.Exec(ctx, in.dialect.DeleteExpiredHandled(), in.config.CleanupBatchSize)
		total += n
		if err != nil {
			return total, fmt.Errorf("watermill-jasper inbox %q: delete expired marks: %w", in.config.ConsumerName, err)
		}
		if n < int64(in.config.CleanupBatchSize) {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}

// Run deletes expired marks (Cleanup) at once and then every CleanupInterval, off the
// message path, until ctx ends or Close is called; it then returns nil. Errors are logged
// and retried at the next interval. Run once per Inbox; a second concurrent call returns an
// error.
func (in *Inbox) Run(ctx context.Context) error {
	in.mu.Lock()
	switch {
	case in.closed:
		in.mu.Unlock()
		return fmt.Errorf("watermill-jasper inbox %q: Run after Close", in.config.ConsumerName)
	case in.running:
		in.mu.Unlock()
		return fmt.Errorf("watermill-jasper inbox %q: Run is already running", in.config.ConsumerName)
	}
	in.running = true
	in.mu.Unlock()
	defer close(in.done)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-in.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		n, err := in.Cleanup(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			in.logger.Error("Inbox: deleting expired marks failed; retrying later", err, watermill.LogFields{"consumer": in.config.ConsumerName})
		case n > 0:
			in.logger.Debug("Inbox: expired marks deleted", watermill.LogFields{"consumer": in.config.ConsumerName, "rows": n})
		}
		timer.Reset(in.config.CleanupInterval)
	}
}

// Close stops Run and waits for it to return. The middleware keeps working. Idempotent.
func (in *Inbox) Close() error {
	in.mu.Lock()
	if !in.closed {
		in.closed = true
		close(in.closing)
	}
	running := in.running
	in.mu.Unlock()
	if running {
		<-in.done
	}
	return nil
}

// Schema returns the normalized schema config of the inbox.
func (in *Inbox) Schema() schema.Config { return in.config.Schema }
