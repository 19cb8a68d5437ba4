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
	"reflect"
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
	// DefaultRuns is how many times every benchmark runs by default: its figures are medians
	// of at least 5 runs.
	DefaultRuns = 5
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
	// show whether its rate and memory stay flat as the backlog grows. Default: 5,000 and
	// 1,000,000 (the figures drain_ours_5k and drain_ours_1m).
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
	// ScheduledMessages is how many delayed messages the scheduled leg publishes, their delays
	// spread evenly over ScheduledSpread.
	ScheduledMessages int
	ScheduledSpread   time.Duration
	// Runs repeats the whole benchmark; the report shows medians.
	Runs int
	// SkipWatermill skips the Watermill legs.
	SkipWatermill bool
	// SkipFlat skips the 5k/1M flatness drains of our forwarder.
	SkipFlat bool
	// SkipRiver skips River's legs.
	SkipRiver bool
	// SkipCDC skips the logical-replication legs (the cdc_* figures).
	SkipCDC bool
	// CDCDSN is the database of the logical-replication legs: a server with wal_level =
	// logical and a role with REPLICATION that may create tables. Default: DSN when its
	// server runs wal_level = logical, else a private cluster started for the benchmark
	// (PostgreSQL's server programs, initdb and pg_ctl, must be installed) and removed after.
	CDCDSN string
	// Quick runs every leg once at a tiny size (Quicken): a check that the harness works, as
	// .ci/run does; its figures mean nothing.
	Quick bool
}

// outboxDefaults are the values the zero fields of an OutboxConfig take.
var outboxDefaults = OutboxConfig{
	AMQPURI:         AMQPNone,
	Backlog:         DefaultBacklog,
	FlatBacklogs:    [2]int{5000, 1000000},
	Payload:         DefaultPayload,
	Publishers:      DefaultPublishers,
	PublishDuration: DefaultPublishDuration,
	Rate:            DefaultRate,
	LatencyDuration: DefaultLatencyDuration,
	IdleDuration:    DefaultIdleDuration,
	Runs:            DefaultRuns,

	ScheduledMessages: 300,
	ScheduledSpread:   3 * time.Second,
}

// withZeroFrom returns c (a benchmark's config) with each zero field set to that field of d,
// the defaults.
func withZeroFrom[T any](c, d T) T {
	cv, dv := reflect.ValueOf(&c).Elem(), reflect.ValueOf(d)
	for i := range cv.NumField() {
		if f := cv.Field(i); f.IsZero() {
			f.Set(dv.Field(i))
		}
	}
	return c
}

// quickOutbox is the tiny configuration of OutboxConfig.Quick.
var quickOutbox = OutboxConfig{
	Backlog:         500,
	FlatBacklogs:    [2]int{200, 2000},
	Publishers:      2,
	PublishDuration: 300 * time.Millisecond,
	Rate:            200,
	LatencyDuration: 500 * time.Millisecond,
	IdleDuration:    300 * time.Millisecond,
	Runs:            1,

	ScheduledMessages: 20,
	ScheduledSpread:   300 * time.Millisecond,
}

// quicken returns c with every size of q (its non-zero fields) when quick is set: q with
// its zero fields taken from c.
func quicken[T any](c T, quick bool, q T) T {
	if !quick {
		return c
	}
	return withZeroFrom(q, c)
}

func (c OutboxConfig) validate() error {
	var p problems
	p.check(c.DSN == "", "no PostgreSQL DSN")
	p.check(c.Backlog < 1 || c.FlatBacklogs[0] < 1 || c.FlatBacklogs[1] < 1, "backlogs must be positive (got %d, %v)", c.Backlog, c.FlatBacklogs)
	p.check(c.Payload < 1, "payload must be at least 1 byte (got %d)", c.Payload)
	p.check(c.Publishers < 1, "publishers must be at least 1 (got %d)", c.Publishers)
	p.check(c.Rate < 1 || c.Rate > 100000, "rate must be 1..100000 msg/s (got %d)", c.Rate)
	p.check(c.PublishDuration < 100*time.Millisecond || c.LatencyDuration < 100*time.Millisecond || c.IdleDuration < 100*time.Millisecond,
		"durations must be at least 100ms")
	p.check(c.Runs < 1, "runs must be at least 1 (got %d)", c.Runs)
	return p.err("bench")
}

// problems collects what is wrong with a benchmark's config.
type problems []error

// check adds the problem (format, args) when bad.
func (p *problems) check(bad bool, format string, args ...any) {
	if bad {
		*p = append(*p, fmt.Errorf(format, args...))
	}
}

// err is nil without problems, else one error naming the benchmark (name) and every problem.
func (p problems) err(name string) error {
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%s: invalid config: %w", name, errors.Join(p...))
}

func (c OutboxConfig) amqpEnabled() bool { return c.AMQPURI != "" && c.AMQPURI != AMQPNone }
