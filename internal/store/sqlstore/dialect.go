// Package sqlstore implements the store's typed operations (internal/store) once, over the
// statement set of a dialect: a Dialect renders every statement of one database for one
// schema, and Store binds the typed parameters to them and reads the typed results. The
// statements themselves live in the dialect packages (internal/store/postgres and
// internal/store/sqlserver), DDL beside them; the few whose text differs between the
// databases only by a token (a placeholder, a count, a type name) are written once in
// base.go and rendered with the dialect's Syntax. No other package holds SQL.
//
// Notation of the contracts below: "$n" is the n-th argument (written $n on PostgreSQL and
// @pn on SQL Server); "bigint", "float8", "boolean" and "text" name the Go values a result
// column scans into (int64, float64, bool, string), whatever the dialect's own type
// (bigint, float, bit, nvarchar on SQL Server). Statements a database cannot run are
// announced by Caps (no notifications on SQL Server, no savepoint release) and never asked
// for.
package sqlstore

import (
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// Dialect is the SQL of one database for one schema.
type Dialect interface {
	Name() dbx.Dialect
	Schema() layout.Config
	// Caps says what the database can do (store.Caps).
	Caps() store.Caps
	// MoveNeedsTx is true when DeadLetterOutgoing and DeadLetterIncoming are several
	// statements that must run in a transaction to be atomic (the store opens one when it
	// runs them on the pool).
	MoveNeedsTx() bool
	// RelayTxSettings is the first statement of a relay's batch transaction (Store.BeginRelay),
	// which relaxes the durability of its commit; "" when the dialect has none.
	RelayTxSettings() string
	// UUIDs converts UUID values for this driver.
	UUIDs() row.UUIDCodec
	// Bind converts the arguments of a statement, as the operations build them (UUIDs and
	// lists already converted), into what the driver binds. SQL Server binds strings as
	// nvarchar(max): go-mssqldb declares a string as nvarchar of its own length, and every
	// length would get a plan of its own in the plan cache.
	Bind(args []any) []any
	// Counted is query as sent when its affected-row count is read. SQL Server prefixes
	// SET NOCOUNT OFF (for that batch only): on a session or server with NOCOUNT ON (SET
	// NOCOUNT ON, or the server option 'user options' 512) it reports no count otherwise, and
	// every inbox message would be taken for a duplicate. "" stays "".
	Counted(query string) string
	// IDList is the bind value for a list of envelope ids (uuid[] on PostgreSQL, Jasper's
	// EnvelopeIdList table-valued parameter on SQL Server).
	IDList(ids []uuid.UUID) any
	// StringList is the bind value for a list of strings (text[] on PostgreSQL, a JSON array
	// on SQL Server).
	StringList(s []string) any
	// OwnerList is the bind value for a list of owner ids (int4[] on PostgreSQL, a JSON
	// array on SQL Server).
	OwnerList(ids []int32) any
	// DeadLetterArgs are the six arguments of DeadLetterOutgoing and DeadLetterIncoming:
	// the ids and, for each id at the same index, the explanation, exception type, exception
	// message, exception text and source.
	DeadLetterArgs(ids []uuid.UUID, explanation, exceptionType, exceptionMessage, exceptionText, source []string) []any

	// InsertOutgoing inserts n envelopes bound with row.OutgoingArgs, one after another;
	// an envelope whose id exists already is skipped (idempotent re-publish).
	InsertOutgoing(n int) string
	// NotifyOutgoing wakes forwarders after commit: args (none). Caps.Notifications only.
	NotifyOutgoing() string
	// OutgoingChannel is the LISTEN channel of this schema's outgoing table. Caps.Notifications
	// only.
	OutgoingChannel() string

	// ClaimOutgoing claims up to $limit unowned envelopes for a node and returns them with
	// row.ClaimedOutgoingColumns. Args: owner int32, excluded destinations (StringList), only the
	// destinations matching these LIKE patterns, escape character \ (StringList, empty = all),
	// limit int.
	ClaimOutgoing() string
	// LockOutgoing locks up to $limit unowned envelopes in the caller's transaction, skipping
	// rows other transactions hold, and returns them with row.ClaimedOutgoingColumns without
	// changing them. Args: excluded destinations (StringList), only the destinations matching
	// these LIKE patterns, escape character \ (StringList, empty = all), limit int.
	LockOutgoing() string
	// LockOutgoingByID is LockOutgoing restricted to a list of ids, without a limit. Args:
	// IDList, excluded destinations (StringList), only patterns (StringList).
	LockOutgoingByID() string
	// DeleteOutgoing deletes envelopes by id. Args: IDList.
	DeleteOutgoing() string
	// ReleaseOutgoingFailed hands envelopes back (owner 0) counting one more attempt; only
	// rows still owned by the node are touched. Args: IDList, owner int32.
	ReleaseOutgoingFailed() string
	// ReleaseOutgoing hands envelopes back (owner 0) without counting an attempt.
	// Args: IDList, owner int32 (only rows still owned by it are released).
	ReleaseOutgoing() string
	// DeadLetterOutgoing moves envelopes to the dead letters. Args: DeadLetterArgs (six
	// values). Values too long for a narrow dead-letter column are truncated and the
	// explanation says so.
	DeadLetterOutgoing() string

	// MaxParams is the most bind parameters one statement may carry (65535 on PostgreSQL,
	// 2098 on SQL Server: 2100 per request, less sp_executesql's own two).
	MaxParams() int
	// IsMissingTable reports whether err says that a table or the schema does not exist
	// (PostgreSQL SQLSTATE 42P01 / 3F000; SQL Server errors 208, 2812, 2715): the tables were
	// not created (schema.Migrate).
	IsMissingTable(err error) bool
	// IsStatementError reports whether err is the database's answer that a statement failed
	// (so an autocommit statement changed nothing); false for errors after which the
	// statement may have run and committed unseen: a lost connection, a timeout or a
	// cancellation while it was on the wire.
	IsStatementError(err error) bool
	// InsertIncoming inserts n envelopes bound with row.IncomingArgs, one after another;
	// an envelope whose id exists already is skipped.
	InsertIncoming(n int) string
	// InsertEnvelopes inserts, in one statement, outgoing envelopes bound with
	// row.OutgoingArgs followed by incoming envelopes bound with row.IncomingArgs (either
	// count may be 0, not both), skipping ids that exist already. When notify is true and
	// the dialect can, it also notifies OutgoingChannel if an outgoing envelope was
	// inserted; the notification is delivered when the transaction commits.
	InsertEnvelopes(outgoing, incoming int, notify bool) string
	// ReleaseDueScheduledSends deletes up to $1 due scheduled sends (incoming rows with
	// status Scheduled, owner 0, message_type scheduled-envelope, execution_time <= now), skipping
	// rows locked by others, and returns them with row.IncomingColumns. Run it in a
	// transaction that also inserts the unwrapped envelopes (row.UnwrapScheduled) into the
	// outgoing table. Args: limit int.
	ReleaseDueScheduledSends() string

	// ListenOutgoing subscribes the connection it runs on to OutgoingChannel
	// (Caps.Notifications only). Args: none.
	ListenOutgoing() string
	// AdvisoryLockKey is the bind value of a Jasper lock id (a node id or one of the
	// jasperid lock ids), as Jasper passes it: on PostgreSQL the int32 sign-extended to
	// bigint; on SQL Server the applock resource name, the decimal int32 ("-1167534268").
	AdvisoryLockKey(id int32) any
	// TryAdvisoryLock takes a session-level advisory lock without waiting and returns one
	// boolean row: true when taken (re-entrant within one session). SQL Server:
	// sp_getapplock @LockOwner = 'Session'. Args: AdvisoryLockKey.
	TryAdvisoryLock() string
	// HoldsAdvisoryLock returns one boolean row: whether the session it runs on holds the
	// session-level advisory lock. Args: AdvisoryLockKey.
	HoldsAdvisoryLock() string
	// ReleaseAdvisoryLock releases one level of a session-level advisory lock held by the
	// session it runs on and returns one boolean row (false when it was not held).
	// Args: AdvisoryLockKey.
	ReleaseAdvisoryLock() string
	// SessionID returns one bigint row: the id of the database session the statement runs
	// on (pg_backend_pid(), @@SPID). Args: none.
	SessionID() string

	// Subscriber statements (incoming envelopes of a topic: received_at = topic).

	// IncomingChannel is the LISTEN channel of this schema's incoming table (Caps.Notifications);
	// the notification payload is the topic (received_at) that has new envelopes.
	IncomingChannel() string
	// ListenIncoming subscribes the connection it runs on to IncomingChannel. Args: none.
	ListenIncoming() string
	// EmitOutgoing writes each content as a transactional logical decoding message with
	// prefix $1, in order, when slot $2 exists in the current database and can be read, and
	// returns how many it wrote (0: none, the slot is missing or unusable). "" when the
	// database has no logical decoding messages. Args: prefix string, slot string, contents
	// [][]byte.
	EmitOutgoing() string
	// NotifyIncoming notifies IncomingChannel (delivered when the transaction commits).
	// Args: topic string.
	NotifyIncoming() string
	// ClaimIncoming claims up to $3 unowned envelopes with status Incoming of one topic for
	// a node, skipping rows locked by others, and returns them with row.IncomingColumns.
	// Args: owner int32, topic string, limit int.
	ClaimIncoming() string
	// DeleteIncoming deletes incoming envelopes by id (acknowledged), except rows an inbox
	// marked Handled in the handler's transaction (they are its dedup record). Args: IDList.
	DeleteIncoming() string
	// RetryIncoming counts one more attempt on envelopes still owned by a node and hands
	// them back for a retry after a delay, as Jasper's scheduled retry does: status
	// Scheduled, execution_time = now + delay, owner 0 (ReleaseScheduled makes them
	// Incoming again when due). A delay <= 0 makes them Incoming at once.
	// Args: IDList, delay milliseconds int64, owner int32.
	RetryIncoming() string
	// ReleaseIncoming hands envelopes still owned by a node back (owner 0); those also
	// listed in the second list count one more attempt (they were delivered but not
	// acknowledged). Args: IDList, IDList, owner int32.
	ReleaseIncoming() string
	// ReleaseScheduled makes up to $2 due scheduled envelopes (status Scheduled, owner 0,
	// execution_time <= now, not a scheduled send: see ReleaseDueScheduledSends) Incoming
	// and unowned, skipping rows locked by others, and returns one row: the number released
	// (bigint), the milliseconds until the next of the remaining Scheduled rows of the
	// topics is due, scheduled sends included (float8, NULL when none), measured on the
	// database clock, and the topics of the released envelopes (text holding a JSON array;
	// NULL when the dialect does not tell).
	// Args: topics StringList (empty = every topic), limit int.
	ReleaseScheduled() string
	// DeadLetterIncoming moves incoming envelopes to the dead letters. Args: DeadLetterArgs
	// (six values).
	DeadLetterIncoming() string

	// Inbox and dead-letter middleware statements (package middleware).

	// InsertHandled records that an inbox consumer handled a message: it inserts one incoming
	// envelope bound with row.IncomingArgs (status Handled) followed by the retention in
	// milliseconds (int64; keep_until = now + retention), and does nothing when the id
	// exists. Affected rows: 1 recorded, 0 recorded before (a duplicate). A concurrent
	// insert of the same id waits for the first transaction and then does nothing.
	InsertHandled() string
	// MarkIncomingHandled marks the incoming envelope a subscriber delivered as handled by
	// an inbox: status Handled, keep_until = now + $3 milliseconds, owner 0, body emptied,
	// only when id = $1, received_at = $2 and status is Incoming. Affected rows: 1 marked,
	// 0 not (the row is gone, another delivery marked it, or it is not Incoming).
	// Args: id, topic string, retention milliseconds int64.
	MarkIncomingHandled() string
	// IncomingStatus returns the status of one incoming envelope of a topic (no row: none).
	// Args: id, topic string.
	IncomingStatus() string
	// DeleteExpiredHandled deletes up to $1 Handled envelopes whose keep_until has passed,
	// skipping rows locked by others. Affected rows: the number deleted. Args: limit int.
	DeleteExpiredHandled() string
	// InsertDeadLetter writes one dead letter: an envelope bound with row.IncomingArgs
	// (received_at = the topic, attempts = the attempts made), then explanation,
	// exception_type, exception_message, exception_text, source. A dead letter with the same
	// id is replaced (the message failed again).
	InsertDeadLetter() string
	// Savepoint, RollbackToSavepoint and ReleaseSavepoint manage one savepoint of a fixed
	// name inside a transaction (one attempt of a handler). Args: none. ReleaseSavepoint only
	// with Caps.SavepointRelease.
	Savepoint() string
	RollbackToSavepoint() string
	ReleaseSavepoint() string
	// DeleteHandledMark deletes one Handled incoming envelope: an inbox withdrawing the mark
	// it wrote in the same transaction. Args: id.
	DeleteHandledMark() string

	// Durability agent statements (package durability), in dialect_durability.go.
	DurabilityStatements
	// Admin returns the administration statements (package admin), in admin.go.
	Admin() *AdminStatements
	// DDL and catalog statements (package schema), in ddl.go.
	DDL
}

// Values renders n rows of width placeholders, numbered from first, each written by mark
// ("$%d" on PostgreSQL, "@p%d" on SQL Server).
func Values(mark string, first, n, width int) string {
	var b strings.Builder
	arg := first
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := 0; j < width; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, mark, arg)
			arg++
		}
		b.WriteByte(')')
	}
	return b.String()
}
