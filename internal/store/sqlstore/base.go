package sqlstore

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
)

// Syntax is what a dialect writes its own way in the statements every dialect shares
// (Base renders them once): the bind parameters, the row count, the DDL defaults.
type Syntax struct {
	// Param formats the n-th bind parameter: "$%d" on PostgreSQL, "@p%d" on SQL Server.
	Param string
	// CountRows counts the rows of a group as a bigint: count(*), COUNT_BIG(*) on SQL
	// Server (where COUNT is an int).
	CountRows string
	// Now and False render the DDL defaults "now" and "false".
	Now, False string
	// Types are the DDL types of the layout's column types; a type holding %s takes the
	// column's size there ("max" for layout.MaxLength).
	Types map[layout.ColumnType]string
	// CatalogTypes are the types the catalog reports (information_schema's data_type) where
	// they are not Types; a type holding %d takes the column's size there.
	CatalogTypes map[layout.ColumnType]string
}

// Base is the part of a Dialect that does not depend on the database: the schema, its
// tables' qualified names, and the statements whose text only differs by Syntax (the
// administration of whole tables, the catalog queries, the DDL defaults). A dialect embeds
// it (NewBase) and writes the rest.
type Base struct {
	// Cfg is the normalized schema config.
	Cfg layout.Config
	// Out, Inc and DLQ are the qualified outgoing, incoming and dead-letter tables.
	Out, Inc, DLQ string
	syn           Syntax
	admin         func() *AdminStatements
}

// NewBase returns the Base of a dialect of cfg. deadLetters renders the dialect's
// dead-letter statements; Admin adds the statements on whole tables. They are built on
// first use: most stores never run them, and a publisher created per transaction builds
// its dialect each time.
func NewBase(cfg layout.Config, syn Syntax, deadLetters func() AdminStatements) Base {
	b := Base{
		Cfg: cfg, syn: syn,
		Out: cfg.Qualified(layout.OutgoingTable),
		Inc: cfg.Qualified(cfg.IncomingTable()),
		DLQ: cfg.Qualified(layout.DeadLetterTable),
	}
	b.admin = sync.OnceValue(func() *AdminStatements {
		a := deadLetters()
		b.tableAdmin(&a)
		return &a
	})
	return b
}

// Schema returns the normalized schema config.
func (b Base) Schema() layout.Config { return b.Cfg }

// Bind returns args unchanged (a dialect whose driver needs conversions overrides it).
func (b Base) Bind(args []any) []any { return args }

// Counted returns query unchanged (a dialect whose sessions may not report counts overrides
// it).
func (b Base) Counted(query string) string { return query }

// Admin returns the administration statements.
func (b Base) Admin() *AdminStatements { return b.admin() }

// param is the n-th bind parameter.
func (b Base) param(n int) string { return fmt.Sprintf(b.syn.Param, n) }

// tableAdmin renders the administration statements on whole tables: Counts, the releases
// and the clears.
func (b Base) tableAdmin(a *AdminStatements) {
	a.Counts = fmt.Sprintf(`SELECT %[4]d, status, 0, %[9]s FROM %[1]s GROUP BY status
UNION ALL SELECT %[5]d, destination, 0, %[9]s FROM %[2]s GROUP BY destination
UNION ALL SELECT %[6]d, '', 0, %[9]s FROM %[3]s
UNION ALL SELECT %[7]d, '', owner_id, %[9]s FROM %[1]s GROUP BY owner_id
UNION ALL SELECT %[8]d, '', owner_id, %[9]s FROM %[2]s GROUP BY owner_id`,
		b.Inc, b.Out, b.DLQ, CountIncomingStatus, CountOutgoingDestination, CountDeadLetters, CountIncomingOwner, CountOutgoingOwner,
		b.syn.CountRows)
	ts := b.Cfg.QuoteIdent("timestamp")
	a.Ages = fmt.Sprintf(`SELECT %[4]d, status, COALESCE(received_at, ''), %[6]s, MIN(%[7]s) FROM %[1]s GROUP BY status, received_at
UNION ALL SELECT %[5]d, destination, '', %[6]s, MIN(%[7]s) FROM %[2]s GROUP BY destination`,
		b.Inc, b.Out, b.DLQ, CountIncomingStatus, CountOutgoingDestination, b.syn.CountRows, ts)
	setOwner := func(table string) string {
		return fmt.Sprintf(`UPDATE %s SET owner_id = %[2]s WHERE owner_id <> %[2]s`, table, b.param(1))
	}
	a.ReleaseAllIncoming, a.ReleaseAllOutgoing = setOwner(b.Inc), setOwner(b.Out)
	a.ClearOutgoing, a.ClearIncoming, a.ClearDeadLetters = `DELETE FROM `+b.Out, `DELETE FROM `+b.Inc, `DELETE FROM `+b.DLQ
}

// SQLType is a column's type as written in DDL.
func (b Base) SQLType(c layout.Column) string {
	t, ok := b.syn.Types[c.Type]
	if !ok {
		panic(fmt.Sprintf("schema: unknown column type %d", c.Type)) // programming error in tables.go
	}
	if !strings.Contains(t, "%s") {
		return t
	}
	size := "max"
	if c.Size != layout.MaxLength {
		size = strconv.Itoa(c.Size)
	}
	return fmt.Sprintf(t, size)
}

// ColumnType is a column's type as the catalog reports it.
func (b Base) ColumnType(c layout.Column) string {
	t, ok := b.syn.CatalogTypes[c.Type]
	switch {
	case !ok:
		return b.SQLType(c)
	case strings.Contains(t, "%d"):
		return fmt.Sprintf(t, c.Size)
	}
	return t
}

// DefaultClause renders a column's default ("" for none).
func (b Base) DefaultClause(c layout.Column) string {
	switch c.Default {
	case "null":
		return "NULL"
	case "now":
		return b.syn.Now
	case "false":
		return b.syn.False
	}
	return c.Default
}

// ColumnsQuery reads the Jasper tables' columns from information_schema.
func (b Base) ColumnsQuery() string {
	return `SELECT table_name, column_name, data_type, is_nullable, COALESCE(character_maximum_length, 0)
FROM information_schema.columns WHERE table_schema = ` + b.param(1) + ` AND table_name IN ` + b.Cfg.TableList()
}

// PrimaryKeysQuery reads the tables whose primary key is id.
func (b Base) PrimaryKeysQuery() string {
	return `SELECT tc.table_name FROM information_schema.table_constraints tc
JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema AND kcu.table_name = tc.table_name
WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = ` + b.param(1) + ` AND kcu.column_name = 'id'`
}
