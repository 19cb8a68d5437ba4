package bench

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// withStallTimeout sets stallTimeout for one test.
func withStallTimeout(t *testing.T, d time.Duration) {
	old := stallTimeout
	stallTimeout = d
	t.Cleanup(func() { stallTimeout = old })
}

// A leg whose messages are held back (by an older open transaction, for watermill-sql) is not
// stalled, however long it waits: awaitCount keeps waiting and returns once they arrive. With
// no stall allowance at all, any tick without progress and without held-back messages would
// fail it.
func TestAwaitCountWaitsWhileHeld(t *testing.T) {
	withStallTimeout(t, 0)
	e := &env{progress: io.Discard}
	c := newCounter(1)
	calls := 0
	held := func(context.Context) (int64, string, error) {
		calls++
		if calls == 3 { // the older transaction ends: the message arrives
			c.add("m1")
		}
		return 1, "the transaction of backend 1", nil
	}
	if err := e.awaitCount(context.Background(), "leg", c, 1, time.Now(), time.Millisecond, held, nil); err != nil {
		t.Fatalf("awaitCount: %v", err)
	}
	if calls < 3 {
		t.Errorf("held was asked %d times, want 3", calls)
	}
}

// Without held-back messages, a leg without progress is stalled.
func TestAwaitCountStalls(t *testing.T) {
	withStallTimeout(t, 0)
	e := &env{progress: io.Discard}
	for name, held := range map[string]heldFunc{
		"no held-back count": nil,
		"nothing held back":  func(context.Context) (int64, string, error) { return 0, "", nil },
	} {
		err := e.awaitCount(context.Background(), "leg", newCounter(1), 1, time.Now(), time.Millisecond, held, nil)
		if err == nil || !strings.Contains(err.Error(), "leg: stalled at 0/1") {
			t.Errorf("%s: awaitCount = %v, want stalled at 0/1", name, err)
		}
	}
}

// watermill-sql's subscriber reads only rows older than every transaction still open on the
// server: a message committed after another session's transaction began is held back until
// that transaction ends, and wmHeldBack counts it (the cause of the Watermill legs' waits).
func TestWatermillHeldBack(t *testing.T) {
	pool := testdb.Pool(t)
	ctx := context.Background()
	e, err := newEnv(ctx, withZeroFrom(OutboxConfig{DSN: testdb.PostgresDSN()}, outboxDefaults), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.close(); err != nil {
			t.Error(err)
		}
	}()
	o, err := newWMOutbox()(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := o.close(); err != nil {
			t.Error(err)
		}
	}()

	older, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = older.Rollback(ctx) }()
	var pid int
	var xid string
	if err := older.QueryRow(ctx, "SELECT pg_backend_pid(), pg_current_xact_id()::text").Scan(&pid, &xid); err != nil {
		t.Fatal(err)
	}
	if err := o.businessTx(ctx, "bench_orders", e.newMessage()); err != nil {
		t.Fatal(err)
	}
	n, waitingFor, err := o.heldBack()(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || !strings.Contains(waitingFor, "the transaction of backend ") {
		t.Errorf("heldBack = %d, %q; want 1 message waiting for a transaction", n, waitingFor)
	}
	if left, err := o.left(ctx); err != nil || left != 1 {
		t.Errorf("left = %d, %v; want 1", left, err)
	}
	if (&oursOutbox{}).heldBack() != nil {
		t.Error("our outbox holds messages back")
	}
	t.Logf("held back: %d message(s), waiting for %s (the older transaction: backend %d, xid %s)", n, waitingFor, pid, xid)
}
