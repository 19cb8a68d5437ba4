package sqlserver

import "fmt"

// Durability agent statements on SQL Server (see DurabilityStatements).
//
// Liveness of a node is asked as Jasper asks it: can its application lock be taken? Here
// APPLOCK_TEST answers without taking it. APPLOCK_TEST answers for the session it runs on,
// so a session that itself holds a node's lock sees that node as not alive: run these
// statements on pooled connections, not on a node's lock connection.

// msLockFree is true when no other session holds the application lock of the int owner
// expression (Jasper's resource name: the decimal int32).
func msLockFree(owner string) string {
	return fmt.Sprintf("APPLOCK_TEST('public', CAST(%s AS nvarchar(11)), 'Exclusive', 'Session') = 1", owner)
}

// TryAdvisoryXactLock is sp_getapplock owned by the transaction (run it inside one).
func (m *sqlserver) TryAdvisoryXactLock() string { return msGetAppLock("Transaction") }

func (m *sqlserver) OtherOwners() string {
	return fmt.Sprintf(`SELECT DISTINCT [owner_id] FROM %[1]s WHERE [owner_id] <> 0 AND [owner_id] <> @p1
UNION SELECT DISTINCT [owner_id] FROM %[2]s WHERE [owner_id] <> 0 AND [owner_id] <> @p1`, m.Out, m.Inc)
}

// msJSONArray renders a JSON array of the strings in column col of the subquery q (NULLs
// left out) as nvarchar(max), '[]' when there are none. FOR XML PATH rather than
// STRING_AGG keeps SQL Server 2016 working.
func msJSONArray(col, q string) string {
	return fmt.Sprintf(`COALESCE('[' + STUFF((SELECT ',"' + STRING_ESCAPE(j.[%[1]s], 'json') + '"' FROM (%[2]s) AS j
  WHERE j.[%[1]s] IS NOT NULL FOR XML PATH(''), TYPE).value('.', 'nvarchar(max)'), 1, 1, '') + ']', '[]')`, col, q)
}

// ReleaseOwner: "[owner_id] <> 0" repeats what "= @p1" implies for every owner it is called
// with, so that the optimizer can seek the filtered owner index (WHERE owner_id <> 0): a plan
// for "= @p1" alone must also serve @p1 = 0 and would scan the table.
func (m *sqlserver) ReleaseOwner() string {
	return fmt.Sprintf(`DECLARE @i TABLE ([received_at] varchar(100));
DECLARE @o bigint;
UPDATE TOP (@p2) %[1]s WITH (READPAST, UPDLOCK, ROWLOCK) SET [owner_id] = 0
OUTPUT inserted.[received_at] INTO @i
WHERE [owner_id] = @p1 AND [owner_id] <> 0;
UPDATE TOP (@p2) %[2]s WITH (READPAST, UPDLOCK, ROWLOCK) SET [owner_id] = 0
WHERE [owner_id] = @p1 AND [owner_id] <> 0;
SET @o = @@ROWCOUNT;
SELECT (SELECT count_big(*) FROM @i), @o, %[3]s`, m.Inc, m.Out, msJSONArray("received_at", "SELECT DISTINCT [received_at] FROM @i"))
}

func (m *sqlserver) UnownedEnvelopes() string {
	return fmt.Sprintf(`SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM %[1]s WHERE [owner_id] = 0) THEN 1 ELSE 0 END AS bit),
  %[2]s`, m.Out, msJSONArray("received_at",
		fmt.Sprintf("SELECT DISTINCT [received_at] FROM %s WHERE [status] = 'Incoming' AND [owner_id] = 0", m.Inc)))
}

func (m *sqlserver) DeleteExpiredOutgoing() string {
	return fmt.Sprintf(`DELETE TOP (@p1) FROM %s WITH (READPAST, UPDLOCK, ROWLOCK)
WHERE [owner_id] = 0 AND [deliver_by] <= SYSDATETIMEOFFSET()`, m.Out)
}

func (m *sqlserver) StorageGauges() string {
	return fmt.Sprintf(`WITH owned AS (
  SELECT [owner_id], count_big(*) AS [n] FROM %[1]s WHERE [owner_id] <> 0 GROUP BY [owner_id]
  UNION ALL
  SELECT [owner_id], count_big(*) FROM %[2]s WHERE [owner_id] <> 0 GROUP BY [owner_id]
)
SELECT (SELECT count_big(*) FROM %[1]s WHERE [status] = 'Incoming'),
  (SELECT count_big(*) FROM %[1]s WHERE [status] = 'Scheduled'),
  (SELECT count_big(*) FROM %[1]s WHERE [status] = 'Handled'),
  (SELECT count_big(*) FROM %[2]s),
  (SELECT count_big(*) FROM %[3]s),
  CAST(DATEDIFF_BIG(millisecond, (SELECT min([timestamp]) FROM %[2]s), SYSDATETIMEOFFSET()) AS float) / 1000.0,
  COALESCE((SELECT sum([n]) FROM owned WHERE %[4]s), 0)`, m.Inc, m.Out, m.DLQ, msLockFree("[owner_id]"))
}

// OwnersAlive: Args: OwnerList (a JSON array of ints on SQL Server).
func (m *sqlserver) OwnersAlive() string {
	return fmt.Sprintf(`SELECT o.[id], CAST(CASE WHEN %s THEN 0 ELSE 1 END AS bit)
FROM OPENJSON(@p1) WITH ([id] int '$') AS o`, msLockFree("o.[id]"))
}
