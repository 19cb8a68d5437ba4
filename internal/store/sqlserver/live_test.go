package sqlserver_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	mssql "github.com/microsoft/go-mssqldb"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlserver"
	"github.com/watermill-jasper/watermill-jasper/internal/store/storetest"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// Live checks of the SQL Server fixes that fixes_test.go checks offline. They run when
// WATERMILL_JASPER_TEST_MSSQL holds a DSN and are skipped, saying so, otherwise (no SQL Server
// runs on the build machines).

// migratedStore returns the store of a fresh migrated schema on the shared pool.
func migratedStore(t *testing.T) store.Store {
	t.Helper()
	drv, cfg := testdb.MigratedSQLServer(t)
	s, err := drv.Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Fix 2: the whole conformance suite on sessions that run SET NOCOUNT ON, as many .NET shops
// configure them: every count the operations read (inbox decisions included) is still right.
func TestLiveConformanceWithNoCountOn(t *testing.T) {
	testdb.SQLServerDB(t) // skips without a DSN
	c, err := mssql.NewConnector(os.Getenv(testdb.MSSQLEnv))
	if err != nil {
		t.Fatalf("$%s: %v", testdb.MSSQLEnv, err)
	}
	c.SessionInitSQL = "SET NOCOUNT ON"
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	storetest.Run(t, func(t *testing.T) store.Store {
		drv, cfg := testdb.MigratedSQLServerOn(t, db)
		s, err := drv.Store(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// Fix 1: a move to the dead letters whose MERGE fails loses nothing, on the pool and inside a
// caller's transaction (which it rolls back: nobody can commit the DELETE alone).
func TestLiveFailedDeadLetterMoveLosesNothing(t *testing.T) {
	ctx := context.Background()
	s := migratedStore(t)
	cfg := s.Schema()
	if _, err := s.DB().Exec(ctx, fmt.Sprintf("CREATE TRIGGER %s ON %s AFTER INSERT, UPDATE AS THROW 51000, 'dead letters refused by the test', 1;",
		cfg.Qualified("wj_refuse_dead_letters"), cfg.Qualified(layout.DeadLetterTable))); err != nil {
		t.Fatal(err)
	}
	e := row.Envelope{ID: uuid.New(), Destination: "orders", MessageType: "t", MessageUUID: "m", Body: []byte("b")}
	if err := s.InsertEnvelopes(ctx, store.InsertParams{Outgoing: []row.Envelope{e}}); err != nil {
		t.Fatal(err)
	}
	letters := []store.DeadLetterReason{{ID: e.ID, Reason: store.Reason{Explanation: "test"}}}
	if err := s.DeadLetterOutgoing(ctx, letters); err == nil {
		t.Fatal("DeadLetterOutgoing succeeded although the dead letters refuse rows")
	}
	// A caller that ignores the error and commits: XACT_ABORT has rolled the DELETE back
	// already (the commit then fails, which is the caller's answer).
	_ = s.InTx(ctx, func(ctx context.Context, tx store.Ops) error {
		if err := tx.DeadLetterOutgoing(ctx, letters); err == nil {
			t.Error("DeadLetterOutgoing in a transaction succeeded although the dead letters refuse rows")
		}
		return nil
	})
	var n int64
	if err := dbx.QueryRow(ctx, s.DB(), fmt.Sprintf("SELECT COUNT_BIG(*) FROM %s WHERE [id] = @p1", cfg.Qualified(layout.OutgoingTable)),
		[]any{mssql.UniqueIdentifier(e.ID)}, &n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("the envelope is in the outgoing table %d times after two failed moves; want 1 (lost)", n)
	}
}

// Fix 3: two publishers' transactions insert at the same time; the second does not wait for
// the first to end. And two inserts of the same id (a re-publish) both succeed, leaving one
// row.
func TestLiveConcurrentPublishersDoNotSerialise(t *testing.T) {
	ctx := context.Background()
	s := migratedStore(t)
	env := func(id uuid.UUID) []row.Envelope {
		return []row.Envelope{{ID: id, Destination: "orders", MessageType: "t", MessageUUID: id.String(), Body: []byte("b")}}
	}
	tx1, err := s.DB().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx1.Rollback(ctx)
	shared := uuid.New()
	if err := s.With(tx1).InsertEnvelopes(ctx, store.InsertParams{Outgoing: append(env(uuid.New()), env(shared)...)}); err != nil {
		t.Fatal(err)
	}
	// Another publisher, while tx1 is open: no key-range lock of tx1's may stop it.
	other, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.InTx(other, func(ctx context.Context, tx store.Ops) error {
		return tx.InsertEnvelopes(ctx, store.InsertParams{Outgoing: env(uuid.New())})
	}); err != nil {
		t.Fatalf("a second publisher waited for the first one's transaction: %v", err)
	}
	// The same id from another transaction waits for tx1, then skips the id.
	done := make(chan error, 1)
	go func() {
		done <- s.InTx(ctx, func(ctx context.Context, tx store.Ops) error {
			return tx.InsertEnvelopes(ctx, store.InsertParams{Outgoing: env(shared)})
		})
	}()
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("re-publishing an id that a concurrent transaction inserted: %v", err)
	}
	var n int64
	if err := dbx.QueryRow(ctx, s.DB(), fmt.Sprintf("SELECT COUNT_BIG(*) FROM %s WHERE [id] = @p1", s.Schema().Qualified(layout.OutgoingTable)),
		[]any{mssql.UniqueIdentifier(shared)}, &n); err != nil || n != 1 {
		t.Fatalf("the re-published id is there %d times (%v); want 1", n, err)
	}
}

// Fix 6: on a database below compatibility level 130, the requirements check says so and
// OPENJSON's error is no missing table. It needs the right to create a database.
func TestLiveLowCompatibilityLevel(t *testing.T) {
	ctx := context.Background()
	db := testdb.SQLServerDB(t)
	name := testdb.RandomName("wj_compat_")
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Skipf("this check creates a database at compatibility level 120, which the DSN's login may not: %v", err)
	}
	t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), "DROP DATABASE "+name) })
	if _, err := db.ExecContext(ctx, fmt.Sprintf("ALTER DATABASE %s SET COMPATIBILITY_LEVEL = 120", name)); err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var home string
	if err := conn.QueryRowContext(ctx, "SELECT DB_NAME()").Scan(&home); err != nil {
		t.Fatal(err)
	}
	// Back to the DSN's database before the connection returns to the pool (and before the
	// DROP DATABASE of the cleanup, which an open session in it would block).
	defer func() {
		if _, err := conn.ExecContext(context.Background(), "USE "+quoteName(home)); err != nil {
			t.Errorf("USE %s: %v", home, err)
		}
	}()
	if _, err := conn.ExecContext(ctx, "USE "+name); err != nil {
		t.Fatal(err)
	}
	cfg, err := layout.Config{Dialect: dbx.SQLServer, Schema: "dbo"}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	d := sqlserver.Dialect(cfg)
	var unmet string
	if err := conn.QueryRowContext(ctx, d.RequirementsQuery()).Scan(&unmet); err != nil {
		t.Fatalf("the requirements check found nothing wrong at level 120: %v", err)
	}
	if !strings.Contains(unmet, "120") || !strings.Contains(unmet, "130") {
		t.Errorf("the requirements check says %q; want the level found and the one needed", unmet)
	}
	_, err = conn.ExecContext(ctx, "SELECT [value] FROM OPENJSON(@p1)", "[]")
	if err == nil {
		t.Fatal("OPENJSON ran at compatibility level 120")
	}
	if d.IsMissingTable(err) {
		t.Errorf("OPENJSON's error at level 120 is taken for a missing table: %v", err)
	}
}

// quoteName bracket-quotes a database name read from the server.
func quoteName(n string) string { return "[" + strings.ReplaceAll(n, "]", "]]") + "]" }
