package postgres

import "fmt"

// Durability agent statements on PostgreSQL (see DurabilityStatements).

func (p *postgres) TryAdvisoryXactLock() string {
	return `SELECT pg_try_advisory_xact_lock($1::bigint)`
}

// pgLiveOwners lists the node ids whose lock some session holds: the granted bigint advisory
// locks of this database (classid = high 32 bits, objid = low 32 bits, objsubid = 1) whose
// key is a sign-extended int32, turned back into that int32.
const pgLiveOwners = `SELECT (CASE WHEN classid = 0 THEN objid::bigint ELSE objid::bigint - 4294967296 END)::int AS id
  FROM pg_locks
  WHERE locktype = 'advisory' AND granted AND objsubid = 1
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND ((classid = 0 AND objid::bigint < 2147483648) OR (classid = '4294967295'::oid AND objid::bigint >= 2147483648))`

// OtherOwners walks the outgoing owner index from both sides of 0 (a loose index scan: one
// probe per owner, so a backlog of unowned rows costs nothing) and reads the incoming owners
// with a plain DISTINCT.
func (p *postgres) OtherOwners() string {
	return fmt.Sprintf(`WITH RECURSIVE neg(id) AS (
  SELECT max(owner_id) FROM %[1]s WHERE owner_id < 0
  UNION ALL
  SELECT (SELECT max(owner_id) FROM %[1]s WHERE owner_id < neg.id) FROM neg WHERE neg.id IS NOT NULL
), pos(id) AS (
  SELECT min(owner_id) FROM %[1]s WHERE owner_id > 0
  UNION ALL
  SELECT (SELECT min(owner_id) FROM %[1]s WHERE owner_id > pos.id) FROM pos WHERE pos.id IS NOT NULL
)
SELECT id FROM neg WHERE id IS NOT NULL AND id <> $1::int
UNION SELECT id FROM pos WHERE id IS NOT NULL AND id <> $1::int
UNION SELECT DISTINCT owner_id FROM %[2]s WHERE owner_id <> 0 AND owner_id <> $1::int`, p.Out, p.Inc)
}

// ReleaseOwner: "owner_id <> 0" repeats what "= $1" implies for every owner it is called
// with, so that a generic plan (prepared statements, after five runs) can use the partial
// owner index (WHERE owner_id <> 0), which "= $1" alone does not prove.
func (p *postgres) ReleaseOwner() string {
	return fmt.Sprintf(`WITH i AS (
  UPDATE %[1]s SET owner_id = 0 WHERE owner_id = $1::int AND id = ANY(ARRAY(
    SELECT id FROM %[1]s WHERE owner_id = $1::int AND owner_id <> 0 LIMIT $2 FOR UPDATE SKIP LOCKED))
  RETURNING received_at
), o AS (
  UPDATE %[2]s SET owner_id = 0 WHERE owner_id = $1::int AND id = ANY(ARRAY(
    SELECT id FROM %[2]s WHERE owner_id = $1::int AND owner_id <> 0 LIMIT $2 FOR UPDATE SKIP LOCKED))
  RETURNING 1
)
SELECT (SELECT count(*) FROM i), (SELECT count(*) FROM o),
  (SELECT COALESCE(json_agg(DISTINCT received_at), '[]'::json)::text FROM i WHERE received_at IS NOT NULL)`, p.Inc, p.Out)
}

// UnownedEnvelopes walks the distinct received_at values through the incoming queue index
// (received_at, status, owner_id) and probes each topic for unowned Incoming envelopes.
func (p *postgres) UnownedEnvelopes() string {
	return fmt.Sprintf(`SELECT EXISTS (SELECT 1 FROM %[1]s WHERE owner_id = 0),
  (WITH RECURSIVE t(topic) AS (
      (SELECT received_at FROM %[2]s WHERE received_at IS NOT NULL ORDER BY received_at LIMIT 1)
      UNION ALL
      SELECT (SELECT received_at FROM %[2]s WHERE received_at > t.topic ORDER BY received_at LIMIT 1)
      FROM t WHERE t.topic IS NOT NULL)
    SELECT COALESCE(json_agg(topic), '[]'::json)::text FROM t WHERE topic IS NOT NULL
      AND EXISTS (SELECT 1 FROM %[2]s WHERE received_at = t.topic AND status = 'Incoming' AND owner_id = 0))`, p.Out, p.Inc)
}

func (p *postgres) DeleteExpiredOutgoing() string {
	return fmt.Sprintf(`DELETE FROM %[1]s WHERE id = ANY(ARRAY(
  SELECT id FROM %[1]s WHERE owner_id = 0 AND deliver_by <= now()
  LIMIT $1 FOR UPDATE SKIP LOCKED))`, p.Out)
}

func (p *postgres) StorageGauges() string {
	return fmt.Sprintf(`WITH live AS (%[4]s
), i AS (
  SELECT count(*) FILTER (WHERE status = 'Incoming') AS incoming,
    count(*) FILTER (WHERE status = 'Scheduled') AS scheduled,
    count(*) FILTER (WHERE status = 'Handled') AS handled,
    count(*) FILTER (WHERE owner_id <> 0 AND owner_id NOT IN (SELECT id FROM live)) AS dormant
  FROM %[1]s
), o AS (
  SELECT count(*) AS outgoing, min("timestamp") AS oldest,
    count(*) FILTER (WHERE owner_id <> 0 AND owner_id NOT IN (SELECT id FROM live)) AS dormant
  FROM %[2]s
)
SELECT i.incoming, i.scheduled, i.handled, o.outgoing, (SELECT count(*) FROM %[3]s),
  EXTRACT(EPOCH FROM now() - o.oldest)::float8, i.dormant + o.dormant
FROM i, o`, p.Inc, p.Out, p.DLQ, pgLiveOwners)
}

func (p *postgres) OwnersAlive() string {
	return `SELECT o.id, o.id IN (` + pgLiveOwners + `) FROM unnest($1::int4[]) AS o(id)`
}
