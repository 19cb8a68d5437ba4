package forwarder

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/watermill-jasper/watermill-jasper/internal/defaults"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Defaults of Config.
const (
	DefaultBatchSize          = 500
	DefaultWorkers            = 2
	DefaultPublishConcurrency = 256
	DefaultPollInterval       = time.Second
	DefaultActivePollInterval = 2 * time.Millisecond
	DefaultMaxAttempts        = 10
	DefaultCircuitBreakAfter  = 3
	DefaultCircuitPause       = time.Second
	DefaultMaxCircuitPause    = 30 * time.Second
)

// ErrInvalidConfig is wrapped by every error of Config.Validate.
var ErrInvalidConfig = errors.New("watermill-jasper: invalid forwarder config")

// Config configures a Forwarder. Only Publisher is required; the schema, the node whose id
// marks the envelopes being relayed, and the notifications come from the durability agent the
// forwarder is built on.
type Config struct {
	// Publisher receives the envelopes (required): any Watermill publisher, e.g.
	// watermill-amqp's with Publish.ConfirmDelivery set, so that a row is deleted only once
	// the broker has confirmed the message. Publish is called with one message at a time,
	// from up to PublishConcurrency goroutines at once; it must be safe for concurrent use
	// (Watermill's contract). The forwarder never closes it.
	Publisher message.Publisher

	// Topic maps an envelope's destination (a Jasper URI such as rabbitmq://queue/orders, or
	// the topic a Go publisher wrote) to the topic passed to Publisher.Publish. Default: the
	// destination itself. An error is permanent: the envelope goes to the dead letters.
	Topic func(destination string) (string, error)

	// BatchSize is how many envelopes one claim takes. Default 500.
	BatchSize int
	// Workers is how many claim loops run concurrently (while one publishes a batch, another
	// claims the next), and how many batches of the replication slot are relayed at once with
	// LogicalReplication. Default 2.
	Workers int
	// PublishConcurrency is how many Publish calls run at once, across all workers. Publishers
	// that wait for a broker confirmation inside Publish (watermill-amqp with
	// ConfirmDelivery) get their throughput from concurrent calls. With watermill-amqp, also
	// set Publish.ChannelPoolSize to about this value: without a pool it opens and closes an
	// AMQP channel for every Publish, which costs more than the publish itself. Default 256.
	PublishConcurrency int
	// PollInterval is how often the outbox is queried when it has been empty for a whole
	// PollInterval and no wake-up arrives from the agent (a notification, envelopes handed
	// back): an idle forwarder queries at most once per interval. It is the fallback when
	// notifications are off (durability.Config.DisableNotify) or missing (SQL Server).
	// Default 1s.
	PollInterval time.Duration
	// ActivePollInterval is how often the outbox is queried while it is busy: from a claim
	// that found envelopes until PollInterval has passed without finding any. Publishers then
	// need no per-transaction NOTIFY (which serialises commits) for low latency. Default 2ms.
	ActivePollInterval time.Duration

	// MaxAttempts is how many failed publishes an envelope gets before it is moved to
	// jasper_dead_letters with the last error. Default 10.
	MaxAttempts int

	// CircuitBreakAfter consecutive failed publishes to one destination pause that
	// destination: its envelopes are not claimed for CircuitPause, after which one envelope is
	// tried alone; a success resumes the destination, a failure pauses it again for twice as
	// long, up to MaxCircuitPause. Other destinations are not delayed. A permanent failure
	// (fault.ErrPermanent: dead-lettered at once) is the broker's answer, not a sign that the
	// destination is down: it does not count, so a destination refused forever is
	// dead-lettered at full speed. Default 3.
	CircuitBreakAfter int
	// CircuitPause is the first pause of a destination. Default 1s.
	CircuitPause time.Duration
	// MaxCircuitPause caps the doubling pauses. Default 30s.
	MaxCircuitPause time.Duration

	// Destinations restricts the forwarder to these destinations; an entry ending in * stands
	// for every destination that starts with the text before it (e.g. "rabbitmq://*"). Empty
	// relays all, except with schema compatibility Jasper2, where .NET Jasper nodes share the
	// outbox and a forwarder must name what it can deliver (a .NET node's tcp:// or local://
	// envelopes are not its to take).
	Destinations []string

	// LogicalReplication, when set, follows the outbox through a PostgreSQL logical
	// replication slot: no statement while idle, envelopes in commit order, the polling path
	// for what the slot does not bring (see LogicalReplication). PostgreSQL 14 or later with
	// wal_level = logical.
	LogicalReplication *LogicalReplication

	// TracerProvider, when set, traces every relayed envelope with an OpenTelemetry span
	// "send <topic>" (kind producer, messaging semantic conventions), a child of the trace
	// context the envelope carries (its metadata traceparent, from parent_id or headers), and
	// writes that span's W3C trace context into the outgoing message's metadata (traceparent,
	// tracestate), so the broker transport carries it to the consumers. The message's
	// context holds the span while Publisher.Publish runs. Nil: no spans, no cost. The runtime
	// sets its own (jasper.Config.TracerProvider) when this is nil.
	TracerProvider trace.TracerProvider
}

func (c *Config) setDefaults() {
	if c.Topic == nil {
		c.Topic = identityTopic
	}
	defaults.Set(&c.BatchSize, DefaultBatchSize)
	defaults.Set(&c.Workers, DefaultWorkers)
	defaults.Set(&c.PublishConcurrency, DefaultPublishConcurrency)
	defaults.Set(&c.PollInterval, DefaultPollInterval)
	defaults.Set(&c.ActivePollInterval, min(DefaultActivePollInterval, c.PollInterval))
	defaults.Set(&c.MaxAttempts, DefaultMaxAttempts)
	defaults.Set(&c.CircuitBreakAfter, DefaultCircuitBreakAfter)
	defaults.Set(&c.CircuitPause, DefaultCircuitPause)
	defaults.Set(&c.MaxCircuitPause, max(DefaultMaxCircuitPause, c.CircuitPause))
}

func identityTopic(destination string) (string, error) { return destination, nil }

// maxBatchSize keeps a claim's id list well inside one statement's limits.
const maxBatchSize = 10000

// Validate checks the config after defaults are applied and returns an error naming the
// field to fix.
func (c Config) Validate() error {
	c.setDefaults()
	if c.Publisher == nil {
		return fmt.Errorf("%w: Publisher is required (the Watermill publisher envelopes are relayed to)", ErrInvalidConfig)
	}
	type positive struct {
		name  string
		value int64
	}
	for _, p := range []positive{
		{"BatchSize", int64(c.BatchSize)},
		{"Workers", int64(c.Workers)},
		{"PublishConcurrency", int64(c.PublishConcurrency)},
		{"PollInterval", int64(c.PollInterval)},
		{"ActivePollInterval", int64(c.ActivePollInterval)},
		{"MaxAttempts", int64(c.MaxAttempts)},
		{"CircuitBreakAfter", int64(c.CircuitBreakAfter)},
		{"CircuitPause", int64(c.CircuitPause)},
		{"MaxCircuitPause", int64(c.MaxCircuitPause)},
	} {
		if p.value < 0 {
			return fmt.Errorf("%w: %s is negative (%d); leave it 0 for the default", ErrInvalidConfig, p.name, p.value)
		}
	}
	if c.BatchSize > maxBatchSize {
		return fmt.Errorf("%w: BatchSize %d is above %d", ErrInvalidConfig, c.BatchSize, maxBatchSize)
	}
	if c.MaxCircuitPause < c.CircuitPause {
		return fmt.Errorf("%w: MaxCircuitPause (%s) is shorter than CircuitPause (%s)", ErrInvalidConfig, c.MaxCircuitPause, c.CircuitPause)
	}
	for i, d := range c.Destinations {
		if d == "" || d == "*" {
			return fmt.Errorf("%w: Destinations[%d] is %q; leave Destinations empty to relay every destination", ErrInvalidConfig, i, d)
		}
		if strings.Contains(strings.TrimSuffix(d, "*"), "*") {
			return fmt.Errorf("%w: Destinations[%d] %q has a * before its end; only a trailing * (a prefix) is understood", ErrInvalidConfig, i, d)
		}
	}
	return nil
}
