package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Defaults of the soak command.
const (
	defaultSoakDuration     = 10 * time.Minute
	defaultSoakAMQP         = "amqp://guest:guest@127.0.0.1:5672/"
	defaultSoakRelays       = 3
	defaultSoakRate         = 200
	defaultSoakKillEvery    = "10s-20s"
	defaultSoakFaultEvery   = 20 * time.Second
	defaultSoakOutage       = 3 * time.Second
	defaultSoakDrainTimeout = 3 * time.Minute
	defaultSoakRollback     = 0.1
	defaultSoakRefused      = 0.05
	defaultSoakConsumers    = 4
	defaultSoakPublishers   = 4
)

// soakFaultKinds are the fault kinds --faults accepts, in the order the report lists them.
var soakFaultKinds = []string{faultKill, faultBrokerCut, faultDBCut, faultDBRestart}

const (
	faultKill      = "relay-kill"
	faultBrokerCut = "broker-cut"
	faultDBCut     = "db-cut"
	faultDBRestart = "db-restart"
)

var soakSpec = spec{
	name:    "soak",
	summary: "chaos soak: relays, broker and database under sustained faults, with exact counts",
	description: "Runs the whole system for --duration on a private PostgreSQL cluster (initdb in a temporary " +
		"directory, removed at the end) and RabbitMQ (--amqp; a queue named wj-soak-<random>, deleted at the " +
		"end): publishers in this process write one business row and one outbox message per transaction " +
		"(--rollback of them rolled back on purpose, --refused of them sent to a destination the relays can " +
		"never publish to), --relays relay processes (this binary's relay command) relay the outbox to " +
		"RabbitMQ, and --consumers Watermill routers consume the queue behind the library's dead-letter and " +
		"inbox middleware, writing one effect row per application. The relays and the consumers reach the " +
		"database and the broker through TCP proxies.\n\n" +
		"Faults (--faults): a random relay is killed with SIGKILL every --kill-every and restarted " +
		"(relay-kill); every --fault-every the connections to the broker (broker-cut) or to the database " +
		"(db-cut) are cut through the proxies for --outage, in turn; once, mid-run, the database is stopped " +
		"with pg_ctl stop -m immediate and started again (db-restart).\n\n" +
		"Then publishing stops and the soak waits for the outbox to drain (up to --drain-timeout) and prints " +
		"the figures: committed, rolled back, delivered, applied once, lost (committed, never applied, not " +
		"dead-lettered and no longer in the outbox), duplicate effects, duplicate deliveries at the broker, dead-lettered, stuck rows, " +
		"commit -> applied latency and the time to recover after each fault kind. The exit status is 1 when " +
		"a message was lost, an effect applied twice, a rolled-back message delivered or a row left stuck.\n\n" +
		"Progress goes to stderr, the figures to stdout; the logs of the relays and the consumers are kept " +
		"in a directory named at the end when the soak fails.",
	examples: []string{
		"soak --duration 10m",
		"soak --duration 2m --rate 100 --json soak.json",
		"soak --duration 1m --faults relay-kill,db-restart --kill-every 5s-10s",
	},
	setup: setupSoak,
}

// soakFlags are the soak command's flags.
type soakFlags struct {
	cfg       soakConfig
	killEvery string
	faults    string
	jsonPath  string
}

// setupSoak registers the soak command's flags on fs and returns the function that runs it.
func setupSoak(fs *pflag.FlagSet) runFunc {
	f := &soakFlags{}
	c := &f.cfg
	fs.DurationVar(&c.Duration, "duration", defaultSoakDuration, "publish under faults for `DURATION`")
	fs.StringVar(&c.AMQPURL, "amqp", defaultSoakAMQP, "RabbitMQ `URL`")
	fs.IntVar(&c.Relays, "relays", defaultSoakRelays, "`N` relay processes")
	fs.IntVar(&c.Rate, "rate", defaultSoakRate, "target publish rate in `MSG/S` (one message per business transaction)")
	fs.IntVar(&c.Publishers, "publishers", defaultSoakPublishers, "`N` goroutines running business transactions")
	fs.IntVar(&c.Consumers, "consumers", defaultSoakConsumers, "`N` routers consuming the queue (one handler each, same inbox)")
	fs.StringVar(&f.killEvery, "kill-every", defaultSoakKillEvery, "kill a random relay every `MIN-MAX` (a random duration in that range, e.g. 10s-20s; one value for a fixed interval)")
	fs.DurationVar(&c.FaultEvery, "fault-every", defaultSoakFaultEvery, "cut the broker or the database connections every `DURATION`, in turn")
	fs.DurationVar(&c.Outage, "outage", defaultSoakOutage, "`DURATION` of each cut and of the database's stop before its restart")
	fs.StringVar(&f.faults, "faults", strings.Join(soakFaultKinds, ","), "the fault `KINDS` to inject, comma-separated: "+
		strings.Join(soakFaultKinds, ", ")+", or none")
	fs.Float64Var(&c.Rollback, "rollback", defaultSoakRollback, "`SHARE` of business transactions rolled back on purpose (0..1)")
	fs.Float64Var(&c.Refused, "refused", defaultSoakRefused, "`SHARE` of messages sent to the refused destination (0..1)")
	fs.StringVar(&c.RefusedDestination, "refused-destination", defaultRefusedDestination, "the `URI` the refused messages go to: "+
		"a destination the relays can never publish to. The default is not a RabbitMQ destination: the relays dead-letter "+
		"it at once. A RabbitMQ destination the broker refuses (rabbitmq://exchange/NAME of a missing exchange) fails ordinarily: the "+
		"relays' circuit breaker pauses it and only its probes count attempts, so its envelopes stay in the outbox (stuck rows)")
	fs.IntVar(&c.MaxAttempts, "max-attempts", 3, "the relays' --max-attempts (`N` failed publishes before the dead letters)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", defaultSoakDrainTimeout, "wait up to `DURATION` for the outbox to drain after publishing stops")
	fs.StringVar(&c.PGBin, "pg-bin", "", "`DIR` of PostgreSQL's server programs (initdb, pg_ctl) (default: the newest /usr/lib/postgresql/N/bin, else $PATH)")
	fs.BoolVar(&c.KeepLogs, "keep-logs", false, "keep the directory of the logs (relays, consumers) also when the soak passes")
	fs.StringVar(&f.jsonPath, "json", "", "also write the figures to `FILE` as JSON")
	return f.run
}

// validate checks the flags and completes the config.
func (f *soakFlags) validate() error {
	c := &f.cfg
	for _, n := range []struct {
		name  string
		value int
	}{{"--relays", c.Relays}, {"--rate", c.Rate}, {"--publishers", c.Publishers}, {"--consumers", c.Consumers}, {"--max-attempts", c.MaxAttempts}} {
		if n.value < 1 {
			return usageErrorf("%s must be at least 1, got %d", n.name, n.value)
		}
	}
	if c.Duration < time.Second {
		return usageErrorf("--duration must be at least 1s, got %s", c.Duration)
	}
	if c.DrainTimeout < time.Second {
		return usageErrorf("--drain-timeout must be at least 1s, got %s", c.DrainTimeout)
	}
	if err := atLeast100ms("--fault-every and --outage", &c.FaultEvery, &c.Outage)(); err != nil {
		return err
	}
	if c.Rollback < 0 || c.Rollback > 1 || c.Refused < 0 || c.Refused > 1 {
		return usageErrorf("--rollback and --refused must be between 0 and 1")
	}
	scheme, _, ok := strings.Cut(c.AMQPURL, "://")
	if s := strings.ToLower(scheme); !ok || (s != "amqp" && s != "amqps") {
		return usageErrorf("invalid --amqp: want amqp://USER:PASSWORD@HOST:PORT/VHOST")
	}
	if strings.TrimSpace(c.RefusedDestination) == "" {
		return usageErrorf("--refused-destination is empty")
	}
	var err error
	if c.KillMin, c.KillMax, err = parseDurationRange(f.killEvery); err != nil {
		return usageErrorf("invalid --kill-every %q: %v", f.killEvery, err)
	}
	c.Faults = map[string]bool{}
	if f.faults != "none" {
		for _, k := range strings.Split(f.faults, ",") {
			k = strings.TrimSpace(k)
			if !contains(soakFaultKinds, k) {
				return usageErrorf("invalid --faults: unknown kind %q, want some of %s, or none", k, strings.Join(soakFaultKinds, ", "))
			}
			c.Faults[k] = true
		}
	}
	return nil
}

// parseDurationRange parses "MIN-MAX" (or one duration) into a range of at least 100ms.
func parseDurationRange(s string) (lo, hi time.Duration, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = time.ParseDuration(strings.TrimSpace(a)); err != nil {
		return 0, 0, err
	}
	hi = lo
	if isRange {
		if hi, err = time.ParseDuration(strings.TrimSpace(b)); err != nil {
			return 0, 0, err
		}
	}
	if lo < 100*time.Millisecond || hi < lo {
		return 0, 0, errors.New("want MIN-MAX with 100ms <= MIN <= MAX")
	}
	return lo, hi, nil
}

// run runs the soak with the checked flags and prints its report; a failed soak is an error.
func (f *soakFlags) run(ctx context.Context, e *env, _ []string) error {
	if err := f.validate(); err != nil {
		return err
	}
	exe, err := executable()
	if err != nil {
		return err
	}
	f.cfg.Executable = exe
	rep, err := runSoak(ctx, f.cfg, e.stderr)
	if err != nil {
		return redactError(err, f.cfg.AMQPURL)
	}
	if err := rep.write(e.stdout); err != nil {
		return err
	}
	if err := rep.writeJSON(f.jsonPath); err != nil {
		return err
	}
	if problems := rep.problems(); len(problems) > 0 {
		return fmt.Errorf("soak failed: %s", strings.Join(problems, ", "))
	}
	return nil
}
