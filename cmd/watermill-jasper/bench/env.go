package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/pgcluster"
)

// env is what every leg of one RunOutbox shares: the pool, the progress writer and the
// registry of schemas still to drop.
type env struct {
	cfg      OutboxConfig
	pool     *pgxpool.Pool
	drv      database.Driver // database.FromPgx(pool)
	progress io.Writer
	legs     *legCounter // the legs done, reported to progress
	payload  []byte
	logger   watermill.LoggerAdapter
	// cdc is the env of the logical-replication legs once opened (cdcEnv); cluster is its
	// private server, when one was started for it.
	cdc     *env
	cluster *pgcluster.Cluster

	mu      sync.Mutex
	schemas map[string]struct{}
	queues  map[string]struct{}
}

func newEnv(ctx context.Context, cfg OutboxConfig, progress io.Writer) (*env, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("bench: parse DSN: %w", err)
	}
	// The publishing goroutines (the publish legs' Publishers, the latency legs'
	// latencyWorkers), the relays' workers and LISTEN connections, the sinks' checks: the
	// relay never waits for a connection the publishers hold.
	pcfg.MaxConns = int32(max(cfg.Publishers, latencyWorkers) + 12)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("bench: connect to PostgreSQL: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("bench: connect to PostgreSQL: %w", err)
	}
	if progress == nil {
		progress = io.Discard
	}
	payload := make([]byte, cfg.Payload)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	return &env{
		cfg: cfg, pool: pool, drv: database.FromPgx(pool), progress: progress, payload: payload,
		logger:  watermill.NopLogger{},
		schemas: map[string]struct{}{}, queues: map[string]struct{}{},
	}, nil
}

// RunInfo is how a benchmark ran.
type RunInfo struct {
	// Runs is how many times every leg ran: the figures are the medians.
	Runs int
	// Elapsed is the wall time of the whole benchmark.
	Elapsed time.Duration
	// ServerVersion is PostgreSQL's server_version.
	ServerVersion string
}

// describe is the headline of a benchmark's report: PostgreSQL's version, the CPUs, what
// (e.g. "256-byte payloads"), the runs and the time taken.
func (i RunInfo) describe(what string) string {
	runs := "1 run"
	if i.Runs > 1 {
		runs = fmt.Sprintf("median of %d runs", i.Runs)
	}
	return fmt.Sprintf("PostgreSQL %s, %d CPUs, %s, %s, %s", i.ServerVersion, runtime.NumCPU(), what, runs, i.Elapsed.Round(time.Second))
}

// runAll is a benchmark's runs: it opens the env (cfg: the pool and the messages), reads
// PostgreSQL's server_version, runs once runs times (saying "run i/n" when there are several)
// and closes the env, also on failure: every schema the runs created is dropped when it
// returns. info.Elapsed is the time all of it took. perRun is the number of legs of one run
// (the legs done are reported to progress when it is a Stepper).
func runAll[R any](ctx context.Context, cfg OutboxConfig, runs int, progress io.Writer, perRun func(e *env) int,
	once func(ctx context.Context, e *env) (R, error)) (results []R, info RunInfo, err error) {
	start := time.Now()
	e, err := newEnv(ctx, cfg, progress)
	if err != nil {
		return nil, info, err
	}
	_ = e.pool.QueryRow(ctx, "SHOW server_version").Scan(&info.ServerVersion)
	e.legs = newLegCounter(e.progress, runs, perRun(e))
	for i := range runs {
		e.legs.startRun(i)
		if runs > 1 {
			e.logf("run %d/%d", i+1, runs)
		}
		r, err := once(ctx, e)
		if err != nil {
			return nil, info, errors.Join(err, e.close())
		}
		results = append(results, r)
	}
	err = e.close()
	info.Runs, info.Elapsed = runs, time.Since(start)
	return results, info, err
}

func (e *env) logf(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	fmt.Fprintf(e.progress, format+"\n", args...)
}

// randomName returns prefix followed by 12 random hex digits.
func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// created records every schema name this process created, for tests.
var created struct {
	sync.Mutex
	names []string
}

func createdSchemas() []string {
	created.Lock()
	defer created.Unlock()
	return append([]string(nil), created.names...)
}

// newSchema creates a fresh schema holding the business table and registers it for dropping.
func (e *env) newSchema(ctx context.Context) (string, error) {
	name := randomName("wj_bench_")
	e.mu.Lock()
	e.schemas[name] = struct{}{}
	e.mu.Unlock()
	created.Lock()
	created.names = append(created.names, name)
	created.Unlock()
	_, err := e.pool.Exec(ctx, fmt.Sprintf(`CREATE SCHEMA %q; CREATE TABLE %q.orders (id uuid PRIMARY KEY, amount bigint NOT NULL)`, name, name))
	if err != nil {
		return "", fmt.Errorf("bench: create schema %s: %w", name, err)
	}
	return name, nil
}

// dropSchema drops a schema and everything in it, even when ctx is already cancelled.
func (e *env) dropSchema(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := e.pool.Exec(ctx, fmt.Sprintf(`DROP SCHEMA IF EXISTS %q CASCADE`, name))
	if err != nil {
		return fmt.Errorf("bench: drop schema %s: %w", name, err)
	}
	e.mu.Lock()
	delete(e.schemas, name)
	e.mu.Unlock()
	return nil
}

// close drops every schema still registered (a leg that failed to clean up) and closes the pool.
func (e *env) close() error {
	e.mu.Lock()
	left := make([]string, 0, len(e.schemas))
	for s := range e.schemas {
		left = append(left, s)
	}
	queues := make([]string, 0, len(e.queues))
	for q := range e.queues {
		queues = append(queues, q)
	}
	e.mu.Unlock()
	var errs []error
	for _, s := range left {
		errs = append(errs, e.dropSchema(s))
	}
	errs = append(errs, e.deleteQueues(queues...))
	e.pool.Close()
	if e.cdc != nil {
		errs = append(errs, e.cdc.close())
	}
	if e.cluster != nil {
		errs = append(errs, e.cluster.Close())
	}
	return errors.Join(errs...)
}

// orderSeq numbers the benchmark's messages, process-wide.
var orderSeq atomic.Int64

// uuidSeqPrefix starts every benchmark message's UUID: 20 random hex digits of this process,
// laid out as a version 4 UUID; the last 12 digits are the message's sequence number
// (messageSeq).
var uuidSeqPrefix = func() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-4" + h[13:16] + "-8" + h[17:20] + "-"
}()

// newMessage is the message of one business transaction: a fresh UUID (a valid version 4
// UUID carrying the message's sequence number, see counter), the configured payload and one
// metadata pair, the same for every implementation.
func (e *env) newMessage() *message.Message {
	seq := orderSeq.Add(1)
	msg := message.NewMessage(fmt.Sprintf("%s%012x", uuidSeqPrefix, seq), e.payload)
	msg.Metadata.Set("correlation_id", strconv.FormatInt(seq, 10))
	return msg
}

// messageSeq is the sequence number of a message made by newMessage in this process, from its
// UUID; ok is false for any other UUID.
func messageSeq(uuid string) (seq uint64, ok bool) {
	if len(uuid) != 36 || !strings.HasPrefix(uuid, uuidSeqPrefix) {
		return 0, false
	}
	seq, err := strconv.ParseUint(uuid[24:], 16, 64)
	return seq, err == nil
}

// inBatches calls write with n new messages (newMessage), prefillBatch at a time: a
// prefill's transactions.
func (e *env) inBatches(n int, write func(msgs []*message.Message) error) error {
	for done := 0; done < n; {
		msgs := make([]*message.Message, min(prefillBatch, n-done))
		for i := range msgs {
			msgs[i] = e.newMessage()
		}
		if err := write(msgs); err != nil {
			return err
		}
		done += len(msgs)
	}
	return nil
}

// insertOrder is the business write of every business transaction.
func insertOrder(ctx context.Context, tx pgx.Tx, schemaName string, msg *message.Message) error {
	_, err := tx.Exec(ctx, `INSERT INTO "`+schemaName+`".orders (id, amount) VALUES ($1, $2)`, msg.UUID, int64(len(msg.Payload)))
	return err
}

// countRows counts the rows of a table (qualified, quoted name).
func (e *env) countRows(ctx context.Context, table string) (int64, error) {
	var n int64
	err := e.pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n)
	return n, err
}

// analyze refreshes planner statistics after a prefill, for every implementation alike.
func (e *env) analyze(ctx context.Context, table string) error {
	_, err := e.pool.Exec(ctx, "ANALYZE "+table)
	return err
}
