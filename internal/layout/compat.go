package layout

import (
	"fmt"
	"strings"
)

// Compatibility says who else writes and reads the tables of a schema.
type Compatibility string

const (
	// Standalone (the zero value): only this library's processes, and .NET Jasper nodes that
	// relay outgoing envelopes, use the schema. The incoming table holds this library's
	// durable local queues and inbox marks.
	Standalone Compatibility = ""
	// Jasper2 shares the schema with running .NET Jasper 2.0 nodes (docs/coexistence.md). Jasper
	// reads every row of its incoming table (status parsed with Enum.Parse, unowned rows
	// recovered whatever their queue), so this library's incoming rows (durable local queues,
	// inbox marks) live in GoIncomingTable, which Jasper never reads; outgoing destinations
	// must be URIs; the outbox and the dead letters stay shared.
	Jasper2 Compatibility = "jasper2"
)

// GoIncomingTable holds this library's incoming rows in Jasper2 compatibility: the columns,
// primary key and indexes of IncomingTable under a name Jasper does not know.
const GoIncomingTable = "watermill_incoming_envelopes"

// Validate reports an unknown compatibility.
func (c Compatibility) Validate() error {
	switch c {
	case Standalone, Jasper2:
		return nil
	}
	return fmt.Errorf("%w: compatibility %q is unknown; use %q (shared with .NET Jasper 2.0 nodes) or leave it empty", ErrInvalidConfig, string(c), string(Jasper2))
}

// IncomingTable is the table of this library's incoming rows: IncomingTable, or
// GoIncomingTable in Jasper2 compatibility.
func (c Config) IncomingTable() string {
	if c.Compatibility == Jasper2 {
		return GoIncomingTable
	}
	return IncomingTable
}

// Tables returns the tables of the schema in creation order: Jasper's three, then in Jasper2
// compatibility GoIncomingTable.
func (c Config) Tables() []Table {
	t := Tables()
	if c.Compatibility == Jasper2 {
		g := incomingTable
		g.Name = GoIncomingTable
		t = append(t, g)
	}
	return t
}

// Indexes returns the extension indexes of the schema: in Jasper2 compatibility those of the
// incoming table are on GoIncomingTable (named after it), since this library reads only that
// one.
func (c Config) Indexes() []Index {
	ix := Indexes()
	if c.Compatibility != Jasper2 {
		return ix
	}
	for i := range ix {
		if ix[i].Table == IncomingTable {
			ix[i].Table = GoIncomingTable
			ix[i].Name = strings.Replace(ix[i].Name, IncomingTable, GoIncomingTable, 1)
		}
	}
	return ix
}

// TableList is the names of the schema's tables (Tables) as a SQL list of string literals,
// ('a', 'b', ...), for catalog queries. The names are this package's constants.
func (c Config) TableList() string {
	names := make([]string, 0, 4)
	for _, t := range c.Tables() {
		names = append(names, "'"+t.Name+"'")
	}
	return "(" + strings.Join(names, ", ") + ")"
}
