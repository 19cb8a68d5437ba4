package bench

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// TestRunOutboxTiny runs every leg of the benchmark on a tiny configuration and checks that
// every count is exact (no loss, no duplicate, nothing left behind) and that no schema is
// left over. Speed is not asserted. RabbitMQ legs run when WATERMILL_JASPER_TEST_AMQP is set.
func TestRunOutboxTiny(t *testing.T) {
	pool := testdb.Pool(t) // fails with a hint when PostgreSQL is down
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg := OutboxConfig{DSN: testdb.PostgresDSN(), AMQPURI: AMQPNone, Quick: true}
	if uri := os.Getenv("WATERMILL_JASPER_TEST_AMQP"); uri != "" {
		cfg.AMQPURI = uri
	}
	var progress stepRecorder
	res, err := RunOutbox(ctx, cfg, &progress)
	if err != nil {
		t.Fatalf("RunOutbox: %v\nprogress:\n%s", err, progress.String())
	}
	progress.check(t)
	for _, d := range res.Drains {
		if d.Received != d.N || d.Dups != 0 || d.Left != 0 {
			t.Errorf("drain %s %s %d: received %d, %d duplicates, %d left", d.Impl, d.Sink, d.N, d.Received, d.Dups, d.Left)
		}
	}
	wantDrains := 9 // ours 500/200/2000, watermill 500/200, river 500; ours polling, by slot and table-less on the logical server
	if cfg.amqpEnabled() {
		wantDrains += 4 // ours, watermill, watermill+jasperamqp, the broker's limit
	}
	if len(res.Drains) != wantDrains {
		t.Errorf("got %d drain legs, want %d", len(res.Drains), wantDrains)
	}
	if res.Raw.N != res.Config.Backlog || res.Raw.Rate <= 0 || res.RawClaim.N != res.Config.Backlog {
		t.Errorf("raw loop: %+v", res.Raw)
	}
	for _, l := range res.Latency {
		if l.Sent == 0 || l.Received != l.Sent || l.Dups != 0 {
			t.Errorf("latency %s %s: sent %d, received %d, %d duplicates", l.Impl, l.Sink, l.Sent, l.Received, l.Dups)
		}
	}
	for _, p := range res.Publish {
		if p.Txs <= 0 {
			t.Errorf("publish %s: no transaction committed", p.Name)
		}
	}
	if len(res.Publish) != 7 || len(res.Idle) != 3 || len(res.Latency) != 7 {
		t.Errorf("got %d publish, %d latency and %d idle legs, want 7, 7 and 3", len(res.Publish), len(res.Latency), len(res.Idle))
	}
	var table bytes.Buffer
	if err := res.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	line := res.ResultLine()
	if !strings.HasPrefix(line, "RESULT drain_of_raw=") || strings.Contains(line, "NaN") {
		t.Errorf("result line %q", line)
	}
	keys := []string{"drain_ours", "drain_raw", "drain_watermill", "drain_river", "drain_ours_5k", "drain_ours_1m",
		"publish_ours", "publish_bare_insert", "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "river_latency_p99_ms",
		"idle_statements_per_s", "rss_mb_5k", "rss_mb_1m", "scheduled_late_p99_ms",
		"cdc_drain", "cdc_polling_drain", "cdc_latency_p50_ms", "cdc_latency_p99_ms", "cdc_polling_latency_p99_ms",
		"cdc_idle_statements_per_s", "cdc_idle_outbox_statements_per_s", "idle_relay_statements_per_s",
		"cdc_tableless_drain", "cdc_tableless_latency_p50_ms", "cdc_tableless_latency_p99_ms"}
	if cfg.amqpEnabled() {
		keys = append(keys, "amqp_ours", "amqp_broker_limit")
	}
	// Rates and sizes are positive; an idle relay may send nothing in the short idle window.
	rate := func(k string) bool {
		return strings.HasPrefix(k, "drain_") || strings.HasPrefix(k, "publish_") || strings.HasPrefix(k, "rss_") || strings.HasPrefix(k, "amqp_") ||
			strings.HasSuffix(k, "_drain")
	}
	for _, k := range keys {
		if st, ok := res.Figures[k]; !ok || st.Runs != 1 || st.Median < 0 || (rate(k) && st.Median == 0) {
			t.Errorf("figure %s: %+v (present: %v)", k, st, ok)
		}
	}
	t.Logf("\n%s%s", table.String(), line)

	var left int
	created := createdSchemas()
	if len(created) == 0 {
		t.Fatal("no schema recorded")
	}
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", created).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d benchmark schemas were not dropped", left)
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 5}, {0.99, 10}, {1, 10}, {0.1, 1}} {
		if got := percentile(ds, c.p); got != c.want {
			t.Errorf("percentile(%v) = %v, want %v", c.p, got, c.want)
		}
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", 12345.6: "12,346"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}
