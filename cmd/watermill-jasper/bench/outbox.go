package bench

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"
)

// Publish leg names. "ours" makes a Publisher per transaction on sql.TxFromPgx(tx), the
// documented way; "shared" uses one Publisher on the pool and publisher.WithTx.
const (
	pubOrdersOnly = "orders only (no message)"
	pubBare       = "bare INSERT of the same row"
	pubOurs       = "ours (default)"
	pubOursNoNtfy = "ours NotifyEveryPublish"
	pubOursShared = "ours shared publisher + WithTx"
	pubOursShNoN  = "ours shared publisher + WithTx, NotifyEveryPublish"
	pubWatermill  = "watermill forwarder.NewPublisher"
)

// implWatermillJasperAMQP names the Watermill leg that relays to RabbitMQ through the same
// publisher as ours (jasperamqp), to separate the relay's design from the AMQP client's.
const implWatermillJasperAMQP = "watermill+jasperamqp"

// OutboxResult is what RunOutbox measured: for several runs, the median run of each leg.
type OutboxResult struct {
	RunInfo
	Config  OutboxConfig
	Publish []PublishResult
	Raw     RawResult
	// RawClaim is the claim-then-delete loop of the design that marks rows.
	RawClaim RawResult
	Drains   []DrainResult
	Latency  []LatencyResult
	Idle     []IdleResult
	// Figures are the figures of every run (Figures keys) summarised: median, min, max.
	Figures Stats
}

// runResult is one run of every leg.
type runResult struct {
	publish []PublishResult
	raw     RawResult
	drains  []DrainResult
	latency []LatencyResult
	idle    []IdleResult
	// rawClaim is the claim-then-delete loop (the raw loop of the design that marks rows).
	rawClaim RawResult
	// scheduled is the delayed-messages leg (nil when it did not run).
	scheduled *ScheduledResult
}

// RunOutbox runs the outbox benchmark (see the package documentation) and writes progress
// lines to progress. It returns the medians of cfg.Runs runs. Every schema and queue it
// creates is dropped before it returns, also when ctx is cancelled.
func RunOutbox(ctx context.Context, cfg OutboxConfig, progress io.Writer) (OutboxResult, error) {
	cfg = quicken(withZeroFrom(cfg, outboxDefaults), cfg.Quick, quickOutbox)
	if err := cfg.validate(); err != nil {
		return OutboxResult{}, err
	}
	perRun := func(e *env) int { return e.plan().legs(e) }
	runs, info, err := runAll(ctx, cfg, cfg.Runs, progress, perRun, func(ctx context.Context, e *env) (runResult, error) {
		return e.runOnce(ctx)
	})
	if err != nil {
		return OutboxResult{}, err
	}
	return outboxResult(cfg, info, runs), nil
}

// outboxPlan is the legs of one run of the outbox benchmark, in the order they run (legs
// whose implementation is skipped are left out).
type outboxPlan struct {
	publish []publishVariant
	drains  []outboxDrainLeg
	lats    []outboxLatLeg
	idles   []outboxIdleLeg
	// cdc are the logical-replication legs (env.cdcLegs), which run last, on their own
	// server.
	cdc cdcLegs
}

// outboxDrainLeg is a drain leg: impl's relay (from newOutbox) drains n messages into a sink
// of kind.
type outboxDrainLeg struct {
	impl      string
	newOutbox outboxFactory
	kind      string
	n         int
}

// outboxLatLeg is a latency leg of impl to a sink of kind.
type outboxLatLeg struct {
	impl      string
	newOutbox outboxFactory
	kind      string
}

// outboxIdleLeg is an idle leg of impl.
type outboxIdleLeg struct {
	impl      string
	newOutbox outboxFactory
}

// plan returns the legs of one run with e's config.
func (e *env) plan() outboxPlan {
	cfg := e.cfg
	var p outboxPlan
	ours := newOursOutbox(oursOptions{})
	wm := newWMOutbox()

	// 1. Publish: one message per business transaction, cfg.Publishers goroutines.
	topic := "bench_orders"
	viaBusinessTx := func(o outbox) func(ctx context.Context) error {
		return func(ctx context.Context) error { return o.businessTx(ctx, topic, e.newMessage()) }
	}
	p.publish = []publishVariant{
		{pubOrdersOnly, ours, func(o outbox) func(ctx context.Context) error {
			return func(ctx context.Context) error { return o.(*oursOutbox).ordersOnlyTx(ctx, e.newMessage()) }
		}},
		{pubBare, ours, func(o outbox) func(ctx context.Context) error {
			return func(ctx context.Context) error { return o.(*oursOutbox).bareInsertTx(ctx, topic, e.newMessage()) }
		}},
		{pubOurs, ours, viaBusinessTx},
		{pubOursNoNtfy, newOursOutbox(oursOptions{notify: true}), viaBusinessTx},
		{pubOursShared, newOursOutbox(oursOptions{sharedPublisher: true}), viaBusinessTx},
		{pubOursShNoN, newOursOutbox(oursOptions{sharedPublisher: true, notify: true}), viaBusinessTx},
	}
	if !cfg.SkipWatermill {
		p.publish = append(p.publish, publishVariant{pubWatermill, wm, viaBusinessTx})
	}

	// 3. Drains.
	type drainLeg struct {
		outboxDrainLeg
		watermill bool
	}
	drains := []drainLeg{{outboxDrainLeg{implOurs, ours, sinkGoChannel, cfg.Backlog}, false}}
	if !cfg.SkipFlat {
		drains = append(drains,
			drainLeg{outboxDrainLeg{implOurs, ours, sinkGoChannel, cfg.FlatBacklogs[0]}, false},
			drainLeg{outboxDrainLeg{implOurs, ours, sinkGoChannel, cfg.FlatBacklogs[1]}, false})
	}
	drains = append(drains,
		drainLeg{outboxDrainLeg{implWatermill, wm, sinkGoChannel, cfg.Backlog}, true},
		drainLeg{outboxDrainLeg{implWatermill, wm, sinkGoChannel, cfg.FlatBacklogs[0]}, true})
	if !cfg.SkipRiver {
		drains = append(drains, drainLeg{outboxDrainLeg{implRiver, newRiverOutbox(), sinkGoChannel, cfg.Backlog}, false})
	}
	if cfg.amqpEnabled() {
		drains = append(drains,
			drainLeg{outboxDrainLeg{implOurs, ours, sinkAMQP, cfg.Backlog}, false},
			drainLeg{outboxDrainLeg{implWatermill, wm, sinkAMQP, cfg.Backlog}, true},
			drainLeg{outboxDrainLeg{implWatermillJasperAMQP, newWMOutboxJasperAMQP(), sinkAMQP, cfg.Backlog}, true})
	}
	seen := map[string]bool{}
	for _, d := range drains {
		key := fmt.Sprint(d.impl, d.kind, d.n)
		if (d.watermill && cfg.SkipWatermill) || seen[key] {
			continue
		}
		seen[key] = true
		p.drains = append(p.drains, d.outboxDrainLeg)
	}

	// 4. Latency at a steady rate.
	p.lats = []outboxLatLeg{{implOurs, ours, sinkGoChannel}}
	if !cfg.SkipWatermill {
		p.lats = append(p.lats, outboxLatLeg{implWatermill, wm, sinkGoChannel})
	}
	if !cfg.SkipRiver {
		p.lats = append(p.lats, outboxLatLeg{implRiver, newRiverOutbox(), sinkGoChannel})
	}
	if cfg.amqpEnabled() {
		p.lats = append(p.lats, outboxLatLeg{implOurs, ours, sinkAMQP})
		if !cfg.SkipWatermill {
			p.lats = append(p.lats, outboxLatLeg{implWatermill, wm, sinkAMQP})
		}
	}

	// 5. What an idle relay costs the database.
	p.idles = []outboxIdleLeg{{implOurs, ours}}
	if !cfg.SkipWatermill {
		p.idles = append(p.idles, outboxIdleLeg{implWatermill, wm})
	}

	// 7. Logical replication, on its own server (runCDC).
	p.cdc = e.cdcLegs()
	return p
}

// legs is the number of legs of the plan (a publish variant counts once per round; the raw
// loops, the broker's limit and the scheduled messages count too), for the progress.
func (p outboxPlan) legs(e *env) int {
	n := len(p.publish)*e.publishRounds() + 2 + len(p.drains) + len(p.lats) + len(p.idles) + 1 + p.cdc.count()
	if e.cfg.amqpEnabled() {
		n++ // the broker's limit
	}
	return n
}

// runOnce is one run of the outbox benchmark: the legs of e's plan, in order, each reported
// to the progress when it ends.
func (e *env) runOnce(ctx context.Context) (runResult, error) {
	cfg := e.cfg
	var r runResult
	p := e.plan()
	if p.cdc.count() > 0 {
		// Open the logical-replication legs' server first: a bad --cdc-dsn is refused before
		// the other legs run, not after them.
		if _, err := e.cdcEnv(ctx); err != nil {
			return r, err
		}
	}

	// 1. Publish: one message per business transaction, cfg.Publishers goroutines.
	pubs, err := e.publishLegs(ctx, p.publish)
	if err != nil {
		return r, err
	}
	r.publish = pubs

	// 2. The physical limits: the raw loop of the relay's statements (lock and delete in a
	// transaction), and the claim-then-delete loop of the design that marks rows.
	raw, err := e.rawLeg(ctx, cfg.Backlog, (*jasperSchema).runRawLoop)
	if err != nil {
		return r, err
	}
	r.raw = raw
	e.legs.legDone()
	if r.rawClaim, err = e.rawLeg(ctx, cfg.Backlog, (*jasperSchema).runRawClaimLoop); err != nil {
		return r, err
	}
	e.legs.legDone()

	// 3. Drains.
	if err := e.runDrains(ctx, p.drains, &r); err != nil {
		return r, err
	}
	if cfg.amqpEnabled() {
		res, err := profiled(ctx, "amqp-broker-limit", func(ctx context.Context) (DrainResult, error) { return e.brokerLimitLeg(ctx, cfg.Backlog) })
		if err != nil {
			return r, err
		}
		r.drains = append(r.drains, res)
		e.legs.legDone()
	}

	// 4. Latency at a steady rate; 5. what an idle relay costs the database.
	if err := e.runLatencies(ctx, p.lats, &r); err != nil {
		return r, err
	}
	if err := e.runIdles(ctx, p.idles, &r); err != nil {
		return r, err
	}

	// 6. Delayed messages: how late (never early) they arrive.
	sched, err := e.scheduledLeg(ctx, cfg.ScheduledMessages, cfg.ScheduledSpread)
	if err != nil {
		return r, err
	}
	r.scheduled = &sched
	e.legs.legDone()

	// 7. Logical replication: the slot's relay beside the polling one, on a logical server.
	if err := e.runCDC(ctx, p.cdc, &r); err != nil {
		return r, err
	}
	return r, nil
}

// runDrains runs drain legs on e (their outboxes in e's database) into r.
func (e *env) runDrains(ctx context.Context, drains []outboxDrainLeg, r *runResult) error {
	for _, d := range drains {
		res, err := profiled(ctx, fmt.Sprintf("drain-%s-%s-%d", d.impl, d.kind, d.n), func(ctx context.Context) (DrainResult, error) {
			return e.drainLeg(ctx, d.impl, d.newOutbox, d.kind, d.n)
		})
		if err != nil {
			return err
		}
		r.drains = append(r.drains, res)
		e.legs.legDone()
	}
	return nil
}

// runLatencies runs latency legs on e into r.
func (e *env) runLatencies(ctx context.Context, lats []outboxLatLeg, r *runResult) error {
	for _, l := range lats {
		res, err := profiled(ctx, fmt.Sprintf("latency-%s-%s", l.impl, l.kind), func(ctx context.Context) (LatencyResult, error) {
			return e.latencyLeg(ctx, l.impl, l.newOutbox, l.kind)
		})
		if err != nil {
			return err
		}
		r.latency = append(r.latency, res)
		e.legs.legDone()
	}
	return nil
}

// runIdles runs idle legs on e into r.
func (e *env) runIdles(ctx context.Context, idles []outboxIdleLeg, r *runResult) error {
	for _, l := range idles {
		res, err := e.idleLeg(ctx, l.impl, l.newOutbox)
		if err != nil {
			return err
		}
		r.idle = append(r.idle, res)
		e.legs.legDone()
	}
	return nil
}

// outboxResult is the result of runs: for every leg, the run with the median figure (lower
// middle for an even number of runs), and the summary of those.
func outboxResult(cfg OutboxConfig, info RunInfo, runs []runResult) OutboxResult {
	res := OutboxResult{
		RunInfo:  info,
		Config:   cfg,
		Publish:  mediansBy(runs, func(r runResult) []PublishResult { return r.publish }, func(p PublishResult) float64 { return p.TPS }),
		Raw:      medianBy(runs, func(r runResult) RawResult { return r.raw }, func(r RawResult) float64 { return r.Rate }),
		RawClaim: medianBy(runs, func(r runResult) RawResult { return r.rawClaim }, func(r RawResult) float64 { return r.Rate }),
		Drains:   mediansBy(runs, func(r runResult) []DrainResult { return r.drains }, func(p DrainResult) float64 { return p.Rate }),
		Latency:  mediansBy(runs, func(r runResult) []LatencyResult { return r.latency }, func(p LatencyResult) float64 { return float64(p.P99) }),
		Idle:     mediansBy(runs, func(r runResult) []IdleResult { return r.idle }, func(p IdleResult) float64 { return p.StatementsSec }),
	}
	perRun := make([]Figures, len(runs))
	for i, r := range runs {
		perRun[i] = r.figures(cfg)
	}
	res.Figures = statsOf(perRun)
	return res
}

// Stats are the figures of every run summarised (the --json keys).
func (r OutboxResult) Stats() Stats { return r.Figures }

// figures are this run's figures by --json key (docs/benchmarks.md). Ratios are taken within
// the run.
func (r runResult) figures(cfg OutboxConfig) Figures {
	f := Figures{}
	drain := func(impl, sink string, n int) float64 {
		for _, d := range r.drains {
			if d.Impl == impl && d.Sink == sink && d.N == n {
				return d.Rate
			}
		}
		return nan
	}
	rss := func(n int) float64 {
		for _, d := range r.drains {
			if d.Impl == implOurs && d.Sink == sinkGoChannel && d.N == n {
				return d.PeakRSSMB
			}
		}
		return nan
	}
	f.set("drain_ours", drain(implOurs, sinkGoChannel, cfg.Backlog))
	f.set("drain_raw", r.raw.Rate)
	f.set("drain_raw_claim", r.rawClaim.Rate)
	f.set("drain_watermill", drain(implWatermill, sinkGoChannel, cfg.Backlog))
	f.set("drain_river", drain(implRiver, sinkGoChannel, cfg.Backlog))
	f.set("drain_ours_5k", drain(implOurs, sinkGoChannel, cfg.FlatBacklogs[0]))
	f.set("drain_ours_1m", drain(implOurs, sinkGoChannel, cfg.FlatBacklogs[1]))
	f.set("rss_mb_5k", rss(cfg.FlatBacklogs[0]))
	f.set("rss_mb_1m", rss(cfg.FlatBacklogs[1]))
	f.set("amqp_ours", drain(implOurs, sinkAMQP, cfg.Backlog))
	f.set("amqp_watermill", drain(implWatermill, sinkAMQP, cfg.Backlog))
	f.set("amqp_broker_limit", drain(implBrokerLimit, sinkAMQP, cfg.Backlog))
	for _, p := range r.publish {
		switch p.Name {
		case pubOurs:
			f.set("publish_ours", p.TPS)
		case pubBare:
			f.set("publish_bare_insert", p.TPS)
		case pubWatermill:
			f.set("publish_watermill", p.TPS)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, l := range r.latency {
		prefix := ""
		switch {
		case l.Impl == implOurs && l.Sink == sinkGoChannel:
			prefix = "latency_"
		case l.Impl == implOurs && l.Sink == sinkAMQP:
			prefix = "amqp_latency_"
		case l.Impl == implRiver && l.Sink == sinkGoChannel:
			prefix = "river_latency_"
		case l.Impl == implWatermill && l.Sink == sinkGoChannel:
			prefix = "watermill_latency_"
		case l.Impl == implCDC:
			prefix = "cdc_latency_"
		case l.Impl == implCDCPolling:
			prefix = "cdc_polling_latency_"
		case l.Impl == implCDCRaw:
			prefix = "cdc_raw_latency_"
		case l.Impl == implCDCTableLess:
			prefix = "cdc_tableless_latency_"
		default:
			continue
		}
		f.set(prefix+"p50_ms", ms(l.P50))
		f.set(prefix+"p99_ms", ms(l.P99))
		f.set(prefix+"max_ms", ms(l.Max))
	}
	for _, i := range r.idle {
		switch i.Impl {
		case implOurs:
			f.set("idle_statements_per_s", i.StatementsSec)
			f.set("idle_outbox_statements_per_s", i.OutboxStatementsSec)
			f.set("idle_relay_statements_per_s", i.RelayStatementsSec)
		case implCDC:
			f.set("cdc_idle_statements_per_s", i.RelayStatementsSec)
			f.set("cdc_idle_outbox_statements_per_s", i.OutboxStatementsSec)
			f.set("cdc_idle_all_statements_per_s", i.StatementsSec)
		}
	}
	f.set("cdc_drain", drain(implCDC, sinkGoChannel, cfg.Backlog))
	f.set("cdc_polling_drain", drain(implCDCPolling, sinkGoChannel, cfg.Backlog))
	f.set("cdc_tableless_drain", drain(implCDCTableLess, sinkGoChannel, cfg.Backlog))
	if r.scheduled != nil {
		f.set("scheduled_late_p50_ms", ms(r.scheduled.LateP50))
		f.set("scheduled_late_p99_ms", ms(r.scheduled.LateP99))
		f.set("scheduled_late_max_ms", ms(r.scheduled.LateMax))
		f.set("scheduled_early", float64(r.scheduled.Early))
	}
	f.ratio("drain_of_raw", "drain_ours", "drain_raw")
	f.ratio("drain_of_raw_claim", "drain_ours", "drain_raw_claim")
	f.ratio("drain_x_river", "drain_ours", "drain_river")
	f.ratio("drain_x_watermill", "drain_ours", "drain_watermill")
	f.ratio("flat_1m_of_5k", "drain_ours_1m", "drain_ours_5k")
	f.ratio("rss_1m_of_5k", "rss_mb_1m", "rss_mb_5k")
	f.ratio("amqp_of_limit", "amqp_ours", "amqp_broker_limit")
	f.ratio("publish_cost_x", "publish_bare_insert", "publish_ours")
	f.ratio("latency_p99_of_river", "latency_p99_ms", "river_latency_p99_ms")
	f.ratio("cdc_drain_of_polling", "cdc_drain", "cdc_polling_drain")
	f.ratio("cdc_tableless_drain_of_cdc", "cdc_tableless_drain", "cdc_drain")
	return f
}

// medianBy returns, of the figures get takes from each run, the one with the median key (the
// lower middle for an even number of runs).
func medianBy[R, T any](runs []R, get func(R) T, key func(T) float64) T {
	vs := make([]T, len(runs))
	for i, r := range runs {
		vs[i] = get(r)
	}
	sort.SliceStable(vs, func(i, j int) bool { return key(vs[i]) < key(vs[j]) })
	return vs[(len(vs)-1)/2]
}

// mediansBy is medianBy of every leg of a list that each run has in the same order (get), the
// first run's length.
func mediansBy[R, T any](runs []R, get func(R) []T, key func(T) float64) []T {
	var out []T
	for i := range get(runs[0]) {
		out = append(out, medianBy(runs, func(r R) T { return get(r)[i] }, key))
	}
	return out
}

func (r OutboxResult) publish(name string) (PublishResult, bool) {
	for _, p := range r.Publish {
		if p.Name == name {
			return p, true
		}
	}
	return PublishResult{}, false
}

func (r OutboxResult) drain(impl, kind string, n int) (DrainResult, bool) {
	for _, d := range r.Drains {
		if d.Impl == impl && d.Sink == kind && d.N == n {
			return d, true
		}
	}
	return DrainResult{}, false
}

func (r OutboxResult) latency(impl, kind string) (LatencyResult, bool) {
	for _, l := range r.Latency {
		if l.Impl == impl && l.Sink == kind {
			return l, true
		}
	}
	return LatencyResult{}, false
}

// outboxTargets are the acceptance numbers of the outbox figures (docs/benchmarks.md).
var outboxTargets = []target{
	{"drain_of_raw", 0.85, false},
	{"drain_x_river", 2, false},
	{"flat_1m_of_5k", 0.8, false},
	{"rss_1m_of_5k", 1.2, true},
	{"amqp_of_limit", 0.8, false},
	{"publish_cost_x", 1.05, true},
	{"latency_p99_ms", 5, true},
	{"latency_max_ms", 20, true},
	{"latency_p99_of_river", 0.2, true},
	{"scheduled_late_p99_ms", 20, true},
	{"scheduled_early", 0, true},
	{"cdc_drain_of_polling", 1, false},
	{"cdc_latency_p99_ms", 3, true},
	{"cdc_idle_statements_per_s", 0, true},
}

// ResultLine is the one-line summary printed last: the median of every target figure.
func (r OutboxResult) ResultLine() string { return resultLine(r.Figures, outboxTargets) }
