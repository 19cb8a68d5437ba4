package admin

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ReplicationSlot names the replication slot and publication of a schema's outbox, for the
// forwarder's logical-replication source (forwarder.LogicalReplication, docs/relay-sources.md).
// Empty names default to "wj_outbox_<schema>".
type ReplicationSlot struct {
	Slot, Publication string
}

// ReplicationStatus is what ReplicationSlots reports: wal_level, the logical slots of the
// database (active pid, positions, lag and retained WAL, wal_status, safe_wal_size) and the
// publications with their tables.
type ReplicationStatus = logrepl.Status

// ReplicationSetup is what CreateReplicationSlot created.
type ReplicationSetup = logrepl.SetupResult

// ReplicationDrop is what DropReplicationSlot dropped.
type ReplicationDrop = logrepl.DropResult

// Refusals of the replication functions (test them with errors.Is); every one is one line
// naming what to fix.
var (
	ErrWALLevel           = logrepl.ErrWALLevel
	ErrNoReplicationRight = logrepl.ErrNoReplicationRight
	ErrSlotMissing        = logrepl.ErrSlotMissing
	ErrSlotInvalidated    = logrepl.ErrSlotInvalidated
	ErrSlotInUse          = logrepl.ErrSlotInUse
)

// replicationConfig is the logrepl config of cfg's outbox and names.
func replicationConfig(cfg schema.Config, names ReplicationSlot) (logrepl.Config, error) {
	if cfg.Dialect != "" && cfg.Dialect != schema.Postgres {
		return logrepl.Config{}, fmt.Errorf("logical replication needs PostgreSQL; the schema is on %s", cfg.Dialect)
	}
	return logrepl.Config{Schema: cfg.Schema, Slot: names.Slot, Publication: names.Publication}.Normalized()
}

// withReplication runs fn on a replication connection to dsn (a role with REPLICATION).
func withReplication[T any](ctx context.Context, dsn string, fn func(c *pgconn.PgConn) (T, error)) (T, error) {
	var zero T
	conn, err := logrepl.Dial(ctx, dsn)
	if err != nil {
		return zero, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

// CreateReplicationSlot creates, when missing, the publication of cfg's outbox table
// (inserts only) and then the slot (plugin pgoutput), and checks what exists. dsn connects
// as a role with REPLICATION that owns the outbox table; the server needs wal_level =
// logical. Rows committed before the slot's consistent point are the polling path's.
func CreateReplicationSlot(ctx context.Context, dsn string, cfg schema.Config, names ReplicationSlot) (ReplicationSetup, error) {
	lc, err := replicationConfig(cfg, names)
	if err != nil {
		return ReplicationSetup{}, err
	}
	return withReplication(ctx, dsn, func(c *pgconn.PgConn) (ReplicationSetup, error) { return logrepl.Setup(ctx, c, lc) })
}

// DropReplicationSlot drops the slot and then the publication of cfg's outbox. A slot a
// relay streams is refused (ErrSlotInUse): stop the relays first.
func DropReplicationSlot(ctx context.Context, dsn string, cfg schema.Config, names ReplicationSlot) (ReplicationDrop, error) {
	lc, err := replicationConfig(cfg, names)
	if err != nil {
		return ReplicationDrop{}, err
	}
	return withReplication(ctx, dsn, func(c *pgconn.PgConn) (ReplicationDrop, error) { return logrepl.Drop(ctx, c, lc) })
}

// ReplicationSlots reports the logical slots and publications of dsn's database.
func ReplicationSlots(ctx context.Context, dsn string) (ReplicationStatus, error) {
	return withReplication(ctx, dsn, func(c *pgconn.PgConn) (ReplicationStatus, error) { return logrepl.List(ctx, c) })
}
