// Package admin is the Go API behind the storage and dead-letter commands of the
// watermill-jasper CLI and of the web dashboard (package dashboard): it counts the envelopes
// kept in the Jasper tables and reads the age of the oldest, releases every
// row's ownership, deletes every row, tells which nodes are alive, and lists, shows, replays
// and purges dead letters. It works on PostgreSQL and SQL Server through a database.Driver and
// holds no SQL: it calls the typed operations of the storage boundary (internal/store/store.go),
// whose statements live with each database's driver (internal/store/postgres,
// internal/store/sqlserver).
//
// Unlike Jasper's storage command, nothing here rebuilds the schema or deletes rows as a side
// effect: Counts only reads, ReleaseOwnership only updates owner_id, and only Clear deletes.
package admin

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ErrTablesMissing is wrapped by the errors of this package's functions when the schema or one
// of the three tables does not exist.
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

// resolve opens the store of cfg on db: the dialect defaults to the driver's, and a config
// naming another dialect is an error wrapping schema.ErrInvalidConfig.
func resolve(db database.Driver, cfg schema.Config) (store.Store, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil database driver; use database.FromPgx, database.FromStdSQL or sqlserver.FromStdSQL", schema.ErrInvalidConfig)
	}
	if cfg.Dialect == "" {
		cfg.Dialect = db.Dialect()
	} else if cfg.Dialect != db.Dialect() {
		return nil, fmt.Errorf("%w: config says dialect %s but the database is %s", schema.ErrInvalidConfig, cfg.Dialect, db.Dialect())
	}
	return db.Store(cfg)
}

// Counts reads how many envelopes the tables of cfg.Schema hold: incoming rows by status,
// outgoing rows by destination, dead letters, and incoming and outgoing rows by owner_id.
// All numbers come from one statement, so on PostgreSQL they are one consistent snapshot.
// When the tables do not exist the error wraps ErrTablesMissing.
func Counts(ctx context.Context, db database.Driver, cfg schema.Config) (RowCounts, error) {
	s, err := resolve(db, cfg)
	if err != nil {
		return RowCounts{}, err
	}
	sc, err := s.Counts(ctx)
	if err != nil {
		return RowCounts{}, wrap("count rows", s, err)
	}
	c := RowCounts{DeadLetters: sc.DeadLetters}
	for status, n := range sc.IncomingByStatus {
		c.Incoming = append(c.Incoming, StatusCount{Status: status, Rows: n})
	}
	for dest, n := range sc.OutgoingByDestination {
		c.Outgoing = append(c.Outgoing, DestinationCount{Destination: dest, Rows: n})
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
	for id, n := range sc.IncomingByOwner {
		owner(id).Incoming = n
	}
	for id, n := range sc.OutgoingByOwner {
		owner(id).Outgoing = n
	}
	for _, o := range owners {
		c.Owners = append(c.Owners, *o)
	}
	sort.Slice(c.Incoming, func(i, j int) bool { return c.Incoming[i].Status < c.Incoming[j].Status })
	sort.Slice(c.Outgoing, func(i, j int) bool { return c.Outgoing[i].Destination < c.Outgoing[j].Destination })
	sort.Slice(c.Owners, func(i, j int) bool { return c.Owners[i].OwnerID < c.Owners[j].OwnerID })
	return c, nil
}

// ReleaseOwnership sets owner_id back to AnyNode on every incoming and outgoing row, in one
// transaction, so that any node may claim them, and returns how many rows of each table it
// changed. Rows held by a node that is still running are released too, and that node may
// then handle or send them a second time: run it when no node is running, or to hand the
// rows of dead nodes back at once. When the tables do not exist the error wraps
// ErrTablesMissing.
func ReleaseOwnership(ctx context.Context, db database.Driver, cfg schema.Config) (incoming, outgoing int64, err error) {
	s, err := resolve(db, cfg)
	if err != nil {
		return 0, 0, err
	}
	err = s.InTx(ctx, func(ctx context.Context, tx store.Ops) error {
		var err error
		incoming, outgoing, err = tx.ReleaseAll(ctx)
		return err
	})
	if err != nil {
		return 0, 0, wrap("release ownership", s, err)
	}
	return incoming, outgoing, nil
}

// Clear deletes every row of the three tables (outgoing envelopes, incoming envelopes, dead
// letters) in one transaction and returns how many it deleted. It uses DELETE, not TRUNCATE,
// and never drops or recreates anything: the schema is left as it is. When the tables do not
// exist the error wraps ErrTablesMissing and nothing is deleted.
func Clear(ctx context.Context, db database.Driver, cfg schema.Config) (ClearResult, error) {
	s, err := resolve(db, cfg)
	if err != nil {
		return ClearResult{}, err
	}
	var c store.Cleared
	err = s.InTx(ctx, func(ctx context.Context, tx store.Ops) error {
		var err error
		c, err = tx.ClearAll(ctx)
		return err
	})
	if err != nil {
		return ClearResult{}, wrap("delete rows", s, err)
	}
	return ClearResult{Incoming: c.Incoming, Outgoing: c.Outgoing, DeadLetters: c.DeadLetters}, nil
}

// wrap names the operation and the schema; an error saying that a table or the schema does
// not exist (as the store's database classifies it) also wraps ErrTablesMissing.
func wrap(op string, s store.Store, err error) error {
	if s.IsMissingTable(err) {
		return fmt.Errorf("watermill-jasper: %s in schema %s: %w (%v)", op, s.Schema().Schema, ErrTablesMissing, err)
	}
	return fmt.Errorf("watermill-jasper: %s in schema %s: %w", op, s.Schema().Schema, err)
}

// AgeGroup is the number of rows of one incoming status and topic, or of one outgoing
// destination, and the time the oldest of them was written.
type AgeGroup struct {
	// Name is the status (incoming) or the destination (outgoing).
	Name string
	// Topic is the incoming rows' received_at ("" for outgoing rows).
	Topic string
	Rows  int64
	// Oldest is the earliest timestamp (extension column) of the group; nil when no row has
	// one.
	Oldest *time.Time
}

// RowAges is what Ages reads: the incoming rows by status and topic (sorted by status, then
// topic) and the outgoing rows by destination (sorted).
type RowAges struct {
	Incoming []AgeGroup
	Outgoing []AgeGroup
}

// Ages counts the incoming rows by status and topic and the outgoing rows by destination,
// with the oldest timestamp of each group, in one read-only statement. On a database Jasper
// created and not migrated yet (no timestamp column) the error says to migrate. When the
// tables do not exist the error wraps ErrTablesMissing.
func Ages(ctx context.Context, db database.Driver, cfg schema.Config) (RowAges, error) {
	s, err := resolve(db, cfg)
	if err != nil {
		return RowAges{}, err
	}
	a, err := s.Ages(ctx)
	if err != nil {
		return RowAges{}, wrapDL("read the oldest rows", s, err)
	}
	conv := func(gs []store.AgeGroup) []AgeGroup {
		out := make([]AgeGroup, len(gs))
		for i, g := range gs {
			out[i] = AgeGroup{Name: g.Name, Topic: g.Topic, Rows: g.Rows, Oldest: g.Oldest}
		}
		sort.Slice(out, func(i, j int) bool {
			if out[i].Name != out[j].Name {
				return out[i].Name < out[j].Name
			}
			return out[i].Topic < out[j].Topic
		})
		return out
	}
	return RowAges{Incoming: conv(a.Incoming), Outgoing: conv(a.Outgoing)}, nil
}
