// Package sqlserver is the SQL Server driver of the store (internal/store): every statement
// this library runs on SQL Server (go-mssqldb through database/sql), DDL included, and the
// Driver that opens a schema's Store. Only the public package sqlserver and the tests import
// it, so that a PostgreSQL program does not link go-mssqldb.
package sqlserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"
	mssql "github.com/microsoft/go-mssqldb"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// The SQL Server dialect (go-mssqldb through database/sql). Choices, in one place:
//
//   - Placeholders are @p1..@pN (go-mssqldb's positional names); every table, type and
//     procedure is schema-qualified and bracket-quoted, and so is every column.
//   - Id lists (IDList) are Jasper's table type [schema].[EnvelopeIdList] passed as a
//     table-valued parameter (mssql.TVP); Jasper's procedures are called where their
//     semantics are exactly ours: DeleteOutgoing runs uspDeleteOutgoingEnvelopes. The other
//     procedures do not fit our statements (uspDeleteIncomingEnvelopes would delete the
//     Handled inbox rows DeleteIncoming must keep; uspMarkOutgoingOwnership and
//     uspMarkIncomingOwnership do not check the current owner, which our releases must; our
//     claims select and mark in one statement), so those statements use the same TVP in
//     their own SQL.
//   - String lists (StringList: destinations, topics) and the zipped dead-letter lists
//     (DeadLetterArgs) are JSON arrays in one nvarchar(max) parameter, opened with OPENJSON
//     (SQL Server 2016 or later, database compatibility level 130 or more). A TVP would need
//     a table type Jasper does not have; JSON needs no schema change and keeps the order
//     that the dead-letter lists are zipped by ([key] is the array index).
//   - uniqueidentifier values are mssql.UniqueIdentifier (its Value and Scan swap the first
//     three groups into SQL Server's byte order). go-mssqldb's "guid conversion" DSN option
//     must stay off (its default): it would swap them a second time.
//   - Parameters compared with varchar columns are cast to the column's type in the SQL
//     (CAST(@p2 AS varchar(100))), so the column is not converted and its index is sought;
//     OPENJSON lists are read WITH (... varchar(n)) for the same reason. Since a cast
//     truncates, each also checks that the value fits (LEN(...) <= n): a longer topic matches
//     nothing rather than the topic named by its prefix.
//   - Metadata columns narrower on SQL Server than a value may be (correlation_id,
//     parent_id, saga_id, content_type, reply_uri: varchar(100); message_type,
//     reply_requested: varchar(250) and 100 in the dead letters; source 250) are truncated
//     with LEFT(...): the full values stay in the headers column (nvarchar(max)). The topic
//     columns (destination, received_at) are never truncated: a topic too long for them is
//     an error, since a truncated topic would deliver elsewhere. A dead letter whose values
//     were truncated says so in its explanation.
//   - Inserts that skip existing ids are INSERT ... SELECT ... WHERE NOT EXISTS (...) without
//     lock hints, run again when a concurrent insert of the same id wins the race
//     (msRetryDuplicates); the dead-letter upsert is MERGE ... WITH (HOLDLOCK).
//   - Strings are bound as nvarchar(max) (Bind), and statements whose affected-row count is
//     read start with SET NOCOUNT OFF (Counted).
//   - The database's compatibility level must be 130 or more (RequirementsQuery).
//   - Claims are UPDATE TOP (n) ... WITH (READPAST, UPDLOCK, ROWLOCK) ... OUTPUT inserted.*.
//   - Locks are application locks (sp_getapplock) named as Jasper names them: the decimal
//     int32 (docs/durability.md), in the database principal public (Jasper's default).
//   - There are no notifications (Caps): components poll, and the durability agent wakes the
//     components of its process.
//   - Savepoints are SAVE TRANSACTION / ROLLBACK TRANSACTION; there is no release.

type msUUIDs struct{}

func (msUUIDs) Arg(u uuid.UUID) any   { return mssql.UniqueIdentifier(u) }
func (msUUIDs) Dest(u *uuid.UUID) any { return msUUIDDest{u} }

// msUUIDDest scans a uniqueidentifier (NULL leaves the zero UUID).
type msUUIDDest struct{ u *uuid.UUID }

func (d msUUIDDest) Scan(v any) error {
	if v == nil {
		*d.u = uuid.Nil
		return nil
	}
	var m mssql.UniqueIdentifier
	if err := m.Scan(v); err != nil {
		return err
	}
	*d.u = uuid.UUID(m)
	return nil
}

// envelopeIDRow is one row of the EnvelopeIdList table type (one uniqueidentifier column).
type envelopeIDRow struct {
	ID mssql.UniqueIdentifier
}

type sqlserver struct {
	sqlstore.Base
	idListType string                    // layout.EnvelopeIdList, as go-mssqldb wants a TVP type name
	sizes      map[string]map[string]int // table -> varchar column -> size
}

// msSyntax is how SQL Server writes the statements every dialect shares.
var msSyntax = sqlstore.Syntax{
	Param: "@p%d", CountRows: "COUNT_BIG(*)", Now: "SYSDATETIMEOFFSET()", False: "0", Types: msTypes, CatalogTypes: msCatalogTypes,
}

func newSQLServer(cfg layout.Config) *sqlserver {
	m := &sqlserver{
		idListType: cfg.Schema + "." + layout.EnvelopeIDList,
		sizes:      map[string]map[string]int{},
	}
	m.Base = sqlstore.NewBase(cfg, msSyntax, m.deadLetterStatements)
	for _, t := range layout.Tables() {
		s := map[string]int{}
		for _, c := range t.Columns {
			if c.Type == layout.TypeString && c.Size != layout.MaxLength {
				s[c.Name] = c.Size
			}
		}
		m.sizes[t.Name] = s
	}
	return m
}

// New returns the driver of a SQL Server pool (dbx.FromStdSQL over go-mssqldb).
func New(db dbx.DB) (*sqlstore.Driver, error) {
	return sqlstore.NewDriver(db, dbx.SQLServer, "SQL Server", Dialect)
}

// Dialect returns the statements of a normalized SQL Server schema config, without a
// connection (for scripts and offline checks).
func Dialect(cfg layout.Config) sqlstore.Dialect { return newSQLServer(cfg) }

// msCols bracket-quotes columns, each prefixed with prefix (e.g. "inserted.").
func msCols(prefix string, cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = prefix + "[" + c + "]"
	}
	return strings.Join(q, ", ")
}

// msValues renders n rows of width @pN placeholders, numbered from first.
func msValues(first, n, width int) string { return sqlstore.Values("@p%d", first, n, width) }

// msAddMS is now plus a bigint parameter of milliseconds.
func msAddMS(param string) string { return msShiftNow("", param) }

// msShiftNow is now moved forward (sign "") or back (sign "-") by a bigint parameter of
// milliseconds (DATEADD takes int: split it into seconds and milliseconds).
func msShiftNow(sign, param string) string {
	return fmt.Sprintf("DATEADD(millisecond, %[1]sCAST(%[2]s %% 1000 AS int), DATEADD(second, %[1]sCAST(%[2]s / 1000 AS int), SYSDATETIMEOFFSET()))", sign, param)
}

// topicColumns are never truncated (see the file comment).
var topicColumns = map[string]bool{"destination": true, "received_at": true}

// fit renders expr for column col of table, truncated to the column's size when the column
// is a narrow varchar (topic columns excepted).
func (m *sqlserver) fit(table, col, expr string) string {
	if n, ok := m.sizes[table][col]; ok && !topicColumns[col] {
		return fmt.Sprintf("LEFT(%s, %d)", expr, n)
	}
	return expr
}

func (m *sqlserver) tableOf(qualified string) string {
	switch qualified {
	case m.Out:
		return layout.OutgoingTable
	case m.Inc:
		return layout.IncomingTable
	}
	return layout.DeadLetterTable
}

// buildInsert renders an idempotent insert of n rows of cols (bound from @p<first>) into
// table, plus extra columns computed from the last parameters (extraCols/extraExprs over
// v.*). Ids present already, or repeated in the batch, are skipped.
func (m *sqlserver) buildInsert(table string, cols []string, first, n int, extraCols, extraExprs []string) string {
	t := m.tableOf(table)
	sel := make([]string, 0, len(cols)+len(extraExprs))
	for _, c := range cols {
		sel = append(sel, m.fit(t, c, "v.["+c+"]"))
	}
	sel = append(sel, extraExprs...)
	all := msCols("", append(append([]string(nil), cols...), extraCols...))
	src := fmt.Sprintf("(VALUES %s) AS v(%s)", msValues(first, n, len(cols)), msCols("", cols))
	if n > 1 {
		src = fmt.Sprintf("(SELECT r.*, ROW_NUMBER() OVER (PARTITION BY r.[id] ORDER BY (SELECT NULL)) AS [wj_rn] FROM (VALUES %s) AS r(%s)) AS v",
			msValues(first, n, len(cols)), msCols("", cols))
	}
	where := fmt.Sprintf("NOT EXISTS (SELECT 1 FROM %s AS t WHERE t.[id] = v.[id])", table)
	if n > 1 {
		where = "v.[wj_rn] = 1 AND " + where
	}
	return msRetryDuplicates(t, fmt.Sprintf("INSERT INTO %s (%s)\nSELECT %s\nFROM %s\nWHERE %s", table, all, strings.Join(sel, ", "), src, where))
}

// msInsertTries is how often an insert that skips existing ids runs when a concurrent
// transaction inserted one of its ids between its check and its insert.
const msInsertTries = 3

// msRetryDuplicates runs insert, an INSERT ... WHERE NOT EXISTS of the ids it skips, again
// when it fails with a duplicate key (2627, 2601): a transaction that inserted one of its ids
// concurrently has committed by then, and the next run skips that id. The check takes no
// lock hints: UPDLOCK, HOLDLOCK would take key-range locks that serialise concurrent
// publishers (and can deadlock them) to guard against a race that only a re-published id
// can lose. The error stays caught only while the transaction can go on (XACT_STATE() = 1:
// XACT_ABORT off); anything else is re-thrown. name is unique within a batch (the variable
// of the tries).
func msRetryDuplicates(name, insert string) string {
	v := "@wj_tries_" + strings.TrimPrefix(name, "jasper_")
	return fmt.Sprintf(`DECLARE %[1]s int = 1;
WHILE 1 = 1
BEGIN
  BEGIN TRY
    %[2]s;
    BREAK;
  END TRY
  BEGIN CATCH
    IF ERROR_NUMBER() NOT IN (2627, 2601) OR XACT_STATE() <> 1 OR %[1]s >= %[3]d THROW;
    SET %[1]s = %[1]s + 1;
  END CATCH
END`, v, strings.ReplaceAll(insert, "\n", "\n    "), msInsertTries)
}

func (m *sqlserver) Name() dbx.Dialect { return dbx.SQLServer }

// Caps: SQL Server has no notifications and no savepoint release.
func (m *sqlserver) Caps() store.Caps { return store.Caps{} }

// MoveNeedsTx is true: a move to the dead letters is a DELETE and a MERGE, atomic only in a
// transaction.
func (m *sqlserver) MoveNeedsTx() bool { return true }

// RelayTxSettings is none: SQL Server's delayed durability needs a database option
// (ALLOW_DELAYED_DURABILITY) this library does not ask for, so the relay's commits stay fully
// durable there.
func (m *sqlserver) RelayTxSettings() string { return "" }
func (m *sqlserver) UUIDs() row.UUIDCodec    { return msUUIDs{} }

// IDList is a table-valued parameter of Jasper's EnvelopeIdList type.
func (m *sqlserver) IDList(ids []uuid.UUID) any {
	rows := make([]envelopeIDRow, len(ids))
	for i, id := range ids {
		rows[i].ID = mssql.UniqueIdentifier(id)
	}
	return mssql.TVP{TypeName: m.idListType, Value: rows}
}

// StringList is a JSON array of strings (one nvarchar parameter), opened with OPENJSON.
func (m *sqlserver) StringList(s []string) any { return jsonArray(s) }

// OwnerList is a JSON array of ints.
func (m *sqlserver) OwnerList(ids []int32) any { return jsonArray(ids) }

// jsonArray is s as a JSON array ([] for nil).
func jsonArray[T string | int32](s []T) string {
	if s == nil {
		s = []T{}
	}
	b, _ := json.Marshal(s) // strings and ints always marshal
	return string(b)
}

// DeadLetterArgs are six JSON arrays of the same length (ids as strings, then the five
// reasons), zipped by array index in the statement.
func (m *sqlserver) DeadLetterArgs(ids []uuid.UUID, explanation, exceptionType, exceptionMessage, exceptionText, source []string) []any {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.String()
	}
	return []any{m.StringList(s), m.StringList(explanation), m.StringList(exceptionType),
		m.StringList(exceptionMessage), m.StringList(exceptionText), m.StringList(source)}
}

// Bind binds strings as nvarchar(max) (mssql.NVarCharMax): go-mssqldb declares a plain string
// as nvarchar of its own length, which gives a statement one plan per length of its values.
// The statements cast parameters compared with varchar columns to the column's type, so a
// max parameter still seeks the column's index.
func (m *sqlserver) Bind(args []any) []any {
	var out []any
	for i, a := range args {
		if s, ok := a.(string); ok {
			if out == nil {
				out = append(make([]any, 0, len(args)), args...)
			}
			out[i] = mssql.NVarCharMax(s)
		}
	}
	if out == nil {
		return args
	}
	return out
}

// Counted prefixes SET NOCOUNT OFF: the count is then reported whatever the session's or the
// server's setting (a SET in a parameterised batch ends with the batch).
func (m *sqlserver) Counted(query string) string {
	if query == "" {
		return ""
	}
	return "SET NOCOUNT OFF;\n" + query
}

// MaxParams: SQL Server accepts at most 2100 parameters per request, and go-mssqldb sends a
// parameterised statement through sp_executesql, whose @stmt and @params count among them.
func (m *sqlserver) MaxParams() int { return 2098 }

// msErrorNumber is the number of an error SQL Server sent (go-mssqldb's mssql.Error, by
// value or pointer), and whether err holds one.
func msErrorNumber(err error) (int32, bool) {
	var e interface{ SQLErrorNumber() int32 }
	if errors.As(err, &e) {
		return e.SQLErrorNumber(), true
	}
	return 0, false
}

// IsStatementError: an error the server sent (mssql.Error).
func (m *sqlserver) IsStatementError(err error) bool {
	_, ok := msErrorNumber(err)
	return ok
}

// IsMissingTable: error 208 "Invalid object name", 2812 "Could not find stored procedure",
// 2715 "Column, parameter, or variable: Cannot find data type" (EnvelopeIdList missing).
// Error 208 about OPENJSON is not a missing table but a database whose compatibility level
// is below msMinCompatibility (RequirementsQuery, which schema checks report).
func (m *sqlserver) IsMissingTable(err error) bool {
	n, ok := msErrorNumber(err)
	if n == 208 && strings.Contains(strings.ToUpper(err.Error()), "OPENJSON") {
		return false
	}
	return ok && (n == 208 || n == 2812 || n == 2715)
}

// IsMissingColumn: error 207 "Invalid column name".
func (m *sqlserver) IsMissingColumn(err error) bool {
	n, ok := msErrorNumber(err)
	return ok && n == 207
}

// Publisher statements.

func (m *sqlserver) InsertOutgoing(n int) string {
	return m.buildInsert(m.Out, row.OutgoingColumns, 1, n, nil, nil)
}

func (m *sqlserver) InsertIncoming(n int) string {
	return m.buildInsert(m.Inc, row.IncomingColumns, 1, n, nil, nil)
}

// InsertEnvelopes: two inserts in one batch; notify is ignored (no notifications).
func (m *sqlserver) InsertEnvelopes(outgoing, incoming int, notify bool) string {
	switch {
	case incoming == 0:
		return m.InsertOutgoing(outgoing)
	case outgoing == 0:
		return m.InsertIncoming(incoming)
	}
	return m.InsertOutgoing(outgoing) + ";\n" +
		m.buildInsert(m.Inc, row.IncomingColumns, 1+outgoing*len(row.OutgoingColumns), incoming, nil, nil)
}

func (m *sqlserver) NotifyOutgoing() string  { return "" }
func (m *sqlserver) OutgoingChannel() string { return "" }
func (m *sqlserver) ListenOutgoing() string  { return "" }
func (m *sqlserver) IncomingChannel() string { return "" }
func (m *sqlserver) ListenIncoming() string  { return "" }
func (m *sqlserver) NotifyIncoming() string  { return "" }

// EmitOutgoing is none: SQL Server has no logical decoding messages (the table-less outbox is
// PostgreSQL's).
func (m *sqlserver) EmitOutgoing() string { return "" }

// Forwarder statements.

func (m *sqlserver) ClaimOutgoing() string {
	return fmt.Sprintf(`UPDATE TOP (@p4) o SET [owner_id] = @p1
OUTPUT %[2]s
FROM %[1]s AS o WITH (READPAST, UPDLOCK, ROWLOCK)
WHERE %[3]s AND %[4]s`, m.Out, msCols("inserted.", row.ClaimedOutgoingColumns), unownedForDestinations(2, 3), msHeadOfKey(m.Out, "destination", false))
}

// LockOutgoing reads past locked rows and takes update locks on those it returns, held to the
// end of the caller's transaction.
func (m *sqlserver) LockOutgoing() string {
	return fmt.Sprintf(`SELECT TOP (@p3) %[2]s
FROM %[1]s AS o WITH (READPAST, UPDLOCK, ROWLOCK)
WHERE %[3]s AND %[4]s`, m.Out, msCols("o.", row.ClaimedOutgoingColumns), unownedForDestinations(1, 2), msHeadOfKey(m.Out, "destination", false))
}

// LockOutgoingByID is LockOutgoing restricted to the ids of the list @p1.
func (m *sqlserver) LockOutgoingByID() string {
	return fmt.Sprintf(`SELECT %[2]s
FROM %[1]s AS o WITH (READPAST, UPDLOCK, ROWLOCK)
WHERE o.[id] IN (SELECT [id] FROM @p1) AND %[3]s AND %[4]s`, m.Out, msCols("o.", row.ClaimedOutgoingColumns), unownedForDestinations(2, 3), msHeadOfKey(m.Out, "destination", false))
}

// msHeadOfKey is the filter of per-key ordering on the envelope table aliased o (the
// PostgreSQL dialect's headOfKey explains it). The probe has no READPAST hint: an earlier
// row of the key that another transaction holds still counts and keeps the later ones back
// (the probe waits at most for that transaction's end when it changed the row).
func msHeadOfKey(table, sameQueue string, incoming bool) string {
	extra := fmt.Sprintf(" AND e.[%[1]s] = o.[%[1]s]", sameQueue)
	if incoming {
		extra += " AND e.[status] <> 'Handled'"
	}
	return fmt.Sprintf(`(o.[partition_key] IS NULL OR NOT EXISTS (
    SELECT 1 FROM %s AS e WHERE e.[partition_key] = o.[partition_key] AND e.[seq] < o.[seq]%s))`, table, extra)
}

// unownedForDestinations is the filter of the relay's claims on the outgoing table aliased o:
// unowned rows whose destination is not in the JSON list @p{excluded} (destinations longer
// than the column never match) and, when the JSON list @p{only} of LIKE patterns (escape
// character \) is not empty, matches one of them.
func unownedForDestinations(excluded, only int) string {
	return fmt.Sprintf(`o.[owner_id] = 0
  AND NOT EXISTS (SELECT 1 FROM OPENJSON(@p%[1]d) WITH ([d] varchar(250) '$', [n] nvarchar(max) '$') AS x
    WHERE x.[d] = o.[destination] AND LEN(x.[n]) <= 250)
  AND (NOT EXISTS (SELECT 1 FROM OPENJSON(@p%[2]d)) OR EXISTS (
    SELECT 1 FROM OPENJSON(@p%[2]d) WITH ([p] varchar(max) '$') AS y WHERE o.[destination] LIKE y.[p] ESCAPE '\'))`, excluded, only)
}

// DeleteOutgoing runs Jasper's procedure.
func (m *sqlserver) DeleteOutgoing() string {
	return fmt.Sprintf(`EXEC %s @IDLIST = @p1`, m.Cfg.Qualified("uspDeleteOutgoingEnvelopes"))
}

func (m *sqlserver) ReleaseOutgoingFailed() string {
	return fmt.Sprintf(`UPDATE %s SET [owner_id] = 0, [attempts] = COALESCE([attempts], 0) + 1
WHERE [id] IN (SELECT [id] FROM @p1) AND [owner_id] = @p2`, m.Out)
}

func (m *sqlserver) ReleaseOutgoing() string {
	return fmt.Sprintf(`UPDATE %s SET [owner_id] = 0 WHERE [id] IN (SELECT [id] FROM @p1) AND [owner_id] = @p2`, m.Out)
}

func (m *sqlserver) DeadLetterOutgoing() string {
	return m.moveToDeadLetters(m.Out, "NULL", "COALESCE(deleted.[attempts], 0) + 1", "deleted.[destination]")
}

func (m *sqlserver) ReleaseDueScheduledSends() string {
	return fmt.Sprintf(`WITH due AS (
  SELECT TOP (@p1) * FROM %[1]s WITH (READPAST, UPDLOCK, ROWLOCK)
  WHERE [status] = 'Scheduled' AND [owner_id] = 0 AND [message_type] = 'scheduled-envelope'
    AND [execution_time] <= SYSDATETIMEOFFSET()
  ORDER BY [execution_time])
DELETE FROM due
OUTPUT %[2]s`, m.Inc, msCols("deleted.", row.IncomingColumns))
}

// Locks: application locks named by the decimal int32, as Jasper's SqlServerSettings does.

func (m *sqlserver) AdvisoryLockKey(id int32) any { return strconv.FormatInt(int64(id), 10) }

// msGetAppLock returns one bit row: whether sp_getapplock granted the lock (return >= 0).
func msGetAppLock(owner string) string {
	return msAppLock(owner, 0) + "\nSELECT CAST(CASE WHEN @r >= 0 THEN 1 ELSE 0 END AS bit)"
}

// msAppLock asks sp_getapplock for the exclusive application lock named @p1, owned by owner
// (Session or Transaction), waiting up to timeout milliseconds, and leaves its answer in @r.
func msAppLock(owner string, timeout int) string {
	return fmt.Sprintf(`DECLARE @r int;
EXEC @r = sp_getapplock @Resource = @p1, @LockMode = 'Exclusive', @LockOwner = '%s', @LockTimeout = %d;`, owner, timeout)
}

func (m *sqlserver) TryAdvisoryLock() string { return msGetAppLock("Session") }

func (m *sqlserver) HoldsAdvisoryLock() string {
	return `SELECT CAST(CASE WHEN APPLOCK_MODE('public', @p1, 'Session') = 'NoLock' THEN 0 ELSE 1 END AS bit)`
}

func (m *sqlserver) SessionID() string { return `SELECT CAST(@@SPID AS bigint)` }

// ReleaseAdvisoryLock checks first: sp_releaseapplock raises error 1223 for a lock not held.
func (m *sqlserver) ReleaseAdvisoryLock() string {
	return `DECLARE @r int = -1;
IF APPLOCK_MODE('public', @p1, 'Session') <> 'NoLock'
  EXEC @r = sp_releaseapplock @Resource = @p1, @LockOwner = 'Session';
SELECT CAST(CASE WHEN @r >= 0 THEN 1 ELSE 0 END AS bit)`
}

// Subscriber statements.

func (m *sqlserver) ClaimIncoming() string {
	return fmt.Sprintf(`UPDATE TOP (@p3) o SET [owner_id] = @p1
OUTPUT %[2]s
FROM %[1]s AS o WITH (READPAST, UPDLOCK, ROWLOCK)
WHERE o.[received_at] = CAST(@p2 AS varchar(100)) AND LEN(@p2) <= 100 AND o.[status] = 'Incoming' AND o.[owner_id] = 0
  AND %[3]s`,
		m.Inc, msCols("inserted.", row.IncomingColumns), msHeadOfKey(m.Inc, "received_at", true))
}

// DeleteIncoming cannot be uspDeleteIncomingEnvelopes: Handled rows must stay.
func (m *sqlserver) DeleteIncoming() string {
	return fmt.Sprintf(`DELETE FROM %s WHERE [id] IN (SELECT [id] FROM @p1) AND [status] <> 'Handled'`, m.Inc)
}

func (m *sqlserver) RetryIncoming() string {
	return fmt.Sprintf(`UPDATE %s SET [owner_id] = 0, [attempts] = COALESCE([attempts], 0) + 1,
  [status] = CASE WHEN @p2 > 0 THEN 'Scheduled' ELSE 'Incoming' END,
  [execution_time] = CASE WHEN @p2 > 0 THEN %s ELSE [execution_time] END
WHERE [id] IN (SELECT [id] FROM @p1) AND [owner_id] = @p3`, m.Inc, msAddMS("@p2"))
}

func (m *sqlserver) ReleaseIncoming() string {
	return fmt.Sprintf(`UPDATE %s SET [owner_id] = 0,
  [attempts] = COALESCE([attempts], 0) + CASE WHEN [id] IN (SELECT [id] FROM @p2) THEN 1 ELSE 0 END
WHERE [id] IN (SELECT [id] FROM @p1) AND [owner_id] = @p3`, m.Inc)
}

// ReleaseScheduled: the count is @@ROWCOUNT of the update, the next due time is measured in
// microseconds with DATEDIFF_BIG (SQL Server 2016) and returned as float milliseconds; the
// topics are not returned (NULL): without notifications the agent wakes every local
// subscription.
func (m *sqlserver) ReleaseScheduled() string {
	const topics = `(NOT EXISTS (SELECT 1 FROM OPENJSON(@p1)) OR [received_at] IN (
      SELECT t.[t] FROM OPENJSON(@p1) WITH ([t] varchar(100) '$', [n] nvarchar(max) '$') AS t WHERE LEN(t.[n]) <= 100))`
	return fmt.Sprintf(`DECLARE @n bigint;
WITH due AS (
  SELECT TOP (@p2) [status] FROM %[1]s WITH (READPAST, UPDLOCK, ROWLOCK)
  WHERE [status] = 'Scheduled' AND [owner_id] = 0 AND [execution_time] <= SYSDATETIMEOFFSET()
    AND [message_type] <> 'scheduled-envelope' AND %[2]s
  ORDER BY [execution_time])
UPDATE due SET [status] = 'Incoming';
SET @n = @@ROWCOUNT;
SELECT @n, CAST(DATEDIFF_BIG(microsecond, SYSDATETIMEOFFSET(), (
  SELECT min([execution_time]) FROM %[1]s
  WHERE [status] = 'Scheduled' AND [owner_id] = 0 AND [execution_time] > SYSDATETIMEOFFSET()
    AND %[2]s)) AS float) / 1000.0, CAST(NULL AS nvarchar(max))`, m.Inc, topics)
}

func (m *sqlserver) DeadLetterIncoming() string {
	return m.moveToDeadLetters(m.Inc, "deleted.[execution_time]", "COALESCE(deleted.[attempts], 0)", "deleted.[received_at]")
}

// dlqColumns are the dead-letter columns written by both dead-letter statements, in order.
var dlqColumns = []string{"id", "execution_time", "attempts", "body", "conversation_id", "correlation_id", "parent_id",
	"saga_id", "message_type", "content_type", "reply_requested", "ack_requested", "reply_uri", "received_at", "source",
	"explanation", "exception_text", "exception_type", "exception_message", "message_uuid", "headers"}

// dlqMerge renders the MERGE of source rows s (columns named as dlqColumns, unsized) into
// the dead letters: values are fitted to the columns, the explanation says which were
// truncated, and a dead letter with the same id is replaced.
func (m *sqlserver) dlqMerge(source string) string {
	var notes []string
	vals := make([]string, len(dlqColumns))
	for i, c := range dlqColumns {
		vals[i] = "s.[" + c + "]"
		if n, ok := m.sizes[layout.DeadLetterTable][c]; ok {
			vals[i] = fmt.Sprintf("LEFT(s.[%s], %d)", c, n)
			notes = append(notes, fmt.Sprintf("CASE WHEN LEN(s.[%[1]s]) > %[2]d THEN ' [SQL Server: %[1]s truncated to %[2]d characters]' ELSE '' END", c, n))
		}
		if c == "explanation" {
			vals[i] = "COALESCE(s.[explanation], '')"
		}
	}
	for i, c := range dlqColumns {
		if c == "explanation" {
			vals[i] += " + " + strings.Join(notes, " + ")
		}
	}
	set := make([]string, 0, len(dlqColumns)+2)
	for i, c := range dlqColumns[1:] {
		set = append(set, fmt.Sprintf("[%s] = %s", c, vals[i+1]))
	}
	set = append(set, "[timestamp] = SYSDATETIMEOFFSET()", "[replayable] = 0")
	return fmt.Sprintf(`MERGE %[1]s WITH (HOLDLOCK) AS d
USING (%[2]s) AS s
ON d.[id] = s.[id]
WHEN MATCHED THEN UPDATE SET %[3]s
WHEN NOT MATCHED THEN INSERT (%[4]s) VALUES (%[5]s);`,
		m.DLQ, source, strings.Join(set, ", "), msCols("", dlqColumns), strings.Join(vals, ", "))
}

// moveToDeadLetters moves rows of src to the dead letters. Args: the six JSON arrays of
// DeadLetterArgs ($1 ids, $2 explanation, $3 exception_type, $4 exception_message,
// $5 exception_text, $6 source), zipped by array index. The DELETE and the MERGE are atomic
// only in a transaction: the store opens one on the pool (MoveNeedsTx), and XACT_ABORT ON
// (for this batch: it runs through sp_executesql) rolls back the caller's whole transaction
// when one of them fails, so that no caller can commit the DELETE without the MERGE.
func (m *sqlserver) moveToDeadLetters(src, executionTime, attempts, receivedAt string) string {
	moved := []string{"deleted.[id]", executionTime, attempts, "deleted.[body]", "deleted.[conversation_id]",
		"deleted.[correlation_id]", "deleted.[parent_id]", "deleted.[saga_id]", "deleted.[message_type]",
		"deleted.[content_type]", "deleted.[reply_requested]", "deleted.[ack_requested]", "deleted.[reply_uri]",
		receivedAt, "deleted.[message_uuid]", "deleted.[headers]"}
	source := `SELECT m.[id], m.[execution_time], m.[attempts], m.[body], m.[conversation_id], m.[correlation_id],
    m.[parent_id], m.[saga_id], m.[message_type], m.[content_type], m.[reply_requested], m.[ack_requested],
    m.[reply_uri], m.[received_at], x.[source], x.[explanation], x.[exception_text], x.[exception_type],
    x.[exception_message], m.[message_uuid], m.[headers]
  FROM @m AS m JOIN (SELECT *, ROW_NUMBER() OVER (PARTITION BY [id] ORDER BY (SELECT NULL)) AS [rn] FROM @x) AS x
    ON x.[id] = m.[id] AND x.[rn] = 1`
	return fmt.Sprintf(`SET XACT_ABORT ON;
DECLARE @x TABLE ([id] uniqueidentifier NOT NULL, [explanation] nvarchar(max), [exception_type] nvarchar(max),
  [exception_message] nvarchar(max), [exception_text] nvarchar(max), [source] nvarchar(max));
INSERT INTO @x ([id], [explanation], [exception_type], [exception_message], [exception_text], [source])
SELECT CAST(i.[value] AS uniqueidentifier), e.[value], t.[value], g.[value], x.[value], s.[value]
FROM OPENJSON(@p1) AS i
  JOIN OPENJSON(@p2) AS e ON e.[key] = i.[key]
  JOIN OPENJSON(@p3) AS t ON t.[key] = i.[key]
  JOIN OPENJSON(@p4) AS g ON g.[key] = i.[key]
  JOIN OPENJSON(@p5) AS x ON x.[key] = i.[key]
  JOIN OPENJSON(@p6) AS s ON s.[key] = i.[key];
DECLARE @m TABLE ([id] uniqueidentifier NOT NULL, [execution_time] datetimeoffset, [attempts] int,
  [body] varbinary(max), [conversation_id] uniqueidentifier, [correlation_id] varchar(max), [parent_id] varchar(max),
  [saga_id] varchar(max), [message_type] varchar(max), [content_type] varchar(max), [reply_requested] varchar(max),
  [ack_requested] bit, [reply_uri] varchar(max), [received_at] varchar(max), [message_uuid] nvarchar(max),
  [headers] nvarchar(max));
DELETE FROM e
OUTPUT %[2]s INTO @m
FROM %[1]s AS e WHERE e.[id] IN (SELECT [id] FROM @x);
%[3]s`, src, strings.Join(moved, ", "), m.dlqMerge(source))
}

// Inbox and dead-letter middleware statements.

func (m *sqlserver) InsertHandled() string {
	n := len(row.IncomingColumns)
	return m.buildInsert(m.Inc, row.IncomingColumns, 1, 1, []string{"keep_until"}, []string{msAddMS(fmt.Sprintf("@p%d", n+1))})
}

func (m *sqlserver) MarkIncomingHandled() string {
	return fmt.Sprintf(`UPDATE %s SET [status] = 'Handled', [keep_until] = %s, [owner_id] = 0, [body] = 0x
WHERE [id] = @p1 AND [received_at] = CAST(@p2 AS varchar(100)) AND LEN(@p2) <= 100 AND [status] = 'Incoming'`, m.Inc, msAddMS("@p3"))
}

func (m *sqlserver) IncomingStatus() string {
	return fmt.Sprintf(`SELECT [status] FROM %s WHERE [id] = @p1 AND [received_at] = CAST(@p2 AS varchar(100)) AND LEN(@p2) <= 100`, m.Inc)
}

func (m *sqlserver) DeleteExpiredHandled() string {
	return fmt.Sprintf(`DELETE TOP (@p1) FROM %s WITH (READPAST, UPDLOCK, ROWLOCK)
WHERE [status] = 'Handled' AND [keep_until] <= SYSDATETIMEOFFSET()`, m.Inc)
}

// InsertDeadLetter: the envelope (row.IncomingArgs) then explanation, exception_type,
// exception_message, exception_text, source.
func (m *sqlserver) InsertDeadLetter() string {
	n := len(row.IncomingColumns)
	reasons := []string{"explanation", "exception_type", "exception_message", "exception_text", "source"}
	cols := append(append([]string(nil), row.IncomingColumns...), reasons...)
	source := fmt.Sprintf(`SELECT v.[id], v.[execution_time], COALESCE(v.[attempts], 0) AS [attempts], v.[body], v.[conversation_id],
    v.[correlation_id], v.[parent_id], v.[saga_id], v.[message_type], v.[content_type], v.[reply_requested],
    v.[ack_requested], v.[reply_uri], v.[received_at], v.[source], v.[explanation], v.[exception_text],
    v.[exception_type], v.[exception_message], v.[message_uuid], v.[headers]
  FROM (VALUES %s) AS v(%s)`, msValues(1, 1, n+len(reasons)), msCols("", cols))
	return m.dlqMerge(source)
}

func (m *sqlserver) Savepoint() string { return `SAVE TRANSACTION watermill_jasper_attempt` }
func (m *sqlserver) RollbackToSavepoint() string {
	return `ROLLBACK TRANSACTION watermill_jasper_attempt`
}

// ReleaseSavepoint is "": SQL Server has no release; the savepoint ends with the transaction.
func (m *sqlserver) ReleaseSavepoint() string { return "" }

func (m *sqlserver) DeleteHandledMark() string {
	return fmt.Sprintf(`DELETE FROM %s WHERE [id] = @p1 AND [status] = 'Handled'`, m.Inc)
}
