package main

import (
	"context"
	"flag"
	"time"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/bench"
)

// benchInbox is "bench inbox", a subcommand of the bench group (bench.go).
var benchInbox = spec{
	name:    "bench inbox",
	summary: "measure the inbox middleware against the same handler without it and behind Watermill's Deduplicator",
	description: "The same handler (one business transaction per message: an INSERT into a table with a uuid " +
		"primary key) runs behind a Watermill router (a) without deduplication, in its own transaction, " +
		"(b) behind this library's inbox, its INSERT in the inbox transaction with the Handled mark, and (c) behind " +
		"Watermill's in-memory Deduplicator keyed on the message UUID. It measures the handled messages per " +
		"second with --in-flight messages in flight, and the send -> ack latency at a steady --rate; the " +
		"business transaction alone, in --in-flight goroutines without a router, is the ceiling. Every leg " +
		"works in a fresh schema that is dropped at its end.\n\nProgress goes to stderr; the tables and, last, " +
		"one RESULT line (inbox_msgs_per_s, inbox_p99_added_ms = the inbox's p99 minus the plain handler's, ...) " +
		"go to stdout.",
	examples: []string{
		"bench inbox --dsn postgres://postgres@127.0.0.1:5432/test",
		"bench inbox --in-flight 8 --rate 1000 --duration 10s",
	},
	setup: func(fs *flag.FlagSet) runFunc {
		var db dbFlags
		fs.Var(&db.dsn, "dsn", "PostgreSQL database `URL` the benchmark creates its schemas in: postgres://user:password@host:5432/db "+
			"(default: $"+dsnEnv+", else "+defaultDSN+")")
		cfg := bench.InboxBenchConfig{}
		fs.IntVar(&cfg.InFlight, "in-flight", bench.DefaultInboxInFlight, "`N` messages in flight in the throughput legs")
		fs.DurationVar(&cfg.Duration, "duration", bench.DefaultInboxDuration, "`DURATION` of each throughput leg (after a 1s warm-up)")
		fs.IntVar(&cfg.Rate, "rate", bench.DefaultInboxRate, "steady rate of the latency legs, in `MSG/S`")
		fs.DurationVar(&cfg.LatencyDuration, "latency-duration", bench.DefaultInboxLatencyDuration, "`DURATION` of each latency leg")
		fs.IntVar(&cfg.Payload, "payload", bench.DefaultInboxPayload, "payload size in `BYTES` (at least 36: it starts with the message UUID)")
		return func(ctx context.Context, e *env, _ []string) error {
			dsn, err := db.DSN()
			if err != nil {
				return err
			}
			d, err := dialectOfDSN(dsn)
			if err != nil {
				return err
			}
			if d != database.Postgres {
				return usageErrorf("bench inbox needs PostgreSQL: give a postgres:// --dsn")
			}
			switch {
			case cfg.InFlight < 1, cfg.Rate < 1, cfg.Payload < 1:
				return usageErrorf("--in-flight, --rate and --payload must be positive")
			case cfg.Duration < 100*time.Millisecond, cfg.LatencyDuration < 100*time.Millisecond:
				return usageErrorf("--duration and --latency-duration must be at least 100ms")
			}
			cfg.DSN = dsn
			res, err := bench.RunInbox(ctx, cfg, e.stderr)
			if err != nil {
				return redactError(err, dsn)
			}
			return writeBenchResult(e.stdout, res)
		}
	},
}
