package admin

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Dead-letter tools: list, show, replay and purge the rows of jasper_dead_letters, whoever
// wrote them (the dead-letter middleware, the forwarder, the subscriber, or .NET Jasper,
// whose rows have no message_uuid or headers). PostgreSQL and SQL Server.

// ErrDeadLetterNotFound is wrapped by GetDeadLetter's error when no dead letter has the id.
var ErrDeadLetterNotFound = errors.New("watermill-jasper: no such dead letter")

// DeadLetter is one row of jasper_dead_letters; Message rebuilds the message it holds.
type DeadLetter = row.DeadLetter

// deadLetterTools resolves the config and statements.
func deadLetterTools(db database.DB, cfg schema.Config) (schema.Config, deadLetterStatements, error) {
	cfg, err := resolve(db, cfg)
	if err != nil {
		return cfg, deadLetterStatements{}, err
	}
	if cfg.Dialect == schema.SQLServer {
		return cfg, sqlserverDeadLetterStatements(cfg), nil
	}
	return cfg, postgresDeadLetterStatements(cfg), nil
}

// wrapDL is wrap, also explaining a missing extension column (a database Jasper created,
// not migrated yet).
func wrapDL(op string, cfg schema.Config, err error) error {
	var pgErr *pgconn.PgError
	var msErr interface{ SQLErrorNumber() int32 } // go-mssqldb: 207 invalid column name
	if (errors.As(err, &pgErr) && pgErr.Code == "42703") || (errors.As(err, &msErr) && msErr.SQLErrorNumber() == 207) {
		return fmt.Errorf("watermill-jasper: %s in schema %s: a column this library adds is missing; add it with `watermill-jasper schema migrate` (Jasper's rows are kept): %w", op, cfg.Schema, err)
	}
	return wrap(op, cfg, err)
}

type deadLetterScan struct {
	receivedAt, source, messageType, contentType, explanation, excType, excMessage, excText sql.NullString
	messageUUID, corr, parent, saga, replyURI, replyReq, headers                            sql.NullString
	attempts                                                                                sql.NullInt64
	execTime, timestamp                                                                     sql.NullTime
	replayable, ack                                                                         sql.NullBool
	conv                                                                                    uuid.NullUUID
	bodySize                                                                                sql.NullInt64
}

// dests returns the scan destinations of deadLetterColumns (withBody) or of the list
// columns (body replaced by its length).
func (s *deadLetterScan) dests(d *DeadLetter, withBody bool) []any {
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

func (s *deadLetterScan) finish(d *DeadLetter, withBody bool) {
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
		id := s.conv.UUID
		d.ConversationID = &id
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

func scanDeadLetters(rows database.Rows, withBody bool) ([]DeadLetter, error) {
	var out []DeadLetter
	for rows.Next() {
		var d DeadLetter
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

// ListOptions selects the dead letters ListDeadLetters returns.
type ListOptions struct {
	// Topic keeps only dead letters received on this topic (received_at); "" keeps all.
	Topic string
	// Limit is the most rows returned. Default 100; negative: no limit.
	Limit int
}

// ListDeadLetters returns dead letters, newest first (by timestamp), without their bodies
// (DeadLetter.BodySize is set).
func ListDeadLetters(ctx context.Context, db database.DB, cfg schema.Config, opts ListOptions) ([]DeadLetter, error) {
	cfg, st, err := deadLetterTools(db, cfg)
	if err != nil {
		return nil, err
	}
	var limit any = opts.Limit
	switch {
	case opts.Limit == 0:
		limit = 100
	case opts.Limit < 0:
		limit = nil // LIMIT NULL: all
	}
	rows, err := db.Query(ctx, st.list, opts.Topic, limit)
	if err != nil {
		return nil, wrapDL("list dead letters", cfg, err)
	}
	out, err := scanDeadLetters(rows, false)
	if err != nil {
		return nil, wrapDL("list dead letters", cfg, err)
	}
	return out, nil
}

// CountDeadLetters returns how many dead letters were received on topic ("" = any) and
// written more than olderThan ago (0 = any age; rows without a timestamp count as old).
func CountDeadLetters(ctx context.Context, db database.DB, cfg schema.Config, topic string, olderThan time.Duration) (int64, error) {
	cfg, st, err := deadLetterTools(db, cfg)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := database.QueryRow(ctx, db, st.count, []any{topic, st.idList(nil), millis(olderThan)}, &n); err != nil {
		return 0, wrapDL("count dead letters", cfg, err)
	}
	return n, nil
}

// GetDeadLetter returns one dead letter with its body. The error wraps
// ErrDeadLetterNotFound when there is none with that id.
func GetDeadLetter(ctx context.Context, db database.DB, cfg schema.Config, id uuid.UUID) (DeadLetter, error) {
	cfg, st, err := deadLetterTools(db, cfg)
	if err != nil {
		return DeadLetter{}, err
	}
	rows, err := db.Query(ctx, st.get, id.String())
	if err != nil {
		return DeadLetter{}, wrapDL("read dead letter", cfg, err)
	}
	out, err := scanDeadLetters(rows, true)
	if err != nil {
		return DeadLetter{}, wrapDL("read dead letter", cfg, err)
	}
	if len(out) == 0 {
		return DeadLetter{}, fmt.Errorf("%w: %s in schema %s", ErrDeadLetterNotFound, id, cfg.Schema)
	}
	return out[0], nil
}

// ReplaySelection says which dead letters ReplayDeadLetters replays: the listed IDs, or
// every dead letter of Topic, or All. Give exactly one of them.
type ReplaySelection struct {
	IDs   []uuid.UUID
	Topic string
	All   bool
}

func (s ReplaySelection) validate() error {
	n := 0
	if len(s.IDs) > 0 {
		n++
	}
	if s.Topic != "" {
		n++
	}
	if s.All {
		n++
	}
	if n != 1 {
		return fmt.Errorf("%w: select the dead letters to replay with exactly one of IDs, Topic or All", schema.ErrInvalidConfig)
	}
	return nil
}

// DefaultReplayBatchSize is ReplayOptions.BatchSize's default.
const DefaultReplayBatchSize = 500

// ReplayOptions says where ReplayDeadLetters sends the dead letters.
type ReplayOptions struct {
	// Publisher, when set, republishes each dead letter's message (DeadLetter.Message) to
	// its topic (received_at, or Topic) through it, and deletes the dead letters it
	// published. When nil, each dead letter goes back to jasper_incoming_envelopes as an
	// Incoming, unowned envelope of its topic (as Wolverine's replay does), for this
	// library's subscriber or for Jasper, in one statement per batch.
	Publisher message.Publisher
	// Topic, when set, replaces the dead letters' received_at as the destination.
	Topic string
	// BatchSize is how many dead letters one batch moves. Default 500.
	BatchSize int
	// Progress, when set, is called after each batch.
	Progress func(ReplayProgress)
}

// ReplayProgress is reported after each batch of a replay.
type ReplayProgress struct {
	// Done is how many selected dead letters were handled so far (replayed or skipped).
	Done int64
	// Total is how many were selected when the replay started.
	Total    int64
	Replayed int64
}

// Skipped is a dead letter a replay left in place, and why.
type Skipped struct {
	ID     uuid.UUID
	Reason string
}

// ReplayResult is what ReplayDeadLetters did.
type ReplayResult struct {
	Replayed int64
	// Skipped dead letters stay in the table: no topic to send them to, an id already in
	// the incoming table, or an unreadable row.
	Skipped []Skipped
	// NotFound are requested IDs that are not dead letters.
	NotFound []uuid.UUID
}

// ReplayDeadLetters sends the selected dead letters back to be handled again (see
// ReplayOptions), in batches, and deletes them from jasper_dead_letters. The messages keep
// their UUIDs, so a handler behind the inbox middleware handles each once. It stops at the
// first publish error, returning what it did until then.
func ReplayDeadLetters(ctx context.Context, db database.DB, cfg schema.Config, sel ReplaySelection, opts ReplayOptions) (ReplayResult, error) {
	var res ReplayResult
	if err := sel.validate(); err != nil {
		return res, err
	}
	cfg, st, err := deadLetterTools(db, cfg)
	if err != nil {
		return res, err
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultReplayBatchSize
	}
	ids := make([]string, len(sel.IDs))
	for i, id := range sel.IDs {
		ids[i] = id.String()
	}
	var total int64
	if err := database.QueryRow(ctx, db, st.count, []any{sel.Topic, st.idList(ids), int64(0)}, &total); err != nil {
		return res, wrapDL("count dead letters", cfg, err)
	}
	seen := map[uuid.UUID]bool{}
	prog := ReplayProgress{Total: total}
	var after any // nil: from the first id
	for {
		var batch []uuid.UUID
		var err error
		if opts.Publisher != nil {
			batch, err = replayBatchPublish(ctx, db, cfg, st, after, ids, sel.Topic, &opts, &res)
		} else {
			batch, err = replayBatchIncoming(ctx, db, cfg, st, after, ids, sel.Topic, &opts, &res)
		}
		for _, id := range batch {
			seen[id] = true
		}
		prog.Done += int64(len(batch))
		prog.Replayed = res.Replayed
		if len(batch) > 0 && opts.Progress != nil {
			opts.Progress(prog)
		}
		if err != nil {
			return res, err
		}
		if len(batch) < opts.BatchSize {
			break
		}
		after = batch[len(batch)-1].String()
	}
	for _, id := range sel.IDs {
		if !seen[id] {
			res.NotFound = append(res.NotFound, id)
		}
	}
	return res, nil
}

// replayBatchIncoming moves one batch to the incoming table and returns the ids it looked at.
func replayBatchIncoming(ctx context.Context, db database.DB, cfg schema.Config, st deadLetterStatements, after any, ids []string, topic string, opts *ReplayOptions, res *ReplayResult) ([]uuid.UUID, error) {
	rows, err := db.Query(ctx, st.toIncoming, after, st.idList(ids), topic, opts.BatchSize, opts.Topic)
	if err != nil {
		return nil, wrapDL("replay dead letters", cfg, err)
	}
	var batch []uuid.UUID
	topics := map[string]bool{}
	for rows.Next() {
		var id uuid.UUID
		var moved bool
		var receivedAt string
		if err := rows.Scan(&id, &moved, &receivedAt); err != nil {
			_ = rows.Close()
			return batch, wrapDL("replay dead letters", cfg, err)
		}
		batch = append(batch, id)
		if moved {
			res.Replayed++
			topics[receivedAt] = true
		} else {
			res.Skipped = append(res.Skipped, Skipped{ID: id, Reason: "no topic (received_at is empty; give a topic) or an envelope with this id is in the incoming table already"})
		}
	}
	if err := rows.Close(); err != nil {
		return batch, wrapDL("replay dead letters", cfg, err)
	}
	// Wake the subscribers of the topics at once (they poll anyway).
	if d, err := sqldialect.For(cfg); err == nil && d.NotifyIncoming() != "" {
		names := make([]string, 0, len(topics))
		for t := range topics {
			names = append(names, t)
		}
		sort.Strings(names)
		for _, t := range names {
			_, _ = db.Exec(ctx, d.NotifyIncoming(), t)
		}
	}
	return batch, nil
}

// replayBatchPublish publishes one batch through opts.Publisher, deletes what it published,
// and returns the ids it looked at.
func replayBatchPublish(ctx context.Context, db database.DB, cfg schema.Config, st deadLetterStatements, after any, ids []string, topic string, opts *ReplayOptions, res *ReplayResult) ([]uuid.UUID, error) {
	rows, err := db.Query(ctx, st.page, after, st.idList(ids), topic, opts.BatchSize)
	if err != nil {
		return nil, wrapDL("read dead letters", cfg, err)
	}
	dls, err := scanDeadLetters(rows, true)
	if err != nil {
		return nil, wrapDL("read dead letters", cfg, err)
	}
	var batch, published []uuid.UUID
	var pubErr error
	for _, d := range dls {
		to := opts.Topic
		if to == "" {
			to = d.ReceivedAt
		}
		if to == "" {
			batch = append(batch, d.ID)
			res.Skipped = append(res.Skipped, Skipped{ID: d.ID, Reason: "no topic (received_at is empty; give a topic)"})
			continue
		}
		msg, err := d.Message()
		if err != nil {
			batch = append(batch, d.ID)
			res.Skipped = append(res.Skipped, Skipped{ID: d.ID, Reason: err.Error()})
			continue
		}
		msg.SetContext(ctx)
		if err := opts.Publisher.Publish(to, msg); err != nil {
			pubErr = fmt.Errorf("watermill-jasper: replay dead letter %s to topic %q: %w", d.ID, to, err)
			break
		}
		batch = append(batch, d.ID)
		published = append(published, d.ID)
	}
	if len(published) > 0 {
		pids := make([]string, len(published))
		for i, id := range published {
			pids[i] = id.String()
		}
		if _, err := db.Exec(context.WithoutCancel(ctx), st.deleteIDs, st.idList(pids)); err != nil {
			return batch, errors.Join(pubErr, wrapDL("delete replayed dead letters (they were published and will be published again by the next replay)", cfg, err))
		}
		res.Replayed += int64(len(published))
	}
	return batch, pubErr
}

// PurgeOptions selects the dead letters PurgeDeadLetters deletes.
type PurgeOptions struct {
	// OlderThan keeps dead letters written less than this long ago; 0 deletes them all.
	// Rows without a timestamp count as old.
	OlderThan time.Duration
	// Topic deletes only dead letters received on this topic; "" any.
	Topic string
	// BatchSize is how many rows one DELETE removes. Default 1000.
	BatchSize int
	// Progress, when set, is called after each batch with the rows deleted so far.
	Progress func(deleted int64)
}

// PurgeDeadLetters deletes dead letters in batches and returns how many.
func PurgeDeadLetters(ctx context.Context, db database.DB, cfg schema.Config, opts PurgeOptions) (int64, error) {
	cfg, st, err := deadLetterTools(db, cfg)
	if err != nil {
		return 0, err
	}
	if opts.OlderThan < 0 {
		return 0, fmt.Errorf("%w: PurgeOptions.OlderThan is negative (%s)", schema.ErrInvalidConfig, opts.OlderThan)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	olderMS := millis(opts.OlderThan)
	var total int64
	for {
		n, err := db.Exec(ctx, st.purge, olderMS, opts.Topic, opts.BatchSize)
		total += n
		if err != nil {
			return total, wrapDL("purge dead letters", cfg, err)
		}
		if n > 0 && opts.Progress != nil {
			opts.Progress(total)
		}
		if n < int64(opts.BatchSize) {
			return total, nil
		}
	}
}

// millis is d in whole milliseconds, at least 1 when d is positive.
func millis(d time.Duration) int64 {
	ms := d.Milliseconds()
	if d > 0 && ms == 0 {
		ms = 1
	}
	return ms
}
