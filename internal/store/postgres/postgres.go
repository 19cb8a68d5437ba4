// Package postgres is the PostgreSQL driver of the store (internal/store): every statement
// this library runs on PostgreSQL, DDL included, and the Driver that opens a schema's Store.
// The public package database builds it (database.FromPgx, database.FromStdSQL).
package postgres

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

type pgUUIDs struct{}

func (pgUUIDs) Arg(u uuid.UUID) any   { return u.String() }
func (pgUUIDs) Dest(u *uuid.UUID) any { return u }

type postgres struct {
	sqlstore.Base
	outCols, incCols, claimCols   string
	claimOut, lockOut, deleteOut  string
	lockOutByID                   string
	releaseOutFailed, releaseOut  string
	deadLetterOut, notifyOut, chn string
	insertOutOnce                 sync.Once
	insertOutCache                [8]string // InsertOutgoing(1..8), built on first use
}

// unownedForDestinations is the filter of the relay's claims on the outgoing table: unowned
// rows whose destination is not in the text array $excluded and, when the array $only of LIKE
// patterns (escape character \) is not empty, matches one of them.
func unownedForDestinations(excluded, only int) string {
	return fmt.Sprintf(`owner_id = 0 AND NOT (destination = ANY($%[1]d::text[]))
    AND (cardinality($%[2]d::text[]) = 0 OR destination LIKE ANY($%[2]d::text[]))`, excluded, only)
}

// headOfKey is the filter of per-key ordering on the envelope table aliased o: a row
// without a partition key, or the oldest (lowest seq) row of its key with the same sameQueue
// column (destination, received_at), among the rows that are not Handled marks on the
// incoming table. A second row of a key is thus claimed only once the first is gone
// (deleted, or dead-lettered), by whichever relay or subscriber: one at a time per key, in
// the order the rows were written, across processes and crashes, with no ownership protocol.
// The NOT EXISTS probe runs on idx_*_partition, and only for keyed rows; it scans the index
// backwards from the row, so that it meets the row's live predecessor first rather than
// the dead index entries of the key's rows already sent (until vacuum removes them).
func headOfKey(table, sameQueue string, incoming bool) string {
	extra := fmt.Sprintf(" AND e.%[1]s = o.%[1]s", sameQueue)
	if incoming {
		extra += " AND e.status <> 'Handled'"
	}
	return fmt.Sprintf(`(o.partition_key IS NULL OR NOT EXISTS (
    SELECT 1 FROM %s e WHERE e.partition_key = o.partition_key AND e.seq < o.seq%s
    ORDER BY e.partition_key DESC, e.seq DESC LIMIT 1))`, table, extra)
}

// pgSyntax is how PostgreSQL writes the statements every dialect shares.
var pgSyntax = sqlstore.Syntax{
	Param: "$%d", CountRows: "count(*)", Now: "now()", False: "false", Types: pgTypes, CatalogTypes: pgCatalogTypes,
}

// pgQuotedList renders column names as a quoted, comma-separated list.
func pgQuotedList(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = `"` + c + `"`
	}
	return strings.Join(q, ", ")
}

func newPostgres(cfg layout.Config) *postgres {
	p := &postgres{
		outCols:   strings.Join(row.OutgoingColumns, ", "),
		claimCols: pgQuotedList(row.ClaimedOutgoingColumns),
		incCols:   strings.Join(row.IncomingColumns, ", "),
	}
	p.Base = sqlstore.NewBase(cfg, pgSyntax, p.deadLetterStatements)
	// The channel name is an identifier: validated schema name, folded to lower case.
	p.chn = channel("jasper_outgoing_", cfg.Schema)
	p.notifyOut = fmt.Sprintf("SELECT pg_notify('%s', '')", p.chn)
	// id = ANY(ARRAY(subquery)), not id IN (subquery): the IN form is planned as a hash
	// semi-join over a sequential scan of the whole table, so every claim cost O(backlog)
	// and draining a backlog was quadratic; the array is an init plan probed through the
	// primary key.
	p.claimOut = fmt.Sprintf(`UPDATE %[1]s SET owner_id = $1 WHERE id = ANY(ARRAY(
  SELECT id FROM %[1]s o
  WHERE %[3]s AND %[4]s
  LIMIT $4 FOR UPDATE SKIP LOCKED))
RETURNING %[2]s`, p.Out, p.claimCols, unownedForDestinations(2, 3), headOfKey(p.Out, "destination", false))
	p.lockOut = fmt.Sprintf(`SELECT %[2]s FROM %[1]s o
WHERE %[3]s AND %[4]s
LIMIT $3 FOR UPDATE SKIP LOCKED`, p.Out, p.claimCols, unownedForDestinations(1, 2), headOfKey(p.Out, "destination", false))
	p.lockOutByID = fmt.Sprintf(`SELECT %[2]s FROM %[1]s o
WHERE o.id = ANY($1::uuid[]) AND %[3]s AND %[4]s
FOR UPDATE SKIP LOCKED`, p.Out, p.claimCols, unownedForDestinations(2, 3), headOfKey(p.Out, "destination", false))
	p.deleteOut = fmt.Sprintf(`DELETE FROM %s WHERE id = ANY($1::uuid[])`, p.Out)
	p.releaseOutFailed = fmt.Sprintf(`UPDATE %s SET owner_id = 0, attempts = COALESCE(attempts, 0) + 1 WHERE id = ANY($1::uuid[]) AND owner_id = $2`, p.Out)
	p.releaseOut = fmt.Sprintf(`UPDATE %s SET owner_id = 0 WHERE id = ANY($1::uuid[]) AND owner_id = $2`, p.Out)
	// Outgoing rows have no execution_time; their destination becomes received_at, and the
	// failed publish that sends them there counts as one more attempt.
	p.deadLetterOut = moveToDeadLetters(p.Out, p.DLQ, "NULL", "COALESCE(attempts, 0) + 1", "destination")
	return p
}

// New returns the driver of a PostgreSQL pool (dbx.FromPgx, or dbx.FromStdSQL over pgx's
// stdlib driver).
func New(db dbx.DB) (*sqlstore.Driver, error) {
	return sqlstore.NewDriver(db, dbx.Postgres, "PostgreSQL", Dialect)
}

// Dialect returns the statements of a normalized PostgreSQL schema config, without a
// connection (for scripts and offline checks).
func Dialect(cfg layout.Config) sqlstore.Dialect { return newPostgres(cfg) }

// channel names a NOTIFY channel of the schema: prefix and the schema name. PostgreSQL
// rejects channel names of 64 bytes or more in pg_notify ("channel name too long") and
// truncates them in LISTEN, so a long schema name is shortened and suffixed with a hash of
// the whole.
func channel(prefix, schemaName string) string {
	const limit = 63
	if len(prefix)+len(schemaName) <= limit {
		return prefix + schemaName
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(schemaName))
	suffix := fmt.Sprintf("_%08x", h.Sum32())
	return prefix + schemaName[:limit-len(prefix)-len(suffix)] + suffix
}

func (p *postgres) Name() dbx.Dialect { return dbx.Postgres }

// Caps: PostgreSQL has LISTEN/NOTIFY and releases savepoints.
func (p *postgres) Caps() store.Caps { return store.Caps{Notifications: true, SavepointRelease: true} }

// MoveNeedsTx is false: the moves to the dead letters are one statement each.
func (p *postgres) MoveNeedsTx() bool { return false }

// RelayTxSettings turns synchronous_commit off for the relay's batch transaction alone: its
// commit returns once its record is in the write-ahead log's buffers, which the WAL writer
// flushes within a few hundred milliseconds (Store.BeginRelay says why that is safe).
func (p *postgres) RelayTxSettings() string   { return "SET LOCAL synchronous_commit = off" }
func (p *postgres) UUIDs() row.UUIDCodec      { return pgUUIDs{} }
func (p *postgres) StringList(s []string) any { return orEmpty(s) }
func (p *postgres) OwnerList(ids []int32) any { return orEmpty(ids) }

// orEmpty is s, or an empty slice for nil (an empty array rather than NULL).
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (p *postgres) DeadLetterArgs(ids []uuid.UUID, explanation, exceptionType, exceptionMessage, exceptionText, source []string) []any {
	return []any{p.IDList(ids), p.StringList(explanation), p.StringList(exceptionType), p.StringList(exceptionMessage),
		p.StringList(exceptionText), p.StringList(source)}
}

func (p *postgres) IDList(ids []uuid.UUID) any {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

// pgValues renders n rows of width $N placeholders, numbered from first.
func pgValues(first, n, width int) string { return sqlstore.Values("$%d", first, n, width) }

// insert renders the insert of n rows of cols (the columns of table, joined), bound from
// $first, skipping ids that exist already.
func (p *postgres) insert(table, cols string, width, first, n int) string {
	return fmt.Sprintf("INSERT INTO %s (%s) VALUES %s ON CONFLICT (id) DO NOTHING", table, cols, pgValues(first, n, width))
}

func (p *postgres) InsertOutgoing(n int) string {
	if n <= len(p.insertOutCache) {
		p.insertOutOnce.Do(func() {
			for i := range p.insertOutCache {
				p.insertOutCache[i] = p.insert(p.Out, p.outCols, len(row.OutgoingColumns), 1, i+1)
			}
		})
		return p.insertOutCache[n-1]
	}
	return p.insert(p.Out, p.outCols, len(row.OutgoingColumns), 1, n)
}

func (p *postgres) NotifyOutgoing() string        { return p.notifyOut }
func (p *postgres) OutgoingChannel() string       { return p.chn }
func (p *postgres) ClaimOutgoing() string         { return p.claimOut }
func (p *postgres) LockOutgoing() string          { return p.lockOut }
func (p *postgres) LockOutgoingByID() string      { return p.lockOutByID }
func (p *postgres) DeleteOutgoing() string        { return p.deleteOut }
func (p *postgres) ReleaseOutgoingFailed() string { return p.releaseOutFailed }
func (p *postgres) ReleaseOutgoing() string       { return p.releaseOut }
func (p *postgres) DeadLetterOutgoing() string    { return p.deadLetterOut }

// Publisher statements (InsertIncoming, InsertEnvelopes) and the scheduled-send release.

func (p *postgres) MaxParams() int { return 65535 }

// pgCode is the SQLSTATE of an error PostgreSQL sent, and whether err holds one.
func pgCode(err error) (string, bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, true
	}
	return "", false
}

// IsStatementError: an error the server sent (pgconn.PgError).
func (p *postgres) IsStatementError(err error) bool {
	_, ok := pgCode(err)
	return ok
}

// IsMissingTable: SQLSTATE 42P01 (undefined_table) or 3F000 (invalid_schema_name).
func (p *postgres) IsMissingTable(err error) bool {
	code, _ := pgCode(err)
	return code == "42P01" || code == "3F000"
}

// IsMissingColumn: SQLSTATE 42703 (undefined_column).
func (p *postgres) IsMissingColumn(err error) bool {
	code, _ := pgCode(err)
	return code == "42703"
}

func (p *postgres) InsertIncoming(n int) string { return p.insertIncoming(1, n) }

func (p *postgres) insertIncoming(first, n int) string {
	return p.insert(p.Inc, p.incCols, len(row.IncomingColumns), first, n)
}

func (p *postgres) InsertEnvelopes(outgoing, incoming int, notify bool) string {
	switch {
	case incoming == 0 && !notify:
		return p.InsertOutgoing(outgoing)
	case outgoing == 0:
		return p.InsertIncoming(incoming)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "WITH o AS (%s RETURNING 1)", p.InsertOutgoing(outgoing))
	inc := p.insertIncoming(1+outgoing*len(row.OutgoingColumns), incoming)
	if !notify {
		b.WriteString("\n" + inc)
		return b.String()
	}
	if incoming > 0 {
		fmt.Fprintf(&b, ", i AS (%s RETURNING 1)", inc)
	}
	fmt.Fprintf(&b, "\nSELECT pg_notify('%s', '') WHERE EXISTS (SELECT 1 FROM o)", p.chn)
	return b.String()
}

func (p *postgres) ReleaseDueScheduledSends() string {
	return fmt.Sprintf(`DELETE FROM %[1]s WHERE id IN (
  SELECT id FROM %[1]s
  WHERE status = 'Scheduled' AND owner_id = 0 AND message_type = 'scheduled-envelope' AND execution_time <= now()
  ORDER BY execution_time
  LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING %[2]s`, p.Inc, p.incCols)
}

// Notifications and advisory locks (forwarder wake-up, durability node lock).

func (p *postgres) ListenOutgoing() string { return `LISTEN "` + p.chn + `"` }

func (p *postgres) AdvisoryLockKey(id int32) any { return int64(id) }

func (p *postgres) TryAdvisoryLock() string { return `SELECT pg_try_advisory_lock($1::bigint)` }

// A bigint advisory key is stored in pg_locks as classid = high 32 bits, objid = low 32 bits,
// objsubid = 1.
func (p *postgres) HoldsAdvisoryLock() string {
	return `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
  AND granted AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid)`
}

func (p *postgres) ReleaseAdvisoryLock() string { return `SELECT pg_advisory_unlock($1::bigint)` }

func (p *postgres) SessionID() string { return `SELECT pg_backend_pid()::bigint` }

// Subscriber statements (incoming envelopes of a topic).

func (p *postgres) IncomingChannel() string { return channel("jasper_incoming_", p.Cfg.Schema) }

func (p *postgres) ListenIncoming() string { return `LISTEN "` + p.IncomingChannel() + `"` }

// EmitOutgoing: pg_logical_emit_message in the order of the array, guarded by the slot's
// presence (pg_replication_slots is readable by every role). wal_status is read through
// to_jsonb, so that the statement parses before PostgreSQL 13 too (and writes nothing there:
// the version guard).
func (p *postgres) EmitOutgoing() string {
	return `SELECT count(pg_logical_emit_message(true, $1::text, m.c))
FROM unnest($3::bytea[]) AS m(c)
WHERE current_setting('server_version_num')::int >= 140000
  AND EXISTS (SELECT 1 FROM pg_replication_slots s
    WHERE s.slot_name = $2::text AND s.database = current_database() AND s.plugin = 'pgoutput'
      AND s.confirmed_flush_lsn IS NOT NULL AND (to_jsonb(s) ->> 'wal_status') IS DISTINCT FROM 'lost')`
}

func (p *postgres) NotifyIncoming() string {
	return fmt.Sprintf("SELECT pg_notify('%s', $1::text)", p.IncomingChannel())
}

func (p *postgres) ClaimIncoming() string {
	return fmt.Sprintf(`WITH c AS (
  SELECT id FROM %[1]s o
  WHERE received_at = $2 AND status = 'Incoming' AND owner_id = 0 AND %[3]s
  LIMIT $3 FOR UPDATE SKIP LOCKED)
UPDATE %[1]s AS i SET owner_id = $1 FROM c WHERE i.id = c.id
RETURNING i.%[2]s`, p.Inc, strings.Join(row.IncomingColumns, ", i."), headOfKey(p.Inc, "received_at", true))
}

func (p *postgres) DeleteIncoming() string {
	return fmt.Sprintf(`DELETE FROM %s WHERE id = ANY($1::uuid[]) AND status <> 'Handled'`, p.Inc)
}

func (p *postgres) RetryIncoming() string {
	return fmt.Sprintf(`UPDATE %s SET owner_id = 0, attempts = COALESCE(attempts, 0) + 1,
  status = CASE WHEN $2::bigint > 0 THEN 'Scheduled' ELSE 'Incoming' END,
  execution_time = CASE WHEN $2::bigint > 0 THEN now() + $2::bigint * interval '1 millisecond' ELSE execution_time END
WHERE id = ANY($1::uuid[]) AND owner_id = $3`, p.Inc)
}

func (p *postgres) ReleaseIncoming() string {
	return fmt.Sprintf(`UPDATE %s SET owner_id = 0,
  attempts = COALESCE(attempts, 0) + CASE WHEN id = ANY($2::uuid[]) THEN 1 ELSE 0 END
WHERE id = ANY($1::uuid[]) AND owner_id = $3`, p.Inc)
}

func (p *postgres) ReleaseScheduled() string {
	return fmt.Sprintf(`WITH due AS (
  SELECT id FROM %[1]s
  WHERE status = 'Scheduled' AND owner_id = 0 AND execution_time <= now() AND message_type <> 'scheduled-envelope'
    AND (cardinality($1::text[]) = 0 OR received_at = ANY($1::text[]))
  ORDER BY execution_time
  LIMIT $2 FOR UPDATE SKIP LOCKED
), released AS (
  UPDATE %[1]s AS i SET status = 'Incoming' FROM due WHERE i.id = due.id RETURNING i.received_at
)
SELECT (SELECT count(*) FROM released),
  (SELECT EXTRACT(EPOCH FROM min(execution_time) - now())::float8 * 1000 FROM %[1]s
   WHERE status = 'Scheduled' AND owner_id = 0 AND execution_time > now()
     AND (cardinality($1::text[]) = 0 OR received_at = ANY($1::text[]))),
  (SELECT COALESCE(json_agg(DISTINCT received_at), '[]'::json)::text FROM released WHERE received_at IS NOT NULL)`, p.Inc)
}

func (p *postgres) DeadLetterIncoming() string {
	return moveToDeadLetters(p.Inc, p.DLQ, "execution_time", "COALESCE(attempts, 0)", "received_at")
}

// moveToDeadLetters renders the statement that moves rows of the envelope table src into the
// dead letters dlq, in one statement: ids and reasons come as arrays ($1 ids, $2 explanation,
// $3 exception_type, $4 exception_message, $5 exception_text, $6 source); executionTime,
// attempts and receivedAt are expressions over the moved row. A dead letter with the same id
// is replaced (the message failed again).
func moveToDeadLetters(src, dlq, executionTime, attempts, receivedAt string) string {
	return fmt.Sprintf(`WITH x AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
    AS x(id, explanation, exception_type, exception_message, exception_text, source)
), moved AS (
  DELETE FROM %[1]s e USING x WHERE e.id = x.id
  RETURNING e.*, x.explanation AS x_explanation, x.exception_type AS x_exception_type,
    x.exception_message AS x_exception_message, x.exception_text AS x_exception_text, x.source AS x_source
)
INSERT INTO %[2]s (id, execution_time, attempts, body, conversation_id, correlation_id, parent_id, saga_id,
  message_type, content_type, reply_requested, ack_requested, reply_uri, received_at, source, explanation,
  exception_text, exception_type, exception_message, message_uuid, headers)
SELECT id, %[3]s, %[4]s, body, conversation_id, correlation_id, parent_id, saga_id,
  message_type, content_type, reply_requested, ack_requested, reply_uri, %[5]s, x_source, x_explanation,
  x_exception_text, x_exception_type, x_exception_message, message_uuid, headers
FROM moved
ON CONFLICT (id) DO UPDATE SET execution_time = EXCLUDED.execution_time, attempts = EXCLUDED.attempts,
  body = EXCLUDED.body, received_at = EXCLUDED.received_at, source = EXCLUDED.source,
  explanation = EXCLUDED.explanation, exception_text = EXCLUDED.exception_text,
  exception_type = EXCLUDED.exception_type, exception_message = EXCLUDED.exception_message,
  headers = EXCLUDED.headers, "timestamp" = now(), replayable = false`, src, dlq, executionTime, attempts, receivedAt)
}

// Inbox and dead-letter middleware statements.

func (p *postgres) InsertHandled() string {
	return fmt.Sprintf(`INSERT INTO %s (%s, keep_until) VALUES (%s, now() + $%d::bigint * interval '1 millisecond')
ON CONFLICT (id) DO NOTHING`, p.Inc, p.incCols, strings.TrimSuffix(strings.TrimPrefix(pgValues(1, 1, len(row.IncomingColumns)), "("), ")"),
		len(row.IncomingColumns)+1)
}

func (p *postgres) MarkIncomingHandled() string {
	return fmt.Sprintf(`UPDATE %s SET status = 'Handled', keep_until = now() + $3::bigint * interval '1 millisecond',
  owner_id = 0, body = ''::bytea
WHERE id = $1 AND received_at = $2 AND status = 'Incoming'`, p.Inc)
}

func (p *postgres) IncomingStatus() string {
	return fmt.Sprintf(`SELECT status FROM %s WHERE id = $1 AND received_at = $2`, p.Inc)
}

func (p *postgres) DeleteExpiredHandled() string {
	return fmt.Sprintf(`DELETE FROM %[1]s WHERE id = ANY(ARRAY(
  SELECT id FROM %[1]s WHERE status = 'Handled' AND keep_until <= now()
  LIMIT $1 FOR UPDATE SKIP LOCKED))`, p.Inc)
}

// pgIncomingTypes are the PostgreSQL types of row.IncomingColumns, for casting bind values
// outside an INSERT's VALUES list (where the column types are not inferred).
var pgIncomingTypes = map[string]string{
	"id": "uuid", "owner_id": "integer", "attempts": "integer", "body": "bytea", "conversation_id": "uuid",
	"correlation_id": "varchar", "parent_id": "varchar", "saga_id": "varchar", "message_type": "varchar",
	"content_type": "varchar", "reply_requested": "varchar", "ack_requested": "boolean", "reply_uri": "varchar",
	"message_uuid": "text", "headers": "text", "received_at": "varchar", "status": "varchar",
	"execution_time": "timestamptz", "partition_key": "varchar",
}

func (p *postgres) InsertDeadLetter() string {
	casts := make([]string, len(row.IncomingColumns))
	for i, c := range row.IncomingColumns {
		t, ok := pgIncomingTypes[c]
		if !ok {
			panic("postgres dialect: no PostgreSQL type for incoming column " + c)
		}
		casts[i] = fmt.Sprintf("$%d::%s", i+1, t)
	}
	n := len(row.IncomingColumns)
	return fmt.Sprintf(`INSERT INTO %[1]s (id, execution_time, attempts, body, conversation_id, correlation_id, parent_id,
  saga_id, message_type, content_type, reply_requested, ack_requested, reply_uri, received_at, source, explanation,
  exception_text, exception_type, exception_message, message_uuid, headers)
SELECT id, execution_time, COALESCE(attempts, 0), body, conversation_id, correlation_id, parent_id, saga_id,
  message_type, content_type, reply_requested, ack_requested, reply_uri, received_at, $%[7]d::varchar,
  $%[3]d::varchar, $%[6]d::varchar, $%[4]d::varchar, $%[5]d::varchar, message_uuid, headers
FROM (VALUES (%[8]s)) AS v(%[2]s)
ON CONFLICT (id) DO UPDATE SET execution_time = EXCLUDED.execution_time, attempts = EXCLUDED.attempts,
  body = EXCLUDED.body, conversation_id = EXCLUDED.conversation_id, correlation_id = EXCLUDED.correlation_id,
  parent_id = EXCLUDED.parent_id, saga_id = EXCLUDED.saga_id, message_type = EXCLUDED.message_type,
  content_type = EXCLUDED.content_type, reply_requested = EXCLUDED.reply_requested,
  ack_requested = EXCLUDED.ack_requested, reply_uri = EXCLUDED.reply_uri, received_at = EXCLUDED.received_at,
  source = EXCLUDED.source, explanation = EXCLUDED.explanation, exception_text = EXCLUDED.exception_text,
  exception_type = EXCLUDED.exception_type, exception_message = EXCLUDED.exception_message,
  message_uuid = EXCLUDED.message_uuid, headers = EXCLUDED.headers, "timestamp" = now(), replayable = false`,
		p.DLQ, p.incCols, n+1, n+2, n+3, n+4, n+5, strings.Join(casts, ", "))
}

func (p *postgres) Savepoint() string { return `SAVEPOINT watermill_jasper_attempt` }
func (p *postgres) RollbackToSavepoint() string {
	return `ROLLBACK TO SAVEPOINT watermill_jasper_attempt`
}
func (p *postgres) ReleaseSavepoint() string { return `RELEASE SAVEPOINT watermill_jasper_attempt` }

func (p *postgres) DeleteHandledMark() string {
	return fmt.Sprintf(`DELETE FROM %s WHERE id = $1 AND status = 'Handled'`, p.Inc)
}
