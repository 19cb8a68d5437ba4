// Package forwarder relays committed outgoing envelopes (Jasper's jasper_outgoing_envelopes,
// written by this module's publisher or by .NET Jasper nodes) to any Watermill publisher:
// RabbitMQ through watermill-amqp or jasperamqp, Kafka, NATS, a GoChannel...
//
// A forwarder belongs to a node: it is built on the node's durability agent
// (jasper.NewRuntime builds both; by hand, durability.NewNode and durability.NewAgent), whose
// one LISTEN connection wakes it.
//
// Each worker relays a batch in one transaction: it locks up to BatchSize unowned envelopes
// (SELECT ... FOR UPDATE SKIP LOCKED; READPAST, UPDLOCK on SQL Server, so any number of
// forwarders in any number of processes, and .NET Jasper nodes, share the table), publishes
// the messages concurrently, deletes the sent ones in one statement and commits. The
// envelopes are never marked with an owner (owner_id stays 0): one row write per envelope
// instead of an update and a delete, and a batch whose transaction does not commit (a crash,
// a lost connection, a failed statement) is free to be relayed again at once, without an
// agent handing it back. The transaction stays open while the batch is published (tens of
// milliseconds for a batch of 500 to RabbitMQ with confirms). A failed envelope gets one more
// attempt counted and, after MaxAttempts, is moved to jasper_dead_letters with the error; an
// envelope that can never be sent (unreadable row, unmappable destination, a publish error
// marked permanent with package fault) goes there at once, and a failure marked temporary
// (the transport, not the message) does not count as an attempt. Expired envelopes
// (deliver_by passed) are deleted without being sent, as Jasper does. A destination that
// keeps failing is paused by a circuit breaker without delaying the others.
//
// Delivery is at-least-once: a crash between a publish and the commit re-sends the message
// (same Watermill UUID, so consumers can deduplicate on it). Envelopes marked with the id of a
// node that died (written by .NET Jasper, or scheduled sends) are handed back by the living
// nodes' durability agents.
//
// Workers wake up on the agent's notifications (the publisher notifies after commit), when
// the agent hands envelopes back, on a full batch, or by polling (ActivePollInterval while
// busy, PollInterval when idle); a burst of wake-ups costs one query.
package forwarder

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/component"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/tracing"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ErrClosed is returned by Run once Close was called.
var ErrClosed = errors.New("watermill-jasper: forwarder is closed")

// ErrRunning is returned by a second call of Run.
var ErrRunning = errors.New("watermill-jasper: forwarder is already running")

const (
	// statementTimeout bounds each statement of a batch's transaction.
	statementTimeout = 30 * time.Second
)

// Stats counts what a Forwarder did since it was created. Counters move when an outcome is
// known; the batch's transaction records it in the table at its end.
type Stats struct {
	// Claimed envelopes (locked in a batch's transaction by this forwarder).
	Claimed int64
	// Sent envelopes: published successfully, then deleted.
	Sent int64
	// Failed publishes (each failed attempt counts; the envelope is retried or dead-lettered).
	Failed int64
	// Expired envelopes: deliver_by had passed, deleted without being sent.
	Expired int64
	// DeadLettered envelopes: moved to jasper_dead_letters (after MaxAttempts failures, or at
	// once when they could never be sent).
	DeadLettered int64
	// Released envelopes: locked but left unsent, without counting an attempt (destination
	// paused, or the forwarder stopping).
	Released int64
	// Polls counts the finished batches of the polling path, each one claim statement
	// whether or not it found envelopes (a forwarder following a replication slot polls
	// only when woken for what the slot does not bring).
	Polls int64
}

// Forwarder relays outgoing envelopes to a Watermill publisher. Create it with
// NewForwarder, start it with Run and stop it with Close.
type Forwarder struct {
	agent   *durability.Agent
	store   store.Store
	config  Config
	logger  watermill.LoggerAdapter
	breaker *breaker
	tracer  *tracing.Tracer // nil: tracing off
	// Test hooks: a destination was paused; envelopes were moved to the dead letters; a
	// batch was recorded.
	onPause        func(destination string)
	onDeadLettered func(n int)
	onFlushed      func()

	mu      sync.Mutex
	started bool
	closed  bool
	stop    context.CancelFunc // ends Run's loops; set when Run starts
	closing chan struct{}      // closed by Close, after stop
	done    chan struct{}      // closed when Run returns
	running chan struct{}      // closed when Run's loops have started

	wake chan struct{} // buffered(1): coalesced wake-ups for the workers
	jobs chan *item    // messages to publish, read by PublishConcurrency goroutines

	follower *follower // the logical-replication source; nil: polling only
	// draining reports that the polling path's last batch was full: it is working through a
	// backlog, and the replication source leaves the rows it brings meanwhile to it.
	draining atomic.Bool

	claimed, sent, failed, expired, deadLettered, released, polls atomic.Int64
	lastFound                                                     atomic.Int64  // unix nanos of the last claim that found envelopes
	busy                                                          chan struct{} // tells poll that claims find envelopes again
}

// errNoAgent refuses a forwarder without a node and its agent, whose LISTEN connection wakes
// it and which hands back envelopes of dead nodes.
var errNoAgent = fmt.Errorf("%w: a *durability.Agent is required; build it with jasper.NewRuntime (or durability.NewNode + durability.NewAgent)", ErrInvalidConfig)

// NewForwarder validates config and returns a Forwarder relaying the outgoing envelopes of
// the agent's schema to config.Publisher. A nil logger logs with the agent's.
func NewForwarder(agent *durability.Agent, config Config, logger watermill.LoggerAdapter) (*Forwarder, error) {
	if agent == nil {
		return nil, errNoAgent
	}
	if err := config.Validate(); err != nil {
		return nil, err
	}
	config.setDefaults()
	if logger == nil {
		logger = agent.Logger()
	}
	config.Destinations = append([]string(nil), config.Destinations...)
	st := agent.Store()
	if st.Schema().Compatibility == schema.Jasper2 && len(config.Destinations) == 0 {
		return nil, fmt.Errorf("%w: Destinations is empty, but .NET Jasper nodes share the outbox of schema %s (compatibility %s): "+
			"list the destinations this forwarder delivers, e.g. \"rabbitmq://*\" (a .NET node's tcp:// or local:// envelopes are not its to take)",
			ErrInvalidConfig, st.Schema().Schema, schema.Jasper2)
	}
	f := &Forwarder{
		agent:  agent,
		store:  st,
		config: config,
		logger: logger.With(watermill.LogFields{
			"component": "watermill-jasper/forwarder", "schema": st.Schema().Schema, "node_id": agent.NodeID(),
		}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		running: make(chan struct{}),
		wake:    make(chan struct{}, 1),
		busy:    make(chan struct{}, 1),
		jobs:    make(chan *item),
		tracer:  tracing.New(config.TracerProvider),
	}
	if lr := config.LogicalReplication; lr != nil {
		if st.Dialect() != schema.Postgres {
			return nil, fmt.Errorf("%w: LogicalReplication needs PostgreSQL; the agent's database is %s", ErrInvalidConfig, st.Dialect())
		}
		fl, err := newFollower(f, *lr, st.Schema().Schema)
		if err != nil {
			return nil, err
		}
		f.follower = fl
	}
	f.breaker = newBreaker(config.CircuitBreakAfter, config.CircuitPause, config.MaxCircuitPause)
	f.breaker.opened = f.circuitOpened
	f.breaker.closed = f.circuitClosed
	return f, nil
}

// Run relays envelopes until Close is called or ctx is cancelled, then returns nil. It
// returns an error only when it cannot start: the agent is not running (an error wrapping
// durability.ErrAgentNotRunning), Run called twice, or after Close. Database and publisher
// failures while running are logged and retried; they never stop Run.
//
// Cancelling ctx also cancels the context of the messages being published; Close instead
// lets the publishes in flight finish.
func (f *Forwarder) Run(ctx context.Context) (err error) {
	// Its statements and goroutines carry the pprof label watermill_jasper=forwarder.
	component.Do(ctx, component.Forwarder, func(ctx context.Context) { err = f.run(ctx) })
	return err
}

func (f *Forwarder) run(ctx context.Context) error {
	f.mu.Lock()
	switch {
	case f.closed:
		f.mu.Unlock()
		return ErrClosed
	case f.started:
		f.mu.Unlock()
		return ErrRunning
	}
	if err := f.agent.CheckRunning("forwarder"); err != nil {
		f.mu.Unlock()
		return err
	}
	f.started = true
	// stopCtx ends the loops: Close or ctx. ctx itself is the messages' context.
	stopCtx, stop := context.WithCancel(ctx)
	f.stop = stop
	f.mu.Unlock()
	defer close(f.done)
	defer stop()

	// The agent's notifications, hand-backs and recovery passes wake the workers; while the
	// replication slot is followed, notifications do not (the slot brings those rows).
	unregister := f.agent.OnOutgoing(f.signal, durability.NotifiedWhile(func() bool { return !f.following() }))
	defer unregister()

	// producers hand messages to the publishers: the polling workers and the replication
	// source's batches. The publishers' queue closes once all of them have ended.
	var publishers, producers, loops sync.WaitGroup
	for range f.config.PublishConcurrency {
		publishers.Go(func() {
			for it := range f.jobs {
				f.publishItem(it)
			}
		})
	}
	loops.Go(func() { f.poll(stopCtx) })
	if fl := f.follower; fl != nil {
		fl.workers = make(chan *worker, f.config.Workers)
		for i := range f.config.Workers {
			fl.workers <- f.newWorker(ctx, -1-i, stopCtx.Done())
		}
		producers.Go(func() { fl.run(stopCtx) }) // ends after its batches in flight
	}

	for i := range f.config.Workers {
		w := f.newWorker(ctx, i, stopCtx.Done())
		producers.Go(func() { w.run(stopCtx) })
	}
	f.logger.Info("Forwarder started", watermill.LogFields{
		"workers": f.config.Workers, "batch_size": f.config.BatchSize,
		"publish_concurrency": f.config.PublishConcurrency,
	})
	f.signal() // drain the backlog without waiting for a notification
	close(f.running)

	producers.Wait()
	close(f.jobs)
	publishers.Wait()
	stop()
	loops.Wait()
	f.logger.Info("Forwarder stopped", nil)
	return nil
}

// Running is closed once Run has started relaying (never, when Run fails to start).
func (f *Forwarder) Running() <-chan struct{} { return f.running }

// Close stops the forwarder: no new batch is locked, the publishes in flight finish and the
// batch's outcomes are committed, the envelopes of the batch not handed to the publisher yet
// are left as they were (unlocked by the commit), and Close returns once Run has returned. It is
// idempotent and returns nil; the publisher is not closed.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		if f.stop != nil {
			f.stop()
		}
		close(f.closing)
	}
	started := f.started
	f.mu.Unlock()
	if started {
		<-f.done
	}
	return nil
}

// Stats returns the counters.
func (f *Forwarder) Stats() Stats {
	return Stats{
		Claimed:      f.claimed.Load(),
		Sent:         f.sent.Load(),
		Failed:       f.failed.Load(),
		Expired:      f.expired.Load(),
		DeadLettered: f.deadLettered.Load(),
		Released:     f.released.Load(),
		Polls:        f.polls.Load(),
	}
}

// Wake makes the forwarder claim at once, as a notification would. The agent wakes it by
// itself (notifications, envelopes handed back, recovery passes); wake-ups coalesce.
func (f *Forwarder) Wake() { f.signal() }

// signal wakes one idle worker; wake-ups coalesce.
func (f *Forwarder) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *Forwarder) circuitOpened(destination string, pause time.Duration, failures int) {
	f.logger.Info("Destination paused after failed publishes", watermill.LogFields{
		"destination": destination, "pause": pause.String(), "failures": failures,
	})
	time.AfterFunc(pause, f.signal) // claim its envelopes again when the pause ends
	if f.onPause != nil {
		f.onPause(destination)
	}
}

func (f *Forwarder) circuitClosed(destination string) {
	f.logger.Info("Destination resumed", watermill.LogFields{"destination": destination})
}

// poll wakes a worker every ActivePollInterval while claims find envelopes (until
// PollInterval has passed since the last one that did), else every PollInterval: low latency
// under load without per-commit notifications, and one query per PollInterval when idle.
func (f *Forwarder) poll(ctx context.Context) {
	t := time.NewTimer(f.config.ActivePollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.busy: // a claim found envelopes: poll at the active pace from now on
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		case <-t.C:
			if !f.following() { // set while the timer ran: the slot brings what is committed
				f.signal()
			}
		}
		interval := f.config.PollInterval
		switch {
		case f.following():
			// The replication slot brings what is committed; the polling path waits for its
			// wake-ups (the source's hand-overs and retries, the agent's).
			interval = time.Hour
		case time.Since(time.Unix(0, f.lastFound.Load())) < f.config.PollInterval:
			interval = f.config.ActivePollInterval
		}
		t.Reset(interval)
	}
}

// item is one message of a batch on its way to the publisher.
type item struct {
	w      *worker
	env    *row.Envelope
	msg    *message.Message
	topic  string
	probe  bool
	result result
	err    error
}

type result uint8

const (
	unsent result = iota // not handed to the publisher: released
	sent
	failed
)

// publishItem runs in one of the PublishConcurrency goroutines.
func (f *Forwarder) publishItem(it *item) {
	w := it.w
	defer w.wg.Done()
	dest := it.env.Destination
	select {
	case <-w.stop:
		if it.probe {
			f.breaker.probeDone(dest)
		}
		return // stopping: not started, released
	default:
	}
	if !f.breaker.allow(dest, it.probe) {
		return // paused meanwhile: released
	}
	var err error
	if f.tracer != nil {
		err = f.publishTraced(it)
	} else {
		err = f.publish(it.topic, it.msg)
	}
	switch {
	case err == nil:
		it.result = sent
		f.breaker.answered(dest)
		if it.probe {
			f.signal() // the destination is back: claim its envelopes
		}
	case w.msgCtx.Err() != nil:
		// Run's context was cancelled under the publish: not the destination's fault.
		if it.probe {
			f.breaker.probeDone(dest)
		}
	case fault.IsPermanent(err):
		// Refused for good (a destination the broker does not have, a message it never
		// takes): the envelope is dead-lettered at once, and the refusal is an answer, so it
		// does not count towards pausing the destination. A destination refused forever
		// thus drains at full speed, a dead letter per envelope, instead of one per probe.
		it.result, it.err = failed, err
		f.breaker.answered(dest)
		if it.probe {
			f.signal()
		}
	default:
		it.result, it.err = failed, err
		f.breaker.failure(dest, it.probe, time.Now())
	}
}

// publishTraced publishes inside a send span, whose trace context the message carries.
func (f *Forwarder) publishTraced(it *item) error {
	ctx, span := f.tracer.Start(tracing.ParentForDelivery(it.msg.Context(), it.msg), tracing.Send, it.topic, it.msg)
	tracing.Inject(ctx, it.msg)
	it.msg.SetContext(ctx)
	err := f.publish(it.topic, it.msg)
	tracing.End(span, err)
	return err
}

// publish calls the publisher, turning a panic into an error.
func (f *Forwarder) publish(topic string, msg *message.Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("watermill-jasper: publisher panicked: %v", r)
		}
	}()
	return f.config.Publisher.Publish(topic, msg)
}

// topic maps a destination, turning a panic of the user's function into an error.
func (f *Forwarder) topic(destination string) (topic string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("watermill-jasper: Topic function panicked: %v", r)
		}
	}()
	topic, err = f.config.Topic(destination)
	if err == nil && topic == "" {
		err = errors.New("watermill-jasper: Topic function returned an empty topic")
	}
	return topic, err
}
