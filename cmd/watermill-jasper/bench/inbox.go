package bench

// RunInbox: the inbox middleware's cost. It shares with RunOutbox only small helpers
// (randomName, percentile, fmtMs), so the outbox benchmark can change freely.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/jackc/pgx/v5/pgxpool"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Defaults of InboxBenchConfig.
const (
	DefaultInboxInFlight        = 8
	DefaultInboxDuration        = 5 * time.Second
	DefaultInboxRate            = 1000
	DefaultInboxLatencyDuration = 5 * time.Second
	DefaultInboxPayload         = 256
	DefaultInboxRuns            = DefaultRuns
)

// InboxBenchConfig configures RunInbox. Zero values take the defaults above.
type InboxBenchConfig struct {
	// DSN of the PostgreSQL database the legs create their schemas in.
	DSN string
	// InFlight is how many messages the throughput legs keep in flight (unacked) at once.
	InFlight int
	// Duration of each throughput leg, after a one-second warm-up.
	Duration time.Duration
	// Rate is the steady rate (messages/s) of the latency legs.
	Rate int
	// LatencyDuration is how long each latency leg sends.
	LatencyDuration time.Duration
	// Payload size in bytes.
	Payload int
	// MaxConns is the size of the pgx pool every variant uses. Default: InFlight + 4, at
	// least 32 (pgxpool's own default is the greater of 4 and the CPUs).
	MaxConns int
	// Runs is how many times every leg runs (in a rotated order, so that a slow spell of the
	// machine does not always hit the same variant); the report gives the medians.
	Runs int
	// Quick runs every leg once at a tiny size: a check that the harness works, as .ci/run
	// does; its figures mean nothing.
	Quick bool
}

// quickInbox is the tiny configuration of InboxBenchConfig.Quick.
var quickInbox = InboxBenchConfig{Duration: 300 * time.Millisecond, LatencyDuration: 300 * time.Millisecond, Rate: 200, Runs: 1}

// inboxDefaults are the values the zero fields of an InboxBenchConfig take, but MaxConns
// (withDefaults).
var inboxDefaults = InboxBenchConfig{
	InFlight:        DefaultInboxInFlight,
	Duration:        DefaultInboxDuration,
	Rate:            DefaultInboxRate,
	LatencyDuration: DefaultInboxLatencyDuration,
	Payload:         DefaultInboxPayload,
	Runs:            DefaultInboxRuns,
}

func (c InboxBenchConfig) withDefaults() InboxBenchConfig {
	c = quicken(withZeroFrom(c, inboxDefaults), c.Quick, quickInbox)
	if c.MaxConns == 0 {
		c.MaxConns = max(c.InFlight+4, 32)
	}
	return c
}

func (c InboxBenchConfig) validate() error {
	switch {
	case c.DSN == "":
		return errors.New("bench inbox: no PostgreSQL DSN")
	case c.InFlight < 1 || c.InFlight > 1000:
		return fmt.Errorf("bench inbox: in-flight must be 1..1000 (got %d)", c.InFlight)
	case c.Rate < 1 || c.Rate > 100000:
		return fmt.Errorf("bench inbox: rate must be 1..100000 msg/s (got %d)", c.Rate)
	case c.Duration < 100*time.Millisecond || c.LatencyDuration < 100*time.Millisecond:
		return errors.New("bench inbox: durations must be at least 100ms")
	case c.Payload < 1:
		return fmt.Errorf("bench inbox: payload must be at least 1 byte (got %d)", c.Payload)
	case c.MaxConns < 1:
		return fmt.Errorf("bench inbox: max-conns must be positive (got %d)", c.MaxConns)
	case c.Runs < 1 || c.Runs > 100:
		return fmt.Errorf("bench inbox: runs must be 1..100 (got %d)", c.Runs)
	}
	return nil
}

// Names of the inbox benchmark's variants.
const (
	InboxVariantPlain        = "no dedup"
	InboxVariantInbox        = "inbox"
	InboxVariantInboxApart   = "inbox, BEGIN apart"
	InboxVariantInboxCleanup = "inbox + cleanup"
	InboxVariantDeduplicator = "Watermill Deduplicator"
)

// inboxVariants are the router legs, in their first run's order.
var inboxVariants = []string{InboxVariantPlain, InboxVariantInbox, InboxVariantInboxApart, InboxVariantInboxCleanup, InboxVariantDeduplicator}

// The cleanup variant keeps its marks inboxCleanupKeepFor and deletes the expired ones every
// inboxCleanupEvery while it is measured (the agent's Handled cleanup,
// durability.Agent.DeleteExpiredHandled, driven by the benchmark instead of the agent's
// timer, so that its work falls in the variant's own slices), so that it deletes marks about
// as fast as it writes them: the steady state of a long-running inbox, compressed.
const (
	inboxCleanupKeepFor = 2 * time.Second
	inboxCleanupEvery   = 250 * time.Millisecond
)

// InboxThroughput is one throughput leg: handled messages per second with InFlight in flight.
type InboxThroughput struct {
	Variant  string
	MsgsPerS float64
	Handled  int64
	// RoundTrips is the requests written to PostgreSQL per message (socket writes; pgx
	// writes a statement, or a pipelined batch, in one).
	RoundTrips float64
}

// InboxLatency is one latency leg: send -> ack latency at a steady rate.
type InboxLatency struct {
	Variant       string
	Sent          int
	Rate          float64
	P50, P99, Max time.Duration
	Phases        InboxPhases
}

// InboxRun is one run of every leg.
type InboxRun struct {
	// CeilingTPS is the business transaction alone (BEGIN; INSERT; COMMIT), InFlight
	// goroutines, no router.
	CeilingTPS float64
	// RawInboxTPS is the inbox's statements alone (BEGIN; INSERT mark; INSERT; COMMIT),
	// InFlight goroutines, no router: what committing them costs on this machine.
	RawInboxTPS float64
	Throughput  []InboxThroughput
	Latency     []InboxLatency
	// CPUPressure is the share of the run's time some task of the machine waited for a CPU
	// (Linux PSI "some", the benchmark's own load included; 0 where unknown).
	CPUPressure float64
}

// InboxResult is the outcome of RunInbox: every run, and the medians over the runs.
type InboxResult struct {
	Config InboxBenchConfig
	Runs   []InboxRun
	// Medians over the runs.
	CeilingTPS  float64
	RawInboxTPS float64
	Throughput  []InboxThroughput
	Latency     []InboxLatency
}

func (r InboxRun) throughput(v string) InboxThroughput {
	for _, t := range r.Throughput {
		if t.Variant == v {
			return t
		}
	}
	return InboxThroughput{Variant: v}
}

func (r InboxRun) latency(v string) InboxLatency {
	for _, l := range r.Latency {
		if l.Variant == v {
			return l
		}
	}
	return InboxLatency{Variant: v}
}

func (r InboxResult) throughput(v string) InboxThroughput {
	return InboxRun{Throughput: r.Throughput}.throughput(v)
}

func (r InboxResult) latency(v string) InboxLatency {
	return InboxRun{Latency: r.Latency}.latency(v)
}

// p99Added is one run's p99 of variant v minus the plain handler's p99, both measured in
// that run.
func (r InboxRun) p99Added(v string) time.Duration {
	return r.latency(v).P99 - r.latency(InboxVariantPlain).P99
}

// P99Added is the median over the runs of the inbox's p99 minus the plain handler's p99 of
// the same run, at the steady rate.
func (r InboxResult) P99Added() time.Duration { return r.p99AddedOf(InboxVariantInbox) }

func (r InboxResult) p99AddedOf(v string) time.Duration {
	return medianDuration(r.Runs, func(run InboxRun) time.Duration { return run.p99Added(v) })
}

// OfCeiling is the median over the runs of variant v's msg/s divided by the business
// transaction ceiling of the same run.
func (r InboxResult) OfCeiling(v string) float64 {
	return medianFloat(r.Runs, func(run InboxRun) float64 { return ratio(run.throughput(v).MsgsPerS, run.CeilingTPS) })
}

// OfRawInbox is the median over the runs of variant v's msg/s divided by the raw inbox
// transactions of the same run.
func (r InboxResult) OfRawInbox(v string) float64 {
	return medianFloat(r.Runs, func(run InboxRun) float64 { return ratio(run.throughput(v).MsgsPerS, run.RawInboxTPS) })
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func medianFloat(runs []InboxRun, f func(InboxRun) float64) float64 {
	if len(runs) == 0 {
		return 0
	}
	xs := make([]float64, len(runs))
	for i, r := range runs {
		xs[i] = f(r)
	}
	sort.Float64s(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

func medianDuration(runs []InboxRun, f func(InboxRun) time.Duration) time.Duration {
	return time.Duration(medianFloat(runs, func(r InboxRun) float64 { return float64(f(r)) }))
}

// summarize fills the medians from the runs.
func (r *InboxResult) summarize() {
	r.CeilingTPS = medianFloat(r.Runs, func(run InboxRun) float64 { return run.CeilingTPS })
	r.RawInboxTPS = medianFloat(r.Runs, func(run InboxRun) float64 { return run.RawInboxTPS })
	r.Throughput, r.Latency = nil, nil
	for _, v := range inboxVariants {
		r.Throughput = append(r.Throughput, InboxThroughput{
			Variant:    v,
			MsgsPerS:   medianFloat(r.Runs, func(run InboxRun) float64 { return run.throughput(v).MsgsPerS }),
			Handled:    int64(medianFloat(r.Runs, func(run InboxRun) float64 { return float64(run.throughput(v).Handled) })),
			RoundTrips: medianFloat(r.Runs, func(run InboxRun) float64 { return run.throughput(v).RoundTrips }),
		})
		md := func(f func(InboxLatency) time.Duration) time.Duration {
			return medianDuration(r.Runs, func(run InboxRun) time.Duration { return f(run.latency(v)) })
		}
		r.Latency = append(r.Latency, InboxLatency{
			Variant: v,
			Sent:    int(medianFloat(r.Runs, func(run InboxRun) float64 { return float64(run.latency(v).Sent) })),
			Rate:    medianFloat(r.Runs, func(run InboxRun) float64 { return run.latency(v).Rate }),
			P50:     md(func(l InboxLatency) time.Duration { return l.P50 }),
			P99:     md(func(l InboxLatency) time.Duration { return l.P99 }),
			Max:     md(func(l InboxLatency) time.Duration { return l.Max }),
			Phases: InboxPhases{
				AcquireP99: md(func(l InboxLatency) time.Duration { return l.Phases.AcquireP99 }),
				BeginP99:   md(func(l InboxLatency) time.Duration { return l.Phases.BeginP99 }),
				CommitP50:  md(func(l InboxLatency) time.Duration { return l.Phases.CommitP50 }),
				CommitP99:  md(func(l InboxLatency) time.Duration { return l.Phases.CommitP99 }),
				GCs:        uint32(medianFloat(r.Runs, func(run InboxRun) float64 { return float64(run.latency(v).Phases.GCs) })),
				GCPauseMax: md(func(l InboxLatency) time.Duration { return l.Phases.GCPauseMax }),
			},
		})
	}
}

// ResultLine is the machine-readable summary (medians over the runs).
func (r InboxResult) ResultLine() string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
	return fmt.Sprintf("RESULT inbox_msgs_per_s=%.0f inbox_p99_added_ms=%s plain_msgs_per_s=%.0f deduplicator_msgs_per_s=%.0f "+
		"ceiling_tx_per_s=%.0f raw_inbox_tx_per_s=%.0f inbox_of_ceiling=%.2f inbox_of_raw_inbox=%.2f "+
		"inbox_apart_msgs_per_s=%.0f inbox_apart_p99_added_ms=%s inbox_round_trips=%.2f inbox_apart_round_trips=%.2f "+
		"inbox_cleanup_msgs_per_s=%.0f inbox_cleanup_p99_added_ms=%s "+
		"inbox_p99_ms=%s plain_p99_ms=%s deduplicator_p99_ms=%s in_flight=%d rate=%d runs=%d",
		r.throughput(InboxVariantInbox).MsgsPerS, ms(r.P99Added()), r.throughput(InboxVariantPlain).MsgsPerS,
		r.throughput(InboxVariantDeduplicator).MsgsPerS, r.CeilingTPS, r.RawInboxTPS,
		r.OfCeiling(InboxVariantInbox), r.OfRawInbox(InboxVariantInbox),
		r.throughput(InboxVariantInboxApart).MsgsPerS, ms(r.p99AddedOf(InboxVariantInboxApart)),
		r.throughput(InboxVariantInbox).RoundTrips, r.throughput(InboxVariantInboxApart).RoundTrips,
		r.throughput(InboxVariantInboxCleanup).MsgsPerS, ms(r.p99AddedOf(InboxVariantInboxCleanup)),
		ms(r.latency(InboxVariantInbox).P99), ms(r.latency(InboxVariantPlain).P99), ms(r.latency(InboxVariantDeduplicator).P99),
		r.Config.InFlight, r.Config.Rate, len(r.Runs))
}

// WriteTable prints the results (medians over the runs, and each run's headline numbers).
func (r InboxResult) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "Handler: one business transaction per message (INSERT into a table with a uuid primary key), "+
		"%d-byte payloads, through a Watermill router; pool of %d connections. Medians of %d run(s).\n", r.Config.Payload, r.Config.MaxConns, len(r.Runs))
	fmt.Fprintf(w, "Ceiling (BEGIN; INSERT; COMMIT, %d goroutines, no router): %.0f tx/s\n", r.Config.InFlight, r.CeilingTPS)
	fmt.Fprintf(w, "Raw inbox statements (BEGIN; INSERT mark; INSERT; COMMIT, %d goroutines, no router): %.0f tx/s\n\n", r.Config.InFlight, r.RawInboxTPS)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "THROUGHPUT (%d in flight)\tMSG/S\tOF CEILING\tOF RAW INBOX\tROUND TRIPS/MSG\n", r.Config.InFlight)
	for _, t := range r.Throughput {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f%%\t%.0f%%\t%.2f\n", t.Variant, t.MsgsPerS, 100*r.OfCeiling(t.Variant), 100*r.OfRawInbox(t.Variant), t.RoundTrips)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "LATENCY at %d msg/s (send -> ack)\tSENT\tP50\tP99\tP99 ADDED\tMAX\tACQUIRE P99\tBEGIN P99\tCOMMIT P50\tCOMMIT P99\tGCS\tGC PAUSE MAX\n", r.Config.Rate)
	for _, l := range r.Latency {
		added := "-"
		if l.Variant != InboxVariantPlain {
			added = fmtMs(r.p99AddedOf(l.Variant))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", l.Variant, l.Sent, fmtMs(l.P50), fmtMs(l.P99), added, fmtMs(l.Max),
			fmtMs(l.Phases.AcquireP99), fmtMs(l.Phases.BeginP99), fmtMs(l.Phases.CommitP50), fmtMs(l.Phases.CommitP99), l.Phases.GCs, fmtMs(l.Phases.GCPauseMax))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "RUN\tCPU PRESSURE\tCEILING TX/S\tRAW INBOX TX/S\tINBOX MSG/S\tAPART MSG/S\tPLAIN P99\tINBOX P99\tADDED\n")
	for i, run := range r.Runs {
		fmt.Fprintf(tw, "%d\t%.0f%%\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\n", i+1, 100*run.CPUPressure, run.CeilingTPS, run.RawInboxTPS,
			run.throughput(InboxVariantInbox).MsgsPerS, run.throughput(InboxVariantInboxApart).MsgsPerS,
			fmtMs(run.latency(InboxVariantPlain).P99), fmtMs(run.latency(InboxVariantInbox).P99), fmtMs(run.p99Added(InboxVariantInbox)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "\ninbox p99 added (median of the runs' inbox p99 - plain p99): %s\n", fmtMs(r.P99Added())); err != nil {
		return err
	}
	var b strings.Builder
	st := r.Stats()
	st.writeTo(&b, len(r.Runs))
	writeTargets(&b, st, inboxTargets)
	_, err := io.WriteString(w, b.String())
	return err
}

// inboxTargets are the acceptance numbers of the inbox figures (docs/benchmarks.md).
var inboxTargets = []target{
	{"inbox_of_bare_tx", 0.8, false},
	{"inbox_p99_added_ms", 2, true},
}

// Stats are the figures of every run summarised (the --json keys).
func (r InboxResult) Stats() Stats {
	perRun := make([]Figures, len(r.Runs))
	for i, run := range r.Runs {
		perRun[i] = run.figures()
	}
	return statsOf(perRun)
}

// figures are this run's figures by --json key (docs/benchmarks.md): inbox_bare_tx is the
// business transaction alone without a router or deduplication (the ceiling).
func (r InboxRun) figures() Figures {
	f := Figures{}
	f.set("inbox_ours", r.throughput(InboxVariantInbox).MsgsPerS)
	f.set("inbox_bare_tx", r.CeilingTPS)
	f.set("inbox_raw_statements", r.RawInboxTPS)
	f.set("inbox_plain_router", r.throughput(InboxVariantPlain).MsgsPerS)
	f.set("inbox_deduplicator", r.throughput(InboxVariantDeduplicator).MsgsPerS)
	f.set("inbox_p99_ms", float64(r.latency(InboxVariantInbox).P99)/float64(time.Millisecond))
	f.set("inbox_plain_p99_ms", float64(r.latency(InboxVariantPlain).P99)/float64(time.Millisecond))
	f.set("inbox_p99_added_ms", float64(r.p99Added(InboxVariantInbox))/float64(time.Millisecond))
	f.ratio("inbox_of_bare_tx", "inbox_ours", "inbox_bare_tx")
	return f
}

// inboxEnv is one RunInbox: the pool and the schemas to drop.
type inboxEnv struct {
	cfg      InboxBenchConfig
	pool     *pgxpool.Pool
	progress io.Writer
	legs     *legCounter // the slices measured, reported to progress
	payload  []byte
	writes   atomic.Int64 // requests written to PostgreSQL (writeCountingConn)
	tracer   *inboxTracer
}

func (e *inboxEnv) logf(format string, args ...any) { fmt.Fprintf(e.progress, format+"\n", args...) }

// inboxLeg is a fresh migrated schema with the business table orders and, for the inbox
// variants, the runtime the inbox comes from.
type inboxLeg struct {
	e      *inboxEnv
	cfg    schema.Config
	orders string
	rt     *jasper.Runtime   // the inbox variants' runtime
	agent  *durability.Agent // the cleanup variant's, whose Handled cleanup runs while it is measured
}

func (e *inboxEnv) newLeg(ctx context.Context) (*inboxLeg, error) {
	name := inboxSchemaName()
	cfg := schema.Config{Dialect: schema.Postgres, Schema: name}
	if _, err := e.pool.Exec(ctx, fmt.Sprintf(`CREATE SCHEMA %q`, name)); err != nil {
		return nil, fmt.Errorf("bench inbox: create schema %s: %w", name, err)
	}
	l := &inboxLeg{e: e, cfg: cfg, orders: fmt.Sprintf(`%q.orders`, name)}
	if err := schema.Migrate(ctx, database.FromPgx(e.pool), cfg); err != nil {
		_ = l.close()
		return nil, fmt.Errorf("bench inbox: %w", err)
	}
	if _, err := e.pool.Exec(ctx, `CREATE TABLE `+l.orders+` (id uuid PRIMARY KEY, amount bigint NOT NULL)`); err != nil {
		_ = l.close()
		return nil, fmt.Errorf("bench inbox: %w", err)
	}
	return l, nil
}

// inboxCreated records the schemas RunInbox created, for tests.
var inboxCreated struct {
	sync.Mutex
	names []string
}

func inboxSchemaName() string {
	name := randomName("wj_bench_inbox_")
	inboxCreated.Lock()
	inboxCreated.names = append(inboxCreated.names, name)
	inboxCreated.Unlock()
	return name
}

func (l *inboxLeg) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	if l.rt != nil {
		errs = append(errs, l.rt.Stop(ctx))
	}
	_, err := l.e.pool.Exec(ctx, fmt.Sprintf(`DROP SCHEMA IF EXISTS %q CASCADE`, l.cfg.Schema))
	return errors.Join(append(errs, err)...)
}

// insertSQL is the business write.
func (l *inboxLeg) insertSQL() string {
	return `INSERT INTO ` + l.orders + ` (id, amount) VALUES ($1, $2)`
}

// handler returns the handler of a variant and the middleware in front of it.
func (l *inboxLeg) handler(ctx context.Context, variant string) (message.NoPublishHandlerFunc, []message.HandlerMiddleware, error) {
	insert := l.insertSQL()
	ownTx := func(msg *message.Message) error {
		ctx := msg.Context()
		tx, err := l.e.pool.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, insert, msg.UUID, int64(len(msg.Payload))); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		return tx.Commit(ctx)
	}
	switch variant {
	case InboxVariantPlain:
		return ownTx, nil, nil
	case InboxVariantDeduplicator:
		// Keyed on the message UUID (its default, an Adler-32 of the payload, collides).
		d := &wmmiddleware.Deduplicator{KeyFactory: func(m *message.Message) (string, error) { return m.UUID, nil }}
		return ownTx, []message.HandlerMiddleware{d.Middleware}, nil
	case InboxVariantInbox, InboxVariantInboxApart, InboxVariantInboxCleanup:
		in, err := l.startInbox(ctx, variant)
		if err != nil {
			return nil, nil, err
		}
		h := func(msg *message.Message) error {
			tx, _ := middleware.TxFromContext(msg.Context())
			_, err := tx.Exec(msg.Context(), insert, msg.UUID, int64(len(msg.Payload)))
			return err
		}
		return h, []message.HandlerMiddleware{in.Middleware}, nil
	}
	return nil, nil, fmt.Errorf("bench inbox: unknown variant %q", variant)
}

// inboxRuntimeConns is what the runtime of an inbox variant holds of the pool for its life:
// the node lock's connection and the agent's LISTEN connection. The pool gets them on top of
// MaxConns, which stays what the handlers share.
const inboxRuntimeConns = 2

// inboxRuntimes is the number of inbox variants, each with its runtime.
const inboxRuntimes = 3

// startInbox starts the runtime of an inbox variant on the leg's schema, as a service runs
// it (database.FromPgx(pool), the agent's defaults), and returns its inbox (consumer
// "bench"). BEGIN apart runs the same runtime on the pgx pool without its pipelined BEGIN
// (beginApartDB); the cleanup variant keeps its marks inboxCleanupKeepFor and leaves the
// Handled cleanup to the benchmark's timer (see inboxCleanupEvery).
func (l *inboxLeg) startInbox(ctx context.Context, variant string) (*middleware.Inbox, error) {
	drv := database.FromPgx(l.e.pool)
	if variant == InboxVariantInboxApart {
		var err error
		// no database.FirstStatementBeginner: BEGIN, then the mark
		if drv, err = postgres.New(beginApartDB{dbx.FromPgx(l.e.pool)}); err != nil {
			return nil, err
		}
	}
	cfg := jasper.Config{Schema: l.cfg.Schema}
	ic := middleware.InboxConfig{ConsumerName: "bench"}
	if variant == InboxVariantInboxCleanup {
		cfg.Agent.HandledCleanupPollingTime = -1 // off: driven by the benchmark
		ic.KeepFor = inboxCleanupKeepFor
	}
	rt, err := jasper.NewRuntime(drv, cfg, watermill.NopLogger{})
	if err != nil {
		return nil, err
	}
	if err := rt.Start(ctx); err != nil {
		return nil, fmt.Errorf("bench inbox: %w", err)
	}
	l.rt = rt
	if variant == InboxVariantInboxCleanup {
		l.agent = rt.Agent()
	}
	return rt.Inbox(ic)
}

// beginApartDB hides the pgx pool's BeginExec: the inbox then sends BEGIN and its mark as two
// round trips, as it does on a database/sql handle.
type beginApartDB struct{ dbx.DB }

// inboxSubscriber feeds a router: Subscribe returns the channel the leg's driver sends on.
type inboxSubscriber struct{ ch chan *message.Message }

func (g inboxSubscriber) Subscribe(context.Context, string) (<-chan *message.Message, error) {
	return g.ch, nil
}
func (g inboxSubscriber) Close() error { return nil }

// inboxWorker is one variant set up for a run: a fresh schema and, for the router variants,
// a running router fed by send.
type inboxWorker struct {
	variant string
	leg     *inboxLeg
	// one handles one message (router variants: send it and wait for its ack) or runs one raw
	// transaction.
	one   func(ctx context.Context) error
	send  chan *message.Message // router variants only
	close func() error
	// measured
	handled  int64
	elapsed  time.Duration
	writes   int64
	lat      []time.Duration
	phaseRec phaseRec
	deleted  atomic.Int64 // marks deleted by the cleanup variant
}

func (w *inboxWorker) router() bool { return w.send != nil }

// Names of the raw loops (no router).
const (
	inboxRawCeiling = "raw BEGIN; INSERT; COMMIT"
	inboxRawInbox   = "raw BEGIN; INSERT mark; INSERT; COMMIT"
)

// newWorker sets up a variant: a router variant runs its router until close.
func (e *inboxEnv) newWorker(ctx context.Context, variant string) (*inboxWorker, error) {
	l, err := e.newLeg(ctx)
	if err != nil {
		return nil, err
	}
	w := &inboxWorker{variant: variant, leg: l, close: l.close}
	switch variant {
	case inboxRawCeiling, inboxRawInbox:
		w.one, err = l.rawTx(variant == inboxRawInbox)
		if err != nil {
			_ = l.close()
			return nil, err
		}
		return w, nil
	}
	h, mws, err := l.handler(ctx, variant)
	if err != nil {
		_ = l.close()
		return nil, err
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: time.Minute}, watermill.NopLogger{})
	if err != nil {
		_ = l.close()
		return nil, err
	}
	w.send = make(chan *message.Message)
	r.AddConsumerHandler("bench-inbox", "orders", inboxSubscriber{ch: w.send}, h).AddMiddleware(mws...)
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-r.Running():
	case err := <-runErr:
		_ = l.close()
		return nil, err
	}
	w.close = func() error {
		close(w.send)
		return errors.Join(r.Close(), <-runErr, l.close())
	}
	w.one = func(ctx context.Context) error {
		msg := e.newMessage()
		if err := inboxSend(ctx, w.send, msg); err != nil {
			return err
		}
		return inboxWaitAck(ctx, msg)
	}
	return w, nil
}

// rawTx returns one raw business transaction, no router: with mark set preceded by the
// inbox's mark (the store's InsertHandled, the same statement and values the inbox sends),
// each statement its own round trip (BEGIN; INSERT mark; INSERT; COMMIT).
func (l *inboxLeg) rawTx(mark bool) (func(ctx context.Context) error, error) {
	insert := l.insertSQL()
	db := dbx.FromPgx(l.e.pool)
	st, err := database.FromPgx(l.e.pool).Store(l.cfg)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		msg := l.e.newMessage()
		return dbx.InTx(ctx, db, func(tx dbx.Tx) error {
			if mark {
				env, err := row.FromMessage("orders", msg, publisher.Defaults{})
				if err != nil {
					return err
				}
				env.ID = middleware.InboxKey("bench", "bench-inbox", msg.UUID)
				env.Destination, env.Status, env.OwnerID = "orders", schema.StatusHandled, 0
				env.Body, env.Headers, env.DeliverBy = []byte{}, nil, nil
				if _, err := st.With(tx).InsertHandled(ctx, store.InsertHandledParams{Mark: env, Keep: middleware.DefaultKeepFor}); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, insert, msg.UUID, int64(len(msg.Payload)))
			return err
		})
	}, nil
}

func (e *inboxEnv) newMessage() *message.Message {
	id := watermill.NewUUID()
	p := make([]byte, len(e.payload))
	copy(p, id)
	copy(p[len(id):], e.payload[len(id):])
	return message.NewMessage(id, p)
}

// inboxSend hands msg to the router.
func inboxSend(ctx context.Context, ch chan<- *message.Message, msg *message.Message) error {
	msg.SetContext(ctx)
	select {
	case ch <- msg:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func inboxWaitAck(ctx context.Context, msg *message.Message) error {
	select {
	case <-msg.Acked():
		return nil
	case <-msg.Nacked():
		return fmt.Errorf("message %s nacked: the handler failed", msg.UUID)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// saturate keeps InFlight messages (or raw transactions) of w going for warm, then measures
// for d; the goroutines finish the message they hold and stop, so nothing of w is left in
// flight when it returns. measure false only warms up.
func (e *inboxEnv) saturate(ctx context.Context, w *inboxWorker, warm, d time.Duration, measure bool) error {
	var handled atomic.Int64
	var stop atomic.Bool
	var firstErr error
	var once sync.Once
	failed := make(chan struct{})
	var wg sync.WaitGroup
	if w.leg.agent != nil {
		wg.Go(func() {
			if err := w.cleanup(ctx, &stop); err != nil {
				once.Do(func() { firstErr = err; close(failed) })
			}
		})
	}
	for range e.cfg.InFlight {
		wg.Go(func() {
			for !stop.Load() {
				if err := w.one(ctx); err != nil {
					once.Do(func() { firstErr = err; close(failed) })
					return
				}
				handled.Add(1)
			}
		})
	}
	sleep := func(d time.Duration) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-failed:
		case <-ctx.Done():
		}
	}
	sleep(warm)
	start, n0, w0 := time.Now(), handled.Load(), e.writes.Load()
	sleep(d)
	n1, w1, elapsed := handled.Load(), e.writes.Load(), time.Since(start)
	stop.Store(true)
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("bench inbox: %s: %w", w.variant, firstErr)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if measure {
		w.handled += n1 - n0
		w.writes += w1 - w0
		w.elapsed += elapsed
	}
	return nil
}

// cleanup deletes the expired marks of the cleanup variant every inboxCleanupEvery until
// stop is set.
func (w *inboxWorker) cleanup(ctx context.Context, stop *atomic.Bool) error {
	for !stop.Load() {
		n, err := w.leg.agent.DeleteExpiredHandled(ctx)
		if err != nil {
			return err
		}
		w.deleted.Add(n)
		time.Sleep(inboxCleanupEvery)
	}
	return nil
}

// steady sends to w at the steady Rate for d and records send -> ack latencies (when
// record is set) and the driver's phases; it waits for every message it sent.
func (e *inboxEnv) steady(ctx context.Context, w *inboxWorker, d time.Duration, record bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := max(1, int(float64(e.cfg.Rate)*d.Seconds()))
	lat := make([]time.Duration, n)
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(e.cfg.Rate)
	if w.leg.agent != nil {
		var stop atomic.Bool
		var cwg sync.WaitGroup
		defer cwg.Wait()
		defer stop.Store(true)
		cwg.Go(func() {
			if err := w.cleanup(ctx, &stop); err != nil && ctx.Err() == nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		})
	}
	if record {
		e.tracer.record(&w.phaseRec)
	}
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d) // pacing the steady rate
		}
		if ctx.Err() != nil {
			break
		}
		msg := e.newMessage()
		t0 := time.Now()
		if err := inboxSend(ctx, w.send, msg); err != nil {
			break
		}
		wg.Go(func() {
			if err := inboxWaitAck(ctx, msg); err != nil {
				once.Do(func() { firstErr = err; cancel() })
				return
			}
			lat[i] = time.Since(t0)
		})
	}
	wg.Wait()
	e.tracer.record(nil)
	if firstErr != nil {
		return fmt.Errorf("bench inbox: latency %s: %w", w.variant, firstErr)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if record {
		w.lat = append(w.lat, lat...)
	}
	return nil
}

// inboxSlices splits d into slices of about size.
func inboxSlices(d, size time.Duration) (int, time.Duration) {
	n := max(1, int((d+size/2)/size))
	return n, d / time.Duration(n)
}

// inboxLegs is the number of slices one run of the inbox benchmark measures with cfg, for the
// progress: a throughput slice of every variant and raw loop per round, then a latency slice of
// every variant per round.
func inboxLegs(cfg InboxBenchConfig) int {
	throughput, _ := inboxSlices(cfg.Duration, inboxThroughputSlice)
	latency, _ := inboxSlices(cfg.LatencyDuration, inboxLatencySlice)
	return throughput*(2+len(inboxVariants)) + latency*len(inboxVariants)
}

// Slice sizes: a throughput slice (after its 200ms warm-up) and a latency slice. Latency
// slices are short because a stall of the machine (a 2-core box running other work) sets
// the p99 of whichever variant it hits: at 1,000 msg/s a 50 ms stall delays 50 messages,
// 1% of a 5 s leg. Short slices taken in turn spread the stalls evenly over the variants.
const (
	inboxThroughputSlice = time.Second
	inboxLatencySlice    = 250 * time.Millisecond
)

// RunInbox measures the inbox middleware: handler throughput with InFlight messages in flight
// and send -> ack latency at a steady Rate, through a Watermill router, for the same handler
// (one business transaction per message) without deduplication, behind the inbox (the
// handler's INSERT in the inbox transaction), and behind Watermill's in-memory Deduplicator;
// plus the business transaction alone as the ceiling. Every leg runs in a fresh schema,
// dropped at its end. Progress goes to progress.
func RunInbox(ctx context.Context, cfg InboxBenchConfig, progress io.Writer) (InboxResult, error) {
	cfg = cfg.withDefaults()
	res := InboxResult{Config: cfg}
	if err := cfg.validate(); err != nil {
		return res, err
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return res, fmt.Errorf("bench inbox: parse DSN: %w", err)
	}
	pcfg.MaxConns = int32(cfg.MaxConns + inboxRuntimes*inboxRuntimeConns)
	e := &inboxEnv{cfg: cfg, progress: progress, tracer: &inboxTracer{}}
	if e.progress == nil {
		e.progress = io.Discard
	}
	e.payload = []byte(strings.Repeat("x", max(cfg.Payload, 36)))[:max(cfg.Payload, 36)]
	dial := pcfg.ConnConfig.DialFunc
	pcfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return writeCountingConn{Conn: c, writes: &e.writes}, nil
	}
	pcfg.ConnConfig.Tracer = e.tracer
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return res, fmt.Errorf("bench inbox: connect to PostgreSQL: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return res, fmt.Errorf("bench inbox: connect to PostgreSQL: %w", err)
	}
	e.pool = pool

	e.legs = newLegCounter(e.progress, cfg.Runs, inboxLegs(cfg))
	for i := range cfg.Runs {
		e.legs.startRun(i)
		e.logf("run %d/%d", i+1, cfg.Runs)
		run, err := e.run(ctx, i)
		if err != nil {
			return res, err
		}
		res.Runs = append(res.Runs, run)
		res.summarize()
		if cfg.Runs > 1 {
			e.logf("run %d/%d: inbox %.0f msg/s (%.0f%% of the ceiling %.0f tx/s, %.0f%% of the raw inbox %.0f tx/s), p99 added %s; medians so far: %.0f msg/s, p99 added %s",
				i+1, cfg.Runs, run.throughput(InboxVariantInbox).MsgsPerS, 100*ratio(run.throughput(InboxVariantInbox).MsgsPerS, run.CeilingTPS), run.CeilingTPS,
				100*ratio(run.throughput(InboxVariantInbox).MsgsPerS, run.RawInboxTPS), run.RawInboxTPS, fmtMs(run.p99Added(InboxVariantInbox)),
				res.throughput(InboxVariantInbox).MsgsPerS, fmtMs(res.P99Added()))
		}
	}
	return res, nil
}

// run is one run: every variant is set up (a schema each, routers running), warmed up, then
// measured in short slices taken in turn (the order rotated every round), so that every
// variant sees the same spells of a busy machine and the ratios compare like with like:
// throughput slices first, then latency slices at the steady rate.
func (e *inboxEnv) run(ctx context.Context, i int) (run InboxRun, err error) {
	var p0 int64
	var pressureOK bool
	p0, pressureOK = cpuPressure()
	t0 := time.Now()
	var workers []*inboxWorker
	defer func() {
		for _, w := range workers {
			err = errors.Join(err, w.close())
		}
	}()
	for _, v := range append([]string{inboxRawCeiling, inboxRawInbox}, inboxVariants...) {
		w, err := e.newWorker(ctx, v)
		if err != nil {
			return run, err
		}
		workers = append(workers, w)
	}
	for _, w := range workers {
		if err := e.saturate(ctx, w, 500*time.Millisecond, 0, false); err != nil {
			return run, err
		}
	}
	rounds, slice := inboxSlices(e.cfg.Duration, inboxThroughputSlice)
	for r := range rounds {
		for k := range workers {
			w := workers[(k+r+i)%len(workers)]
			if err := e.saturate(ctx, w, 200*time.Millisecond, slice, true); err != nil {
				return run, err
			}
			e.legs.legDone()
		}
	}
	var routers []*inboxWorker
	for _, w := range workers {
		switch {
		case w.variant == inboxRawCeiling:
			run.CeilingTPS = ratio(float64(w.handled), w.elapsed.Seconds())
			e.logf("%-40s %8.0f tx/s (%d goroutines, no router)", w.variant, run.CeilingTPS, e.cfg.InFlight)
		case w.variant == inboxRawInbox:
			run.RawInboxTPS = ratio(float64(w.handled), w.elapsed.Seconds())
			e.logf("%-40s %8.0f tx/s (%d goroutines, no router)", w.variant, run.RawInboxTPS, e.cfg.InFlight)
		default:
			t := InboxThroughput{Variant: w.variant, Handled: w.handled, MsgsPerS: ratio(float64(w.handled), w.elapsed.Seconds()),
				RoundTrips: ratio(float64(w.writes), float64(w.handled))}
			run.Throughput = append(run.Throughput, t)
			routers = append(routers, w)
			e.logf("throughput %-29s %8.0f msg/s (%d in %s, %d in flight, %.2f round trips/msg)", w.variant, t.MsgsPerS, t.Handled, w.elapsed.Round(time.Millisecond), e.cfg.InFlight, t.RoundTrips)
			if w.leg.agent != nil {
				e.logf("           (its cleanup deleted %d expired marks so far)", w.deleted.Load())
			}
		}
	}
	for _, w := range routers {
		if err := e.steady(ctx, w, 300*time.Millisecond, false); err != nil { // warm at the rate
			return run, err
		}
	}
	rounds, slice = inboxSlices(e.cfg.LatencyDuration, inboxLatencySlice)
	for r := range rounds {
		for k := range routers {
			if err := e.steady(ctx, routers[(k+r+i)%len(routers)], slice, true); err != nil {
				return run, err
			}
			e.legs.legDone()
		}
	}
	for _, w := range routers {
		l := InboxLatency{Variant: w.variant, Sent: len(w.lat), Phases: w.phaseRec.phases()}
		l.Rate = float64(e.cfg.Rate)
		l.P50, l.P99 = percentile(w.lat, 0.50), percentile(w.lat, 0.99)
		if len(w.lat) > 0 {
			l.Max = w.lat[len(w.lat)-1]
		}
		run.Latency = append(run.Latency, l)
		e.logf("latency    %-29s p50 %s p99 %s max %s (%d at %d msg/s; p99 acquire %s, begin %s, commit %s; %d GCs)", w.variant, fmtMs(l.P50), fmtMs(l.P99), fmtMs(l.Max), l.Sent, e.cfg.Rate,
			fmtMs(l.Phases.AcquireP99), fmtMs(l.Phases.BeginP99), fmtMs(l.Phases.CommitP99), l.Phases.GCs)
	}
	if p1, ok := cpuPressure(); ok && pressureOK {
		run.CPUPressure = float64(p1-p0) / float64(time.Since(t0).Microseconds())
	}
	return run, nil
}
