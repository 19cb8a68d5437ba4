package admin

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

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
