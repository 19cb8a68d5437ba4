package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// jasperSchema is a fresh schema migrated with schema.Migrate (plus the business table).
type jasperSchema struct {
	e       *env
	cfg     schema.Config
	dialect sqldialect.Dialect
}

func newJasperSchema(ctx context.Context, e *env) (*jasperSchema, error) {
	name, err := e.newSchema(ctx)
	if err != nil {
		return nil, err
	}
	cfg := schema.Config{Dialect: schema.Postgres, Schema: name}
	if err := schema.Migrate(ctx, database.FromPgx(e.pool), cfg); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	cfg, err = cfg.Normalized()
	if err != nil {
		return nil, err
	}
	d, err := sqldialect.For(cfg)
	if err != nil {
		return nil, err
	}
	return &jasperSchema{e: e, cfg: cfg, dialect: d}, nil
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

// runRawLoop drains a prefilled outbox with the forwarder's own statements and nothing else:
// claim up to 1,000 rows (UPDATE ... SET owner_id ... WHERE id IN (SELECT ... LIMIT 1000
// FOR UPDATE SKIP LOCKED) RETURNING the forwarder's columns), read them, then DELETE ... WHERE
// id = ANY($1); one goroutine, each statement its own transaction. It is the physical limit
// of the claim-then-delete design on this database.
func (j *jasperSchema) runRawLoop(ctx context.Context, n int) (RawResult, error) {
	label := fmt.Sprintf("raw loop %d", n)
	res := RawResult{N: n}
	claim, del := j.dialect.ClaimOutgoing(), j.dialect.DeleteOutgoing()
	excluded, only := j.dialect.StringList(nil), j.dialect.StringList(nil)
	codec := j.dialect.UUIDs()
	ids := make([]uuid.UUID, 0, rawBatch)
	done := 0
	start := time.Now()
	lastLog := start
	for {
		rows, err := j.e.pool.Query(ctx, claim, int32(1), excluded, only, rawBatch)
		if err != nil {
			return res, fmt.Errorf("%s: claim: %w", label, err)
		}
		ids = ids[:0]
		for rows.Next() {
			env, err := row.ScanOutgoing(rows, codec)
			if err != nil {
				rows.Close()
				return res, fmt.Errorf("%s: scan: %w", label, err)
			}
			ids = append(ids, env.ID)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return res, fmt.Errorf("%s: claim: %w", label, err)
		}
		if len(ids) == 0 {
			break
		}
		if _, err := j.e.pool.Exec(ctx, del, j.dialect.IDList(ids)); err != nil {
			return res, fmt.Errorf("%s: delete: %w", label, err)
		}
		done += len(ids)
		res.Batches++
		if time.Since(lastLog) >= time.Second {
			lastLog = time.Now()
			e := time.Since(start)
			j.e.logf("%s: %d/%d (%.0f rows/s)", label, done, n, float64(done)/e.Seconds())
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
