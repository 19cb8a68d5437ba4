// Package logrepl reads the outbox from PostgreSQL's write-ahead log: the committed inserts
// into <schema>.jasper_outgoing_envelopes, through a logical replication slot and a
// publication, decoded with github.com/jackc/pglogrepl. It is the building block of the
// relay's logical-replication source (no polling statement while idle); it knows nothing of
// brokers or forwarders.
//
// # Objects
//
// Setup creates, when missing, a publication FOR TABLE <schema>.jasper_outgoing_envelopes
// WITH (publish = 'insert') and then a logical replication slot of plugin pgoutput; Drop
// drops them; List reports the slots of the database (active pid, restart_lsn,
// confirmed_flush_lsn, lag in bytes, wal_status and safe_wal_size) and the publications with
// their tables. They need wal_level = logical, a role with REPLICATION (or SUPERUSER) and,
// for the publication, the table's owner; every refusal is one line wrapping a sentinel
// error (ErrWALLevel, ErrNoReplicationRight, ErrTableMissing, ErrSlotMissing,
// ErrSlotInvalidated, ErrSlotInUse, ...) that callers test with errors.Is.
//
// A new slot streams the transactions that commit after its consistent point
// (SetupResult.ConsistentPoint). Rows that were already in the table, and everything the slot
// cannot see (before it existed, after it was invalidated), are the polling relay's.
//
// # Protocol
//
// Dial opens a replication connection (replication=database). Start checks the server, the
// table, the publication and the slot with two SQL statements, then sends
//
//	START_REPLICATION SLOT <slot> LOGICAL 0/0 (proto_version '1', publication_names '"<pub>"', binary 'true')
//
// (PostgreSQL 14 or later, for binary tuples that do not depend on DateStyle or
// bytea_output). Starting at 0/0 means the slot's confirmed_flush_lsn: PostgreSQL resends
// every transaction whose commit is not before it. With protocol version 1, pgoutput sends a
// transaction only once it committed, in commit order, as Begin, Relation (the table's
// columns, before the first change of a table and after its definition changed), Insert...,
// Commit; rolled-back transactions are never sent. The Reader decodes each Insert by column
// name from the Relation message (never by position) into a Row (internal/row's Envelope
// plus the extension column timestamp and any unknown column), and delivers the rows of
// each committed transaction together as a Tx, through Next, one transaction at a time and
// in commit order, with the transaction's commit LSN, end LSN and commit time. A transaction
// is held in memory until its commit arrives. The stream also asks for logical decoding
// messages (messages 'true'): the transactional ones with Config.MessagePrefix carry outgoing
// envelopes without a row (the table-less outbox, docs/relay-sources.md), decoded by
// row.DecodeEmitted into Tx.Emitted; other messages are skipped.
//
// Once streaming, the reader sends nothing but standby status updates: every
// Config.StatusInterval (10s), at once when the server asks for a reply (its keepalive), soon
// (50ms) after Confirm advanced, and on Flush and Close; Close then ends the stream with
// CopyDone and waits for the server's answer, so the last update is processed and the slot
// is free when it returns. It issues no SQL statement while idle. Only
// one reader can stream a slot at a time: PostgreSQL refuses a second START_REPLICATION with
// SQLSTATE 55006 (object_in_use), which Start returns as ErrSlotInUse; WaitForSlot retries
// START_REPLICATION on its connection until the slot is free, which is how a stand-by takes
// over within one interval of the active reader's backend ending.
//
// # The confirm contract
//
// The reader reports as flushed only what the caller confirmed: call Confirm(tx.EndLSN) after
// the transaction's rows were sent, the broker confirmed them and the delete of the rows
// committed. After a restart (a new connection, Start again) the slot resumes from its
// confirmed_flush_lsn and resends every transaction that was not confirmed: delivery is at
// least once and nothing is lost. Redelivered rows may have been deleted already, so the
// relay claims rows by primary key and skips those it cannot find. A confirmation can be
// lost when the reader dies before its next status update reached the server (a connection
// closed with unread data is reset, which may discard what the server had not read yet), or
// when PostgreSQL crashes before its next checkpoint (confirmed_flush_lsn lives in shared
// memory between checkpoints: after a crash the slot resumes at the last checkpoint's); all
// only cause redelivery. Decoding a value can fail (deliver_by = infinity): the row is still
// delivered, with Row.Err, so that the caller can leave it to the polling relay.
//
// When every transaction handed out is confirmed and none is being received, the reader
// reports the server's last sent position (from its keepalives and from the transactions it
// skips), so that a quiet outbox table does not hold back the WAL of the rest of the
// database.
//
// # Operations risks
//
// A slot retains all WAL from its restart_lsn, whether a reader consumes it or not: a relay
// that is down, stuck, or never confirms makes pg_wal grow until the disk is full and the
// primary stops. Set max_slot_wal_keep_size (PostgreSQL 13+) to bound it; a slot past it is
// invalidated (wal_status = 'lost', ErrSlotInvalidated): drop it, create it again, and let
// the polling relay send what it missed. Watch List's LagBytes and SafeWALSize, and drop
// slots that are no longer used (Drop): an abandoned slot is the classic way to fill a
// database server's disk. A slot also holds back the catalog xmin (vacuum of system
// catalogs) until confirmed. Creating a slot waits for the transactions running at that
// moment to end. Slot names are unique in the whole cluster; publications are per database.
// Slots are not copied to physical standbys before PostgreSQL 17 (failover slots): after a
// failover, create the slot anew and rely on the polling relay for the gap.
package logrepl
