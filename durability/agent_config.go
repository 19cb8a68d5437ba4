package durability

import (
	"errors"
	"fmt"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/defaults"

	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Defaults of Config. The polling times are Jasper's (AdvancedSettings, docs/durability.md);
// the batch sizes are larger than Jasper's RecoveryBatchSize of 100 because every batch here
// is one short statement in its own transaction, looped until the work is done, so a
// larger batch only means fewer round trips.
const (
	// DefaultScheduledJobPollingTime is Jasper's ScheduledJobPollingTime: how often due
	// scheduled envelopes are released and unowned envelopes looked for.
	DefaultScheduledJobPollingTime = 5 * time.Second
	// DefaultNodeReassignmentPollingTime is Jasper's NodeReassignmentPollingTime: how often
	// the envelopes of dormant nodes are handed back.
	DefaultNodeReassignmentPollingTime = time.Minute
	// DefaultRecoveryBatchSize is how many envelopes one statement of the scheduled release,
	// the reassignment and the expired-envelope purge moves (Jasper: 100).
	DefaultRecoveryBatchSize = 500
	// DefaultExpiredEnvelopesPollingTime is how often expired unowned outgoing envelopes are
	// deleted (forwarders delete those they claim themselves; this catches the rest).
	DefaultExpiredEnvelopesPollingTime = time.Minute
	// DefaultHandledCleanupPollingTime is how often the inbox middleware's Handled marks past
	// keep_until are deleted (the agent is the only owner of that cleanup).
	DefaultHandledCleanupPollingTime = time.Minute
	// DefaultHandledCleanupBatchSize is how many Handled marks one DELETE removes.
	DefaultHandledCleanupBatchSize = 1000
	// DefaultNodeCheckInterval is how often the node lock is checked and, when its
	// connection was lost, taken again.
	DefaultNodeCheckInterval = 5 * time.Second
	// DefaultMetricsSamplingInterval is Jasper's MetricsCollectionSamplingInterval: how often
	// the storage gauges are sampled (one query).
	DefaultMetricsSamplingInterval = 5 * time.Second
	// DefaultStatementTimeout bounds each transaction of a job.
	DefaultStatementTimeout = 30 * time.Second

	// MaxBatchSize bounds RecoveryBatchSize and HandledCleanupBatchSize.
	MaxBatchSize = 10000
)

// ErrInvalidConfig is wrapped by every error of Config.Validate and NewAgent about the
// configuration.
var ErrInvalidConfig = errors.New("watermill-jasper: invalid durability agent config")

// Config configures an Agent. The zero value is usable: Jasper's defaults, and the schema
// "public" (PostgreSQL) or "dbo" (SQL Server) of the node's database.
//
// A polling time that is negative turns its job off (for instance when a .NET Jasper node
// or another tool does it); zero means the default.
type Config struct {
	// Schema says where the tables are. Its Dialect defaults to the database's.
	Schema schema.Config

	// ScheduledJobFirstExecution delays the first scheduled-job pass after Start (Jasper's
	// ScheduledJobFirstExecution, 0).
	ScheduledJobFirstExecution time.Duration
	// ScheduledJobPollingTime is how often the agent releases due scheduled envelopes
	// (status Scheduled -> Incoming, and scheduled sends -> outgoing envelopes) and looks for
	// unowned envelopes to wake the components for. The pass also runs when the next scheduled
	// envelope or scheduled send falls due earlier (by the database's clock), at the times
	// components ask for (Agent.ScheduleAt), and within milliseconds again when another
	// agent held the scheduled-jobs lock. Default 5s.
	ScheduledJobPollingTime time.Duration

	// FirstNodeReassignmentExecution delays the first reassignment pass after Start (Jasper's
	// FirstNodeReassignmentExecution, 0: a node started on a database left behind by a
	// killed one hands its envelopes back at once).
	FirstNodeReassignmentExecution time.Duration
	// NodeReassignmentPollingTime is how often the envelopes of dormant nodes (owners whose
	// node lock no session holds) are handed back (owner_id = 0). Default 1 minute.
	NodeReassignmentPollingTime time.Duration

	// RecoveryBatchSize is how many envelopes one statement releases, hands back or
	// deletes; each batch is its own short transaction. Default 500 (Jasper: 100).
	RecoveryBatchSize int

	// ExpiredEnvelopesPollingTime is how often unowned outgoing envelopes whose deliver_by
	// has passed are deleted, as Jasper discards them. Default 1 minute.
	ExpiredEnvelopesPollingTime time.Duration

	// HandledCleanupPollingTime is how often Handled incoming rows (kept by the inbox
	// middleware for deduplication) whose keep_until has passed are deleted, in batches of
	// HandledCleanupBatchSize, each in its own transaction, on a timer of its own so that a
	// large purge never delays recovery. Default 1 minute.
	HandledCleanupPollingTime time.Duration
	// HandledCleanupBatchSize is how many Handled rows one DELETE removes. Default 1000.
	HandledCleanupBatchSize int

	// NodeCheckInterval is how often the agent checks the node lock (Node.Check) and takes
	// it again when its connection was lost. Default 5s.
	NodeCheckInterval time.Duration

	// MetricsSamplingInterval is how often the storage gauges (Agent.Gauges) are sampled,
	// with one query that counts the rows of the three tables, the first time one interval
	// after Start (not in the burst of a start, when forwarders drain a backlog). Default 5s;
	// raise it for tables of millions of rows.
	MetricsSamplingInterval time.Duration

	// StatementTimeout bounds each transaction of a job. Default 30s.
	StatementTimeout time.Duration

	// DisableNotify turns the LISTEN connection off (behind PgBouncer in transaction mode,
	// where LISTEN cannot work): the components then find new envelopes by polling. On a
	// database without notifications (SQL Server) there is no LISTEN connection anyway.
	DisableNotify bool

	// Defaults fill message_type and content_type of the outgoing envelopes made from
	// scheduled sends whose message lacks them (publisher.Defaults is the same type).
	Defaults row.Defaults
}

func (c *Config) setDefaults() {
	defaults.Set(&c.ScheduledJobPollingTime, DefaultScheduledJobPollingTime)
	defaults.Set(&c.NodeReassignmentPollingTime, DefaultNodeReassignmentPollingTime)
	defaults.Set(&c.ExpiredEnvelopesPollingTime, DefaultExpiredEnvelopesPollingTime)
	defaults.Set(&c.HandledCleanupPollingTime, DefaultHandledCleanupPollingTime)
	defaults.Set(&c.NodeCheckInterval, DefaultNodeCheckInterval)
	defaults.Set(&c.MetricsSamplingInterval, DefaultMetricsSamplingInterval)
	defaults.Set(&c.StatementTimeout, DefaultStatementTimeout)
	defaults.Set(&c.RecoveryBatchSize, DefaultRecoveryBatchSize)
	defaults.Set(&c.HandledCleanupBatchSize, DefaultHandledCleanupBatchSize)
}

// Validate checks the config, after defaults are applied, and returns an error naming the
// field to fix.
func (c Config) Validate() error {
	c.setDefaults()
	if err := c.Schema.Validate(); err != nil {
		return fmt.Errorf("%w: Schema: %w", ErrInvalidConfig, err)
	}
	switch {
	case c.ScheduledJobFirstExecution < 0:
		return fmt.Errorf("%w: ScheduledJobFirstExecution is negative (%s)", ErrInvalidConfig, c.ScheduledJobFirstExecution)
	case c.FirstNodeReassignmentExecution < 0:
		return fmt.Errorf("%w: FirstNodeReassignmentExecution is negative (%s)", ErrInvalidConfig, c.FirstNodeReassignmentExecution)
	case c.RecoveryBatchSize < 1 || c.RecoveryBatchSize > MaxBatchSize:
		return fmt.Errorf("%w: RecoveryBatchSize is %d, it must be between 1 and %d", ErrInvalidConfig, c.RecoveryBatchSize, MaxBatchSize)
	case c.HandledCleanupBatchSize < 1 || c.HandledCleanupBatchSize > MaxBatchSize:
		return fmt.Errorf("%w: HandledCleanupBatchSize is %d, it must be between 1 and %d", ErrInvalidConfig, c.HandledCleanupBatchSize, MaxBatchSize)
	case c.StatementTimeout < 0:
		return fmt.Errorf("%w: StatementTimeout is negative (%s)", ErrInvalidConfig, c.StatementTimeout)
	}
	return nil
}
