package jasperamqp

import (
	"crypto/tls"
	"errors"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// DefaultChannelPoolSize is the default Options.ChannelPoolSize: how many Publish calls can wait
// for their broker confirm at the same time.
const DefaultChannelPoolSize = 64

// DefaultExchangeType is the type WithDeclareExchanges declares missing exchanges with: "fanout",
// Jasper's default for RabbitMQ exchanges.
const DefaultExchangeType = "fanout"

// Options configure NewPublisher, NewPublisherConfig and NewSubscriberConfig. Start from
// DefaultOptions (the constructors do) and change fields with the With... Options.
type Options struct {
	// DeclareQueues declares the queue of a rabbitmq://queue/NAME destination (durable, not
	// auto-deleted, no arguments) when it does not exist yet, as Jasper does when it
	// auto-provisions. When false (the default) the publisher only checks that the queue exists
	// and fails with ErrDestinationNotFound if it does not: RabbitMQ would otherwise drop the
	// message and still confirm it. An existing queue is never redeclared, so its arguments
	// (dead-lettering, quorum type, ...) do not matter. The subscriber config follows the same
	// rule for the queue it consumes.
	DeclareQueues bool
	// DeclareExchanges declares the exchange of a rabbitmq://exchange/... destination (durable,
	// type ExchangeType) when it does not exist yet. When false (the default) its existence is
	// checked as for queues.
	DeclareExchanges bool
	// ExchangeType is the type of exchanges created by DeclareExchanges (default "fanout").
	ExchangeType string
	// ChannelPoolSize is watermill-amqp's Publish.ChannelPoolSize: the number of AMQP channels
	// (all in confirm mode) opened up front and shared by Publish calls. Each Publish call takes
	// one channel and waits for the broker's confirm of each of its messages on it, so at most
	// ChannelPoolSize calls are in flight; more wait for a free channel. Default 64. 0 makes
	// watermill-amqp open and close a channel for every Publish call (three extra round trips).
	ChannelPoolSize int
	// Reconnect is the back-off for re-dialling a lost connection (default: 500 ms, x1.5,
	// randomisation 0.5, at most 30 s between attempts, never giving up until Close).
	Reconnect *amqp.ReconnectConfig
	// AMQPConfig, when set, dials with amqp091.DialConfig (heartbeat, vhost, TLS, ...).
	AMQPConfig *amqp091.Config
	// TLSConfig, when set (and AMQPConfig is not), dials with amqp091.DialTLS.
	TLSConfig *tls.Config
	// Marshaler turns messages into AMQP publishings (default: Marshaler, i.e. watermill-amqp's
	// DefaultMarshaler with persistent delivery, plus message-id and content-type properties).
	Marshaler amqp.Marshaler
	// PublishTimeout bounds one Publish call of the publisher from NewPublisher (0, the default:
	// no bound other than the first message's context). When it expires Publish returns an error
	// while the message may still reach the broker: at-least-once, as for any failed publish.
	PublishTimeout time.Duration
	// CloseTimeout is how long Close of the publisher from NewPublisher waits for Publish calls in
	// flight before closing the connection under them (default 30 s).
	CloseTimeout time.Duration
	// PrefetchCount is the subscriber config's Qos prefetch (default 1).
	PrefetchCount int
	// ConfirmChannels is the number of confirm-mode channels the publisher from
	// NewConfirmPublisher publishes on (default DefaultConfirmChannels). Publish calls are spread
	// over them; any number of calls share one channel, each waiting for its own confirms, so a
	// few channels are enough.
	ConfirmChannels int
	// DropUnroutable makes the publisher from NewConfirmPublisher publish without the mandatory
	// flag, so that RabbitMQ drops a message no queue receives (and still confirms it), as
	// watermill-amqp and Jasper do. By default (false) such a message is returned by RabbitMQ and
	// Publish fails with ErrUnroutable.
	DropUnroutable bool
}

// Option changes Options.
type Option func(*Options)

// DefaultOptions returns the defaults described on Options.
func DefaultOptions() Options {
	return Options{
		ExchangeType:    DefaultExchangeType,
		ChannelPoolSize: DefaultChannelPoolSize,
		Reconnect: &amqp.ReconnectConfig{
			BackoffInitialInterval:     500 * time.Millisecond,
			BackoffRandomizationFactor: 0.5,
			BackoffMultiplier:          1.5,
			BackoffMaxInterval:         30 * time.Second,
		},
		Marshaler:       Marshaler{},
		CloseTimeout:    30 * time.Second,
		PrefetchCount:   1,
		ConfirmChannels: DefaultConfirmChannels,
	}
}

// WithDeclareQueues sets Options.DeclareQueues.
func WithDeclareQueues(declare bool) Option { return func(o *Options) { o.DeclareQueues = declare } }

// WithDeclareExchanges sets Options.DeclareExchanges and, when kind is not empty,
// Options.ExchangeType.
func WithDeclareExchanges(declare bool, kind string) Option {
	return func(o *Options) {
		o.DeclareExchanges = declare
		if kind != "" {
			o.ExchangeType = kind
		}
	}
}

// WithChannelPoolSize sets Options.ChannelPoolSize (negative values count as 0).
func WithChannelPoolSize(n int) Option {
	return func(o *Options) { o.ChannelPoolSize = max(n, 0) }
}

// WithReconnect sets Options.Reconnect.
func WithReconnect(r *amqp.ReconnectConfig) Option { return func(o *Options) { o.Reconnect = r } }

// WithAMQPConfig sets Options.AMQPConfig.
func WithAMQPConfig(c *amqp091.Config) Option { return func(o *Options) { o.AMQPConfig = c } }

// WithTLSConfig sets Options.TLSConfig.
func WithTLSConfig(c *tls.Config) Option { return func(o *Options) { o.TLSConfig = c } }

// WithMarshaler sets Options.Marshaler.
func WithMarshaler(m amqp.Marshaler) Option { return func(o *Options) { o.Marshaler = m } }

// WithPublishTimeout sets Options.PublishTimeout.
func WithPublishTimeout(d time.Duration) Option { return func(o *Options) { o.PublishTimeout = d } }

// WithCloseTimeout sets Options.CloseTimeout.
func WithCloseTimeout(d time.Duration) Option { return func(o *Options) { o.CloseTimeout = d } }

// WithPrefetchCount sets Options.PrefetchCount.
func WithPrefetchCount(n int) Option { return func(o *Options) { o.PrefetchCount = n } }

// WithConfirmChannels sets Options.ConfirmChannels (values below 1 mean the default).
func WithConfirmChannels(n int) Option { return func(o *Options) { o.ConfirmChannels = n } }

// WithDropUnroutable sets Options.DropUnroutable.
func WithDropUnroutable(drop bool) Option { return func(o *Options) { o.DropUnroutable = drop } }

func buildOptions(opts []Option) Options {
	o := DefaultOptions()
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.ExchangeType == "" {
		o.ExchangeType = DefaultExchangeType
	}
	if o.Reconnect == nil {
		o.Reconnect = DefaultOptions().Reconnect
	}
	if o.Marshaler == nil {
		o.Marshaler = Marshaler{}
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = DefaultOptions().CloseTimeout
	}
	if o.ConfirmChannels <= 0 {
		o.ConfirmChannels = DefaultConfirmChannels
	}
	return o
}

// Marshaler is the default Options.Marshaler: watermill-amqp's DefaultMarshaler (payload as body,
// metadata as string headers, the message UUID in header "_watermill_message_uuid", persistent
// delivery mode 2), which also sets the AMQP message-id property to the message UUID and the
// content-type property from metadata key "jasper_content_type" when present.
type Marshaler struct {
	amqp.DefaultMarshaler
}

// Marshal implements amqp.Marshaler.
func (m Marshaler) Marshal(msg *message.Message) (amqp091.Publishing, error) {
	p, err := m.DefaultMarshaler.Marshal(msg)
	if err != nil {
		return p, err
	}
	if p.MessageId == "" {
		p.MessageId = msg.UUID
	}
	if ct := msg.Metadata.Get(contentTypeKey); ct != "" && p.ContentType == "" {
		p.ContentType = ct
	}
	return p, nil
}

// contentTypeKey is metadata.ContentType of this module (kept literal to avoid a dependency of a
// transport adapter on the storage packages).
const contentTypeKey = "jasper_content_type"

// invalidTopicExchange is the exchange a config from NewPublisherConfig maps a topic to when the
// topic is not a RabbitMQ destination. Names starting with "amq." cannot be declared by clients,
// so even with a foreign TopologyBuilder the publish fails loudly instead of going to the
// default exchange, where RabbitMQ would drop it and still confirm it.
const invalidTopicExchange = "amq.jasperamqp.not-a-rabbitmq-destination"

var errTopicNotRabbitMQ = errors.New("jasperamqp: the topic is not a RabbitMQ destination (" + AcceptedShapes +
	"); publish through jasperamqp.NewPublisher to get the reason per message")

func exchangeName(topic string) string {
	d, err := ParseDestination(topic)
	if err != nil || !d.IsAMQP() {
		return invalidTopicExchange
	}
	return d.AMQPExchange()
}

func routingKey(topic string) string {
	d, err := ParseDestination(topic)
	if err != nil || !d.IsAMQP() {
		return ""
	}
	return d.RoutingKey
}

// queueName maps a subscriber topic to the queue consumed: a rabbitmq://queue/NAME destination
// gives NAME, anything else is taken as the queue name itself.
func queueName(topic string) string {
	if d, err := ParseDestination(topic); err == nil && d.Kind == Queue {
		return d.Name
	}
	return topic
}

// NewPublisherConfig returns a watermill-amqp v2 config for relaying Jasper envelopes to RabbitMQ:
// the Publish topic is the Jasper destination URI, from which the exchange
// (Config.Exchange.GenerateName) and routing key (Config.Publish.GenerateRoutingKey) are derived
// (see ParseDestination); messages are persistent (delivery mode 2); Publish waits for the
// broker's confirm of every message (Publish.ConfirmDelivery); a pool of Options.ChannelPoolSize
// confirm-mode channels lets that many Publish calls from different goroutines wait for their
// confirms at once; a lost connection is re-dialled with Options.Reconnect's back-off.
//
// Prefer NewPublisher, which adds what this config alone cannot give: watermill-amqp's publisher
// declares only exchanges, never queues, so with this config a message to a missing queue is
// dropped by RabbitMQ (and still confirmed); and a topic that is not a RabbitMQ destination fails
// only with a generic error. Exchanges are checked to exist, or declared when
// Options.DeclareExchanges is set, once per topic.
func NewPublisherConfig(amqpURL string, opts ...Option) amqp.Config {
	return publisherConfig(amqpURL, buildOptions(opts), false)
}

func publisherConfig(amqpURL string, o Options, topologyChecked bool) amqp.Config {
	c := baseConfig(amqpURL, o, topologyChecked)
	c.Exchange = amqp.ExchangeConfig{GenerateName: exchangeName, Type: o.ExchangeType, Durable: true}
	c.QueueBind.GenerateRoutingKey = routingKey
	c.Publish = amqp.PublishConfig{GenerateRoutingKey: routingKey, ChannelPoolSize: o.ChannelPoolSize, ConfirmDelivery: true}
	return c
}

// NewSubscriberConfig returns a watermill-amqp v2 config for consuming a Jasper queue: the
// Subscribe topic is the queue name, or a rabbitmq://queue/NAME destination. The queue must exist
// unless Options.DeclareQueues is set (then it is declared durable when missing); no exchange or
// binding is declared. Acked messages are removed; Nacked ones are requeued. Prefetch is
// Options.PrefetchCount (default 1). The same config can publish to a queue by name.
func NewSubscriberConfig(amqpURL string, opts ...Option) amqp.Config {
	o := buildOptions(opts)
	c := baseConfig(amqpURL, o, false)
	c.Exchange.GenerateName = func(string) string { return "" }
	c.QueueBind.GenerateRoutingKey = func(string) string { return "" }
	c.Publish = amqp.PublishConfig{GenerateRoutingKey: queueName, ConfirmDelivery: true}
	return c
}

// baseConfig is what the publisher and subscriber configs share: the connection, marshaler,
// durable queues named by the destination, prefetch and the topology checks.
func baseConfig(amqpURL string, o Options, topologyChecked bool) amqp.Config {
	return amqp.Config{
		Connection: connectionConfig(amqpURL, o),
		Marshaler:  o.Marshaler,
		Queue:      amqp.QueueConfig{GenerateName: queueName, Durable: true},
		Consume:    amqp.ConsumeConfig{Qos: amqp.QosConfig{PrefetchCount: o.PrefetchCount}},
		TopologyBuilder: topologyBuilder{
			declareQueues:    o.DeclareQueues,
			declareExchanges: o.DeclareExchanges,
			exchangeType:     o.ExchangeType,
			checked:          topologyChecked,
		},
	}
}

func connectionConfig(amqpURL string, o Options) amqp.ConnectionConfig {
	return amqp.ConnectionConfig{
		AmqpURI:    amqpURL,
		TLSConfig:  o.TLSConfig,
		AmqpConfig: o.AMQPConfig,
		Reconnect:  o.Reconnect,
	}
}
