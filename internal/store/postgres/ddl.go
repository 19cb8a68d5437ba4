package postgres

import (
	"fmt"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

func (p *postgres) DDLStatements() []string {
	cfg := p.Cfg
	out := []string{"CREATE SCHEMA IF NOT EXISTS " + cfg.QuoteIdent(cfg.Schema)}
	for _, t := range cfg.Tables() {
		out = append(out, "CREATE TABLE IF NOT EXISTS"+sqlstore.CreateTable(cfg, p, t)[len("CREATE TABLE"):])
	}
	for _, t := range cfg.Tables() {
		for _, c := range t.Columns {
			if c.Addable() {
				out = append(out, fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s", cfg.Qualified(t.Name), sqlstore.ColumnDef(cfg, p, c)))
			}
		}
	}
	for _, ix := range cfg.Indexes() {
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

// RequirementsQuery is "": every supported PostgreSQL (12 and later) has what this library
// uses.
func (p *postgres) RequirementsQuery() string { return "" }

// The catalog queries read pg_catalog rather than information_schema, and find the three
// tables by name through pg_class's (relname, relnamespace) index: information_schema's views
// scan every relation of the database, tens of milliseconds on one with many schemas, and
// Check runs at every runtime start. They answer in information_schema's terms: format_type
// without a type modifier gives its data_type names ("character varying", "timestamp with
// time zone"); lengths are SQL Server's concern (0).

// tablesOf selects the oids of the schema $1's tables (layout.Config.Tables).
func (p *postgres) tablesOf() string {
	return `SELECT c.oid FROM pg_class c
  WHERE c.relname IN ` + p.Cfg.TableList() + `
    AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1) AND c.relkind = 'r'`
}

// ColumnsQuery reads the Jasper tables' columns.
func (p *postgres) ColumnsQuery() string {
	return `SELECT c.relname::text, a.attname::text, format_type(a.atttypid, NULL),
  CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END, 0::bigint
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.oid IN (` + p.tablesOf() + `) AND a.attnum > 0 AND NOT a.attisdropped`
}

// PrimaryKeysQuery reads the tables whose primary key is the id column alone.
func (p *postgres) PrimaryKeysQuery() string {
	return `SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
WHERE i.indrelid IN (` + p.tablesOf() + `) AND i.indisprimary AND i.indnatts = 1 AND a.attname = 'id'`
}

// IndexesQuery reads the names of the Jasper tables' indexes.
func (p *postgres) IndexesQuery() string {
	return `SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid IN (` + p.tablesOf() + `)`
}

// pgTypes are the DDL types of the layout's column types: strings are unbounded varchar.
var pgTypes = map[layout.ColumnType]string{
	layout.TypeUUID: "uuid", layout.TypeString: "varchar", layout.TypeInt: "integer",
	layout.TypeTime: "timestamp with time zone", layout.TypeBytes: "bytea", layout.TypeBool: "boolean",
	layout.TypeText: "text",
}

// pgCatalogTypes: information_schema spells varchar out.
var pgCatalogTypes = map[layout.ColumnType]string{layout.TypeString: "character varying"}
