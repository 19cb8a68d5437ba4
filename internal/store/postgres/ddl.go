package postgres

import (
	"fmt"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

func (p *postgres) SQLType(c layout.Column) string {
	switch c.Type {
	case layout.TypeUUID:
		return "uuid"
	case layout.TypeString:
		return "varchar"
	case layout.TypeInt:
		return "integer"
	case layout.TypeTime:
		return "timestamp with time zone"
	case layout.TypeBytes:
		return "bytea"
	case layout.TypeBool:
		return "boolean"
	case layout.TypeText:
		return "text"
	}
	panic(fmt.Sprintf("schema: unknown column type %d", c.Type)) // programming error in tables.go
}

func (p *postgres) ColumnType(c layout.Column) string {
	if c.Type == layout.TypeString {
		return "character varying"
	}
	return p.SQLType(c)
}

func (p *postgres) DefaultClause(c layout.Column) string {
	switch c.Default {
	case "":
		return ""
	case "null":
		return "NULL"
	case "now":
		return "now()"
	}
	return c.Default
}

func (p *postgres) DDLStatements() []string {
	cfg := p.cfg
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

// ColumnsQuery reads the Jasper tables' columns from information_schema.
func (p *postgres) ColumnsQuery() string {
	return `SELECT table_name, column_name, data_type, is_nullable, COALESCE(character_maximum_length, 0)
FROM information_schema.columns WHERE table_schema = $1 AND table_name IN ` + sqlstore.JasperTablesQuery()
}

// PrimaryKeysQuery reads the tables whose primary key is id.
func (p *postgres) PrimaryKeysQuery() string {
	return `SELECT tc.table_name FROM information_schema.table_constraints tc
JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name
WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = $1 AND kcu.column_name = 'id'`
}

// ObjectsQuery is "": PostgreSQL has no table types or procedures to check.
func (p *postgres) ObjectsQuery() string { return "" }

// IndexesQuery reads the index names of the schema.
func (p *postgres) IndexesQuery() string {
	return `SELECT indexname FROM pg_indexes WHERE schemaname = $1`
}
