package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

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
// writes for the benchmark's messages, mapped by the same code (row.FromMessage).
func (j *jasperSchema) prefill(ctx context.Context, topic string, n int) error {
	rows := make([][]any, 0, n)
	for range n {
		env, err := row.FromMessage(topic, j.e.newMessage(), row.Defaults{})
		if err != nil {
			return err
		}
		rows = append(rows, env.OutgoingArgs(nil, copyUUIDs{}))
	}
	_, err := j.e.pool.CopyFrom(ctx, pgx.Identifier{j.cfg.Schema, schema.OutgoingTable}, row.OutgoingColumns, pgx.CopyFromRows(rows))
	if err != nil {
		return fmt.Errorf("bench: prefill outbox: %w", err)
	}
	return j.e.analyze(ctx, j.outgoing())
}

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

// rawLoop drains n prefilled rows with claim then delete, one goroutine, each operation its
// own autocommit statement on the pool, until a claim returns nothing. It is the physical
// limit of the claim-then-delete design on this database.
func (j *jasperSchema) rawLoop(ctx context.Context, n int, claim func(ctx context.Context) ([]row.Envelope, error), del func(ctx context.Context, ids []uuid.UUID) error) (RawResult, error) {
	label := fmt.Sprintf("raw loop %d", n)
	res := RawResult{N: n}
	ids := make([]uuid.UUID, 0, rawBatch)
	done := 0
	start := time.Now()
	lastLog := start
	for {
		envs, err := claim(ctx)
		if err != nil {
			return res, fmt.Errorf("%s: claim: %w", label, err)
		}
		if len(envs) == 0 {
			break
		}
		ids = ids[:0]
		for _, env := range envs {
			ids = append(ids, env.ID)
		}
		if err := del(ctx, ids); err != nil {
			return res, fmt.Errorf("%s: delete: %w", label, err)
		}
		done += len(ids)
		res.Batches++
		if time.Since(lastLog) >= time.Second {
			lastLog = time.Now()
			j.e.logf("%s: %d/%d (%.0f rows/s)", label, done, n, float64(done)/time.Since(start).Seconds())
		}
	}
	res.Elapsed = time.Since(start)
	res.Rate = float64(done) / res.Elapsed.Seconds()
	if done != n {
		return res, fmt.Errorf("%s: claimed and deleted %d rows, want %d", label, done, n)
	}
	j.e.logf("%s: %d rows in %s (%.0f rows/s)", label, done, res.Elapsed.Round(time.Millisecond), res.Rate)
	return res, nil
}

// runRawLoop drains a prefilled outbox with the forwarder's own storage operations and
// nothing else: ClaimOutgoing of up to 1,000 rows (UPDATE ... SET owner_id ... WHERE id IN
// (SELECT ... LIMIT 1000 FOR UPDATE SKIP LOCKED) RETURNING the forwarder's columns), then
// DeleteOutgoing of their ids (DELETE ... WHERE id = ANY($1)).
func (j *jasperSchema) runRawLoop(ctx context.Context, n int) (RawResult, error) {
	return j.rawLoop(ctx, n, func(ctx context.Context) ([]row.Envelope, error) {
		return j.store.ClaimOutgoing(ctx, store.ClaimOutgoingParams{Owner: rawOwner, Limit: rawBatch})
	}, j.store.DeleteOutgoing)
}
