package publisher

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
	"github.com/watermill-jasper/watermill-jasper/internal/tracing"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// MaxTopicLength is the longest topic accepted, in bytes: Jasper's destination column is
// varchar(250) on SQL Server.
const MaxTopicLength = 250

var (
	// ErrPublisherClosed is returned by Publish after Close.
	ErrPublisherClosed = errors.New("watermill-jasper: publisher is closed")
	// ErrInvalidTopic is wrapped by errors about a topic that cannot be a Jasper destination:
	// empty, longer than MaxTopicLength bytes, holding a NUL byte or not valid UTF-8.
	ErrInvalidTopic = errors.New("watermill-jasper: invalid topic")
	// ErrInvalidMessage is wrapped by errors about a message that cannot become an envelope:
	// a nil message, or metadata with a bad value (e.g. a conversation id that is not a UUID).
	ErrInvalidMessage = row.ErrInvalidMessage
	// ErrMissingTables is wrapped by Publish errors caused by missing tables or schema: run
	// `watermill-jasper schema migrate` (or call schema.Migrate) first.
	ErrMissingTables = errors.New("watermill-jasper: envelope tables are missing")
)

// ValidateTopic reports whether topic can be a Jasper destination (see ErrInvalidTopic).
func ValidateTopic(topic string) error {
	switch {
	case topic == "":
		return fmt.Errorf("%w: the topic is empty", ErrInvalidTopic)
	case len(topic) > MaxTopicLength:
		return fmt.Errorf("%w: the topic is %d bytes long, the limit is %d (Jasper's destination column)", ErrInvalidTopic, len(topic), MaxTopicLength)
	case strings.IndexByte(topic, 0) >= 0:
		return fmt.Errorf("%w: the topic %q holds a NUL byte", ErrInvalidTopic, topic)
	case !utf8.ValidString(topic):
		return fmt.Errorf("%w: the topic %q is not valid UTF-8", ErrInvalidTopic, topic)
	}
	return nil
}

// errNoSlot is logged when TableLess finds no usable slot.
var errNoSlot = errors.New("the replication slot is missing, invalidated or not in this database")

// Publisher writes Watermill messages as Jasper envelopes (see the package documentation).
// It is safe for concurrent use, as far as the ContextExecutor it was built on is (a
// transaction is not: publish into one from one goroutine at a time).
type Publisher struct {
	bound    bool      // built on a transaction: ignore the context's
	ops      store.Ops // the store's operations on the handle NewPublisher got
	store    store.Store
	channels store.Channels
	coal     *Coalescer
	config   Config
	logger   watermill.LoggerAdapter
	now      func() time.Time
	tracer   *tracing.Tracer // nil: tracing off
	// emit is what TableLess writes with (nil: rows); fellBack is set once a publish found
	// no slot and wrote rows (logged once per Publisher).
	emit     *store.EmitParams
	fellBack atomic.Bool

	// mu is held shared by each Publish and exclusively by Close, so Close waits for the
	// Publish calls in flight; closed makes later calls fail fast.
	mu     sync.RWMutex
	closed atomic.Bool
}

var _ message.Publisher = (*Publisher)(nil)

// errSQLServerNeedsDriver refuses a SQL Server publisher without Config.Driver: the SQL
// Server statements live in package sqlserver, which a PostgreSQL program does not link.
var errSQLServerNeedsDriver = fmt.Errorf("%w: publisher: SQL Server needs Config.Driver (sqlserver.FromStdSQL(db)) so that its SQL is linked; or take the publisher from the runtime", ErrInvalidConfig)

// NewPublisher returns a Publisher writing through db: a transaction (sql.TxFromStdSQL,
// sql.TxFromPgx), in which every Publish writes, or a pool (sql.BeginnerFromStdSQL,
// sql.BeginnerFromPgx), with which Publish joins the transaction of the first message's
// context (WithTx) or else commits on its own. It is cheap enough to call per transaction,
// the more so with Config.Driver set (see Config.Driver). logger may be nil.
func NewPublisher(db sql.ContextExecutor, config Config, logger watermill.LoggerAdapter) (*Publisher, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: db is nil; pass sql.TxFromStdSQL(tx), sql.TxFromPgx(tx), sql.BeginnerFromStdSQL(db) or sql.BeginnerFromPgx(pool)", ErrInvalidConfig)
	}
	if u, ok := db.(interface{ Unwrap() dbx.Querier }); ok && config.Driver == nil {
		// A Driver given through dbx.ToWatermill is the Driver of the publisher.
		config.Driver, _ = u.Unwrap().(store.Driver)
	}
	if d, ok := dialectOf(db); ok {
		switch {
		case config.Driver != nil && config.Driver.Dialect() != d:
			return nil, fmt.Errorf("%w: Driver is a %s database but db is a %s handle", ErrInvalidConfig, config.Driver.Dialect(), d)
		case config.Schema.Dialect == "":
			config.Schema.Dialect = d
		case config.Schema.Dialect != d:
			return nil, fmt.Errorf("%w: Schema.Dialect is %s but db is a %s handle", ErrInvalidConfig, config.Schema.Dialect, d)
		}
	}
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, err
	}
	st, err := storeFor(config)
	if err != nil {
		return nil, err
	}
	config.Schema = st.Schema()
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	coal := config.Coalescer
	if coal == nil {
		coal = &Coalescer{}
	}
	var emit *store.EmitParams
	if config.TableLess {
		lc, err := config.tableLessSlot()
		if err != nil {
			return nil, fmt.Errorf("%w: TableLessSlot: %w", ErrInvalidConfig, err)
		}
		emit = &store.EmitParams{Slot: lc.Slot, Prefix: lc.MessagePrefix()}
	}
	return &Publisher{
		emit:     emit,
		bound:    isTx(db),
		ops:      st.With(dbx.FromWatermill(db)),
		store:    st,
		channels: st.Channels(),
		coal:     coal,
		config:   config,
		logger:   logger,
		now:      time.Now,
		tracer:   tracing.New(config.TracerProvider),
	}, nil
}

// storeFor returns the store of a validated config: the Driver's, else PostgreSQL's
// statements on no pool of their own (the publisher binds them to its handle).
func storeFor(config Config) (store.Store, error) {
	if config.Driver != nil {
		st, err := config.Driver.Store(config.Schema)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		return st, nil
	}
	if config.Schema.Dialect == schema.SQLServer {
		return nil, errSQLServerNeedsDriver
	}
	cfg, err := config.Schema.Normalized()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return sqlstore.New(nil, postgres.Dialect(cfg)), nil
}

// dialectOf tells the dialect of the handles whose database can be seen: watermill-sql's
// pgx adapters, a *sql.DB behind BeginnerFromStdSQL, and a database.DB given through
// dbx.ToWatermill (the runtime's). A *sql.Tx does not show its driver: Config.Driver or
// Config.Schema.Dialect says it (default PostgreSQL).
func dialectOf(db sql.ContextExecutor) (database.Dialect, bool) {
	switch h := db.(type) {
	case sql.PgxBeginner, sql.PgxTx, *sql.PgxTx:
		return database.Postgres, true
	case sql.StdSQLBeginner:
		if sdb, ok := h.SQLBeginner.(*stdsql.DB); ok {
			if d, err := database.DialectOfStdSQL(sdb); err == nil {
				return d, true
			}
		}
	case interface{ Unwrap() dbx.Querier }:
		if d, ok := h.Unwrap().(interface{ Dialect() dbx.Dialect }); ok {
			return d.Dialect(), true
		}
	}
	return "", false
}

// isTx reports whether db is a transaction: it has Commit and Rollback (watermill-sql's own
// test), or it is a database.Tx given through dbx.ToWatermill.
func isTx(db sql.ContextExecutor) bool {
	if _, ok := db.(interface {
		Commit() error
		Rollback() error
	}); ok {
		return true
	}
	if u, ok := db.(interface{ Unwrap() dbx.Querier }); ok {
		_, ok := u.Unwrap().(dbx.Tx)
		return ok
	}
	return false
}

// Publish writes messages to topic in one statement (see the package documentation for
// larger calls), in the context of messages[0]. It returns when the rows are written: when
// they are committed if the Publisher runs on a pool without a transaction in the context,
// otherwise when the caller's transaction holds them. Re-publishing a message (same UUID) to
// the same topic is a no-op (not with Config.TableLess, where it is sent again). A message whose components/delay due time is in the future is
// written as a Jasper scheduled send.
//
// Errors wrap ErrPublisherClosed, ErrInvalidTopic, ErrInvalidMessage (nothing is written),
// or ErrMissingTables; database errors are wrapped as they are.
func (p *Publisher) Publish(topic string, messages ...*message.Message) error {
	if p.closed.Load() {
		return ErrPublisherClosed
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return ErrPublisherClosed
	}

	if err := ValidateTopic(topic); err != nil {
		return err
	}
	topic, err := p.destination(topic)
	if err != nil {
		return err
	}
	for i, msg := range messages {
		if msg == nil {
			return fmt.Errorf("%w: message %d of %d published to %q is nil", ErrInvalidMessage, i, len(messages), topic)
		}
	}
	if len(messages) == 0 {
		return nil
	}
	ctx := messages[0].Context()

	var spans []trace.Span
	if p.tracer != nil {
		spans = p.startSpans(topic, messages)
	}
	err = p.insert(ctx, topic, messages)
	for _, span := range spans {
		tracing.End(span, err)
	}
	return err
}

// startSpans starts the publish span of each message and writes its trace context into the
// message's metadata, so that the envelope stores it.
func (p *Publisher) startSpans(topic string, messages []*message.Message) []trace.Span {
	spans := make([]trace.Span, len(messages))
	for i, msg := range messages {
		ctx, span := p.tracer.Start(tracing.ParentForPublish(msg), tracing.Publish, topic, msg)
		tracing.Inject(ctx, msg)
		spans[i] = span
	}
	return spans
}

// insert writes the messages' envelopes (the body of Publish).
func (p *Publisher) insert(ctx context.Context, topic string, messages []*message.Message) error {
	out, inc, err := p.envelopes(topic, messages)
	if err != nil {
		return err
	}
	ops, inTx := p.executor(ctx)
	// Table-less, except on the pool with delayed messages beside: their rows and the messages
	// would take two statements, not one transaction, so all are written as rows, at once.
	if p.emit != nil && len(out) > 0 && (inTx || len(inc) == 0) {
		emitted, err := ops.EmitOutgoing(ctx, store.EmitParams{Slot: p.emit.Slot, Prefix: p.emit.Prefix, Envelopes: out})
		if err != nil {
			return p.wrapError(topic, len(messages), err)
		}
		switch {
		case emitted:
			out = nil
			if p.fellBack.Swap(false) {
				p.logger.Info("Table-less publishing found its replication slot again: writing logical decoding messages", watermill.LogFields{"slot": p.emit.Slot})
			}
		case !p.fellBack.Swap(true):
			p.logger.Error("Table-less publishing writes rows of jasper_outgoing_envelopes until its replication slot can be read (create it with `watermill-jasper slot create`)",
				errNoSlot, watermill.LogFields{"slot": p.emit.Slot})
		}
		if len(out)+len(inc) == 0 {
			return nil
		}
	}
	params := store.InsertParams{Outgoing: out, Incoming: inc}
	params.NotifyOutgoing = len(out) > 0 && p.channels.Outgoing != "" && p.shouldNotify(p.channels.Outgoing)
	if p.config.Table == Incoming && hasIncoming(inc) && p.channels.Incoming != "" &&
		p.shouldNotify(p.channels.Incoming+"\x00"+topic) {
		// Subscribers of the topic wake when the transaction commits. Only for rows they can
		// claim: delayed (Scheduled) rows wake them when the agent releases them, and must not
		// use up the coalesced notification an undelayed message published next needs.
		params.NotifyTopics = []string{topic}
	}

	p.logger.Trace("Publishing messages to Jasper envelope tables", watermill.LogFields{
		"topic":     topic,
		"messages":  len(messages),
		"outgoing":  len(out),
		"scheduled": len(inc),
		"joined_tx": inTx,
	})
	if err := ops.InsertEnvelopes(ctx, params); err != nil {
		return p.wrapError(topic, len(messages), err)
	}
	if due := earliestDue(inc); p.config.OnScheduled != nil && !due.IsZero() {
		p.config.OnScheduled(due)
	}
	return nil
}

// hasIncoming reports whether envs holds a row with status Incoming (claimable at once).
func hasIncoming(envs []row.Envelope) bool {
	return slices.ContainsFunc(envs, func(e row.Envelope) bool { return e.Status == schema.StatusIncoming })
}

// earliestDue is the earliest execution time of scheduled envelopes (a scheduled send's is its
// due time too).
func earliestDue(envs []row.Envelope) time.Time {
	var due time.Time
	for _, e := range envs {
		if e.ExecutionTime != nil && (due.IsZero() || e.ExecutionTime.Before(due)) {
			due = *e.ExecutionTime
		}
	}
	return due
}

// executor picks where a Publish writes: the bound transaction, the context's, or the pool
// (where InsertEnvelopes runs several statements in a transaction of its own).
func (p *Publisher) executor(ctx context.Context) (ops store.Ops, inTx bool) {
	if p.bound {
		return p.ops, true
	}
	if tx, ok := TxFromContext(ctx); ok {
		return p.store.With(dbx.FromWatermill(tx)), true
	}
	return p.ops, false
}

// destination is the destination outgoing envelopes of topic store: Config.DestinationURI of
// topic, checked to be a URI in Jasper2 compatibility (see ErrInvalidTopic). Incoming rows
// keep the topic.
func (p *Publisher) destination(topic string) (string, error) {
	if p.config.Table != Outgoing {
		return topic, nil
	}
	dest := topic
	if p.config.DestinationURI != nil {
		d, err := p.config.DestinationURI(topic)
		if err != nil {
			return "", fmt.Errorf("%w: DestinationURI(%q): %w", ErrInvalidTopic, topic, err)
		}
		if err := ValidateTopic(d); err != nil {
			return "", fmt.Errorf("DestinationURI(%q): %w", topic, err)
		}
		dest = d
	}
	if p.config.Schema.Compatibility == schema.Jasper2 {
		if err := row.ValidateURI(dest); err != nil {
			return "", fmt.Errorf("%w: %v: .NET Jasper nodes share the outbox (schema compatibility %s) and read every destination as a URI; "+
				"publish to a URI both sides deliver, such as rabbitmq://queue/%s, or map topics with publisher Config.DestinationURI",
				ErrInvalidTopic, err, schema.Jasper2, topic)
		}
	}
	return dest, nil
}

// envelopes maps the messages to rows: outgoing envelopes, and incoming scheduled sends for
// delayed messages. A message repeated in one call is written once.
func (p *Publisher) envelopes(topic string, messages []*message.Message) (out, inc []row.Envelope, err error) {
	now := p.now().UTC()
	seen := make(map[uuid.UUID]struct{}, len(messages))
	for i, msg := range messages {
		due, err := row.DueTime(msg, now)
		if err != nil {
			return nil, nil, messageError(topic, i, msg, err)
		}
		if p.config.Table == Incoming {
			e, err := row.FromMessage(topic, msg, p.config.Defaults)
			if err != nil {
				return nil, nil, messageError(topic, i, msg, err)
			}
			e.OwnerID, e.Status = 0, schema.StatusIncoming
			if due.After(now) {
				e.Status, e.ExecutionTime = schema.StatusScheduled, &due
			}
			if _, dup := seen[e.ID]; !dup {
				seen[e.ID] = struct{}{}
				inc = append(inc, e)
			}
			continue
		}
		if due.After(now) {
			e, err := row.WrapScheduled(topic, msg, p.config.Defaults, due, now)
			if err != nil {
				return nil, nil, messageError(topic, i, msg, err)
			}
			if _, dup := seen[e.ID]; !dup {
				seen[e.ID] = struct{}{}
				inc = append(inc, e)
			}
			continue
		}
		var e row.Envelope
		switch p.config.Table {
		case Outgoing:
			e, err = row.FromMessage(topic, msg, p.config.Defaults)
			e.OwnerID = 0 // any node may forward it
		default: // rejected by Config.Validate
			err = fmt.Errorf("%w: table %q", ErrInvalidConfig, p.config.Table)
		}
		if err != nil {
			return nil, nil, messageError(topic, i, msg, err)
		}
		if _, dup := seen[e.ID]; !dup {
			seen[e.ID] = struct{}{}
			out = append(out, e)
		}
	}
	return out, inc, nil
}

func messageError(topic string, i int, msg *message.Message, err error) error {
	return fmt.Errorf("watermill-jasper: publish to %q: message %d (uuid %q): %w", topic, i, msg.UUID, err)
}

func (p *Publisher) wrapError(topic string, n int, err error) error {
	if p.store.IsMissingTable(err) {
		return fmt.Errorf("watermill-jasper: publish %d message(s) to %q: %w in schema %q; create them with `watermill-jasper schema migrate` or schema.Migrate: %w",
			n, topic, ErrMissingTables, p.config.Schema.Schema, err)
	}
	return fmt.Errorf("watermill-jasper: publish %d message(s) to %q (schema %q): %w", n, topic, p.config.Schema.Schema, err)
}

// Close stops the Publisher: it waits for the Publish calls in flight, and later calls
// return ErrPublisherClosed. It does not close db, and is idempotent.
func (p *Publisher) Close() error {
	p.closed.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	return nil
}

// Schema returns the normalized schema config the Publisher writes to.
func (p *Publisher) Schema() schema.Config { return p.config.Schema }

// shouldNotify applies the notify policy to a publish about to be sent on key.
func (p *Publisher) shouldNotify(key string) bool {
	switch p.config.Notify {
	case NotifyEveryPublish:
		return true
	case NotifyNever:
		return false
	}
	return p.coal.allow(key, p.now(), p.config.NotifyInterval)
}
