package publisher

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
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

// Publisher writes Watermill messages as Jasper envelopes (see the package documentation).
// It is safe for concurrent use, as far as the ContextExecutor it was built on is (a
// transaction is not: publish into one from one goroutine at a time).
type Publisher struct {
	db      sql.ContextExecutor
	bound   bool // db is a transaction: ignore the context's
	dialect sqldialect.Dialect
	codec   row.UUIDCodec
	config  Config
	logger  watermill.LoggerAdapter
	now     func() time.Time

	// mu is held shared by each Publish and exclusively by Close, so Close waits for the
	// Publish calls in flight; closed makes later calls fail fast.
	mu     sync.RWMutex
	closed atomic.Bool
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher returns a Publisher writing through db: a transaction (sql.TxFromStdSQL,
// sql.TxFromPgx), in which every Publish writes, or a pool (sql.BeginnerFromStdSQL,
// sql.BeginnerFromPgx), with which Publish joins the transaction of the first message's
// context (WithTx) or else commits on its own. logger may be nil.
func NewPublisher(db sql.ContextExecutor, config Config, logger watermill.LoggerAdapter) (*Publisher, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: db is nil; pass sql.TxFromStdSQL(tx), sql.TxFromPgx(tx), sql.BeginnerFromStdSQL(db) or sql.BeginnerFromPgx(pool)", ErrInvalidConfig)
	}
	if d, ok := dialectOf(db); ok {
		if config.Schema.Dialect == "" {
			config.Schema.Dialect = d
		} else if config.Schema.Dialect != d {
			return nil, fmt.Errorf("%w: Schema.Dialect is %s but db is a %s handle", ErrInvalidConfig, config.Schema.Dialect, d)
		}
	}
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, err
	}
	dialect, err := sqldialect.For(config.Schema)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	config.Schema = dialect.Schema()
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &Publisher{
		db:      db,
		bound:   isTx(db),
		dialect: dialect,
		codec:   dialect.UUIDs(),
		config:  config,
		logger:  logger,
		now:     time.Now,
	}, nil
}

// dialectOf tells the dialect of the handles whose database can be seen: watermill-sql's
// pgx adapters and a *sql.DB behind BeginnerFromStdSQL. A *sql.Tx does not show its
// driver: Config.Schema.Dialect says it (default PostgreSQL).
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
	}
	return "", false
}

// isTx reports whether db looks like a transaction (watermill-sql's own test).
func isTx(db sql.ContextExecutor) bool {
	_, ok := db.(interface {
		Commit() error
		Rollback() error
	})
	return ok
}

// Publish writes messages to topic in one statement (see the package documentation for
// larger calls), in the context of messages[0]. It returns when the rows are written: when
// they are committed if the Publisher runs on a pool without a transaction in the context,
// otherwise when the caller's transaction holds them. Re-publishing a message (same UUID) to
// the same topic is a no-op. A message whose components/delay due time is in the future is
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
	for i, msg := range messages {
		if msg == nil {
			return fmt.Errorf("%w: message %d of %d published to %q is nil", ErrInvalidMessage, i, len(messages), topic)
		}
	}
	if len(messages) == 0 {
		return nil
	}
	ctx := messages[0].Context()

	out, inc, err := p.envelopes(topic, messages)
	if err != nil {
		return err
	}
	notifyOut := len(out) > 0 && p.dialect.OutgoingChannel() != "" && p.shouldNotify(p.dialect.OutgoingChannel())
	stmts := p.statements(out, inc, notifyOut)
	if p.config.Table == Incoming && len(inc) > 0 && p.dialect.IncomingChannel() != "" &&
		p.shouldNotify(p.dialect.IncomingChannel()+"\x00"+topic) {
		// Subscribers of the topic wake when the transaction commits.
		stmts = append(stmts, statement{query: p.dialect.NotifyIncoming(), args: []any{topic}})
	}

	exec, inTx := p.executor(ctx)
	p.logger.Trace("Publishing messages to Jasper envelope tables", watermill.LogFields{
		"topic":      topic,
		"messages":   len(messages),
		"outgoing":   len(out),
		"scheduled":  len(inc),
		"statements": len(stmts),
		"joined_tx":  inTx,
	})
	if len(stmts) > 1 && !inTx {
		if b, ok := exec.(sql.Beginner); ok {
			err = p.runInTx(ctx, b, stmts)
		} else {
			err = p.run(ctx, exec, stmts)
		}
	} else {
		err = p.run(ctx, exec, stmts)
	}
	if err != nil {
		return p.wrapError(topic, len(messages), err)
	}
	return nil
}

// executor picks where a Publish writes: the bound transaction, the context's, or the pool.
func (p *Publisher) executor(ctx context.Context) (exec sql.ContextExecutor, inTx bool) {
	if p.bound {
		return p.db, true
	}
	if tx, ok := TxFromContext(ctx); ok {
		return tx, true
	}
	return p.db, false
}

// envelopes maps the messages to rows: outgoing envelopes, and incoming scheduled sends for
// delayed messages. A message repeated in one call is written once.
func (p *Publisher) envelopes(topic string, messages []*message.Message) (out, inc []row.Envelope, err error) {
	now := p.now().UTC()
	seen := make(map[uuid.UUID]struct{}, len(messages))
	for i, msg := range messages {
		due, err := row.DelayedUntil(msg)
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

type statement struct {
	query string
	args  []any
}

// statements packs the rows into as few statements as the parameter limit allows: one for
// any call of up to MaxParams / len(row.IncomingColumns) messages.
func (p *Publisher) statements(out, inc []row.Envelope, notify bool) []statement {
	wo, wi := len(row.OutgoingColumns), len(row.IncomingColumns)
	maxParams := p.dialect.MaxParams()
	var stmts []statement
	for len(out)+len(inc) > 0 {
		no := min(len(out), maxParams/wo)
		ni := min(len(inc), (maxParams-no*wo)/wi)
		args := make([]any, 0, no*wo+ni*wi)
		for k := range out[:no] {
			args = out[k].OutgoingArgs(args, p.codec)
		}
		for k := range inc[:ni] {
			args = inc[k].IncomingArgs(args, p.codec)
		}
		stmts = append(stmts, statement{query: p.dialect.InsertEnvelopes(no, ni, notify && no > 0), args: args})
		out, inc = out[no:], inc[ni:]
	}
	return stmts
}

func (p *Publisher) run(ctx context.Context, exec sql.ContextExecutor, stmts []statement) error {
	for _, s := range stmts {
		if _, err := exec.ExecContext(ctx, s.query, s.args...); err != nil {
			return err
		}
	}
	return nil
}

// runInTx runs several statements atomically when the Publisher is on a pool.
func (p *Publisher) runInTx(ctx context.Context, b sql.Beginner, stmts []statement) (err error) {
	tx, err := b.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := p.run(ctx, tx, stmts); err != nil {
		if rbErr := tx.Rollback(); rbErr != nil {
			return errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (p *Publisher) wrapError(topic string, n int, err error) error {
	if p.dialect.IsMissingTable(err) {
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

// lastNotify holds, per notification channel (and topic), the time of the last publish of
// this process that notified it: the state NotifyCoalesced shares between the Publishers of
// a schema, which are typically created per transaction.
var lastNotify sync.Map // string -> *atomic.Int64 (unix nanos)

// shouldNotify applies the notify policy to a publish about to be sent on key.
func (p *Publisher) shouldNotify(key string) bool {
	switch p.config.Notify {
	case NotifyEveryPublish:
		return true
	case NotifyNever:
		return false
	}
	v, ok := lastNotify.Load(key)
	if !ok {
		v, _ = lastNotify.LoadOrStore(key, new(atomic.Int64))
	}
	last := v.(*atomic.Int64)
	now := p.now().UnixNano()
	prev := last.Load()
	return now-prev >= int64(p.config.NotifyInterval) && last.CompareAndSwap(prev, now)
}
