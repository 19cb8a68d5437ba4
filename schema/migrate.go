package schema

import (
	"context"
	"fmt"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// storeOf resolves the config against a driver: the dialect defaults to the driver's, and a
// config naming another dialect is an error.
func storeOf(db database.Driver, cfg Config) (store.Store, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil database driver; use database.FromPgx, database.FromStdSQL or sqlserver.FromStdSQL", ErrInvalidConfig)
	}
	if cfg.Dialect == "" {
		cfg.Dialect = db.Dialect()
	} else if cfg.Dialect != db.Dialect() {
		return nil, fmt.Errorf("%w: config says dialect %s but the database is %s", ErrInvalidConfig, cfg.Dialect, db.Dialect())
	}
	return db.Store(cfg)
}

// MigrateLockKey is the PostgreSQL advisory lock key (and, as a string, the SQL Server
// applock resource) that serialises Migrate runs on one schema.
func MigrateLockKey(schemaName string) int64 { return sqlstore.MigrateLockKey(schemaName) }

// Migrate creates whatever is missing of the layout: the schema, the three tables, the
// extension columns and indexes and, on SQL Server, the EnvelopeIdList type and Jasper's
// stored procedures. It never drops or rewrites anything and never touches rows, so it is
// safe on a database that Jasper created. It is idempotent and safe to run from many
// processes at once: runs on one schema are serialised by a transaction-scoped lock
// (pg_advisory_xact_lock on PostgreSQL, sp_getapplock on SQL Server) and all DDL runs in
// that one transaction.
func Migrate(ctx context.Context, db database.Driver, cfg Config) error {
	s, err := storeOf(db, cfg)
	if err != nil {
		return err
	}
	if err := s.Migrate(ctx); err != nil {
		return fmt.Errorf("watermill-jasper: migrate schema %s: %w", s.Schema().Schema, err)
	}
	return nil
}

// Script returns the complete PostgreSQL DDL for cfg: schema, the three tables with their
// extension columns and the extension indexes. Every statement is idempotent, so the script
// can be applied to a database Jasper created. The SQL Server script is
// sqlserver.Script (package sqlserver, which links go-mssqldb).
func Script(cfg Config) (string, error) {
	cfg, err := cfg.Normalized()
	if err != nil {
		return "", err
	}
	if cfg.Dialect != Postgres {
		return "", fmt.Errorf("%w: schema.Script writes PostgreSQL's DDL; use sqlserver.Script for SQL Server", ErrInvalidConfig)
	}
	return sqlstore.Script(postgres.Dialect(cfg)), nil
}
