package sqldialect

import (
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

type pgUUIDs struct{}

func (pgUUIDs) Arg(u uuid.UUID) any   { return u.String() }
func (pgUUIDs) Dest(u *uuid.UUID) any { return u }

type postgres struct {
	cfg                           schema.Config
	out, inc, dlq                 string
	outCols, incCols              string
	claimOut, deleteOut           string
	releaseOutFailed, releaseOut  string
	deadLetterOut, notifyOut, chn string
	insertOutCache                [8]string
}

func newPostgres(cfg schema.Config) *postgres {
	p := &postgres{
		cfg:     cfg,
		out:     cfg.Qualified(schema.OutgoingTable),
		inc:     cfg.Qualified(schema.IncomingTable),
		dlq:     cfg.Qualified(schema.DeadLetterTable),
		outCols: strings.Join(row.OutgoingColumns, ", "),
		incCols: strings.Join(row.IncomingColumns, ", "),
	}
	// The channel name is an identifier: validated schema name, folded to lower case.
	p.chn = "jasper_outgoing_" + cfg.Schema
	p.notifyOut = fmt.Sprintf("SELECT pg_notify('%s', '')", p.chn)
	p.claimOut = fmt.Sprintf(`UPDATE %[1]s SET owner_id = $1 WHERE id IN (
  SELECT id FROM %[1]s
  WHERE owner_id = 0 AND NOT (destination = ANY($2::text[]))
    AND (cardinality($3::text[]) = 0 OR destination = ANY($3::text[]))
  LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING %[2]s`, p.out, p.outCols)
	p.deleteOut = fmt.Sprintf(`DELETE FROM %s WHERE id = ANY($1::uuid[])`, p.out)
	p.releaseOutFailed = fmt.Sprintf(`UPDATE %s SET owner_id = 0, attempts = COALESCE(attempts, 0) + 1 WHERE id = ANY($1::uuid[])`, p.out)
	p.releaseOut = fmt.Sprintf(`UPDATE %s SET owner_id = 0 WHERE id = ANY($1::uuid[]) AND owner_id = $2`, p.out)
	p.deadLetterOut = fmt.Sprintf(`WITH x AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
    AS x(id, explanation, exception_type, exception_message, exception_text, source)
), moved AS (
  DELETE FROM %[1]s o USING x WHERE o.id = x.id
  RETURNING o.*, x.explanation AS x_explanation, x.exception_type AS x_exception_type,
    x.exception_message AS x_exception_message, x.exception_text AS x_exception_text, x.source AS x_source
)
INSERT INTO %[2]s (id, attempts, body, conversation_id, correlation_id, parent_id, saga_id, message_type,
  content_type, reply_requested, ack_requested, reply_uri, received_at, source, explanation, exception_text,
  exception_type, exception_message, message_uuid, headers)
SELECT id, COALESCE(attempts, 0) + 1, body, conversation_id, correlation_id, parent_id, saga_id, message_type,
  content_type, reply_requested, ack_requested, reply_uri, destination, x_source, x_explanation, x_exception_text,
  x_exception_type, x_exception_message, message_uuid, headers
FROM moved
ON CONFLICT (id) DO UPDATE SET attempts = EXCLUDED.attempts, body = EXCLUDED.body, received_at = EXCLUDED.received_at,
  source = EXCLUDED.source, explanation = EXCLUDED.explanation, exception_text = EXCLUDED.exception_text,
  exception_type = EXCLUDED.exception_type, exception_message = EXCLUDED.exception_message,
  headers = EXCLUDED.headers, "timestamp" = now(), replayable = false`, p.out, p.dlq)
	for i := range p.insertOutCache {
		p.insertOutCache[i] = p.buildInsertOutgoing(i + 1)
	}
	return p
}

func (p *postgres) Name() database.Dialect { return database.Postgres }
func (p *postgres) Schema() schema.Config  { return p.cfg }
func (p *postgres) UUIDs() row.UUIDCodec   { return pgUUIDs{} }
func (p *postgres) StringList(s []string) any {
	if s == nil {
		return []string{}
	}
	return s
}

func (p *postgres) IDList(ids []uuid.UUID) any {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

func values(first, n, width int) string {
	var b strings.Builder
	arg := first
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := 0; j < width; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "$%d", arg)
			arg++
		}
		b.WriteByte(')')
	}
	return b.String()
}

func (p *postgres) buildInsertOutgoing(n int) string {
	return fmt.Sprintf("INSERT INTO %s (%s) VALUES %s ON CONFLICT (id) DO NOTHING", p.out, p.outCols, values(1, n, len(row.OutgoingColumns)))
}

func (p *postgres) InsertOutgoing(n int) string {
	if n <= len(p.insertOutCache) {
		return p.insertOutCache[n-1]
	}
	return p.buildInsertOutgoing(n)
}

func (p *postgres) NotifyOutgoing() string        { return p.notifyOut }
func (p *postgres) OutgoingChannel() string       { return p.chn }
func (p *postgres) ClaimOutgoing() string         { return p.claimOut }
func (p *postgres) DeleteOutgoing() string        { return p.deleteOut }
func (p *postgres) ReleaseOutgoingFailed() string { return p.releaseOutFailed }
func (p *postgres) ReleaseOutgoing() string       { return p.releaseOut }
func (p *postgres) DeadLetterOutgoing() string    { return p.deadLetterOut }
