package row

import (
	"database/sql"
	"time"

	"github.com/google/uuid"
)

// UUIDCodec converts UUIDs for a driver: PostgreSQL takes the text form, SQL Server needs
// go-mssqldb's UniqueIdentifier (mixed byte order). each store dialect provides one.
type UUIDCodec interface {
	// Arg is the bind value for u.
	Arg(u uuid.UUID) any
	// Dest is a scan destination that stores into u (NULL leaves the zero UUID).
	Dest(u *uuid.UUID) any
}

// Scanner is a row being read (database.Rows).
type Scanner interface{ Scan(dest ...any) error }

// Columns shared by both envelope tables, in bind and scan order.
var sharedColumns = []string{
	"id", "owner_id", "attempts", "body", "conversation_id", "correlation_id", "parent_id",
	"saga_id", "message_type", "content_type", "reply_requested", "ack_requested", "reply_uri",
	"message_uuid", "headers", "partition_key",
}

// OutgoingColumns are the columns OutgoingArgs binds, in order.
var OutgoingColumns = append(append([]string(nil), sharedColumns...), "destination", "deliver_by")

// ClaimedOutgoingColumns are the columns the outgoing claims return and ScanClaimedOutgoing
// reads, in order: OutgoingColumns, then timestamp (Envelope.WrittenAt). The names are
// unquoted: "timestamp" is a keyword in both dialects, so quote them as the dialect does.
var ClaimedOutgoingColumns = append(append([]string(nil), OutgoingColumns...), "timestamp")

// IncomingColumns are the columns IncomingArgs binds and ScanIncoming reads, in order.
var IncomingColumns = append(append([]string(nil), sharedColumns...), "received_at", "status", "execution_time")

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullTime(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UTC()
}

func (e *Envelope) sharedArgs(c UUIDCodec) []any {
	var conv any
	if e.ConversationID != nil {
		conv = c.Arg(*e.ConversationID)
	}
	var headers any
	if e.Headers != nil {
		headers = string(e.Headers)
	}
	return []any{
		c.Arg(e.ID), e.OwnerID, e.Attempts, e.Body, conv, nullString(e.CorrelationID), nullString(e.ParentID),
		nullString(e.SagaID), e.MessageType, nullString(e.ContentType), nullString(e.ReplyRequested), e.AckRequested,
		nullString(e.ReplyURI), nullString(e.MessageUUID), headers, nullString(e.PartitionKey),
	}
}

// OutgoingArgs appends the bind values of OutgoingColumns to args.
func (e *Envelope) OutgoingArgs(args []any, c UUIDCodec) []any {
	return append(append(args, e.sharedArgs(c)...), e.Destination, nullTime(e.DeliverBy))
}

// IncomingArgs appends the bind values of IncomingColumns to args.
func (e *Envelope) IncomingArgs(args []any, c UUIDCodec) []any {
	return append(append(args, e.sharedArgs(c)...), nullString(e.Destination), e.Status, nullTime(e.ExecutionTime))
}

type scanned struct {
	conv                                               uuid.UUID
	corr, parent, saga, ctype, replyReq, replyURI, mid sql.NullString
	headers, dest, partition                           sql.NullString
	attempts                                           sql.NullInt64
	ack                                                sql.NullBool
}

func (e *Envelope) sharedDests(s *scanned, c UUIDCodec) []any {
	return []any{
		c.Dest(&e.ID), &e.OwnerID, &s.attempts, &e.Body, c.Dest(&s.conv), &s.corr, &s.parent, &s.saga,
		&e.MessageType, &s.ctype, &s.replyReq, &s.ack, &s.replyURI, &s.mid, &s.headers, &s.partition,
	}
}

func (e *Envelope) finish(s *scanned) {
	if s.conv != uuid.Nil {
		id := s.conv
		e.ConversationID = &id
	}
	e.Attempts = int(s.attempts.Int64)
	e.CorrelationID, e.ParentID, e.SagaID = s.corr.String, s.parent.String, s.saga.String
	e.ContentType, e.ReplyRequested, e.ReplyURI = s.ctype.String, s.replyReq.String, s.replyURI.String
	e.AckRequested = s.ack.Bool
	e.MessageUUID = s.mid.String
	e.PartitionKey = s.partition.String
	e.Destination = s.dest.String
	if s.headers.Valid {
		e.Headers = []byte(s.headers.String)
	}
	if e.Body == nil {
		e.Body = []byte{}
	}
}

// ScanClaimedOutgoing reads one row selected with ClaimedOutgoingColumns.
func ScanClaimedOutgoing(r Scanner, c UUIDCodec) (Envelope, error) {
	var e Envelope
	var deliverBy, written sql.NullTime
	err := e.scan(r, c, &deliverBy, &written)
	e.DeliverBy, e.WrittenAt = utcTime(deliverBy), utcTime(written)
	return e, err
}

// ScanIncoming reads one row selected with IncomingColumns.
func ScanIncoming(r Scanner, c UUIDCodec) (Envelope, error) {
	var e Envelope
	var exec sql.NullTime
	err := e.scan(r, c, &e.Status, &exec)
	e.ExecutionTime = utcTime(exec)
	return e, err
}

// scan reads the shared columns, the destination (or received_at), then the table's own
// columns into more; on error e is left zero.
func (e *Envelope) scan(r Scanner, c UUIDCodec, more ...any) error {
	var s scanned
	if err := r.Scan(append(append(e.sharedDests(&s, c), &s.dest), more...)...); err != nil {
		*e = Envelope{}
		return err
	}
	e.finish(&s)
	return nil
}

// utcTime is t in UTC, or nil when it is NULL.
func utcTime(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}
