package sqlstore

import (
	"fmt"
	"sync"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// Driver is a pool with the SQL of its database (store.Driver): it opens the Store of a
// schema, whose statements it builds once per schema. The dialect packages build it
// (postgres.New, sqlserver.New).
type Driver struct {
	dbx.DB
	name    dbx.Dialect
	title   string                      // the database in errors: PostgreSQL, SQL Server
	dialect func(layout.Config) Dialect // the statements of a normalized config
	stores  sync.Map                    // layout.Config -> *Store
}

var _ store.Driver = (*Driver)(nil)

// SessionStatements forwards dbx.SessionStatements of the pool, when it has it; otherwise its
// statements are taken to keep no state in the session.
func (d *Driver) SessionStatements() (mode string, keepsState bool) {
	if s, ok := d.DB.(dbx.SessionStatements); ok {
		return s.SessionStatements()
	}
	return "", false
}

var _ dbx.SessionStatements = (*Driver)(nil)

// NewDriver returns the driver of db, which must be a handle of the database name (title in
// errors), whose statements dialect renders for a normalized schema config.
func NewDriver(db dbx.DB, name dbx.Dialect, title string, dialect func(layout.Config) Dialect) (*Driver, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil database handle", dbx.ErrUnsupported)
	}
	if db.Dialect() != name {
		return nil, fmt.Errorf("%w: the %s driver got a %s handle", dbx.ErrUnsupported, name, db.Dialect())
	}
	return &Driver{DB: db, name: name, title: title, dialect: dialect}, nil
}

// Store returns the store of a schema; its statements are built once per schema.
func (d *Driver) Store(cfg layout.Config) (store.Store, error) {
	if cfg.Dialect == "" {
		cfg.Dialect = d.name
	}
	cfg, err := cfg.Normalized()
	if err != nil {
		return nil, err
	}
	if cfg.Dialect != d.name {
		return nil, fmt.Errorf("%w: config says dialect %s but the database is %s", layout.ErrInvalidConfig, cfg.Dialect, d.title)
	}
	if s, ok := d.stores.Load(cfg); ok {
		return s.(*Store), nil
	}
	s, _ := d.stores.LoadOrStore(cfg, New(d.DB, d.dialect(cfg)))
	return s.(*Store), nil
}
