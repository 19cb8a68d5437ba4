package dbx

import (
	"context"
	"database/sql"
	"fmt"
	"reflect"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
)

// FromStdSQL wraps a database/sql pool. The dialect is taken from the driver: pgx's stdlib
// driver (PostgreSQL) or go-mssqldb (SQL Server). Other PostgreSQL drivers such as lib/pq are
// refused because they cannot bind the array parameters this library uses; open the pool with
// sql.Open("pgx", dsn) instead.
func FromStdSQL(db *sql.DB) (DB, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *sql.DB", ErrUnsupported)
	}
	d, err := dialectOfDriver(db)
	if err != nil {
		return nil, err
	}
	return stdDB{db: db, dialect: d}, nil
}

// DialectOfStdSQL returns the dialect of a *sql.DB's driver: PostgreSQL for pgx's stdlib
// driver, SQL Server for go-mssqldb; any other driver is an error wrapping ErrUnsupported.
func DialectOfStdSQL(db *sql.DB) (Dialect, error) {
	if db == nil {
		return "", fmt.Errorf("%w: nil *sql.DB", ErrUnsupported)
	}
	return dialectOfDriver(db)
}

func dialectOfDriver(db *sql.DB) (Dialect, error) {
	t := reflect.TypeOf(db.Driver())
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	path := t.PkgPath()
	switch {
	case strings.HasPrefix(path, "github.com/jackc/pgx/v5/stdlib"):
		return Postgres, nil
	case strings.HasPrefix(path, "github.com/microsoft/go-mssqldb"), strings.HasPrefix(path, "github.com/denisenkom/go-mssqldb"):
		return SQLServer, nil
	}
	return "", fmt.Errorf("%w: database/sql driver %s.%s; use pgx's stdlib driver (sql.Open(\"pgx\", dsn)) for PostgreSQL or go-mssqldb for SQL Server", ErrUnsupported, path, t.Name())
}

type stdDB struct {
	db      *sql.DB
	dialect Dialect
}

func (d stdDB) Dialect() Dialect { return d.dialect }

func (d stdDB) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return stdExec(ctx, d.db, query, args)
}

func (d stdDB) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	return d.db.QueryContext(ctx, query, args...)
}

func (d stdDB) Begin(ctx context.Context) (Tx, error) {
	tx, err := d.db.BeginTx(ctx, nil)
	return wrapped(tx, err, newStdTx)
}

func (d stdDB) Acquire(ctx context.Context) (Conn, error) {
	c, err := d.db.Conn(ctx)
	return wrapped(c, err, func(c *sql.Conn) Conn { return &stdConn{c: c, dialect: d.dialect} })
}

type stdExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func stdExec(ctx context.Context, e stdExecer, query string, args []any) (int64, error) {
	res, err := e.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, nil // some statements (DDL, procedures) report no count
	}
	return n, nil
}

type stdTx struct{ tx *sql.Tx }

func newStdTx(tx *sql.Tx) Tx { return stdTx{tx} }

func (t stdTx) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return stdExec(ctx, t.tx, query, args)
}
func (t stdTx) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	return t.tx.QueryContext(ctx, query, args...)
}
func (t stdTx) Commit(context.Context) error   { return t.tx.Commit() }
func (t stdTx) Rollback(context.Context) error { return t.tx.Rollback() }

type stdConn struct {
	c       *sql.Conn
	dialect Dialect
}

func (c *stdConn) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return stdExec(ctx, c.c, query, args)
}
func (c *stdConn) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	return c.c.QueryContext(ctx, query, args...)
}
func (c *stdConn) Begin(ctx context.Context) (Tx, error) {
	tx, err := c.c.BeginTx(ctx, nil)
	return wrapped(tx, err, newStdTx)
}
func (c *stdConn) WaitForNotification(ctx context.Context) (channel, payload string, err error) {
	if c.dialect != Postgres {
		return "", "", fmt.Errorf("%w: notifications need PostgreSQL", ErrUnsupported)
	}
	rawErr := c.c.Raw(func(dc any) error {
		pc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("%w: driver connection %T is not pgx's", ErrUnsupported, dc)
		}
		channel, payload, err = waitPgx(ctx, pc.Conn())
		return err
	})
	if err == nil {
		err = rawErr
	}
	return channel, payload, err
}
func (c *stdConn) Close(broken bool) error {
	if c.c == nil {
		return nil
	}
	if broken {
		_ = c.c.Raw(func(any) error { return errBadConn })
	}
	err := c.c.Close()
	c.c = nil
	return err
}
