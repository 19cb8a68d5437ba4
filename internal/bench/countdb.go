package bench

import (
	"context"

	"github.com/watermill-jasper/watermill-jasper/database"
)

// countingDB counts what a component sends through a database.DB: every statement, BEGIN,
// COMMIT and ROLLBACK is one statement; BEGIN and every statement outside a transaction
// (autocommit) count one transaction. Waiting for a notification is not a statement.
type countingDB struct {
	db database.DB
	qc *queryCounter
}

var _ database.DB = (*countingDB)(nil)

func (c *countingDB) Dialect() database.Dialect { return c.db.Dialect() }

func (c *countingDB) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	c.qc.statements.Add(1)
	c.qc.txs.Add(1)
	return c.db.Exec(ctx, query, args...)
}

func (c *countingDB) Query(ctx context.Context, query string, args ...any) (database.Rows, error) {
	c.qc.statements.Add(1)
	c.qc.txs.Add(1)
	return c.db.Query(ctx, query, args...)
}

func (c *countingDB) Begin(ctx context.Context) (database.Tx, error) {
	c.qc.statements.Add(1)
	c.qc.txs.Add(1)
	tx, err := c.db.Begin(ctx)
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
	return &countingConn{c: conn, qc: c.qc}, nil
}

type countingTxDB struct {
	tx database.Tx
	qc *queryCounter
}

func (t *countingTxDB) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	t.qc.statements.Add(1)
	return t.tx.Exec(ctx, query, args...)
}

func (t *countingTxDB) Query(ctx context.Context, query string, args ...any) (database.Rows, error) {
	t.qc.statements.Add(1)
	return t.tx.Query(ctx, query, args...)
}

func (t *countingTxDB) Commit(ctx context.Context) error {
	t.qc.statements.Add(1)
	return t.tx.Commit(ctx)
}

func (t *countingTxDB) Rollback(ctx context.Context) error {
	t.qc.statements.Add(1)
	return t.tx.Rollback(ctx)
}

type countingConn struct {
	c  database.Conn
	qc *queryCounter
}

func (c *countingConn) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	c.qc.statements.Add(1)
	c.qc.txs.Add(1)
	return c.c.Exec(ctx, query, args...)
}

func (c *countingConn) Query(ctx context.Context, query string, args ...any) (database.Rows, error) {
	c.qc.statements.Add(1)
	c.qc.txs.Add(1)
	return c.c.Query(ctx, query, args...)
}

func (c *countingConn) Begin(ctx context.Context) (database.Tx, error) {
	c.qc.statements.Add(1)
	c.qc.txs.Add(1)
	tx, err := c.c.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &countingTxDB{tx: tx, qc: c.qc}, nil
}

func (c *countingConn) WaitForNotification(ctx context.Context) (string, string, error) {
	return c.c.WaitForNotification(ctx)
}

func (c *countingConn) Close(broken bool) error { return c.c.Close(broken) }
