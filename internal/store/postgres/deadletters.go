package postgres

import (
	"fmt"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// deadLetterStatements are the statements of the dead-letter tools.
func (p *postgres) deadLetterStatements() sqlstore.AdminStatements {
	quoted := make([]string, len(sqlstore.DeadLetterColumns))
	for i, c := range sqlstore.DeadLetterColumns {
		quoted[i] = `"` + c + `"`
	}
	cols := strings.Join(quoted, ", ")
	listCols := strings.Join(quoted[:len(quoted)-1], ", ") + ", length(body)"
	keys := "ARRAY['" + strings.Join(row.DeliveryKeys, "', '") + "']"
	const sel = `(cardinality($2::uuid[]) = 0 OR id = ANY($2::uuid[])) AND ($3::text = '' OR received_at = $3::text)`
	inc, dlq := p.Inc, p.DLQ
	return sqlstore.AdminStatements{
		CountDeadLetters: fmt.Sprintf(`SELECT count(*) FROM %s WHERE ($1::text = '' OR received_at = $1::text)
  AND (cardinality($2::uuid[]) = 0 OR id = ANY($2::uuid[]))
  AND ($3::bigint = 0 OR COALESCE("timestamp", '-infinity') < now() - $3::bigint * interval '1 millisecond')`, dlq),
		ListDeadLetters: fmt.Sprintf(`SELECT %s FROM %s WHERE ($1::text = '' OR received_at = $1::text)
ORDER BY "timestamp" DESC NULLS LAST, id LIMIT $2`, listCols, dlq),
		GetDeadLetter:     fmt.Sprintf(`SELECT %s FROM %s WHERE id = $1`, cols, dlq),
		PageDeadLetters:   fmt.Sprintf(`SELECT %s FROM %s WHERE ($1::uuid IS NULL OR id > $1::uuid) AND %s ORDER BY id LIMIT $4`, cols, dlq, sel),
		DeleteDeadLetters: fmt.Sprintf(`DELETE FROM %s WHERE id = ANY($1::uuid[])`, dlq),
		// Wolverine's replay, by id: the dead letter becomes an Incoming,
		// unowned envelope of its topic with no attempts, and leaves the dead letters; a
		// dead letter whose id is in the incoming table already stays where it is.
		ReplayDeadLetters: fmt.Sprintf(`WITH src AS (
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
		PurgeDeadLetters: fmt.Sprintf(`DELETE FROM %[1]s WHERE id = ANY(ARRAY(
  SELECT id FROM %[1]s
  WHERE ($1::bigint = 0 OR COALESCE("timestamp", '-infinity') < now() - $1::bigint * interval '1 millisecond')
    AND ($2::text = '' OR received_at = $2::text)
  LIMIT $3 FOR UPDATE SKIP LOCKED))`, dlq),
	}
}
