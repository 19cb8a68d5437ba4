// Package dbx runs statements on a database handle: a pgx pool, or a database/sql pool (pgx's
// stdlib driver or go-mssqldb), behind one small interface (DB, Tx, Conn, Rows). It knows no
// SQL of its own; the drivers under internal/store hold the statements. The public package
// database re-exports what users see.
package dbx

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Dialect names a supported database.
type Dialect string

const (
	// Postgres is PostgreSQL (11 or later), through pgx (natively or its database/sql driver).
	Postgres Dialect = "postgres"
	// SQLServer is Microsoft SQL Server (2016 SP1 or later), through go-mssqldb.
	SQLServer Dialect = "sqlserver"
)

// ErrUnsupported is wrapped by errors about drivers or dialects this library cannot use.
var ErrUnsupported = errors.New("watermill-jasper: unsupported database")

// ParseDialect turns "postgres"/"postgresql"/"pg" or "sqlserver"/"mssql" into a Dialect.
func ParseDialect(s string) (Dialect, error) {
	switch strings.ToLower(s) {
	case "postgres", "postgresql", "pg":
		return Postgres, nil
	case "sqlserver", "mssql":
		return SQLServer, nil
	}
	return "", fmt.Errorf("%w: unknown dialect %q (use postgres or sqlserver)", ErrUnsupported, s)
}

// Validate reports whether d is a supported dialect.
func (d Dialect) Validate() error {
	if d != Postgres && d != SQLServer {
		return fmt.Errorf("%w: unknown dialect %q (use postgres or sqlserver)", ErrUnsupported, string(d))
	}
	return nil
}

// Querier runs statements. Arguments are always bound parameters.
type Querier interface {
	// Exec runs a statement and returns the number of rows it affected.
	Exec(ctx context.Context, query string, args ...any) (int64, error)
	// Query runs a statement that returns rows. The caller must Close the rows.
	Query(ctx context.Context, query string, args ...any) (Rows, error)
}

// Rows is a result set being read.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

// Tx is a database transaction.
type Tx interface {
	Querier
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// DB is a connection pool.
type DB interface {
	Querier
	// Dialect of the database behind the pool.
	Dialect() Dialect
	// Begin starts a transaction (READ COMMITTED, the database default).
	Begin(ctx context.Context) (Tx, error)
	// Acquire takes one connection out of the pool for the caller's exclusive use (session
	// locks, LISTEN). Close returns it.
	Acquire(ctx context.Context) (Conn, error)
}

// SessionStatements is implemented by the pools that can tell whether their statements keep
// state in the database session between round trips (FromPgx: pgx's query exec mode), which a
// pooler in transaction mode hands to other clients between transactions.
type SessionStatements interface {
	// SessionStatements returns the pool's statement mode and whether it keeps state in
	// the session.
	SessionStatements() (mode string, keepsState bool)
}

// Conn is a connection held exclusively, for session-scoped state such as advisory locks
// and LISTEN.
type Conn interface {
	Querier
	// Begin starts a transaction on this connection.
	Begin(ctx context.Context) (Tx, error)
	// WaitForNotification blocks until a notification arrives on a channel this connection
	// LISTENs to, or ctx ends. PostgreSQL only.
	WaitForNotification(ctx context.Context) (channel string, payload string, err error)
	// Close gives the connection back to the pool. When broken is true (its session state is
	// unknown, e.g. a notification wait was interrupted) the connection is closed instead.
	Close(broken bool) error
}

// QueryRow runs query and scans its single row into dest. It returns ErrNoRows when the
// query returns none.
func QueryRow(ctx context.Context, q Querier, query string, args []any, dest ...any) error {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	return rows.Close()
}

// ErrNoRows is returned by QueryRow when the query returned no row.
var ErrNoRows = errors.New("watermill-jasper: no rows")

// InTx runs fn in a transaction on db, committing when fn returns nil and rolling back otherwise.
func InTx(ctx context.Context, db interface {
	Begin(ctx context.Context) (Tx, error)
}, fn func(tx Tx) error) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return err
	}
	return tx.Commit(ctx)
}

// FirstStatementBeginner is an optional capability of a DB: BeginExec starts a transaction
// and runs its first statement in one round trip to the database (BEGIN and the statement
// pipelined), instead of two. FromPgx pools have it; use the package function BeginExec,
// which falls back to Begin then Exec for any other DB.
type FirstStatementBeginner interface {
	// BeginExec starts a transaction (READ COMMITTED, the database default), runs query in
	// it and returns the transaction and the number of rows the statement affected. When the
	// statement fails the transaction is rolled back and a nil Tx is returned with the error.
	BeginExec(ctx context.Context, query string, args ...any) (Tx, int64, error)
}

// DeferredBeginner is an optional capability of a DB: BeginDeferred acquires a connection and
// returns a transaction whose BEGIN, and the statements first (settings such as SET LOCAL,
// without arguments), are sent together with its first Exec or Query, in one round trip. A
// transaction ended before any statement sends nothing. FromPgx pools have it; use the
// package function BeginDeferred, which falls back to Begin then Exec of each for any other
// DB.
type DeferredBeginner interface {
	// BeginDeferred starts a transaction (READ COMMITTED, the database default) whose BEGIN
	// and first statements go with its first statement. An error of one of them is that
	// statement's error; the caller then ends the transaction as after any failed statement.
	BeginDeferred(ctx context.Context, first ...string) (Tx, error)
}

// BeginDeferred starts a transaction on db whose BEGIN and first statements are sent with its
// first statement, in one round trip, when db implements DeferredBeginner (FromPgx pools do);
// else it begins and runs each of first at once.
func BeginDeferred(ctx context.Context, db interface {
	Begin(ctx context.Context) (Tx, error)
}, first ...string) (Tx, error) {
	if b, ok := db.(DeferredBeginner); ok {
		return b.BeginDeferred(ctx, first...)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	for _, q := range first {
		if _, err := tx.Exec(ctx, q); err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	return tx, nil
}

// ExecQueuer is an optional capability of a Tx: QueueExec keeps a statement whose result
// the caller does not need, to be sent with the transaction's next statement or with its
// COMMIT, in one round trip, instead of a round trip of its own. A queued statement that fails
// fails that next statement or the Commit (the transaction is then rolled back); Rollback
// drops what is queued. The arguments are kept, not encoded, until the statement is sent:
// the caller must not change them before; ctx is not used for a queued statement (the
// statement that sends it bounds it). A queued statement's error is the next statement's, so
// queue only right before Commit. Transactions of FromPgx's BeginDeferred have it; a Tx that
// wraps another passes it on with the package function QueueExec.
type ExecQueuer interface {
	QueueExec(ctx context.Context, query string, args ...any) error
}

// QueueExec queues query on tx when tx implements ExecQueuer, else runs it at once.
func QueueExec(ctx context.Context, tx Querier, query string, args ...any) error {
	if q, ok := tx.(ExecQueuer); ok {
		return q.QueueExec(ctx, query, args...)
	}
	_, err := tx.Exec(ctx, query, args...)
	return err
}

// Queued is a Querier on tx whose Exec queues the statement when tx implements ExecQueuer,
// and then reports 0 rows affected, as the count is not known yet: it is for statements whose
// count does not matter, such as the outcomes a transaction records right before its commit.
// Its Query sends what is queued first. On any other Tx it is tx itself.
func Queued(tx Tx) Querier {
	if q, ok := tx.(ExecQueuer); ok {
		return queuedTx{tx: tx, q: q}
	}
	return tx
}

type queuedTx struct {
	tx Tx
	q  ExecQueuer
}

func (t queuedTx) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return 0, t.q.QueueExec(ctx, query, args...)
}

func (t queuedTx) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	return t.tx.Query(ctx, query, args...)
}

// BeginExec starts a transaction on db and runs query as its first statement, in one round
// trip when db implements FirstStatementBeginner or DeferredBeginner (FromPgx pools do), else
// as Begin then Exec. It returns the transaction and the rows the statement affected; when the
// statement fails the transaction is rolled back and a nil Tx is returned with the error, so
// the caller has nothing to end.
func BeginExec(ctx context.Context, db interface {
	Begin(ctx context.Context) (Tx, error)
}, query string, args ...any) (Tx, int64, error) {
	if b, ok := db.(FirstStatementBeginner); ok {
		return b.BeginExec(ctx, query, args...)
	}
	return beginDeferredExec(ctx, db, query, args...)
}

// beginDeferredExec is BeginDeferred then Exec of query, the transaction rolled back when the
// statement fails.
func beginDeferredExec(ctx context.Context, db interface {
	Begin(ctx context.Context) (Tx, error)
}, query string, args ...any) (Tx, int64, error) {
	tx, err := BeginDeferred(ctx, db)
	if err != nil {
		return nil, 0, err
	}
	n, err := tx.Exec(ctx, query, args...)
	if err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, 0, err
	}
	return tx, n, nil
}

// wrapped is wrap(v), the handle of a driver's result, or the zero W (nil for an interface)
// and err when the driver failed.
func wrapped[V, W any](v V, err error, wrap func(V) W) (W, error) {
	if err != nil {
		var zero W
		return zero, err
	}
	return wrap(v), nil
}

// Column reads a result of one column (rows and err as a Query returned them) into a slice,
// and closes the rows.
func Column[T any](rows Rows, err error) ([]T, error) {
	if err != nil {
		return nil, err
	}
	var out []T
	for rows.Next() {
		var v T
		if err := rows.Scan(&v); err != nil {
			_ = rows.Close()
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Close()
}
