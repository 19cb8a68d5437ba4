// Package sqlserver is watermill-jasper's SQL Server driver (go-mssqldb through
// database/sql). Import it only in SQL Server programs: it links go-mssqldb, which a
// PostgreSQL program never needs.
//
//	sqlDB, err := sql.Open("sqlserver", "sqlserver://app:secret@sql.internal:1433?database=app")
//	db, err := sqlserver.FromStdSQL(sqlDB)
//	rt, err := jasper.NewRuntime(db, jasper.Config{...}, logger)
//
// docs/sqlserver.md says how the SQL differs from PostgreSQL's, and what was checked.
package sqlserver

import (
	"database/sql"
	"fmt"

	_ "github.com/microsoft/go-mssqldb" // database/sql driver "sqlserver"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlserver"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// FromStdSQL returns the Driver of a database/sql pool opened with go-mssqldb
// (sql.Open("sqlserver", dsn)). Leave go-mssqldb's "guid conversion" DSN option off (its
// default): with it on, the driver swaps uniqueidentifier bytes a second time.
func FromStdSQL(db *sql.DB) (database.Driver, error) {
	h, err := dbx.FromStdSQL(db)
	if err != nil {
		return nil, err
	}
	return sqlserver.New(h)
}

// Script returns the whole SQL Server DDL of a schema (tables, extension columns and indexes,
// Jasper's EnvelopeIdList type and stored procedures), each batch idempotent and followed by
// a GO line, for sqlcmd or SQL Server Management Studio.
func Script(cfg schema.Config) (string, error) {
	if cfg.Dialect == "" {
		cfg.Dialect = schema.SQLServer
	}
	cfg, err := cfg.Normalized()
	if err != nil {
		return "", err
	}
	if cfg.Dialect != schema.SQLServer {
		return "", fmt.Errorf("%w: sqlserver.Script got dialect %s", schema.ErrInvalidConfig, cfg.Dialect)
	}
	return sqlstore.Script(sqlserver.Dialect(cfg)), nil
}
