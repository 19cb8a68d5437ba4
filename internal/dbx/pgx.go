package dbx

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// FromPgx wraps a pgx pool (PostgreSQL).
func FromPgx(pool *pgxpool.Pool) DB { return pgxDB{pool: pool} }

type pgxDB struct{ pool *pgxpool.Pool }

func (d pgxDB) Dialect() Dialect { return Postgres }

// SessionStatements returns the pool's query exec mode and whether it keeps statements (or
// their descriptions, fetched in a round trip of their own) in the database session, which a
// pooler in transaction mode hands to other clients between transactions: every mode but
// exec and simple protocol.
func (d pgxDB) SessionStatements() (mode string, keepsState bool) {
	m := d.pool.Config().ConnConfig.DefaultQueryExecMode
	return m.String(), m != pgx.QueryExecModeExec && m != pgx.QueryExecModeSimpleProtocol
}

func (d pgxDB) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return pgxExec(ctx, d.pool, query, args)
}

func (d pgxDB) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	return pgxQuery(ctx, d.pool, query, args)
}

func (d pgxDB) Begin(ctx context.Context) (Tx, error) {
	tx, err := d.pool.Begin(ctx)
	return wrapped(tx, err, newPgxTx)
}

var (
	_ FirstStatementBeginner = pgxDB{}
	_ DeferredBeginner       = pgxDB{}
)

// BeginExec acquires a connection and sends BEGIN and query in one pipelined round trip
// (BeginDeferred, then Exec). The transaction it returns drives COMMIT and ROLLBACK on that
// connection itself and gives the connection back to the pool when it ends.
func (d pgxDB) BeginExec(ctx context.Context, query string, args ...any) (Tx, int64, error) {
	return beginDeferredExec(ctx, d, query, args...)
}

// BeginDeferred acquires a connection; BEGIN and first go with the transaction's first
// statement, as one pgx batch (in the pool's query exec mode).
func (d pgxDB) BeginDeferred(ctx context.Context, first ...string) (Tx, error) {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	t := &pgxConnTx{c: c, queue: make([]queued, 0, len(first)+1)}
	t.queue = append(t.queue, queued{query: "begin"})
	for _, q := range first {
		t.queue = append(t.queue, queued{query: q})
	}
	return t, nil
}

var _ ExecQueuer = (*pgxConnTx)(nil)

// pgxConnTx is a transaction on an acquired connection (BeginDeferred). queue holds what is
// not sent yet: BEGIN and the caller's settings until the first statement, then what
// QueueExec kept; it goes with the next statement, or with COMMIT.
type pgxConnTx struct {
	c      *pgxpool.Conn
	began  bool // BEGIN was sent
	queued bool // queue holds a statement of QueueExec
	queue  []queued
}

// queued is a statement not sent yet.
type queued struct {
	query string
	args  []any
}

func (t *pgxConnTx) conn() (*pgxpool.Conn, error) {
	if t.c == nil {
		return nil, pgx.ErrTxClosed
	}
	return t.c, nil
}

// QueueExec keeps query, to be sent with the transaction's next statement or its COMMIT.
func (t *pgxConnTx) QueueExec(_ context.Context, query string, args ...any) error {
	if _, err := t.conn(); err != nil {
		return err
	}
	t.queue, t.queued = append(t.queue, queued{query: query, args: args}), true
	return nil
}

// sendQueued sends the statements not sent yet and query as one batch, and reads the results
// of the former: the caller reads query's and closes the batch.
func (t *pgxConnTx) sendQueued(ctx context.Context, c *pgxpool.Conn, query string, args []any) (pgx.BatchResults, error) {
	b := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(t.queue)+1)}
	for _, q := range t.queue {
		b.Queue(q.query, q.args...)
	}
	b.Queue(query, args...)
	n := len(t.queue)
	clear(t.queue)
	t.queue, t.began, t.queued = t.queue[:0], true, false
	br := c.SendBatch(ctx, b)
	for range n {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return nil, err
		}
	}
	return br, nil
}

func (t *pgxConnTx) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	c, err := t.conn()
	if err != nil {
		return 0, err
	}
	if len(t.queue) == 0 {
		return pgxExec(ctx, c, query, args)
	}
	br, err := t.sendQueued(ctx, c, query, args)
	if err != nil {
		return 0, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag.RowsAffected(), err
}

func (t *pgxConnTx) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	c, err := t.conn()
	if err != nil {
		return nil, err
	}
	if len(t.queue) == 0 {
		return pgxQuery(ctx, c, query, args)
	}
	br, err := t.sendQueued(ctx, c, query, args)
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, err
	}
	return batchRows{pgxRows{rows}, br}, nil
}

// batchRows are the rows of the last query of a batch: closing them closes the batch.
type batchRows struct {
	pgxRows
	br pgx.BatchResults
}

func (r batchRows) Close() error {
	err := r.pgxRows.Close()
	if cerr := r.br.Close(); err == nil {
		err = cerr
	}
	return err
}

// end sends query (COMMIT or ROLLBACK), after what is queued when it commits, unless the
// transaction never began on the server (sent is false), and releases the connection. A
// queued statement that fails fails the transaction: it is rolled back and its error
// returned.
func (t *pgxConnTx) end(ctx context.Context, query string) (tag pgconn.CommandTag, sent bool, err error) {
	c, err := t.conn()
	if err != nil {
		return tag, false, err
	}
	t.c = nil
	defer c.Release() // destroyed by the pool unless idle and healthy
	if query != "commit" || !t.queued {
		if !t.began {
			return tag, false, nil
		}
		tag, err = c.Exec(ctx, query)
		return tag, true, err
	}
	br, err := t.sendQueued(ctx, c, query, nil)
	if err == nil {
		tag, err = br.Exec()
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil && c.Conn().PgConn().TxStatus() != 'I' {
		// Bounded: a connection that does not answer is destroyed by Release instead.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		_, _ = c.Exec(rctx, "rollback")
		cancel()
	}
	return tag, true, err
}

// rollbackTimeout bounds the ROLLBACK after a queued statement failed.
const rollbackTimeout = 5 * time.Second

// Commit sends what is queued and COMMIT, and releases the connection. As pgx.Tx.Commit, a
// transaction that failed and was rolled back by COMMIT returns pgx.ErrTxCommitRollback;
// with statements queued, the error of the first that failed is returned instead (25P02 in
// a transaction that had already failed).
func (t *pgxConnTx) Commit(ctx context.Context) error {
	tag, sent, err := t.end(ctx, "commit")
	if err != nil {
		return err
	}
	if sent && tag.String() != "COMMIT" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// Rollback sends ROLLBACK (what is queued is dropped) and releases the connection. After
// Commit or Rollback it returns pgx.ErrTxClosed, as pgx.Tx does.
func (t *pgxConnTx) Rollback(ctx context.Context) error {
	_, _, err := t.end(ctx, "rollback")
	return err
}

func (d pgxDB) Acquire(ctx context.Context) (Conn, error) {
	c, err := d.pool.Acquire(ctx)
	return wrapped(c, err, func(c *pgxpool.Conn) Conn { return &pgxConn{c: c} })
}

type pgxRows struct{ r pgx.Rows }

func (r pgxRows) Next() bool             { return r.r.Next() }
func (r pgxRows) Scan(dest ...any) error { return r.r.Scan(dest...) }
func (r pgxRows) Err() error             { return r.r.Err() }
func (r pgxRows) Close() error           { r.r.Close(); return r.r.Err() }

type pgxQuerier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func pgxExec(ctx context.Context, q pgxQuerier, query string, args []any) (int64, error) {
	tag, err := q.Exec(ctx, query, args...)
	return tag.RowsAffected(), err
}

func pgxQuery(ctx context.Context, q pgxQuerier, query string, args []any) (Rows, error) {
	rows, err := q.Query(ctx, query, args...)
	return wrapped(rows, err, func(r pgx.Rows) Rows { return pgxRows{r} })
}

type pgxTx struct{ tx pgx.Tx }

func newPgxTx(tx pgx.Tx) Tx { return pgxTx{tx} }

func (t pgxTx) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return pgxExec(ctx, t.tx, query, args)
}
func (t pgxTx) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	return pgxQuery(ctx, t.tx, query, args)
}
func (t pgxTx) Commit(ctx context.Context) error   { return t.tx.Commit(ctx) }
func (t pgxTx) Rollback(ctx context.Context) error { return t.tx.Rollback(ctx) }

type pgxConn struct{ c *pgxpool.Conn }

func (c *pgxConn) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return pgxExec(ctx, c.c, query, args)
}
func (c *pgxConn) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	return pgxQuery(ctx, c.c, query, args)
}
func (c *pgxConn) Begin(ctx context.Context) (Tx, error) {
	tx, err := c.c.Begin(ctx)
	return wrapped(tx, err, newPgxTx)
}
func (c *pgxConn) WaitForNotification(ctx context.Context) (string, string, error) {
	return waitPgx(ctx, c.c.Conn())
}
func (c *pgxConn) Close(broken bool) error {
	if c.c == nil {
		return nil
	}
	if broken {
		_ = c.c.Conn().Close(context.Background())
	}
	c.c.Release()
	c.c = nil
	return nil
}

func waitPgx(ctx context.Context, conn *pgx.Conn) (string, string, error) {
	n, err := conn.WaitForNotification(ctx)
	if err != nil {
		return "", "", err
	}
	if n == nil {
		return "", "", errors.New("watermill-jasper: empty notification")
	}
	return n.Channel, n.Payload, nil
}
