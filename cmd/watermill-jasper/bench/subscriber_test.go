package bench

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// TestRunSubscriberTiny runs every leg of the subscriber benchmark on a backlog of 300 and
// checks that every count is exact (each message handled once, nothing left unacknowledged)
// and that no schema is left over. Speed is not asserted.
func TestRunSubscriberTiny(t *testing.T) {
	pool := testdb.Pool(t) // fails with a hint when PostgreSQL is down
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	before := len(createdSchemas())
	var progress stepRecorder
	const backlog = 300
	res, err := RunSubscriber(ctx, SubscriberConfig{DSN: testdb.PostgresDSN(), Backlog: backlog, Runs: 2}, &progress)
	if err != nil {
		t.Fatalf("RunSubscriber: %v\nprogress:\n%s", err, progress.String())
	}
	progress.check(t)
	if res.Raw.N != backlog || res.Raw.Rate <= 0 {
		t.Errorf("raw loop: %+v", res.Raw)
	}
	want := []struct {
		impl     string
		inFlight int
	}{{implOurs, 1}, {implOurs, SubscriberWideInFlight}, {implOurs, SubscriberWidestInFlight}, {implWatermillSQL, 1}, {implWatermillSQL, SubscriberWideInFlight}, {implRiver, 0}}
	if len(res.Legs) != len(want) {
		t.Fatalf("got %d consume legs, want %d: %+v", len(res.Legs), len(want), res.Legs)
	}
	for i, l := range res.Legs {
		if l.Impl != want[i].impl || (want[i].inFlight != 0 && l.InFlight != want[i].inFlight) {
			t.Errorf("leg %d is %s/%d, want %s/%d", i, l.Impl, l.InFlight, want[i].impl, want[i].inFlight)
		}
		counted := l.Impl != implRiver // River's statements are not counted
		if l.N != backlog || l.Received != backlog || l.Dups != 0 || l.Left != 0 || l.Rate <= 0 || (counted && l.Statements <= 0) {
			t.Errorf("%s %d in flight: handled %d of %d, %d duplicates, %d left, %.0f msg/s, %d statements",
				l.Impl, l.InFlight, l.Received, l.N, l.Dups, l.Left, l.Rate, l.Statements)
		}
	}
	var table bytes.Buffer
	if err := res.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"median of 2 runs", "raw loop", "4 (4 subscribers)", "TARGETS", "sub_best_x_river", "FIGURES"} {
		if !strings.Contains(table.String(), w) {
			t.Errorf("table lacks %q:\n%s", w, table.String())
		}
	}
	line := res.ResultLine()
	if !regexp.MustCompile(`^RESULT sub_4_of_1=\d+\.\d+ sub_16_of_4=\d+\.\d+ sub_best_of_raw=\d+\.\d+ sub_best_x_watermill=\d+\.\d+ sub_best_x_river=\d+\.\d+$`).MatchString(line) {
		t.Errorf("result line %q", line)
	}
	t.Logf("\n%s%s", table.String(), line)

	created := createdSchemas()[before:]
	if len(created) != 2*7 { // 2 runs x (raw loop + 6 legs)
		t.Errorf("%d schemas created, want 14", len(created))
	}
	var left int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", created).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d benchmark schemas were not dropped", left)
	}
	if _, err := RunSubscriber(ctx, SubscriberConfig{}, nil); err == nil {
		t.Error("RunSubscriber without a DSN did not fail")
	}
}

// A cancelled context stops the benchmark with an error and still drops its schemas.
func TestRunSubscriberCancelled(t *testing.T) {
	pool := testdb.Pool(t)
	before := len(createdSchemas())
	ctx, cancel := context.WithCancel(context.Background())
	var progress subLockedBuffer
	done := make(chan error, 1)
	go func() {
		_, err := RunSubscriber(ctx, SubscriberConfig{DSN: testdb.PostgresDSN(), Backlog: 5000}, &progress)
		done <- err
	}()
	// Cancel once a consume leg has started.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(progress.String(), "ours 1 in flight: prefilling") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Log("the benchmark finished before it was cancelled")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("RunSubscriber did not return after cancellation")
	}
	created := createdSchemas()[before:]
	var left int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", created).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if len(created) == 0 || left != 0 {
		t.Errorf("%d schemas created, %d left after cancellation", len(created), left)
	}
}

// subLockedBuffer is a bytes.Buffer safe for a writer and a reader at once.
type subLockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *subLockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *subLockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
