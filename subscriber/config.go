package subscriber

import (
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/watermill-jasper/watermill-jasper/internal/backoff"
	"github.com/watermill-jasper/watermill-jasper/internal/defaults"
)

// ErrInvalidConfig is wrapped by every error NewSubscriber and Config.Validate return about
// the configuration.
var ErrInvalidConfig = errors.New("watermill-jasper: invalid subscriber config")

// Defaults of Config.
const (
	DefaultBatchSize        = 100
	DefaultMaxInFlight      = 1
	DefaultPollInterval     = time.Second
	DefaultNackBackoff      = 100 * time.Millisecond
	DefaultMaxNackBackoff   = 10 * time.Second
	DefaultAckFlushInterval = 5 * time.Millisecond
	DefaultRetryInterval    = time.Second
	DefaultCloseTimeout     = 30 * time.Second

	// MaxBatchSize bounds BatchSize and AckBatchSize.
	MaxBatchSize = 10000
)

// Config configures a Subscriber. The zero value is usable: batches of 100, one message in
// flight, polling every second besides the agent's wake-ups. Where the tables are, the node
// id written into owner_id and the notifications all come from the durability agent the
// Subscriber is built on.
type Config struct {
	// BatchSize is how many envelopes one claim takes (one statement). Default 100.
	// A subscription holds at most about three batches: the one being delivered and, while
	// a backlog lasts, the next two (claimed concurrently).
	BatchSize int

	// MaxInFlight is how many messages of one subscription may be delivered and not yet
	// acknowledged at a time. Default 1: the next message is sent only after the previous
	// one was acked or nacked.
	MaxInFlight int

	// PollInterval is how often a subscription looks for new envelopes when nothing woke it
	// up (the agent's notifications and wake-ups are the fast path). Default 1s.
	PollInterval time.Duration

	// NackBackoff is the delay before a nacked message is delivered again, after its first
	// nack; it doubles with each further attempt up to MaxNackBackoff. Nacked envelopes are
	// handed back as Jasper does a scheduled retry (status Scheduled, execution_time =
	// now + delay, attempts + 1), and the durability agent makes them Incoming when due, so
	// any subscriber of the topic may deliver them again. Default 100ms, rounded to whole
	// milliseconds. Negative: no delay (the envelope is Incoming again at once).
	NackBackoff time.Duration
	// MaxNackBackoff caps the nack delay. Default 10s.
	MaxNackBackoff time.Duration

	// AckFlushInterval is the longest an acknowledgement waits before its row is deleted:
	// acks are collected and deleted many per statement, every AckFlushInterval or every
	// AckBatchSize acks, and always before Close returns. Default 5ms.
	AckFlushInterval time.Duration
	// AckBatchSize is how many acks trigger a flush at once. Default BatchSize.
	AckBatchSize int

	// RetryInterval is the first wait after a database error before trying again; the wait
	// doubles (with jitter) while the errors go on, up to 30s. Default 1s.
	RetryInterval time.Duration

	// CloseTimeout bounds the statements Close (and the end of a subscription) runs to
	// delete acknowledged envelopes and hand the others back. Default 30s.
	CloseTimeout time.Duration

	// InitializeSchema makes SubscribeInitialize and Subscribe create the missing tables,
	// columns and indexes (schema.Migrate). Default false: they only verify the layout and
	// return an error saying how to create it.
	InitializeSchema bool

	// TracerProvider, when set, traces every delivered message with an OpenTelemetry span
	// "process <topic>" (kind consumer, messaging semantic conventions), a child of the trace
	// context of its metadata (traceparent, tracestate), held in the message's context from
	// its delivery until it is acked (or nacked, an error), so that the handler's spans and
	// the inbox middleware's continue the producer's trace. Nil: no spans, no cost. The
	// runtime sets its own (jasper.Config.TracerProvider) when this is nil.
	TracerProvider trace.TracerProvider
}

func (c *Config) setDefaults() {
	defaults.Set(&c.BatchSize, DefaultBatchSize)
	defaults.Set(&c.MaxInFlight, DefaultMaxInFlight)
	defaults.Set(&c.PollInterval, DefaultPollInterval)
	defaults.Set(&c.NackBackoff, DefaultNackBackoff)
	defaults.Set(&c.MaxNackBackoff, DefaultMaxNackBackoff)
	defaults.Set(&c.AckFlushInterval, DefaultAckFlushInterval)
	defaults.Set(&c.AckBatchSize, c.BatchSize)
	defaults.Set(&c.RetryInterval, DefaultRetryInterval)
	defaults.Set(&c.CloseTimeout, DefaultCloseTimeout)
}

// Validate checks the config, after defaults are applied.
func (c Config) Validate() error {
	c.setDefaults()
	switch {
	case c.BatchSize < 1 || c.BatchSize > MaxBatchSize:
		return fmt.Errorf("%w: BatchSize is %d, it must be between 1 and %d", ErrInvalidConfig, c.BatchSize, MaxBatchSize)
	case c.AckBatchSize < 1 || c.AckBatchSize > MaxBatchSize:
		return fmt.Errorf("%w: AckBatchSize is %d, it must be between 1 and %d", ErrInvalidConfig, c.AckBatchSize, MaxBatchSize)
	case c.MaxInFlight < 1 || c.MaxInFlight > MaxBatchSize:
		return fmt.Errorf("%w: MaxInFlight is %d, it must be between 1 and %d", ErrInvalidConfig, c.MaxInFlight, MaxBatchSize)
	case c.PollInterval < 0:
		return fmt.Errorf("%w: PollInterval is negative (%s)", ErrInvalidConfig, c.PollInterval)
	case c.MaxNackBackoff < 0:
		return fmt.Errorf("%w: MaxNackBackoff is negative (%s)", ErrInvalidConfig, c.MaxNackBackoff)
	case c.NackBackoff > 0 && c.NackBackoff > c.MaxNackBackoff:
		return fmt.Errorf("%w: NackBackoff (%s) is longer than MaxNackBackoff (%s)", ErrInvalidConfig, c.NackBackoff, c.MaxNackBackoff)
	case c.AckFlushInterval < 0:
		return fmt.Errorf("%w: AckFlushInterval is negative (%s)", ErrInvalidConfig, c.AckFlushInterval)
	case c.RetryInterval < 0:
		return fmt.Errorf("%w: RetryInterval is negative (%s)", ErrInvalidConfig, c.RetryInterval)
	case c.CloseTimeout < 0:
		return fmt.Errorf("%w: CloseTimeout is negative (%s)", ErrInvalidConfig, c.CloseTimeout)
	}
	return nil
}

// maxRetryWait caps the back-off after database errors.
const maxRetryWait = 30 * time.Second

// retryPolicy is the wait after consecutive database errors: RetryInterval, doubling up to
// maxRetryWait, jittered.
func (c *Config) retryPolicy() backoff.Policy {
	return backoff.Policy{Initial: c.RetryInterval, Max: max(c.RetryInterval, maxRetryWait)}
}

// nackDelay is the delay before redelivering a message that had attempts earlier attempts
// and was just nacked: NackBackoff * 2^attempts, capped by MaxNackBackoff, in whole
// milliseconds (the resolution of execution_time arithmetic); 0 when NackBackoff is
// negative.
func (c *Config) nackDelay(attempts int) time.Duration {
	if c.NackBackoff <= 0 {
		return 0
	}
	p := backoff.Policy{Initial: c.NackBackoff, Max: max(c.MaxNackBackoff, c.NackBackoff), Multiplier: 2}
	return max(p.Delay(attempts+1).Truncate(time.Millisecond), time.Millisecond)
}
