package sqlstore

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// DDL is what a dialect knows about types, DDL and its catalog. It is part of Dialect.
type DDL interface {
	// SQLType is a column's type as written in DDL.
	SQLType(c layout.Column) string
	// ColumnType is a column's type as the catalog reports it (information_schema's
	// data_type, ":length" for sized SQL Server strings).
	ColumnType(c layout.Column) string
	// DefaultClause renders a column's default ("" for none).
	DefaultClause(c layout.Column) string
	// DDLStatements is the whole DDL of the schema, each statement idempotent, in the order
	// to run them; the first one creates the schema.
	DDLStatements() []string
	// ScriptSeparator separates statements in a script file.
	ScriptSeparator() string
	// MigrationLock takes the schema's migration lock for the transaction it runs in
	// (waiting for it) and fails when it cannot. Args: MigrationLockArg(MigrateLockKey).
	MigrationLock() string
	MigrationLockArg(key int64) any
	// SchemaExists returns one boolean row: whether schema $1 exists (Migrate skips its
	// CREATE SCHEMA then, which some databases check rights for even when it exists).
	SchemaExists() string
	// ColumnsQuery returns table, column, data type, nullability ('YES'/'NO') and length of
	// the Jasper tables' columns in schema $1.
	ColumnsQuery() string
	// PrimaryKeysQuery returns the tables of schema $1 whose primary key is the id column.
	PrimaryKeysQuery() string
	// ObjectsQuery returns the table types and procedures of schema $1 ("" when the database
	// has none to check).
	ObjectsQuery() string
	// IndexesQuery returns the index names of schema $1.
	IndexesQuery() string
	// IsMissingColumn reports whether err says a column does not exist.
	IsMissingColumn(err error) bool
	// RequirementsQuery returns one text row per requirement of this library the database
	// does not meet, each a line that says what to fix, and no row when it meets them all
	// ("" when there is nothing to check). Args: none.
	RequirementsQuery() string
}

// MigrateLockKey is the lock key that serialises Migrate runs on one schema.
func MigrateLockKey(schemaName string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("watermill-jasper:migrate:" + schemaName))
	return int64(h.Sum64() >> 1)
}

// ColumnDef renders "name TYPE [NOT] NULL [DEFAULT x]".
func ColumnDef(cfg layout.Config, d DDL, c layout.Column) string {
	s := cfg.QuoteIdent(c.Name) + " " + d.SQLType(c)
	if c.Nullable {
		s += " NULL"
	} else {
		s += " NOT NULL"
	}
	if def := d.DefaultClause(c); def != "" {
		s += " DEFAULT " + def
	}
	return s
}

// CreateTable renders a CREATE TABLE statement (without any IF NOT EXISTS guard).
func CreateTable(cfg layout.Config, d DDL, t layout.Table) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE TABLE %s (\n", cfg.Qualified(t.Name))
	for _, c := range t.Columns {
		fmt.Fprintf(&b, "  %s,\n", ColumnDef(cfg, d, c))
	}
	fmt.Fprintf(&b, "  CONSTRAINT %s PRIMARY KEY (%s)\n)", cfg.QuoteIdent(t.PrimaryKeyName()), cfg.QuoteIdent("id"))
	return b.String()
}

// IndexColumns renders the quoted column list of an index.
func IndexColumns(cfg layout.Config, ix layout.Index) string {
	cols := make([]string, len(ix.Columns))
	for i, c := range ix.Columns {
		cols[i] = cfg.QuoteIdent(c)
	}
	return strings.Join(cols, ", ")
}

// Script renders a dialect's whole DDL as a script file: a header line, then every statement
// followed by the dialect's separator.
func Script(d Dialect) string {
	var b strings.Builder
	fmt.Fprintf(&b, "-- watermill-jasper schema for %s, schema %s\n", d.Name(), d.Schema().Schema)
	for _, st := range d.DDLStatements() {
		b.WriteString(st)
		b.WriteString(d.ScriptSeparator())
	}
	return b.String()
}

// Script returns the DDL statements.
func (s *Store) Script() []string { return s.d.DDLStatements() }

// ScriptSeparator separates the statements of Script in a file.
func (s *Store) ScriptSeparator() string { return s.d.ScriptSeparator() }

// ColumnType is a column's type as the catalog reports it.
func (s *Store) ColumnType(c layout.Column) string { return s.d.ColumnType(c) }

// Migrate creates what is missing of the layout, in one transaction under the schema's
// migration lock.
func (s *Store) Migrate(ctx context.Context) error {
	cfg := s.d.Schema()
	return dbx.InTx(ctx, s.db, func(tx dbx.Tx) error {
		if _, err := tx.Exec(ctx, s.d.MigrationLock(), s.d.Bind([]any{s.d.MigrationLockArg(MigrateLockKey(cfg.Schema))})...); err != nil {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		if err := s.checkMissingColumns(ctx, tx); err != nil {
			return err
		}
		stmts := s.d.DDLStatements()
		var exists bool
		if err := dbx.QueryRow(ctx, tx, s.d.SchemaExists(), s.d.Bind([]any{cfg.Schema}), &exists); err != nil {
			return fmt.Errorf("look up schema %s: %w", cfg.Schema, err)
		}
		if exists {
			stmts = stmts[1:]
		}
		for _, st := range stmts {
			if _, err := tx.Exec(ctx, st); err != nil {
				return fmt.Errorf("%w (statement: %s)", err, firstLine(st))
			}
		}
		return nil
	})
}

// checkMissingColumns refuses, in one line naming them, the columns an existing table lacks
// that a migration cannot add (NOT NULL without a default: the table's rows would need a
// value): such a table was not created by Jasper 2.0 or this library. The addable columns a
// table lacks are added by the DDL statements.
func (s *Store) checkMissingColumns(ctx context.Context, q dbx.Querier) error {
	cfg := s.d.Schema()
	cols, err := s.catalogColumns(ctx, q)
	if err != nil {
		return err
	}
	var problems []string
	for _, t := range cfg.Tables() {
		have := cols[t.Name]
		if len(have) == 0 {
			continue // created by the migration
		}
		var missing []string
		for _, c := range t.Columns {
			if !have[strings.ToLower(c.Name)].exists && !c.Addable() {
				missing = append(missing, c.Name)
			}
		}
		if len(missing) > 0 {
			problems = append(problems, fmt.Sprintf("table %s lacks %s", cfg.Qualified(t.Name), strings.Join(missing, ", ")))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%s (NOT NULL columns of Jasper's layout, which a migration cannot add to rows that exist): the table was not created by Jasper 2.0 or this library; add the columns (docs/tables.md) or drop the table",
		strings.Join(problems, "; "))
}

// catalogColumn is one column of the live database.
type catalogColumn struct {
	typ      string
	nullable bool
	exists   bool
}

// catalogColumns reads the columns of the schema's tables: table -> lower-case column name.
func (s *Store) catalogColumns(ctx context.Context, q dbx.Querier) (map[string]map[string]catalogColumn, error) {
	cfg := s.d.Schema()
	out := map[string]map[string]catalogColumn{}
	rows, err := q.Query(ctx, s.d.ColumnsQuery(), s.d.Bind([]any{cfg.Schema})...)
	if err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	for rows.Next() {
		var table, column, typ, nullable string
		var length int64
		if err := rows.Scan(&table, &column, &typ, &nullable, &length); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("read columns: %w", err)
		}
		if cfg.Dialect == dbx.SQLServer && (typ == "varchar" || typ == "nvarchar" || typ == "varbinary") {
			typ = fmt.Sprintf("%s:%d", typ, length)
		}
		if out[table] == nil {
			out[table] = map[string]catalogColumn{}
		}
		out[table][strings.ToLower(column)] = catalogColumn{typ: typ, nullable: nullable == "YES", exists: true}
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	return out, nil
}

// firstLine is the first line of a statement after its SET options, for an error that
// names it.
func firstLine(st string) string {
	for {
		line, rest, more := strings.Cut(st, "\n")
		if !more || !strings.HasPrefix(line, "SET ") {
			return line
		}
		st = rest
	}
}

// Catalog reads what the live database holds of the layout.
func (s *Store) Catalog(ctx context.Context) (store.Catalog, error) {
	c := store.Catalog{Columns: map[string]map[string]store.CatalogColumn{}}
	cols, err := s.catalogColumns(ctx, s.db)
	if err != nil {
		return c, err
	}
	for table, tc := range cols {
		c.Columns[table] = map[string]store.CatalogColumn{}
		for name, col := range tc {
			c.Columns[table][name] = store.CatalogColumn{Type: col.typ, Nullable: col.nullable}
		}
	}
	if c.PrimaryKeys, err = s.names(ctx, s.d.PrimaryKeysQuery()); err != nil {
		return c, fmt.Errorf("read primary keys: %w", err)
	}
	if q := s.d.ObjectsQuery(); q != "" {
		c.HasObjects = true
		if c.Objects, err = s.names(ctx, q); err != nil {
			return c, fmt.Errorf("read objects: %w", err)
		}
	}
	if c.Indexes, err = s.names(ctx, s.d.IndexesQuery()); err != nil {
		return c, fmt.Errorf("read indexes: %w", err)
	}
	if q := s.d.RequirementsQuery(); q != "" {
		if c.Unmet, err = s.lines(ctx, q); err != nil {
			return c, fmt.Errorf("check the database's requirements: %w", err)
		}
	}
	return c, nil
}

// lines runs a query of one text column without arguments and returns its rows.
func (s *Store) lines(ctx context.Context, query string) ([]string, error) {
	return dbx.Column[string](s.db.Query(ctx, query))
}

// names runs a catalog query of one name column over the schema and returns the names,
// lower case.
func (s *Store) names(ctx context.Context, query string) (map[string]bool, error) {
	names, err := dbx.Column[string](s.db.Query(ctx, query, s.d.Bind([]any{s.d.Schema().Schema})...))
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[strings.ToLower(n)] = true
	}
	return out, nil
}
