package bench

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// TestScheduledLeg runs the scheduled leg on a few delayed messages: every one is delivered,
// none before its due time, and the leg's schema is dropped. Lateness is logged, not asserted.
func TestScheduledLeg(t *testing.T) {
	pool := testdb.Pool(t) // fails with a hint when PostgreSQL is down
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	e, err := newEnv(ctx, withZeroFrom(OutboxConfig{DSN: testdb.PostgresDSN()}, outboxDefaults), &progress)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.close(); err != nil {
			t.Error(err)
		}
	}()
	before := len(createdSchemas())
	const n = 30
	res, err := e.scheduledLeg(ctx, n, 500*time.Millisecond)
	if err != nil {
		t.Fatalf("scheduledLeg: %v\nprogress:\n%s", err, progress.String())
	}
	if res.N != n || res.Early != 0 || res.EarlyMax != 0 {
		t.Errorf("%+v: want %d messages, none early", res, n)
	}
	if res.LateP50 < 0 || res.LateP50 > res.LateP99 || res.LateP99 > res.LateMax {
		t.Errorf("lateness percentiles out of order: %+v", res)
	}
	t.Logf("%d delayed messages: lateness p50 %s, p99 %s, max %s", res.N, fmtMs(res.LateP50), fmtMs(res.LateP99), fmtMs(res.LateMax))

	created := createdSchemas()[before:]
	var left int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", created).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if len(created) == 0 || left != 0 {
		t.Errorf("%d schemas created, %d not dropped", len(created), left)
	}
	if _, err := e.scheduledLeg(ctx, 0, time.Second); err == nil {
		t.Error("a leg of no messages did not fail")
	}
}

// scheduledFigures counts early messages apart from the lateness of the others.
func TestScheduledFigures(t *testing.T) {
	t0 := time.Now()
	due := map[string]time.Time{"a": t0, "b": t0, "c": t0, "d": t0}
	arrived := map[string]time.Time{
		"a": t0.Add(2 * time.Millisecond), "b": t0.Add(-3 * time.Millisecond),
		"c": t0.Add(5 * time.Millisecond), "d": t0.Add(time.Millisecond),
	}
	res, err := scheduledFigures(due, arrived)
	if err != nil {
		t.Fatal(err)
	}
	want := ScheduledResult{N: 4, Early: 1, EarlyMax: 3 * time.Millisecond,
		LateP50: 2 * time.Millisecond, LateP99: 5 * time.Millisecond, LateMax: 5 * time.Millisecond}
	if res != want {
		t.Errorf("scheduledFigures = %+v, want %+v", res, want)
	}
	delete(arrived, "c")
	if _, err := scheduledFigures(due, arrived); err == nil {
		t.Error("a message that never arrived went unnoticed")
	}
}
