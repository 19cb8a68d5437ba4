package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// jasperSchema is a fresh schema migrated with schema.Migrate (plus the business table),
// with the typed store of its tables (the operations the runtime's components run).
type jasperSchema struct {
	e     *env
	cfg   schema.Config
	store store.Store
}

func newJasperSchema(ctx context.Context, e *env) (*jasperSchema, error) {
	name, err := e.newSchema(ctx)
	if err != nil {
		return nil, err
	}
	cfg := schema.Config{Dialect: schema.Postgres, Schema: name}
	if err := schema.Migrate(ctx, e.drv, cfg); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	st, err := e.drv.Store(cfg)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return &jasperSchema{e: e, cfg: st.Schema(), store: st}, nil
}

func (j *jasperSchema) close() error { return j.e.dropSchema(j.cfg.Schema) }

func (j *jasperSchema) outgoing() string { return j.cfg.Qualified(schema.OutgoingTable) }

// copyUUIDs binds UUIDs in binary form, as COPY needs.
type copyUUIDs struct{}

func (copyUUIDs) Arg(u uuid.UUID) any   { return [16]byte(u) }
func (copyUUIDs) Dest(u *uuid.UUID) any { return u }

// prefill writes n outgoing envelopes for topic with COPY (not timed): the rows our publisher
// writes for the benchmark's messages, mapped by the same code (row.FromMessage). The rows
// are made as COPY streams them, so that a million-row prefill holds one row at a time.
func (j *jasperSchema) prefill(ctx context.Context, topic string, n int) error {
	if err := j.copyEnvelopes(ctx, topic, n); err != nil {
		return err
	}
	return j.e.analyze(ctx, j.outgoing())
}

// copyEnvelopes writes n outgoing envelopes for topic in one COPY (one transaction).
func (j *jasperSchema) copyEnvelopes(ctx context.Context, topic string, n int) error {
	src := &envelopeRows{topic: topic, left: n, e: j.e}
	_, err := j.e.pool.CopyFrom(ctx, pgx.Identifier{j.cfg.Schema, schema.OutgoingTable}, row.OutgoingColumns, src)
	if err == nil {
		err = src.err
	}
	if err != nil {
		return fmt.Errorf("bench: prefill outbox: %w", err)
	}
	return nil
}

// prefillInTxs writes n outgoing envelopes for topic as prefill does, committed perTx rows
// per transaction by 4 connections at once: a backlog of many transactions, as a stopped
// relay finds it (a replication slot brings it transaction by transaction).
func (j *jasperSchema) prefillInTxs(ctx context.Context, topic string, n, perTx int) error {
	if err := j.inTxs(ctx, n, perTx, func(ctx context.Context, k int) error { return j.copyEnvelopes(ctx, topic, k) }); err != nil {
		return err
	}
	return j.e.analyze(ctx, j.outgoing())
}

// emitInTxs is prefillInTxs for the table-less outbox: the envelopes are logical decoding
// messages for the schema's default slot (store.Ops.EmitOutgoing), perTx per transaction.
func (j *jasperSchema) emitInTxs(ctx context.Context, topic string, n, perTx int) error {
	lc, err := logrepl.Config{Schema: j.cfg.Schema}.Normalized()
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return j.inTxs(ctx, n, perTx, func(ctx context.Context, k int) error {
		envs := make([]row.Envelope, k)
		for i := range envs {
			e, err := row.FromMessage(topic, j.e.newMessage(), row.Defaults{})
			if err != nil {
				return err
			}
			envs[i] = e
		}
		ok, err := j.store.EmitOutgoing(ctx, store.EmitParams{Slot: lc.Slot, Prefix: lc.MessagePrefix(), Envelopes: envs})
		if err == nil && !ok {
			err = fmt.Errorf("slot %s missing", lc.Slot)
		}
		if err != nil {
			return fmt.Errorf("bench: prefill the table-less outbox: %w", err)
		}
		return nil
	})
}

// inTxs runs write for n envelopes, perTx at a time, on 4 connections at once.
func (j *jasperSchema) inTxs(ctx context.Context, n, perTx int, write func(ctx context.Context, k int) error) error {
	const conns = 4
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i := range conns {
		wg.Go(func() {
			for ctx.Err() == nil {
				end := int(next.Add(int64(perTx)))
				start := end - perTx
				if start >= n {
					return
				}
				if err := write(ctx, min(end, n)-start); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(append(errs, ctx.Err())...)
}

// envelopeRows is a pgx.CopyFromSource of left new messages (env.newMessage) for topic, as
// the outgoing rows our publisher writes.
type envelopeRows struct {
	e     *env
	topic string
	left  int
	row   []any
	err   error
}

func (r *envelopeRows) Next() bool {
	if r.left == 0 || r.err != nil {
		return false
	}
	r.left--
	env, err := row.FromMessage(r.topic, r.e.newMessage(), row.Defaults{})
	if err != nil {
		r.err = err
		return false
	}
	r.row = env.OutgoingArgs(r.row[:0], copyUUIDs{})
	return true
}

func (r *envelopeRows) Values() ([]any, error) { return r.row, nil }
func (r *envelopeRows) Err() error             { return r.err }

// left counts the outgoing rows still in the table.
func (j *jasperSchema) left(ctx context.Context) (int64, error) {
	return j.e.countRows(ctx, j.outgoing())
}

// RawResult is the raw claim-then-delete loop.
type RawResult struct {
	N       int
	Elapsed time.Duration
	Rate    float64
	Batches int
}

// rawBatch is the claim size of the raw loop.
const rawBatch = 1000

// rawOwner is the owner id the raw loops claim with.
const rawOwner = int32(1)

// rawLoop drains n prefilled rows one batch at a time (batch: its rows done, 0 when none
// was left), one goroutine, until a batch finds nothing. It is the physical limit of a
// design's statements on this database.
func (j *jasperSchema) rawLoop(ctx context.Context, n int, label string, batch func(ctx context.Context) (int, error)) (RawResult, error) {
	res := RawResult{N: n}
	done := 0
	start := time.Now()
	lastLog := start
	for {
		k, err := batch(ctx)
		if err != nil {
			return res, fmt.Errorf("%s: %w", label, err)
		}
		if k == 0 {
			break
		}
		done += k
		res.Batches++
		if time.Since(lastLog) >= time.Second {
			lastLog = time.Now()
			j.e.logf("%s: %d/%d (%.0f rows/s)", label, done, n, float64(done)/time.Since(start).Seconds())
		}
	}
	res.Elapsed = time.Since(start)
	res.Rate = float64(done) / res.Elapsed.Seconds()
	if done != n {
		return res, fmt.Errorf("%s: drained %d rows, want %d", label, done, n)
	}
	j.e.logf("%s: %d rows in %s (%.0f rows/s)", label, done, res.Elapsed.Round(time.Millisecond), res.Rate)
	return res, nil
}

// claimThenDelete is one batch of a claim-then-delete loop: claim (each statement its own
// autocommit transaction on the pool), then delete what it returned.
func claimThenDelete(claim func(ctx context.Context) ([]row.Envelope, error), del func(ctx context.Context, ids []uuid.UUID) error) func(ctx context.Context) (int, error) {
	ids := make([]uuid.UUID, 0, rawBatch)
	return func(ctx context.Context) (int, error) {
		envs, err := claim(ctx)
		if err != nil || len(envs) == 0 {
			return 0, err
		}
		ids = ids[:0]
		for _, env := range envs {
			ids = append(ids, env.ID)
		}
		return len(ids), del(ctx, ids)
	}
}

// runRawLoop drains a prefilled outbox with the forwarder's own storage operations and
// nothing else: per batch, one transaction that locks up to 1,000 rows (LockOutgoing:
// SELECT ... FOR UPDATE SKIP LOCKED), deletes them (DeleteOutgoing) and commits. It is the
// limit of the relay's design: the drain_raw figure.
func (j *jasperSchema) runRawLoop(ctx context.Context, n int) (RawResult, error) {
	ids := make([]uuid.UUID, 0, rawBatch)
	return j.rawLoop(ctx, n, fmt.Sprintf("raw loop %d", n), func(ctx context.Context) (k int, err error) {
		err = j.store.InTx(ctx, func(ctx context.Context, tx store.Ops) error {
			envs, err := tx.LockOutgoing(ctx, store.LockOutgoingParams{Limit: rawBatch})
			if err != nil || len(envs) == 0 {
				return err
			}
			ids = ids[:0]
			for _, env := range envs {
				ids = append(ids, env.ID)
			}
			k = len(ids)
			return tx.DeleteOutgoing(ctx, ids)
		})
		return k, err
	})
}

// runRawClaimLoop is the claim-then-delete loop of the outbox, the design that marks the
// rows (Jasper's own): ClaimOutgoing of up to 1,000 rows (UPDATE ... SET owner_id ... WHERE
// id IN (SELECT ... LIMIT 1000 FOR UPDATE SKIP LOCKED) RETURNING the forwarder's columns),
// then DeleteOutgoing of their ids, each its own autocommit statement: the drain_raw_claim
// figure.
func (j *jasperSchema) runRawClaimLoop(ctx context.Context, n int) (RawResult, error) {
	return j.rawLoop(ctx, n, fmt.Sprintf("raw claim loop %d", n), claimThenDelete(func(ctx context.Context) ([]row.Envelope, error) {
		return j.store.ClaimOutgoing(ctx, store.ClaimOutgoingParams{Owner: rawOwner, Limit: rawBatch})
	}, j.store.DeleteOutgoing))
}
