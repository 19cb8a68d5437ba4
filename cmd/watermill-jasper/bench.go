package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/cmd/watermill-jasper/bench"
	"github.com/watermill-jasper/watermill-jasper/cmd/watermill-jasper/internal/progress"
	"github.com/watermill-jasper/watermill-jasper/database"
)

var benchGroup = group{
	name:    "bench",
	summary: "benchmarks against Watermill's own components (outbox, subscriber, inbox)",
	description: "Benchmarks run against a real PostgreSQL (and RabbitMQ); every leg works in a fresh schema " +
		"with a random name that is dropped when the leg ends, also on failure or Ctrl-C.",
	examples: []string{
		"bench outbox",
		"bench outbox --amqp none --runs 3",
	},
	subs: []spec{
		benchOutbox,
		benchInbox,
		benchSubscriber,
	},
}

var benchOutbox = spec{
	name:    "bench outbox",
	summary: "compare this library's outbox with Watermill's, side by side in one process",
	description: "The same workload goes through (a) this library (publisher in the business transaction, " +
		"forwarder) and (b) Watermill's outbox (watermill-sql v4 publisher in the same transaction + " +
		"components/forwarder + watermill-sql subscriber polling every 10 ms), to a GoChannel sink and to " +
		"RabbitMQ with publisher confirms. It measures the publish rate (one message per business " +
		"transaction), the drain rate of a prefilled backlog, commit -> sink latency at a steady rate, " +
		"the statements an idle relay sends, and, as the physical limit, a raw claim-then-delete loop " +
		"over the same table.\n\nProgress goes to stderr; the tables and, last, one RESULT line go to stdout.",
	examples: []string{
		"bench outbox --dsn postgres://postgres@127.0.0.1:5432/test",
		"bench outbox --amqp none --backlog 50000 --runs 3",
	},
	setup: benchSetup("bench outbox", bench.RunOutbox, func(fs *pflag.FlagSet, cfg *bench.OutboxConfig) (dsn *string, check func() error) {
		fs.BoolVar(&cfg.SkipWatermill, "skip-watermill", false, "skip the Watermill legs (the ratios to Watermill are then n/a)")
		fs.StringVar(&cfg.AMQPURI, "amqp", bench.DefaultAMQPURI, "RabbitMQ `URL`, or none to skip the RabbitMQ legs")
		fs.IntVar(&cfg.Backlog, "backlog", bench.DefaultBacklog, "`N` messages in the backlog of the drain legs and the raw loop")
		fs.IntVar(&cfg.Payload, "payload", bench.DefaultPayload, "payload size in `BYTES`")
		fs.IntVar(&cfg.Publishers, "publishers", bench.DefaultPublishers, "`N` goroutines running business transactions in the publish legs")
		fs.DurationVar(&cfg.PublishDuration, "publish-duration", bench.DefaultPublishDuration, "`DURATION` of each publish leg (after a short warm-up)")
		fs.IntVar(&cfg.Rate, "rate", bench.DefaultRate, "steady publish rate of the latency legs, in `MSG/S`")
		fs.DurationVar(&cfg.LatencyDuration, "latency-duration", bench.DefaultLatencyDuration, "`DURATION` of each latency leg")
		fs.IntVar(&cfg.Runs, "runs", bench.DefaultRuns, "repeat the benchmark `N` times and report the medians")
		fs.BoolVar(&cfg.SkipRiver, "skip-river", false, "skip River's legs")
		fs.BoolVar(&cfg.SkipCDC, "skip-cdc", false, "skip the logical-replication legs (the cdc_* figures)")
		fs.StringVar(&cfg.CDCDSN, "cdc-dsn", "", "PostgreSQL database `URL` of the logical-replication legs: wal_level = logical and a role with REPLICATION "+
			"(default: --dsn when its server runs wal_level = logical, else a private cluster started for the run, which needs initdb and pg_ctl)")
		fs.BoolVar(&cfg.Quick, "quick", false, "run every leg once at a tiny size, to check the harness (the figures mean nothing)")
		return &cfg.DSN, checks(
			positive("--backlog, --payload, --publishers, --rate and --runs", &cfg.Backlog, &cfg.Payload, &cfg.Publishers, &cfg.Rate, &cfg.Runs),
			atLeast100ms("--publish-duration and --latency-duration", &cfg.PublishDuration, &cfg.LatencyDuration))
	}),
}

// benchResult is what every benchmark returns: a table, its RESULT line, and its figures
// (--json).
type benchResult interface {
	WriteTable(w io.Writer) error
	ResultLine() string
	Stats() bench.Stats
}

// writeBenchResult prints the table, then the RESULT line last.
func writeBenchResult(w io.Writer, res benchResult) error {
	if err := res.WriteTable(w); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "\n"+res.ResultLine())
	return err
}

// benchSetup is the setup of a benchmark command whose config is C. It registers the flags
// every benchmark command has, --dsn (PostgreSQL only) and --cpuprofile, then the command's own
// (flags: it binds them to cfg and returns where the DSN goes in cfg and the check of its
// flags). The command checks that --dsn names PostgreSQL, then its flags, runs the benchmark
// (run, progress on stderr) under the CPU profile and prints its table and, last, its RESULT
// line. The progress lines go to stderr through a progress bar of the legs done (plain lines
// when stderr is not a terminal). Errors never show the DSN's password.
func benchSetup[C any, R benchResult](command string, run func(ctx context.Context, cfg C, progress io.Writer) (R, error),
	flags func(fs *pflag.FlagSet, cfg *C) (dsn *string, check func() error)) func(*pflag.FlagSet) runFunc {
	return func(fs *pflag.FlagSet) runFunc {
		var db dbFlags
		fs.Var(&db.dsn, "dsn", "PostgreSQL database `URL` the benchmark creates its schemas in: postgres://user:password@host:5432/db "+
			"(default: $"+dsnEnv+", else "+defaultDSN+")")
		cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process to `FILE` (go tool pprof FILE)")
		jsonPath := fs.String("json", "", "also write the figures to `FILE` as one flat JSON object: each key's median, KEY_min and KEY_max (docs/benchmarks.md lists the keys)")
		var cfg C
		cfgDSN, check := flags(fs, &cfg)
		return func(ctx context.Context, e *env, _ []string) error {
			dsn, err := db.postgresDSN(command)
			if err != nil {
				return err
			}
			if err := check(); err != nil {
				return err
			}
			*cfgDSN = dsn
			stop, err := startCPUProfile(*cpuProfile)
			if err != nil {
				return err
			}
			defer stop()
			bar := progress.New(e.stderr, command, -1) // the benchmark sets the total at its first leg
			res, err := run(ctx, cfg, bar)
			bar.Finish()
			if err != nil {
				return redactError(err, dsn, flagDSNs(fs)...)
			}
			if err := writeBenchJSON(*jsonPath, res.Stats()); err != nil {
				return err
			}
			return writeBenchResult(e.stdout, res)
		}
	}
}

// flagDSNs are the values of fs's flags named *-dsn (besides --dsn), for redactError.
func flagDSNs(fs *pflag.FlagSet) []string {
	var dsns []string
	fs.VisitAll(func(f *pflag.Flag) {
		if strings.HasSuffix(f.Name, "-dsn") && f.Value.String() != "" {
			dsns = append(dsns, f.Value.String())
		}
	})
	return dsns
}

// writeBenchJSON writes stats to path as JSON (nothing when path is empty).
func writeBenchJSON(path string, stats bench.Stats) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	if err := stats.WriteJSON(f); err != nil {
		f.Close()
		return fmt.Errorf("--json: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	return nil
}

// postgresDSN is the --dsn of command, which must name a PostgreSQL database.
func (f *dbFlags) postgresDSN(command string) (string, error) {
	dsn, err := f.DSN()
	if err != nil {
		return "", err
	}
	d, err := dialectOfDSN(dsn)
	if err != nil {
		return "", err
	}
	if d != database.Postgres {
		return "", usageErrorf("%s needs PostgreSQL: give a postgres:// --dsn", command)
	}
	return dsn, nil
}

// startCPUProfile writes a CPU profile to path until stop is called; an empty path profiles nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
