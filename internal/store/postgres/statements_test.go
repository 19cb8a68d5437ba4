package postgres_test

import (
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
