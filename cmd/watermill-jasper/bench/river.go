package bench

// River (github.com/riverqueue/river) as a peer of the outbox and subscriber benchmarks: a
// River job is the outbox row. The business transaction inserts the order and a job carrying
// the message (InsertTx, in the same pgx transaction); a River client's worker publishes the
// job's message to the sink and returns nil only once Publish has returned nil, so that the job
// completes only after the sink accepted its message (an error: River retries the job, with
// its retry policy's backoff), the same durable contract as our forwarder's.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

const implRiver = "river"

// River's client configuration in every River leg, as River's documentation recommends for
// throughput and latency:
//
//   - MaxWorkers 1,000 on the default queue. QueueConfig.MaxWorkers is "the maximum number of
//     workers to run for the queue, or put otherwise, the maximum parallelism to run" (at most
//     QueueNumWorkersMax, 10,000); a fetch locks at most MaxWorkers minus the jobs running.
//     River's own benchmark (cmd/river/riverbench, river_bench.go) found "roughly 1k workers
//     was most optimal. 500 and 2,000 performed a little more poorly, and jumping up to the
//     maximum of 10k performed quite badly (scheduler contention?)". River's README and
//     doc.go use 100 as the example; 1,000 is its throughput setting.
//   - FetchCooldown 1 ms (river.FetchCooldownMin; default 100 ms): "the minimum amount of time
//     to wait between fetches of new jobs ... Throughput is limited by this value" (client.go,
//     Config.FetchCooldown). It also rate-limits the client's insert notifications (one
//     NOTIFY per queue per FetchCooldown, internal/notifylimiter), so it bounds latency too.
//     River's benchmark uses 2 ms.
//   - FetchPollInterval 50 ms (default 1 s): "Typically new jobs will be picked up
//     ~immediately after insert via LISTEN/NOTIFY, but this provides a fallback"
//     (Config.FetchPollInterval). It bounds the wait of a job whose insert notification the
//     limiter above suppressed. River's benchmark uses 20 ms.
//   - PollOnly off (the default): the client LISTENs for insert notifications, which trigger
//     a fetch at once (Config.PollOnly: in poll-only mode "A new job in the queue may have to
//     wait up to FetchPollInterval to be locked for work").
//
// Everything else is River's default (JobTimeout 1 min, MaxAttempts 25, the batch completer,
// CompletedJobRetentionPeriod 24 h: completed jobs stay in river_job until the leader's job
// cleaner deletes them a day later, hence left counts the jobs not completed, not the rows).
const (
	riverMaxWorkers        = 1000
	riverFetchCooldown     = river.FetchCooldownMin // 1 ms
	riverFetchPollInterval = 50 * time.Millisecond
)

// riverStopTimeout bounds the stop of a River client (it waits for its running jobs).
const riverStopTimeout = 40 * time.Second

// riverLogger discards River's logs, so that they do not mix with the progress output.
var riverLogger = slog.New(slog.DiscardHandler)

// riverConfig is the client configuration of schema: an insert-only client without workers,
// or a working client of workers on the default queue (see the constants above). An
// insert-only client takes the same FetchCooldown, which limits its insert notifications.
func riverConfig(schema string, workers *river.Workers) *river.Config {
	cfg := &river.Config{
		FetchCooldown:     riverFetchCooldown,
		FetchPollInterval: riverFetchPollInterval,
		Logger:            riverLogger,
		Schema:            schema,
	}
	if workers != nil {
		cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: riverMaxWorkers}}
		cfg.Workers = workers
	}
	return cfg
}

// riverMessageArgs is a River job carrying one Watermill message to topic (encoded as JSON
// in river_job.args: the payload as base64).
type riverMessageArgs struct {
	Topic    string            `json:"topic"`
	UUID     string            `json:"uuid"`
	Payload  []byte            `json:"payload"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

func (riverMessageArgs) Kind() string { return "watermill_message" }

func newRiverMessageArgs(topic string, msg *message.Message) riverMessageArgs {
	return riverMessageArgs{Topic: topic, UUID: msg.UUID, Payload: msg.Payload, Metadata: msg.Metadata}
}

// message is the job's Watermill message.
func (a riverMessageArgs) message() *message.Message {
	msg := message.NewMessage(a.UUID, a.Payload)
	for k, v := range a.Metadata {
		msg.Metadata.Set(k, v)
	}
	return msg
}

// newRiverSchema creates a fresh schema (with the business table) and migrates River's
// tables into it (rivermigrate, all migrations up).
func (e *env) newRiverSchema(ctx context.Context) (string, *riverpgxv5.Driver, error) {
	name, err := e.newSchema(ctx)
	if err != nil {
		return "", nil, err
	}
	drv := riverpgxv5.New(e.pool)
	m, err := rivermigrate.New(drv, &rivermigrate.Config{Logger: riverLogger, Schema: name})
	if err == nil {
		_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	}
	if err != nil {
		return "", nil, errors.Join(fmt.Errorf("bench: migrate River's tables into %s: %w", name, err), e.dropSchema(name))
	}
	return name, drv, nil
}

// riverJobs is the qualified name of the River job table of schema.
func riverJobs(schema string) string { return fmt.Sprintf(`%q.river_job`, schema) }

// riverLeft counts the jobs of schema not completed.
func (e *env) riverLeft(ctx context.Context, schema string) (int64, error) {
	var n int64
	err := e.pool.QueryRow(ctx, "SELECT count(*) FROM "+riverJobs(schema)+" WHERE state <> 'completed'").Scan(&n)
	return n, err
}

// riverPrefill inserts n new messages (env.newMessage, with payload instead when not nil) for
// topic as jobs through client's InsertManyFast (COPY FROM), prefillBatch per transaction,
// then ANALYZEs the job table.
func (e *env) riverPrefill(ctx context.Context, client *river.Client[pgx.Tx], schema, topic string, n int, payload []byte) error {
	params := make([]river.InsertManyParams, 0, prefillBatch)
	err := e.inBatches(n, func(msgs []*message.Message) error {
		params = params[:0]
		for _, m := range msgs {
			if payload != nil {
				m.Payload = payload
			}
			params = append(params, river.InsertManyParams{Args: newRiverMessageArgs(topic, m)})
		}
		got, err := client.InsertManyFast(ctx, params)
		if err == nil && got != len(params) {
			err = fmt.Errorf("inserted %d jobs, want %d", got, len(params))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("bench: prefill River jobs: %w", err)
	}
	return e.analyze(ctx, riverJobs(schema))
}

// --- The outbox.

// riverOutbox is River as an outbox, in a fresh schema with River's tables: an insert-only
// client writes the jobs while no relay runs; the relay is a working client whose worker
// publishes.
type riverOutbox struct {
	e      *env
	schema string
	drv    *riverpgxv5.Driver
	// pubClient inserts the jobs while no relay runs (never started).
	pubClient *river.Client[pgx.Tx]
	// relayClient is the client of the relay once started: the business transactions of the
	// latency legs insert through it, as one process has one client.
	relayClient atomic.Pointer[river.Client[pgx.Tx]]

	mu     sync.Mutex
	relays []*riverRelay // stopped by close
}

func newRiverOutbox() outboxFactory {
	return func(ctx context.Context, e *env) (outbox, error) {
		name, drv, err := e.newRiverSchema(ctx)
		if err != nil {
			return nil, err
		}
		o := &riverOutbox{e: e, schema: name, drv: drv}
		if o.pubClient, err = river.NewClient(drv, riverConfig(name, nil)); err != nil {
			return nil, errors.Join(fmt.Errorf("bench: River client: %w", err), o.close())
		}
		return o, nil
	}
}

// close stops the relays still running and drops the schema.
func (o *riverOutbox) close() error {
	o.mu.Lock()
	relays := o.relays
	o.relays = nil
	o.mu.Unlock()
	var errs []error
	for _, r := range relays {
		errs = append(errs, r.stop())
	}
	return errors.Join(append(errs, o.e.dropSchema(o.schema))...)
}

// client is the client the business transactions insert through.
func (o *riverOutbox) client() *river.Client[pgx.Tx] {
	if c := o.relayClient.Load(); c != nil {
		return c
	}
	return o.pubClient
}

func (o *riverOutbox) topic(s *sink) string { return s.topic }

// output is the GoChannel; the River legs do not run to RabbitMQ.
func (o *riverOutbox) output(s *sink) (message.Publisher, bool, error) {
	if s.kind != sinkGoChannel {
		return nil, false, fmt.Errorf("bench: the River outbox relays only to the %s sink, not to %s", sinkGoChannel, s.kind)
	}
	return s.publisher, false, nil
}

func (o *riverOutbox) prefill(ctx context.Context, topic string, n int) error {
	return o.e.riverPrefill(ctx, o.pubClient, o.schema, topic, n, nil)
}

// left counts the jobs not completed (River keeps the completed ones).
func (o *riverOutbox) left(ctx context.Context) (int64, error) { return o.e.riverLeft(ctx, o.schema) }

// heldBack is nil: River's fetch locks every available job (FOR UPDATE SKIP LOCKED skips only
// the jobs another fetch holds).
func (o *riverOutbox) heldBack() heldFunc { return nil }

// businessTx is one business transaction: the order and the message's job (InsertTx, which
// also sends the insert notification in the transaction when the limiter lets it).
func (o *riverOutbox) businessTx(ctx context.Context, topic string, msg *message.Message) error {
	c := o.client()
	return pgx.BeginFunc(ctx, o.e.pool, func(tx pgx.Tx) error {
		if err := insertOrder(ctx, tx, o.schema, msg); err != nil {
			return err
		}
		_, err := c.InsertTx(ctx, tx, newRiverMessageArgs(topic, msg), nil)
		return err
	})
}

// riverRelayWorker publishes a job's message to out; an error (Publish failed) fails the
// attempt, and River retries the job.
type riverRelayWorker struct {
	river.WorkerDefaults[riverMessageArgs]
	out message.Publisher
}

func (w *riverRelayWorker) Work(ctx context.Context, job *river.Job[riverMessageArgs]) error {
	msg := job.Args.message()
	msg.SetContext(ctx)
	return w.out.Publish(job.Args.Topic, msg)
}

// riverRelay is a started River client.
type riverRelay struct {
	client *river.Client[pgx.Tx]
	out    message.Publisher // closed on stop when set
	once   sync.Once
	err    error
}

// counts: River's statements are not counted.
func (r *riverRelay) counts() (int64, int64) { return -1, -1 }

// stop stops the client gracefully (its running jobs finish, the completer records them)
// within riverStopTimeout, then closes out when owned. Idempotent.
func (r *riverRelay) stop() error {
	r.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), riverStopTimeout)
		defer cancel()
		if err := r.client.Stop(ctx); err != nil {
			r.err = fmt.Errorf("bench: stop River client: %w", err)
		}
		if r.out != nil {
			r.err = errors.Join(r.err, r.out.Close())
		}
	})
	return r.err
}

// startRelay starts a River client (riverConfig) whose worker publishes to out.
func (o *riverOutbox) startRelay(ctx context.Context, out message.Publisher, owned bool) (relay, error) {
	c, err := startRiverClient(ctx, o.drv, o.schema, &riverRelayWorker{out: out})
	if err != nil {
		if owned {
			err = errors.Join(err, out.Close())
		}
		return nil, err
	}
	r := &riverRelay{client: c}
	if owned {
		r.out = out
	}
	o.mu.Lock()
	o.relays = append(o.relays, r)
	o.mu.Unlock()
	o.relayClient.Store(c)
	return r, nil
}

// startRiverClient starts a client of schema working the message jobs with w.
func startRiverClient(ctx context.Context, drv *riverpgxv5.Driver, schema string, w river.Worker[riverMessageArgs]) (*river.Client[pgx.Tx], error) {
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, w); err != nil {
		return nil, fmt.Errorf("bench: River worker: %w", err)
	}
	c, err := river.NewClient(drv, riverConfig(schema, workers))
	if err != nil {
		return nil, fmt.Errorf("bench: River client: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return nil, fmt.Errorf("bench: start River client: %w", err)
	}
	return c, nil
}

// --- The consume leg.

// riverCountingWorker is the subscriber benchmark's handler as a River worker: it records the
// message's UUID.
type riverCountingWorker struct {
	river.WorkerDefaults[riverMessageArgs]
	c *counter
}

func (w *riverCountingWorker) Work(_ context.Context, job *river.Job[riverMessageArgs]) error {
	w.c.add(job.Args.UUID)
	return nil
}

// riverPayload is a payload of size bytes, like env's.
func riverPayload(size int) []byte {
	p := make([]byte, size)
	for i := range p {
		p[i] = 'a' + byte(i%26)
	}
	return p
}

// riverConsumeLeg prefills a fresh schema with cfg.Backlog jobs of cfg.Payload bytes (untimed)
// and times a River client (riverConfig) whose worker only counts, from the client's Start to
// the last distinct message; then it waits until every job is completed, stops the client and
// checks the counts, as timedConsume does. InFlight is MaxWorkers; the statements are not
// counted (-1).
func (e *env) riverConsumeLeg(ctx context.Context, cfg SubscriberConfig) (res ConsumeResult, err error) {
	n := cfg.Backlog
	label := fmt.Sprintf("%s %d workers", implRiver, riverMaxWorkers)
	res = ConsumeResult{Impl: implRiver, InFlight: riverMaxWorkers, N: n, Statements: -1}
	name, drv, err := e.newRiverSchema(ctx)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, e.dropSchema(name)) }()
	ins, err := river.NewClient(drv, riverConfig(name, nil))
	if err != nil {
		return res, fmt.Errorf("bench: River client: %w", err)
	}
	var payload []byte
	if cfg.Payload > 0 && cfg.Payload != len(e.payload) {
		payload = riverPayload(cfg.Payload)
	}
	e.logf("%s: prefilling %d", label, n)
	if err := e.riverPrefill(ctx, ins, name, subTopic, n, payload); err != nil {
		return res, err
	}
	c := newCounter(n)
	t0 := time.Now()
	client, err := startRiverClient(ctx, drv, name, &riverCountingWorker{c: c})
	if err != nil {
		return res, err
	}
	r := &riverRelay{client: client}
	defer func() { err = errors.Join(err, r.stop()) }()
	if err := e.awaitCount(ctx, label, c, n, t0, consumeProgressEvery, nil, nil); err != nil {
		return res, err
	}
	res.Elapsed, res.FirstMsg, res.Rate = c.timing(t0)
	// Let the completer record every completion, then stop the client.
	if res.Left, err = awaitAcked(ctx, func(ctx context.Context) (int64, error) { return e.riverLeft(ctx, name) }, 5*time.Millisecond); err != nil {
		return res, fmt.Errorf("%s: count jobs left: %w", label, err)
	}
	// Stop returns once every job it fetched has been worked: no delivery can come later.
	if err := r.stop(); err != nil {
		return res, fmt.Errorf("%s: %w", label, err)
	}
	res.Received, res.Dups = c.counts()
	e.logf("%s: %d/%d in %s (%.0f msg/s, first after %s), %d duplicates, %d left",
		label, res.Received, n, res.Elapsed.Round(time.Millisecond), res.Rate, fmtMs(res.FirstMsg), res.Dups, res.Left)
	if res.Received != n {
		return res, fmt.Errorf("%s: handled %d distinct messages, want %d", label, res.Received, n)
	}
	if res.Left != 0 {
		return res, fmt.Errorf("%s: %d jobs still not completed 10s after the last was handled", label, res.Left)
	}
	return res, nil
}
