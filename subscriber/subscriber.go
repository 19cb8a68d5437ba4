// Package subscriber is a Watermill message.Subscriber (and message.SubscribeInitializer)
// over Jasper's incoming envelopes: a durable local queue per topic, where the topic is the
// envelope's received_at and only envelopes with status Incoming are delivered.
//
// A Subscriber is a component of a durability agent (durability.Agent: one node and one
// schema), built with NewSubscriber or by a jasper.Runtime: it claims envelopes with the
// agent's node id, is woken by the agent (notifications, released scheduled envelopes,
// recovered envelopes) and leaves every background job to it.
//
// Delivery is at least once. A subscription claims a batch of unowned envelopes (owner_id =
// the agent's node, FOR UPDATE SKIP LOCKED, so subscribers of one topic in any number of
// processes never deliver one envelope at the same time), commits, and delivers them one by
// one (or Config.MaxInFlight at a time):
//
//   - Ack deletes the envelope (acks are batched: many ids per DELETE, flushed every
//     Config.AckFlushInterval and always before Close returns);
//   - Nack counts the attempt in the attempts column and hands the envelope back for a
//     retry after a back-off, as Jasper's scheduled retry does (status Scheduled,
//     execution_time = now + back-off); the subscription asks the agent for a scheduled
//     pass at the due time (Agent.ScheduleAt), the agent makes it Incoming and wakes the
//     topic's subscriptions, and it is delivered again, with metadata.Attempts one higher,
//     by whichever subscriber of the topic takes it first;
//   - envelopes claimed but not delivered or not acknowledged when the subscription ends
//     (Close, or the Subscribe context cancelled) are handed back (owner 0), so the next
//     subscriber gets them; nothing is lost.
//
// Scheduled envelopes of the topic (a nacked message, a delayed message of a publisher) are
// delivered once the agent has made them Incoming: at the time asked for with ScheduleAt, or
// at its periodic scheduled pass (durability.Config.ScheduledJobPollingTime), which also
// plans a pass for the next envelope due.
//
// New envelopes wake subscriptions through the agent (Agent.OnIncoming): its one LISTEN
// connection on PostgreSQL, and its own wake-ups; polling every Config.PollInterval is the
// fallback. A claim whose answer was lost is reported to the agent
// (Agent.ReportUnknownOutcome), which hands the node's envelopes back at its next node check.
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
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/stats"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/tracing"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ErrSubscriberClosed is returned by Subscribe and SubscribeInitialize after Close.
var ErrSubscriberClosed = errors.New("watermill-jasper: subscriber is closed")

// ErrSchemaNotReady is wrapped by the errors of SubscribeInitialize and Subscribe when the
// tables, or columns this library needs, do not exist.
var ErrSchemaNotReady = schema.ErrNotReady

// initTimeout bounds SubscribeInitialize and the schema check of Subscribe.
const initTimeout = time.Minute

// Subscriber delivers the incoming envelopes of the topics subscribed to. It is safe for
// concurrent use.
type Subscriber struct {
	agent   *durability.Agent
	store   store.Store
	config  Config
	logger  watermill.LoggerAdapter
	ownerID int32
	tracer  *tracing.Tracer // nil: tracing off

	initMu   sync.Mutex
	verified bool

	topics stats.Table[topicCounters]

	mu      sync.Mutex
	closed  bool
	subs    map[*subscription]struct{}
	closeMu sync.Mutex // serializes Close
	closeDn bool
}

var (
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
)

// NewSubscriber returns a Subscriber delivering the incoming envelopes of the agent's schema,
// claiming them with the agent's node id. The agent must run (Agent.Start) before Subscribe;
// stop the Subscriber (Close) before the agent. It does not touch the tables;
// SubscribeInitialize and Subscribe check them.
func NewSubscriber(agent *durability.Agent, config Config, logger watermill.LoggerAdapter) (*Subscriber, error) {
	if agent == nil {
		return nil, fmt.Errorf("%w: nil *durability.Agent (build one with jasper.NewRuntime, or durability.NewNode and durability.NewAgent)", ErrInvalidConfig)
	}
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	st := agent.Store()
	return &Subscriber{
		agent:   agent,
		store:   st,
		config:  config,
		ownerID: agent.NodeID(),
		tracer:  tracing.New(config.TracerProvider),
		subs:    map[*subscription]struct{}{},
		logger: logger.With(watermill.LogFields{
			"component": "watermill-jasper/subscriber", "node_id": agent.NodeID(), "schema": st.Schema().Schema,
		}),
	}, nil
}

// NodeID is the owner_id this subscriber writes on the envelopes it holds: its agent's node.
func (s *Subscriber) NodeID() int32 { return s.ownerID }

// SubscribeInitialize checks that the tables exist with the columns this library needs
// (creating what is missing when Config.InitializeSchema is set). The topic needs no
// preparation: every topic lives in the one incoming table. Safe for concurrent use.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	if s.isClosed() {
		return ErrSubscriberClosed
	}
	if err := s.agent.CheckRunning("subscriber"); err != nil {
		return err
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
	db, cfg := s.agent.Driver(), s.agent.Schema()
	if s.config.InitializeSchema {
		if err := schema.Migrate(ctx, db, cfg); err != nil {
			return fmt.Errorf("watermill-jasper: subscriber: %w", err)
		}
	}
	missing, err := schema.Check(ctx, db, cfg)
	for _, d := range missing {
		s.logger.Info("Extension index missing (envelopes are found slower); `watermill-jasper schema migrate` adds it", watermill.LogFields{"index": d.String()})
	}
	if err != nil {
		return fmt.Errorf("watermill-jasper: subscriber: %w (or set subscriber.Config.InitializeSchema)", err)
	}
	s.verified = true
	return nil
}

// Subscribe starts delivering the envelopes of topic on the returned channel. The channel
// is closed when ctx is cancelled or the Subscriber is closed; what the subscription had
// claimed and not delivered or not seen acknowledged is handed back. Messages must be
// acked or nacked; the next one is sent once fewer than Config.MaxInFlight await it. It
// returns an error wrapping durability.ErrAgentNotRunning when the agent does not run.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if topic == "" {
		return nil, errors.New("watermill-jasper: subscriber: empty topic")
	}
	if s.isClosed() {
		return nil, ErrSubscriberClosed
	}
	if err := s.agent.CheckRunning("subscriber"); err != nil {
		return nil, err
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
	// Registered before the first claim: what commits after this is notified to sub, what
	// committed before is found by the first claim.
	sub.unregister = s.agent.OnIncoming(topic, sub.wakeUp)
	go sub.run()
	return sub.out, nil
}

// Wake makes every subscription look for envelopes now, as a notification would, without
// waiting for one or a poll. The agent wakes subscriptions by topic itself
// (Agent.WakeIncoming); Wake is for envelopes made claimable some other way.
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
	s.closeDn = true
	s.logger.Debug("Subscriber closed", nil)
	return errors.Join(errs...)
}
