package schema

import (
	"fmt"
	"strings"
)

// ddl is what a dialect knows about types and DDL syntax. Both implementations live in
// postgres.go and sqlserver.go; everything else in this package is dialect-neutral.
type ddl interface {
	// sqlType is the column type as written in DDL.
	sqlType(c Column) string
	// infoType is the column type as information_schema reports it (data_type[:length]).
	infoType(c Column) string
	defaultClause(c Column) string
	// statements is the whole DDL, each statement idempotent, in the order to run them.
	statements(cfg Config) []string
	scriptSeparator() string
	// placeholder is the n-th (1-based) bind parameter.
	placeholder(n int) string

	// Catalog statements of Migrate and Verify.

	// migrationLock takes a schema's migration lock for the transaction it runs in (waiting
	// for it) and fails when it cannot. Args: lockArg(MigrateLockKey(schema)).
	migrationLock() string
	lockArg(key int64) any
	// objectsQuery returns one name column: the table types and procedures of a schema (""
	// when the dialect has none). Args: schema.
	objectsQuery() string
	// indexesQuery returns one name column: the index names of a schema. Args: schema.
	indexesQuery() string
}

// columnsQuery returns table, column, data type, nullability and length of the Jasper
// tables' columns in a schema (information_schema, both dialects). Args: schema.
func columnsQuery(d ddl) string {
	return `SELECT table_name, column_name, data_type, is_nullable, COALESCE(character_maximum_length, 0)
FROM information_schema.columns WHERE table_schema = ` + d.placeholder(1) + ` AND table_name IN ('` + IncomingTable + `', '` + OutgoingTable + `', '` + DeadLetterTable + `')`
}

// primaryKeysQuery returns the tables of a schema whose primary key is the id column.
// Args: schema.
func primaryKeysQuery(d ddl) string {
	return `SELECT tc.table_name FROM information_schema.table_constraints tc
JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name
WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = ` + d.placeholder(1) + ` AND kcu.column_name = 'id'`
}

func dialectDDL(d Dialect) ddl {
	if d == SQLServer {
		return sqlserverDDL{}
	}
	return postgresDDL{}
}

// columnDef renders "name TYPE [NOT] NULL [DEFAULT x]".
func columnDef(cfg Config, d ddl, c Column) string {
	s := cfg.QuoteIdent(c.Name) + " " + d.sqlType(c)
	if c.Nullable {
		s += " NULL"
	} else {
		s += " NOT NULL"
	}
	if def := d.defaultClause(c); def != "" {
		s += " DEFAULT " + def
	}
	return s
}

// createTable renders a CREATE TABLE body (without any IF NOT EXISTS guard).
func createTable(cfg Config, d ddl, t Table) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE %s (\n", cfg.Qualified(t.Name))
	for _, c := range t.Columns {
		fmt.Fprintf(&b, "  %s,\n", columnDef(cfg, d, c))
	}
	fmt.Fprintf(&b, "  CONSTRAINT %s PRIMARY KEY (%s)\n)", cfg.QuoteIdent(t.PrimaryKeyName()), cfg.QuoteIdent("id"))
	return b.String()
}

func indexColumns(cfg Config, ix Index) string {
	cols := make([]string, len(ix.Columns))
	for i, c := range ix.Columns {
		cols[i] = cfg.QuoteIdent(c)
	}
	return strings.Join(cols, ", ")
}

// Script returns the complete DDL for cfg: schema, the three tables with their extension
// columns, the extension indexes and, on SQL Server, the EnvelopeIdList type and Jasper's
// five stored procedures. Every statement is idempotent, so the script can be applied to a
// database Jasper created. SQL Server batches are separated by GO lines.
func Script(cfg Config) (string, error) {
	cfg, err := cfg.Normalized()
	if err != nil {
		return "", err
	}
	d := dialectDDL(cfg.Dialect)
	var b strings.Builder
	fmt.Fprintf(&b, "-- watermill-jasper schema for %s, schema %s\n", cfg.Dialect, cfg.Schema)
	for _, st := range d.statements(cfg) {
		b.WriteString(st)
		b.WriteString(d.scriptSeparator())
	}
	return b.String(), nil
}
