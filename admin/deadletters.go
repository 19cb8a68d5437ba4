package admin

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Dead-letter tools: list, show, replay and purge the rows of jasper_dead_letters, whoever
// wrote them (the dead-letter middleware, the forwarder, the subscriber, or .NET Jasper,
// whose rows have no message_uuid or headers). PostgreSQL and SQL Server.

// ErrDeadLetterNotFound is wrapped by GetDeadLetter's error when no dead letter has the id.
var ErrDeadLetterNotFound = errors.New("watermill-jasper: no such dead letter")

// DeadLetter is one row of jasper_dead_letters; Message rebuilds the message it holds.
type DeadLetter = row.DeadLetter

// wrapDL is wrap, also explaining a missing extension column (a database Jasper created,
// not migrated yet).
func wrapDL(op string, s store.Store, err error) error {
	if s.IsMissingColumn(err) {
		return fmt.Errorf("watermill-jasper: %s in schema %s: a column this library adds is missing; add it with `watermill-jasper schema migrate` (Jasper's rows are kept): %w", op, s.Schema().Schema, err)
	}
	return wrap(op, s, err)
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
func ListDeadLetters(ctx context.Context, db database.Driver, cfg schema.Config, opts ListOptions) ([]DeadLetter, error) {
	s, err := resolve(db, cfg)
	if err != nil {
		return nil, err
	}
	if opts.Limit == 0 {
		opts.Limit = 100
	}
	out, err := s.ListDeadLetters(ctx, opts.Topic, opts.Limit)
	if err != nil {
		return nil, wrapDL("list dead letters", s, err)
	}
	return out, nil
}

// CountDeadLetters returns how many dead letters were received on topic ("" = any) and
// written more than olderThan ago (0 = any age; rows without a timestamp count as old).
func CountDeadLetters(ctx context.Context, db database.Driver, cfg schema.Config, topic string, olderThan time.Duration) (int64, error) {
	s, err := resolve(db, cfg)
	if err != nil {
		return 0, err
	}
	n, err := s.CountDeadLetters(ctx, store.Selection{Topic: topic}, olderThan)
	if err != nil {
		return 0, wrapDL("count dead letters", s, err)
	}
	return n, nil
}

// GetDeadLetter returns one dead letter with its body. The error wraps
// ErrDeadLetterNotFound when there is none with that id.
func GetDeadLetter(ctx context.Context, db database.Driver, cfg schema.Config, id uuid.UUID) (DeadLetter, error) {
	s, err := resolve(db, cfg)
	if err != nil {
		return DeadLetter{}, err
	}
	d, found, err := s.GetDeadLetter(ctx, id)
	if err != nil {
		return DeadLetter{}, wrapDL("read dead letter", s, err)
	}
	if !found {
		return DeadLetter{}, fmt.Errorf("%w: %s in schema %s", ErrDeadLetterNotFound, id, s.Schema().Schema)
	}
	return d, nil
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
func ReplayDeadLetters(ctx context.Context, db database.Driver, cfg schema.Config, sel ReplaySelection, opts ReplayOptions) (ReplayResult, error) {
	var res ReplayResult
	if err := sel.validate(); err != nil {
		return res, err
	}
	s, err := resolve(db, cfg)
	if err != nil {
		return res, err
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultReplayBatchSize
	}
	r := replay{s: s, sel: store.Selection{IDs: sel.IDs, Topic: sel.Topic}, opts: &opts, res: &res}
	total, err := r.count(ctx)
	if err != nil {
		return res, wrapDL("count dead letters", s, err)
	}
	seen := map[uuid.UUID]bool{}
	prog := ReplayProgress{Total: total}
	var after *uuid.UUID // nil: from the first id
	for {
		var batch []uuid.UUID
		var err error
		if opts.Publisher != nil {
			batch, err = r.publishBatch(ctx, after)
		} else {
			batch, err = r.incomingBatch(ctx, after)
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
		after = &batch[len(batch)-1]
	}
	for _, id := range sel.IDs {
		if !seen[id] {
			res.NotFound = append(res.NotFound, id)
		}
	}
	return res, nil
}

// replay is one ReplayDeadLetters call.
type replay struct {
	s    store.Store
	sel  store.Selection
	opts *ReplayOptions
	res  *ReplayResult
}

// count counts the selected dead letters.
func (r *replay) count(ctx context.Context) (int64, error) {
	return r.s.CountDeadLetters(ctx, r.sel, 0)
}

// incomingBatch moves one batch to the incoming table, wakes the subscribers of the topics it
// moved envelopes to, and returns the ids it looked at.
func (r *replay) incomingBatch(ctx context.Context, after *uuid.UUID) ([]uuid.UUID, error) {
	moved, err := r.s.ReplayToIncoming(ctx, store.ReplayParams{After: after, Sel: r.sel, Limit: r.opts.BatchSize, Topic: r.opts.Topic})
	if err != nil {
		return nil, wrapDL("replay dead letters", r.s, err)
	}
	batch := make([]uuid.UUID, 0, len(moved))
	topics := map[string]bool{}
	for _, m := range moved {
		batch = append(batch, m.ID)
		if m.Moved {
			r.res.Replayed++
			topics[m.Topic] = true
		} else {
			r.res.Skipped = append(r.res.Skipped, Skipped{ID: m.ID, Reason: "no topic (received_at is empty; give a topic) or an envelope with this id is in the incoming table already"})
		}
	}
	// Wake the subscribers of the topics at once (they poll anyway; a no-op on a database
	// without notifications).
	names := make([]string, 0, len(topics))
	for t := range topics {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		_ = r.s.NotifyIncoming(ctx, t)
	}
	return batch, nil
}

// publishBatch publishes one batch through the Publisher, deletes what it published, and
// returns the ids it looked at.
func (r *replay) publishBatch(ctx context.Context, after *uuid.UUID) ([]uuid.UUID, error) {
	dls, err := r.s.PageDeadLetters(ctx, store.PageParams{After: after, Sel: r.sel, Limit: r.opts.BatchSize})
	if err != nil {
		return nil, wrapDL("read dead letters", r.s, err)
	}
	var batch, published []uuid.UUID
	var pubErr error
	for _, d := range dls {
		to := r.opts.Topic
		if to == "" {
			to = d.ReceivedAt
		}
		if to == "" {
			batch = append(batch, d.ID)
			r.res.Skipped = append(r.res.Skipped, Skipped{ID: d.ID, Reason: "no topic (received_at is empty; give a topic)"})
			continue
		}
		msg, err := d.Message()
		if err != nil {
			batch = append(batch, d.ID)
			r.res.Skipped = append(r.res.Skipped, Skipped{ID: d.ID, Reason: err.Error()})
			continue
		}
		msg.SetContext(ctx)
		if err := r.opts.Publisher.Publish(to, msg); err != nil {
			pubErr = fmt.Errorf("watermill-jasper: replay dead letter %s to topic %q: %w", d.ID, to, err)
			break
		}
		batch = append(batch, d.ID)
		published = append(published, d.ID)
	}
	if len(published) > 0 {
		if _, err := r.s.DeleteDeadLetters(context.WithoutCancel(ctx), published); err != nil {
			return batch, errors.Join(pubErr, wrapDL("delete replayed dead letters (they were published and will be published again by the next replay)", r.s, err))
		}
		r.res.Replayed += int64(len(published))
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
func PurgeDeadLetters(ctx context.Context, db database.Driver, cfg schema.Config, opts PurgeOptions) (int64, error) {
	s, err := resolve(db, cfg)
	if err != nil {
		return 0, err
	}
	if opts.OlderThan < 0 {
		return 0, fmt.Errorf("%w: PurgeOptions.OlderThan is negative (%s)", schema.ErrInvalidConfig, opts.OlderThan)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	var total int64
	for {
		n, err := s.PurgeDeadLetters(ctx, opts.Topic, opts.OlderThan, opts.BatchSize)
		total += n
		if err != nil {
			return total, wrapDL("purge dead letters", s, err)
		}
		if n > 0 && opts.Progress != nil {
			opts.Progress(total)
		}
		if n < int64(opts.BatchSize) {
			return total, nil
		}
	}
}
