package jasperamqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/backoff"
)

// DefaultConfirmChannels is the default Options.ConfirmChannels: how many confirm-mode channels
// the publisher from NewConfirmPublisher publishes on.
const DefaultConfirmChannels = 2

// ErrConnectionLost is matched (errors.Is) by the error of a Publish call of the publisher from
// NewConfirmPublisher that found no connection to RabbitMQ, or whose connection or channel was
// lost before the broker confirmed its message (which may or may not have arrived). It is not
// permanent: the publisher reconnects by itself; retry. It is temporary in the fault vocabulary
// (errors.Is(err, fault.ErrTemporary)), so the forwarder does not count such a failure as an
// attempt of the envelope.
var ErrConnectionLost error = &temporaryError{"connection to RabbitMQ lost"}

type temporaryError struct{ msg string }

func (e *temporaryError) Error() string { return e.msg }

// Is makes the error temporary in the fault vocabulary: the failure says nothing about the
// message itself.
func (e *temporaryError) Is(target error) bool { return target == fault.ErrTemporary }

// ErrNacked is matched by the error of a Publish call whose message the broker negatively
// acknowledged (basic.nack: RabbitMQ could not take responsibility for it, e.g. an internal
// error or a queue with overflow=reject-publish that is full). Retrying may succeed.
var ErrNacked = errors.New("RabbitMQ nacked the message")

// ErrUnroutable is matched by the error of a Publish call whose message RabbitMQ returned as
// unroutable (basic.return 312 NO_ROUTE: no queue is bound to the exchange for the routing key,
// or the queue of a rabbitmq://queue/NAME destination does not exist). Without the mandatory flag
// RabbitMQ would drop such a message silently and still confirm it. When the destination is a
// queue the error also matches ErrDestinationNotFound. Retrying succeeds once the topology exists.
var ErrUnroutable = errors.New("RabbitMQ could not route the message")

// returnSweep is how often returned messages nobody waits for are collected, so that the
// broker connection's reader never blocks on a full return buffer.
const returnSweep = time.Second

// returnBuffer is the capacity of each channel's basic.return buffer.
const returnBuffer = 1024

// closeConnTimeout bounds the connection.close handshake when the publisher closes.
const closeConnTimeout = 5 * time.Second

// NewConfirmPublisher connects to the broker at amqpURL and returns a message.Publisher for
// relaying Jasper envelopes, built directly on amqp091-go with pipelined publisher confirms.
// Topics, validation, topology checks and marshaling are those of NewPublisher: the topic is the
// envelope's destination URI (see ParseDestination), a destination that can never be published
// fails with a permanent *DestinationError before touching the broker, the queue or exchange is
// checked (or declared, Options.DeclareQueues / DeclareExchanges) before its first message, and
// messages are marshaled by Options.Marshaler (persistent, metadata as headers, message-id =
// UUID).
//
// What differs is how messages are confirmed. The publisher holds one connection with
// Options.ConfirmChannels channels in confirm mode (default 2). A Publish call publishes its
// messages on one of them and then waits for their own confirmations, so concurrent calls do not
// wait for each other: their confirms are pipelined (RabbitMQ acknowledges many at once), and
// throughput grows with the number of concurrent callers without one channel per caller. Within
// one call the messages keep their order (same channel).
//
// Publish returns nil only when the broker confirmed (basic.ack) every message. It fails with:
//   - ErrUnroutable when RabbitMQ returned the message (published with the mandatory flag, so a
//     message no queue receives is an error instead of a silent drop; Options.DropUnroutable
//     restores RabbitMQ's default). For a queue destination it also matches
//     ErrDestinationNotFound, and the queue is checked again (or declared) before the next message;
//   - ErrNacked when the broker nacked it;
//   - ErrConnectionLost when there is no connection, or the connection or channel was lost before
//     the confirm arrived; the publisher re-dials in the background with Options.Reconnect's
//     back-off and reopens a channel closed by a channel-level error (e.g. an exchange deleted
//     after its check) without dropping the other channels;
//   - the context error when the first message's context is done, or Options.PublishTimeout
//     expires, before the confirm (the message may still arrive);
//   - ErrClosed after Close.
//
// Every failure but *DestinationError is worth retrying; at-least-once as for any publisher.
// Publish is safe for concurrent use. Close waits up to Options.CloseTimeout for the calls in
// flight, then closes the connection; it is idempotent. The AMQP URL's password is never logged
// nor returned in an error.
//
// Limit: amqp091-go does not honour contexts while writing a message; when RabbitMQ blocks
// publishers (connection.blocked, memory or disk alarm) a Publish call may block in the write
// until the alarm clears or Close closes the connection.
func NewConfirmPublisher(amqpURL string, logger watermill.LoggerAdapter, opts ...Option) (message.Publisher, error) {
	o, logger, err := prepare(amqpURL, logger, opts)
	if err != nil {
		return nil, err
	}
	p := &confirmPublisher{
		url:       amqpURL,
		opts:      o,
		logger:    logger,
		topo:      &topologyChecker{url: amqpURL, opts: o, logger: logger},
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
		closeDone: make(chan struct{}),
	}
	st, err := p.connect()
	if err != nil {
		return nil, fmt.Errorf("jasperamqp: create publisher for %s: %w", RedactURL(amqpURL), err)
	}
	p.state.Store(st)
	go p.supervise(st)
	logger.Info("jasperamqp: confirm publisher connected", watermill.LogFields{
		"confirm_channels":  o.ConfirmChannels,
		"declare_queues":    o.DeclareQueues,
		"declare_exchanges": o.DeclareExchanges,
		"mandatory":         !o.DropUnroutable,
	})
	return p, nil
}

// confirmPublisher is the message.Publisher returned by NewConfirmPublisher.
type confirmPublisher struct {
	url    string
	opts   Options
	logger watermill.LoggerAdapter
	topo   *topologyChecker

	state atomic.Pointer[connState] // nil while disconnected
	next  atomic.Uint64             // round-robin over the channels

	dests  sync.Map // topic -> Destination, parsed and valid
	nDests atomic.Int64

	mu       sync.Mutex // guards closed, lastErr and inflight.Add
	closed   bool
	lastErr  error // why the connection was lost, for ErrConnectionLost errors
	inflight sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
	closing   chan struct{} // closed by Close once the calls in flight are done (or timed out)
	done      chan struct{} // closed when the supervisor has closed the connection
	closeDone chan struct{} // closed when Close has finished (closeErr is set)
}

// connState is one connection and its channels. It is immutable: replacing a channel stores a
// new connState.
type connState struct {
	conn    *amqp091.Connection
	chans   []*confirmChannel
	closed  chan *amqp091.Error   // the connection's NotifyClose
	blocked chan amqp091.Blocking // the connection's NotifyBlocked
	dead    chan *confirmChannel  // channels closed under us (buffered for all of them)
}

// confirmChannel is one confirm-mode channel with its basic.return bookkeeping.
type confirmChannel struct {
	idx    int
	ch     *amqp091.Channel
	closes chan *amqp091.Error
	dead   chan struct{} // closed once the channel is closed
	// deadErr is why the channel closed; written before dead is closed.
	deadErr error

	mu       sync.Mutex
	returns  chan amqp091.Return // nil once amqp091 closed it
	pending  map[returnKey]int   // messages waiting for their confirm, by key
	returned map[returnKey]returned
}

// returnKey identifies a published message in a basic.return, which carries no delivery tag.
// Two calls publishing the same message id to the same exchange and routing key at the same time
// share a key; a return is then attributed to one of them.
type returnKey struct{ exchange, routingKey, messageID string }

type returned struct {
	n    int
	code uint16
	text string
}

// drainLocked moves the returns buffered so far into c.returned. Returns of messages nobody
// waits for any more are dropped. Caller holds c.mu.
func (c *confirmChannel) drainLocked() {
	for c.returns != nil {
		select {
		case r, ok := <-c.returns:
			if !ok {
				c.returns = nil
				return
			}
			k := returnKey{r.Exchange, r.RoutingKey, r.MessageId}
			if c.pending[k] == 0 {
				continue
			}
			rt := c.returned[k]
			rt.n++
			rt.code, rt.text = r.ReplyCode, r.ReplyText
			c.returned[k] = rt
		default:
			return
		}
	}
}

// expect records that a message with key k is about to be published.
func (c *confirmChannel) expect(k returnKey) {
	c.mu.Lock()
	c.pending[k]++
	c.mu.Unlock()
}

// settle is called once the broker acked the message with key k: the broker sends basic.return
// before basic.ack on the same channel, and amqp091 hands the return to our buffer before it
// processes the ack, so a return for this message, if any, is buffered or recorded by now.
func (c *confirmChannel) settle(k returnKey) (returned, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drainLocked()
	rt, ok := c.returned[k]
	if ok && rt.n > 0 {
		rt.n--
		if rt.n == 0 {
			delete(c.returned, k)
		} else {
			c.returned[k] = rt
		}
	}
	c.doneLocked(k)
	return rt, ok
}

// forget drops the expectation of key k (the call gave up waiting).
func (c *confirmChannel) forget(k returnKey) {
	c.mu.Lock()
	c.drainLocked()
	c.doneLocked(k)
	c.mu.Unlock()
}

func (c *confirmChannel) doneLocked(k returnKey) {
	if n := c.pending[k] - 1; n > 0 {
		c.pending[k] = n
		return
	}
	delete(c.pending, k)
	delete(c.returned, k)
}

func (c *confirmChannel) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

// watch collects returns periodically and reports the channel once it is closed.
func (c *confirmChannel) watch(report chan<- *confirmChannel) {
	t := time.NewTicker(returnSweep)
	defer t.Stop()
	for {
		select {
		case err, ok := <-c.closes:
			if ok && err != nil {
				c.deadErr = err
			} else {
				c.deadErr = amqp091.ErrClosed
			}
			close(c.dead)
			c.mu.Lock()
			c.drainLocked()
			c.mu.Unlock()
			report <- c // buffered for every channel of the connection
			return
		case <-t.C:
			c.mu.Lock()
			c.drainLocked()
			c.mu.Unlock()
		}
	}
}

// connect dials and opens the channels.
func (p *confirmPublisher) connect() (*connState, error) {
	conn, err := dial(p.url, p.opts)
	if err != nil {
		return nil, err
	}
	st := &connState{
		conn:    conn,
		chans:   make([]*confirmChannel, p.opts.ConfirmChannels),
		closed:  conn.NotifyClose(make(chan *amqp091.Error, 1)),
		blocked: conn.NotifyBlocked(make(chan amqp091.Blocking, 4)),
		dead:    make(chan *confirmChannel, p.opts.ConfirmChannels),
	}
	for i := range st.chans {
		c, err := p.openChannel(conn, i, st.dead)
		if err != nil {
			_ = conn.Close()
			return nil, err
		}
		st.chans[i] = c
	}
	return st, nil
}

// openChannel opens channel idx of conn in confirm mode and starts its watcher.
func (p *confirmPublisher) openChannel(conn *amqp091.Connection, idx int, report chan<- *confirmChannel) (*confirmChannel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("jasperamqp: open channel: %w", scrubError(err, p.url))
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("jasperamqp: put channel in confirm mode: %w", scrubError(err, p.url))
	}
	c := &confirmChannel{
		idx:      idx,
		ch:       ch,
		dead:     make(chan struct{}),
		pending:  map[returnKey]int{},
		returned: map[returnKey]returned{},
	}
	c.returns = ch.NotifyReturn(make(chan amqp091.Return, returnBuffer))
	c.closes = ch.NotifyClose(make(chan *amqp091.Error, 1))
	go c.watch(report)
	return c, nil
}

// supervise replaces closed channels and re-dials a lost connection until Close.
func (p *confirmPublisher) supervise(st *connState) {
	defer close(p.done)
	for {
		st = p.watchConn(st)
		if st == nil {
			return // closing; the connection is closed
		}
		// The connection is lost.
		p.state.Store(nil)
		_ = st.conn.Close()
		if st = p.reconnect(); st == nil {
			return
		}
	}
}

// watchConn serves st until its connection is lost (returns st) or the publisher closes (closes
// the connection and returns nil).
func (p *confirmPublisher) watchConn(st *connState) *connState {
	blocked := st.blocked
	for {
		select {
		case <-p.closing:
			if err := st.conn.CloseDeadline(time.Now().Add(closeConnTimeout)); err != nil && !errors.Is(err, amqp091.ErrClosed) {
				p.logger.Debug("jasperamqp: close connection", watermill.LogFields{"error": scrubError(err, p.url).Error()})
			}
			p.state.Store(nil)
			return nil
		case err := <-st.closed:
			p.lost(connLostError(err, "connection closed"))
			return st
		case b, ok := <-blocked:
			switch {
			case !ok:
				blocked = nil // closed with the connection; st.closed reports it
			case b.Active:
				p.logger.Error("jasperamqp: RabbitMQ blocks publishing on this connection (resource alarm); Publish calls wait", nil,
					watermill.LogFields{"reason": b.Reason})
			default:
				p.logger.Info("jasperamqp: RabbitMQ unblocked publishing", nil)
			}
		case c := <-st.dead:
			if st.conn.IsClosed() {
				continue // st.closed reports it
			}
			p.logger.Error("jasperamqp: channel closed by the broker; reopening it", c.deadErr,
				watermill.LogFields{"channel": c.idx})
			nc, err := p.openChannel(st.conn, c.idx, st.dead)
			if err != nil {
				p.lost(fmt.Errorf("reopen channel %d: %w", c.idx, err))
				return st
			}
			next := *st
			next.chans = append([]*confirmChannel(nil), st.chans...)
			next.chans[c.idx] = nc
			st = &next
			p.state.Store(st)
		}
	}
}

func connLostError(err *amqp091.Error, fallback string) error {
	if err == nil {
		return errors.New(fallback)
	}
	return err
}

// lost records why the connection went away.
func (p *confirmPublisher) lost(err error) {
	err = scrubError(err, p.url)
	p.mu.Lock()
	p.lastErr = err
	p.mu.Unlock()
	p.logger.Error("jasperamqp: connection to RabbitMQ lost; Publish fails with ErrConnectionLost until it is back", err, nil)
}

// reconnect dials with back-off until it succeeds (stores and returns the new state) or the
// publisher closes (returns nil).
func (p *confirmPublisher) reconnect() *connState {
	for attempt := 1; ; attempt++ {
		wait := reconnectPolicy(p.opts.Reconnect).Jittered(attempt)
		select {
		case <-p.closing:
			return nil
		case <-time.After(wait):
		}
		st, err := p.connect()
		if err == nil {
			select {
			case <-p.closing:
				_ = st.conn.CloseDeadline(time.Now().Add(closeConnTimeout))
				return nil
			default:
			}
			p.state.Store(st)
			p.logger.Info("jasperamqp: reconnected to RabbitMQ", watermill.LogFields{"attempts": attempt})
			return st
		}
		p.mu.Lock()
		p.lastErr = err
		p.mu.Unlock()
		p.logger.Error("jasperamqp: reconnect to RabbitMQ failed; retrying", err, watermill.LogFields{
			"attempt": attempt, "next_in": reconnectPolicy(p.opts.Reconnect).Delay(attempt + 1).String(),
		})
	}
}

// reconnectPolicy is Options.Reconnect (watermill-amqp's settings) as the module's one
// back-off shape: first wait BackoffInitialInterval (default 500 ms), times
// BackoffMultiplier (default 1.5) after each failure, up to BackoffMaxInterval (default 30
// s), plus up to BackoffRandomizationFactor of it at random.
func reconnectPolicy(rc *amqp.ReconnectConfig) backoff.Policy {
	p := backoff.Policy{Initial: 500 * time.Millisecond, Multiplier: 1.5, Max: 30 * time.Second, Jitter: -1}
	if rc == nil {
		return p
	}
	if rc.BackoffInitialInterval > 0 {
		p.Initial = rc.BackoffInitialInterval
	}
	if rc.BackoffMultiplier >= 1 {
		p.Multiplier = rc.BackoffMultiplier
	}
	if rc.BackoffMaxInterval > 0 {
		p.Max = rc.BackoffMaxInterval
	}
	if rc.BackoffRandomizationFactor > 0 {
		p.Jitter = min(rc.BackoffRandomizationFactor, 1)
	}
	return p
}

// channel picks an open channel, round-robin.
func (p *confirmPublisher) channel() (*confirmChannel, error) {
	if st := p.state.Load(); st != nil {
		n := uint64(len(st.chans))
		i := p.next.Add(1)
		for k := range n {
			if c := st.chans[(i+k)%n]; !c.isDead() {
				return c, nil
			}
		}
	}
	p.mu.Lock()
	why := p.lastErr
	p.mu.Unlock()
	if why == nil {
		why = errors.New("reconnecting")
	}
	return nil, fmt.Errorf("%w (%v); reconnecting in the background", ErrConnectionLost, why)
}

// maxCachedDestinations bounds the parsed-destination cache of a confirm publisher.
const maxCachedDestinations = 4096

// destination parses topic, caching the RabbitMQ destinations (a relay publishes to a few
// destinations many times).
func (p *confirmPublisher) destination(topic string, messages []*message.Message) (Destination, error) {
	if d, ok := p.dests.Load(topic); ok {
		for i, m := range messages {
			if m == nil {
				return Destination{}, fmt.Errorf("jasperamqp: publish to %s: message %d of %d is nil", topic, i+1, len(messages))
			}
		}
		return d.(Destination), nil
	}
	d, err := checkPublish(topic, messages)
	if err == nil && p.nDests.Load() < maxCachedDestinations {
		if _, loaded := p.dests.LoadOrStore(topic, d); !loaded {
			p.nDests.Add(1)
		}
	}
	return d, err
}

// Publish implements message.Publisher; see NewConfirmPublisher.
func (p *confirmPublisher) Publish(topic string, messages ...*message.Message) error {
	d, err := p.destination(topic, messages)
	if err != nil || len(messages) == 0 {
		return err
	}
	if err := enter(&p.mu, &p.closed, &p.inflight); err != nil {
		return err
	}
	defer p.inflight.Done()

	ctx := messages[0].Context()
	if p.opts.PublishTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.opts.PublishTimeout)
		defer cancel()
	}
	if err := context.Cause(ctx); err != nil {
		return fmt.Errorf("jasperamqp: publish to %s: %w", topic, err)
	}
	if err := p.publish(ctx, d, messages); err != nil {
		return fmt.Errorf("jasperamqp: publish to %s: %w", topic, err)
	}
	return nil
}

// checkPublish validates the arguments of Publish and parses the destination.
func checkPublish(topic string, messages []*message.Message) (Destination, error) {
	for i, m := range messages {
		if m == nil {
			return Destination{}, fmt.Errorf("jasperamqp: publish to %s: message %d of %d is nil", topic, i+1, len(messages))
		}
	}
	d, err := ParseDestination(topic)
	if err != nil {
		return Destination{}, err
	}
	if !d.IsAMQP() {
		return Destination{}, &DestinationError{URI: topic, Reason: notAMQPReason(d), Err: ErrNotRabbitMQ}
	}
	return d, nil
}

func (p *confirmPublisher) publish(ctx context.Context, d Destination, messages []*message.Message) error {
	if err := p.topo.ensure(d); err != nil {
		return err
	}
	pubs := make([]amqp091.Publishing, len(messages))
	for i, m := range messages {
		pub, err := p.opts.Marshaler.Marshal(m)
		if err != nil {
			return fmt.Errorf("marshal message %s: %w", m.UUID, err)
		}
		if err := pub.Headers.Validate(); err != nil {
			return fmt.Errorf("marshal message %s: %w", m.UUID, err)
		}
		pubs[i] = pub
	}
	c, err := p.channel()
	if err != nil {
		return err
	}
	exchange, key := d.AMQPExchange(), d.RoutingKey
	mandatory := !p.opts.DropUnroutable
	type sent struct {
		dc *amqp091.DeferredConfirmation
		k  returnKey
	}
	inFlight := make([]sent, 0, len(pubs))
	giveUp := func(from int) {
		if mandatory {
			for _, s := range inFlight[from:] {
				c.forget(s.k)
			}
		}
	}
	for i := range pubs {
		k := returnKey{exchange, key, pubs[i].MessageId}
		if mandatory {
			c.expect(k)
		}
		dc, err := c.ch.PublishWithDeferredConfirm(exchange, key, mandatory, false, pubs[i])
		if err == nil && dc == nil {
			err = errors.New("the channel is not in confirm mode")
		}
		if err != nil {
			if mandatory {
				c.forget(k)
			}
			giveUp(0)
			// The headers were validated: what fails now is the channel or the socket (amqp091
			// marks the connection closed asynchronously after a write error).
			return p.lostError(d, c, err, i, len(pubs), false)
		}
		inFlight = append(inFlight, sent{dc, k})
	}
	for i, s := range inFlight {
		select {
		case <-s.dc.Done():
		case <-ctx.Done():
			giveUp(i)
			return fmt.Errorf("stopped waiting for the broker's confirm, the message may still arrive: %w", context.Cause(ctx))
		}
		if !s.dc.Acked() {
			if mandatory {
				c.forget(s.k)
			}
			giveUp(i + 1)
			if c.ch.IsClosed() {
				return p.lostError(d, c, nil, i, len(pubs), true)
			}
			return fmt.Errorf("message %s: %w (exchange %q, routing key %q)", messages[i].UUID, ErrNacked, exchange, key)
		}
		if !mandatory {
			continue
		}
		if rt, ok := c.settle(s.k); ok {
			giveUp(i + 1)
			return p.unroutable(d, messages[i].UUID, rt)
		}
	}
	return nil
}

// lostError is the error of a call whose channel closed under it. When the broker closed the
// channel because the exchange does not exist (deleted after its check), d is checked again
// before its next message.
func (p *confirmPublisher) lostError(d Destination, c *confirmChannel, err error, i, n int, sent bool) error {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	why := err
	if why == nil {
		select {
		case <-c.dead:
			why = c.deadErr
		case <-time.After(100 * time.Millisecond): // the watcher has not seen the close yet
			why = amqp091.ErrClosed
		}
	}
	var ae *amqp091.Error
	if errors.As(why, &ae) && ae.Code == amqp091.NotFound {
		p.topo.forget(d)
	}
	what := "before the broker confirmed it; it may or may not have arrived"
	if !sent {
		what = "while sending it"
	}
	if closed {
		return fmt.Errorf("message %d of %d: %w: connection closed %s", i+1, n, ErrClosed, what)
	}
	return fmt.Errorf("message %d of %d: %w %s (%v)", i+1, n, ErrConnectionLost, what, scrubError(why, p.url))
}

// unroutable is the error of a returned message; a queue destination is checked again before
// its next message.
func (p *confirmPublisher) unroutable(d Destination, uuid string, rt returned) error {
	p.topo.forget(d)
	if kind, name := target(d); kind == Queue {
		return fmt.Errorf("message %s: %w: queue %q does not exist (RabbitMQ returned it: %d %s); create it or use jasperamqp.WithDeclareQueues(true) (%w)",
			uuid, ErrUnroutable, name, rt.code, rt.text, ErrDestinationNotFound)
	}
	return fmt.Errorf("message %s: %w: no queue is bound to exchange %q for routing key %q (RabbitMQ returned it: %d %s); bind one, or publish with jasperamqp.WithDropUnroutable(true) to let RabbitMQ drop such messages",
		uuid, ErrUnroutable, d.Name, d.RoutingKey, rt.code, rt.text)
}

// Close waits up to Options.CloseTimeout for the Publish calls in flight, then closes the
// connection. Publish returns ErrClosed afterwards. Close is idempotent; concurrent calls all
// return once the connection is closed.
func (p *confirmPublisher) Close() error {
	p.closeOnce.Do(func() {
		drain(&p.mu, &p.closed, &p.inflight, p.opts.CloseTimeout, p.logger)
		close(p.closing)
		<-p.done
		p.closeErr = p.topo.close()
		close(p.closeDone)
	})
	<-p.closeDone
	return p.closeErr
}
