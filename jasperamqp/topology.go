package jasperamqp

import (
	"errors"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// topologyBuilder is the amqp.TopologyBuilder of the configs of this package.
//
// Publisher side, watermill-amqp calls ExchangeDeclare once per topic whose exchange name is not
// empty, on a pooled channel. With checked set (NewPublisher, which checks the topology itself on
// a separate connection) it only rejects non-RabbitMQ topics; otherwise it declares the exchange
// (DeclareExchanges) or checks that it exists.
//
// Subscriber side, BuildTopology declares the queue (DeclareQueues) or checks that it exists.
type topologyBuilder struct {
	declareQueues    bool
	declareExchanges bool
	exchangeType     string
	checked          bool
}

// ExchangeDeclare implements amqp.TopologyBuilder.
func (b topologyBuilder) ExchangeDeclare(ch *amqp091.Channel, name string, _ amqp.Config) error {
	if name == invalidTopicExchange {
		return errTopicNotRabbitMQ
	}
	if b.checked {
		return nil
	}
	if b.declareExchanges {
		return ch.ExchangeDeclare(name, b.exchangeType, true, false, false, false, nil)
	}
	if err := ch.ExchangeDeclarePassive(name, b.exchangeType, true, false, false, false, nil); err != nil {
		return notFound(err, "exchange", name, "WithDeclareExchanges(true, kind)")
	}
	return nil
}

// BuildTopology implements amqp.TopologyBuilder.
func (b topologyBuilder) BuildTopology(ch *amqp091.Channel, queue, exchange string, cfg amqp.Config, logger watermill.LoggerAdapter) error {
	if exchange != "" {
		return fmt.Errorf("jasperamqp: the subscriber config consumes a queue by name and binds no exchange (got exchange %q)", exchange)
	}
	if b.declareQueues {
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			return fmt.Errorf("jasperamqp: declare durable queue %q: %w", queue, err)
		}
		return nil
	}
	if _, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil); err != nil {
		return notFound(err, "queue", queue, "WithDeclareQueues(true)")
	}
	return nil
}

// notFound turns a 404 from a passive declare into an ErrDestinationNotFound error.
func notFound(err error, what, name, option string) error {
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
		return fmt.Errorf("jasperamqp: %s %q does not exist on the broker; create it or use jasperamqp.%s: %w (%w)",
			what, name, option, ErrDestinationNotFound, err)
	}
	return fmt.Errorf("jasperamqp: check %s %q: %w", what, name, err)
}

// topologyChecker makes sure the queue or exchange of a destination exists before the first
// message goes to it, using a connection of its own (opened on demand, re-dialled after a
// failure) so that a failed passive declare, which closes its channel, never touches the
// publisher's pooled channels.
type topologyChecker struct {
	url    string
	opts   Options
	logger watermill.LoggerAdapter

	ready sync.Map // target key -> struct{}: checked or declared

	mu     sync.Mutex // serialises checks and guards conn
	conn   *amqp091.Connection
	closed bool
}

// target is what has to exist for d: the queue of a Queue destination (or of a default-exchange
// destination, whose routing key names a queue), else the exchange.
func target(d Destination) (kind Kind, name string) {
	if d.Kind == Exchange && d.Name != "" {
		return Exchange, d.Name
	}
	return Queue, d.RoutingKey
}

func targetKey(d Destination) string {
	kind, name := target(d)
	return kind.String() + "\x00" + name
}

// forget makes the next ensure of d check the broker again (after RabbitMQ returned a message
// to it as unroutable: its queue was deleted after the check).
func (t *topologyChecker) forget(d Destination) { t.ready.Delete(targetKey(d)) }

func (t *topologyChecker) ensure(d Destination) error {
	kind, name := target(d)
	key := targetKey(d)
	if _, ok := t.ready.Load(key); ok {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.ready.Load(key); ok {
		return nil
	}
	if t.closed {
		return ErrClosed
	}
	if err := t.check(kind, name); err != nil {
		return err
	}
	t.ready.Store(key, struct{}{})
	return nil
}

func (t *topologyChecker) check(kind Kind, name string) error {
	what, option, declare := "queue", "WithDeclareQueues(true)", t.opts.DeclareQueues
	if kind == Exchange {
		what, option, declare = "exchange", "WithDeclareExchanges(true, kind)", t.opts.DeclareExchanges
	}
	passive := func(ch *amqp091.Channel) error {
		if kind == Exchange {
			return ch.ExchangeDeclarePassive(name, t.opts.ExchangeType, true, false, false, false, nil)
		}
		_, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		return err
	}
	err := t.onChannel(passive)
	if err == nil {
		return nil
	}
	var ae *amqp091.Error
	switch {
	case errors.As(err, &ae) && ae.Code == amqp091.ResourceLocked:
		return nil // an exclusive queue of another connection: it exists and can be published to
	case !(errors.As(err, &ae) && ae.Code == amqp091.NotFound) || !declare:
		return notFound(err, what, name, option)
	}
	err = t.onChannel(func(ch *amqp091.Channel) error {
		if kind == Exchange {
			return ch.ExchangeDeclare(name, t.opts.ExchangeType, true, false, false, false, nil)
		}
		_, err := ch.QueueDeclare(name, true, false, false, false, nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("jasperamqp: declare durable %s %q: %w", what, name, err)
	}
	t.logger.Info("jasperamqp: declared durable "+what, watermill.LogFields{what: name})
	return nil
}

// onChannel runs f on a fresh channel of the checker's connection (dialled when missing or
// closed) and closes the channel. Caller holds t.mu.
func (t *topologyChecker) onChannel(f func(*amqp091.Channel) error) error {
	if t.conn == nil || t.conn.IsClosed() {
		conn, err := dial(t.url, t.opts)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrConnectionLost, err)
		}
		t.conn = conn
	}
	ch, err := t.conn.Channel()
	if err != nil {
		_ = t.conn.Close()
		t.conn = nil
		return fmt.Errorf("jasperamqp: open channel for topology check: %w: %w", ErrConnectionLost, err)
	}
	defer ch.Close() //nolint:errcheck // closed by the broker already after a failed declare
	return f(ch)
}

func (t *topologyChecker) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	if t.conn == nil {
		return nil
	}
	err := t.conn.Close()
	t.conn = nil
	if errors.Is(err, amqp091.ErrClosed) {
		return nil
	}
	return err
}

// dial connects the way watermill-amqp's ConnectionWrapper does, with the password scrubbed from
// any error.
func dial(amqpURL string, o Options) (*amqp091.Connection, error) {
	var conn *amqp091.Connection
	var err error
	switch {
	case o.AMQPConfig != nil:
		cfg := *o.AMQPConfig
		if cfg.TLSClientConfig == nil {
			cfg.TLSClientConfig = o.TLSConfig
		}
		conn, err = amqp091.DialConfig(amqpURL, cfg)
	case o.TLSConfig != nil:
		conn, err = amqp091.DialTLS(amqpURL, o.TLSConfig)
	default:
		conn, err = amqp091.Dial(amqpURL)
	}
	if err != nil {
		return nil, fmt.Errorf("jasperamqp: connect to %s: %w", RedactURL(amqpURL), scrubError(err, amqpURL))
	}
	return conn, nil
}
