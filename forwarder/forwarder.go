// Package forwarder relays committed outgoing envelopes (Jasper's jasper_outgoing_envelopes,
// written by this module's publisher or by .NET Jasper nodes) to any Watermill publisher:
// RabbitMQ through watermill-amqp, Kafka, NATS, a GoChannel...
//
// Each worker claims a batch of unowned envelopes in one short statement (owner_id = the
// node's id, FOR UPDATE SKIP LOCKED, so any number of forwarders in any number of processes
// share the table), commits, publishes the messages concurrently, then deletes the sent ones
// in one statement. No transaction is held while publishing. A failed envelope is handed
// back with one more attempt and, after MaxAttempts, moved to jasper_dead_letters with the
// error; an envelope that can never be sent (unreadable row, unmappable destination) goes
// there at once. Expired envelopes (deliver_by passed) are deleted without being sent, as
// Jasper does. A destination that keeps failing is paused by a circuit breaker without
// delaying the others.
//
// Delivery is at-least-once: a crash between a publish and the delete re-sends the message
// (same Watermill UUID, so consumers can deduplicate on it). Envelopes held by a node that
// died are handed back by the living nodes' durability agents.
//
// Workers wake up on PostgreSQL notifications (the publisher notifies after commit), on a
// full batch, or every PollInterval; a burst of notifications costs one query.
package forwarder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
)

// ErrClosed is returned by Run once Close was called.
var ErrClosed = errors.New("watermill-jasper: forwarder is closed")

// ErrRunning is returned by a second call of Run.
var ErrRunning = errors.New("watermill-jasper: forwarder is already running")

const (
	// statementTimeout bounds each claim, delete and release statement.
	statementTimeout = 30 * time.Second
	// flushRetries is how many times a failed delete/release is retried before the worker
	// moves on (it is tried again with the next batch).
	flushRetries = 4
	// maxListenBackoff caps the wait between attempts to LISTEN again.
	maxListenBackoff = 30 * time.Second
)

// Stats counts what a Forwarder did since it was created. Counters move when an outcome is
// known; the statement recording it in the table follows at the end of the batch.
type Stats struct {
	// Claimed envelopes (taken from the table by this forwarder).
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
	// Released envelopes: claimed but handed back unsent, without counting an attempt
	// (destination paused, or the forwarder stopping).
	Released int64
}

// Forwarder relays outgoing envelopes to a Watermill publisher. Create it with
// NewForwarder, start it with Run and stop it with Close.
type Forwarder struct {
	db      database.DB
	config  Config
	dialect sqldialect.Dialect
	uuids   row.UUIDCodec
	logger  watermill.LoggerAdapter
	breaker *breaker
	// Test hooks: a destination was paused; envelopes were moved to the dead letters; a
	// batch was recorded; the notification connection LISTENs.
	onPause        func(destination string)
	onDeadLettered func(n int)
	onFlushed      func()
	onListening    func()

	mu      sync.Mutex
	started bool
	closed  bool
	stop    context.CancelFunc // ends Run's loops; set when Run starts
	closing chan struct{}      // closed by Close, after stop
	done    chan struct{}      // closed when Run returns
	running chan struct{}      // closed when Run's loops have started

	wake chan struct{} // buffered(1): coalesced wake-ups for the workers
	jobs chan *item    // messages to publish, read by PublishConcurrency goroutines

	claimed, sent, failed, expired, deadLettered, released atomic.Int64
	lastFound                                              atomic.Int64  // unix nanos of the last claim that found envelopes
	busy                                                   chan struct{} // tells poll that claims find envelopes again
}

// NewForwarder validates config and returns a Forwarder relaying the outgoing envelopes of
// db (database.FromPgx or database.FromStdSQL on PostgreSQL) to config.Publisher.
func NewForwarder(db database.DB, config Config, logger watermill.LoggerAdapter) (*Forwarder, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: a database.DB is required (database.FromPgx or database.FromStdSQL)", ErrInvalidConfig)
	}
	if config.Schema.Dialect == "" {
		config.Schema.Dialect = db.Dialect()
	}
	if err := config.Validate(); err != nil {
		return nil, err
	}
	config.setDefaults()
	if config.Schema.Dialect != db.Dialect() {
		return nil, fmt.Errorf("%w: Schema.Dialect is %s but the database is %s", ErrInvalidConfig, config.Schema.Dialect, db.Dialect())
	}
	d, err := sqldialect.For(config.Schema)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	config.Destinations = append([]string(nil), config.Destinations...)
	f := &Forwarder{
		db:      db,
		config:  config,
		dialect: d,
		uuids:   d.UUIDs(),
		logger:  logger.With(watermill.LogFields{"component": "watermill-jasper/forwarder", "schema": d.Schema().Schema}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		running: make(chan struct{}),
		wake:    make(chan struct{}, 1),
		busy:    make(chan struct{}, 1),
		jobs:    make(chan *item),
	}
	f.breaker = newBreaker(config.CircuitBreakAfter, config.CircuitPause, config.MaxCircuitPause)
	f.breaker.opened = f.circuitOpened
	f.breaker.closed = f.circuitClosed
	return f, nil
}

// Run relays envelopes until Close is called or ctx is cancelled, then returns nil. It
// returns an error only when it cannot start: no node lock, Run called twice, or after
// Close. Database and publisher failures while running are logged and retried; they never
// stop Run.
//
// Cancelling ctx also cancels the context of the messages being published; Close instead
// lets the publishes in flight finish.
func (f *Forwarder) Run(ctx context.Context) error {
	f.mu.Lock()
	switch {
	case f.closed:
		f.mu.Unlock()
		return ErrClosed
	case f.started:
		f.mu.Unlock()
		return ErrRunning
	}
	f.started = true
	// stopCtx ends the loops: Close or ctx. ctx itself is the messages' context.
	stopCtx, stop := context.WithCancel(ctx)
	f.stop = stop
	f.mu.Unlock()
	defer close(f.done)
	defer stop()

	node := f.config.Node
	if node == nil {
		n, err := durability.NewNode(stopCtx, f.db, durability.NodeConfig{}, f.logger)
		if err != nil {
			if stopCtx.Err() != nil {
				return nil // closed while starting
			}
			return fmt.Errorf("watermill-jasper: forwarder: %w", err)
		}
		defer n.Close()
		node = n
	}
	owner := node.ID()

	var publishers, loops sync.WaitGroup
	for range f.config.PublishConcurrency {
		publishers.Go(func() {
			for it := range f.jobs {
				f.publishItem(it)
			}
		})
	}
	if !f.config.DisableNotify && f.dialect.ListenOutgoing() != "" {
		loops.Go(func() { f.listen(stopCtx) })
	}
	loops.Go(func() { f.poll(stopCtx) })

	var workers sync.WaitGroup
	for i := range f.config.Workers {
		w := f.newWorker(ctx, i, node, stopCtx.Done())
		workers.Go(func() { w.run(stopCtx) })
	}
	f.logger.Info("Forwarder started", watermill.LogFields{
		"node_id": owner, "workers": f.config.Workers, "batch_size": f.config.BatchSize,
		"publish_concurrency": f.config.PublishConcurrency,
	})
	f.signal() // drain the backlog without waiting for a notification
	close(f.running)

	workers.Wait()
	close(f.jobs)
	publishers.Wait()
	stop()
	loops.Wait()
	f.logger.Info("Forwarder stopped", watermill.LogFields{"node_id": owner})
	return nil
}

// Running is closed once Run has started relaying (never, when Run fails to start).
func (f *Forwarder) Running() <-chan struct{} { return f.running }

// Close stops the forwarder: no new batch is claimed, the publishes in flight finish and are
// recorded, the envelopes of the current batch not handed to the publisher yet are handed
// back (owner 0, attempts unchanged) and Close returns once Run has returned. It is
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
	}
}

// Wake makes the forwarder claim at once, e.g. after the durability agent handed envelopes
// back (it implements durability.Waker). Wake-ups coalesce.
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
			f.signal()
		}
		interval := f.config.PollInterval
		if time.Since(time.Unix(0, f.lastFound.Load())) < f.config.PollInterval {
			interval = f.config.ActivePollInterval
		}
		t.Reset(interval)
	}
}

// listen holds a connection LISTENing on the outgoing channel and wakes a worker on every
// notification. When LISTEN is impossible it logs once, relies on polling and tries again
// with a growing delay.
func (f *Forwarder) listen(ctx context.Context) {
	failing := false
	backoff := time.Second
	for ctx.Err() == nil {
		conn, err := f.db.Acquire(ctx)
		if err == nil {
			if _, err = conn.Exec(ctx, f.dialect.ListenOutgoing()); err != nil {
				_ = conn.Close(true)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				f.logger.Error("Cannot LISTEN for new envelopes; polling every PollInterval until it works again", err,
					watermill.LogFields{"poll_interval": f.config.PollInterval.String()})
				failing = true
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxListenBackoff)
			continue
		}
		if failing {
			f.logger.Info("Listening for new envelopes again", nil)
			failing = false
		}
		backoff = time.Second
		f.signal() // envelopes committed while nobody listened
		if f.onListening != nil {
			f.onListening()
		}
		for {
			if _, _, err = conn.WaitForNotification(ctx); err != nil {
				break
			}
			f.signal()
		}
		// The wait was interrupted: the session state is unknown, so the connection is closed.
		_ = conn.Close(true)
		if ctx.Err() != nil {
			return
		}
		f.logger.Error("Notification connection lost; listening again", err, nil)
		failing = true
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
	err := f.publish(it.topic, it.msg)
	switch {
	case err == nil:
		it.result = sent
		f.breaker.success(dest)
		if it.probe {
			f.signal() // the destination is back: claim its envelopes
		}
	case w.msgCtx.Err() != nil:
		// Run's context was cancelled under the publish: not the destination's fault.
		if it.probe {
			f.breaker.probeDone(dest)
		}
	default:
		it.result, it.err = failed, err
		f.breaker.failure(dest, it.probe, time.Now())
	}
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

// errorReport renders err the way Jasper fills a dead letter: the type of the root cause,
// the message, and the whole chain.
func errorReport(err error) (typ, msg, text string) {
	root := err
	for {
		u := errors.Unwrap(root)
		if u == nil {
			break
		}
		root = u
	}
	var b strings.Builder
	for e := err; e != nil; e = errors.Unwrap(e) {
		if b.Len() > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%T: %s", e, e.Error())
	}
	return fmt.Sprintf("%T", root), err.Error(), b.String()
}

// uuidList is reused storage for a list of envelope ids.
type uuidList []uuid.UUID
