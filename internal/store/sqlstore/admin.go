package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// AdminStatements are the statements of the administration tools (package admin, the CLI),
// read through Dialect.Admin. Base renders the statements on whole tables (Counts, the
// releases and the clears); the dialect the dead-letter ones.
type AdminStatements struct {
	// Counts returns rows of (kind bigint, name text, owner_id int, rows bigint): kind
	// CountIncomingStatus (name = status), CountOutgoingDestination (name = destination),
	// CountDeadLetters, CountIncomingOwner and CountOutgoingOwner (owner_id). Args: none.
	Counts string
	// Ages returns rows of (kind bigint, name text, topic text, rows bigint, oldest
	// timestamp): kind CountIncomingStatus (name = status, topic = received_at or '') or
	// CountOutgoingDestination (name = destination, topic ''); oldest is the earliest
	// timestamp of the group (NULL when none is set). Args: none.
	Ages string
	// ReleaseAllIncoming and ReleaseAllOutgoing set owner_id to $1 on every row whose
	// owner_id differs. Affected rows: the rows changed. Args: owner int.
	ReleaseAllIncoming, ReleaseAllOutgoing string
	// ClearOutgoing, ClearIncoming and ClearDeadLetters delete every row of a table.
	ClearOutgoing, ClearIncoming, ClearDeadLetters string

	// The dead-letter statements take lists of dead-letter ids as Dialect.StringList.

	// CountDeadLetters returns one row: the count of dead letters of topic $1 ('' any), ids
	// $2 (empty any) and written more than $3 milliseconds ago (0 any age).
	CountDeadLetters string
	// ListDeadLetters returns DeadLetterColumns without body, then the body's length, of
	// dead letters of topic $1 ('' any), newest first, at most $2 (NULL: all).
	ListDeadLetters string
	// GetDeadLetter returns DeadLetterColumns of the dead letter with id $1 (text).
	GetDeadLetter string
	// PageDeadLetters returns DeadLetterColumns of up to $4 dead letters with an id after
	// $1 (text, NULL: from the first), ids $2 (empty any), topic $3 ('' any), ordered by id.
	PageDeadLetters string
	// DeleteDeadLetters deletes dead letters by id. Args: ids. Affected rows.
	DeleteDeadLetters string
	// ReplayDeadLetters moves the dead letters PageDeadLetters selects ($1..$4) to the
	// incoming table as unowned Incoming envelopes of topic $5 ('' their own received_at),
	// without the delivery headers (row.DeliveryKeys), and returns one row per dead letter
	// looked at: id (text), moved (boolean), received_at of the moved row (text, '' if not).
	ReplayDeadLetters string
	// PurgeDeadLetters deletes up to $3 dead letters written more than $1 milliseconds ago
	// (0 any age) of topic $2 ('' any). Affected rows.
	PurgeDeadLetters string
}

// Kinds of the rows of AdminStatements.Counts (its first column).
const (
	CountIncomingStatus      = 1
	CountOutgoingDestination = 2
	CountDeadLetters         = 3
	CountIncomingOwner       = 4
	CountOutgoingOwner       = 5
)

// DeadLetterColumns are the columns GetDeadLetter and PageDeadLetters read, in order (the
// body last); ListDeadLetters reads all but the body, then its length.
var DeadLetterColumns = []string{
	"id", "received_at", "source", "message_type", "content_type", "explanation", "exception_type",
	"exception_message", "exception_text", "attempts", "execution_time", "timestamp", "replayable",
	"message_uuid", "correlation_id", "parent_id", "saga_id", "reply_uri", "reply_requested",
	"conversation_id", "ack_requested", "headers", "body",
}

// Counts counts the rows of the three tables.
func (o *ops) Counts(ctx context.Context) (store.Counts, error) {
	c := store.Counts{
		IncomingByStatus: map[string]int64{}, OutgoingByDestination: map[string]int64{},
		IncomingByOwner: map[int32]int64{}, OutgoingByOwner: map[int32]int64{},
	}
	rows, err := o.query(ctx, o.d.Admin().Counts)
	if err != nil {
		return c, err
	}
	for rows.Next() {
		var kind, owner, n int64
		var name string
		if err := rows.Scan(&kind, &name, &owner, &n); err != nil {
			_ = rows.Close()
			return c, err
		}
		switch kind {
		case CountIncomingStatus:
			c.IncomingByStatus[name] = n
		case CountOutgoingDestination:
			c.OutgoingByDestination[name] = n
		case CountDeadLetters:
			c.DeadLetters = n
		case CountIncomingOwner:
			c.IncomingByOwner[int32(owner)] = n
		case CountOutgoingOwner:
			c.OutgoingByOwner[int32(owner)] = n
		}
	}
	return c, rows.Close()
}

// Ages counts the incoming rows by status and topic and the outgoing rows by destination,
// with the oldest timestamp of each group.
func (o *ops) Ages(ctx context.Context) (store.Ages, error) {
	var a store.Ages
	rows, err := o.query(ctx, o.d.Admin().Ages)
	if err != nil {
		return a, err
	}
	for rows.Next() {
		var kind, n int64
		var name, topic string
		var oldest sql.NullTime
		if err := rows.Scan(&kind, &name, &topic, &n, &oldest); err != nil {
			_ = rows.Close()
			return a, err
		}
		g := store.AgeGroup{Name: name, Topic: topic, Rows: n}
		if oldest.Valid {
			t := oldest.Time
			g.Oldest = &t
		}
		switch kind {
		case CountIncomingStatus:
			a.Incoming = append(a.Incoming, g)
		case CountOutgoingDestination:
			a.Outgoing = append(a.Outgoing, g)
		}
	}
	return a, rows.Close()
}

// ReleaseAll sets owner_id to 0 on every incoming and outgoing row, in one transaction.
func (o *ops) ReleaseAll(ctx context.Context) (incoming, outgoing int64, err error) {
	err = o.inTx(ctx, func(o *ops) error {
		var err error
		if incoming, err = o.exec(ctx, o.d.Admin().ReleaseAllIncoming, 0); err != nil {
			return err
		}
		outgoing, err = o.exec(ctx, o.d.Admin().ReleaseAllOutgoing, 0)
		return err
	})
	return incoming, outgoing, err
}

// ClearAll deletes every row of the three tables, in one transaction.
func (o *ops) ClearAll(ctx context.Context) (store.Cleared, error) {
	var r store.Cleared
	err := o.inTx(ctx, func(o *ops) error {
		var err error
		if r.Outgoing, err = o.exec(ctx, o.d.Admin().ClearOutgoing); err != nil {
			return err
		}
		if r.Incoming, err = o.exec(ctx, o.d.Admin().ClearIncoming); err != nil {
			return err
		}
		r.DeadLetters, err = o.exec(ctx, o.d.Admin().ClearDeadLetters)
		return err
	})
	return r, err
}

// ListDeadLetters returns dead letters newest first, without bodies.
func (o *ops) ListDeadLetters(ctx context.Context, topic string, limit int) ([]row.DeadLetter, error) {
	var l any = limit
	if limit < 0 {
		l = nil // LIMIT NULL: all
	}
	rows, err := o.query(ctx, o.d.Admin().ListDeadLetters, topic, l)
	if err != nil {
		return nil, err
	}
	return scanDeadLetters(rows, false)
}

// CountDeadLetters counts dead letters.
func (o *ops) CountDeadLetters(ctx context.Context, sel store.Selection, olderThan time.Duration) (int64, error) {
	var n int64
	args := o.selection(nil, sel)[1:] // ids, topic
	err := o.row(ctx, o.d.Admin().CountDeadLetters, []any{sel.Topic, args[0], millis(olderThan)}, &n)
	return n, err
}

// GetDeadLetter returns one dead letter with its body.
func (o *ops) GetDeadLetter(ctx context.Context, id uuid.UUID) (row.DeadLetter, bool, error) {
	rows, err := o.query(ctx, o.d.Admin().GetDeadLetter, id.String())
	if err != nil {
		return row.DeadLetter{}, false, err
	}
	out, err := scanDeadLetters(rows, true)
	if err != nil || len(out) == 0 {
		return row.DeadLetter{}, false, err
	}
	return out[0], true, nil
}

func (o *ops) selection(after *uuid.UUID, sel store.Selection) []any {
	var a any
	if after != nil {
		a = after.String()
	}
	ids := make([]string, len(sel.IDs))
	for i, id := range sel.IDs {
		ids[i] = id.String()
	}
	return []any{a, o.d.StringList(ids), sel.Topic}
}

// PageDeadLetters returns a page of dead letters by id, with their bodies.
func (o *ops) PageDeadLetters(ctx context.Context, p store.PageParams) ([]row.DeadLetter, error) {
	rows, err := o.query(ctx, o.d.Admin().PageDeadLetters, append(o.selection(p.After, p.Sel), p.Limit)...)
	if err != nil {
		return nil, err
	}
	return scanDeadLetters(rows, true)
}

// DeleteDeadLetters deletes dead letters by id.
func (o *ops) DeleteDeadLetters(ctx context.Context, ids []uuid.UUID) (int64, error) {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.String()
	}
	return o.exec(ctx, o.d.Admin().DeleteDeadLetters, o.d.StringList(s))
}

// ReplayToIncoming moves a page of dead letters back to the incoming table.
func (o *ops) ReplayToIncoming(ctx context.Context, p store.ReplayParams) ([]store.Replayed, error) {
	rows, err := o.query(ctx, o.d.Admin().ReplayDeadLetters, append(o.selection(p.After, p.Sel), p.Limit, p.Topic)...)
	if err != nil {
		return nil, err
	}
	var out []store.Replayed
	for rows.Next() {
		var r store.Replayed
		var id string
		if err := rows.Scan(&id, &r.Moved, &r.Topic); err != nil {
			_ = rows.Close()
			return out, err
		}
		if r.ID, err = uuid.Parse(id); err != nil {
			_ = rows.Close()
			return out, err
		}
		out = append(out, r)
	}
	return out, rows.Close()
}

// PurgeDeadLetters deletes a batch of dead letters.
func (o *ops) PurgeDeadLetters(ctx context.Context, topic string, olderThan time.Duration, limit int) (int64, error) {
	return o.exec(ctx, o.d.Admin().PurgeDeadLetters, millis(olderThan), topic, limit)
}

// millis is d in whole milliseconds, at least 1 when d is positive.
func millis(d time.Duration) int64 {
	ms := d.Milliseconds()
	if d > 0 && ms == 0 {
		ms = 1
	}
	return ms
}

// deadLetterScan holds the nullable columns of a dead letter while it is read.
type deadLetterScan struct {
	receivedAt, source, messageType, contentType, explanation, excType, excMessage, excText sql.NullString
	messageUUID, corr, parent, saga, replyURI, replyReq, headers                            sql.NullString
	conv                                                                                    uuid.NullUUID
	attempts                                                                                sql.NullInt64
	execTime, timestamp                                                                     sql.NullTime
	replayable, ack                                                                         sql.NullBool
	bodySize                                                                                sql.NullInt64
}

func (s *deadLetterScan) dests(d *row.DeadLetter, withBody bool) []any {
	dests := []any{
		&d.ID, &s.receivedAt, &s.source, &s.messageType, &s.contentType, &s.explanation, &s.excType,
		&s.excMessage, &s.excText, &s.attempts, &s.execTime, &s.timestamp, &s.replayable,
		&s.messageUUID, &s.corr, &s.parent, &s.saga, &s.replyURI, &s.replyReq,
		&s.conv, &s.ack, &s.headers,
	}
	if withBody {
		return append(dests, &d.Body)
	}
	return append(dests, &s.bodySize)
}

func (s *deadLetterScan) finish(d *row.DeadLetter, withBody bool) {
	d.ReceivedAt, d.Source, d.MessageType, d.ContentType = s.receivedAt.String, s.source.String, s.messageType.String, s.contentType.String
	d.Explanation, d.ExceptionType, d.ExceptionMessage, d.ExceptionText = s.explanation.String, s.excType.String, s.excMessage.String, s.excText.String
	d.Attempts = int(s.attempts.Int64)
	if s.execTime.Valid {
		t := s.execTime.Time.UTC()
		d.ExecutionTime = &t
	}
	if s.timestamp.Valid {
		t := s.timestamp.Time.UTC()
		d.Timestamp = &t
	}
	d.Replayable, d.AckRequested = s.replayable.Bool, s.ack.Bool
	d.MessageUUID, d.CorrelationID, d.ParentID, d.SagaID = s.messageUUID.String, s.corr.String, s.parent.String, s.saga.String
	d.ReplyURI, d.ReplyRequested = s.replyURI.String, s.replyReq.String
	if s.conv.Valid {
		conv := s.conv.UUID
		d.ConversationID = &conv
	}
	if s.headers.Valid {
		if err := json.Unmarshal([]byte(s.headers.String), &d.Headers); err != nil {
			d.Headers, d.HeadersError = nil, err.Error()
		}
	}
	if withBody {
		if d.Body == nil {
			d.Body = []byte{}
		}
		d.BodySize = len(d.Body)
	} else {
		d.BodySize = int(s.bodySize.Int64)
	}
}

func scanDeadLetters(rows dbx.Rows, withBody bool) ([]row.DeadLetter, error) {
	var out []row.DeadLetter
	for rows.Next() {
		var d row.DeadLetter
		var s deadLetterScan
		if err := rows.Scan(s.dests(&d, withBody)...); err != nil {
			_ = rows.Close()
			return nil, err
		}
		s.finish(&d, withBody)
		out = append(out, d)
	}
	return out, rows.Close()
}
