package logrepl_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// waitLimit bounds every wait for an event of the stream.
const waitLimit = 20 * time.Second

// server is one private cluster shared by the subtests of a test.
type server struct {
	cluster *testdb.Cluster
	db      store.Driver
	pool    *pgxpool.Pool
}

func startServer(t *testing.T, settings ...string) *server {
	t.Helper()
	return serverOn(t, testdb.StartCluster(t, settings...))
}

// startLogicalServer starts a cluster with testdb.LogicalSettings (wal_level = logical,
// pg_stat_statements) and then settings.
func startLogicalServer(t *testing.T, settings ...string) *server {
	t.Helper()
	return serverOn(t, testdb.StartLogicalCluster(t, settings...))
}

func serverOn(t *testing.T, c *testdb.Cluster) *server {
	t.Helper()
	db, pool := c.Driver(t)
	return &server{cluster: c, db: db, pool: pool}
}

// dsnAs is the DSN of the cluster's database for role.
func (s *server) dsnAs(role string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/test?sslmode=disable", role, s.cluster.Port())
}

func (s *server) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := s.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// env is one outbox schema, its publication and slot on a server.
type env struct {
	t   *testing.T
	srv *server
	st  store.Store
	cfg logrepl.Config
}

// newEnv migrates a fresh schema with the repository's own schema code; setup also creates
// the publication and the slot.
func newEnv(t *testing.T, srv *server, setup bool) *env {
	t.Helper()
	schema := testdb.RandomName("wj_lr_")
	st, err := srv.db.Store(layout.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	cfg, err := logrepl.Config{Schema: schema, StatusInterval: 500 * time.Millisecond}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, st: st, cfg: cfg}
	if setup {
		conn := e.admin("postgres")
		res, err := logrepl.Setup(context.Background(), conn, e.cfg)
		if err != nil {
			t.Fatalf("setup: %v", err)
		}
		if !res.CreatedPublication || !res.CreatedSlot || res.ConsistentPoint == 0 {
			t.Fatalf("setup created %+v", res)
		}
		t.Cleanup(func() { _, _ = logrepl.Drop(context.Background(), conn, e.cfg) })
	}
	return e
}

// admin is an ordinary (not replication) connection as role, closed when the test ends.
func (e *env) admin(role string) *pgconn.PgConn {
	e.t.Helper()
	conn, err := pgconn.Connect(context.Background(), e.srv.dsnAs(role))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// dial opens a replication connection as role, closed when the test ends.
func (e *env) dial(role string) *pgconn.PgConn {
	e.t.Helper()
	conn, err := logrepl.Dial(context.Background(), e.srv.dsnAs(role))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// start starts a reader on a new replication connection as postgres, closed when the test
// ends.
func (e *env) start() (*logrepl.Reader, *pgconn.PgConn) {
	e.t.Helper()
	conn := e.dial("postgres")
	r, err := logrepl.Start(context.Background(), conn, e.cfg)
	if err != nil {
		e.t.Fatalf("start: %v", err)
	}
	e.t.Cleanup(func() { _ = r.Close() })
	return r, conn
}

// envelopes makes n outgoing envelopes to dest, with bodies "<tag>-<i>".
func envelopes(dest, tag string, n int) []row.Envelope {
	out := make([]row.Envelope, n)
	for i := range out {
		id := uuid.New()
		out[i] = row.Envelope{
			ID: id, Destination: dest, Body: []byte(fmt.Sprintf("%s-%d", tag, i)),
			MessageType: "test.message", ContentType: "text/plain", MessageUUID: id.String(),
		}
	}
	return out
}

// insert inserts envelopes in q (a transaction), or in their own transaction when q is nil.
func (e *env) insert(q dbx.Querier, envs []row.Envelope) {
	e.t.Helper()
	ops := store.Ops(e.st)
	if q != nil {
		ops = e.st.With(q)
	}
	if err := ops.InsertEnvelopes(context.Background(), store.InsertParams{Outgoing: envs}); err != nil {
		e.t.Fatalf("insert: %v", err)
	}
}

// commitTx inserts envelopes of tag in one committed transaction and returns their ids.
func (e *env) commitTx(tag string, n int) []uuid.UUID {
	e.t.Helper()
	envs := envelopes("orders", tag, n)
	e.insert(nil, envs)
	return ids(envs)
}

func (e *env) begin() dbx.Tx {
	e.t.Helper()
	tx, err := e.srv.db.Begin(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

func ids(envs []row.Envelope) []uuid.UUID {
	out := make([]uuid.UUID, len(envs))
	for i, e := range envs {
		out[i] = e.ID
	}
	return out
}

func rowIDs(tx logrepl.Tx) []uuid.UUID {
	out := make([]uuid.UUID, len(tx.Rows))
	for i, r := range tx.Rows {
		out[i] = r.ID
	}
	return out
}

// next waits for the reader's next transaction.
func next(t testing.TB, r *logrepl.Reader) logrepl.Tx {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	tx, err := r.Next(ctx)
	if err != nil {
		t.Fatalf("next transaction: %v", err)
	}
	for _, row := range tx.Rows {
		if row.Err != nil {
			t.Fatalf("row %s: %v", row.ID, row.Err)
		}
	}
	return tx
}

// expect waits for the next transaction and checks it holds exactly want, in order.
func expect(t testing.TB, r *logrepl.Reader, what string, want []uuid.UUID) logrepl.Tx {
	t.Helper()
	tx := next(t, r)
	if got := rowIDs(tx); fmt.Sprint(got) != fmt.Sprint(want) {
		bodies := make([]string, len(tx.Rows))
		for i, r := range tx.Rows {
			bodies[i] = string(r.Body)
		}
		t.Fatalf("%s: got rows %v (bodies %q, commit %s..%s), want %v", what, got, bodies, tx.CommitLSN, tx.EndLSN, want)
	}
	return tx
}

// oneLine checks that err wraps sentinel and is one line that contains each of hints.
func oneLine(t testing.TB, err, sentinel error, hints ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %q does not wrap %q", err, sentinel)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error is not one line: %q", err)
	}
	for _, h := range hints {
		if !strings.Contains(err.Error(), h) {
			t.Fatalf("error %q does not say %q", err, h)
		}
	}
	t.Logf("refused: %v", err)
}

// waitConfirmed waits until the slot's confirmed_flush_lsn reaches lsn (the server's state
// has no event to wait on: it is polled).
func (e *env) waitConfirmed(lsn logrepl.LSN) {
	e.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		var confirmed logrepl.LSN
		if err := e.srv.pool.QueryRow(context.Background(),
			"SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", e.cfg.Slot).Scan(&confirmed); err != nil {
			e.t.Fatal(err)
		}
		if confirmed >= lsn {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the slot's confirmed_flush_lsn stays at %s, want %s", confirmed, lsn)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
