package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlserver"
)

// Target is one database a dialect test runs against: a handle and a migrated schema of
// its own (random name, dropped when the test ends).
type Target struct {
	// Name is the dialect name, for t.Run.
	Name   string
	DB     store.Driver
	Schema layout.Config
}

// Targets returns the databases to test, each with a fresh migrated schema: PostgreSQL
// always (through pgx natively), SQL Server when WATERMILL_JASPER_TEST_MSSQL holds a DSN
// (sqlserver://user:pass@host:1433?database=db, through go-mssqldb and database/sql).
func Targets(t testing.TB) []Target {
	t.Helper()
	db, cfg := Migrated(t)
	out := []Target{{Name: string(dbx.Postgres), DB: db, Schema: cfg}}
	if os.Getenv(MSSQLEnv) != "" {
		db, cfg := MigratedSQLServer(t)
		out = append(out, Target{Name: string(dbx.SQLServer), DB: db, Schema: cfg})
	}
	return out
}

// msDB opens the shared go-mssqldb pool once.
var msDB = sync.OnceValues(func() (*sql.DB, error) {
	return openStdSQL("sqlserver", os.Getenv(MSSQLEnv), 20, 15*time.Second)
})

// SQLServerDB returns the shared go-mssqldb pool of this test binary; the test is skipped
// when WATERMILL_JASPER_TEST_MSSQL is not set, and fails when the server cannot be reached.
func SQLServerDB(t testing.TB) *sql.DB {
	t.Helper()
	if os.Getenv(MSSQLEnv) == "" {
		t.Skipf("SQL Server tests need a DSN in %s (sqlserver://user:pass@host:1433?database=db)", MSSQLEnv)
	}
	db, err := msDB()
	if err != nil {
		t.Fatalf("SQL Server at $%s is not reachable: %v", MSSQLEnv, err)
	}
	return db
}

// MigratedSQLServer creates a schema with a random name on the SQL Server of
// WATERMILL_JASPER_TEST_MSSQL with schema.Migrate (tables, EnvelopeIdList, Jasper's
// procedures), drops it all when the test ends and returns the handle and the config.
func MigratedSQLServer(t testing.TB) (store.Driver, layout.Config) {
	t.Helper()
	return MigratedSQLServerOn(t, SQLServerDB(t))
}

// MigratedSQLServerOn is MigratedSQLServer on the go-mssqldb pool db (for pools whose
// sessions differ, such as SET NOCOUNT ON).
func MigratedSQLServerOn(t testing.TB, sqlDB *sql.DB) (store.Driver, layout.Config) {
	t.Helper()
	h, err := dbx.FromStdSQL(sqlDB)
	db := driver(t, sqlserver.New, h, err)
	cfg, err := layout.Config{Dialect: dbx.SQLServer, Schema: RandomName("wj_test_")}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	dropAtEnd(t, cfg.Schema, func(ctx context.Context) error { return DropSQLServerSchema(ctx, db, cfg) })
	return db, migrate(t, db, cfg)
}

// DropSQLServerSchema drops what Migrate created in a SQL Server schema (procedures, tables,
// the table type) and the schema itself.
func DropSQLServerSchema(ctx context.Context, db dbx.Querier, cfg layout.Config) error {
	var stmts []string
	for _, p := range layout.StoredProcedures() {
		stmts = append(stmts, "DROP PROCEDURE IF EXISTS "+cfg.Qualified(p))
	}
	for _, tb := range cfg.Tables() {
		stmts = append(stmts, "DROP TABLE IF EXISTS "+cfg.Qualified(tb.Name))
	}
	stmts = append(stmts, "DROP TYPE IF EXISTS "+cfg.Qualified(layout.EnvelopeIDList),
		fmt.Sprintf("IF EXISTS (SELECT * FROM sys.schemas WHERE name = N'%s') EXEC(N'DROP SCHEMA %s')", cfg.Schema, cfg.QuoteIdent(cfg.Schema)))
	for _, s := range stmts {
		if _, err := db.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}
