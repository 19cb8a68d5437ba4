package bench

// RunInbox: the inbox middleware's cost. Self-contained (it shares nothing with RunOutbox but
// the package), so the outbox benchmark can change freely.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Defaults of InboxBenchConfig.
const (
	DefaultInboxInFlight        = 8
	DefaultInboxDuration        = 5 * time.Second
	DefaultInboxRate            = 1000
	DefaultInboxLatencyDuration = 5 * time.Second
	DefaultInboxPayload         = 256
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
}

func (c InboxBenchConfig) withDefaults() InboxBenchConfig {
	if c.InFlight == 0 {
		c.InFlight = DefaultInboxInFlight
	}
	if c.Duration == 0 {
		c.Duration = DefaultInboxDuration
	}
	if c.Rate == 0 {
		c.Rate = DefaultInboxRate
	}
	if c.LatencyDuration == 0 {
		c.LatencyDuration = DefaultInboxLatencyDuration
	}
	if c.Payload == 0 {
		c.Payload = DefaultInboxPayload
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
	}
	return nil
}

// Names of the inbox benchmark's variants.
const (
	InboxVariantPlain        = "no dedup"
	InboxVariantInbox        = "inbox"
	InboxVariantDeduplicator = "Watermill Deduplicator"
)

// InboxThroughput is one throughput leg: handled messages per second with InFlight in flight.
type InboxThroughput struct {
	Variant  string
	MsgsPerS float64
	Handled  int64
}

// InboxLatency is one latency leg: send -> ack latency at a steady rate.
type InboxLatency struct {
	Variant       string
	Sent          int
	Rate          float64
	P50, P99, Max time.Duration
}

// InboxResult is the outcome of RunInbox.
type InboxResult struct {
	Config InboxBenchConfig
	// CeilingTPS is the business transaction alone, InFlight goroutines, no router: the
	// physical limit.
	CeilingTPS float64
	Throughput []InboxThroughput
	Latency    []InboxLatency
}

func (r InboxResult) throughput(v string) InboxThroughput {
	for _, t := range r.Throughput {
		if t.Variant == v {
			return t
		}
	}
	return InboxThroughput{Variant: v}
}

func (r InboxResult) latency(v string) InboxLatency {
	for _, l := range r.Latency {
		if l.Variant == v {
			return l
		}
	}
	return InboxLatency{Variant: v}
}

// P99Added is the inbox's p99 latency minus the plain handler's, at the steady rate.
func (r InboxResult) P99Added() time.Duration {
	return r.latency(InboxVariantInbox).P99 - r.latency(InboxVariantPlain).P99
}

// ResultLine is the machine-readable summary.
func (r InboxResult) ResultLine() string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
	return fmt.Sprintf("RESULT inbox_msgs_per_s=%.0f inbox_p99_added_ms=%s plain_msgs_per_s=%.0f deduplicator_msgs_per_s=%.0f "+
		"ceiling_tx_per_s=%.0f inbox_p99_ms=%s plain_p99_ms=%s deduplicator_p99_ms=%s in_flight=%d rate=%d",
		r.throughput(InboxVariantInbox).MsgsPerS, ms(r.P99Added()), r.throughput(InboxVariantPlain).MsgsPerS,
		r.throughput(InboxVariantDeduplicator).MsgsPerS, r.CeilingTPS,
		ms(r.latency(InboxVariantInbox).P99), ms(r.latency(InboxVariantPlain).P99), ms(r.latency(InboxVariantDeduplicator).P99),
		r.Config.InFlight, r.Config.Rate)
}

// WriteTable prints the results as two tables.
func (r InboxResult) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "Handler: one business transaction per message (INSERT into a table with a uuid primary key), "+
		"%d-byte payloads, through a Watermill router.\n", r.Config.Payload)
	fmt.Fprintf(w, "Ceiling (the same transaction, %d goroutines, no router): %.0f tx/s\n\n", r.Config.InFlight, r.CeilingTPS)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "THROUGHPUT (%d in flight)\tMSG/S\tOF CEILING\n", r.Config.InFlight)
	for _, t := range r.Throughput {
		pct := 0.0
		if r.CeilingTPS > 0 {
			pct = t.MsgsPerS * 100 / r.CeilingTPS
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f%%\n", t.Variant, t.MsgsPerS, pct)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "LATENCY at %d msg/s (send -> ack)\tSENT\tP50\tP99\tMAX\n", r.Config.Rate)
	for _, l := range r.Latency {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", l.Variant, l.Sent, inboxMs(l.P50), inboxMs(l.P99), inboxMs(l.Max))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\ninbox p99 added: %s\n", inboxMs(r.P99Added()))
	return err
}

func inboxMs(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

func inboxPercentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// inboxEnv is one RunInbox: the pool and the schemas to drop.
type inboxEnv struct {
	cfg      InboxBenchConfig
	pool     *pgxpool.Pool
	progress io.Writer
	payload  []byte
}

func (e *inboxEnv) logf(format string, args ...any) { fmt.Fprintf(e.progress, format+"\n", args...) }

// inboxLeg is a fresh migrated schema with the business table orders.
type inboxLeg struct {
	e      *inboxEnv
	cfg    schema.Config
	orders string
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
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "wj_bench_inbox_" + hex.EncodeToString(b[:])
	inboxCreated.Lock()
	inboxCreated.names = append(inboxCreated.names, name)
	inboxCreated.Unlock()
	return name
}

func (l *inboxLeg) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := l.e.pool.Exec(ctx, fmt.Sprintf(`DROP SCHEMA IF EXISTS %q CASCADE`, l.cfg.Schema))
	return err
}

// insertSQL is the business write.
func (l *inboxLeg) insertSQL() string {
	return `INSERT INTO ` + l.orders + ` (id, amount) VALUES ($1, $2)`
}

// handler returns the handler of a variant and the middleware in front of it.
func (l *inboxLeg) handler(variant string) (message.NoPublishHandlerFunc, []message.HandlerMiddleware, error) {
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
	case InboxVariantInbox:
		in, err := middleware.NewInbox(middleware.InboxConfig{DB: database.FromPgx(l.e.pool), Schema: l.cfg, ConsumerName: "bench"})
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

// inboxSubscriber feeds a router: Subscribe returns the channel the leg's driver sends on.
type inboxSubscriber struct{ ch chan *message.Message }

func (g inboxSubscriber) Subscribe(context.Context, string) (<-chan *message.Message, error) {
	return g.ch, nil
}
func (g inboxSubscriber) Close() error { return nil }

// withRouter runs a router with the variant's handler and calls drive with the channel to
// send on; the router is closed afterwards.
func (l *inboxLeg) withRouter(ctx context.Context, variant string, drive func(send chan<- *message.Message) error) error {
	h, mws, err := l.handler(variant)
	if err != nil {
		return err
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: time.Minute}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	sub := inboxSubscriber{ch: make(chan *message.Message)}
	r.AddConsumerHandler("bench-inbox", "orders", sub, h).AddMiddleware(mws...)
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	select {
	case <-r.Running():
	case err := <-runErr:
		return err
	}
	err = drive(sub.ch)
	close(sub.ch)
	return errors.Join(err, r.Close(), <-runErr)
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

// throughputLeg keeps InFlight messages in flight for a warm-up and Duration.
func (e *inboxEnv) throughputLeg(ctx context.Context, variant string) (InboxThroughput, error) {
	l, err := e.newLeg(ctx)
	if err != nil {
		return InboxThroughput{}, err
	}
	defer l.close()
	res := InboxThroughput{Variant: variant}
	err = l.withRouter(ctx, variant, func(ch chan<- *message.Message) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var handled atomic.Int64
		var firstErr error
		var once sync.Once
		var wg sync.WaitGroup
		for range e.cfg.InFlight {
			wg.Go(func() {
				for ctx.Err() == nil {
					msg := e.newMessage()
					err := inboxSend(ctx, ch, msg)
					if err == nil {
						err = inboxWaitAck(ctx, msg)
					}
					if err != nil {
						if ctx.Err() == nil {
							once.Do(func() { firstErr = err; cancel() })
						}
						return
					}
					handled.Add(1)
				}
			})
		}
		warm := time.NewTimer(time.Second)
		select {
		case <-warm.C:
		case <-ctx.Done():
		}
		start, n0 := time.Now(), handled.Load()
		measure := time.NewTimer(e.cfg.Duration)
		select {
		case <-measure.C:
		case <-ctx.Done():
		}
		res.Handled = handled.Load() - n0
		res.MsgsPerS = float64(res.Handled) / time.Since(start).Seconds()
		cancel()
		wg.Wait()
		return firstErr
	})
	if err != nil {
		return res, fmt.Errorf("bench inbox: throughput %s: %w", variant, err)
	}
	if variant == InboxVariantInbox {
		var marks int64
		if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM "+l.cfg.Qualified(schema.IncomingTable)+" WHERE status = 'Handled'").Scan(&marks); err != nil {
			return res, err
		}
		e.logf("  (%d Handled marks written)", marks)
	}
	e.logf("throughput %-24s %8.0f msg/s (%d in %s, %d in flight)", variant, res.MsgsPerS, res.Handled, e.cfg.Duration, e.cfg.InFlight)
	return res, nil
}

// latencyLeg sends at a steady Rate for LatencyDuration and measures send -> ack.
func (e *inboxEnv) latencyLeg(ctx context.Context, variant string) (InboxLatency, error) {
	l, err := e.newLeg(ctx)
	if err != nil {
		return InboxLatency{}, err
	}
	defer l.close()
	res := InboxLatency{Variant: variant}
	err = l.withRouter(ctx, variant, func(ch chan<- *message.Message) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		n := int(float64(e.cfg.Rate) * e.cfg.LatencyDuration.Seconds())
		warm := min(e.cfg.Rate/2, 500) // the first ones warm the connections up and are not counted
		lat := make([]time.Duration, n+warm)
		var firstErr error
		var once sync.Once
		var wg sync.WaitGroup
		interval := time.Second / time.Duration(e.cfg.Rate)
		start := time.Now()
		for i := range n + warm {
			if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
				time.Sleep(d) // pacing the steady rate
			}
			if ctx.Err() != nil {
				break
			}
			msg := e.newMessage()
			t0 := time.Now()
			if err := inboxSend(ctx, ch, msg); err != nil {
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
		if firstErr != nil {
			return firstErr
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		ls := lat[warm:]
		res.Sent = len(ls)
		res.Rate = float64(len(lat)) / time.Since(start).Seconds()
		res.P50, res.P99 = inboxPercentile(ls, 0.50), inboxPercentile(ls, 0.99)
		res.Max = ls[len(ls)-1]
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("bench inbox: latency %s: %w", variant, err)
	}
	e.logf("latency    %-24s p50 %s p99 %s max %s (%d at %d msg/s)", variant, inboxMs(res.P50), inboxMs(res.P99), inboxMs(res.Max), res.Sent, e.cfg.Rate)
	return res, nil
}

// ceiling runs the business transaction alone in InFlight goroutines.
func (e *inboxEnv) ceiling(ctx context.Context) (float64, error) {
	l, err := e.newLeg(ctx)
	if err != nil {
		return 0, err
	}
	defer l.close()
	insert := l.insertSQL()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range e.cfg.InFlight {
		wg.Go(func() {
			for ctx.Err() == nil {
				msg := e.newMessage()
				err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, insert, msg.UUID, int64(len(msg.Payload)))
					return err
				})
				if err != nil {
					if ctx.Err() == nil {
						once.Do(func() { firstErr = err; cancel() })
					}
					return
				}
				done.Add(1)
			}
		})
	}
	warm := time.NewTimer(time.Second)
	select {
	case <-warm.C:
	case <-ctx.Done():
	}
	start, n0 := time.Now(), done.Load()
	measure := time.NewTimer(e.cfg.Duration)
	select {
	case <-measure.C:
	case <-ctx.Done():
	}
	tps := float64(done.Load()-n0) / time.Since(start).Seconds()
	cancel()
	wg.Wait()
	if firstErr != nil {
		return 0, fmt.Errorf("bench inbox: ceiling: %w", firstErr)
	}
	e.logf("ceiling    %-24s %8.0f tx/s (%d goroutines, no router)", "business transaction", tps, e.cfg.InFlight)
	return tps, nil
}

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
	pcfg.MaxConns = int32(max(cfg.InFlight+4, 32))
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return res, fmt.Errorf("bench inbox: connect to PostgreSQL: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return res, fmt.Errorf("bench inbox: connect to PostgreSQL: %w", err)
	}
	if progress == nil {
		progress = io.Discard
	}
	e := &inboxEnv{cfg: cfg, pool: pool, progress: progress, payload: []byte(strings.Repeat("x", max(cfg.Payload, 36)))[:max(cfg.Payload, 36)]}

	if res.CeilingTPS, err = e.ceiling(ctx); err != nil {
		return res, err
	}
	for _, v := range []string{InboxVariantPlain, InboxVariantInbox, InboxVariantDeduplicator} {
		t, err := e.throughputLeg(ctx, v)
		if err != nil {
			return res, err
		}
		res.Throughput = append(res.Throughput, t)
	}
	for _, v := range []string{InboxVariantPlain, InboxVariantInbox, InboxVariantDeduplicator} {
		l, err := e.latencyLeg(ctx, v)
		if err != nil {
			return res, err
		}
		res.Latency = append(res.Latency, l)
	}
	return res, nil
}
