package storetest

import (
	"context"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// Schema management (Migrate, Catalog, Script, ColumnType) and error classification
// (IsMissingTable, IsMissingColumn, IsStatementError).

// catalog is Catalog, failing the case on error.
func (e *env) catalog() store.Catalog {
	e.t.Helper()
	return must(e.s.Catalog(e.ctx))
}

// catalogComplete checks that the live schema holds the whole layout: every table with its
// primary key and every column of the type and nullability ColumnType says, every index
// and, where the database has them, the table type and procedures.
func (e *env) catalogComplete(what string) {
	e.t.Helper()
	cat := e.catalog()
	for _, tb := range layout.Tables() {
		if !cat.PrimaryKeys[tb.Name] {
			e.t.Errorf("%s: %s has no primary key on id", what, tb.Name)
		}
		for _, c := range tb.Columns {
			got, ok := cat.Columns[tb.Name][c.Name]
			if want := (store.CatalogColumn{Type: e.s.ColumnType(c), Nullable: c.Nullable}); !ok || got != want {
				e.t.Errorf("%s: column %s.%s is %+v (present %v), want %+v", what, tb.Name, c.Name, got, ok, want)
			}
		}
	}
	for _, ix := range layout.Indexes() {
		if !cat.Indexes[strings.ToLower(ix.Name)] {
			e.t.Errorf("%s: index %s missing", what, ix.Name)
		}
	}
	if cat.HasObjects != e.sqlserver() {
		e.t.Errorf("%s: HasObjects = %v on %s", what, cat.HasObjects, e.s.Dialect())
	}
	for _, name := range append([]string{layout.EnvelopeIDList}, layout.StoredProcedures()...) {
		if cat.HasObjects && !cat.Objects[strings.ToLower(name)] {
			e.t.Errorf("%s: object %s missing", what, name)
		}
	}
}

// Migrate is idempotent, and restores what is missing of a schema without touching rows.
func testMigrate(e *env) {
	for range 2 {
		e.ok(e.s.Migrate(e.ctx))
	}
	e.catalogComplete("after migrating twice more")
	keep := outEnv("kept")
	e.out(keep)
	ix := layout.Indexes()[0]
	e.dropColumn(layout.DeadLetterTable, "message_uuid")
	e.dropIndex(ix)
	cat := e.catalog()
	if _, ok := cat.Columns[layout.DeadLetterTable]["message_uuid"]; ok || cat.Indexes[strings.ToLower(ix.Name)] {
		e.t.Fatal("the catalog still shows a dropped column or index")
	}
	e.ok(e.s.Migrate(e.ctx))
	e.catalogComplete("after migrating a schema missing a column and an index")
	e.claimedIDs("rows after the migration", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 1, Limit: 10}), 1, keep)
}

// The catalog of a migrated schema is complete; a dropped table leaves the catalog.
func testCatalog(e *env) {
	e.catalogComplete("migrated schema")
	e.dropTable(layout.DeadLetterTable)
	cat := e.catalog()
	if _, ok := cat.Columns[layout.DeadLetterTable]; ok || cat.PrimaryKeys[layout.DeadLetterTable] {
		e.t.Errorf("catalog after dropping %s: %v, primary key %v", layout.DeadLetterTable, cat.Columns[layout.DeadLetterTable], cat.PrimaryKeys[layout.DeadLetterTable])
	}
	if _, ok := cat.Columns[layout.IncomingTable]; !ok {
		e.t.Errorf("catalog after dropping %s lost %s", layout.DeadLetterTable, layout.IncomingTable)
	}
}

// The script's statements run, one by one, on a migrated schema (they are idempotent) and
// restore what is missing.
func testScript(e *env) {
	stmts := e.s.Script()
	if len(stmts) < len(layout.Tables())+len(layout.Indexes()) || strings.TrimSpace(e.s.ScriptSeparator()) == "" {
		e.t.Fatalf("script of %d statements, separator %q", len(stmts), e.s.ScriptSeparator())
	}
	e.dropIndex(layout.Indexes()[1])
	for _, st := range stmts {
		e.exec(st)
	}
	e.catalogComplete("after running the script")
}

// class is how a store classifies an error.
type class struct{ statement, table, column bool }

// classify checks that err is an error and how the store classifies it.
func (e *env) classify(what string, err error, want class) {
	e.t.Helper()
	if err == nil {
		e.t.Errorf("%s: no error", what)
		return
	}
	if got := (class{e.s.IsStatementError(err), e.s.IsMissingTable(err), e.s.IsMissingColumn(err)}); got != want {
		e.t.Errorf("%s (%v): classified %+v, want %+v", what, err, got, want)
	}
}

// Real failures are told apart: a missing column, a missing table, a syntax error (the
// database's answers) and a cancellation (after which a statement may have run unseen).
func testErrorClassification(e *env) {
	e.dropColumn(layout.DeadLetterTable, "message_uuid")
	_, _, err := e.s.GetDeadLetter(e.ctx, uuid.New())
	e.classify("a missing column", err, class{statement: true, column: true})
	e.dropTable(layout.DeadLetterTable)
	_, err = e.s.CountDeadLetters(e.ctx, store.Selection{}, 0)
	e.classify("a missing table", err, class{statement: true, table: true})
	e.dropTable(layout.IncomingTable)
	tx, _, err := e.s.BeginMarkHandled(e.ctx, store.MarkHandledParams{ID: uuid.New(), Topic: "t", Keep: time.Hour})
	if tx != nil {
		e.t.Error("BeginMarkHandled returned a transaction with its error")
		_ = tx.Rollback(e.ctx)
	}
	e.classify("BeginMarkHandled on a missing table", err, class{statement: true, table: true})
	_, err = e.s.DB().Exec(e.ctx, "SELEC 1")
	e.classify("a syntax error", err, class{statement: true})

	cancelled, cancel := context.WithCancel(e.ctx)
	cancel()
	_, err = e.s.Counts(cancelled)
	e.classify("a cancelled context", err, class{})

	// A statement waiting for a row lock when its context ends.
	o := outEnv("x")
	e.out(o)
	holder := e.begin()
	e.claimOut(holder.ops, store.ClaimOutgoingParams{Owner: 1, Limit: 1})
	waiting, cancel := context.WithTimeout(e.ctx, 200*time.Millisecond)
	defer cancel()
	e.classify("a statement cancelled while it waited", e.s.DeleteOutgoing(waiting, idsOf(o)), class{})
}
