// Package database is the one boundary between watermill-jasper and a database: a Driver is
// the pool the application already has, together with the SQL of its database. Build it once
// and give it to the runtime (jasper.NewRuntime) or to the admin and schema tools:
//
//	db := database.FromPgx(pgxPool)           // PostgreSQL, pgx natively
//	db, err := database.FromStdSQL(sqlDB)     // PostgreSQL through database/sql (driver "pgx")
//	db, err := sqlserver.FromStdSQL(sqlDB)    // SQL Server (go-mssqldb): package sqlserver
//
// The SQL Server driver lives in package sqlserver, so that a PostgreSQL program does not link
// go-mssqldb. Publishers writing in a caller's transaction take watermill-sql's
// ContextExecutor (sql.TxFromPgx(tx), sql.TxFromStdSQL(tx)), as watermill-sql's publisher does.
package database

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
)

// Driver is a database pool with the SQL of its database: every component of this module
// reaches the tables through one. It is also a DB. Build it with FromPgx or FromStdSQL
// (PostgreSQL), or sqlserver.FromStdSQL (SQL Server).
type Driver = store.Driver

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

// FromPgx returns the Driver of a pgx pool (PostgreSQL).
func FromPgx(pool *pgxpool.Pool) Driver {
	d, _ := postgres.New(dbx.FromPgx(pool)) // a pgx handle is always PostgreSQL
	return d
}

// FromStdSQL returns the Driver of a database/sql pool opened with pgx's stdlib driver
// (sql.Open("pgx", dsn)). A go-mssqldb pool is refused with an error saying to use
// sqlserver.FromStdSQL; other drivers (lib/pq) are refused because they cannot bind the array
// parameters this library uses.
func FromStdSQL(db *sql.DB) (Driver, error) {
	h, err := dbx.FromStdSQL(db)
	if err != nil {
		return nil, err
	}
	if h.Dialect() == dbx.SQLServer {
		return nil, fmt.Errorf("%w: this *sql.DB is SQL Server (go-mssqldb): build its driver with sqlserver.FromStdSQL (package github.com/watermill-jasper/watermill-jasper/sqlserver)", ErrUnsupported)
	}
	return postgres.New(h)
}

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
