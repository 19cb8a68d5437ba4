package admin_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/sqlserver"
)

// handles returns the database drivers the tests run against: pgx and database/sql on
// PostgreSQL, and SQL Server when $WATERMILL_JASPER_TEST_MSSQL holds a DSN.
func handles(t *testing.T) map[string]database.Driver {
	t.Helper()
	out := map[string]database.Driver{"pgx": testdb.PgxDriver(t), "database_sql": testdb.StdDriver(t)}
	if os.Getenv(testdb.MSSQLEnv) != "" {
		ms, err := sqlserver.FromStdSQL(testdb.SQLServerDB(t))
		if err != nil {
			t.Fatal(err)
		}
		out["sqlserver"] = ms
	}
	return out
}

// emptySchema creates a schema with a random name and no tables, dropped when the test ends.
func emptySchema(t *testing.T, db database.Driver) schema.Config {
	t.Helper()
	if db.Dialect() == schema.Postgres {
		return schema.Config{Dialect: schema.Postgres, Schema: testdb.Schema(t)}
	}
	ctx := context.Background()
	cfg := schema.Config{Dialect: schema.SQLServer, Schema: testdb.RandomName("wj_test_")}
	if _, err := db.Exec(ctx, "EXEC('CREATE SCHEMA ["+cfg.Schema+"]')"); err != nil {
		t.Fatalf("create schema %s: %v", cfg.Schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := testdb.DropSQLServerSchema(ctx, db, cfg); err != nil {
			t.Errorf("drop schema %s: %v", cfg.Schema, err)
		}
	})
	return cfg
}

// migrated creates a random schema holding the tables and returns its normalized config.
func migrated(t *testing.T, db database.Driver) schema.Config {
	t.Helper()
	cfg, err := emptySchema(t, db).Normalized()
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Migrate(context.Background(), db, cfg); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return cfg
}

func placeholders(d database.Dialect, n int) string {
	p := make([]string, n)
	for i := range p {
		if d == schema.SQLServer {
			p[i] = fmt.Sprintf("@p%d", i+1)
		} else {
			p[i] = fmt.Sprintf("$%d", i+1)
		}
	}
	return strings.Join(p, ", ")
}

var idSeq atomic.Int64

func nextID() string {
	return fmt.Sprintf("00000000-0000-4000-8000-%012d", idSeq.Add(1))
}

func insertIncoming(t *testing.T, db database.Driver, cfg schema.Config, status string, owner int32, topic string) {
	t.Helper()
	q := fmt.Sprintf("INSERT INTO %s (id, status, owner_id, body, message_type, received_at) VALUES (%s)",
		cfg.Qualified(schema.IncomingTable), placeholders(db.Dialect(), 6))
	if _, err := db.Exec(context.Background(), q, nextID(), status, owner, []byte("{}"), "Ping", topic); err != nil {
		t.Fatalf("insert incoming: %v", err)
	}
}

func insertOutgoing(t *testing.T, db database.Driver, cfg schema.Config, destination string, owner int32) {
	t.Helper()
	q := fmt.Sprintf("INSERT INTO %s (id, owner_id, destination, body, message_type) VALUES (%s)",
		cfg.Qualified(schema.OutgoingTable), placeholders(db.Dialect(), 5))
	if _, err := db.Exec(context.Background(), q, nextID(), owner, destination, []byte("{}"), "Ping"); err != nil {
		t.Fatalf("insert outgoing: %v", err)
	}
}

func insertDeadLetter(t *testing.T, db database.Driver, cfg schema.Config) {
	t.Helper()
	q := fmt.Sprintf("INSERT INTO %s (id, body, message_type, explanation) VALUES (%s)",
		cfg.Qualified(schema.DeadLetterTable), placeholders(db.Dialect(), 4))
	if _, err := db.Exec(context.Background(), q, nextID(), []byte("{}"), "Ping", "Exception Detected"); err != nil {
		t.Fatalf("insert dead letter: %v", err)
	}
}

// fill inserts 4 incoming rows (3 Incoming, 1 Scheduled), 3 outgoing rows (2 for orders, 1
// for invoices) and 2 dead letters, owned by nodes 0, 7 and -42.
func fill(t *testing.T, db database.Driver, cfg schema.Config) {
	t.Helper()
	insertIncoming(t, db, cfg, schema.StatusIncoming, 0, "orders")
	insertIncoming(t, db, cfg, schema.StatusIncoming, 7, "orders")
	insertIncoming(t, db, cfg, schema.StatusIncoming, 7, "invoices")
	insertIncoming(t, db, cfg, schema.StatusScheduled, 0, "orders")
	insertOutgoing(t, db, cfg, "rabbitmq://queue/orders", -42)
	insertOutgoing(t, db, cfg, "rabbitmq://queue/orders", 0)
	insertOutgoing(t, db, cfg, "rabbitmq://queue/invoices", 7)
	insertDeadLetter(t, db, cfg)
	insertDeadLetter(t, db, cfg)
}

func TestCounts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := migrated(t, db)
			c, err := admin.Counts(ctx, db, cfg)
			if err != nil {
				t.Fatalf("counts of empty tables: %v", err)
			}
			if c.Total() != 0 || len(c.Incoming)+len(c.Outgoing)+len(c.Owners) != 0 || c.DeadLetters != 0 {
				t.Fatalf("empty tables: want nothing, got %+v", c)
			}

			fill(t, db, cfg)
			c, err = admin.Counts(ctx, db, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fmt.Sprint(c.Incoming), "[{Incoming 3} {Scheduled 1}]"; got != want {
				t.Errorf("incoming by status: got %s, want %s", got, want)
			}
			if got, want := fmt.Sprint(c.Outgoing), "[{rabbitmq://queue/invoices 1} {rabbitmq://queue/orders 2}]"; got != want {
				t.Errorf("outgoing by destination: got %s, want %s", got, want)
			}
			if c.DeadLetters != 2 {
				t.Errorf("dead letters: got %d, want 2", c.DeadLetters)
			}
			if got, want := fmt.Sprint(c.Owners), "[{-42 0 1} {0 2 1} {7 2 1}]"; got != want {
				t.Errorf("owners: got %s, want %s", got, want)
			}
			if c.IncomingTotal() != 4 || c.OutgoingTotal() != 3 || c.Total() != 9 || c.IncomingStatus(schema.StatusScheduled) != 1 || c.IncomingStatus(schema.StatusHandled) != 0 {
				t.Errorf("totals: incoming %d, outgoing %d, all %d", c.IncomingTotal(), c.OutgoingTotal(), c.Total())
			}
		})
	}
}

func TestReleaseOwnership(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := migrated(t, db)
			fill(t, db, cfg)
			in, out, err := admin.ReleaseOwnership(ctx, db, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if in != 2 || out != 2 {
				t.Errorf("released: got %d incoming, %d outgoing; want 2 and 2", in, out)
			}
			c, err := admin.Counts(ctx, db, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fmt.Sprint(c.Owners), "[{0 4 3}]"; got != want {
				t.Errorf("owners after release: got %s, want %s", got, want)
			}
			if c.Total() != 9 {
				t.Errorf("release must not delete rows: %d left", c.Total())
			}
			if in, out, err = admin.ReleaseOwnership(ctx, db, cfg); err != nil || in != 0 || out != 0 {
				t.Errorf("second release: got %d, %d, %v; want 0, 0", in, out, err)
			}
		})
	}
}

func TestClear(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := migrated(t, db)
			fill(t, db, cfg)
			r, err := admin.Clear(ctx, db, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if r != (admin.ClearResult{Incoming: 4, Outgoing: 3, DeadLetters: 2}) || r.Total() != 9 {
				t.Errorf("cleared: got %+v", r)
			}
			c, err := admin.Counts(ctx, db, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if c.Total() != 0 || len(c.Owners) != 0 {
				t.Errorf("rows left after clear: %+v", c)
			}
			// The schema itself is untouched.
			diffs, err := schema.Verify(ctx, db, cfg, schema.VerifyOptions{})
			if err != nil || len(diffs) != 0 {
				t.Errorf("verify after clear: %v %v", diffs, err)
			}
		})
	}
}

// TestClearIsOneTransaction drops the dead letters table so the last DELETE fails: the rows
// of the two other tables must still be there.
func TestClearIsOneTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := migrated(t, db)
			fill(t, db, cfg)
			if _, err := db.Exec(ctx, "DROP TABLE "+cfg.Qualified(schema.DeadLetterTable)); err != nil {
				t.Fatal(err)
			}
			if _, err := admin.Clear(ctx, db, cfg); !errors.Is(err, admin.ErrTablesMissing) {
				t.Fatalf("clear without the dead letters table: want ErrTablesMissing, got %v", err)
			}
			var n int64
			q := "SELECT (SELECT COUNT(*) FROM " + cfg.Qualified(schema.IncomingTable) + ") + (SELECT COUNT(*) FROM " + cfg.Qualified(schema.OutgoingTable) + ")"
			if err := database.QueryRow(ctx, db, q, nil, &n); err != nil {
				t.Fatal(err)
			}
			if n != 7 {
				t.Errorf("a failed clear must delete nothing, %d of 7 rows left", n)
			}
		})
	}
}

func TestTablesMissing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for _, cfg := range []schema.Config{
				emptySchema(t, db), // the schema exists, the tables do not
				{Dialect: db.Dialect(), Schema: testdb.RandomName("wj_test_absent_")}, // no schema at all
			} {
				_, err := admin.Counts(ctx, db, cfg)
				assertMissing(t, "counts", cfg, err)
				_, _, err = admin.ReleaseOwnership(ctx, db, cfg)
				assertMissing(t, "release", cfg, err)
				_, err = admin.Clear(ctx, db, cfg)
				assertMissing(t, "clear", cfg, err)
				_, err = admin.CountDeadLetters(ctx, db, cfg, "", 0)
				assertMissing(t, "count dead letters", cfg, err)
				_, err = admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{All: true}, admin.ReplayOptions{})
				assertMissing(t, "replay", cfg, err)
				_, err = admin.PurgeDeadLetters(ctx, db, cfg, admin.PurgeOptions{})
				assertMissing(t, "purge", cfg, err)
			}
		})
	}
}

func assertMissing(t *testing.T, op string, cfg schema.Config, err error) {
	t.Helper()
	if !errors.Is(err, admin.ErrTablesMissing) {
		t.Errorf("%s in schema %s without tables: want ErrTablesMissing, got %v", op, cfg.Schema, err)
		return
	}
	if msg := err.Error(); !strings.Contains(msg, "watermill-jasper schema migrate") || !strings.Contains(msg, cfg.Schema) {
		t.Errorf("%s: the error should name the schema and the command to run, got %q", op, msg)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := database.FromPgx(testdb.Pool(t))
	for _, cfg := range []schema.Config{
		{Schema: "x; drop table y"},
		{Dialect: schema.SQLServer, Schema: "dbo"},
	} {
		if _, err := admin.Counts(ctx, db, cfg); !errors.Is(err, schema.ErrInvalidConfig) {
			t.Errorf("counts with %+v: want ErrInvalidConfig, got %v", cfg, err)
		}
		if _, _, err := admin.ReleaseOwnership(ctx, db, cfg); !errors.Is(err, schema.ErrInvalidConfig) {
			t.Errorf("release with %+v: want ErrInvalidConfig, got %v", cfg, err)
		}
		if _, err := admin.Clear(ctx, db, cfg); !errors.Is(err, schema.ErrInvalidConfig) {
			t.Errorf("clear with %+v: want ErrInvalidConfig, got %v", cfg, err)
		}
		if _, err := admin.ListDeadLetters(ctx, db, cfg, admin.ListOptions{}); !errors.Is(err, schema.ErrInvalidConfig) {
			t.Errorf("list dead letters with %+v: want ErrInvalidConfig, got %v", cfg, err)
		}
		if _, err := admin.GetDeadLetter(ctx, db, cfg, uuid.New()); !errors.Is(err, schema.ErrInvalidConfig) {
			t.Errorf("get dead letter with %+v: want ErrInvalidConfig, got %v", cfg, err)
		}
	}
	if _, err := admin.Counts(ctx, nil, schema.Config{}); !errors.Is(err, schema.ErrInvalidConfig) {
		t.Errorf("nil driver: want ErrInvalidConfig, got %v", err)
	}
	if _, err := admin.NodeLiveness(ctx, nil, []int32{1}); !errors.Is(err, schema.ErrInvalidConfig) {
		t.Errorf("liveness with a nil driver: want ErrInvalidConfig, got %v", err)
	}
}

// TestMixedCaseSchemaFolds checks that a schema name is folded as Jasper's unquoted SQL folds it.
func TestMixedCaseSchemaFolds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := database.FromPgx(testdb.Pool(t))
	cfg := migrated(t, db)
	insertDeadLetter(t, db, cfg)
	c, err := admin.Counts(ctx, db, schema.Config{Schema: strings.ToUpper(cfg.Schema)})
	if err != nil || c.DeadLetters != 1 {
		t.Errorf("counts with the upper-cased schema name: %+v %v", c, err)
	}
}
