package schema

import (
	"context"
	"fmt"
	"hash/fnv"

	"github.com/watermill-jasper/watermill-jasper/database"
)

// forDB resolves the config against a database handle: the dialect defaults to the handle's,
// and a config naming another dialect is an error.
func forDB(db database.DB, cfg Config) (Config, error) {
	if db == nil {
		return cfg, fmt.Errorf("%w: nil database handle", ErrInvalidConfig)
	}
	if cfg.Dialect == "" {
		cfg.Dialect = db.Dialect()
	} else if cfg.Dialect != db.Dialect() {
		return cfg, fmt.Errorf("%w: config says dialect %s but the database is %s", ErrInvalidConfig, cfg.Dialect, db.Dialect())
	}
	return cfg.Normalized()
}

// MigrateLockKey is the PostgreSQL advisory lock key (and, as a string, the SQL Server
// applock resource) that serialises Migrate runs on one schema.
func MigrateLockKey(schemaName string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(migrateLockLabel + schemaName))
	return int64(h.Sum64() >> 1)
}

// Migrate creates whatever is missing of the layout: the schema, the three tables, the
// extension columns and indexes and, on SQL Server, the EnvelopeIdList type and Jasper's
// stored procedures. It never drops or rewrites anything and never touches rows, so it is
// safe on a database that Jasper created. It is idempotent and safe to run from many
// processes at once: runs on one schema are serialised by a transaction-scoped lock
// (pg_advisory_xact_lock on PostgreSQL, sp_getapplock on SQL Server) and all DDL runs in
// that one transaction.
func Migrate(ctx context.Context, db database.DB, cfg Config) error {
	cfg, err := forDB(db, cfg)
	if err != nil {
		return err
	}
	d := dialectDDL(cfg.Dialect)
	err = database.InTx(ctx, db, func(tx database.Tx) error {
		if _, err := tx.Exec(ctx, d.migrationLock(), d.lockArg(MigrateLockKey(cfg.Schema))); err != nil {
			return fmt.Errorf("take migration lock: %w", err)
		}
		stmts := d.statements(cfg)
		if cfg.Dialect == Postgres {
			// CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege even when the schema
			// exists; skip it then, so a user without that privilege can migrate.
			var exists bool
			if err := database.QueryRow(ctx, tx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", []any{cfg.Schema}, &exists); err != nil {
				return fmt.Errorf("look up schema %s: %w", cfg.Schema, err)
			}
			if exists {
				stmts = stmts[1:]
			}
		}
		for _, st := range stmts {
			if _, err := tx.Exec(ctx, st); err != nil {
				return fmt.Errorf("%w (statement: %.80s)", err, st)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("watermill-jasper: migrate schema %s: %w", cfg.Schema, err)
	}
	return nil
}
