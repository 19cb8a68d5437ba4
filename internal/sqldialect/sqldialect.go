// Package sqldialect holds every runtime SQL statement of watermill-jasper, one file per
// dialect (postgres.go, sqlserver.go). Statements are built once per schema from validated
// identifiers; every value is a bound parameter. DDL lives in package schema.
package sqldialect

import (
	"fmt"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Dialect is the SQL of one database for one schema.
type Dialect interface {
	Name() database.Dialect
	Schema() schema.Config
	// UUIDs converts UUID values for this driver.
	UUIDs() row.UUIDCodec
	// IDList is the bind value for a list of envelope ids (uuid[] on PostgreSQL).
	IDList(ids []uuid.UUID) any
	// StringList is the bind value for a list of strings (text[] on PostgreSQL).
	StringList(s []string) any

	// InsertOutgoing inserts n envelopes bound with row.OutgoingArgs, one after another;
	// an envelope whose id exists already is skipped (idempotent re-publish).
	InsertOutgoing(n int) string
	// NotifyOutgoing wakes forwarders after commit: args (none). "" when the dialect cannot.
	NotifyOutgoing() string
	// OutgoingChannel is the LISTEN channel of this schema's outgoing table ("" if none).
	OutgoingChannel() string

	// ClaimOutgoing claims up to $limit unowned envelopes for a node and returns them with
	// row.OutgoingColumns. Args: owner int32, excluded destinations (StringList), only these
	// destinations (StringList, empty = all), limit int.
	ClaimOutgoing() string
	// DeleteOutgoing deletes envelopes by id. Args: IDList.
	DeleteOutgoing() string
	// ReleaseOutgoingFailed hands envelopes back (owner 0) counting one more attempt.
	// Args: IDList.
	ReleaseOutgoingFailed() string
	// ReleaseOutgoing hands envelopes back (owner 0) without counting an attempt.
	// Args: IDList, owner int32 (only rows still owned by it are released).
	ReleaseOutgoing() string
	// DeadLetterOutgoing moves envelopes to the dead letters. Args: IDList, then StringLists
	// of the same length: explanation, exception_type, exception_message, exception_text,
	// source.
	DeadLetterOutgoing() string
}

// For returns the dialect for a (normalized) schema config.
func For(cfg schema.Config) (Dialect, error) {
	cfg, err := cfg.Normalized()
	if err != nil {
		return nil, err
	}
	switch cfg.Dialect {
	case database.Postgres:
		return newPostgres(cfg), nil
	case database.SQLServer:
		return nil, fmt.Errorf("%w: the SQL Server runtime dialect is not implemented yet (schema tools work)", database.ErrUnsupported)
	}
	return nil, fmt.Errorf("%w: dialect %q", database.ErrUnsupported, cfg.Dialect)
}
