// Package sqlserver is the SQL Server driver of the store (internal/store): every statement
// this library runs on SQL Server (go-mssqldb through database/sql), DDL included, and the
// Driver that opens a schema's Store. Only the public package sqlserver and the tests import
// it, so that a PostgreSQL program does not link go-mssqldb.
package sqlserver

import (
	"fmt"
	"sync"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// Driver is a SQL Server pool with its SQL.
type Driver struct {
	dbx.DB
	stores sync.Map // layout.Config -> *sqlstore.Store
}

var _ store.Driver = (*Driver)(nil)

// New returns the driver of a SQL Server pool (dbx.FromStdSQL over go-mssqldb).
func New(db dbx.DB) (*Driver, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil database handle", dbx.ErrUnsupported)
	}
	if db.Dialect() != dbx.SQLServer {
		return nil, fmt.Errorf("%w: the sqlserver driver got a %s handle", dbx.ErrUnsupported, db.Dialect())
	}
	return &Driver{DB: db}, nil
}

// Store returns the store of a schema; its statements are built once per schema.
func (d *Driver) Store(cfg layout.Config) (store.Store, error) {
	if cfg.Dialect == "" {
		cfg.Dialect = dbx.SQLServer
	}
	cfg, err := cfg.Normalized()
	if err != nil {
		return nil, err
	}
	if cfg.Dialect != dbx.SQLServer {
		return nil, fmt.Errorf("%w: config says dialect %s but the database is SQL Server", layout.ErrInvalidConfig, cfg.Dialect)
	}
	if s, ok := d.stores.Load(cfg); ok {
		return s.(*sqlstore.Store), nil
	}
	s, _ := d.stores.LoadOrStore(cfg, sqlstore.New(d.DB, Dialect(cfg)))
	return s.(*sqlstore.Store), nil
}

// Dialect returns the statements of a normalized SQL Server schema config, without a
// connection (for scripts and offline checks).
func Dialect(cfg layout.Config) sqlstore.Dialect { return newSQLServer(cfg) }

// IsMissingColumn: error 207 "Invalid column name".
func (m *sqlserver) IsMissingColumn(err error) bool {
	n, ok := msErrorNumber(err)
	return ok && n == 207
}
