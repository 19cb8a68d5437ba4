// Package database is the one boundary between watermill-jasper and a database driver.
//
// Long-running components (forwarder, subscriber, durability node, admin tools) take a DB,
// built from the pool the application already has:
//
//	db := database.FromPgx(pgxPool)           // PostgreSQL, pgx natively
//	db, err := database.FromStdSQL(sqlDB)     // database/sql: pgx's stdlib driver or go-mssqldb
//
// Publishers instead take watermill-sql's ContextExecutor (sql.TxFromStdSQL(tx),
// sql.TxFromPgx(tx), sql.BeginnerFromPgx(pool)...), exactly as watermill-sql's publisher does.
package database

import (
	"context"
	"database/sql"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
)

// Dialect names a supported database.
type Dialect = dbx.Dialect

const (
	// Postgres is PostgreSQL (11 or later), through pgx (natively or its database/sql driver).
	Postgres = dbx.Postgres
	// SQLServer is Microsoft SQL Server (2016 SP1 or later), through go-mssqldb.
	SQLServer = dbx.SQLServer
)

// ErrUnsupported is wrapped by errors about drivers or dialects this library cannot use.
var ErrUnsupported = dbx.ErrUnsupported

// ErrNoRows is returned by QueryRow when the query returned no row.
var ErrNoRows = dbx.ErrNoRows

// DB is a connection pool.
type DB = dbx.DB

// Tx is a database transaction.
type Tx = dbx.Tx

// Conn is a connection held exclusively (session locks, LISTEN).
type Conn = dbx.Conn

// Rows is a result set being read.
type Rows = dbx.Rows

// Querier runs statements. Arguments are always bound parameters.
type Querier = dbx.Querier

// FirstStatementBeginner is the optional capability of a DB to send BEGIN and the first
// statement of a transaction in one round trip (FromPgx pools have it).
type FirstStatementBeginner = dbx.FirstStatementBeginner

// ParseDialect turns "postgres"/"postgresql"/"pg" or "sqlserver"/"mssql" into a Dialect.
func ParseDialect(s string) (Dialect, error) { return dbx.ParseDialect(s) }

// FromPgx wraps a pgx pool (PostgreSQL).
func FromPgx(pool *pgxpool.Pool) DB { return dbx.FromPgx(pool) }

// FromStdSQL wraps a database/sql pool. The dialect is taken from the driver: pgx's stdlib
// driver (PostgreSQL) or go-mssqldb (SQL Server).
func FromStdSQL(db *sql.DB) (DB, error) { return dbx.FromStdSQL(db) }

// DialectOfStdSQL returns the dialect of a *sql.DB's driver.
func DialectOfStdSQL(db *sql.DB) (Dialect, error) { return dbx.DialectOfStdSQL(db) }

// QueryRow runs query and scans its single row into dest (ErrNoRows when there is none).
func QueryRow(ctx context.Context, q Querier, query string, args []any, dest ...any) error {
	return dbx.QueryRow(ctx, q, query, args, dest...)
}

// InTx runs fn in a transaction on db, committing when fn returns nil and rolling back otherwise.
func InTx(ctx context.Context, db interface {
	Begin(ctx context.Context) (Tx, error)
}, fn func(tx Tx) error) error {
	return dbx.InTx(ctx, db, fn)
}

// BeginExec starts a transaction on db and runs query as its first statement, in one round
// trip when db implements FirstStatementBeginner.
func BeginExec(ctx context.Context, db interface {
	Begin(ctx context.Context) (Tx, error)
}, query string, args ...any) (Tx, int64, error) {
	return dbx.BeginExec(ctx, db, query, args...)
}
