package main

import (
	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/cmd/watermill-jasper/bench"
)

// benchInbox is "bench inbox", a subcommand of the bench group (bench.go).
var benchInbox = spec{
	name:    "bench inbox",
	summary: "measure the inbox middleware against the same handler without it and behind Watermill's Deduplicator",
	description: "The same handler (one business transaction per message: an INSERT into a table with a uuid " +
		"primary key) runs behind a Watermill router (a) without deduplication, in its own transaction, " +
		"(b) behind this library's inbox, its INSERT in the inbox transaction with the Handled mark (BEGIN and " +
		"the mark pipelined in one round trip), (c) the same with BEGIN sent apart, as on a database/sql handle, " +
		"and (d) behind Watermill's in-memory Deduplicator keyed on the message UUID. It measures the handled " +
		"messages per second with --in-flight messages in flight (and the round trips per message), and the " +
		"send -> ack latency at a steady --rate (with the p99 of pool acquire, BEGIN and COMMIT and the GCs). " +
		"Two raw loops in --in-flight goroutines without a router give the limits: the business transaction " +
		"alone (the ceiling) and the inbox's statements alone (BEGIN; INSERT mark; INSERT; COMMIT). Every leg " +
		"runs --runs times in a rotated order, each in a fresh schema dropped at its end; the report gives " +
		"medians, ratios taken within a run.\n\nProgress goes to stderr; the tables and, last, one RESULT line " +
		"(inbox_msgs_per_s, inbox_p99_added_ms = the median of each run's inbox p99 minus its plain handler's " +
		"p99, ...) go to stdout.",
	examples: []string{
		"bench inbox --dsn postgres://postgres@127.0.0.1:5432/test",
		"bench inbox --in-flight 8 --rate 1000 --duration 10s --runs 5",
	},
	setup: benchSetup("bench inbox", bench.RunInbox, func(fs *pflag.FlagSet, cfg *bench.InboxBenchConfig) (dsn *string, check func() error) {
		fs.IntVar(&cfg.InFlight, "in-flight", bench.DefaultInboxInFlight, "`N` messages in flight in the throughput legs")
		fs.DurationVar(&cfg.Duration, "duration", bench.DefaultInboxDuration, "`DURATION` of each throughput leg (after a 1s warm-up)")
		fs.IntVar(&cfg.MaxConns, "max-conns", 0, "`N` connections in the pgx pool (default: in-flight + 4, at least 32)")
		fs.IntVar(&cfg.Rate, "rate", bench.DefaultInboxRate, "steady rate of the latency legs, in `MSG/S`")
		fs.DurationVar(&cfg.LatencyDuration, "latency-duration", bench.DefaultInboxLatencyDuration, "`DURATION` of each latency leg")
		fs.IntVar(&cfg.Payload, "payload", bench.DefaultInboxPayload, "payload size in `BYTES` (at least 36: it starts with the message UUID)")
		fs.IntVar(&cfg.Runs, "runs", bench.DefaultInboxRuns, "repeat every leg `N` times (in a rotated order) and report the medians")
		fs.BoolVar(&cfg.Quick, "quick", false, "run every leg once at a tiny size, to check the harness (the figures mean nothing)")
		return &cfg.DSN, checks(
			func() error {
				if cfg.MaxConns < 0 {
					return usageErrorf("--max-conns must be positive")
				}
				return nil
			},
			positive("--in-flight, --rate, --payload and --runs", &cfg.InFlight, &cfg.Rate, &cfg.Payload, &cfg.Runs),
			atLeast100ms("--duration and --latency-duration", &cfg.Duration, &cfg.LatencyDuration))
	}),
}
