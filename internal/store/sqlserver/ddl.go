package sqlserver

import (
	"fmt"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// procedureBodies are Jasper's five procedures (docs/tables.md), %s = the layout.
var procedureBodies = map[string]string{
	"uspDeleteIncomingEnvelopes": `CREATE PROCEDURE %[1]s.[uspDeleteIncomingEnvelopes]
  @IDLIST %[1]s.[EnvelopeIdList] READONLY
AS
  DELETE FROM %[1]s.[jasper_incoming_envelopes] WHERE id IN (SELECT ID FROM @IDLIST);`,
	"uspDeleteOutgoingEnvelopes": `CREATE PROCEDURE %[1]s.[uspDeleteOutgoingEnvelopes]
  @IDLIST %[1]s.[EnvelopeIdList] READONLY
AS
  DELETE FROM %[1]s.[jasper_outgoing_envelopes] WHERE id IN (SELECT ID FROM @IDLIST);`,
	"uspDiscardAndReassignOutgoing": `CREATE PROCEDURE %[1]s.[uspDiscardAndReassignOutgoing]
  @DISCARDS %[1]s.[EnvelopeIdList] READONLY,
  @REASSIGNED %[1]s.[EnvelopeIdList] READONLY,
  @OWNERID INT
AS
  DELETE FROM %[1]s.[jasper_outgoing_envelopes] WHERE id IN (SELECT ID FROM @DISCARDS);
  UPDATE %[1]s.[jasper_outgoing_envelopes] SET owner_id = @OWNERID WHERE ID IN (SELECT ID FROM @REASSIGNED);`,
	"uspMarkIncomingOwnership": `CREATE PROCEDURE %[1]s.[uspMarkIncomingOwnership]
  @IDLIST %[1]s.[EnvelopeIdList] READONLY,
  @owner INT
AS
  UPDATE %[1]s.[jasper_incoming_envelopes] SET owner_id = @owner, status = 'Incoming' WHERE id IN (SELECT ID FROM @IDLIST);`,
	"uspMarkOutgoingOwnership": `CREATE PROCEDURE %[1]s.[uspMarkOutgoingOwnership]
  @IDLIST %[1]s.[EnvelopeIdList] READONLY,
  @owner INT
AS
  UPDATE %[1]s.[jasper_outgoing_envelopes] SET owner_id = @owner WHERE id IN (SELECT ID FROM @IDLIST);`,
}

// nstring renders a validated identifier as an N'...' literal (identifiers never hold quotes).
func nstring(s string) string { return "N'" + s + "'" }

// msIndexOptions are the session options SQL Server requires to create a filtered index (and
// that Jasper's own migrations run with). Tools differ: sqlcmd turns QUOTED_IDENTIFIER off
// unless run with -I, and a session with ANSI_NULLS off gets error 1934. Each batch that
// creates a filtered index sets them itself, so that it works from any tool and on any
// pooled connection. QUOTED_IDENTIFIER applies when a batch is parsed: set at the start of
// the batch, it covers the statement after it.
const msIndexOptions = "SET ANSI_NULLS ON;\nSET QUOTED_IDENTIFIER ON;\nSET ANSI_PADDING ON;\nSET ANSI_WARNINGS ON;\n" +
	"SET CONCAT_NULL_YIELDS_NULL ON;\nSET ARITHABORT ON;\nSET NUMERIC_ROUNDABORT OFF;\n"

func (m *sqlserver) DDLStatements() []string {
	cfg := m.Cfg
	sch := cfg.QuoteIdent(cfg.Schema)
	out := []string{fmt.Sprintf("IF NOT EXISTS (SELECT * FROM sys.schemas WHERE name = %s) EXEC(%s)",
		nstring(cfg.Schema), nstring("CREATE SCHEMA "+sch))}
	for _, t := range cfg.Tables() {
		out = append(out, fmt.Sprintf("IF OBJECT_ID(%s, N'U') IS NULL\n%s", nstring(cfg.Qualified(t.Name)), sqlstore.CreateTable(cfg, m, t)))
	}
	for _, t := range cfg.Tables() {
		for _, c := range t.Columns {
			if c.Addable() {
				out = append(out, fmt.Sprintf("IF COL_LENGTH(%s, %s) IS NULL ALTER TABLE %s ADD %s",
					nstring(cfg.Qualified(t.Name)), nstring(c.Name), cfg.Qualified(t.Name), sqlstore.ColumnDef(cfg, m, c)))
			}
		}
	}
	out = append(out, fmt.Sprintf("IF TYPE_ID(%s) IS NULL CREATE TYPE %s AS TABLE (id UNIQUEIDENTIFIER NOT NULL)",
		nstring(cfg.Qualified(layout.EnvelopeIDList)), cfg.Qualified(layout.EnvelopeIDList)))
	for _, p := range layout.StoredProcedures() {
		body := fmt.Sprintf(procedureBodies[p], sch)
		out = append(out, fmt.Sprintf("IF OBJECT_ID(%s, N'P') IS NULL EXEC(N'%s')",
			nstring(cfg.Qualified(p)), strings.ReplaceAll(body, "'", "''")))
	}
	for _, ix := range cfg.Indexes() {
		s := fmt.Sprintf("IF NOT EXISTS (SELECT * FROM sys.indexes WHERE name = %s AND object_id = OBJECT_ID(%s))\nCREATE INDEX %s ON %s (%s)",
			nstring(ix.Name), nstring(cfg.Qualified(ix.Table)), cfg.QuoteIdent(ix.Name), cfg.Qualified(ix.Table), sqlstore.IndexColumns(cfg, ix))
		if ix.Where != "" {
			s = msIndexOptions + s + " WHERE " + ix.Where
		}
		out = append(out, s)
	}
	return out
}

// ScriptSeparator ends each batch of a script with a GO line (sqlcmd).
func (m *sqlserver) ScriptSeparator() string { return "\nGO\n\n" }

// migrationLock: an application lock owned by the transaction, named by the decimal key,
// waiting up to a minute.
func (m *sqlserver) MigrationLock() string {
	return msAppLock("Transaction", 60000) + `
IF @r < 0
BEGIN
  DECLARE @m nvarchar(200) = CONCAT(N'watermill-jasper: sp_getapplock did not grant the migration lock (', @r, N')');
  THROW 51000, @m, 1;
END`
}

// MigrationLockArg is the applock resource: the decimal key.
func (m *sqlserver) MigrationLockArg(key int64) any { return fmt.Sprint(key) }

// ObjectsQuery reads the table types and procedures of the schema.
func (m *sqlserver) ObjectsQuery() string {
	return `SELECT t.name FROM sys.table_types t JOIN sys.schemas s ON s.schema_id = t.schema_id WHERE s.name = @p1
UNION ALL SELECT p.name FROM sys.procedures p JOIN sys.schemas s ON s.schema_id = p.schema_id WHERE s.name = @p1`
}

// IndexesQuery reads the index names of the schema.
func (m *sqlserver) IndexesQuery() string {
	return `SELECT i.name FROM sys.indexes i JOIN sys.tables t ON t.object_id = i.object_id JOIN sys.schemas s ON s.schema_id = t.schema_id WHERE s.name = @p1 AND i.name IS NOT NULL`
}

// msMinCompatibility is the lowest database compatibility level with OPENJSON (SQL Server
// 2016), which the statements use for lists (see sqlserver.go).
const msMinCompatibility = 130

// RequirementsQuery: the current database's compatibility level must be msMinCompatibility or
// more. Below it, OPENJSON is an unknown object (error 208, as a missing table would be).
func (m *sqlserver) RequirementsQuery() string {
	return fmt.Sprintf(`SELECT CONCAT(N'database ', QUOTENAME(DB_NAME()), N' has compatibility level ', [compatibility_level],
  N'; watermill-jasper needs %[1]d or more (OPENJSON, SQL Server 2016): ALTER DATABASE CURRENT SET COMPATIBILITY_LEVEL = %[1]d')
FROM sys.databases WHERE [database_id] = DB_ID() AND [compatibility_level] < %[1]d`, msMinCompatibility)
}

// SchemaExists tells whether the schema exists (its CREATE SCHEMA is guarded anyway).
func (m *sqlserver) SchemaExists() string {
	return `SELECT CAST(CASE WHEN SCHEMA_ID(@p1) IS NULL THEN 0 ELSE 1 END AS bit)`
}

// msCatalogTypes: the catalog reports sized types with their length (-1 for max), as
// Store.Catalog reads them.
var msCatalogTypes = map[layout.ColumnType]string{
	layout.TypeString: "varchar:%d", layout.TypeBytes: "varbinary:-1", layout.TypeText: "nvarchar:-1",
	layout.TypeSequence: "bigint",
}

// msTypes are the DDL types of the layout's column types: strings have the column's size.
var msTypes = map[layout.ColumnType]string{
	layout.TypeUUID: "uniqueidentifier", layout.TypeString: "varchar(%s)", layout.TypeInt: "int",
	layout.TypeTime: "datetimeoffset", layout.TypeBytes: "varbinary(max)", layout.TypeBool: "bit",
	layout.TypeText: "nvarchar(max)", layout.TypeSequence: "bigint IDENTITY(1,1)",
}
