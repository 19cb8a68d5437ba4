// Package store is the storage boundary of watermill-jasper: one Go interface of typed
// operations on the Jasper tables, implemented once per database. Components (publisher,
// forwarder, subscriber, middleware, durability, admin, schema) call these operations with
// typed parameters and read typed results; they never see a SQL string or bind an argument by
// position.
//
// A Driver is a database handle (dbx.DB) that opens the Store of a schema. The drivers:
//
//   - PostgreSQL: internal/store/postgres (pgx natively, or database/sql through pgx's stdlib
//     driver), reached through the public package database (FromPgx, FromStdSQL);
//   - SQL Server: the public package sqlserver (go-mssqldb), imported only by SQL Server users,
//     so that a PostgreSQL program does not link go-mssqldb.
//
// Both are built on internal/store/sqlstore, which executes a dialect's statement set; every
// statement of a dialect lives in that dialect's package, DDL beside it. The conformance suite
// internal/store/storetest runs every operation against every driver.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
)

// Driver is a database handle that knows the SQL of its database.
type Driver interface {
	dbx.DB
	// Store returns the operations on the tables of one schema. The config's dialect must be
	// the driver's (or empty: the driver's); it is normalized. Stores are cheap to ask for
	// again: a driver builds the statements of a schema once.
	Store(cfg layout.Config) (Store, error)
}

// ErrNotSupported is wrapped by the error of an operation the database cannot do (LISTEN on
// SQL Server).
var ErrNotSupported = errors.New("watermill-jasper: not supported by this database")

// Store is the typed operations on the tables of one schema. Ops run on the pool, each its
// own autocommit statement (or its own short transaction where an operation needs several);
// With runs the same operations on a caller's transaction or connection.
type Store interface {
	Ops

	// Dialect is the database's dialect.
	Dialect() dbx.Dialect
	// Schema is the normalized schema config.
	Schema() layout.Config
	// DB is the pool the store runs on.
	DB() dbx.DB
	// With returns the operations bound to q: a transaction (the inbox's, a publisher's
	// caller's, a job's) or a dedicated connection.
	With(q dbx.Querier) Ops
	// InTx runs fn in a transaction of the pool, committing when it returns nil.
	InTx(ctx context.Context, fn func(ctx context.Context, tx Ops) error) error

	// BeginMarkHandled starts a transaction whose first statement marks the incoming envelope
	// a subscriber delivered as handled by an inbox (MarkIncomingHandled), in one round trip
	// where the driver can (pgx). When the statement fails, the transaction is rolled back
	// and nil is returned with the error.
	BeginMarkHandled(ctx context.Context, p MarkHandledParams) (dbx.Tx, bool, error)
	// BeginInsertHandled starts a transaction whose first statement records a keyed inbox
	// mark (InsertHandled), in one round trip where the driver can. It returns whether the
	// mark was recorded (false: a mark with that id exists: a duplicate).
	BeginInsertHandled(ctx context.Context, p InsertHandledParams) (dbx.Tx, bool, error)

	// BeginRelay starts the transaction of a relay's batch: LockOutgoing, then the outcomes
	// of its publishes (DeleteOutgoing, ReleaseOutgoing, DeadLetterOutgoing), then the
	// commit. Where the database can, that commit does not wait for the write-ahead log to
	// reach the disk (PostgreSQL: synchronous_commit = off for this transaction alone; BEGIN
	// and the setting go with the first statement, in one round trip, where the driver
	// can): the publishes were confirmed before it, and a commit that a crash of the
	// database loses leaves the envelopes in the table, to be relayed again, which
	// at-least-once delivery allows (docs/durability.md).
	BeginRelay(ctx context.Context) (dbx.Tx, error)

	// Capabilities of the database.
	Caps() Caps

	// IsMissingTable reports whether err says a table or the schema does not exist.
	IsMissingTable(err error) bool
	// IsMissingColumn reports whether err says a column does not exist (an extension column
	// that `schema migrate` adds).
	IsMissingColumn(err error) bool
	// IsStatementError reports whether err is the database's answer that a statement failed
	// (so an autocommit statement changed nothing); false for a lost connection, a timeout or
	// a cancellation while the statement was on the wire, after which it may have committed
	// unseen.
	IsStatementError(err error) bool

	// Notification channels of the schema (Caps.Notifications).
	Channels() Channels
	// Listen subscribes a dedicated connection to channels (PostgreSQL LISTEN). It returns
	// an error wrapping ErrNotSupported on a database without notifications.
	Listen(ctx context.Context, conn dbx.Conn, channels ...string) error

	// Node locks: a session lock keyed by a node id, held on a dedicated connection for the
	// life of the node (Jasper's: pg_try_advisory_lock, sp_getapplock @LockOwner='Session').

	// TryNodeLock takes the lock of id on conn without waiting; true when taken.
	TryNodeLock(ctx context.Context, conn dbx.Conn, id int32) (bool, error)
	// HoldsNodeLock reports whether conn's session holds the lock of id.
	HoldsNodeLock(ctx context.Context, conn dbx.Conn, id int32) (bool, error)
	// ReleaseNodeLock releases one level of the lock of id held by conn's session; false
	// when it was not held.
	ReleaseNodeLock(ctx context.Context, conn dbx.Conn, id int32) (bool, error)
	// SessionID returns the id of the database session q runs its statements on
	// (PostgreSQL's backend pid, SQL Server's session id). Two connections held at once
	// answering the same id share one session: a pooler in transaction or statement mode
	// (PgBouncer) sits between them and the database.
	SessionID(ctx context.Context, q dbx.Querier) (int64, error)

	// Schema management (DDL beside the driver).

	// Migrate creates what is missing of the layout (idempotent, serialised across processes
	// by a transaction-level lock, all in one transaction).
	Migrate(ctx context.Context) error
	// Catalog reads what the live database holds of the layout, for schema.Verify.
	Catalog(ctx context.Context) (Catalog, error)
	// Script is the whole DDL, each statement idempotent, in order.
	Script() []string
	// ScriptSeparator separates the statements of Script in a file ("GO" on SQL Server).
	ScriptSeparator() string
	// ColumnType is a column's type as the catalog reports it (Catalog's Type).
	ColumnType(c layout.Column) string
}

// Caps are what a database can do.
type Caps struct {
	// Notifications: LISTEN/NOTIFY wake-ups (PostgreSQL).
	Notifications bool
	// SavepointRelease: a savepoint can be released (not on SQL Server).
	SavepointRelease bool
}

// Channels are the notification channels of a schema ("" on a database without
// notifications).
type Channels struct {
	// Outgoing is notified when outgoing envelopes were committed (payload empty).
	Outgoing string
	// Incoming is notified when incoming envelopes of a topic were committed (payload: the
	// topic).
	Incoming string
}

// Ops are the operations on the tables of one schema, on the pool (Store) or on a
// transaction or connection (Store.With).
type Ops interface {
	// Publishing.

	// InsertEnvelopes inserts outgoing and incoming envelopes (either list may be empty),
	// skipping ids that exist already (an idempotent re-publish), in as few statements as the
	// database's parameter limit allows (one for any ordinary call). On the pool, several
	// statements run in one transaction. NotifyOutgoing (when any outgoing envelope is
	// inserted) and NotifyTopics wake the listeners when the transaction commits, on a
	// database with notifications.
	InsertEnvelopes(ctx context.Context, p InsertParams) error
	// EmitOutgoing writes outgoing envelopes as transactional logical decoding messages
	// (the table-less outbox: no row) with prefix Prefix, in one statement, when the logical
	// replication slot Slot exists in the current database and can be read (its
	// confirmed_flush_lsn is set and its WAL was not removed): the slot's reader is then sure
	// to see them once the transaction commits. It reports false and writes nothing when the
	// slot is missing or unusable; the caller then writes rows (InsertEnvelopes). PostgreSQL 14
	// and later only: other databases return an error wrapping dbx.ErrUnsupported.
	EmitOutgoing(ctx context.Context, p EmitParams) (emitted bool, err error)

	// The relay (forwarder).

	// ClaimOutgoing claims up to Limit unowned outgoing envelopes for Owner and returns them.
	// When it fails after the claim committed (a row could not be read) it returns the rows
	// read and an error wrapping ErrStranded: the others stay owned by Owner.
	ClaimOutgoing(ctx context.Context, p ClaimOutgoingParams) ([]row.Envelope, error)
	// LockOutgoing locks up to Limit unowned outgoing envelopes in the caller's transaction
	// (Store.With on a transaction), skipping rows another transaction holds, and returns
	// them without marking them: they stay unowned and locked until the transaction ends,
	// so the transaction that sent them deletes them (DeleteOutgoing) and commits, and a
	// crash or a lost connection frees them at once. It is the forwarder's claim. Outside a
	// transaction the locks end with the statement.
	LockOutgoing(ctx context.Context, p LockOutgoingParams) ([]row.Envelope, error)
	// DeleteOutgoing deletes outgoing envelopes by id (sent or expired).
	DeleteOutgoing(ctx context.Context, ids []uuid.UUID) error
	// ReleaseOutgoing hands outgoing envelopes still owned by Owner back (owner 0), counting
	// one more attempt when CountAttempt.
	ReleaseOutgoing(ctx context.Context, p ReleaseParams) error
	// DeadLetterOutgoing moves outgoing envelopes to the dead letters, each with its reason,
	// atomically per call (the envelope is deleted iff its dead letter is written).
	DeadLetterOutgoing(ctx context.Context, letters []DeadLetterReason) error

	// Durable local queues (subscriber).

	// ClaimIncoming claims up to Limit unowned Incoming envelopes of Topic for Owner. Like
	// ClaimOutgoing it may return rows with an error wrapping ErrStranded.
	ClaimIncoming(ctx context.Context, p ClaimIncomingParams) ([]row.Envelope, error)
	// DeleteIncoming deletes acknowledged incoming envelopes, except rows an inbox marked
	// Handled (they are its dedup record).
	DeleteIncoming(ctx context.Context, ids []uuid.UUID) error
	// RetryIncoming counts one more attempt on envelopes still owned by Owner and hands them
	// back for a retry after Delay (status Scheduled, execution_time = now + Delay; Incoming
	// at once when Delay <= 0), as Jasper's scheduled retry does.
	RetryIncoming(ctx context.Context, p RetryParams) error
	// ReleaseIncoming hands envelopes still owned by Owner back (owner 0); those also in
	// Attempted count one more attempt.
	ReleaseIncoming(ctx context.Context, p ReleaseIncomingParams) error
	// DeadLetterIncoming moves incoming envelopes to the dead letters, atomically per call.
	DeadLetterIncoming(ctx context.Context, letters []DeadLetterReason) error

	// Inbox and dead-letter middleware (on the handler's transaction).

	// MarkIncomingHandled marks a delivered incoming envelope Handled (keep_until = now +
	// Keep, owner 0, body emptied) when it is still Incoming in Topic; false when not.
	MarkIncomingHandled(ctx context.Context, p MarkHandledParams) (bool, error)
	// IncomingStatus returns the status of one incoming envelope of a topic; false when
	// there is none.
	IncomingStatus(ctx context.Context, id uuid.UUID, topic string) (string, bool, error)
	// InsertHandled records a keyed inbox mark; false when one with that id exists (a
	// duplicate; a concurrent insert waits for the first transaction).
	InsertHandled(ctx context.Context, p InsertHandledParams) (bool, error)
	// DeleteHandledMark withdraws a Handled mark written in the same transaction.
	DeleteHandledMark(ctx context.Context, id uuid.UUID) error
	// InsertDeadLetter writes one dead letter from an envelope (received_at = its
	// Destination); one with the same id is replaced.
	InsertDeadLetter(ctx context.Context, e row.Envelope, r Reason) error
	// Savepoint, RollbackToSavepoint and ReleaseSavepoint manage the one savepoint of a
	// handler attempt. ReleaseSavepoint does nothing where savepoints cannot be released.
	Savepoint(ctx context.Context) error
	RollbackToSavepoint(ctx context.Context) error
	ReleaseSavepoint(ctx context.Context) error

	// Durability agent (each in the job's transaction, after TryGlobalLock).

	// TryGlobalLock takes a transaction-level lock on a Jasper lock id (a global job, or a
	// node id to test that node is dormant) without waiting; true when taken. It conflicts
	// with a session lock of the same id.
	TryGlobalLock(ctx context.Context, id int32) (bool, error)
	// ReleaseScheduled makes up to limit due Scheduled envelopes (not scheduled sends) of
	// topics (empty: all) Incoming, and tells when the next Scheduled row of topics falls
	// due (empty: every one, scheduled sends included, so that the agent plans its pass for
	// them too).
	ReleaseScheduled(ctx context.Context, topics []string, limit int) (ScheduledRelease, error)
	// TakeDueScheduledSends deletes up to limit due scheduled sends (Jasper's
	// scheduled-envelope rows) and returns them, for the caller to insert the envelopes they
	// wrap into the outbox in the same transaction.
	TakeDueScheduledSends(ctx context.Context, limit int) ([]row.Envelope, error)
	// OtherOwners returns the owner ids of both tables other than 0 and self.
	OtherOwners(ctx context.Context, self int32) ([]int32, error)
	// ReleaseOwner hands back up to limit incoming and up to limit outgoing envelopes of
	// owner (owner 0).
	ReleaseOwner(ctx context.Context, owner int32, limit int) (Released, error)
	// NotifyOutgoing and NotifyIncoming wake listeners when the transaction commits (no-ops
	// on a database without notifications).
	NotifyOutgoing(ctx context.Context) error
	NotifyIncoming(ctx context.Context, topic string) error
	// Unowned reports whether unowned outgoing envelopes wait, and the topics with unowned
	// Incoming envelopes (index probes only).
	Unowned(ctx context.Context) (Unowned, error)
	// DeleteExpiredOutgoing deletes up to limit unowned outgoing envelopes past deliver_by.
	DeleteExpiredOutgoing(ctx context.Context, limit int) (int64, error)
	// DeleteExpiredHandled deletes up to limit Handled marks past keep_until.
	DeleteExpiredHandled(ctx context.Context, limit int) (int64, error)
	// Gauges samples the tables in one query.
	Gauges(ctx context.Context) (Gauges, error)
	// OwnersAlive tells, for each id, whether a session holds its node lock (never taking
	// one).
	OwnersAlive(ctx context.Context, ids []int32) (map[int32]bool, error)

	// Administration (package admin, the CLI).

	// Counts counts the rows: incoming by status, outgoing by destination, dead letters, and
	// both tables by owner.
	Counts(ctx context.Context) (Counts, error)
	// Ages counts the incoming rows by status and topic and the outgoing rows by
	// destination, with the oldest timestamp of each group.
	Ages(ctx context.Context) (Ages, error)
	// ReleaseAll sets owner_id to 0 on every incoming and outgoing row (in the caller's
	// transaction when bound; run it in one).
	ReleaseAll(ctx context.Context) (incoming, outgoing int64, err error)
	// ClearAll deletes every row of the three tables.
	ClearAll(ctx context.Context) (Cleared, error)
	// ListDeadLetters returns dead letters newest first, without bodies.
	ListDeadLetters(ctx context.Context, topic string, limit int) ([]row.DeadLetter, error)
	// CountDeadLetters counts the dead letters sel selects that are older than olderThan (0:
	// any age).
	CountDeadLetters(ctx context.Context, sel Selection, olderThan time.Duration) (int64, error)
	// GetDeadLetter returns one dead letter with its body; false when there is none.
	GetDeadLetter(ctx context.Context, id uuid.UUID) (row.DeadLetter, bool, error)
	// PageDeadLetters returns up to limit dead letters after the id After (nil: from the
	// start), ordered by id, selected by Sel, with their bodies.
	PageDeadLetters(ctx context.Context, p PageParams) ([]row.DeadLetter, error)
	// DeleteDeadLetters deletes dead letters by id.
	DeleteDeadLetters(ctx context.Context, ids []uuid.UUID) (int64, error)
	// ReplayToIncoming moves up to limit dead letters after After, selected by Sel, back to
	// the incoming table as unowned Incoming envelopes (of Topic when set, else their own
	// received_at), without the delivery headers. It returns one result per dead letter
	// looked at.
	ReplayToIncoming(ctx context.Context, p ReplayParams) ([]Replayed, error)
	// PurgeDeadLetters deletes up to limit dead letters of topic ("" any) older than
	// olderThan (0 any).
	PurgeDeadLetters(ctx context.Context, topic string, olderThan time.Duration, limit int) (int64, error)
}

// ErrStranded is wrapped by the error of a claim that committed but whose rows could not
// all be read: the unread ones stay owned by the claiming node.
var ErrStranded = errors.New("claimed envelopes left unread")

// InsertParams are the envelopes of one publish.
type InsertParams struct {
	Outgoing []row.Envelope
	Incoming []row.Envelope
	// NotifyOutgoing wakes the relays when an outgoing envelope was inserted.
	NotifyOutgoing bool
	// NotifyTopics wakes the subscribers of these topics.
	NotifyTopics []string
}

// EmitParams are the envelopes EmitOutgoing writes as logical decoding messages.
type EmitParams struct {
	// Slot is the logical replication slot that must exist for the messages to be written.
	Slot string
	// Prefix is the messages' prefix (logrepl.MessagePrefix of the schema).
	Prefix string
	// Envelopes are the outgoing envelopes, one message each, in this order.
	Envelopes []row.Envelope
}

// ClaimOutgoingParams select the envelopes of a claim.
type ClaimOutgoingParams struct {
	Owner int32
	// Exclude destinations (paused by a circuit breaker).
	Exclude []string
	// Only these destinations (an entry ending in * matches every destination that starts
	// with the text before it); empty: all.
	Only  []string
	Limit int
}

// LockOutgoingParams select the envelopes LockOutgoing locks.
type LockOutgoingParams struct {
	// IDs, when not empty, are the only envelopes to lock (the logical-replication source
	// locks the rows it was told of); ids of rows that are gone, owned, held by another
	// transaction, paused, outside Only or behind an earlier row of their partition key are
	// skipped. Limit is then ignored.
	IDs []uuid.UUID
	// Exclude destinations (paused by a circuit breaker).
	Exclude []string
	// Only these destinations (an entry ending in * matches every destination that starts
	// with the text before it); empty: all.
	Only  []string
	Limit int
}

// ClaimIncomingParams select the envelopes of a claim.
type ClaimIncomingParams struct {
	Owner int32
	Topic string
	Limit int
}

// ReleaseParams hand outgoing envelopes back.
type ReleaseParams struct {
	IDs          []uuid.UUID
	Owner        int32
	CountAttempt bool
}

// RetryParams hand nacked incoming envelopes back for a retry.
type RetryParams struct {
	IDs   []uuid.UUID
	Owner int32
	Delay time.Duration
}

// ReleaseIncomingParams hand incoming envelopes back.
type ReleaseIncomingParams struct {
	IDs []uuid.UUID
	// Attempted are those among IDs that were delivered: they count one more attempt.
	Attempted []uuid.UUID
	Owner     int32
}

// Reason is why a message went to the dead letters, as Jasper fills a dead letter.
type Reason struct {
	Explanation      string
	ExceptionType    string
	ExceptionMessage string
	ExceptionText    string
	Source           string
}

// DeadLetterReason is one envelope to move to the dead letters.
type DeadLetterReason struct {
	ID uuid.UUID
	Reason
}

// MarkHandledParams mark a delivered envelope Handled.
type MarkHandledParams struct {
	ID    uuid.UUID
	Topic string
	Keep  time.Duration
}

// InsertHandledParams record a keyed inbox mark: the mark row (status Handled, received_at =
// the topic) and how long it is kept.
type InsertHandledParams struct {
	Mark row.Envelope
	Keep time.Duration
}

// ScheduledRelease is what ReleaseScheduled did.
type ScheduledRelease struct {
	// Released envelopes became Incoming.
	Released int64
	// NextDue is how long until the next Scheduled row (a scheduled send too, when no topic
	// was given) is due, by the database's clock read at the start of the transaction
	// (PostgreSQL's now()) or of the statement (0: none).
	NextDue time.Duration
	// Topics of the released envelopes; nil when the database does not tell.
	Topics []string
}

// Released is what ReleaseOwner handed back.
type Released struct {
	Incoming, Outgoing int64
	// Topics of the incoming envelopes handed back.
	Topics []string
}

// Unowned is what waits for a claim (durability.Unowned re-exports it).
type Unowned struct {
	// Outgoing is true when some outgoing envelope has owner 0.
	Outgoing bool
	// Topics have Incoming envelopes with owner 0.
	Topics []string
}

// Gauges is one sample of the tables (durability.Gauges re-exports it).
type Gauges struct {
	// Incoming, Scheduled and Handled count the incoming envelopes with that status.
	Incoming, Scheduled, Handled int64
	// Outgoing counts the outgoing envelopes (the outbox).
	Outgoing int64
	// DeadLetters counts the dead letters.
	DeadLetters int64
	// OldestOutgoingAge is the age of the oldest outgoing envelope (by its timestamp
	// column, on the database clock); 0 when there is none.
	OldestOutgoingAge time.Duration
	// DormantOwned counts the envelopes held by nodes whose lock no session holds: they wait
	// for a reassignment pass. A value that stays above 0 means no agent runs.
	DormantOwned int64
	// SampledAt is when the sample was taken (local clock; set by the durability agent).
	SampledAt time.Time
}

// Counts is what the tables hold (unsorted).
type Counts struct {
	IncomingByStatus      map[string]int64
	OutgoingByDestination map[string]int64
	DeadLetters           int64
	IncomingByOwner       map[int32]int64
	OutgoingByOwner       map[int32]int64
}

// Ages is what Ages reads (unsorted).
type Ages struct {
	Incoming, Outgoing []AgeGroup
}

// AgeGroup is the rows of one status and topic (incoming) or destination (outgoing).
type AgeGroup struct {
	// Name is the status or the destination; Topic the incoming rows' received_at.
	Name, Topic string
	Rows        int64
	// Oldest is the earliest timestamp of the group; nil when no row has one.
	Oldest *time.Time
}

// Cleared is the rows ClearAll deleted.
type Cleared struct {
	Incoming, Outgoing, DeadLetters int64
}

// Selection selects dead letters: by ids (empty: any) and topic ("" any).
type Selection struct {
	IDs   []uuid.UUID
	Topic string
}

// PageParams page through dead letters by id.
type PageParams struct {
	After *uuid.UUID
	Sel   Selection
	Limit int
}

// ReplayParams move a page of dead letters back to the incoming table.
type ReplayParams struct {
	After *uuid.UUID
	Sel   Selection
	Limit int
	// Topic overrides the received_at of the replayed envelopes; "" keeps theirs.
	Topic string
}

// Replayed is the outcome of one dead letter of ReplayToIncoming.
type Replayed struct {
	ID uuid.UUID
	// Moved is false when the incoming table already had an envelope with this id, or the
	// dead letter has no topic.
	Moved bool
	// Topic is the received_at of the moved envelope.
	Topic string
}

// Catalog is what a schema holds of the layout.
type Catalog struct {
	// Columns by table, then column name (lower case).
	Columns map[string]map[string]CatalogColumn
	// PrimaryKeys holds the tables whose primary key is id.
	PrimaryKeys map[string]bool
	// Objects holds the names (lower case) of table types and procedures (SQL Server).
	Objects map[string]bool
	// Indexes holds the index names (lower case).
	Indexes map[string]bool
	// HasObjects is true when the database has table types and procedures to check.
	HasObjects bool
	// Unmet are the requirements of this library the database does not meet, each a line
	// that says what to fix (SQL Server: a compatibility level below 130).
	Unmet []string
}

// CatalogColumn is one live column.
type CatalogColumn struct {
	// Type as ColumnType renders it (data type, ":length" for sized SQL Server strings).
	Type     string
	Nullable bool
}
