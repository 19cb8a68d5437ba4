package postgres_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
	"github.com/watermill-jasper/watermill-jasper/internal/store/storetest"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// Offline checks of every PostgreSQL statement (storetest.Statements: the runtime,
// durability, administration and DDL statements of sqlstore.Dialect): no database needed.

// offline returns the dialect of a schema whose name PostgreSQL folds to lower case.
func offline(t *testing.T, schemaName string) sqlstore.Dialect {
	t.Helper()
	cfg, err := layout.Config{Dialect: dbx.Postgres, Schema: schemaName}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	return postgres.Dialect(cfg)
}

// Every statement method of sqlstore.Dialect is among the checked statements.
func TestEveryStatementIsChecked(t *testing.T) {
	storetest.CheckCoverage(t)
}

func TestPlaceholdersMatchDocumentedArgs(t *testing.T) {
	storetest.CheckPlaceholders(t, offline(t, "wj_Offline"), regexp.MustCompile(`\$(\d+)`))
}

// Tables are schema-qualified and double-quoted, and no statement holds SQL Server syntax.
func TestStatementsQualifiedAndQuoted(t *testing.T) {
	d := offline(t, "wj_Offline")
	storetest.CheckQualified(t, d)
	for _, st := range storetest.Statements(d) {
		bare := storetest.StripLiterals(st.SQL)
		for _, bad := range []string{"@p1", "TOP (", "READPAST", "OUTPUT ", "SYSDATETIMEOFFSET", "OPENJSON", "[wj_offline]"} {
			if strings.Contains(bare, bad) {
				t.Errorf("%s holds SQL Server syntax %q:\n%s", st.Name, bad, st.SQL)
			}
		}
	}
}

// Channel names stay within PostgreSQL's 63 bytes (pg_notify rejects longer ones, LISTEN
// truncates them), differ between the tables and between long schema names.
func TestChannelNames(t *testing.T) {
	long1, long2 := strings.Repeat("s", layout.MaxIdentifierLength), strings.Repeat("s", layout.MaxIdentifierLength-1)+"t"
	seen := map[string]string{}
	for _, name := range []string{"public", long1, long2} {
		d := offline(t, name)
		for _, ch := range []string{d.OutgoingChannel(), d.IncomingChannel()} {
			if len(ch) > 63 || ch == "" {
				t.Errorf("schema %s: channel %q of %d bytes", name, ch, len(ch))
			}
			if other, dup := seen[ch]; dup {
				t.Errorf("schemas %s and %s share channel %q", other, name, ch)
			}
			seen[ch] = name
		}
		if !strings.Contains(d.ListenOutgoing(), `"`+d.OutgoingChannel()+`"`) || !strings.Contains(d.ListenIncoming(), `"`+d.IncomingChannel()+`"`) {
			t.Errorf("schema %s: LISTEN statements %q, %q do not name the channels", name, d.ListenOutgoing(), d.ListenIncoming())
		}
	}
}

// UUIDs are bound as text and scanned into uuid.UUID (pgx reads both).
func TestUUIDCodec(t *testing.T) {
	d := offline(t, "public")
	id := uuid.New()
	if got := d.UUIDs().Arg(id); got != id.String() {
		t.Errorf("Arg = %#v, want %q", got, id.String())
	}
	var back uuid.UUID
	if dest, ok := d.UUIDs().Dest(&back).(*uuid.UUID); !ok || dest != &back {
		t.Errorf("Dest = %#v, want the *uuid.UUID itself", d.UUIDs().Dest(&back))
	}
}

// A server's error answer (the statement failed, nothing changed) is told from an error
// after which a statement may have run unseen; missing tables and columns by SQLSTATE.
func TestErrorClassification(t *testing.T) {
	storetest.CheckErrorClassification(t, offline(t, "public"), []storetest.ErrorCase{
		{Err: fmt.Errorf("claim: %w", &pgconn.PgError{Code: "40001"}), Statement: true},
		{Err: fmt.Errorf("claim: %w", &pgconn.PgError{Code: "42P01"}), Statement: true, Table: true},
		{Err: &pgconn.PgError{Code: "3F000"}, Statement: true, Table: true},
		{Err: fmt.Errorf("read: %w", &pgconn.PgError{Code: "42703"}), Statement: true, Column: true},
	})
}

// ReleaseOwner can use the partial owner index (WHERE owner_id <> 0) in a generic plan,
// which pgx's prepared statements get after five runs: "owner_id = $1" alone does not imply
// "owner_id <> 0", and the release of a dormant node's rows scanned the whole table.
func TestReleaseOwnerUsesTheOwnerIndexInGenericPlans(t *testing.T) {
	ctx := context.Background()
	_, cfg := testdb.Migrated(t)
	pool := testdb.Pool(t)
	inc := cfg.Qualified(layout.IncomingTable)
	// Many unowned rows and a few of node 7, as after a node died mid-batch.
	if _, err := pool.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (id, status, owner_id, attempts, body, message_type, received_at)
SELECT gen_random_uuid(), 'Incoming', CASE WHEN g <= 10 THEN 7 ELSE 0 END, 0, '\x00', 't', 'q' FROM generate_series(1, 20000) AS g`, inc)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE "+inc); err != nil {
		t.Fatal(err)
	}
	pooled, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The session's settings and prepared statement must not reach the pool's other users.
	conn := pooled.Hijack()
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SET plan_cache_mode = force_generic_plan"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "PREPARE wj_release_owner(int, int) AS "+postgres.Dialect(cfg).ReleaseOwner()); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, "EXPLAIN EXECUTE wj_release_owner(7, 100)")
	if err != nil {
		t.Fatal(err)
	}
	var plan strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan.WriteString(line + "\n")
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan.String(), "idx_jasper_incoming_envelopes_owner") {
		t.Errorf("the generic plan of ReleaseOwner does not use idx_jasper_incoming_envelopes_owner:\n%s", plan.String())
	}
}

// In Jasper2 compatibility the statements keep off Jasper's incoming table.
func TestJasper2Statements(t *testing.T) {
	cfg, err := layout.Config{Dialect: dbx.Postgres, Schema: "wj_offline", Compatibility: layout.Jasper2}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	storetest.CheckJasper2(t, postgres.Dialect(cfg))
}
