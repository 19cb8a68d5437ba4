package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

func TestSchemaMigrateTwiceThenVerify(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	r := db(t, "", s, "schema", "migrate")
	assertSuccess(t, r)
	if r.stdout != fmt.Sprintf("schema %s (PostgreSQL) migrated: created 3 tables\n", s) {
		t.Errorf("first migrate: %q", r.stdout)
	}
	r = db(t, "", s, "schema", "migrate")
	assertSuccess(t, r)
	if r.stdout != fmt.Sprintf("schema %s (PostgreSQL) is up to date: nothing to do\n", s) {
		t.Errorf("second migrate: %q", r.stdout)
	}
	for _, extra := range [][]string{nil, {"--jasper-only"}} {
		r = db(t, "", s, append([]string{"schema", "verify"}, extra...)...)
		assertSuccess(t, r)
		if !strings.HasPrefix(r.stdout, "schema "+s+" matches ") || strings.Count(r.stdout, "\n") != 1 {
			t.Errorf("verify %v: %q", extra, r.stdout)
		}
	}
}

func TestSchemaMigrateCreatesTheSchema(t *testing.T) {
	t.Parallel()
	s := testdb.RandomName("wj_test_new_")
	t.Cleanup(func() {
		_, _ = testdb.Pool(t).Exec(context.Background(), fmt.Sprintf(`DROP SCHEMA IF EXISTS "%s" CASCADE`, s))
	})
	assertSuccess(t, db(t, "", s, "schema", "migrate"))
	assertSuccess(t, db(t, "", s, "schema", "verify"))
}

func TestSchemaScriptAppliedVerifies(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	// No connection is needed: the DSN points nowhere.
	r := cli(t, "", nil, "schema", "script", "--dialect", "postgres", "--schema", s, "--dsn", "postgres://nobody@127.0.0.1:1/none")
	assertSuccess(t, r)
	if _, err := testdb.Pool(t).Exec(context.Background(), r.stdout); err != nil {
		t.Fatalf("apply the script: %v", err)
	}
	assertSuccess(t, db(t, "", s, "schema", "verify"))
}

func TestSchemaScriptDialects(t *testing.T) {
	t.Parallel()
	want := func(args []string, fragments ...string) {
		t.Helper()
		r := cli(t, "", nil, append([]string{"schema", "script"}, args...)...)
		assertSuccess(t, r)
		for _, f := range fragments {
			if !strings.Contains(r.stdout, f) {
				t.Errorf("script %v lacks %q", args, f)
			}
		}
	}
	want(nil, `"public"."jasper_incoming_envelopes"`)                                                         // default DSN: PostgreSQL
	want([]string{"--dsn", "sqlserver://sa@127.0.0.1:1?database=x"}, "[dbo].[jasper_dead_letters]", "\nGO\n") // from the DSN
	want([]string{"--dialect", "sqlserver", "--schema", "Messaging"}, "[Messaging].[uspMarkIncomingOwnership]")
	want([]string{"--dialect", "postgresql", "--schema", "Messaging"}, `"messaging"."jasper_outgoing_envelopes"`)
	assertFailure(t, cli(t, "", nil, "schema", "script", "--dialect", "oracle"), 2, "--dialect")
	assertFailure(t, cli(t, "", nil, "schema", "script", "--dsn", "mysql://u:s3cret@h/db"), 2, `"mysql"`)
}

func TestSchemaVerifyReportsDroppedColumn(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	assertSuccess(t, db(t, "", s, "schema", "migrate"))
	if _, err := testdb.Pool(t).Exec(context.Background(), fmt.Sprintf(`ALTER TABLE "%s".%s DROP COLUMN saga_id`, s, schema.IncomingTable)); err != nil {
		t.Fatal(err)
	}
	r := db(t, "", s, "schema", "verify")
	assertFailure(t, r, 1, "schema "+s+" differs")
	if r.stdout != "missing column jasper_incoming_envelopes.saga_id\n" {
		t.Errorf("verify should print the one difference, got %q", r.stdout)
	}
	// migrate adds a missing column of Jasper's that is nullable (as Jasper's saga_id is).
	r = db(t, "", s, "schema", "migrate")
	assertSuccess(t, r)
	if want := fmt.Sprintf("schema %s (PostgreSQL) migrated: created 1 column\n", s); r.stdout != want {
		t.Errorf("migrate: got %q, want %q", r.stdout, want)
	}
	assertSuccess(t, db(t, "", s, "schema", "verify"))

	// A missing NOT NULL column of Jasper's cannot be added to rows that exist: migrate refuses
	// in one line naming it, and changes nothing.
	if _, err := testdb.Pool(t).Exec(context.Background(), fmt.Sprintf(`ALTER TABLE "%s".%s DROP COLUMN destination, DROP COLUMN headers`, s, schema.OutgoingTable)); err != nil {
		t.Fatal(err)
	}
	r = db(t, "", s, "schema", "migrate")
	assertFailure(t, r, 1, fmt.Sprintf(`table "%s"."jasper_outgoing_envelopes" lacks destination (NOT NULL`, s))
	r = db(t, "", s, "schema", "verify")
	assertFailure(t, r, 1, "schema "+s+" differs")
	if want := "missing column jasper_outgoing_envelopes.destination\nextension: missing column jasper_outgoing_envelopes.headers\n"; r.stdout != want {
		t.Errorf("after a refused migrate, verify: got %q, want %q (nothing added)", r.stdout, want)
	}
}

func TestBadSchemaName(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"x; drop table y", "", "1abc", strings.Repeat("a", 64)} {
		for _, args := range [][]string{{"schema", "migrate"}, {"schema", "verify"}, {"schema", "script"}, {"storage", "counts"}, {"storage", "clear", "--yes"}} {
			r := db(t, "", name, args...)
			assertFailure(t, r, 2, "--schema")
			if r.stdout != "" {
				t.Errorf("%v with schema %q printed %q", args, name, r.stdout)
			}
		}
	}
}

// --compatibility jasper2 creates this library's own incoming table beside Jasper's three
// (docs/coexistence.md) and verifies it; an unknown value is a usage error naming the flag.
func TestSchemaMigrateJasper2Compatibility(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	r := db(t, "", s, "schema", "migrate", "--compatibility", "jasper2")
	assertSuccess(t, r)
	if r.stdout != fmt.Sprintf("schema %s (PostgreSQL) migrated: created 4 tables\n", s) {
		t.Errorf("migrate --compatibility jasper2: %q", r.stdout)
	}
	assertSuccess(t, db(t, "", s, "schema", "verify", "--compatibility", "jasper2"))
	r = db(t, "", s, "schema", "migrate", "--compatibility", "jasper3")
	assertFailure(t, r, 2, "--compatibility")
}
