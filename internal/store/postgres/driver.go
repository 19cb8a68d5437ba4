// Package postgres is the PostgreSQL driver of the store (internal/store): every statement
// this library runs on PostgreSQL, DDL included, and the Driver that opens a schema's Store.
// The public package database builds it (database.FromPgx, database.FromStdSQL).
package postgres

import (
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// Driver is a PostgreSQL pool with its SQL.
type Driver struct {
	dbx.DB
	stores sync.Map // layout.Config -> *sqlstore.Store
}

var _ store.Driver = (*Driver)(nil)

// New returns the driver of a PostgreSQL pool (dbx.FromPgx, or dbx.FromStdSQL over pgx's
// stdlib driver).
func New(db dbx.DB) (*Driver, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil database handle", dbx.ErrUnsupported)
	}
	if db.Dialect() != dbx.Postgres {
		return nil, fmt.Errorf("%w: the postgres driver got a %s handle", dbx.ErrUnsupported, db.Dialect())
	}
	return &Driver{DB: db}, nil
}

// Store returns the store of a schema; its statements are built once per schema.
func (d *Driver) Store(cfg layout.Config) (store.Store, error) {
	if cfg.Dialect == "" {
		cfg.Dialect = dbx.Postgres
	}
	cfg, err := cfg.Normalized()
	if err != nil {
		return nil, err
	}
	if cfg.Dialect != dbx.Postgres {
		return nil, fmt.Errorf("%w: config says dialect %s but the database is PostgreSQL", layout.ErrInvalidConfig, cfg.Dialect)
	}
	if s, ok := d.stores.Load(cfg); ok {
		return s.(*sqlstore.Store), nil
	}
	s, _ := d.stores.LoadOrStore(cfg, sqlstore.New(d.DB, Dialect(cfg)))
	return s.(*sqlstore.Store), nil
}

// Dialect returns the statements of a normalized PostgreSQL schema config, without a
// connection (for scripts and offline checks).
func Dialect(cfg layout.Config) sqlstore.Dialect { return newPostgres(cfg) }

// IsMissingColumn: SQLSTATE 42703 (undefined_column).
func (p *postgres) IsMissingColumn(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42703"
}
