package durability

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/jasperid"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// holdLock takes the advisory lock of id on a connection of its own, as another process
// would, and releases it when the test ends.
func holdLock(t *testing.T, db database.DB, id int32) database.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(true) })
	// Jasper's global lock ids are database-wide: agents of other tests (other schemas, other
	// packages) take them for the length of a short transaction, so wait for the lock rather
	// than fail when one of them holds it at this moment.
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := conn.Exec(waitCtx, `SELECT pg_advisory_lock($1::bigint)`, int64(id)); err != nil {
		t.Fatalf("take lock %d: %v", id, err)
	}
	return conn
}

// lockHolder returns the backend pid holding the advisory lock of id, or 0.
func lockHolder(t *testing.T, db database.DB, id int32) int32 {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
  AND objsubid = 1 AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid`, int64(id))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var pid int32
	for rows.Next() {
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return pid
}

// testDB is the driver of the shared pgx pool.
func testDB(t *testing.T) database.Driver { return testdb.PgxDriver(t) }

func TestNewNodeRandomID(t *testing.T) {
	t.Parallel()
	db := testDB(t)
	n, err := NewNode(context.Background(), db, NodeConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	if n.ID() == 0 {
		t.Fatal("random node id is 0 (AnyNode)")
	}
	if lockHolder(t, db, n.ID()) == 0 {
		t.Fatalf("node %d does not hold its lock", n.ID())
	}
	if err := n.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if pid := lockHolder(t, db, n.ID()); pid != 0 {
		t.Fatalf("lock of node %d still held by backend %d after Close", n.ID(), pid)
	}
	if err := n.Check(context.Background()); !errors.Is(err, ErrNodeClosed) {
		t.Fatalf("Check after Close = %v, want ErrNodeClosed", err)
	}
}

func TestNewNodeConfiguredIDInUse(t *testing.T) {
	t.Parallel()
	db := testDB(t)
	id := jasperid.NewNodeID()
	holdLock(t, db, id)
	_, err := NewNode(context.Background(), db, NodeConfig{ID: id}, watermill.NopLogger{})
	if !errors.Is(err, ErrNodeIDInUse) {
		t.Fatalf("NewNode with a held id = %v, want ErrNodeIDInUse", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(id)) {
		t.Fatalf("error %q does not name the id %d", err, id)
	}
}

func TestNewNodeConfiguredIDFree(t *testing.T) {
	t.Parallel()
	db := testDB(t)
	id := jasperid.NewNodeID()
	n, err := NewNode(context.Background(), db, NodeConfig{ID: id}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.ID() != id {
		t.Fatalf("ID() = %d, want %d", n.ID(), id)
	}
	// A second node with the same id, even in this process, is refused.
	if _, err := NewNode(context.Background(), db, NodeConfig{ID: id}, nil); !errors.Is(err, ErrNodeIDInUse) {
		t.Fatalf("second node with id %d: %v, want ErrNodeIDInUse", id, err)
	}
}

// Negative ids are sign-extended, exactly as Jasper passes them to pg_advisory_lock.
func TestNodeNegativeIDLocksSignExtendedKey(t *testing.T) {
	t.Parallel()
	db := testDB(t)
	var id int32
	for id >= 0 {
		id = jasperid.NewNodeID()
	}
	n, err := NewNode(context.Background(), db, NodeConfig{ID: id}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var held bool
	err = database.QueryRow(context.Background(), db, `SELECT NOT pg_try_advisory_xact_lock($1::bigint)`, []any{int64(id)}, &held)
	if err != nil {
		t.Fatal(err)
	}
	if !held {
		t.Fatalf("bigint key %d (sign-extended %d) is not locked", int64(id), id)
	}
}

func TestNewNodeRandomIDCollisionPicksAnother(t *testing.T) {
	// Not parallel: replaces newNodeID.
	db := testDB(t)
	taken := jasperid.NewNodeID()
	holdLock(t, db, taken)
	free := jasperid.NewNodeID()
	for free == taken {
		free = jasperid.NewNodeID()
	}
	ids := []int32{taken, taken, free}
	orig := newNodeID
	newNodeID = func() int32 { id := ids[0]; ids = ids[1:]; return id }
	t.Cleanup(func() { newNodeID = orig })

	n, err := NewNode(context.Background(), db, NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.ID() != free {
		t.Fatalf("ID() = %d, want the free id %d after two collisions", n.ID(), free)
	}
}

func TestNodeCheckRelocksAfterConnectionLoss(t *testing.T) {
	t.Parallel()
	db := testDB(t)
	n, err := NewNode(context.Background(), db, NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	pid := lockHolder(t, db, n.ID())
	if pid == 0 {
		t.Fatal("lock not held")
	}
	// The timeout makes it wait until the backend has exited.
	if _, err := db.Exec(context.Background(), `SELECT pg_terminate_backend($1, 5000)`, pid); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Check(ctx); err != nil {
		t.Fatalf("Check after the lock connection was killed: %v", err)
	}
	if now := lockHolder(t, db, n.ID()); now == 0 || now == pid {
		t.Fatalf("lock holder after Check = %d (killed backend was %d)", now, pid)
	}
}

func TestNodeWithDatabaseSQL(t *testing.T) {
	t.Parallel()
	db := testdb.StdDriver(t)
	n, err := NewNode(context.Background(), db, NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lockHolder(t, db, n.ID()) == 0 {
		t.Fatal("lock not held")
	}
	if err := n.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := NewNode(context.Background(), db, NodeConfig{ID: n.ID()}, nil); !errors.Is(err, ErrNodeIDInUse) {
		t.Fatalf("same id: %v, want ErrNodeIDInUse", err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if pid := lockHolder(t, db, n.ID()); pid != 0 {
		t.Fatalf("lock still held by %d after Close", pid)
	}
}

// sqlServerLike is a driver that says it is SQL Server.
type sqlServerLike struct{ database.Driver }

func (sqlServerLike) Dialect() database.Dialect { return database.SQLServer }

// The node lock may come from another pool (NodeConfig.SessionDB), of the same database only.
func TestNodeSessionDB(t *testing.T) {
	t.Parallel()
	db := testDB(t)
	if _, err := NewNode(context.Background(), db, NodeConfig{SessionDB: sqlServerLike{db}}, nil); err == nil || !strings.Contains(err.Error(), "SessionDB") {
		t.Fatalf("SessionDB of another database: %v, want an error naming SessionDB", err)
	}
	n, err := NewNode(context.Background(), db, NodeConfig{SessionDB: testdb.StdDriver(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if lockHolder(t, db, n.ID()) == 0 {
		t.Fatal("lock not held")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if pid := lockHolder(t, db, n.ID()); pid != 0 {
		t.Fatalf("lock still held by %d after Close", pid)
	}
}
