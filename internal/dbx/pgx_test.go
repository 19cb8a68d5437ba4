package dbx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// bothDBs are the test database through a pgx pool of its own (closed when the test ends)
// and through database/sql.
func bothDBs(t *testing.T) (*pgxpool.Pool, dbx.DB, dbx.DB) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), testdb.PostgresDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	stdDB, err := dbx.FromStdSQL(testdb.StdDB(t))
	if err != nil {
		t.Fatal(err)
	}
	return pool, dbx.FromPgx(pool), stdDB
}

// intTable creates a table of one int primary key "id" in a schema of the test's own.
func intTable(t *testing.T) string {
	t.Helper()
	table := fmt.Sprintf(`"%s".t`, testdb.Schema(t))
	if _, err := testdb.Pool(t).Exec(context.Background(), `CREATE TABLE `+table+` (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	return table
}

// BeginExec: BEGIN and the first statement in one round trip on pgx, Begin then Exec on
// database/sql; a failing first statement leaves no transaction and no busy connection.
func TestBeginExec(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	table := intTable(t)
	pool, pgxDB, stdDB := bothDBs(t)
	if _, ok := pgxDB.(dbx.FirstStatementBeginner); !ok {
		t.Fatal("FromPgx does not implement FirstStatementBeginner")
	}
	insert := `INSERT INTO ` + table + ` (id) VALUES ($1) ON CONFLICT (id) DO NOTHING`
	strict := `INSERT INTO ` + table + ` (id) VALUES ($1)`
	count := func(id int) int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE id = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for i, c := range []struct {
		name string
		db   dbx.DB
	}{{"pgx", pgxDB}, {"database/sql", stdDB}} {
		base := 100 * (i + 1)
		t.Run(c.name, func(t *testing.T) {
			// twoInserts inserts first with BeginExec, which must affect want rows, then second
			// in the same transaction, and ends it with Commit or Rollback.
			twoInserts := func(what string, first, want, second int, commit bool) {
				t.Helper()
				tx, n, err := dbx.BeginExec(ctx, c.db, insert, first)
				if err != nil || n != int64(want) {
					t.Fatalf("BeginExec%s: %d, %v", what, n, err)
				}
				if _, err := tx.Exec(ctx, insert, second); err != nil {
					t.Fatal(err)
				}
				end := tx.Rollback
				if commit {
					end = tx.Commit
				}
				if err := end(ctx); err != nil {
					t.Fatal(err)
				}
			}
			// Committed with a second statement.
			twoInserts("", base+1, 1, base+2, true)
			if count(base+1) != 1 || count(base+2) != 1 {
				t.Fatal("committed rows missing")
			}
			// ON CONFLICT DO NOTHING: 0 rows, then rolled back.
			twoInserts(" of a duplicate", base+1, 0, base+3, false)
			if count(base+3) != 0 {
				t.Fatal("rolled back row exists")
			}
			// A failing first statement: nil Tx, the error, nothing left open.
			tx, _, err := dbx.BeginExec(ctx, c.db, strict, base+1)
			var pgErr *pgconn.PgError
			if tx != nil || !errors.As(err, &pgErr) || pgErr.Code != "23505" {
				t.Fatalf("BeginExec of a failing statement: tx %v, err %v", tx, err)
			}
			// A statement failing later: Commit reports the rollback.
			tx, _, err = dbx.BeginExec(ctx, c.db, insert, base+4)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, strict, base+1); err == nil {
				t.Fatal("duplicate insert did not fail")
			}
			if err := tx.Commit(ctx); err == nil {
				t.Fatal("Commit of a failed transaction returned nil")
			}
			if count(base+4) != 0 {
				t.Fatal("row of a failed transaction exists")
			}
		})
	}
	// pgx specifics: errors as pgx.Tx's, and every connection back in the pool.
	tx, _, err := dbx.BeginExec(ctx, pgxDB, insert, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, strict, 101); err == nil {
		t.Fatal("duplicate insert did not fail")
	}
	if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Errorf("Commit of a failed transaction: %v, want pgx.ErrTxCommitRollback", err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxClosed) {
		t.Errorf("second Commit: %v, want pgx.ErrTxClosed", err)
	}
	if err := tx.Rollback(ctx); !errors.Is(err, pgx.ErrTxClosed) {
		t.Errorf("Rollback after Commit: %v, want pgx.ErrTxClosed", err)
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired", n)
	}
	// Connections given back after a failed first statement are usable (not left in an
	// aborted transaction).
	for i := range 2 * int(pool.Config().MaxConns) {
		if _, _, err := dbx.BeginExec(ctx, pgxDB, strict, 101); err == nil {
			t.Fatal("duplicate insert did not fail")
		}
		tx, _, err := dbx.BeginExec(ctx, pgxDB, insert, 1000+i)
		if err != nil {
			t.Fatalf("BeginExec after a failed one: %v", err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired", n)
	}
	// A cancelled context: an error, and the connection is not handed out again mid-transaction.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if tx, _, err := dbx.BeginExec(cctx, pgxDB, insert, 5000); err == nil || tx != nil {
		t.Errorf("BeginExec with a cancelled context: %v, %v", tx, err)
	}
	if tx, _, err := dbx.BeginExec(ctx, pgxDB, insert, 5001); err != nil {
		t.Fatal(err)
	} else if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// BeginDeferred: BEGIN and the settings go with the first statement (pgx: one batch;
// database/sql: at once), the settings hold for that transaction alone, a transaction ended
// before any statement sends nothing and gives its connection back, and a failing setting
// fails the first statement without leaving a busy connection.
func TestBeginDeferred(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, pgxDB, stdDB := bothDBs(t)
	if _, ok := pgxDB.(dbx.DeferredBeginner); !ok {
		t.Fatal("FromPgx does not implement DeferredBeginner")
	}
	const set = "SET LOCAL application_name = 'wj_deferred'"
	setting := func(q dbx.Querier) string {
		t.Helper()
		var v string
		if err := dbx.QueryRow(ctx, q, "SELECT current_setting('application_name')", nil, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		name string
		db   dbx.DB
	}{{"pgx", pgxDB}, {"database/sql", stdDB}} {
		t.Run(c.name, func(t *testing.T) {
			tx, err := dbx.BeginDeferred(ctx, c.db, set)
			if err != nil {
				t.Fatal(err)
			}
			if got := setting(tx); got != "wj_deferred" {
				t.Errorf("first statement sees application_name %q, want the setting sent with it", got)
			}
			var autocommit bool
			if err := dbx.QueryRow(ctx, tx, "SELECT now() = statement_timestamp()", nil, &autocommit); err != nil {
				t.Fatal(err)
			}
			if autocommit {
				t.Error("the second statement is not in the transaction of the first (now() = statement_timestamp())")
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxClosed) && !errors.Is(err, sql.ErrTxDone) {
				t.Errorf("second Commit: %v, want the transaction closed", err)
			}

			// Ended before any statement.
			for _, end := range []string{"commit", "rollback"} {
				tx, err := dbx.BeginDeferred(ctx, c.db, set)
				if err != nil {
					t.Fatal(err)
				}
				f := tx.Commit
				if end == "rollback" {
					f = tx.Rollback
				}
				if err := f(ctx); err != nil {
					t.Errorf("%s of a transaction without statements: %v", end, err)
				}
			}

			// A setting the server refuses fails the first statement; the transaction then
			// rolls back and the pool goes on.
			tx, err = dbx.BeginDeferred(ctx, c.db, "SET LOCAL wj_no_such_setting_without_a_dot = 1")
			if err == nil {
				_, err = tx.Exec(ctx, "SELECT 1")
				if rerr := tx.Rollback(ctx); rerr != nil && c.name == "pgx" {
					t.Errorf("rollback after the failed first statement: %v", rerr)
				}
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42704" {
				t.Errorf("a refused setting: %v, want the server's unrecognized parameter error", err)
			}
			if got := setting(c.db); got == "wj_deferred" {
				t.Error("the setting outlived its transaction")
			}
		})
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired", n)
	}
}

// QueueExec and Queued: on pgx a queued statement is sent with the transaction's next
// statement or its COMMIT, not at once (its failure shows there); on database/sql it runs at
// once. Either way it is part of the transaction: committed with it, dropped by Rollback, a
// failure rolls everything back, and no connection is left busy.
func TestQueueExec(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	table := intTable(t)
	pool, pgxDB, stdDB := bothDBs(t)
	insert := `INSERT INTO ` + table + ` (id) VALUES ($1)`
	count := func(ids ...int) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE id = ANY($1)`, ids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	begin := func(db dbx.DB, first int) dbx.Tx {
		t.Helper()
		tx, err := dbx.BeginDeferred(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, insert, first); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	for i, c := range []struct {
		name    string
		db      dbx.DB
		defers  bool
		queuers bool
	}{{"pgx", pgxDB, true, true}, {"database/sql", stdDB, false, false}} {
		base := 100 * (i + 1)
		t.Run(c.name, func(t *testing.T) {
			// Queued statements are committed with the transaction, in order, and a query
			// after them sees them.
			tx := begin(c.db, base+1)
			if _, ok := dbx.Queued(tx).(dbx.Tx); ok == c.queuers {
				t.Errorf("Queued(tx) is the Tx itself: %v, want %v", ok, !c.queuers)
			}
			q := dbx.Queued(tx)
			for _, id := range []int{base + 2, base + 3} {
				if n, err := q.Exec(ctx, insert, id); err != nil || n != 0 && c.queuers {
					t.Fatalf("queued Exec: %d, %v", n, err)
				}
			}
			var seen int
			if err := dbx.QueryRow(ctx, q, `SELECT count(*) FROM `+table+` WHERE id IN ($1, $2)`, []any{base + 2, base + 3}, &seen); err != nil || seen != 2 {
				t.Fatalf("a query after two queued inserts sees %d of them (%v), want 2", seen, err)
			}
			if err := dbx.QueueExec(ctx, tx, insert, base+4); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if n := count(base+1, base+2, base+3, base+4); n != 4 {
				t.Fatalf("%d of 4 rows committed", n)
			}

			// Queued before any statement: BEGIN, the settings and the statement go with
			// the COMMIT.
			tx, err := dbx.BeginDeferred(ctx, c.db, "SET LOCAL application_name = 'wj_queued'")
			if err != nil {
				t.Fatal(err)
			}
			if err := dbx.QueueExec(ctx, tx, insert, base+8); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if n := count(base + 8); n != 1 {
				t.Fatal("a statement queued before any other was not committed")
			}

			// Rollback drops what is queued.
			tx = begin(c.db, base+5)
			if err := dbx.QueueExec(ctx, tx, insert, base+6); err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			if n := count(base+5, base+6); n != 0 {
				t.Fatalf("%d rows of a rolled back transaction exist", n)
			}

			// A queued statement that fails: on pgx its error comes with the Commit, which
			// rolls back the whole transaction.
			tx = begin(c.db, base+7)
			err = dbx.QueueExec(ctx, tx, insert, base+1) // a duplicate
			if c.defers {
				if err != nil {
					t.Fatalf("QueueExec sent the statement at once: %v", err)
				}
				err = tx.Commit(ctx)
			} else {
				_ = tx.Rollback(ctx)
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "23505" {
				t.Fatalf("a failing queued statement: %v, want the duplicate key error", err)
			}
			if n := count(base + 7); n != 0 {
				t.Fatal("the row of a failed transaction exists")
			}
		})
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired", n)
	}
	// The connection of the failed commit went back to the pool idle, not in an aborted
	// transaction: every connection of the pool runs a transaction again.
	for i := range 2 * int(pool.Config().MaxConns) {
		tx := begin(pgxDB, 1000+i)
		if err := dbx.QueueExec(ctx, tx, insert, 2000+i); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("commit after a failed one: %v", err)
		}
	}
	// After Commit the transaction is closed: nothing is queued.
	tx := begin(pgxDB, 3000)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dbx.QueueExec(ctx, tx, insert, 3001); !errors.Is(err, pgx.ErrTxClosed) {
		t.Errorf("QueueExec after Commit: %v, want pgx.ErrTxClosed", err)
	}
}
