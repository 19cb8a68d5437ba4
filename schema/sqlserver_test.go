package schema_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/sqlserver"
)

// jasper2SQLServerDDL is Jasper 2.0's SQL Server DDL, verbatim (docs/tables.md describes it).
const jasper2SQLServerDDL = `
CREATE TABLE dbo.jasper_outgoing_envelopes (
  id uniqueidentifier NOT NULL, owner_id int NOT NULL, destination varchar(250) NOT NULL, deliver_by datetimeoffset NULL,
  body varbinary(max) NOT NULL, attempts int NULL DEFAULT 0, conversation_id uniqueidentifier NULL,
  correlation_id varchar(100) NULL, parent_id varchar(100) NULL, saga_id varchar(100) NULL,
  message_type varchar(250) NOT NULL, content_type varchar(100) NULL, reply_requested varchar(250) NULL,
  ack_requested bit NULL, reply_uri varchar(100) NULL,
  CONSTRAINT pkey_jasper_outgoing_envelopes_id PRIMARY KEY (id));
CREATE TABLE dbo.jasper_incoming_envelopes (
  id uniqueidentifier NOT NULL, status varchar(25) NOT NULL, owner_id int NOT NULL,
  execution_time datetimeoffset NULL DEFAULT NULL, attempts int NULL DEFAULT 0, body varbinary(max) NOT NULL,
  conversation_id uniqueidentifier NULL, correlation_id varchar(100) NULL, parent_id varchar(100) NULL,
  saga_id varchar(100) NULL, message_type varchar(250) NOT NULL, content_type varchar(100) NULL,
  reply_requested varchar(250) NULL, ack_requested bit NULL, reply_uri varchar(100) NULL, received_at varchar(100) NULL,
  CONSTRAINT pkey_jasper_incoming_envelopes_id PRIMARY KEY (id));
CREATE TABLE dbo.jasper_dead_letters (
  id uniqueidentifier NOT NULL, execution_time datetimeoffset NULL DEFAULT NULL, attempts int NULL DEFAULT 0,
  body varbinary(max) NOT NULL, conversation_id uniqueidentifier NULL, correlation_id varchar(100) NULL,
  parent_id varchar(100) NULL, saga_id varchar(100) NULL, message_type varchar(100) NOT NULL,
  content_type varchar(100) NULL, reply_requested varchar(100) NULL, ack_requested bit NULL, reply_uri varchar(100) NULL,
  received_at varchar(100) NULL, source varchar(250) NULL, explanation varchar(max) NULL, exception_text varchar(max) NULL,
  exception_type varchar(max) NULL, exception_message varchar(max) NULL,
  CONSTRAINT pkey_jasper_dead_letters_id PRIMARY KEY (id));
`

var createTableRE = regexp.MustCompile(`(?s)CREATE TABLE (?:IF NOT EXISTS )?(?:\S+\.)?\[?(\w+)\]? \((.*?)\n?\)\s*(?:;|\n|$)`)

// columnDefs parses "name type [NOT] NULL [DEFAULT x]" definitions of each CREATE TABLE,
// normalised (no brackets, single spaces, lower case).
func columnDefs(t *testing.T, ddl string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	norm := strings.NewReplacer("[", "", "]", "", "\n", " ")
	for _, m := range createTableRE.FindAllStringSubmatch(ddl, -1) {
		cols := map[string]string{}
		body := norm.Replace(m[2])
		// split on commas outside parentheses
		depth, start := 0, 0
		var parts []string
		for i, r := range body {
			switch r {
			case '(':
				depth++
			case ')':
				depth--
			case ',':
				if depth == 0 {
					parts = append(parts, body[start:i])
					start = i + 1
				}
			}
		}
		parts = append(parts, body[start:])
		for _, p := range parts {
			f := strings.Fields(strings.ToLower(p))
			if len(f) == 0 || f[0] == "constraint" {
				continue
			}
			cols[f[0]] = strings.Join(f[1:], " ")
		}
		out[m[1]] = cols
	}
	return out
}

// The SQL Server script (sqlserver.Script; schema.Script writes PostgreSQL's only) holds
// Jasper 2.0's tables, type and procedures, plus declared extensions, every batch guarded.
func TestSQLServerScriptMatchesJasperSpec(t *testing.T) {
	if _, err := schema.Script(schema.Config{Dialect: schema.SQLServer}); !errors.Is(err, schema.ErrInvalidConfig) {
		t.Errorf("schema.Script for SQL Server: %v, want an error wrapping schema.ErrInvalidConfig", err)
	}
	script, err := sqlserver.Script(schema.Config{})
	if err != nil {
		t.Fatal(err)
	}
	matchesSpec(t, columnDefs(t, jasper2SQLServerDDL), columnDefs(t, script))
	for _, s := range []string{
		"CREATE TYPE [dbo].[EnvelopeIdList] AS TABLE (id UNIQUEIDENTIFIER NOT NULL)",
		"CONSTRAINT [pkey_jasper_incoming_envelopes_id] PRIMARY KEY ([id])",
		"IF NOT EXISTS (SELECT * FROM sys.schemas WHERE name = N'dbo') EXEC(N'CREATE SCHEMA [dbo]')",
		// the five procedures of Jasper 2.0, bodies verbatim
		"DELETE FROM [dbo].[jasper_incoming_envelopes] WHERE id IN (SELECT ID FROM @IDLIST);",
		"DELETE FROM [dbo].[jasper_outgoing_envelopes] WHERE id IN (SELECT ID FROM @IDLIST);",
		"DELETE FROM [dbo].[jasper_outgoing_envelopes] WHERE id IN (SELECT ID FROM @DISCARDS);\n  UPDATE [dbo].[jasper_outgoing_envelopes] SET owner_id = @OWNERID WHERE ID IN (SELECT ID FROM @REASSIGNED);",
		"UPDATE [dbo].[jasper_incoming_envelopes] SET owner_id = @owner, status = ''Incoming'' WHERE id IN (SELECT ID FROM @IDLIST);",
		"UPDATE [dbo].[jasper_outgoing_envelopes] SET owner_id = @owner WHERE id IN (SELECT ID FROM @IDLIST);",
		"@DISCARDS [dbo].[EnvelopeIdList] READONLY,\n  @REASSIGNED [dbo].[EnvelopeIdList] READONLY,\n  @OWNERID INT",
	} {
		if !strings.Contains(script, s) {
			t.Errorf("SQL Server script lacks %q", s)
		}
	}
	for _, p := range schema.StoredProcedures() {
		if !strings.Contains(script, fmt.Sprintf("IF OBJECT_ID(N'[dbo].[%s]', N'P') IS NULL EXEC(N'CREATE PROCEDURE [dbo].[%s]", p, p)) {
			t.Errorf("procedure %s is not created idempotently", p)
		}
	}
	// Batches are separated by GO and every batch is guarded, so the script re-runs cleanly.
	for _, batch := range strings.Split(script, "\nGO\n") {
		batch = strings.TrimSpace(batch)
		if batch == "" || strings.HasPrefix(batch, "--") && !strings.Contains(batch, "\n") {
			continue
		}
		body := batch
		if strings.HasPrefix(body, "--") {
			body = body[strings.Index(body, "\n")+1:]
		}
		for strings.HasPrefix(body, "SET ") { // the session options of a filtered index
			body = body[strings.Index(body, "\n")+1:]
		}
		if !strings.HasPrefix(body, "IF ") {
			t.Errorf("unguarded SQL Server batch: %.60s", body)
		}
	}
	// A custom schema is substituted everywhere.
	custom, err := sqlserver.Script(schema.Config{Dialect: schema.SQLServer, Schema: "Messaging"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(custom, "[dbo]") || !strings.Contains(custom, "[Messaging].[uspMarkOutgoingOwnership]") {
		t.Error("custom schema not applied throughout the SQL Server script")
	}
}

func TestPostgresScriptMatchesJasperSpec(t *testing.T) {
	script, err := schema.Script(schema.Config{})
	if err != nil {
		t.Fatal(err)
	}
	matchesSpec(t, columnDefs(t, strings.ReplaceAll(jasper2PostgresDDL, ", ", ",\n")), columnDefs(t, strings.ReplaceAll(script, `"`, "")))
}

// matchesSpec checks that the script defines every column of the spec's three tables as the
// spec does, and that its other columns are declared extensions, nullable or defaulted.
func matchesSpec(t *testing.T, spec, script map[string]map[string]string) {
	t.Helper()
	if len(spec) != 3 || len(script) != 3 {
		t.Fatalf("parsed %d spec tables and %d script tables, want 3 each", len(spec), len(script))
	}
	for table, cols := range spec {
		for name, def := range cols {
			if script[table][name] != def {
				t.Errorf("%s.%s: spec says %q, script has %q", table, name, def, script[table][name])
			}
		}
		for name, def := range script[table] {
			if _, ok := cols[name]; ok {
				continue
			}
			if c, _ := tableColumn(table, name); !c.Extension {
				t.Errorf("%s.%s (%s) is neither Jasper's nor a declared extension", table, name, def)
			}
			if !strings.Contains(def, " null") && !strings.Contains(def, "default") {
				t.Errorf("extension %s.%s must be nullable or defaulted: %s", table, name, def)
			}
		}
	}
}

func tableColumn(table, name string) (schema.Column, bool) {
	for _, t := range schema.Tables() {
		if t.Name == table {
			return t.Column(name)
		}
	}
	return schema.Column{}, false
}

// TestSQLServerLive runs Migrate and Verify against a real SQL Server when
// WATERMILL_JASPER_TEST_MSSQL holds a DSN (sqlserver://user:pass@host:1433?database=db).
// No SQL Server runs on the build machines, so it is skipped there, saying so.
func TestSQLServerLive(t *testing.T) {
	db, err := sqlserver.FromStdSQL(testdb.SQLServerDB(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg, err := schema.Config{Dialect: schema.SQLServer, Schema: testdb.RandomName("wj_test_")}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := testdb.DropSQLServerSchema(context.Background(), db, cfg); err != nil {
			t.Errorf("drop schema %s: %v", cfg.Schema, err)
		}
	})
	for i := 0; i < 2; i++ {
		if err := schema.Migrate(ctx, db, cfg); err != nil {
			t.Fatalf("migrate #%d: %v", i+1, err)
		}
	}
	assertClean(t, db, cfg)
	if _, err := db.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP COLUMN saga_id", cfg.Qualified(schema.IncomingTable))); err != nil {
		t.Fatal(err)
	}
	diffs, err := schema.Verify(ctx, db, cfg, schema.VerifyOptions{})
	if err != nil || len(diffs) != 1 || diffs[0].Column != "saga_id" {
		t.Fatalf("want one missing saga_id, got %v %v", diffs, err)
	}
}
