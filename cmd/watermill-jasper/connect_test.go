package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/database"
)

func TestUnreachableDatabaseKeepsThePasswordSecret(t *testing.T) {
	t.Parallel()
	cases := []struct {
		dsn  string
		code int
		want string
	}{
		{"postgres://postgres:s3cret@127.0.0.1:1/test?sslmode=disable", 1, "cannot connect to PostgreSQL"},
		{"postgresql://postgres@127.0.0.1:1/test?sslmode=disable&password=s3cret", 1, "cannot connect to PostgreSQL"},
		{"sqlserver://sa:s3cret@127.0.0.1:1?database=test", 1, "cannot connect to SQL Server"},
		{"sqlserver://sa@127.0.0.1:1?database=test&password=s3cret", 1, "cannot connect to SQL Server"},
		{"postgres://postgres:s3cret@127.0.0.1:5432/test?sslmode=bogus", 2, "invalid --dsn"},
		{"postgres://postgres:s3cret@bad host:5432/test", 2, "invalid --dsn"},
		{"postgres://postgres:s3cret@127.0.0.1:notaport/test", 2, "invalid --dsn"},
		{"mysql://root:s3cret@127.0.0.1/test", 2, `"mysql"`},
		{"host=127.0.0.1 port=1 password=s3cret", 2, "not a database URL"},
	}
	for _, c := range cases {
		for _, args := range [][]string{
			{"storage", "counts", "--dsn", c.dsn},
			{"schema", "migrate", "--dsn=" + c.dsn},
		} {
			r := cli(t, "", nil, args...)
			assertFailure(t, r, c.code, c.want)
			if strings.Contains(r.stdout+r.stderr, "s3cret") {
				t.Errorf("%v printed the password: %s", args, r)
			}
		}
		// The same DSN taken from $DATABASE_URL.
		r := cli(t, "", []string{dsnEnv + "=" + c.dsn}, "storage", "release")
		assertFailure(t, r, c.code, c.want)
		if strings.Contains(r.stdout+r.stderr, "s3cret") {
			t.Errorf("$DATABASE_URL: printed the password: %s", r)
		}
	}
}

// bench outbox refuses an unreachable --cdc-dsn before it runs any leg, in one line that
// names neither its password nor the --dsn's.
func TestBenchCDCDSNKeepsThePasswordSecret(t *testing.T) {
	t.Parallel()
	r := cli(t, "", nil, "bench", "outbox", "--quick", "--amqp", "none", "--skip-watermill", "--skip-river",
		"--cdc-dsn", "postgres://postgres:s3cret@127.0.0.1:1/test?sslmode=disable")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-1]
	if r.code != 1 || !strings.HasPrefix(last, "watermill-jasper: bench: connect to PostgreSQL") || !strings.Contains(last, "--cdc-dsn") {
		t.Errorf("want exit 1 and a last line refusing the --cdc-dsn, got %s", r)
	}
	if strings.Contains(r.stdout+r.stderr, "s3cret") {
		t.Errorf("printed the --cdc-dsn password: %s", r)
	}
	if strings.Contains(r.stderr, "publish ") {
		t.Errorf("legs ran before the --cdc-dsn was refused: %s", r.stderr)
	}
}

func TestRedactDSN(t *testing.T) {
	cases := map[string]string{
		"postgres://app:s3cret@db:5432/app?sslmode=disable":     "postgres://app:xxxxx@db:5432/app?sslmode=disable",
		"postgres://app@db:5432/app":                            "postgres://app@db:5432/app",
		"postgres://app@db/app?password=s3cret&sslmode=require": "postgres://app@db/app?password=xxxxx&sslmode=require",
		"sqlserver://sa:s3cret@sql:1433?database=app":           "sqlserver://sa:xxxxx@sql:1433?database=app",
		"sqlserver://sa@sql:1433?database=app&Password=s3cret":  "sqlserver://sa@sql:1433?Password=xxxxx&database=app",
		"postgres://app:s%40cret@db/app":                        "postgres://app:xxxxx@db/app",
		"postgres://app:s3cret@bad host/app":                    "postgres://(unreadable DSN, redacted)",
		"host=db password=s3cret":                               "(unreadable DSN, redacted)",
	}
	for in, want := range cases {
		if got := redactDSN(in); got != want {
			t.Errorf("redactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestScrub(t *testing.T) {
	cases := []struct{ dsn, msg string }{
		{"postgres://app:s3cret@db/app", "cannot parse postgres://app:s3cret@db/app: s3cret is wrong"},
		{"postgres://app:s%40cret@db/app", "password s@cret or s%40cret"},
		{"postgres://app:s3cret@bad host/app", "parse \"postgres://app:s3cret@bad host/app\": invalid"},
		{"sqlserver://sa@sql?password=s3cret;database=x", "login with s3cret failed"},
		{"host=db password='s3cret'", "password='s3cret'"},
		{"postgres://a:p@ss:w0rd@db/app", "p@ss:w0rd"},
	}
	for _, c := range cases {
		got := scrub(c.msg, c.dsn)
		for _, secret := range []string{"s3cret", "s@cret", "s%40cret", "p@ss:w0rd"} {
			if strings.Contains(got, secret) {
				t.Errorf("scrub(%q, %q) = %q still holds %q", c.msg, c.dsn, got, secret)
			}
		}
	}
	if got := scrub("nothing secret", ""); got != "nothing secret" {
		t.Errorf("scrub without a DSN changed the message: %q", got)
	}
}

func TestDialectOfDSN(t *testing.T) {
	for dsn, want := range map[string]database.Dialect{
		"postgres://h/db":         database.Postgres,
		"POSTGRESQL://h/db":       database.Postgres,
		"sqlserver://h?database=": database.SQLServer,
	} {
		if got, err := dialectOfDSN(dsn); err != nil || got != want {
			t.Errorf("dialectOfDSN(%q) = %v, %v; want %v", dsn, got, err, want)
		}
	}
	for _, dsn := range []string{"mysql://h/db", "h/db", "", "pg:s3cret@//x"} {
		_, err := dialectOfDSN(dsn)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("dialectOfDSN(%q): want a usage error, got %v", dsn, err)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("dialectOfDSN(%q) quotes the DSN: %v", dsn, err)
		}
	}
}

func TestOpenDB(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var f dbFlags
	if err := f.dsn.Set(testDSN()); err != nil {
		t.Fatal(err)
	}
	h, cfg, closeDB, err := f.open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeDB()
	if h.Dialect() != database.Postgres || cfg.Schema != "public" || cfg.Dialect != database.Postgres {
		t.Errorf("open: dialect %s, config %+v", h.Dialect(), cfg)
	}
	if _, err := h.Store(cfg); err != nil {
		t.Errorf("the driver does not open the store of %+v: %v", cfg, err)
	}
	var one int
	if err := database.QueryRow(ctx, h, "SELECT 1", nil, &one); err != nil || one != 1 {
		t.Errorf("query through the handle: %d %v", one, err)
	}
	_ = f.schema.Set("Mixed_Case")
	if _, cfg, closeDB, err = f.open(ctx); err != nil || cfg.Schema != "mixed_case" {
		t.Errorf("--schema Mixed_Case: %+v %v", cfg, err)
	} else {
		closeDB()
	}
}

func TestErrorLine(t *testing.T) {
	err := errors.New("watermill-jasper: migrate schema x: watermill-jasper: invalid\nsecond line with s3cret")
	got := errorLine(err, []string{"schema", "migrate", "--dsn=postgres://u:s3cret@h/db"})
	if got != "watermill-jasper: migrate schema x: invalid second line with xxxxx" {
		t.Errorf("errorLine = %q", got)
	}
}
