package bench

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// A tiny RunInbox: every leg runs, the report and RESULT line are complete, and no schema
// is left behind. (Speed is measured by `watermill-jasper bench inbox`, never asserted.)
func TestRunInboxTiny(t *testing.T) {
	ctx := context.Background()
	var progress stepRecorder
	res, err := RunInbox(ctx, InboxBenchConfig{
		DSN: testdb.PostgresDSN(), InFlight: 2, Duration: 200 * time.Millisecond,
		Rate: 200, LatencyDuration: 300 * time.Millisecond, Payload: 64, Runs: 1,
	}, &progress)
	if err != nil {
		t.Fatalf("RunInbox: %v\n%s", err, progress.String())
	}
	progress.check(t)
	if res.CeilingTPS <= 0 || res.RawInboxTPS <= 0 || len(res.Runs) != 1 || len(res.Throughput) != 5 || len(res.Latency) != 5 {
		t.Fatalf("result %+v", res)
	}
	for _, th := range res.Throughput {
		if th.MsgsPerS <= 0 || th.RoundTrips <= 0 {
			t.Errorf("%s: no messages handled, or no round trips counted: %+v", th.Variant, th)
		}
	}
	for _, l := range res.Latency {
		if l.Sent != 60 || l.P99 <= 0 || l.P50 > l.P99 || l.P99 > l.Max {
			t.Errorf("%s: latency %+v", l.Variant, l)
		}
	}
	line := res.ResultLine()
	if !regexp.MustCompile(`^RESULT inbox_msgs_per_s=\d+ inbox_p99_added_ms=-?\d+\.\d\d plain_msgs_per_s=\d+ deduplicator_msgs_per_s=\d+ `).MatchString(line) {
		t.Errorf("result line %q", line)
	}
	var table bytes.Buffer
	if err := res.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"THROUGHPUT (2 in flight)", "LATENCY at 200 msg/s", "inbox p99 added", InboxVariantDeduplicator, InboxVariantInboxApart, InboxVariantInboxCleanup, "Raw inbox statements"} {
		if !strings.Contains(table.String(), w) {
			t.Errorf("table lacks %q:\n%s", w, table.String())
		}
	}
	inboxCreated.Lock()
	names := append([]string(nil), inboxCreated.names...)
	inboxCreated.Unlock()
	var left int
	if err := testdb.Pool(t).QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)`, names).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if len(names) != 7 || left != 0 {
		t.Errorf("%d bench schemas created, %d left; want 7 and 0 (one per variant)", len(names), left)
	}
	if _, err := RunInbox(ctx, InboxBenchConfig{}, nil); err == nil {
		t.Error("RunInbox without a DSN did not fail")
	}
}
