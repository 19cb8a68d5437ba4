// Package admin is the Go API behind the storage commands of the watermill-jasper CLI: it
// counts the envelopes kept in the Jasper tables, releases every row's ownership and deletes
// every row. It works on PostgreSQL and SQL Server through a database.DB; the SQL of each
// dialect lives in one file (postgres.go, sqlserver.go), table names come only from
// schema.Config.Qualified and every value is a bound parameter.
//
// Unlike Jasper's storage command, nothing here rebuilds the schema or deletes rows as a side
// effect: Counts only reads, ReleaseOwnership only updates owner_id, and only Clear deletes.
package admin

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ErrTablesMissing is wrapped by the errors of Counts, ReleaseOwnership and Clear when the
// schema or one of the three tables does not exist.
var ErrTablesMissing = errors.New("the watermill-jasper tables do not exist; create them with `watermill-jasper schema migrate`")

// AnyNode is the owner_id of a row no node holds (Jasper's TransportConstants.AnyNode).
const AnyNode = 0

// StatusCount is the number of incoming envelopes with one status.
type StatusCount struct {
	Status string
	Rows   int64
}

// DestinationCount is the number of outgoing envelopes for one destination.
type DestinationCount struct {
	Destination string
	Rows        int64
}

// OwnerCount is the number of incoming and outgoing envelopes held by one owner_id
// (AnyNode for rows no node holds).
type OwnerCount struct {
	OwnerID  int32
	Incoming int64
	Outgoing int64
}

// RowCounts describes what the tables of one schema hold. Every slice is sorted (statuses and
// destinations by name, owners by id) and lists only values that occur in the rows.
type RowCounts struct {
	// Incoming is the number of rows of jasper_incoming_envelopes by status.
	Incoming []StatusCount
	// Outgoing is the number of rows of jasper_outgoing_envelopes by destination.
	Outgoing []DestinationCount
	// DeadLetters is the number of rows of jasper_dead_letters.
	DeadLetters int64
	// Owners is the number of incoming and outgoing rows by owner_id.
	Owners []OwnerCount
}

// IncomingStatus returns the number of incoming rows with the given status.
func (c RowCounts) IncomingStatus(status string) int64 {
	for _, s := range c.Incoming {
		if s.Status == status {
			return s.Rows
		}
	}
	return 0
}

// IncomingTotal returns the number of rows of jasper_incoming_envelopes.
func (c RowCounts) IncomingTotal() int64 {
	var n int64
	for _, s := range c.Incoming {
		n += s.Rows
	}
	return n
}

// OutgoingTotal returns the number of rows of jasper_outgoing_envelopes.
func (c RowCounts) OutgoingTotal() int64 {
	var n int64
	for _, d := range c.Outgoing {
		n += d.Rows
	}
	return n
}

// Total returns the number of rows of the three tables.
func (c RowCounts) Total() int64 { return c.IncomingTotal() + c.OutgoingTotal() + c.DeadLetters }

// ClearResult is the number of rows Clear deleted from each table.
type ClearResult struct {
	Incoming    int64
	Outgoing    int64
	DeadLetters int64
}

// Total returns the number of rows deleted from the three tables.
func (r ClearResult) Total() int64 { return r.Incoming + r.Outgoing + r.DeadLetters }

// Kinds of rows returned by the counts statement (its first column).
const (
	kindIncomingStatus = 1
	kindOutgoingDest   = 2
	kindDeadLetters    = 3
	kindIncomingOwner  = 4
	kindOutgoingOwner  = 5
)

// statements is the SQL of one dialect for one schema (postgres.go, sqlserver.go).
type statements struct {
	// counts returns (kind, name, owner_id, rows) rows; see the kind constants.
	counts string
	// releaseIncoming and releaseOutgoing set owner_id to the first parameter on every row
	// whose owner_id differs from it.
	releaseIncoming string
	releaseOutgoing string
	// clear deletes every row, in this order: outgoing, incoming, dead letters (Jasper 2.0's).
	clearOutgoing    string
	clearIncoming    string
	clearDeadLetters string
}

func statementsFor(cfg schema.Config) statements {
	if cfg.Dialect == schema.SQLServer {
		return sqlserverStatements(cfg)
	}
	return postgresStatements(cfg)
}

// resolve checks the config against the handle: the dialect defaults to the handle's, and a
// config naming another dialect is an error.
func resolve(db database.DB, cfg schema.Config) (schema.Config, error) {
	if db == nil {
		return cfg, fmt.Errorf("%w: nil database handle", schema.ErrInvalidConfig)
	}
	if cfg.Dialect == "" {
		cfg.Dialect = db.Dialect()
	} else if cfg.Dialect != db.Dialect() {
		return cfg, fmt.Errorf("%w: config says dialect %s but the database is %s", schema.ErrInvalidConfig, cfg.Dialect, db.Dialect())
	}
	return cfg.Normalized()
}

// Counts reads how many envelopes the tables of cfg.Schema hold: incoming rows by status,
// outgoing rows by destination, dead letters, and incoming and outgoing rows by owner_id.
// All numbers come from one statement, so on PostgreSQL they are one consistent snapshot.
// When the tables do not exist the error wraps ErrTablesMissing.
func Counts(ctx context.Context, db database.DB, cfg schema.Config) (RowCounts, error) {
	var c RowCounts
	cfg, err := resolve(db, cfg)
	if err != nil {
		return c, err
	}
	rows, err := db.Query(ctx, statementsFor(cfg).counts)
	if err != nil {
		return c, wrap("count rows", cfg, err)
	}
	owners := map[int32]*OwnerCount{}
	owner := func(id int32) *OwnerCount {
		o := owners[id]
		if o == nil {
			o = &OwnerCount{OwnerID: id}
			owners[id] = o
		}
		return o
	}
	for rows.Next() {
		var kind, ownerID, n int64
		var name string
		if err := rows.Scan(&kind, &name, &ownerID, &n); err != nil {
			_ = rows.Close()
			return c, wrap("count rows", cfg, err)
		}
		switch kind {
		case kindIncomingStatus:
			c.Incoming = append(c.Incoming, StatusCount{Status: name, Rows: n})
		case kindOutgoingDest:
			c.Outgoing = append(c.Outgoing, DestinationCount{Destination: name, Rows: n})
		case kindDeadLetters:
			c.DeadLetters = n
		case kindIncomingOwner:
			owner(int32(ownerID)).Incoming = n
		case kindOutgoingOwner:
			owner(int32(ownerID)).Outgoing = n
		}
	}
	if err := rows.Close(); err != nil {
		return RowCounts{}, wrap("count rows", cfg, err)
	}
	sort.Slice(c.Incoming, func(i, j int) bool { return c.Incoming[i].Status < c.Incoming[j].Status })
	sort.Slice(c.Outgoing, func(i, j int) bool { return c.Outgoing[i].Destination < c.Outgoing[j].Destination })
	for _, o := range owners {
		c.Owners = append(c.Owners, *o)
	}
	sort.Slice(c.Owners, func(i, j int) bool { return c.Owners[i].OwnerID < c.Owners[j].OwnerID })
	return c, nil
}

// ReleaseOwnership sets owner_id back to AnyNode on every incoming and outgoing row, in one
// transaction, so that any node may claim them, and returns how many rows of each table it
// changed. Rows held by a node that is still running are released too, and that node may
// then handle or send them a second time: run it when no node is running, or to hand the
// rows of dead nodes back at once. When the tables do not exist the error wraps
// ErrTablesMissing.
func ReleaseOwnership(ctx context.Context, db database.DB, cfg schema.Config) (incoming, outgoing int64, err error) {
	cfg, err = resolve(db, cfg)
	if err != nil {
		return 0, 0, err
	}
	st := statementsFor(cfg)
	err = database.InTx(ctx, db, func(tx database.Tx) error {
		var err error
		if incoming, err = tx.Exec(ctx, st.releaseIncoming, AnyNode); err != nil {
			return err
		}
		outgoing, err = tx.Exec(ctx, st.releaseOutgoing, AnyNode)
		return err
	})
	if err != nil {
		return 0, 0, wrap("release ownership", cfg, err)
	}
	return incoming, outgoing, nil
}

// Clear deletes every row of the three tables (outgoing envelopes, incoming envelopes, dead
// letters) in one transaction and returns how many it deleted. It uses DELETE, not TRUNCATE,
// and never drops or recreates anything: the schema is left as it is. When the tables do not
// exist the error wraps ErrTablesMissing and nothing is deleted.
func Clear(ctx context.Context, db database.DB, cfg schema.Config) (ClearResult, error) {
	var r ClearResult
	cfg, err := resolve(db, cfg)
	if err != nil {
		return r, err
	}
	st := statementsFor(cfg)
	err = database.InTx(ctx, db, func(tx database.Tx) error {
		var err error
		if r.Outgoing, err = tx.Exec(ctx, st.clearOutgoing); err != nil {
			return err
		}
		if r.Incoming, err = tx.Exec(ctx, st.clearIncoming); err != nil {
			return err
		}
		r.DeadLetters, err = tx.Exec(ctx, st.clearDeadLetters)
		return err
	})
	if err != nil {
		return ClearResult{}, wrap("delete rows", cfg, err)
	}
	return r, nil
}

// PostgreSQL's undefined_table SQLSTATE and SQL Server's "Invalid object name" error number.
const (
	pgUndefinedTable       = "42P01"
	sqlserverInvalidObject = 208
)

// IsTableMissing reports whether err is the database saying that a table (or its schema)
// does not exist: SQLSTATE 42P01 on PostgreSQL, error 208 on SQL Server.
func IsTableMissing(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == pgUndefinedTable
	}
	var msErr interface{ SQLErrorNumber() int32 } // go-mssqldb's mssql.Error
	if errors.As(err, &msErr) {
		return msErr.SQLErrorNumber() == sqlserverInvalidObject
	}
	return false
}

func wrap(op string, cfg schema.Config, err error) error {
	if IsTableMissing(err) {
		return fmt.Errorf("watermill-jasper: %s in schema %s: %w (%v)", op, cfg.Schema, ErrTablesMissing, err)
	}
	return fmt.Errorf("watermill-jasper: %s in schema %s: %w", op, cfg.Schema, err)
}
