package bench

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
)

// countingDriver is database.FromPgx(pool) with a countingDB between the driver and the
// pool: a runtime built on it runs exactly as on database.FromPgx(pool), and every statement
// it sends is counted into qc.
func countingDriver(pool *pgxpool.Pool, qc *queryCounter) (database.Driver, error) {
	return postgres.New(newCountingDB(dbx.FromPgx(pool), qc))
}

// countingDB counts what a component sends through a database.DB: every statement, BEGIN,
// COMMIT and ROLLBACK is one statement; BEGIN and every statement outside a transaction
// (autocommit) count one transaction. Waiting for a notification is not a statement.
type countingDB struct {
	autocommit
	db database.DB
}

var (
	_ database.DB                     = (*countingDB)(nil)
	_ database.FirstStatementBeginner = (*countingDB)(nil)
	_ dbx.DeferredBeginner            = (*countingDB)(nil)
	_ dbx.ExecQueuer                  = (*countingTxDB)(nil)
)

// newCountingDB counts into qc what is sent through db and the connections it hands out.
func newCountingDB(db database.DB, qc *queryCounter) *countingDB {
	return &countingDB{autocommit: autocommit{s: db, qc: qc}, db: db}
}

// autocommit counts what is sent outside a transaction, through the pool or one of its
// connections (s): each Exec, Query and Begin is one statement and one transaction; the
// transactions Begin returns count their own statements.
type autocommit struct {
	s interface {
		database.Querier
		Begin(ctx context.Context) (database.Tx, error)
	}
	qc *queryCounter
}

func (a autocommit) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	a.qc.addAutocommit(ctx, query)
	return a.s.Exec(ctx, query, args...)
}

func (a autocommit) Query(ctx context.Context, query string, args ...any) (database.Rows, error) {
	a.qc.addAutocommit(ctx, query)
	return a.s.Query(ctx, query, args...)
}

func (a autocommit) Begin(ctx context.Context) (database.Tx, error) {
	a.qc.addAutocommit(ctx, "BEGIN")
	tx, err := a.s.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &countingTxDB{tx: tx, qc: a.qc}, nil
}

func (c *countingDB) Dialect() database.Dialect { return c.db.Dialect() }

// BeginExec keeps the pool's pipelined BEGIN (database.BeginExec): BEGIN and the first
// statement, two statements of one transaction.
func (c *countingDB) BeginExec(ctx context.Context, query string, args ...any) (database.Tx, int64, error) {
	c.qc.addAutocommit(ctx, "BEGIN")
	c.qc.query(ctx, query)
	tx, n, err := database.BeginExec(ctx, c.db, query, args...)
	if err != nil {
		return nil, n, err
	}
	return &countingTxDB{tx: tx, qc: c.qc}, n, nil
}

// BeginDeferred keeps the pool's deferred BEGIN (dbx.BeginDeferred): BEGIN and first are
// counted now, as statements of one transaction, and sent with its first statement.
func (c *countingDB) BeginDeferred(ctx context.Context, first ...string) (database.Tx, error) {
	c.qc.addAutocommit(ctx, "BEGIN")
	for _, q := range first {
		c.qc.query(ctx, q)
	}
	tx, err := dbx.BeginDeferred(ctx, c.db, first...)
	if err != nil {
		return nil, err
	}
	return &countingTxDB{tx: tx, qc: c.qc}, nil
}

func (c *countingDB) Acquire(ctx context.Context) (database.Conn, error) {
	conn, err := c.db.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{autocommit: autocommit{s: conn, qc: c.qc}, c: conn}, nil
}

type countingTxDB struct {
	tx database.Tx
	qc *queryCounter
}

func (t *countingTxDB) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	t.qc.query(ctx, query)
	return t.tx.Exec(ctx, query, args...)
}

func (t *countingTxDB) Query(ctx context.Context, query string, args ...any) (database.Rows, error) {
	t.qc.query(ctx, query)
	return t.tx.Query(ctx, query, args...)
}

// QueueExec keeps the transaction's queued statements (dbx.QueueExec): counted now, sent
// with the next statement or the commit where the pool's transaction can.
func (t *countingTxDB) QueueExec(ctx context.Context, query string, args ...any) error {
	t.qc.query(ctx, query)
	return dbx.QueueExec(ctx, t.tx, query, args...)
}

func (t *countingTxDB) Commit(ctx context.Context) error {
	t.qc.query(ctx, "COMMIT")
	return t.tx.Commit(ctx)
}

func (t *countingTxDB) Rollback(ctx context.Context) error {
	t.qc.query(ctx, "ROLLBACK")
	return t.tx.Rollback(ctx)
}

// countingConn is a connection of a countingDB (its session locks and LISTEN).
type countingConn struct {
	autocommit
	c database.Conn
}

func (c *countingConn) WaitForNotification(ctx context.Context) (string, string, error) {
	return c.c.WaitForNotification(ctx)
}

func (c *countingConn) Close(broken bool) error { return c.c.Close(broken) }
