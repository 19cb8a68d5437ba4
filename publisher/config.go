package publisher

import (
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/watermill-jasper/watermill-jasper/internal/defaults"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ErrInvalidConfig is wrapped by every error NewPublisher and Config.Validate return about
// the configuration.
var ErrInvalidConfig = errors.New("watermill-jasper: invalid publisher config")

// Table chooses the Jasper table a Publisher writes to.
type Table string

const (
	// Outgoing is the transactional outbox, jasper_outgoing_envelopes: one envelope per
	// message with destination = topic and owner_id 0, relayed to a broker by the forwarder.
	// Delayed messages become Jasper scheduled sends (scheduled-envelope rows of the incoming
	// table) that the durability agent moves to the outbox when due. It is the default.
	Outgoing Table = "outgoing"
	// Incoming is a durable local queue, jasper_incoming_envelopes: one envelope per message
	// with received_at = topic, status Incoming and owner_id 0, delivered by package
	// subscriber (as Jasper's durable local queues write them). Delayed messages are written
	// with status Scheduled and execution_time = the due time; they are delivered once due.
	Incoming Table = "incoming"
)

// Defaults fill the columns Jasper requires (message_type, content_type) when a message's
// metadata does not: see metadata.MessageType and metadata.ContentType for the fallbacks.
type Defaults = row.Defaults

// Config configures a Publisher. The zero value is usable: PostgreSQL, schema "public", the
// outgoing table, with notifications.
type Config struct {
	// Schema says where the tables are. Default: Jasper's default schema, and the dialect of
	// Driver, else of the handle's database when it shows (watermill-sql's pgx adapters,
	// BeginnerFromStdSQL over a *sql.DB), else PostgreSQL. The tables must exist
	// (`watermill-jasper schema migrate` or schema.Migrate).
	Schema schema.Config

	// Driver is the database the publisher writes to, with its SQL (database.FromPgx,
	// database.FromStdSQL, sqlserver.FromStdSQL): the same database as the handle given to
	// NewPublisher. Optional on PostgreSQL; required on SQL Server, whose SQL lives in package
	// sqlserver. A Driver builds the statements of a schema once, so publishers created per
	// transaction with one are cheaper to build than without (each then builds its own);
	// the runtime's publishers (jasper.Runtime.Publisher, TxPublisher) have it set.
	Driver database.Driver

	// Table the messages are written to. Default: Outgoing.
	Table Table

	// DestinationURI maps the topic of an outgoing message to the destination its envelope
	// stores (the forwarder's Config.Topic maps it back when it relays). Nil stores the topic.
	// With Schema.Compatibility schema.Jasper2 every destination must be a URI, since .NET
	// Jasper nodes read the shared outbox with ToUri(): map plain topics here, to a URI both
	// sides deliver (e.g. rabbitmq://queue/<topic>, which jasperamqp relays). An error fails
	// the Publish. Not used for the Incoming table.
	DestinationURI func(topic string) (string, error)

	// TableLess writes outgoing messages as PostgreSQL logical decoding messages
	// (pg_logical_emit_message, transactional, in the caller's transaction) instead of rows
	// of jasper_outgoing_envelopes: no row, no delete, no vacuum (docs/relay-sources.md,
	// "The table-less outbox"). A forwarder following the replication slot TableLessSlot
	// (forwarder.LogicalReplication) relays them; .NET Jasper nodes never see them, so use it
	// only for messages no .NET node relays. Each Publish checks, in the same statement, that
	// the slot exists and can be read; when it does not (not created yet, dropped,
	// invalidated) the messages are written as rows, as without TableLess, and that is logged
	// (once, at error level, until the slot is back). A re-publish of the same message is not
	// a no-op here (there is no row to conflict with): it is sent twice, and consumers
	// deduplicate on the message UUID (middleware.Inbox). Delayed messages are still written
	// as scheduled sends (rows); a Publish on the pool (no transaction) that mixes delayed and
	// undelayed messages writes them all as rows, in one statement. A slot dropped or
	// invalidated before its relay confirmed the messages loses them (docs/relay-sources.md).
	// PostgreSQL 14 or later, the outgoing table only. Default false.
	TableLess bool
	// TableLessSlot is the replication slot TableLess checks for: the forwarder's
	// LogicalReplication.Slot. Default "wj_outbox_<schema>" (the forwarder's default).
	TableLessSlot string

	// Defaults for message_type ("watermill-message") and content_type ("application/json").
	Defaults Defaults

	// Notify decides which publishes also send a PostgreSQL notification (in the same
	// statement as the insert) that wakes the forwarders (outgoing table) or the topic's
	// subscribers (incoming table) LISTENing to it, as soon as the transaction commits
	// (NOTIFY is transactional: nothing is sent on rollback). PostgreSQL serialises the commits
	// of notifying transactions (a global lock taken at commit): notifying every publish
	// measured 1.5-1.7x the cost of a bare INSERT with 8 concurrent publishers. The default,
	// NotifyCoalesced, notifies at most once per NotifyInterval per schema (and topic) among
	// the publishers sharing a Coalescer, which wakes an idle forwarder at once at a
	// negligible cost; a busy forwarder polls every 2 ms anyway. A publisher created per
	// transaction without a shared Coalescer notifies on its first publish every time (as
	// NotifyEveryPublish would): share one Coalescer between them, or take the publishers
	// from the runtime, whose publishers share its Coalescer. Ignored on databases without
	// notifications.
	Notify NotifyPolicy
	// NotifyInterval is the least time between two notifying publishes with NotifyCoalesced.
	// Default 100ms.
	NotifyInterval time.Duration
	// Coalescer is the state NotifyCoalesced shares between publishers (see Coalescer). Nil:
	// the Publisher has its own, which coalesces only its own publishes.
	Coalescer *Coalescer

	// OnScheduled, when set, is called after a Publish with the earliest due time of the
	// messages it wrote as Scheduled (delayed messages: scheduled sends of the outbox, or
	// Scheduled rows of a local queue), so that a durability agent releases them on time
	// rather than at its next periodic pass. The runtime's publishers call their agent's
	// ScheduleAt, which keeps every time asked for; after each pass the agent also plans the
	// next one from the table, for the later messages of a call. In a caller's transaction
	// the call comes before the commit: a transaction still open at the due time leaves its
	// rows to the next pass after the commit (at the latest the periodic one).
	OnScheduled func(due time.Time)

	// TracerProvider, when set, traces every published message with an OpenTelemetry span
	// "publish <topic>" (kind producer, messaging semantic conventions), a child of the span
	// of the message's context (else of the trace context already in its metadata), and
	// writes that span's W3C trace context into the message's metadata (traceparent,
	// tracestate) before it is stored: traceparent fills parent_id and both keys travel in
	// headers (docs/tracing.md). Nil: no spans, no cost. The runtime sets its own
	// (jasper.Config.TracerProvider) when this is nil.
	TracerProvider trace.TracerProvider
}

// NotifyPolicy chooses which publishes send a wake-up notification (Config.Notify).
type NotifyPolicy int

const (
	// NotifyCoalesced notifies at most once per Config.NotifyInterval per schema (and, for
	// the incoming table, topic) among the publishers sharing Config.Coalescer. The default.
	NotifyCoalesced NotifyPolicy = iota
	// NotifyEveryPublish notifies in every publish: the lowest latency after a quiet period,
	// at the cost of serialised commits.
	NotifyEveryPublish
	// NotifyNever sends no notification: readers find the rows by polling. (Behind PgBouncer
	// in transaction mode notifications still work: NOTIFY is sent at commit, and the
	// listening agent runs on the node's direct durability.NodeConfig.SessionDB.)
	NotifyNever
)

// DefaultNotifyInterval is the default Config.NotifyInterval.
const DefaultNotifyInterval = 100 * time.Millisecond

func (c *Config) setDefaults() {
	if c.Schema.Dialect == "" {
		c.Schema.Dialect = schema.Postgres
		if c.Driver != nil {
			c.Schema.Dialect = c.Driver.Dialect()
		}
	}
	defaults.Set(&c.Table, Outgoing)
	defaults.Set(&c.Defaults.MessageType, row.DefaultMessageType)
	defaults.Set(&c.Defaults.ContentType, row.DefaultContentType)
	defaults.Set(&c.NotifyInterval, DefaultNotifyInterval)
}

// Validate checks the config, after defaults are applied.
func (c Config) Validate() error {
	c.setDefaults()
	if err := c.Schema.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.Driver != nil && c.Schema.Dialect != c.Driver.Dialect() {
		return fmt.Errorf("%w: Schema.Dialect is %s but Driver is a %s database", ErrInvalidConfig, c.Schema.Dialect, c.Driver.Dialect())
	}
	switch c.Table {
	case Outgoing, Incoming:
	default:
		return fmt.Errorf("%w: unknown table %q (use publisher.Outgoing or publisher.Incoming)", ErrInvalidConfig, string(c.Table))
	}
	if c.TableLess {
		switch {
		case c.Table != Outgoing:
			return fmt.Errorf("%w: TableLess writes outgoing messages only; it cannot be used with the %s table", ErrInvalidConfig, c.Table)
		case c.Schema.Dialect != schema.Postgres:
			return fmt.Errorf("%w: TableLess needs PostgreSQL (logical decoding messages), not %s", ErrInvalidConfig, c.Schema.Dialect)
		}
		if _, err := c.tableLessSlot(); err != nil {
			return fmt.Errorf("%w: TableLessSlot: %w", ErrInvalidConfig, err)
		}
	} else if c.TableLessSlot != "" {
		return fmt.Errorf("%w: TableLessSlot is set but TableLess is not: set TableLess to write table-less", ErrInvalidConfig)
	}
	return nil
}

// tableLessSlot is the slot and the message prefix of TableLess (the replication source's
// defaults and rules: logrepl.Config).
func (c Config) tableLessSlot() (logrepl.Config, error) {
	return logrepl.Config{Schema: c.Schema.Schema, Slot: c.TableLessSlot}.Normalized()
}
