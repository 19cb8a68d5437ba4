package publisher_test

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// handle is one way of reaching PostgreSQL: pgx natively or database/sql over pgx's driver,
// with or without a Driver in the publisher's config.
type handle struct {
	name string
	// pool is the pool wrapped for watermill-sql.
	pool func(t *testing.T) sql.Beginner
	// begin starts a transaction and returns it wrapped for watermill-sql, plus its commit
	// and rollback.
	begin func(t *testing.T) (tx sql.Tx, commit, rollback func() error)
	// driver, when set, is given to the publishers as Config.Driver.
	driver func(t testing.TB) store.Driver
}

func pgxPool(t *testing.T) sql.Beginner { return sql.BeginnerFromPgx(testdb.Pool(t)) }

func pgxBegin(t *testing.T) (sql.Tx, func() error, func() error) {
	ctx := context.Background()
	tx, err := testdb.Pool(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	return sql.TxFromPgx(tx), func() error { return tx.Commit(ctx) }, func() error { return tx.Rollback(ctx) }
}

func stdPool(t *testing.T) sql.Beginner { return sql.BeginnerFromStdSQL(testdb.StdDB(t)) }

func stdBegin(t *testing.T) (sql.Tx, func() error, func() error) {
	tx, err := testdb.StdDB(t).BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	return sql.TxFromStdSQL(tx), tx.Commit, tx.Rollback
}

var handles = []handle{
	{name: "pgx", pool: pgxPool, begin: pgxBegin},
	{name: "stdsql", pool: stdPool, begin: stdBegin},
	{name: "pgx_driver", pool: pgxPool, begin: pgxBegin, driver: testdb.PgxDriver},
	{name: "stdsql_driver", pool: stdPool, begin: stdBegin, driver: testdb.StdDriver},
}

// forEachHandle runs f as a parallel subtest per handle, each with its own migrated schema.
func forEachHandle(t *testing.T, f func(t *testing.T, h handle, cfg schema.Config)) {
	t.Helper()
	for _, h := range handles {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			_, cfg := testdb.Migrated(t)
			f(t, h, cfg)
		})
	}
}

// newPublisher builds a publisher on db with the handle's Driver (when it has one).
func (h handle) newPublisher(t *testing.T, db sql.ContextExecutor, cfg publisher.Config) *publisher.Publisher {
	t.Helper()
	if h.driver != nil && cfg.Driver == nil {
		cfg.Driver = h.driver(t)
	}
	return newPublisher(t, db, cfg)
}

// channels returns the notification channels of a schema.
func channels(t *testing.T, cfg schema.Config) store.Channels {
	t.Helper()
	s, err := testdb.PgxDriver(t).Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s.Channels()
}

func newPublisher(t *testing.T, db sql.ContextExecutor, cfg publisher.Config) *publisher.Publisher {
	t.Helper()
	p, err := publisher.NewPublisher(db, cfg, nil)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func mustPublish(t *testing.T, p *publisher.Publisher, topic string, msgs ...*message.Message) {
	t.Helper()
	if err := p.Publish(topic, msgs...); err != nil {
		t.Fatalf("Publish(%q, %d messages): %v", topic, len(msgs), err)
	}
}

func newMsgs(n int, prefix string) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(fmt.Sprintf("%s-%05d", prefix, i), []byte(fmt.Sprintf(`{"n":%d}`, i)))
	}
	return msgs
}

// outRow is a row of jasper_outgoing_envelopes read back with plain SQL, independently of
// internal/row.
type outRow struct {
	ID, Destination, MessageType                                 string
	OwnerID                                                      int32
	Attempts                                                     *int32
	ContentType, CorrelationID, ParentID, ConversationID, SagaID *string
	ReplyURI, ReplyRequested, MessageUUID, Headers               *string
	AckRequested                                                 *bool
	DeliverBy                                                    *time.Time
	Body                                                         []byte
}

func outgoingRows(t *testing.T, cfg schema.Config) map[string]outRow {
	t.Helper()
	rows, err := testdb.Pool(t).Query(context.Background(), fmt.Sprintf(`SELECT id::text, destination, message_type,
  owner_id, attempts, content_type, correlation_id, parent_id, conversation_id::text, saga_id, reply_uri, reply_requested,
  message_uuid, headers, ack_requested, deliver_by, body FROM %s`, cfg.Qualified(schema.OutgoingTable)))
	if err != nil {
		t.Fatal(err)
	}
	res := map[string]outRow{}
	for rows.Next() {
		var r outRow
		if err := rows.Scan(&r.ID, &r.Destination, &r.MessageType, &r.OwnerID, &r.Attempts, &r.ContentType,
			&r.CorrelationID, &r.ParentID, &r.ConversationID, &r.SagaID, &r.ReplyURI, &r.ReplyRequested,
			&r.MessageUUID, &r.Headers, &r.AckRequested, &r.DeliverBy, &r.Body); err != nil {
			t.Fatal(err)
		}
		key := r.ID
		if r.MessageUUID != nil {
			key = *r.MessageUUID + "@" + r.Destination
		}
		res[key] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return res
}

func count(t *testing.T, cfg schema.Config, table string) int {
	t.Helper()
	var n int
	if err := testdb.Pool(t).QueryRow(context.Background(), "SELECT count(*) FROM "+cfg.Qualified(table)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func wantCounts(t *testing.T, cfg schema.Config, outgoing, incoming int) {
	t.Helper()
	if got := count(t, cfg, schema.OutgoingTable); got != outgoing {
		t.Errorf("outgoing rows = %d, want %d", got, outgoing)
	}
	if got := count(t, cfg, schema.IncomingTable); got != incoming {
		t.Errorf("incoming rows = %d, want %d", got, incoming)
	}
}

// countingTx counts the statements sent through a transaction.
type countingTx struct {
	sql.Tx
	execs, queries atomic.Int32
}

func (c *countingTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	c.execs.Add(1)
	return c.Tx.ExecContext(ctx, query, args...)
}

func (c *countingTx) QueryContext(ctx context.Context, query string, args ...any) (sql.Rows, error) {
	c.queries.Add(1)
	return c.Tx.QueryContext(ctx, query, args...)
}

func (c *countingTx) statements() int { return int(c.execs.Load() + c.queries.Load()) }

// failingBeginner begins transactions whose statement number failAt (1-based) fails.
type failingBeginner struct {
	sql.Beginner
	failAt int32
	tx     *failingTx
}

var errInjected = errors.New("injected failure")

func (b *failingBeginner) BeginTx(ctx context.Context, opts *stdsql.TxOptions) (sql.Tx, error) {
	tx, err := b.Beginner.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	b.tx = &failingTx{countingTx: countingTx{Tx: tx}, failAt: b.failAt}
	return b.tx, nil
}

type failingTx struct {
	countingTx
	failAt int32
}

func (f *failingTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if f.execs.Load()+1 == f.failAt {
		f.execs.Add(1)
		return nil, errInjected
	}
	return f.countingTx.ExecContext(ctx, query, args...)
}

// listener is a dedicated connection LISTENing on a channel.
type listener struct {
	t    *testing.T
	conn *pgx.Conn
}

func listen(t *testing.T, channel string) *listener {
	t.Helper()
	ctx := context.Background()
	c, err := testdb.Pool(t).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = c.Exec(context.Background(), "UNLISTEN *")
		c.Release()
	})
	return &listener{t: t, conn: c.Conn()}
}

// next waits (at most 10 s) for the next notification and returns its payload.
func (l *listener) next() string {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := l.conn.WaitForNotification(ctx)
	if err != nil {
		l.t.Fatalf("no notification: %v", err)
	}
	return n.Payload
}

// marker sends a notification with payload from another session, committed at once: a
// listener that receives it first got nothing from transactions that had committed before.
func marker(t *testing.T, channel, payload string) {
	t.Helper()
	if _, err := testdb.Pool(t).Exec(context.Background(), "SELECT pg_notify($1, $2)", channel, payload); err != nil {
		t.Fatal(err)
	}
}
