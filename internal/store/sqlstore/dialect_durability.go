package sqlstore

// DurabilityStatements are the statements of the durability agent (package durability) and
// of the liveness checks of owners. They are part of Dialect; they live in a file of their
// own so that the agent's SQL reads in one place.
type DurabilityStatements interface {
	// TryAdvisoryXactLock takes a transaction-level advisory lock without waiting and returns
	// one boolean row: true when taken. The lock ends with the transaction (SQL Server:
	// sp_getapplock @LockOwner = 'Transaction'; run it inside a transaction). It conflicts with
	// a session-level lock of the same key, so it fails while a live node (Go or .NET) holds
	// its node lock, or while a .NET Jasper agent holds a global job lock (its
	// TryGetGlobalLock is session-level on PostgreSQL). Args: AdvisoryLockKey.
	TryAdvisoryXactLock() string

	// OtherOwners returns the distinct owner_id values of the incoming and outgoing tables
	// other than 0 and $1, one int column. On the outgoing table it skips through the owner
	// index (a few index probes per owner, whatever the backlog). Args: owner int32.
	OtherOwners() string

	// ReleaseOwner hands back up to $2 incoming and up to $2 outgoing envelopes held by owner
	// $1 (owner_id = 0), skipping rows locked by others, and returns one row: the incoming
	// envelopes released (bigint), the outgoing envelopes released (bigint) and the distinct
	// received_at of the incoming ones (text holding a JSON array of strings, readable by
	// every driver; for notifying their subscribers).
	// Args: owner int32, limit int.
	ReleaseOwner() string

	// UnownedEnvelopes returns one row: whether an outgoing envelope has owner 0 (boolean)
	// and the topics (received_at; text holding a JSON array of strings) that have Incoming
	// envelopes with owner 0. It
	// probes indexes only (one probe per topic). Args: none.
	UnownedEnvelopes() string

	// DeleteExpiredOutgoing deletes up to $1 unowned outgoing envelopes whose deliver_by has
	// passed, skipping rows locked by others. Affected rows: the number deleted.
	// Args: limit int.
	DeleteExpiredOutgoing() string

	// StorageGauges returns one row sampling the tables: incoming envelopes with status
	// Incoming, Scheduled, Handled, outgoing envelopes, dead letters (bigint each), the age in
	// seconds of the oldest outgoing envelope by its timestamp column (float8, NULL when there
	// is none), and the envelopes of both tables owned by a node whose lock no session holds
	// (bigint). Args: none.
	StorageGauges() string

	// OwnersAlive returns, for each owner id of $1, one row: the id (int) and whether a
	// session holds its node lock (boolean). It never takes a lock (PostgreSQL reads
	// pg_locks; SQL Server asks APPLOCK_TEST). Args: OwnerList.
	OwnersAlive() string
}
