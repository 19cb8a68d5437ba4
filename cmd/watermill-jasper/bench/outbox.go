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
	Drains  []DrainResult
	Latency []LatencyResult
	Idle    []IdleResult
	Summary Summary
}

// Summary holds the figures of the RESULT line; NaN when a leg was skipped.
type Summary struct {
	// DrainGoChannelX is our drain rate to GoChannel over Watermill's (Backlog).
	DrainGoChannelX float64
	// DrainAMQPX is our drain rate to RabbitMQ over Watermill's (Backlog).
	DrainAMQPX float64
	// DrainOfLimit is our drain rate to GoChannel over the raw loop's (Backlog).
	DrainOfLimit float64
	// PublishCostX is the time of a business transaction publishing through our default
	// publisher over one doing a bare INSERT of the same row instead.
	PublishCostX float64
	// P99Ms is our commit -> GoChannel p99 latency at the steady rate, in ms.
	P99Ms float64
	// Flat is our drain rate at the large flat backlog over the small one.
	Flat float64
}

// runResult is one run of every leg.
type runResult struct {
	publish []PublishResult
	raw     RawResult
	drains  []DrainResult
	latency []LatencyResult
	idle    []IdleResult
}

// RunOutbox runs the outbox benchmark (see the package documentation) and writes progress
// lines to progress. It returns the medians of cfg.Runs runs. Every schema and queue it
// creates is dropped before it returns, also when ctx is cancelled.
func RunOutbox(ctx context.Context, cfg OutboxConfig, progress io.Writer) (OutboxResult, error) {
	cfg = withZeroFrom(cfg, outboxDefaults)
	if err := cfg.validate(); err != nil {
		return OutboxResult{}, err
	}
	runs, info, err := runAll(ctx, cfg, cfg.Runs, progress, func(ctx context.Context, e *env) (runResult, error) {
		return e.runOnce(ctx)
	})
	if err != nil {
		return OutboxResult{}, err
	}
	return outboxResult(cfg, info, runs), nil
}

func (e *env) runOnce(ctx context.Context) (runResult, error) {
	cfg := e.cfg
	var r runResult
	ours := newOursOutbox(oursOptions{})
	wm := newWMOutbox()

	// 1. Publish: one message per business transaction, cfg.Publishers goroutines.
	topic := "bench_orders"
	viaBusinessTx := func(o outbox) func(ctx context.Context) error {
		return func(ctx context.Context) error { return o.businessTx(ctx, topic, e.newMessage()) }
	}
	variants := []publishVariant{
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
		variants = append(variants, publishVariant{pubWatermill, wm, viaBusinessTx})
	}
	pubs, err := e.publishLegs(ctx, variants)
	if err != nil {
		return r, err
	}
	r.publish = pubs

	// 2. The physical limit: the raw claim-then-delete loop.
	raw, err := e.rawLeg(ctx, cfg.Backlog)
	if err != nil {
		return r, err
	}
	r.raw = raw

	// 3. Drains.
	type drainLeg struct {
		impl      string
		watermill bool
		newOutbox outboxFactory
		kind      string
		n         int
	}
	drains := []drainLeg{{implOurs, false, ours, sinkGoChannel, cfg.Backlog}}
	if !cfg.SkipFlat {
		drains = append(drains,
			drainLeg{implOurs, false, ours, sinkGoChannel, cfg.FlatBacklogs[0]},
			drainLeg{implOurs, false, ours, sinkGoChannel, cfg.FlatBacklogs[1]})
	}
	drains = append(drains,
		drainLeg{implWatermill, true, wm, sinkGoChannel, cfg.Backlog},
		drainLeg{implWatermill, true, wm, sinkGoChannel, cfg.FlatBacklogs[0]})
	if cfg.amqpEnabled() {
		drains = append(drains,
			drainLeg{implOurs, false, ours, sinkAMQP, cfg.Backlog},
			drainLeg{implWatermill, true, wm, sinkAMQP, cfg.Backlog},
			drainLeg{implWatermillJasperAMQP, true, newWMOutboxJasperAMQP(), sinkAMQP, cfg.Backlog})
	}
	seen := map[string]bool{}
	for _, d := range drains {
		key := fmt.Sprint(d.impl, d.kind, d.n)
		if (d.watermill && cfg.SkipWatermill) || seen[key] {
			continue
		}
		seen[key] = true
		res, err := e.drainLeg(ctx, d.impl, d.newOutbox, d.kind, d.n)
		if err != nil {
			return r, err
		}
		r.drains = append(r.drains, res)
	}

	// 4. Latency at a steady rate.
	type latLeg struct {
		impl      string
		watermill bool
		newOutbox outboxFactory
		kind      string
	}
	lats := []latLeg{{implOurs, false, ours, sinkGoChannel}, {implWatermill, true, wm, sinkGoChannel}}
	if cfg.amqpEnabled() {
		lats = append(lats, latLeg{implOurs, false, ours, sinkAMQP}, latLeg{implWatermill, true, wm, sinkAMQP})
	}
	for _, l := range lats {
		if l.watermill && cfg.SkipWatermill {
			continue
		}
		res, err := e.latencyLeg(ctx, l.impl, l.newOutbox, l.kind)
		if err != nil {
			return r, err
		}
		r.latency = append(r.latency, res)
	}

	// 5. What an idle relay costs the database.
	idles := []struct {
		impl      string
		watermill bool
		newOutbox outboxFactory
	}{{implOurs, false, ours}, {implWatermill, true, wm}}
	for _, l := range idles {
		if l.watermill && cfg.SkipWatermill {
			continue
		}
		res, err := e.idleLeg(ctx, l.impl, l.newOutbox)
		if err != nil {
			return r, err
		}
		r.idle = append(r.idle, res)
	}
	return r, nil
}

// outboxResult is the result of runs: for every leg, the run with the median figure (lower
// middle for an even number of runs), and the summary of those.
func outboxResult(cfg OutboxConfig, info RunInfo, runs []runResult) OutboxResult {
	res := OutboxResult{
		RunInfo: info,
		Config:  cfg,
		Publish: mediansBy(runs, func(r runResult) []PublishResult { return r.publish }, func(p PublishResult) float64 { return p.TPS }),
		Raw:     medianBy(runs, func(r runResult) RawResult { return r.raw }, func(r RawResult) float64 { return r.Rate }),
		Drains:  mediansBy(runs, func(r runResult) []DrainResult { return r.drains }, func(p DrainResult) float64 { return p.Rate }),
		Latency: mediansBy(runs, func(r runResult) []LatencyResult { return r.latency }, func(p LatencyResult) float64 { return float64(p.P99) }),
		Idle:    mediansBy(runs, func(r runResult) []IdleResult { return r.idle }, func(p IdleResult) float64 { return p.StatementsSec }),
	}
	res.Summary = summarize(res)
	return res
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

func summarize(r OutboxResult) Summary {
	s := Summary{nan, nan, nan, nan, nan, nan}
	cfg := r.Config
	oursGC, okGC := r.drain(implOurs, sinkGoChannel, cfg.Backlog)
	if w, ok := r.drain(implWatermill, sinkGoChannel, cfg.Backlog); ok && okGC {
		s.DrainGoChannelX = quotient(oursGC.Rate, w.Rate)
	}
	if o, ok := r.drain(implOurs, sinkAMQP, cfg.Backlog); ok {
		if w, ok := r.drain(implWatermill, sinkAMQP, cfg.Backlog); ok {
			s.DrainAMQPX = quotient(o.Rate, w.Rate)
		}
	}
	if okGC {
		s.DrainOfLimit = quotient(oursGC.Rate, r.Raw.Rate)
	}
	if o, ok := r.publish(pubOurs); ok {
		if b, ok := r.publish(pubBare); ok {
			s.PublishCostX = quotient(b.TPS, o.TPS)
		}
	}
	if l, ok := r.latency(implOurs, sinkGoChannel); ok {
		s.P99Ms = float64(l.P99) / float64(time.Millisecond)
	}
	small, ok1 := r.drain(implOurs, sinkGoChannel, cfg.FlatBacklogs[0])
	large, ok2 := r.drain(implOurs, sinkGoChannel, cfg.FlatBacklogs[1])
	if ok1 && ok2 {
		s.Flat = quotient(large.Rate, small.Rate)
	}
	return s
}

// ResultLine is the one-line summary printed last.
func (r OutboxResult) ResultLine() string {
	s := r.Summary
	return fmt.Sprintf("RESULT drain_gochannel_x=%s drain_amqp_x=%s drain_of_limit=%s publish_cost_x=%s p99_ms=%s flat=%s",
		figure(s.DrainGoChannelX, 2), figure(s.DrainAMQPX, 2), figure(s.DrainOfLimit, 2), figure(s.PublishCostX, 3), figure(s.P99Ms, 2), figure(s.Flat, 2))
}
