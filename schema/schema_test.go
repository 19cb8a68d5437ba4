package schema_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

func TestSchemaNamesAreValidated(t *testing.T) {
	if err := schema.ValidateIdentifier(""); !errors.Is(err, schema.ErrInvalidConfig) || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty name: want a clear ErrInvalidConfig, got %v", err)
	}
	for _, name := range []string{"x; drop table y", strings.Repeat("a", 64), "1abc", `a"b`, "a-b", "ü"} {
		_, err := schema.Script(schema.Config{Schema: name})
		if !errors.Is(err, schema.ErrInvalidConfig) {
			t.Errorf("schema %q: want ErrInvalidConfig, got %v", name, err)
		}
		if err := schema.Migrate(context.Background(), database.FromPgx(testdb.Pool(t)), schema.Config{Schema: name}); !errors.Is(err, schema.ErrInvalidConfig) {
			t.Errorf("migrate %q: want ErrInvalidConfig, got %v", name, err)
		}
	}
	if err := schema.ValidateIdentifier(strings.Repeat("a", 63)); err != nil {
		t.Errorf("63-byte name refused: %v", err)
	}
	if s, err := schema.Script(schema.Config{}); err != nil || !strings.Contains(s, `"public"."jasper_incoming_envelopes"`) {
		t.Errorf("an unset schema defaults to public: %v", err)
	}
}

// Script is PostgreSQL's (SQL Server's is sqlserver.Script); Migrate and Verify take the
// dialect of their Driver and refuse a config naming another one, or no Driver.
func TestDialectComesFromTheDriver(t *testing.T) {
	ctx := context.Background()
	mssql := schema.Config{Dialect: schema.SQLServer}
	if _, err := schema.Script(mssql); !errors.Is(err, schema.ErrInvalidConfig) || !strings.Contains(err.Error(), "sqlserver.Script") {
		t.Errorf("Script of a SQL Server config: %v, want ErrInvalidConfig naming sqlserver.Script", err)
	}
	db := database.FromPgx(testdb.Pool(t))
	if err := schema.Migrate(ctx, db, mssql); !errors.Is(err, schema.ErrInvalidConfig) {
		t.Errorf("Migrate of a SQL Server config on PostgreSQL: %v, want ErrInvalidConfig", err)
	}
	if _, err := schema.Verify(ctx, db, mssql, schema.VerifyOptions{}); !errors.Is(err, schema.ErrInvalidConfig) {
		t.Errorf("Verify of a SQL Server config on PostgreSQL: %v, want ErrInvalidConfig", err)
	}
	if err := schema.Migrate(ctx, nil, schema.Config{}); !errors.Is(err, schema.ErrInvalidConfig) {
		t.Errorf("Migrate without a Driver: %v, want ErrInvalidConfig", err)
	}
	if _, err := schema.Verify(ctx, nil, schema.Config{}, schema.VerifyOptions{}); !errors.Is(err, schema.ErrInvalidConfig) {
		t.Errorf("Verify without a Driver: %v, want ErrInvalidConfig", err)
	}
	cfg := schema.Config{Schema: testdb.Schema(t), Dialect: schema.Postgres}
	if err := schema.Migrate(ctx, db, cfg); err != nil {
		t.Fatalf("Migrate with the Driver's dialect spelled out: %v", err)
	}
	assertClean(t, db, cfg)
}

func TestMigrateTwiceThenVerify(t *testing.T) {
	ctx := context.Background()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			cfg := schema.Config{Schema: testdb.Schema(t)}
			for i := 0; i < 2; i++ {
				if err := schema.Migrate(ctx, db, cfg); err != nil {
					t.Fatalf("migrate #%d: %v", i+1, err)
				}
			}
			assertClean(t, db, cfg)
		})
	}
}

func TestScriptAppliedByHandVerifies(t *testing.T) {
	ctx := context.Background()
	db := database.FromPgx(testdb.Pool(t))
	cfg := schema.Config{Schema: testdb.Schema(t)}
	script, err := schema.Script(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testdb.Pool(t).Exec(ctx, script); err != nil { // simple protocol: the whole script at once, as psql would
		t.Fatalf("apply script: %v", err)
	}
	assertClean(t, db, cfg)
}

func TestMigrateConcurrently(t *testing.T) {
	ctx := context.Background()
	db := database.FromPgx(testdb.Pool(t))
	cfg := schema.Config{Schema: testdb.RandomName("wj_test_conc_")}
	t.Cleanup(func() {
		_, _ = db.Exec(context.Background(), fmt.Sprintf(`DROP SCHEMA IF EXISTS "%s" CASCADE`, cfg.Schema))
	})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- schema.Migrate(ctx, db, cfg)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent migrate: %v", err)
		}
	}
	assertClean(t, db, cfg)
}

func TestMigrateUpgradesJasperDatabaseKeepingRows(t *testing.T) {
	ctx := context.Background()
	db := database.FromPgx(testdb.Pool(t))
	s := testdb.Schema(t)
	cfg := schema.Config{Schema: s}
	if _, err := testdb.Pool(t).Exec(ctx, strings.ReplaceAll(jasper2PostgresDDL, "public.", s+".")); err != nil {
		t.Fatalf("create Jasper 2.0 tables: %v", err)
	}
	diffs, err := schema.Verify(ctx, db, cfg, schema.VerifyOptions{JasperOnly: true})
	if err != nil || len(diffs) != 0 {
		t.Fatalf("Jasper's own layout should verify clean with JasperOnly, got %v %v", diffs, err)
	}
	diffs, err = schema.Verify(ctx, db, cfg, schema.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) == 0 {
		t.Fatal("missing extensions should be reported before migrate")
	}
	for _, d := range diffs {
		if !d.Extension {
			t.Errorf("before migrate only extensions may be missing, got %v", d)
		}
	}
	inserts := []string{
		`INSERT INTO %s.jasper_outgoing_envelopes (id, owner_id, destination, body, message_type) VALUES ('0f8fad5b-d9cb-469f-a165-70867728950e', 7, 'rabbitmq://queue/orders', '\x7b7d', 'Ping')`,
		`INSERT INTO %s.jasper_incoming_envelopes (id, status, owner_id, body, message_type, received_at) VALUES ('1f8fad5b-d9cb-469f-a165-70867728950e', 'Incoming', 0, '\x7b7d', 'Ping', 'local://durable')`,
		`INSERT INTO %s.jasper_dead_letters (id, body, message_type, explanation) VALUES ('2f8fad5b-d9cb-469f-a165-70867728950e', '\x7b7d', 'Ping', 'Exception Detected')`,
	}
	for _, ins := range inserts {
		if _, err := db.Exec(ctx, fmt.Sprintf(ins, s)); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshot(t, db, s)
	if err := schema.Migrate(ctx, db, cfg); err != nil {
		t.Fatalf("migrate Jasper database: %v", err)
	}
	if after := snapshot(t, db, s); after != before {
		t.Fatalf("rows changed by migrate:\nbefore %s\nafter  %s", before, after)
	}
	assertClean(t, db, cfg)

	if _, err := db.Exec(ctx, fmt.Sprintf(`ALTER TABLE %s.jasper_incoming_envelopes DROP COLUMN saga_id`, s)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, fmt.Sprintf(`ALTER TABLE %s.jasper_outgoing_envelopes ALTER COLUMN message_type DROP NOT NULL, ALTER COLUMN attempts TYPE bigint`, s)); err != nil {
		t.Fatal(err)
	}
	diffs, err = schema.Verify(ctx, db, cfg, schema.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"missing column jasper_incoming_envelopes.saga_id",
		"wrong nullability jasper_outgoing_envelopes.message_type: want NOT NULL, got NULL",
		"wrong type jasper_outgoing_envelopes.attempts: want integer, got bigint",
	}
	got := map[string]bool{}
	for _, d := range diffs {
		got[d.String()] = true
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("verify did not report %q; got %v", w, diffs)
		}
	}
	if len(diffs) != len(want) {
		t.Errorf("want %d differences, got %v", len(want), diffs)
	}
}

func TestVerifyReportsMissingTables(t *testing.T) {
	db := database.FromPgx(testdb.Pool(t))
	diffs, err := schema.Verify(context.Background(), db, schema.Config{Schema: testdb.Schema(t)}, schema.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 3 {
		t.Fatalf("want 3 missing tables, got %v", diffs)
	}
	for _, d := range diffs {
		if d.Kind != schema.MissingTable {
			t.Errorf("want missing table, got %v", d)
		}
	}
}

func handles(t *testing.T) map[string]database.Driver {
	std, err := database.FromStdSQL(testdb.StdDB(t))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]database.Driver{"pgx": database.FromPgx(testdb.Pool(t)), "database_sql": std}
}

func assertClean(t *testing.T, db database.Driver, cfg schema.Config) {
	t.Helper()
	diffs, err := schema.Verify(context.Background(), db, cfg, schema.VerifyOptions{})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, d := range diffs {
		t.Errorf("unexpected difference: %v", d)
	}
}

func snapshot(t *testing.T, db database.DB, s string) string {
	t.Helper()
	var out strings.Builder
	for _, table := range []string{"jasper_outgoing_envelopes", "jasper_incoming_envelopes", "jasper_dead_letters"} {
		var row string
		if err := database.QueryRow(context.Background(), db, fmt.Sprintf(`SELECT string_agg(t::text, '|' ORDER BY id) FROM (SELECT id, body, message_type, attempts FROM %s.%s) t`, s, table), nil, &row); err != nil {
			t.Fatal(err)
		}
		out.WriteString(table + ":" + row + ";")
	}
	return out.String()
}

// jasper2PostgresDDL is Jasper 2.0's DDL, verbatim (docs/tables.md describes it).
const jasper2PostgresDDL = `
CREATE TABLE public.jasper_outgoing_envelopes (
  id uuid NOT NULL, owner_id integer NOT NULL, destination varchar NOT NULL, deliver_by timestamp with time zone NULL,
  body bytea NOT NULL, attempts integer NULL DEFAULT 0, conversation_id uuid NULL, correlation_id varchar NULL,
  parent_id varchar NULL, saga_id varchar NULL, message_type varchar NOT NULL, content_type varchar NULL,
  reply_requested varchar NULL, ack_requested boolean NULL, reply_uri varchar NULL,
  CONSTRAINT pkey_jasper_outgoing_envelopes_id PRIMARY KEY (id));
CREATE TABLE public.jasper_incoming_envelopes (
  id uuid NOT NULL, status varchar NOT NULL, owner_id integer NOT NULL,
  execution_time timestamp with time zone NULL DEFAULT NULL, attempts integer NULL DEFAULT 0, body bytea NOT NULL,
  conversation_id uuid NULL, correlation_id varchar NULL, parent_id varchar NULL, saga_id varchar NULL,
  message_type varchar NOT NULL, content_type varchar NULL, reply_requested varchar NULL, ack_requested boolean NULL,
  reply_uri varchar NULL, received_at varchar NULL,
  CONSTRAINT pkey_jasper_incoming_envelopes_id PRIMARY KEY (id));
CREATE TABLE public.jasper_dead_letters (
  id uuid NOT NULL, execution_time timestamp with time zone NULL DEFAULT NULL, attempts integer NULL DEFAULT 0,
  body bytea NOT NULL, conversation_id uuid NULL, correlation_id varchar NULL, parent_id varchar NULL,
  saga_id varchar NULL, message_type varchar NOT NULL, content_type varchar NULL, reply_requested varchar NULL,
  ack_requested boolean NULL, reply_uri varchar NULL, received_at varchar NULL, source varchar NULL,
  explanation varchar NULL, exception_text varchar NULL, exception_type varchar NULL, exception_message varchar NULL,
  CONSTRAINT pkey_jasper_dead_letters_id PRIMARY KEY (id));
`
