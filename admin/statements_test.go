package admin

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/tsqlcheck"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// TestStatementsOffline checks the SQL of both dialects without a database (no SQL Server
// runs on the build machines): placeholders, quoting and COUNT_BIG.
func TestStatementsOffline(t *testing.T) {
	for _, d := range []schema.Dialect{schema.Postgres, schema.SQLServer} {
		cfg, err := schema.Config{Dialect: d, Schema: "App_1"}.Normalized()
		if err != nil {
			t.Fatal(err)
		}
		st := statementsFor(cfg)
		v := reflect.ValueOf(st)
		for i := 0; i < v.NumField(); i++ {
			name, sql := v.Type().Field(i).Name, v.Field(i).String()
			if sql == "" {
				t.Errorf("%s %s: empty", d, name)
				continue
			}
			var wantQuote, badQuote, wantSchema, badPlaceholder string
			if d == schema.SQLServer {
				wantQuote, badQuote, wantSchema, badPlaceholder = "[", `"`, "[App_1].", "$"
			} else {
				wantQuote, badQuote, wantSchema, badPlaceholder = `"`, "[", `"app_1".`, "@"
			}
			if !strings.Contains(sql, wantSchema) || !strings.Contains(sql, wantQuote) || strings.Contains(sql, badQuote) {
				t.Errorf("%s %s: identifiers not quoted for the dialect: %s", d, name, sql)
			}
			if strings.Contains(sql, badPlaceholder) {
				t.Errorf("%s %s: placeholder of the other dialect: %s", d, name, sql)
			}
			if strings.HasPrefix(name, "release") && !strings.Contains(sql, map[schema.Dialect]string{schema.Postgres: "$1", schema.SQLServer: "@p1"}[d]) {
				t.Errorf("%s %s: owner_id must be bound: %s", d, name, sql)
			}
			if strings.Contains(strings.ToUpper(sql), "TRUNCATE") || strings.Contains(strings.ToUpper(sql), "DROP") {
				t.Errorf("%s %s: must not truncate or drop: %s", d, name, sql)
			}
		}
		if d == schema.SQLServer && (strings.Count(st.counts, "COUNT_BIG(*)") != 5 || strings.Contains(st.counts, "count(")) {
			t.Errorf("SQL Server counts must use COUNT_BIG: %s", st.counts)
		}
	}
}

type fakeMSSQLError struct{ n int32 }

func (e fakeMSSQLError) Error() string         { return fmt.Sprintf("mssql: error %d", e.n) }
func (e fakeMSSQLError) SQLErrorNumber() int32 { return e.n }

func TestIsTableMissing(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "42P01"}, true},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "42P01"}), true},
		{&pgconn.PgError{Code: "42703"}, false},
		{fakeMSSQLError{208}, true},
		{fmt.Errorf("wrapped: %w", fakeMSSQLError{208}), true},
		{fakeMSSQLError{207}, false},
		{errors.New("relation does not exist"), false},
		{nil, false},
	}
	for _, c := range cases {
		if got := IsTableMissing(c.err); got != c.want {
			t.Errorf("IsTableMissing(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestDeadLetterStatementsOffline checks the dead-letter SQL of both dialects without a
// database: every statement uses exactly the placeholders 1..N of its documented
// arguments, and identifiers are quoted and schema-qualified for the dialect.
func TestDeadLetterStatementsOffline(t *testing.T) {
	args := map[string]int{"count": 3, "list": 2, "get": 1, "page": 4, "deleteIDs": 1, "toIncoming": 5, "purge": 3}
	for _, d := range []schema.Dialect{schema.Postgres, schema.SQLServer} {
		cfg, err := schema.Config{Dialect: d, Schema: "App_1"}.Normalized()
		if err != nil {
			t.Fatal(err)
		}
		_, st, err := deadLetterTools(fakeDB{d}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(`\$(\d+)`)
		if d == schema.SQLServer {
			re = regexp.MustCompile(`@p(\d+)\b`)
		}
		v := reflect.ValueOf(st)
		for i := 0; i < v.NumField(); i++ {
			name := v.Type().Field(i).Name
			if v.Field(i).Kind() != reflect.String {
				continue
			}
			q := v.Field(i).String()
			want, ok := args[name]
			if !ok {
				t.Fatalf("no documented argument count for %s", name)
			}
			seen := map[string]bool{}
			for _, m := range re.FindAllStringSubmatch(q, -1) {
				seen[m[1]] = true
			}
			if len(seen) != want {
				t.Errorf("%s %s: %d distinct placeholders, want %d", d, name, len(seen), want)
			}
			for n := 1; n <= want; n++ {
				if !seen[fmt.Sprint(n)] {
					t.Errorf("%s %s: placeholder %d unused", d, name, n)
				}
			}
			qual := cfg.Qualified(schema.DeadLetterTable)
			if !strings.Contains(q, qual) || strings.Contains(strings.ReplaceAll(q, qual, ""), schema.DeadLetterTable) {
				t.Errorf("%s %s: dead-letter table not always written %s", d, name, qual)
			}
			if d == schema.SQLServer {
				bare := regexp.MustCompile(`'[^']*'`).ReplaceAllString(q, "''") // string literals ('$.key' paths)
				for _, bad := range []string{"$", "::", "ANY(", "now()", "RETURNING", "ON CONFLICT", "LIMIT", "interval", `"`, "jsonb"} {
					if strings.Contains(bare, bad) {
						t.Errorf("sqlserver %s: PostgreSQL syntax %q", name, bad)
					}
				}
				known := map[string]bool{cfg.Schema: true, "topic": true, "value": true} // + OPENJSON's value
				for _, tb := range schema.Tables() {
					known[tb.Name] = true
					for _, c := range tb.Columns {
						known[c.Name] = true
					}
				}
				for _, m := range regexp.MustCompile(`\[([^\]]+)\]`).FindAllStringSubmatch(bare, -1) {
					if !known[m[1]] {
						t.Errorf("sqlserver %s: unknown identifier [%s]", name, m[1])
					}
				}
				if strings.Count(q, "(") != strings.Count(q, ")") || strings.Count(q, "[") != strings.Count(q, "]") || strings.Count(q, "'")%2 != 0 {
					t.Errorf("sqlserver %s: unbalanced:\n%s", name, q)
				}
			}
		}
		if got := st.idList(nil); got == nil {
			t.Errorf("%s: idList(nil) is nil", d)
		}
	}
}

type fakeDB struct{ d schema.Dialect }

func (f fakeDB) Dialect() database.Dialect { return f.d }
func (fakeDB) Exec(context.Context, string, ...any) (int64, error) {
	return 0, errors.New("offline")
}
func (fakeDB) Query(context.Context, string, ...any) (database.Rows, error) {
	return nil, errors.New("offline")
}
func (fakeDB) Begin(context.Context) (database.Tx, error)     { return nil, errors.New("offline") }
func (fakeDB) Acquire(context.Context) (database.Conn, error) { return nil, errors.New("offline") }

// Every SQL Server statement of the admin tools (storage and dead letters) parses with the
// grammars-v4 T-SQL grammar (internal/tsqlcheck: offline, no server).
func TestSQLServerStatementsParse(t *testing.T) {
	cfg, err := schema.Config{Dialect: schema.SQLServer, Schema: "App_1"}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	_, dl, err := deadLetterTools(fakeDB{schema.SQLServer}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stmts := map[string]string{}
	for prefix, st := range map[string]any{"storage ": statementsFor(cfg), "dead letters ": dl} {
		v := reflect.ValueOf(st)
		for i := 0; i < v.NumField(); i++ {
			if v.Field(i).Kind() == reflect.String && v.Field(i).String() != "" {
				stmts[prefix+v.Type().Field(i).Name] = v.Field(i).String()
			}
		}
	}
	failures, err := tsqlcheck.Parse(stmts)
	if err != nil {
		t.Fatal(err)
	}
	for name, msg := range failures {
		t.Errorf("%s does not parse as T-SQL: %s\n%s", name, msg, stmts[name])
	}
	t.Logf("%d SQL Server statements parsed, %d rejected", len(stmts), len(failures))
}
