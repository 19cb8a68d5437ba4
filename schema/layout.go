package schema

import (
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
)

// Dialect names a supported database.
type Dialect = dbx.Dialect

const (
	// Postgres is PostgreSQL.
	Postgres = dbx.Postgres
	// SQLServer is Microsoft SQL Server.
	SQLServer = dbx.SQLServer
)

// Config names where the tables live: the dialect and the schema. The zero value is
// PostgreSQL's "public" schema; SQL Server's default is "dbo".
type Config = layout.Config

// ErrInvalidConfig is wrapped by every configuration error of this package.
var ErrInvalidConfig = layout.ErrInvalidConfig

// MaxIdentifierLength is the longest schema name accepted, in bytes (PostgreSQL's limit).
const MaxIdentifierLength = layout.MaxIdentifierLength

// ValidateIdentifier reports whether name is a plain SQL identifier: letters, digits and
// underscores, not starting with a digit, 1 to 63 bytes.
func ValidateIdentifier(name string) error { return layout.ValidateIdentifier(name) }

// DefaultSchema returns Jasper's default schema for a dialect: public on PostgreSQL, dbo on
// SQL Server.
func DefaultSchema(d Dialect) string { return layout.DefaultSchema(d) }

// Compatibility says who else uses a schema (Config.Compatibility): Standalone, the default,
// or Jasper2 when .NET Jasper 2.0 nodes share it (docs/coexistence.md).
type Compatibility = layout.Compatibility

const (
	// Standalone: the incoming table holds this library's local queues and inbox marks.
	Standalone = layout.Standalone
	// Jasper2: .NET Jasper 2.0 nodes share the schema; this library's incoming rows live in
	// GoIncomingTable and outgoing destinations must be URIs.
	Jasper2 = layout.Jasper2
	// GoIncomingTable holds this library's incoming rows in Jasper2 compatibility.
	GoIncomingTable = layout.GoIncomingTable
)

// Table names, as Jasper (1.x and 2.0) names them.
const (
	IncomingTable   = layout.IncomingTable
	OutgoingTable   = layout.OutgoingTable
	DeadLetterTable = layout.DeadLetterTable
	// EnvelopeIDList is SQL Server's table type for id lists.
	EnvelopeIDList = layout.EnvelopeIDList
)

// Incoming envelope statuses. Jasper writes Incoming and Scheduled; Handled is Wolverine's
// status for rows kept by the idempotent inbox until keep_until.
const (
	StatusIncoming  = layout.StatusIncoming
	StatusScheduled = layout.StatusScheduled
	StatusHandled   = layout.StatusHandled
)

// ColumnType is the logical type of a column; each dialect maps it to its own SQL type.
type ColumnType = layout.ColumnType

// Column types used by the Jasper tables.
const (
	TypeUUID   = layout.TypeUUID
	TypeString = layout.TypeString
	TypeInt    = layout.TypeInt
	TypeTime   = layout.TypeTime
	TypeBytes  = layout.TypeBytes
	TypeBool   = layout.TypeBool
	TypeText   = layout.TypeText
)

// MaxLength marks a SQL Server varchar(max) column.
const MaxLength = layout.MaxLength

// Column describes one column of a table.
type Column = layout.Column

// Index describes an index this library adds.
type Index = layout.Index

// Table describes one table.
type Table = layout.Table

// Tables returns the three Jasper tables with their extension columns.
func Tables() []Table { return layout.Tables() }

// Indexes returns the extension indexes.
func Indexes() []Index { return layout.Indexes() }

// StoredProcedures returns the names of Jasper's SQL Server stored procedures.
func StoredProcedures() []string { return layout.StoredProcedures() }
