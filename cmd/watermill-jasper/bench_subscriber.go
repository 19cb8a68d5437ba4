package main

import (
	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/cmd/watermill-jasper/bench"
)

// benchSubscriber is "bench subscriber", a subcommand of the bench group (bench.go).
var benchSubscriber = spec{
	name:    "bench subscriber",
	summary: "compare this library's subscriber with watermill-sql's, side by side in one process",
	description: "The same prefilled backlog is consumed through a Watermill router whose handler only counts " +
		"message UUIDs, (a) by this library's subscriber over the incoming table (a durable local queue) with 1 " +
		"and 4 messages in flight (MaxInFlight), and (b) by watermill-sql v4's subscriber (log schema with a BYTEA " +
		"payload, poll interval 10 ms) with 1 subscriber and with 4 subscribers of one consumer group. Each leg " +
		"is timed from the router's start to the last message handled; counts are exact (every message once, " +
		"duplicates reported, nothing left unacknowledged). The raw claim-then-delete loop over the incoming table " +
		"(no router) is the limit. Every leg works in a fresh schema that is dropped at its end, also on failure " +
		"or Ctrl-C.\n\nProgress goes to stderr; the table and, last, one RESULT line (sub1_x = ours/watermill-sql " +
		"with 1 in flight, sub4_x = ours with 4 in flight / watermill-sql's best, sub4_of_limit = ours with 4 in " +
		"flight / the raw loop) go to stdout.",
	examples: []string{
		"bench subscriber --dsn postgres://postgres@127.0.0.1:5432/test",
		"bench subscriber --runs 3",
		"bench subscriber --backlog 50000 --payload 256 --batch 1000",
	},
	setup: benchSetup("bench subscriber", bench.RunSubscriber, func(fs *pflag.FlagSet, cfg *bench.SubscriberConfig) (dsn *string, check func() error) {
		fs.IntVar(&cfg.Backlog, "backlog", bench.DefaultSubscriberBacklog, "`N` messages in the backlog of every leg")
		fs.IntVar(&cfg.Payload, "payload", bench.DefaultSubscriberPayload, "payload size in `BYTES`")
		fs.IntVar(&cfg.Batch, "batch", bench.DefaultSubscriberBatch, "`N` messages per claim (ours: BatchSize) and per query (watermill-sql: SubscribeBatchSize); both default to 100")
		fs.IntVar(&cfg.Runs, "runs", bench.DefaultRuns, "repeat the benchmark `N` times and report the medians")
		fs.BoolVar(&cfg.SkipRiver, "skip-river", false, "skip River's leg")
		fs.BoolVar(&cfg.Quick, "quick", false, "run every leg once at a tiny size, to check the harness (the figures mean nothing)")
		return &cfg.DSN, positive("--backlog, --payload, --batch and --runs", &cfg.Backlog, &cfg.Payload, &cfg.Batch, &cfg.Runs)
	}),
}
