package storetest

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
)

// Raw SQL of the suite: setting rows up and reading columns no operation returns. Every
// helper asks the store for its dialect (placeholders, the few dialect words) and its schema
// config (quoting); ids are bound as text and cast, so no driver-specific UUID value is needed.

// sqlserver reports whether the store is SQL Server's.
func (e *env) sqlserver() bool { return e.s.Dialect() == dbx.SQLServer }

// ph is the n-th placeholder.
func (e *env) ph(n int) string {
	if e.sqlserver() {
		return fmt.Sprintf("@p%d", n)
	}
	return fmt.Sprintf("$%d", n)
}

// idWhere is "id = <placeholder n cast to the UUID type>", bound with id.String().
func (e *env) idWhere(n int) string {
	typ := "uuid"
	if e.sqlserver() {
		typ = "uniqueidentifier"
	}
	return fmt.Sprintf("%s = CAST(%s AS %s)", e.cfg.QuoteIdent("id"), e.ph(n), typ)
}

// exec runs a statement on the pool, failing the case on error.
func (e *env) exec(query string, args ...any) int64 {
	e.t.Helper()
	n, err := e.s.DB().Exec(e.ctx, query, args...)
	if err != nil {
		e.t.Fatalf("%v\n%s", err, query)
	}
	return n
}

// set sets one column of the row id of table.
func (e *env) set(table, column string, id uuid.UUID, v any) {
	e.t.Helper()
	q := fmt.Sprintf("UPDATE %s SET %s = %s WHERE %s", e.cfg.Qualified(table), e.cfg.QuoteIdent(column), e.ph(1), e.idWhere(2))
	if n := e.exec(q, v, id.String()); n != 1 {
		e.t.Fatalf("set %s.%s of %s: %d rows", table, column, id, n)
	}
}

// dbNow is the database clock.
func (e *env) dbNow() time.Time {
	e.t.Helper()
	q := "SELECT now()"
	if e.sqlserver() {
		q = "SELECT SYSDATETIMEOFFSET()"
	}
	var now time.Time
	e.ok(dbx.QueryRow(e.ctx, e.s.DB(), q, nil, &now))
	return now
}

// incomingRow is what an incoming row holds beyond what a claim returns.
type incomingRow struct {
	Status        string
	Owner         int64
	Attempts      int64
	ExecutionTime sql.NullTime
	KeepUntil     sql.NullTime
	Body          []byte
}

// incoming reads the incoming row id; found is false when there is none.
func (e *env) incoming(id uuid.UUID) (r incomingRow, found bool) {
	e.t.Helper()
	cols := make([]string, 0, 6)
	for _, c := range []string{"status", "owner_id", "attempts", "execution_time", "keep_until", "body"} {
		cols = append(cols, e.cfg.QuoteIdent(c))
	}
	cols[2] = "COALESCE(" + cols[2] + ", 0)"
	q := fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(cols, ", "), e.cfg.Qualified(layout.IncomingTable), e.idWhere(1))
	err := dbx.QueryRow(e.ctx, e.s.DB(), q, []any{id.String()}, &r.Status, &r.Owner, &r.Attempts, &r.ExecutionTime, &r.KeepUntil, &r.Body)
	if errors.Is(err, dbx.ErrNoRows) {
		return r, false
	}
	e.ok(err)
	return r, true
}

// mustIncoming reads the incoming row id, failing when there is none.
func (e *env) mustIncoming(id uuid.UUID) incomingRow {
	e.t.Helper()
	r, found := e.incoming(id)
	if !found {
		e.t.Fatalf("no incoming row %s", id)
	}
	return r
}

// DDL the cases break the schema with.

// dropColumn drops a column (one without a default: SQL Server would refuse to drop the
// column its default constraint depends on).
func (e *env) dropColumn(table, column string) {
	e.t.Helper()
	e.exec(fmt.Sprintf("ALTER TABLE %s DROP COLUMN %s", e.cfg.Qualified(table), e.cfg.QuoteIdent(column)))
}

// dropIndex drops one of the layout's indexes.
func (e *env) dropIndex(ix layout.Index) {
	e.t.Helper()
	if e.sqlserver() {
		e.exec(fmt.Sprintf("DROP INDEX %s ON %s", e.cfg.QuoteIdent(ix.Name), e.cfg.Qualified(ix.Table)))
		return
	}
	e.exec("DROP INDEX " + e.cfg.Qualified(ix.Name))
}

// dropTable drops one of the layout's tables.
func (e *env) dropTable(table string) {
	e.t.Helper()
	e.exec("DROP TABLE " + e.cfg.Qualified(table))
}

// refuse makes table refuse rows whose column holds exactly bad (a CHECK constraint), so
// that a statement writing such a row fails on every database.
func (e *env) refuse(table, column, bad string) {
	e.t.Helper()
	e.exec(fmt.Sprintf("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s <> '%s')",
		e.cfg.Qualified(table), e.cfg.QuoteIdent("wj_test_refuse_"+column), e.cfg.QuoteIdent(column), bad))
}
