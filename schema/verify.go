package schema

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/database"
)

// DifferenceKind classifies a Difference.
type DifferenceKind string

// Kinds of differences Verify reports.
const (
	MissingTable      DifferenceKind = "missing table"
	MissingColumn     DifferenceKind = "missing column"
	WrongType         DifferenceKind = "wrong type"
	WrongNullability  DifferenceKind = "wrong nullability"
	MissingPrimaryKey DifferenceKind = "missing primary key"
	MissingIndex      DifferenceKind = "missing index"
	MissingObject     DifferenceKind = "missing object"
)

// Difference is one way a live database differs from the expected layout.
type Difference struct {
	Kind   DifferenceKind
	Table  string // table, or "" for schema-level objects
	Column string // column, index or object name, when the difference is about one
	Want   string // expected type or nullability, when relevant
	Got    string // actual type or nullability, when relevant
	// Extension is true when the missing piece is one of this library's additive extensions
	// (Migrate adds it); false for a difference from Jasper's own layout.
	Extension bool
}

// String describes the difference on one line, e.g. "wrong type
// jasper_outgoing_envelopes.body: want bytea, got text", or "extension: missing column
// jasper_dead_letters.replayable" for a missing extension.
func (d Difference) String() string {
	var b strings.Builder
	if d.Extension {
		b.WriteString("extension: ")
	}
	b.WriteString(string(d.Kind))
	switch {
	case d.Table != "" && d.Column != "":
		fmt.Fprintf(&b, " %s.%s", d.Table, d.Column)
	case d.Table != "":
		fmt.Fprintf(&b, " %s", d.Table)
	case d.Column != "":
		fmt.Fprintf(&b, " %s", d.Column)
	}
	if d.Want != "" || d.Got != "" {
		fmt.Fprintf(&b, ": want %s, got %s", d.Want, d.Got)
	}
	return b.String()
}

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// JasperOnly checks only Jasper's own layout and ignores missing extensions.
	JasperOnly bool
}

// Verify compares the live database with the expected layout and returns every difference:
// missing tables and columns, wrong types and nullability, missing primary keys and, on SQL
// Server, a missing EnvelopeIdList type or procedure. Missing extension columns and indexes are
// reported as such (Difference.Extension). Columns the layout does not know are ignored. An
// empty result means the layout matches. SQL Server varchar columns wider than Jasper's are
// accepted. A database that lacks what this library needs (a SQL Server compatibility level
// below 130) is an error wrapping database.ErrUnsupported that says what to change.
func Verify(ctx context.Context, db database.Driver, cfg Config, opts VerifyOptions) ([]Difference, error) {
	st, err := storeOf(db, cfg)
	if err != nil {
		return nil, err
	}
	cat, err := st.Catalog(ctx)
	if err != nil {
		return nil, fmt.Errorf("watermill-jasper: verify schema %s: %w", st.Schema().Schema, err)
	}
	if len(cat.Unmet) > 0 {
		return nil, fmt.Errorf("watermill-jasper: verify schema %s: %w: %s", st.Schema().Schema, database.ErrUnsupported, strings.Join(cat.Unmet, "; "))
	}
	var diffs []Difference
	for _, t := range st.Schema().Tables() {
		live, ok := cat.Columns[t.Name]
		if !ok {
			diffs = append(diffs, Difference{Kind: MissingTable, Table: t.Name})
			continue
		}
		if !cat.PrimaryKeys[t.Name] {
			diffs = append(diffs, Difference{Kind: MissingPrimaryKey, Table: t.Name, Column: "id"})
		}
		for _, c := range t.Columns {
			if c.Extension && opts.JasperOnly {
				continue
			}
			lc, ok := live[c.Name]
			if !ok {
				diffs = append(diffs, Difference{Kind: MissingColumn, Table: t.Name, Column: c.Name, Extension: c.Extension})
				continue
			}
			if want := st.ColumnType(c); !typeMatches(want, lc.Type) {
				diffs = append(diffs, Difference{Kind: WrongType, Table: t.Name, Column: c.Name, Want: want, Got: lc.Type})
			}
			if lc.Nullable != c.Nullable {
				diffs = append(diffs, Difference{Kind: WrongNullability, Table: t.Name, Column: c.Name, Want: nullability(c.Nullable), Got: nullability(lc.Nullable)})
			}
		}
	}
	if cat.HasObjects {
		for _, name := range append([]string{EnvelopeIDList}, StoredProcedures()...) {
			if !cat.Objects[strings.ToLower(name)] {
				diffs = append(diffs, Difference{Kind: MissingObject, Column: name})
			}
		}
	}
	if !opts.JasperOnly {
		for _, ix := range st.Schema().Indexes() {
			if _, ok := cat.Columns[ix.Table]; ok && !cat.Indexes[strings.ToLower(ix.Name)] {
				diffs = append(diffs, Difference{Kind: MissingIndex, Table: ix.Table, Column: ix.Name, Extension: true})
			}
		}
	}
	return diffs, nil
}

func nullability(nullable bool) string {
	if nullable {
		return "NULL"
	}
	return "NOT NULL"
}

// typeMatches compares an expected and a live type; SQL Server varchar may be wider than Jasper's.
func typeMatches(want, got string) bool {
	if want == got {
		return true
	}
	var wn, gn int
	if _, err := fmt.Sscanf(want, "varchar:%d", &wn); err != nil {
		return false
	}
	if _, err := fmt.Sscanf(got, "varchar:%d", &gn); err != nil {
		return false
	}
	return gn == MaxLength || (wn != MaxLength && gn >= wn)
}

// ErrNotReady is wrapped by the error of Check when the tables, or columns this library needs,
// are missing or differ from the layout.
var ErrNotReady = errors.New("watermill-jasper: the Jasper tables are missing or incomplete")

// Check is the readiness check of the components (the runtime's Start, the subscriber):
// Verify, then an error wrapping ErrNotReady that names the differences (sorted) and how to
// create what is missing, or nil. A missing extension index is not an error (envelopes are
// found slower without it): those are returned for the caller to log.
func Check(ctx context.Context, db database.Driver, cfg Config) (missingIndexes []Difference, err error) {
	diffs, err := Verify(ctx, db, cfg, VerifyOptions{})
	if err != nil {
		return nil, err
	}
	var problems []string
	for _, d := range diffs {
		if d.Kind == MissingIndex {
			missingIndexes = append(missingIndexes, d)
			continue
		}
		problems = append(problems, d.String())
	}
	if len(problems) == 0 {
		return missingIndexes, nil
	}
	sort.Strings(problems)
	name := cfg.Schema
	if n, err := cfg.Normalized(); err == nil {
		name = n.Schema
	}
	return missingIndexes, fmt.Errorf("%w in schema %s (%s); create them with `watermill-jasper schema migrate --schema %s` or schema.Migrate (safe on a database Jasper created)",
		ErrNotReady, name, strings.Join(problems, "; "), name)
}
