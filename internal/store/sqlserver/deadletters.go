package sqlserver

import (
	"fmt"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// The dead-letter tools on SQL Server: the statements of internal/store/postgres/deadletters.go
// with the same arguments, except that id lists are JSON arrays of strings (StringList)
// opened with OPENJSON. Ids are read back as char(36) text, which every scanner parses
// whatever the driver's byte order; paging by id follows SQL Server's uniqueidentifier
// order, which is consistent between ORDER BY and >.

// sqlserverDeadLetterColumn renders one of sqlstore.DeadLetterColumns for SQL Server.
func sqlserverDeadLetterColumn(c string) string {
	switch c {
	case "id", "conversation_id":
		return "CONVERT(char(36), [" + c + "])"
	}
	return "[" + c + "]"
}

// msAgo is now minus a bigint parameter of milliseconds.
func msAgo(p string) string { return msShiftNow("-", p) }

const msLongAgo = "CAST('0001-01-01 00:00:00 +00:00' AS datetimeoffset)"

// deadLetterStatements are the statements of the dead-letter tools.
func (m *sqlserver) deadLetterStatements() sqlstore.AdminStatements {
	inc, dlq := m.Inc, m.DLQ
	cols := make([]string, len(sqlstore.DeadLetterColumns))
	for i, c := range sqlstore.DeadLetterColumns {
		cols[i] = sqlserverDeadLetterColumn(c)
	}
	all := strings.Join(cols, ", ")
	listCols := strings.Join(cols[:len(cols)-1], ", ") + ", DATALENGTH([body])"
	headers := "d.[headers]"
	for _, k := range row.DeliveryKeys {
		headers = fmt.Sprintf("JSON_MODIFY(%s, '$.%s', NULL)", headers, k)
	}
	ids := func(p string) string {
		return fmt.Sprintf("(NOT EXISTS (SELECT 1 FROM OPENJSON(%[1]s)) OR [id] IN (SELECT TRY_CAST(j.[value] AS uniqueidentifier) FROM OPENJSON(%[1]s) AS j))", p)
	}
	topic := func(p string) string {
		return fmt.Sprintf("(%[1]s = N'' OR ([received_at] = CAST(%[1]s AS varchar(100)) AND LEN(%[1]s) <= 100))", p)
	}
	older := func(p string) string {
		return fmt.Sprintf("(%s = 0 OR COALESCE([timestamp], %s) < %s)", p, msLongAgo, msAgo(p))
	}
	sel := ids("@p2") + " AND " + topic("@p3")
	after := "(@p1 IS NULL OR [id] > CAST(@p1 AS uniqueidentifier))"
	return sqlstore.AdminStatements{
		CountDeadLetters: fmt.Sprintf(`SELECT count_big(*) FROM %s WHERE %s AND %s AND %s`, dlq, topic("@p1"), ids("@p2"), older("@p3")),
		// A NULL limit (ListOptions.Limit < 0) means all rows.
		ListDeadLetters: fmt.Sprintf(`SELECT TOP (COALESCE(CAST(@p2 AS bigint), 9223372036854775807)) %s FROM %s WHERE %s
ORDER BY CASE WHEN [timestamp] IS NULL THEN 1 ELSE 0 END, [timestamp] DESC, [id]`, listCols, dlq, topic("@p1")),
		GetDeadLetter:     fmt.Sprintf(`SELECT %s FROM %s WHERE [id] = CAST(@p1 AS uniqueidentifier)`, all, dlq),
		PageDeadLetters:   fmt.Sprintf(`SELECT TOP (@p4) %s FROM %s WHERE %s AND %s ORDER BY [id]`, all, dlq, after, sel),
		DeleteDeadLetters: fmt.Sprintf(`DELETE FROM %s WHERE [id] IN (SELECT TRY_CAST(j.[value] AS uniqueidentifier) FROM OPENJSON(@p1) AS j)`, dlq),
		// As on PostgreSQL: the selected dead letters become Incoming, unowned envelopes of
		// their topic (or @p5) with no attempts, unless the id is in the incoming table.
		ReplayDeadLetters: fmt.Sprintf(`DECLARE @src TABLE ([id] uniqueidentifier NOT NULL, [topic] varchar(max));
INSERT INTO @src ([id], [topic])
SELECT TOP (@p4) [id], COALESCE(NULLIF(CAST(@p5 AS varchar(max)), ''), [received_at])
FROM %[2]s WITH (UPDLOCK, ROWLOCK) WHERE %[4]s AND %[5]s ORDER BY [id];
DECLARE @ins TABLE ([id] uniqueidentifier NOT NULL, [received_at] varchar(100));
INSERT INTO %[1]s ([id], [status], [owner_id], [execution_time], [attempts], [body], [conversation_id], [correlation_id],
  [parent_id], [saga_id], [message_type], [content_type], [reply_requested], [ack_requested], [reply_uri], [received_at],
  [message_uuid], [headers])
OUTPUT inserted.[id], inserted.[received_at] INTO @ins
SELECT d.[id], 'Incoming', 0, NULL, 0, d.[body], d.[conversation_id], d.[correlation_id], d.[parent_id], d.[saga_id],
  d.[message_type], d.[content_type], d.[reply_requested], d.[ack_requested], d.[reply_uri], s.[topic], d.[message_uuid],
  CASE WHEN d.[headers] IS NULL THEN NULL ELSE %[3]s END
FROM @src AS s JOIN %[2]s AS d ON d.[id] = s.[id]
WHERE s.[topic] IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM %[1]s AS i WITH (UPDLOCK, HOLDLOCK) WHERE i.[id] = d.[id]);
DELETE FROM %[2]s WHERE [id] IN (SELECT [id] FROM @ins);
SELECT CONVERT(char(36), s.[id]), CAST(CASE WHEN i.[id] IS NULL THEN 0 ELSE 1 END AS bit), COALESCE(i.[received_at], '')
FROM @src AS s LEFT JOIN @ins AS i ON i.[id] = s.[id] ORDER BY s.[id]`, inc, dlq, headers, after, sel),
		PurgeDeadLetters: fmt.Sprintf(`DELETE TOP (@p3) FROM %s WITH (READPAST, UPDLOCK, ROWLOCK) WHERE %s AND %s`, dlq, older("@p1"), topic("@p2")),
	}
}
