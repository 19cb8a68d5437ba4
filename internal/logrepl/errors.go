package logrepl

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors. Every refusal of this package wraps one of them (errors.Is) in a one-line
// message naming what to fix.
var (
	// ErrInvalidConfig: a slot, publication or schema name is not a plain identifier, or a
	// setting is out of range.
	ErrInvalidConfig = errors.New("logrepl: invalid config")
	// ErrWALLevel: the server's wal_level is not logical.
	ErrWALLevel = errors.New("logrepl: wal_level is not logical")
	// ErrServerVersion: the server is older than PostgreSQL 14 (pgoutput's binary mode).
	ErrServerVersion = errors.New("logrepl: PostgreSQL 14 or later is needed")
	// ErrNoReplicationRight: the role has neither REPLICATION nor SUPERUSER.
	ErrNoReplicationRight = errors.New("logrepl: the role lacks the REPLICATION attribute")
	// ErrNotReplicationConn: the connection was opened without replication=database.
	ErrNotReplicationConn = errors.New("logrepl: not a replication connection")
	// ErrTableMissing: the schema has no jasper_outgoing_envelopes table.
	ErrTableMissing = errors.New("logrepl: the outbox table does not exist")
	// ErrPublicationMissing: the publication does not exist.
	ErrPublicationMissing = errors.New("logrepl: the publication does not exist")
	// ErrPublicationMismatch: the publication exists but does not publish the inserts into
	// the outbox table.
	ErrPublicationMismatch = errors.New("logrepl: the publication does not publish the outbox inserts")
	// ErrSlotMissing: the replication slot does not exist (never created, or dropped).
	ErrSlotMissing = errors.New("logrepl: the replication slot does not exist")
	// ErrSlotInvalidated: the slot lost the WAL it needs (wal_status = 'lost', e.g. beyond
	// max_slot_wal_keep_size); it can never stream again and must be dropped and created
	// anew, the rows it missed being left to the polling relay.
	ErrSlotInvalidated = errors.New("logrepl: the replication slot was invalidated")
	// ErrSlotMismatch: a slot of that name exists but is not a pgoutput logical slot of this
	// database.
	ErrSlotMismatch = errors.New("logrepl: the replication slot is not a pgoutput slot of this database")
	// ErrSlotInUse: another process streams from the slot (PostgreSQL lets one reader hold a
	// slot at a time; SQLSTATE 55006 object_in_use).
	ErrSlotInUse = errors.New("logrepl: the replication slot is in use")
	// ErrClosed is returned by Next after Close.
	ErrClosed = errors.New("logrepl: reader closed")
)

// SQLSTATE codes this package maps.
const (
	codeObjectInUse         = "55006"
	codeNotInPrereqState    = "55000"
	codeUndefinedObject     = "42704"
	codeDuplicateObject     = "42710"
	codeInsufficientPriv    = "42501"
	codeSyntaxError         = "42601"
	codeFeatureNotSupported = "0A000"
)

func pgError(err error) (*pgconn.PgError, bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe, true
	}
	return nil, false
}

// oneLine keeps the first line of a server message.
func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

// mapStartError maps the error of START_REPLICATION (or of a slot function) to a sentinel.
func mapStartError(err error, cfg Config) error {
	pe, ok := pgError(err)
	if !ok {
		return fmt.Errorf("logrepl: start replication on slot %s: %w", cfg.Slot, err)
	}
	msg := oneLine(pe.Message)
	switch {
	case pe.Code == codeObjectInUse:
		return fmt.Errorf("%w: %s (only one reader holds a slot: wait for it to end, e.g. WaitForSlot, or end it with pg_terminate_backend)", ErrSlotInUse, msg)
	case pe.Code == codeUndefinedObject && strings.Contains(msg, "replication slot"):
		return slotMissing(cfg)
	case pe.Code == codeUndefinedObject && strings.Contains(msg, "publication"):
		return fmt.Errorf("%w: %s: create publication %s with watermill-jasper slot create (or admin.CreateReplicationSlot)", ErrPublicationMissing, msg, cfg.Publication)
	case strings.Contains(msg, "wal_level"):
		return fmt.Errorf("%w: %s: set wal_level = logical in postgresql.conf and restart PostgreSQL", ErrWALLevel, msg)
	case pe.Code == codeNotInPrereqState && (strings.Contains(msg, "invalidated") || strings.Contains(msg, "no longer get changes")):
		return slotInvalidated(cfg)
	case pe.Code == codeSyntaxError || pe.Code == codeFeatureNotSupported:
		return fmt.Errorf("%w: the server answered %q: open the connection with replication=database in the DSN (Dial does)", ErrNotReplicationConn, msg)
	case pe.Code == codeInsufficientPriv:
		return fmt.Errorf("%w: %s: ALTER ROLE <role> REPLICATION", ErrNoReplicationRight, msg)
	}
	return fmt.Errorf("logrepl: start replication on slot %s: %w", cfg.Slot, err)
}

func slotMissing(cfg Config) error {
	return fmt.Errorf("%w: replication slot %s does not exist (never created, or dropped): create it with watermill-jasper slot create (or admin.CreateReplicationSlot); meanwhile the polling path relays the outbox", ErrSlotMissing, cfg.Slot)
}

func slotInvalidated(cfg Config) error {
	return fmt.Errorf("%w: replication slot %s lost the WAL it needs (wal_status = 'lost', past max_slot_wal_keep_size): drop it and create it again, and let the polling relay send what it missed", ErrSlotInvalidated, cfg.Slot)
}

func walLevel(level string) error {
	return fmt.Errorf("%w: wal_level is %q: set wal_level = logical in postgresql.conf and restart PostgreSQL", ErrWALLevel, level)
}

func noReplicationRight(role string) error {
	return fmt.Errorf("%w: role %q may not use replication slots: ALTER ROLE %s REPLICATION (or connect as a role that has it)", ErrNoReplicationRight, role, quoteIdent(role))
}
