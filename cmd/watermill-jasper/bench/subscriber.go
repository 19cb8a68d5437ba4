package bench

// RunSubscriber: `watermill-jasper bench subscriber`. It reuses the outbox benchmark's env
// (pool, progress, schema registry and teardown), jasperSchema (fresh migrated schemas), the
// counter of sinks.go (distinct UUIDs and duplicates), the statement counters and medianBy.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// Defaults of SubscriberConfig.
const (
	DefaultSubscriberBacklog = 20000
	DefaultSubscriberPayload = 64
	// DefaultSubscriberBatch is both subscribers' default batch: our BatchSize and
	// watermill-sql's SubscribeBatchSize.
	DefaultSubscriberBatch = 100
)

// SubscriberWideInFlight is the second in-flight setting of the subscriber benchmark: our
// subscriber with MaxInFlight 4, watermill-sql with 4 subscribers of one consumer group.
const SubscriberWideInFlight = 4

// SubscriberWidestInFlight is the third in-flight setting of our subscriber: more in flight
// must never be slower.
const SubscriberWidestInFlight = 16

// implWatermillSQL names watermill-sql's subscriber in the subscriber benchmark.
const implWatermillSQL = "watermill-sql"

const (
	// subTopic is the topic of every subscriber leg (a valid watermill-sql topic).
	subTopic = "bench_orders"
	// wmConsumerGroup is the consumer group of every watermill-sql subscriber.
	wmConsumerGroup = "bench"
	// prefillBatch is how many messages one prefill transaction writes.
	prefillBatch = 1000
)

// SubscriberConfig configures RunSubscriber. Zero values take the defaults above.
type SubscriberConfig struct {
	// DSN of the PostgreSQL database the legs create their schemas in.
	DSN string
	// Backlog is how many messages are prefilled and consumed in every leg.
	Backlog int
	// Payload is the message payload size in bytes.
	Payload int
	// Batch is how many messages one claim (ours: BatchSize) or one query (watermill-sql:
	// SubscribeBatchSize) takes; the default is both libraries' default.
	Batch int
	// Runs repeats the whole benchmark; the report shows medians.
	Runs int
	// SkipRiver skips River's leg.
	SkipRiver bool
	// Quick runs every leg once at a tiny size: a check that the harness works, as .ci/run
	// does; its figures mean nothing.
	Quick bool
}

// quickSubscriber is the tiny configuration of SubscriberConfig.Quick.
var quickSubscriber = SubscriberConfig{Backlog: 300, Runs: 1}

// subscriberDefaults are the values the zero fields of a SubscriberConfig take.
var subscriberDefaults = SubscriberConfig{
	Backlog: DefaultSubscriberBacklog,
	Payload: DefaultSubscriberPayload,
	Batch:   DefaultSubscriberBatch,
	Runs:    DefaultRuns,
}

func (c SubscriberConfig) validate() error {
	var p problems
	p.check(c.DSN == "", "no PostgreSQL DSN")
	p.check(c.Backlog < 1, "backlog must be positive (got %d)", c.Backlog)
	p.check(c.Payload < 1, "payload must be at least 1 byte (got %d)", c.Payload)
	p.check(c.Batch < 1 || c.Batch > subscriber.MaxBatchSize, "batch must be 1..%d (got %d)", subscriber.MaxBatchSize, c.Batch)
	p.check(c.Runs < 1, "runs must be at least 1 (got %d)", c.Runs)
	return p.err("bench subscriber")
}

// ConsumeResult is one consume leg: a prefilled backlog consumed through a router.
type ConsumeResult struct {
	Impl string
	// InFlight is our subscriber's MaxInFlight, or the number of watermill-sql subscribers
	// of the consumer group (one router handler each).
	InFlight   int
	N          int
	Elapsed    time.Duration // router start -> last distinct message handled
	FirstMsg   time.Duration // router start -> first message handled
	Rate       float64
	Received   int   // distinct messages handled
	Dups       int64 // duplicate deliveries
	Left       int64 // messages not acknowledged in the database when the router was stopped
	Statements int64 // statements sent (BEGIN/COMMIT/ROLLBACK included), up to the last ack
}

// SubscriberResult is what RunSubscriber measured: for several runs, the median run of
// each leg.
type SubscriberResult struct {
	RunInfo
	Config SubscriberConfig
	Raw    RawResult
	Legs   []ConsumeResult
	// Figures are the figures of every run (Figures keys) summarised: median, min, max.
	Figures Stats
}

// subscriberRun is one run of every leg.
type subscriberRun struct {
	raw  RawResult
	legs []ConsumeResult
}

// RunSubscriber consumes the same prefilled backlog, in one process, through a Watermill
// router whose handler only counts: by our subscriber with 1 and SubscriberWideInFlight
// messages in flight, and by watermill-sql v4's subscriber (log schema, poll interval 10 ms)
// with 1 and SubscriberWideInFlight subscribers of one consumer group; the raw
// claim-then-delete loop over the incoming table is the limit. Progress goes to progress.
// Every schema it creates is dropped before it returns, also when ctx is cancelled.
func RunSubscriber(ctx context.Context, cfg SubscriberConfig, progress io.Writer) (SubscriberResult, error) {
	cfg = quicken(withZeroFrom(cfg, subscriberDefaults), cfg.Quick, quickSubscriber)
	if err := cfg.validate(); err != nil {
		return SubscriberResult{}, err
	}
	// Four watermill-sql subscribers each hold a connection through their batch, our
	// subscriber its node lock and LISTEN connections: the pool's 20 are plenty.
	envCfg := OutboxConfig{DSN: cfg.DSN, Payload: cfg.Payload, Publishers: 1}
	perRun := func(*env) int { return subscriberLegs(cfg) }
	runs, info, err := runAll(ctx, envCfg, cfg.Runs, progress, perRun, func(ctx context.Context, e *env) (subscriberRun, error) {
		return e.subscriberRunOnce(ctx, cfg)
	})
	if err != nil {
		return SubscriberResult{}, err
	}
	return subscriberResult(cfg, info, runs), nil
}

func (e *env) subscriberRunOnce(ctx context.Context, cfg SubscriberConfig) (subscriberRun, error) {
	var r subscriberRun
	raw, err := e.rawIncomingLeg(ctx, cfg.Backlog)
	if err != nil {
		return r, err
	}
	r.raw = raw
	e.legs.legDone()
	for _, l := range consumeLegs {
		res, err := profiled(ctx, fmt.Sprintf("consume-%s-%d", l.impl, l.inFlight), func(ctx context.Context) (ConsumeResult, error) {
			if l.impl == implOurs {
				return e.oursConsumeLeg(ctx, cfg.Backlog, cfg.Batch, l.inFlight)
			}
			return e.wmConsumeLeg(ctx, cfg.Backlog, cfg.Batch, l.inFlight)
		})
		if err != nil {
			return r, err
		}
		r.legs = append(r.legs, res)
		e.legs.legDone()
	}
	if !cfg.SkipRiver {
		res, err := e.riverConsumeLeg(ctx, cfg)
		if err != nil {
			return r, err
		}
		r.legs = append(r.legs, res)
		e.legs.legDone()
	}
	return r, nil
}

// consumeLegs are the consume legs of every run of the subscriber benchmark but River's: an
// implementation with a number of messages in flight.
var consumeLegs = []struct {
	impl     string
	inFlight int
}{
	{implOurs, 1},
	{implOurs, SubscriberWideInFlight},
	{implOurs, SubscriberWidestInFlight},
	{implWatermillSQL, 1},
	{implWatermillSQL, SubscriberWideInFlight},
}

// subscriberLegs is the number of legs of one run of the subscriber benchmark with cfg: the raw
// loop, the consume legs and River's.
func subscriberLegs(cfg SubscriberConfig) int {
	n := 1 + len(consumeLegs)
	if !cfg.SkipRiver {
		n++
	}
	return n
}

// leg returns the consume leg of impl with inFlight.
func (r SubscriberResult) leg(impl string, inFlight int) (ConsumeResult, bool) {
	for _, l := range r.Legs {
		if l.Impl == impl && l.InFlight == inFlight {
			return l, true
		}
	}
	return ConsumeResult{}, false
}

// wmBest is watermill-sql's best consume leg.
func (r SubscriberResult) wmBest() (ConsumeResult, bool) {
	var best ConsumeResult
	found := false
	for _, l := range r.Legs {
		if l.Impl == implWatermillSQL && (!found || l.Rate > best.Rate) {
			best, found = l, true
		}
	}
	return best, found
}

// subscriberResult is the result of runs: for every leg, the run with the median rate, and
// the summary of those.
func subscriberResult(cfg SubscriberConfig, info RunInfo, runs []subscriberRun) SubscriberResult {
	res := SubscriberResult{
		RunInfo: info,
		Config:  cfg,
		Raw:     medianBy(runs, func(r subscriberRun) RawResult { return r.raw }, func(r RawResult) float64 { return r.Rate }),
		Legs:    mediansBy(runs, func(r subscriberRun) []ConsumeResult { return r.legs }, func(c ConsumeResult) float64 { return c.Rate }),
	}
	perRun := make([]Figures, len(runs))
	for i, r := range runs {
		perRun[i] = r.figures()
	}
	res.Figures = statsOf(perRun)
	return res
}

// --- The raw loop over the incoming table.

// prefillIncoming writes n messages for topic as our durable local queue's rows, through
// our publisher (publisher.Incoming), prefillBatch messages per transaction, then ANALYZEs.
func (j *jasperSchema) prefillIncoming(ctx context.Context, topic string, n int) error {
	pub, err := publisher.NewPublisher(wmsql.BeginnerFromPgx(j.e.pool), publisher.Config{Schema: j.cfg, Driver: j.e.drv, Table: publisher.Incoming}, j.e.logger)
	if err != nil {
		return err
	}
	defer pub.Close()
	err = j.e.inBatches(n, func(msgs []*message.Message) error {
		for _, m := range msgs {
			m.SetContext(ctx)
		}
		return pub.Publish(topic, msgs...)
	})
	if err != nil {
		return fmt.Errorf("bench: prefill incoming: %w", err)
	}
	return j.e.analyze(ctx, j.incoming())
}

func (j *jasperSchema) incoming() string { return j.cfg.Qualified(schema.IncomingTable) }

// runRawIncomingLoop drains a prefilled topic of the incoming table with our subscriber's
// own storage operations and nothing else: ClaimIncoming of up to rawBatch rows (the
// subscriber's claim: UPDATE ... SET owner_id ... FROM (SELECT ... WHERE received_at = topic
// AND status = 'Incoming' AND owner_id = 0 LIMIT n FOR UPDATE SKIP LOCKED) RETURNING its
// columns), then DeleteIncoming of their ids (its ack); one goroutine, each statement its
// own transaction. It is the outbox benchmark's raw loop on the incoming table: the physical
// limit of the design.
func (j *jasperSchema) runRawIncomingLoop(ctx context.Context, topic string, n int) (RawResult, error) {
	return j.rawLoop(ctx, n, fmt.Sprintf("raw loop %d", n), claimThenDelete(func(ctx context.Context) ([]row.Envelope, error) {
		return j.store.ClaimIncoming(ctx, store.ClaimIncomingParams{Owner: rawOwner, Topic: topic, Limit: rawBatch})
	}, j.store.DeleteIncoming))
}

// rawIncomingLeg prefills a fresh schema's incoming table and runs the raw loop over it.
func (e *env) rawIncomingLeg(ctx context.Context, n int) (res RawResult, err error) {
	j, err := newJasperSchema(ctx, e)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, j.close()) }()
	e.logf("raw loop %d: prefilling", n)
	if err := j.prefillIncoming(ctx, subTopic, n); err != nil {
		return res, err
	}
	return j.runRawIncomingLoop(ctx, subTopic, n)
}

// --- Consume legs.

// oursConsumeLeg prefills a fresh schema's incoming table and times our subscriber
// (defaults but BatchSize batch and MaxInFlight inFlight) consuming it through a router.
func (e *env) oursConsumeLeg(ctx context.Context, n, batch, inFlight int) (res ConsumeResult, err error) {
	label := fmt.Sprintf("%s %d in flight", implOurs, inFlight)
	j, err := newJasperSchema(ctx, e)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, j.close()) }()
	e.logf("%s: prefilling %d", label, n)
	if err := j.prefillIncoming(ctx, subTopic, n); err != nil {
		return res, err
	}
	// The consumer is a runtime with a subscriber, as in a service. Its statements are
	// counted from the subscriber's creation (the runtime is started before, untimed, as the
	// router's timing starts after it) to the last acknowledgement: the subscriber's, and the
	// runtime agent's while the leg runs.
	qc := &queryCounter{}
	drv, err := countingDriver(e.pool, qc)
	if err != nil {
		return res, err
	}
	rt, err := jasper.NewRuntime(drv, jasper.Config{Schema: j.cfg.Schema}, e.logger)
	if err != nil {
		return res, err
	}
	if err := rt.Start(ctx); err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, stopRuntime(rt)) }()
	qc.statements.Store(0)
	qc.txs.Store(0)
	sub, err := rt.Subscriber(subscriber.Config{BatchSize: batch, MaxInFlight: inFlight})
	if err != nil {
		return res, err
	}
	// The router closes it; Close is idempotent (for the error paths).
	defer func() { err = errors.Join(err, sub.Close()) }()
	// Untimed, as watermill-sql's (which creates its tables): the subscriber checks the
	// tables once (catalog queries, tens of ms) and Subscribe then skips the check.
	if err := sub.SubscribeInitialize(subTopic); err != nil {
		return res, err
	}
	c := newCounter(n)
	r, err := message.NewRouter(message.RouterConfig{}, e.logger)
	if err != nil {
		return res, err
	}
	r.AddConsumerHandler("bench-ours", subTopic, sub, countingHandler(c))
	left := func(ctx context.Context) (int64, error) { return e.countRows(ctx, j.incoming()) }
	return e.timedConsume(ctx, label, ConsumeResult{Impl: implOurs, InFlight: inFlight, N: n}, c, r, left, nil, qc)
}

// wmConsumeLeg prefills a fresh schema's watermill-sql table through its publisher and times
// that many watermill-sql subscribers of one consumer group consuming it through a router
// (one handler each).
func (e *env) wmConsumeLeg(ctx context.Context, n, batch, subscribers int) (res ConsumeResult, err error) {
	label := fmt.Sprintf("%s %d subscriber(s)", implWatermillSQL, subscribers)
	name, err := e.newSchema(ctx)
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, e.dropSchema(name)) }()
	adapter, offsets := wmAdapters(name)
	adapter.GeneratePayloadType = func(string) string { return "BYTEA" }
	adapter.SubscribeBatchSize = batch
	qc := &queryCounter{}
	var subs []*wmsql.Subscriber
	defer func() {
		for _, s := range subs {
			err = errors.Join(err, s.Close())
		}
	}()
	for range subscribers {
		s, err := wmsql.NewSubscriber(countingBeginner{b: wmsql.BeginnerFromPgx(e.pool), qc: qc}, wmsql.SubscriberConfig{
			ConsumerGroup:  wmConsumerGroup,
			PollInterval:   WatermillPollInterval,
			SchemaAdapter:  adapter,
			OffsetsAdapter: offsets,
		}, e.logger)
		if err != nil {
			return res, err
		}
		subs = append(subs, s)
	}
	for _, s := range subs {
		if err := s.SubscribeInitialize(subTopic); err != nil {
			return res, fmt.Errorf("bench: initialize watermill-sql tables: %w", err)
		}
	}
	table := adapter.MessagesTable(subTopic)
	e.logf("%s: prefilling %d", label, n)
	err = e.inBatches(n, func(msgs []*message.Message) error {
		// One transaction of the batch (a multi-row INSERT).
		return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			p, err := wmsql.NewPublisher(wmsql.TxFromPgx(tx), wmsql.PublisherConfig{SchemaAdapter: adapter}, e.logger)
			if err != nil {
				return err
			}
			return p.Publish(subTopic, msgs...)
		})
	})
	if err != nil {
		return res, fmt.Errorf("bench: prefill watermill-sql: %w", err)
	}
	if err := e.analyze(ctx, table); err != nil {
		return res, err
	}
	c := newCounter(n)
	r, err := message.NewRouter(message.RouterConfig{}, e.logger)
	if err != nil {
		return res, err
	}
	for i, s := range subs {
		r.AddConsumerHandler(fmt.Sprintf("bench-wm-%d", i), subTopic, s, countingHandler(c))
	}
	// Messages past the consumer group's acknowledged offset.
	left := func(ctx context.Context) (int64, error) {
		return e.wmLeft(ctx, table, offsets.MessagesOffsetsTable(subTopic), wmConsumerGroup)
	}
	return e.timedConsume(ctx, label, ConsumeResult{Impl: implWatermillSQL, InFlight: subscribers, N: n}, c, r, left, e.wmHeldBack(table), qc)
}

// countingHandler is the benchmark's handler: it records the message's UUID and acks.
func countingHandler(c *counter) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		c.add(msg.UUID)
		return nil
	}
}

// consumeProgressEvery is how often a consume leg reports its progress.
const consumeProgressEvery = 500 * time.Millisecond

// timedConsume runs r (its handlers count into c) and times it from the call that starts it
// until c has seen all res.N messages (held: see awaitCount). Then it waits for every message
// to be acknowledged in the database (left), stops the router (which closes the subscribers)
// and checks the counts: exactly res.N distinct messages, duplicates reported.
func (e *env) timedConsume(ctx context.Context, label string, res ConsumeResult, c *counter, r *message.Router,
	left func(context.Context) (int64, error), held heldFunc, qc *queryCounter) (ConsumeResult, error) {
	ctx, untimed := timedPhase(ctx)
	defer untimed()
	n := res.N
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Run's error, then closed: a second receive (after awaitCount took the error) does not block.
	runErr := make(chan error, 1)
	t0 := time.Now()
	go func() {
		runErr <- r.Run(runCtx)
		close(runErr)
	}()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		err := r.Close()
		select {
		case rerr := <-runErr:
			err = errors.Join(err, rerr)
		case <-time.After(time.Minute):
			err = errors.Join(err, errors.New("router did not stop within 1m"))
		}
		return err
	}
	defer func() { _ = stop() }()
	if err := e.awaitCount(ctx, label, c, n, t0, consumeProgressEvery, held, runErr); err != nil {
		return res, err
	}
	res.Elapsed, res.FirstMsg, res.Rate = c.timing(t0)
	// Let the subscribers acknowledge everything in the database, then stop them.
	var err error
	if res.Left, err = awaitAcked(ctx, left, 5*time.Millisecond); err != nil {
		return res, fmt.Errorf("%s: count messages left: %w", label, err)
	}
	res.Statements = qc.statements.Load()
	if err := stop(); err != nil {
		return res, fmt.Errorf("%s: stop router: %w", label, err)
	}
	// Late duplicates would arrive within a moment of the stop.
	time.Sleep(100 * time.Millisecond)
	res.Received, res.Dups = c.counts()
	e.logf("%s: %d/%d in %s (%.0f msg/s, first after %s), %d duplicates, %d left, %d statements",
		label, res.Received, n, res.Elapsed.Round(time.Millisecond), res.Rate, fmtMs(res.FirstMsg), res.Dups, res.Left, res.Statements)
	if res.Received != n {
		return res, fmt.Errorf("%s: handled %d distinct messages, want %d", label, res.Received, n)
	}
	if res.Left != 0 {
		return res, fmt.Errorf("%s: %d messages still unacknowledged in the database 10s after the last was handled", label, res.Left)
	}
	return res, nil
}
