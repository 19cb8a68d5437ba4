package postgres

import (
	"fmt"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

func (p *postgres) DDLStatements() []string {
	cfg := p.Cfg
	out := []string{"CREATE SCHEMA IF NOT EXISTS " + cfg.QuoteIdent(cfg.Schema)}
	for _, t := range layout.Tables() {
		out = append(out, "CREATE TABLE IF NOT EXISTS"+sqlstore.CreateTable(cfg, p, t)[len("CREATE TABLE"):])
	}
	for _, t := range layout.Tables() {
		for _, c := range t.Columns {
			if c.Extension {
				out = append(out, fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s", cfg.Qualified(t.Name), sqlstore.ColumnDef(cfg, p, c)))
			}
		}
	}
	for _, ix := range layout.Indexes() {
		s := fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s ON %s (%s)", cfg.QuoteIdent(ix.Name), cfg.Qualified(ix.Table), sqlstore.IndexColumns(cfg, ix))
		if ix.Where != "" {
			s += " WHERE " + ix.Where
		}
		out = append(out, s)
	}
	return out
}

// ScriptSeparator ends each statement of a script.
func (p *postgres) ScriptSeparator() string { return ";\n\n" }

// MigrationLock waits for the schema's transaction-level advisory lock.
func (p *postgres) MigrationLock() string { return "SELECT pg_advisory_xact_lock($1)" }

// MigrationLockArg is the lock key.
func (p *postgres) MigrationLockArg(key int64) any { return key }

// SchemaExists: CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege even when the schema
// exists, so Migrate skips it then.
func (p *postgres) SchemaExists() string {
	return "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"
}

// ObjectsQuery is "": PostgreSQL has no table types or procedures to check.
func (p *postgres) ObjectsQuery() string { return "" }

// IndexesQuery reads the index names of the schema.
func (p *postgres) IndexesQuery() string {
	return `SELECT indexname FROM pg_indexes WHERE schemaname = $1`
}

// pgTypes are the DDL types of the layout's column types: strings are unbounded varchar.
var pgTypes = map[layout.ColumnType]string{
	layout.TypeUUID: "uuid", layout.TypeString: "varchar", layout.TypeInt: "integer",
	layout.TypeTime: "timestamp with time zone", layout.TypeBytes: "bytea", layout.TypeBool: "boolean",
	layout.TypeText: "text",
}

// pgCatalogTypes: information_schema spells varchar out.
var pgCatalogTypes = map[layout.ColumnType]string{layout.TypeString: "character varying"}
