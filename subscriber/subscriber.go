// Package subscriber is a Watermill message.Subscriber (and message.SubscribeInitializer)
// over Jasper's incoming envelopes: a durable local queue per topic, where the topic is the
// envelope's received_at and only envelopes with status Incoming are delivered.
//
// Delivery is at least once. A subscription claims a batch of unowned envelopes (owner_id =
// its node, FOR UPDATE SKIP LOCKED, so subscribers of one topic in any number of processes
// never deliver one envelope at the same time), commits, and delivers them one by one (or
// Config.MaxInFlight at a time):
//
//   - Ack deletes the envelope (acks are batched: many ids per DELETE, flushed every
//     Config.AckFlushInterval and always before Close returns);
//   - Nack counts the attempt in the attempts column and hands the envelope back for a
//     retry after a back-off, as Jasper's scheduled retry does (status Scheduled,
//     execution_time = now + back-off); it is delivered again, with metadata.Attempts one
//     higher, by whichever subscriber of the topic takes it first;
//   - envelopes claimed but not delivered or not acknowledged when the subscription ends
//     (Close, or the Subscribe context cancelled) are handed back (owner 0), so the next
//     subscriber gets them; nothing is lost.
//
// Due scheduled envelopes of the topic (status Scheduled, execution_time <= now) are made
// Incoming and delivered; the subscription sets a timer for the next one.
//
// New envelopes wake subscriptions at once through PostgreSQL LISTEN/NOTIFY on the schema's
// incoming channel (payload: the topic), on one connection per database handle shared by
// every Subscriber; polling every Config.PollInterval is the fallback.
//
// An envelope that cannot become a message (unreadable headers column) is moved to
// jasper_dead_letters with an explanation, and delivery goes on.
//
// Messages carry metadata.EnvelopeID and metadata.Attempts (the number of earlier delivery
// attempts). Their context is a child of the Subscribe context, cancelled when the message
// is acked or nacked and when the subscription ends.
//
// Order is not guaranteed: envelopes are claimed in no particular order and a nacked one is
// delivered again later, after others.
package subscriber

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ErrSubscriberClosed is returned by Subscribe and SubscribeInitialize after Close.
var ErrSubscriberClosed = errors.New("watermill-jasper: subscriber is closed")

// ErrSchemaNotReady is wrapped by the errors of SubscribeInitialize and Subscribe when the
// tables, or columns this library needs, do not exist.
var ErrSchemaNotReady = errors.New("watermill-jasper: the watermill-jasper tables are missing or incomplete")

// initTimeout bounds SubscribeInitialize and the schema check of Subscribe.
const initTimeout = time.Minute

// Subscriber delivers the incoming envelopes of the topics subscribed to. It is safe for
// concurrent use.
type Subscriber struct {
	db      database.DB
	config  Config
	dialect sqldialect.Dialect
	logger  watermill.LoggerAdapter
	hub     *hub
	ownerID int32
	node    *durability.Node // whose id ownerID is: told about claims with unknown outcomes
	stmts   statements

	initMu   sync.Mutex
	verified bool

	mu      sync.Mutex
	closed  bool
	subs    map[*subscription]struct{}
	closeMu sync.Mutex // serializes Close
	closeDn bool
}

// statements are built once per Subscriber.
type statements struct {
	claim, deleteIDs, retry, release, releaseScheduled, deadLetter string
	channel, listen                                                string
}

var (
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
	_ durability.Waker             = (*Subscriber)(nil)
)

// NewSubscriber returns a Subscriber reading the incoming envelopes of db (the pool:
// database.FromPgx or database.FromStdSQL). Without Config.Node it takes the database
// handle's shared node (creating it and its lock on first use). It does not touch the tables;
// SubscribeInitialize and Subscribe check them.
func NewSubscriber(db database.DB, config Config, logger watermill.LoggerAdapter) (*Subscriber, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil database handle (use database.FromPgx or database.FromStdSQL)", ErrInvalidConfig)
	}
	if config.Schema.Dialect == "" {
		config.Schema.Dialect = db.Dialect()
	}
	config.setDefaults()
	if config.Schema.Dialect != db.Dialect() {
		return nil, fmt.Errorf("%w: config says dialect %s but the database is %s", ErrInvalidConfig, config.Schema.Dialect, db.Dialect())
	}
	if err := config.Validate(); err != nil {
		return nil, err
	}
	var err error
	config.Schema, err = config.Schema.Normalized()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	d, err := sqldialect.For(config.Schema)
	if err != nil {
		return nil, fmt.Errorf("watermill-jasper: subscriber: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	s := &Subscriber{
		db:      db,
		config:  config,
		dialect: d,
		logger:  logger,
		subs:    map[*subscription]struct{}{},
		stmts: statements{
			claim:            d.ClaimIncoming(),
			deleteIDs:        d.DeleteIncoming(),
			retry:            d.RetryIncoming(),
			release:          d.ReleaseIncoming(),
			releaseScheduled: d.ReleaseScheduled(),
			deadLetter:       d.DeadLetterIncoming(),
			channel:          d.IncomingChannel(),
			listen:           d.ListenIncoming(),
		},
	}
	s.hub = acquireHub(db, logger)
	if config.Node != nil {
		s.node = config.Node
		s.ownerID = config.Node.ID()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), initTimeout)
		defer cancel()
		n, err := s.hub.sharedNode(ctx)
		if err != nil {
			_ = releaseHub(s.hub)
			return nil, fmt.Errorf("watermill-jasper: subscriber: take the node lock: %w", err)
		}
		s.node = n
		s.ownerID = n.ID()
	}
	s.logger = logger.With(watermill.LogFields{"subscriber_node_id": s.ownerID, "schema": config.Schema.Schema})
	return s, nil
}

// NodeID is the owner_id this subscriber writes on the envelopes it holds.
func (s *Subscriber) NodeID() int32 { return s.ownerID }

// SubscribeInitialize checks that the tables exist with the columns this library needs
// (creating what is missing when Config.InitializeSchema is set). The topic needs no
// preparation: every topic lives in the one incoming table. Safe for concurrent use.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	if s.isClosed() {
		return ErrSubscriberClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), initTimeout)
	defer cancel()
	return s.checkSchema(ctx)
}

func (s *Subscriber) checkSchema(ctx context.Context) error {
	s.initMu.Lock()
	defer s.initMu.Unlock()
	if s.verified {
		return nil
	}
	cfg := s.config.Schema
	if s.config.InitializeSchema {
		if err := schema.Migrate(ctx, s.db, cfg); err != nil {
			return fmt.Errorf("watermill-jasper: subscriber: %w", err)
		}
	}
	diffs, err := schema.Verify(ctx, s.db, cfg, schema.VerifyOptions{})
	if err != nil {
		return fmt.Errorf("watermill-jasper: subscriber: %w", err)
	}
	var problems []string
	for _, d := range diffs {
		if d.Kind == schema.MissingIndex {
			s.logger.Info("Extension index missing (envelopes are found slower); `watermill-jasper schema migrate` adds it", watermill.LogFields{"index": d.String()})
			continue
		}
		problems = append(problems, d.String())
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("%w in schema %s (%s); create them with `watermill-jasper schema migrate`, schema.Migrate, or subscriber.Config.InitializeSchema",
			ErrSchemaNotReady, cfg.Schema, strings.Join(problems, "; "))
	}
	s.verified = true
	return nil
}

// Subscribe starts delivering the envelopes of topic on the returned channel. The channel
// is closed when ctx is cancelled or the Subscriber is closed; what the subscription had
// claimed and not delivered or not seen acknowledged is handed back. Messages must be
// acked or nacked; the next one is sent once fewer than Config.MaxInFlight await it.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if topic == "" {
		return nil, errors.New("watermill-jasper: subscriber: empty topic")
	}
	if s.isClosed() {
		return nil, ErrSubscriberClosed
	}
	ictx, cancel := context.WithTimeout(ctx, initTimeout)
	err := s.checkSchema(ictx)
	cancel()
	if err != nil {
		return nil, err
	}
	sub := newSubscription(s, ctx, topic)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		sub.cancel()
		return nil, ErrSubscriberClosed
	}
	s.subs[sub] = struct{}{}
	s.mu.Unlock()

	if !s.config.DisableNotify && s.stmts.channel != "" {
		lctx, cancel := context.WithTimeout(sub.ctx, initTimeout)
		if err := s.hub.listen(lctx, s.stmts.channel, s.stmts.listen, topic, sub); err != nil && sub.ctx.Err() == nil {
			sub.logger.Error("Cannot LISTEN for new envelopes; polling only", err, nil)
		}
		cancel()
		sub.listening = true
	}
	go sub.run()
	return sub.out, nil
}

// Wake makes every subscription look for envelopes now, without waiting for a notification
// or a poll. A durability agent calls it (durability.Waker) after it released scheduled
// envelopes or recovered those of a dead node.
func (s *Subscriber) Wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		sub.wakeUp()
	}
}

func (s *Subscriber) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Subscriber) removeSub(sub *subscription) {
	s.mu.Lock()
	delete(s.subs, sub)
	s.mu.Unlock()
}

// Close ends every subscription: output channels are closed, acknowledged envelopes are
// deleted and the others handed back (owner 0), then Close returns. It is idempotent and
// safe to call while messages await acks or sit unread in a channel.
func (s *Subscriber) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closeDn {
		return nil
	}
	s.mu.Lock()
	s.closed = true
	subs := make([]*subscription, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.cancel()
	}
	var errs []error
	for _, sub := range subs {
		<-sub.done
		if sub.err != nil {
			errs = append(errs, sub.err)
		}
	}
	if err := releaseHub(s.hub); err != nil {
		errs = append(errs, err)
	}
	s.closeDn = true
	s.logger.Debug("Subscriber closed", nil)
	return errors.Join(errs...)
}

// codec is the UUID codec of the dialect.
func (s *Subscriber) codec() row.UUIDCodec { return s.dialect.UUIDs() }
