package publisher

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// A Publish blocked in the database (another transaction holds the same envelope id) keeps
// Close waiting; calls after Close fail at once.
func TestCloseWaitsForPublishInFlight(t *testing.T) {
	_, cfg := testdb.Migrated(t)
	ctx := context.Background()
	pool := testdb.Pool(t)

	blocker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = blocker.Rollback(ctx) }()
	bp, err := NewPublisher(sql.TxFromPgx(blocker), Config{Schema: cfg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bp.Publish("orders", message.NewMessage("contended", nil)); err != nil {
		t.Fatal(err)
	}

	p, err := NewPublisher(sql.BeginnerFromPgx(pool), Config{Schema: cfg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	published := make(chan error, 1)
	go func() { published <- p.Publish("orders", message.NewMessage("contended", nil)) }()
	waitForLockWait(t, cfg)

	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	deadline := time.Now().Add(10 * time.Second)
	for !p.closed.Load() {
		if time.Now().After(deadline) {
			t.Fatal("Close did not start")
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.Publish("orders", message.NewMessage("late", nil)); !errors.Is(err, ErrPublisherClosed) {
		t.Errorf("Publish while closing: %v, want ErrPublisherClosed", err)
	}
	select {
	case <-closed:
		t.Fatal("Close returned while a Publish was in flight")
	case <-published:
		t.Fatal("the contended Publish returned while the other transaction held the id")
	default:
	}

	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-published; err != nil {
		t.Errorf("in-flight Publish: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+cfg.Qualified(schema.OutgoingTable)).Scan(&n); err != nil || n != 1 {
		t.Errorf("outgoing rows = %d (%v), want the in-flight message", n, err)
	}
}

// waitForLockWait polls until a session inserting into the schema's outgoing table waits
// for a lock.
func waitForLockWait(t *testing.T, cfg schema.Config) {
	t.Helper()
	q := fmt.Sprintf(`SELECT count(*) FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND query LIKE '%%%s%%'`, cfg.Qualified(schema.OutgoingTable))
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := testdb.Pool(t).QueryRow(context.Background(), q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the Publish never waited for the lock")
		}
		time.Sleep(time.Millisecond)
	}
}
