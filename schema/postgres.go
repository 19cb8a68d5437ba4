package schema

import "fmt"

type postgresDDL struct{}

func (postgresDDL) sqlType(c Column) string {
	switch c.Type {
	case TypeUUID:
		return "uuid"
	case TypeString:
		return "varchar"
	case TypeInt:
		return "integer"
	case TypeTime:
		return "timestamp with time zone"
	case TypeBytes:
		return "bytea"
	case TypeBool:
		return "boolean"
	case TypeText:
		return "text"
	}
	panic(fmt.Sprintf("schema: unknown column type %d", c.Type)) // programming error in tables.go
}

func (d postgresDDL) infoType(c Column) string {
	if c.Type == TypeString {
		return "character varying"
	}
	return d.sqlType(c)
}

func (postgresDDL) defaultClause(c Column) string {
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

func (d postgresDDL) statements(cfg Config) []string {
	out := []string{"CREATE SCHEMA IF NOT EXISTS " + cfg.QuoteIdent(cfg.Schema)}
	for _, t := range Tables() {
		out = append(out, "CREATE TABLE IF NOT EXISTS"+createTable(cfg, d, t)[len("CREATE TABLE"):])
	}
	for _, t := range Tables() {
		for _, c := range t.Columns {
			if c.Extension {
				out = append(out, fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s", cfg.Qualified(t.Name), columnDef(cfg, d, c)))
			}
		}
	}
	for _, ix := range Indexes() {
		s := fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s ON %s (%s)", cfg.QuoteIdent(ix.Name), cfg.Qualified(ix.Table), indexColumns(cfg, ix))
		if ix.Where != "" {
			s += " WHERE " + ix.Where
		}
		out = append(out, s)
	}
	return out
}

func (postgresDDL) scriptSeparator() string { return ";\n\n" }

func (postgresDDL) placeholder(n int) string { return fmt.Sprintf("$%d", n) }

func (postgresDDL) migrationLock() string { return "SELECT pg_advisory_xact_lock($1)" }
func (postgresDDL) lockArg(key int64) any { return key }
func (postgresDDL) objectsQuery() string  { return "" }
func (postgresDDL) indexesQuery() string {
	return `SELECT indexname FROM pg_indexes WHERE schemaname = $1`
}
