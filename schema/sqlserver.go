package schema

import (
	"fmt"
	"strings"
)

type sqlserverDDL struct{}

func (sqlserverDDL) sqlType(c Column) string {
	switch c.Type {
	case TypeUUID:
		return "uniqueidentifier"
	case TypeString:
		if c.Size == MaxLength {
			return "varchar(max)"
		}
		return fmt.Sprintf("varchar(%d)", c.Size)
	case TypeInt:
		return "int"
	case TypeTime:
		return "datetimeoffset"
	case TypeBytes:
		return "varbinary(max)"
	case TypeBool:
		return "bit"
	case TypeText:
		return "nvarchar(max)"
	}
	panic(fmt.Sprintf("schema: unknown column type %d", c.Type)) // programming error in tables.go
}

func (sqlserverDDL) infoType(c Column) string {
	switch c.Type {
	case TypeString:
		return fmt.Sprintf("varchar:%d", c.Size)
	case TypeBytes:
		return "varbinary:-1"
	case TypeText:
		return "nvarchar:-1"
	}
	return sqlserverDDL{}.sqlType(c)
}

func (sqlserverDDL) defaultClause(c Column) string {
	switch c.Default {
	case "":
		return ""
	case "null":
		return "NULL"
	case "now":
		return "SYSDATETIMEOFFSET()"
	case "false":
		return "0"
	}
	return c.Default
}

// procedureBodies are Jasper's five procedures (jasper-spec §1.3), %s = the schema.
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

func (d sqlserverDDL) statements(cfg Config) []string {
	sch := cfg.QuoteIdent(cfg.Schema)
	out := []string{fmt.Sprintf("IF NOT EXISTS (SELECT * FROM sys.schemas WHERE name = %s) EXEC(%s)",
		nstring(cfg.Schema), nstring("CREATE SCHEMA "+sch))}
	for _, t := range Tables() {
		out = append(out, fmt.Sprintf("IF OBJECT_ID(%s, N'U') IS NULL\n%s", nstring(cfg.Qualified(t.Name)), createTable(cfg, d, t)))
	}
	for _, t := range Tables() {
		for _, c := range t.Columns {
			if c.Extension {
				out = append(out, fmt.Sprintf("IF COL_LENGTH(%s, %s) IS NULL ALTER TABLE %s ADD %s",
					nstring(cfg.Qualified(t.Name)), nstring(c.Name), cfg.Qualified(t.Name), columnDef(cfg, d, c)))
			}
		}
	}
	out = append(out, fmt.Sprintf("IF TYPE_ID(%s) IS NULL CREATE TYPE %s AS TABLE (id UNIQUEIDENTIFIER NOT NULL)",
		nstring(cfg.Qualified(EnvelopeIDList)), cfg.Qualified(EnvelopeIDList)))
	for _, p := range StoredProcedures() {
		body := fmt.Sprintf(procedureBodies[p], sch)
		out = append(out, fmt.Sprintf("IF OBJECT_ID(%s, N'P') IS NULL EXEC(N'%s')",
			nstring(cfg.Qualified(p)), strings.ReplaceAll(body, "'", "''")))
	}
	for _, ix := range Indexes() {
		s := fmt.Sprintf("IF NOT EXISTS (SELECT * FROM sys.indexes WHERE name = %s AND object_id = OBJECT_ID(%s))\nCREATE INDEX %s ON %s (%s)",
			nstring(ix.Name), nstring(cfg.Qualified(ix.Table)), cfg.QuoteIdent(ix.Name), cfg.Qualified(ix.Table), indexColumns(cfg, ix))
		if ix.Where != "" {
			s += " WHERE " + ix.Where
		}
		out = append(out, s)
	}
	return out
}

func (sqlserverDDL) scriptSeparator() string { return "\nGO\n\n" }

func (sqlserverDDL) placeholder(n int) string { return fmt.Sprintf("@p%d", n) }

// migrationLock: an application lock owned by the transaction, named by the decimal key,
// waiting up to a minute.
func (sqlserverDDL) migrationLock() string {
	return `DECLARE @r int;
EXEC @r = sp_getapplock @Resource = @p1, @LockMode = 'Exclusive', @LockOwner = 'Transaction', @LockTimeout = 60000;
IF @r < 0
BEGIN
  DECLARE @m nvarchar(200) = CONCAT(N'watermill-jasper: sp_getapplock did not grant the migration lock (', @r, N')');
  THROW 51000, @m, 1;
END`
}

func (sqlserverDDL) lockArg(key int64) any { return fmt.Sprint(key) }

func (sqlserverDDL) objectsQuery() string {
	return `SELECT t.name FROM sys.table_types t JOIN sys.schemas s ON s.schema_id = t.schema_id WHERE s.name = @p1
UNION ALL SELECT p.name FROM sys.procedures p JOIN sys.schemas s ON s.schema_id = p.schema_id WHERE s.name = @p1`
}

func (sqlserverDDL) indexesQuery() string {
	return `SELECT i.name FROM sys.indexes i JOIN sys.tables t ON t.object_id = i.object_id JOIN sys.schemas s ON s.schema_id = t.schema_id WHERE s.name = @p1 AND i.name IS NOT NULL`
}
