// Package bench holds the benchmarks behind `watermill-jasper bench`. RunOutbox measures, in
// one process and one run, the same outbox workload through this library (publisher +
// forwarder) and through Watermill's own outbox (watermill-sql publisher in the business
// transaction + components/forwarder + watermill-sql subscriber), to a GoChannel sink and to
// RabbitMQ with publisher confirms, next to a raw claim-then-delete loop over the outbox
// table, the physical limit of the design.
//
// Every leg runs in its own fresh schema with a random name, created at the start of the leg
// and dropped at its end, also on error and cancellation.
package bench

import (
	"errors"
	"fmt"
	"time"
)

// AMQPNone as OutboxConfig.AMQPURI skips the RabbitMQ legs.
const AMQPNone = "none"

// Defaults of OutboxConfig.
const (
	DefaultAMQPURI         = "amqp://guest:guest@localhost:5672/"
	DefaultBacklog         = 20000
	DefaultPayload         = 256
	DefaultPublishers      = 8
	DefaultPublishDuration = 8 * time.Second
	DefaultRate            = 500
	DefaultLatencyDuration = 10 * time.Second
	DefaultIdleDuration    = 5 * time.Second
	DefaultRuns            = 1
	// WatermillPollInterval is the watermill-sql subscriber's poll interval in every
	// Watermill leg (the setting; watermill-sql's default is 1 s).
	WatermillPollInterval = 10 * time.Millisecond
)

// OutboxConfig configures RunOutbox. Zero values take the defaults above.
type OutboxConfig struct {
	// DSN of the PostgreSQL database the legs create their schemas in.
	DSN string
	// AMQPURI of RabbitMQ; AMQPNone (or "") skips the RabbitMQ legs.
	AMQPURI string
	// Backlog is the size of the backlog of the main drain legs (and the raw loop).
	Backlog int
	// FlatBacklogs are the small and the large backlog our forwarder drains to GoChannel to
	// show whether its rate stays flat as the backlog grows. Default: 5,000 and 100,000.
	FlatBacklogs [2]int
	// Payload is the message payload size in bytes.
	Payload int
	// Publishers is the number of goroutines running business transactions in the publish legs.
	Publishers int
	// PublishDuration is how long each publish leg is measured (after a short warm-up).
	PublishDuration time.Duration
	// Rate is the steady publish rate (messages/s) of the latency legs.
	Rate int
	// LatencyDuration is how long each latency leg publishes.
	LatencyDuration time.Duration
	// IdleDuration is how long an idle relay's queries are counted.
	IdleDuration time.Duration
	// Runs repeats the whole benchmark; the report shows medians.
	Runs int
	// SkipWatermill skips the Watermill legs.
	SkipWatermill bool
	// SkipFlat skips the 5k/100k flatness drains of our forwarder.
	SkipFlat bool
}

func (c OutboxConfig) withDefaults() OutboxConfig {
	if c.AMQPURI == "" {
		c.AMQPURI = AMQPNone
	}
	if c.Backlog == 0 {
		c.Backlog = DefaultBacklog
	}
	if c.FlatBacklogs == [2]int{} {
		c.FlatBacklogs = [2]int{5000, 100000}
	}
	if c.Payload == 0 {
		c.Payload = DefaultPayload
	}
	if c.Publishers == 0 {
		c.Publishers = DefaultPublishers
	}
	if c.PublishDuration == 0 {
		c.PublishDuration = DefaultPublishDuration
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.LatencyDuration == 0 {
		c.LatencyDuration = DefaultLatencyDuration
	}
	if c.IdleDuration == 0 {
		c.IdleDuration = DefaultIdleDuration
	}
	if c.Runs == 0 {
		c.Runs = DefaultRuns
	}
	return c
}

func (c OutboxConfig) validate() error {
	var errs []error
	if c.DSN == "" {
		errs = append(errs, errors.New("no PostgreSQL DSN"))
	}
	if c.Backlog < 1 || c.FlatBacklogs[0] < 1 || c.FlatBacklogs[1] < 1 {
		errs = append(errs, fmt.Errorf("backlogs must be positive (got %d, %v)", c.Backlog, c.FlatBacklogs))
	}
	if c.Payload < 1 {
		errs = append(errs, fmt.Errorf("payload must be at least 1 byte (got %d)", c.Payload))
	}
	if c.Publishers < 1 {
		errs = append(errs, fmt.Errorf("publishers must be at least 1 (got %d)", c.Publishers))
	}
	if c.Rate < 1 || c.Rate > 100000 {
		errs = append(errs, fmt.Errorf("rate must be 1..100000 msg/s (got %d)", c.Rate))
	}
	if c.PublishDuration < 100*time.Millisecond || c.LatencyDuration < 100*time.Millisecond || c.IdleDuration < 100*time.Millisecond {
		errs = append(errs, errors.New("durations must be at least 100ms"))
	}
	if c.Runs < 1 {
		errs = append(errs, fmt.Errorf("runs must be at least 1 (got %d)", c.Runs))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench: invalid config: %w", errors.Join(errs...))
	}
	return nil
}

func (c OutboxConfig) amqpEnabled() bool { return c.AMQPURI != "" && c.AMQPURI != AMQPNone }
