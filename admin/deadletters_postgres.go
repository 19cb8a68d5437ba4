package admin

import (
	"fmt"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/schema"
)

// deadLetterStatements is the SQL of the dead-letter tools for one schema.
type deadLetterStatements struct {
	// count: args topic ('' = all), ids (uuid[], empty = all), older-than milliseconds (0 = any
	// age). One row: count.
	count string
	// list: args topic, limit. Rows: deadLetterColumns without body, then length(body).
	list string
	// get: args id. One row: deadLetterColumns.
	get string
	// page: args after id, ids, topic, limit. Rows: deadLetterColumns, ordered by id.
	page string
	// deleteIDs: args ids. Affected: deleted.
	deleteIDs string
	// toIncoming: args after id, ids, topic, limit, topic override ('' = none).
	// Rows: id, moved (bool), received_at of the moved row ('' if not moved).
	toIncoming string
	// purge: args older-than milliseconds (0 = any age), topic, limit. Affected: deleted.
	purge string
	// idList is the bind value of a list of ids given as strings (text[] on PostgreSQL, a
	// JSON array on SQL Server).
	idList func(ids []string) any
}

// deadLetterColumns is what Get and page read, in order (see scanDeadLetter).
var deadLetterColumns = []string{
	"id", "received_at", "source", "message_type", "content_type", "explanation", "exception_type",
	"exception_message", "exception_text", "attempts", "execution_time", `"timestamp"`, "replayable",
	"message_uuid", "correlation_id", "parent_id", "saga_id", "reply_uri", "reply_requested",
	"conversation_id", "ack_requested", "headers", "body",
}

// deliveryKeys are metadata keys describing one delivery or one failure, not the message:
// they are dropped from the headers of a replayed dead letter.
var deliveryKeys = []string{
	"jasper_envelope_id", "jasper_attempts",
	"reason_poisoned", "topic_poisoned", "handler_poisoned", "subscriber_poisoned",
}

func postgresDeadLetterStatements(cfg schema.Config) deadLetterStatements {
	inc := cfg.Qualified(schema.IncomingTable)
	dlq := cfg.Qualified(schema.DeadLetterTable)
	cols := strings.Join(deadLetterColumns, ", ")
	listCols := strings.Join(deadLetterColumns[:len(deadLetterColumns)-1], ", ") + ", length(body)"
	keys := "ARRAY['" + strings.Join(deliveryKeys, "', '") + "']"
	const sel = `(cardinality($2::uuid[]) = 0 OR id = ANY($2::uuid[])) AND ($3::text = '' OR received_at = $3::text)`
	return deadLetterStatements{
		idList: func(ids []string) any {
			if ids == nil {
				return []string{}
			}
			return ids
		},
		count: fmt.Sprintf(`SELECT count(*) FROM %s WHERE ($1::text = '' OR received_at = $1::text)
  AND (cardinality($2::uuid[]) = 0 OR id = ANY($2::uuid[]))
  AND ($3::bigint = 0 OR COALESCE("timestamp", '-infinity') < now() - $3::bigint * interval '1 millisecond')`, dlq),
		list: fmt.Sprintf(`SELECT %s FROM %s WHERE ($1::text = '' OR received_at = $1::text)
ORDER BY "timestamp" DESC NULLS LAST, id LIMIT $2`, listCols, dlq),
		get:       fmt.Sprintf(`SELECT %s FROM %s WHERE id = $1`, cols, dlq),
		page:      fmt.Sprintf(`SELECT %s FROM %s WHERE ($1::uuid IS NULL OR id > $1::uuid) AND %s ORDER BY id LIMIT $4`, cols, dlq, sel),
		deleteIDs: fmt.Sprintf(`DELETE FROM %s WHERE id = ANY($1::uuid[])`, dlq),
		// Wolverine's replay (jasper-spec §8), by id: the dead letter becomes an Incoming,
		// unowned envelope of its topic with no attempts, and leaves the dead letters; a
		// dead letter whose id is in the incoming table already stays where it is.
		toIncoming: fmt.Sprintf(`WITH src AS (
  SELECT * FROM %[2]s WHERE ($1::uuid IS NULL OR id > $1::uuid) AND %[4]s ORDER BY id LIMIT $4 FOR UPDATE
), ins AS (
  INSERT INTO %[1]s (id, status, owner_id, execution_time, attempts, body, conversation_id, correlation_id,
    parent_id, saga_id, message_type, content_type, reply_requested, ack_requested, reply_uri, received_at,
    message_uuid, headers)
  SELECT id, 'Incoming', 0, NULL, 0, body, conversation_id, correlation_id, parent_id, saga_id, message_type,
    content_type, reply_requested, ack_requested, reply_uri, COALESCE(NULLIF($5::text, ''), received_at),
    message_uuid, CASE WHEN headers IS NULL THEN NULL ELSE (headers::jsonb - %[3]s::text[])::text END
  FROM src WHERE COALESCE(NULLIF($5::text, ''), received_at) IS NOT NULL
  ON CONFLICT (id) DO NOTHING
  RETURNING id, received_at
), del AS (
  DELETE FROM %[2]s d USING ins WHERE d.id = ins.id RETURNING d.id
)
SELECT s.id, ins.id IS NOT NULL, COALESCE(ins.received_at, '') FROM src s LEFT JOIN ins ON ins.id = s.id ORDER BY s.id`,
			inc, dlq, keys, sel),
		purge: fmt.Sprintf(`DELETE FROM %[1]s WHERE id = ANY(ARRAY(
  SELECT id FROM %[1]s
  WHERE ($1::bigint = 0 OR COALESCE("timestamp", '-infinity') < now() - $1::bigint * interval '1 millisecond')
    AND ($2::text = '' OR received_at = $2::text)
  LIMIT $3 FOR UPDATE SKIP LOCKED))`, dlq),
	}
}
