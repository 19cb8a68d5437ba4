// Package jasper is watermill-jasper's runtime: one object per process that owns the node
// identity, the durability agent (recovery, scheduled release, cleanup, the one LISTEN
// connection), the forwarders relaying the outbox, the subscribers of durable local queues,
// and the order in which they start and stop. Every component of the module belongs to it,
// so a claim whose answer was lost, a crashed relay or a due scheduled message is always
// somebody's job:
//
//	pool, _ := pgxpool.New(ctx, dsn)
//	rt, err := jasper.NewRuntime(database.FromPgx(pool), jasper.Config{
//		Schema:     "messaging",
//		Forwarders: []forwarder.Config{{Publisher: amqpPublisher}}, // relay the outbox
//	}, logger)
//	if err := rt.Start(ctx); err != nil { ... }
//	defer rt.Stop(context.Background())
//
//	pub := rt.Publisher()                 // publish inside a business transaction (WithTx)
//	inbox, _ := rt.Inbox(middleware.InboxConfig{ConsumerName: "billing"})
//	dead, _ := rt.DeadLetter(middleware.DeadLetterConfig{})
//	sub, _ := rt.Subscriber(subscriber.Config{}) // durable local queues
//
// A relay process is the same runtime with forwarders and nothing else (the watermill-jasper
// relay command is a thin layer of flags over it). The README shows the whole wiring of a
// service; docs/ has the reference.
package jasper

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/defaults"

	"github.com/ThreeDotsLabs/watermill"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"go.opentelemetry.io/otel/trace"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/metrics"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

var (
	// ErrInvalidConfig is wrapped by every error NewRuntime and Config.Validate return about
	// the configuration.
	ErrInvalidConfig = errors.New("watermill-jasper: invalid runtime config")
	// ErrNotStarted is wrapped by the errors of the component factories called before Start
	// (the components belong to the node and agent Start creates).
	ErrNotStarted = errors.New("watermill-jasper: the runtime is not started; call Start first")
	// ErrStopped is returned by Start and the factories after Stop.
	ErrStopped = errors.New("watermill-jasper: the runtime is stopped")
)

// DefaultStopTimeout bounds Stop when its context has no deadline.
const DefaultStopTimeout = time.Minute

// forwarderGrace is how long Stop waits for a forwarder whose publishes it cancelled.
const forwarderGrace = 5 * time.Second

// Config configures a Runtime. The zero value runs the durability agent with Jasper's
// defaults on the driver's default schema, with no forwarder.
type Config struct {
	// Schema names the database schema holding the Jasper tables ("" is Jasper's default:
	// public on PostgreSQL, dbo on SQL Server). The dialect is the driver's.
	Schema string
	// Compatibility says who else uses the schema: schema.Standalone (default), or
	// schema.Jasper2 when .NET Jasper 2.0 nodes share it (docs/coexistence.md): this
	// library's incoming rows then live in their own table, outgoing destinations must be
	// URIs, and every forwarder must list its Destinations.
	Compatibility schema.Compatibility
	// MigrateSchema creates what is missing of the tables at Start (schema.Migrate); by
	// default Start only checks that they exist and says how to create them.
	MigrateSchema bool

	// Node configures the node identity (a fixed id; default random, as Jasper).
	Node durability.NodeConfig
	// Agent configures the durability agent; its Schema is set from Schema.
	Agent durability.Config

	// Forwarders relay the outbox, each to its Publisher (started by Start, stopped first
	// by Stop). Give several to relay groups of destinations to different brokers
	// (forwarder.Config.Destinations).
	Forwarders []forwarder.Config

	// Publisher is the configuration of the publishers the runtime hands out (Publisher,
	// TxPublisher); its Schema and Driver are set from the runtime, and they share one
	// notification Coalescer.
	Publisher publisher.Config

	// StopTimeout bounds Stop when its context has no deadline. Default 1 minute.
	StopTimeout time.Duration

	// TracerProvider turns on OpenTelemetry tracing (docs/tracing.md): it is set on the
	// components the runtime builds or hands out whose own TracerProvider is nil (the
	// publishers, Forwarders, Subscriber, Inbox). A publish then stores its span's W3C trace
	// context with the envelope, the forwarder's send span continues it and carries it in
	// the outgoing message's metadata (traceparent, tracestate), and the subscriber and the
	// inbox continue it in the handler's context. Nil (the default): no spans, no cost.
	TracerProvider trace.TracerProvider
}

func (c *Config) setDefaults() {
	defaults.Set(&c.StopTimeout, DefaultStopTimeout)
}

// Validate checks the config after defaults are applied and returns an error naming the
// field to fix.
func (c Config) Validate() error {
	c.setDefaults()
	if c.Schema != "" {
		if err := schema.ValidateIdentifier(c.Schema); err != nil {
			return fmt.Errorf("%w: Schema: %w", ErrInvalidConfig, err)
		}
	}
	if err := c.Compatibility.Validate(); err != nil {
		return fmt.Errorf("%w: Compatibility: %w", ErrInvalidConfig, err)
	}
	if c.StopTimeout < 0 {
		return fmt.Errorf("%w: StopTimeout is negative (%s)", ErrInvalidConfig, c.StopTimeout)
	}
	if err := c.Agent.Validate(); err != nil {
		return fmt.Errorf("%w: Agent: %w", ErrInvalidConfig, err)
	}
	for i, f := range c.Forwarders {
		if err := f.Validate(); err != nil {
			return fmt.Errorf("%w: Forwarders[%d]: %w", ErrInvalidConfig, i, err)
		}
		if c.Compatibility == schema.Jasper2 && len(f.Destinations) == 0 {
			return fmt.Errorf("%w: Forwarders[%d]: Destinations is empty; with Compatibility %s a forwarder must list the destinations it delivers, e.g. \"rabbitmq://*\"",
				ErrInvalidConfig, i, schema.Jasper2)
		}
	}
	return nil
}

// Runtime is one process's watermill-jasper: node, durability agent, forwarders,
// subscribers and middleware on one database schema. Create it with NewRuntime, Start it,
// take the components from it, and Stop it last. It is safe for concurrent use.
type Runtime struct {
	db     database.Driver
	config Config
	schema schema.Config
	logger watermill.LoggerAdapter
	coal   *publisher.Coalescer

	mu          sync.Mutex
	started     bool
	stopped     bool
	node        *durability.Node
	agent       *durability.Agent
	forwarders  []*forwarder.Forwarder
	fwdDone     []chan error
	fwdCancel   []context.CancelFunc // cancel the forwarders' messages (Stop's deadline)
	subscribers []*subscriber.Subscriber
	inboxes     []*middleware.Inbox
	deadLetters []*middleware.DeadLetter
	publisher   *publisher.Publisher
	collector   *metrics.Collector
	producer    *metrics.Producer
}

// NewRuntime validates config and returns a Runtime on db (database.FromPgx,
// database.FromStdSQL or sqlserver.FromStdSQL). Nothing touches the database before Start.
func NewRuntime(db database.Driver, config Config, logger watermill.LoggerAdapter) (*Runtime, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: a database.Driver is required (database.FromPgx(pool), database.FromStdSQL(db) or sqlserver.FromStdSQL(db))", ErrInvalidConfig)
	}
	if err := config.Validate(); err != nil {
		return nil, err
	}
	config.setDefaults()
	cfg, err := schema.Config{Dialect: db.Dialect(), Schema: config.Schema, Compatibility: config.Compatibility}.Normalized()
	if err != nil {
		return nil, fmt.Errorf("%w: Schema: %w", ErrInvalidConfig, err)
	}
	config.Agent.Schema = cfg
	config.Publisher.Schema = cfg
	config.Publisher.Driver = db
	config.Forwarders = append([]forwarder.Config(nil), config.Forwarders...)
	if tp := config.TracerProvider; tp != nil {
		if config.Publisher.TracerProvider == nil {
			config.Publisher.TracerProvider = tp
		}
		for i := range config.Forwarders {
			if config.Forwarders[i].TracerProvider == nil {
				config.Forwarders[i].TracerProvider = tp
			}
		}
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	rt := &Runtime{
		db: db, config: config, schema: cfg, coal: &publisher.Coalescer{},
		logger: logger.With(watermill.LogFields{"component": "watermill-jasper/runtime", "schema": cfg.Schema}),
	}
	// Delayed messages published through the runtime are released on time by its agent.
	rt.config.Publisher.OnScheduled = func(due time.Time) {
		if a := rt.Agent(); a != nil {
			a.ScheduleAt(due)
		}
	}
	rt.config.Publisher.Coalescer = rt.coal
	pub, err := publisher.NewPublisher(dbx.ToWatermill(db), rt.config.Publisher, rt.logger)
	if err != nil {
		return nil, fmt.Errorf("%w: Publisher: %w", ErrInvalidConfig, err)
	}
	rt.publisher = pub
	return rt, nil
}

// Start checks (or, with MigrateSchema, creates) the tables, takes the node lock, starts the
// durability agent and then the forwarders. When anything fails, what was started is stopped
// again and the error says what to fix. It returns ErrStopped after Stop, and an error when
// called twice.
func (rt *Runtime) Start(ctx context.Context) (err error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	switch {
	case rt.stopped:
		return ErrStopped
	case rt.started:
		return errors.New("watermill-jasper: the runtime is already started")
	}
	if err := rt.checkSchema(ctx); err != nil {
		return err
	}
	node, err := durability.NewNode(ctx, rt.db, rt.config.Node, rt.logger)
	if err != nil {
		return fmt.Errorf("watermill-jasper: runtime: %w", err)
	}
	agent, err := durability.NewAgent(node, rt.config.Agent, rt.logger)
	if err == nil {
		err = agent.Start(ctx)
	}
	if err != nil {
		_ = node.Close()
		return fmt.Errorf("watermill-jasper: runtime: %w", err)
	}
	rt.node, rt.agent = node, agent
	defer func() {
		if err != nil {
			rt.stopLocked(context.WithoutCancel(ctx))
			rt.stopped = false // nothing runs; Start may be called again after fixing the cause
		}
	}()
	for i, fc := range rt.config.Forwarders {
		f, err := forwarder.NewForwarder(agent, fc, rt.logger)
		if err != nil {
			return fmt.Errorf("watermill-jasper: runtime: Forwarders[%d]: %w", i, err)
		}
		done := make(chan error, 1)
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		rt.fwdCancel = append(rt.fwdCancel, cancel)
		go func() { done <- f.Run(fctx) }()
		select {
		case <-f.Running():
		case err := <-done:
			if err == nil {
				err = errors.New("the forwarder stopped before it started")
			}
			return fmt.Errorf("watermill-jasper: runtime: Forwarders[%d]: %w", i, err)
		}
		rt.forwarders = append(rt.forwarders, f)
		rt.fwdDone = append(rt.fwdDone, done)
	}
	rt.started = true
	rt.logger.Info("Runtime started", watermill.LogFields{"node_id": node.ID(), "forwarders": len(rt.forwarders)})
	return nil
}

// checkSchema migrates (MigrateSchema) or verifies the tables.
func (rt *Runtime) checkSchema(ctx context.Context) error {
	if rt.config.MigrateSchema {
		return schema.Migrate(ctx, rt.db, rt.schema)
	}
	missing, err := schema.Check(ctx, rt.db, rt.schema)
	for _, d := range missing {
		rt.logger.Info("Extension index missing (envelopes are found slower); `watermill-jasper schema migrate` adds it", watermill.LogFields{"index": d.String()})
	}
	if err != nil {
		return fmt.Errorf("watermill-jasper: runtime: %w (or set jasper.Config.MigrateSchema)", err)
	}
	return nil
}

// Stop stops everything in order, each step waiting for the previous one: the forwarders
// (the publishes in flight finish and their batch commits; what was not sent stays in the
// outbox, unlocked), the subscribers (acks are flushed, what they hold is handed back), the
// durability agent (the node's remaining envelopes are handed back) and the node lock. Stop
// the Watermill router that uses the runtime's subscribers and middleware first. ctx (or
// StopTimeout) bounds the wait: when it ends while a forwarder still waits for its broker,
// the publishes in flight are cancelled (their messages' context) and the forwarder commits
// the outcomes it has; the agent then hands back what is left within a few seconds. Stop is
// idempotent.
func (rt *Runtime) Stop(ctx context.Context) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.stopped {
		return nil
	}
	rt.stopped = true
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rt.config.StopTimeout)
		defer cancel()
	}
	err := rt.stopLocked(ctx)
	_ = rt.publisher.Close()
	return err
}

func (rt *Runtime) stopLocked(ctx context.Context) error {
	var errs []error
	for i, f := range rt.forwarders {
		closed := make(chan struct{})
		go func() {
			_ = f.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-ctx.Done():
			// Stop waiting for the broker: the publishes in flight are cancelled (their
			// messages' context), and the forwarder leaves the rest of its batch unlocked.
			rt.fwdCancel[i]()
			select {
			case <-closed:
			case <-time.After(forwarderGrace):
				errs = append(errs, fmt.Errorf("watermill-jasper: runtime: forwarder %d did not stop in time: %w", i, ctx.Err()))
				continue
			}
		}
		if err := <-rt.fwdDone[i]; err != nil && !errors.Is(err, forwarder.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, s := range rt.subscribers {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if rt.agent != nil {
		if err := rt.agent.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if rt.node != nil {
		if err := rt.node.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, cancel := range rt.fwdCancel {
		cancel()
	}
	rt.forwarders, rt.fwdDone, rt.fwdCancel, rt.subscribers = nil, nil, nil, nil
	rt.agent, rt.node, rt.collector = nil, nil, nil
	rt.logger.Info("Runtime stopped", nil)
	return errors.Join(errs...)
}

// Agent returns the durability agent (nil before Start): its Stats and Gauges, and the
// agent to build components by hand (forwarder.NewForwarder and the like).
func (rt *Runtime) Agent() *durability.Agent {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.agent
}

// Driver returns the database driver.
func (rt *Runtime) Driver() database.Driver { return rt.db }

// Schema returns the normalized schema config of the runtime's tables.
func (rt *Runtime) Schema() schema.Config { return rt.schema }

// Forwarders returns the running forwarders (for their Stats).
func (rt *Runtime) Forwarders() []*forwarder.Forwarder {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return append([]*forwarder.Forwarder(nil), rt.forwarders...)
}

// Publisher returns the runtime's publisher on the pool: it writes into the transaction the
// first message's context carries (publisher.WithTx, or the inbox's transaction inside a
// handler) and otherwise commits on its own. It needs no Start; Stop closes it.
func (rt *Runtime) Publisher() *publisher.Publisher { return rt.publisher }

// TxPublisher returns a publisher writing into tx, a caller's transaction
// (watermill-sql's sql.TxFromPgx(tx) or sql.TxFromStdSQL(tx)): the messages commit or roll
// back with it. It is cheap; create one per transaction. It needs no Start.
func (rt *Runtime) TxPublisher(tx wmsql.ContextExecutor) (*publisher.Publisher, error) {
	return publisher.NewPublisher(tx, rt.config.Publisher, rt.logger)
}

// Subscriber returns a subscriber of durable local queues on the runtime's agent; Stop
// closes it. Call it after Start.
func (rt *Runtime) Subscriber(config subscriber.Config) (s *subscriber.Subscriber, err error) {
	if config.TracerProvider == nil {
		config.TracerProvider = rt.config.TracerProvider
	}
	err = rt.withAgent("subscriber", func(agent *durability.Agent) error {
		if s, err = subscriber.NewSubscriber(agent, config, rt.logger); err == nil {
			rt.subscribers = append(rt.subscribers, s)
			rt.eachMetrics(func(m metricSources) { m.AddSubscriber(s) })
		}
		return err
	})
	return s, err
}

// Inbox returns the idempotent inbox middleware bound to the runtime's agent (which deletes
// its expired marks). Call it after Start.
func (rt *Runtime) Inbox(config middleware.InboxConfig) (in *middleware.Inbox, err error) {
	if config.TracerProvider == nil {
		config.TracerProvider = rt.config.TracerProvider
	}
	err = rt.withAgent("inbox", func(agent *durability.Agent) error {
		if in, err = middleware.NewInbox(agent, config, rt.logger); err == nil {
			rt.inboxes = append(rt.inboxes, in)
			rt.eachMetrics(func(m metricSources) { m.AddInbox(in) })
		}
		return err
	})
	return in, err
}

// DeadLetter returns the dead-letter middleware bound to the runtime's agent. Call it after
// Start.
func (rt *Runtime) DeadLetter(config middleware.DeadLetterConfig) (d *middleware.DeadLetter, err error) {
	err = rt.withAgent("dead letters", func(agent *durability.Agent) error {
		if d, err = middleware.NewDeadLetter(agent, config, rt.logger); err == nil {
			rt.deadLetters = append(rt.deadLetters, d)
			rt.eachMetrics(func(m metricSources) { m.AddDeadLetter(d) })
		}
		return err
	})
	return d, err
}

// Collector returns the Prometheus collector of the runtime's metrics (register it with
// prometheus.MustRegister): the agent's gauges and counters, the forwarders' counters and
// relay lag, and the counters of the subscribers and middleware taken from the runtime,
// before or after this call. Call it after Start; it returns the same Collector every time.
func (rt *Runtime) Collector() (*metrics.Collector, error) {
	err := rt.withAgent("metrics", func(agent *durability.Agent) error {
		if rt.collector == nil {
			rt.collector = metrics.NewCollector(rt.metricsConfig(agent))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rt.collector, nil
}

// MetricsProducer returns the OpenTelemetry producer of the same metrics as Collector, for
// an SDK reader (sdkmetric.WithProducer). Call it after Start; it returns the same Producer
// every time.
func (rt *Runtime) MetricsProducer() (*metrics.Producer, error) {
	err := rt.withAgent("metrics", func(agent *durability.Agent) error {
		if rt.producer == nil {
			rt.producer = metrics.NewProducer(rt.metricsConfig(agent))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rt.producer, nil
}

// metricsConfig lists the runtime's components as metrics sources. Called with rt.mu held.
func (rt *Runtime) metricsConfig(agent *durability.Agent) metrics.Config {
	cfg := metrics.Config{Agent: agent}
	for _, f := range rt.forwarders {
		cfg.Forwarders = append(cfg.Forwarders, f)
	}
	for _, s := range rt.subscribers {
		cfg.Subscribers = append(cfg.Subscribers, s)
	}
	for _, in := range rt.inboxes {
		cfg.Inboxes = append(cfg.Inboxes, in)
	}
	for _, d := range rt.deadLetters {
		cfg.DeadLetters = append(cfg.DeadLetters, d)
	}
	return cfg
}

// metricSources is what the runtime adds its later components to (Collector, Producer).
type metricSources interface {
	AddSubscriber(metrics.SubscriberSource)
	AddInbox(metrics.InboxSource)
	AddDeadLetter(metrics.DeadLetterSource)
}

// eachMetrics calls f with the Collector and the Producer made so far. Called with rt.mu held.
func (rt *Runtime) eachMetrics(f func(metricSources)) {
	if rt.collector != nil {
		f(rt.collector)
	}
	if rt.producer != nil {
		f(rt.producer)
	}
}

// withAgent runs build with the running runtime's agent, under the runtime's lock, or
// returns an error naming the factory when the runtime is not started or stopped.
func (rt *Runtime) withAgent(what string, build func(*durability.Agent) error) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	switch {
	case rt.stopped:
		return ErrStopped
	case !rt.started:
		return fmt.Errorf("watermill-jasper: %s: %w", what, ErrNotStarted)
	}
	return build(rt.agent)
}
