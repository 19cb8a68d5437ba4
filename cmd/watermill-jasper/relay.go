package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/spf13/pflag"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/jaspernats"
	"github.com/watermill-jasper/watermill-jasper/jasperredis"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

const (
	// amqpURLEnv names the variable --to defaults to, so that the broker's password need not
	// appear on the command line (where ps shows it).
	amqpURLEnv = "AMQP_URL"
	// sessionDSNEnv names the variable --session-dsn defaults to.
	sessionDSNEnv = "SESSION_DATABASE_URL"
	// replicationDSNEnv names the variable --replication-dsn defaults to.
	replicationDSNEnv = "REPLICATION_DATABASE_URL"
	// toStdout is the --to value that prints the messages instead of publishing them.
	toStdout = "stdout"
	// defaultRelayConcurrency and defaultRelayWorkers are above the forwarder's library
	// defaults: with the confirm publisher a Publish call in flight is cheap, and the throughput
	// is about (messages in flight) / (RabbitMQ's confirm latency), which grows under load (it
	// fsyncs persistent messages before confirming them).
	defaultRelayConcurrency = 512
	defaultRelayWorkers     = 4
	// maxRelayBatch is the forwarder's upper bound of Config.BatchSize.
	maxRelayBatch = 10000
	// previewBytes is how much of a payload --to stdout shows.
	previewBytes = 64
)

var relaySpec = spec{
	name:    "relay",
	summary: "relay the outbox (jasper_outgoing_envelopes) to RabbitMQ, NATS JetStream or Redis Streams, or print it",
	description: "A standalone relay for databases written by other programs (Jasper .NET nodes, plain SQL " +
		"inserts, this library's publisher): it claims the unowned outgoing envelopes (owner_id 0), publishes " +
		"each to the RabbitMQ queue or exchange named by its Jasper destination URI (rabbitmq://queue/NAME, " +
		"rabbitmq://exchange/NAME, rabbitmq://exchange/NAME/routing/KEY) as a persistent message, and deletes " +
		"it once RabbitMQ confirmed it. Publishes are pipelined over a few confirm-mode channels; a message " +
		"RabbitMQ cannot route (missing queue, exchange without a matching binding) fails instead of being " +
		"dropped, and is retried up to --max-attempts times, then moved to jasper_dead_letters. An envelope " +
		"whose destination is not a RabbitMQ URI (tcp://, local://, ...) is moved to the dead letters at once: " +
		"use --destination to relay only some destinations when Jasper nodes send the others. Envelopes " +
		"whose deliver_by has passed are deleted unsent, as Jasper does. The AMQP message carries the payload " +
		"as body, message-id = the envelope's message id (its id for rows written by Jasper), content-type, " +
		"and the envelope's metadata as headers.\n\n" +
		"--to nats://HOST:PORT publishes each envelope to NATS JetStream instead, and --to redis://HOST:PORT/DB " +
		"appends it to a Redis stream (XADD): the destination URI is mapped to a subject or stream key " +
		"(rabbitmq://queue/orders -> orders, rabbitmq://exchange/X/routing/K -> X.K, tcp://host:5000/q -> " +
		"tcp.host_5000.q, local://q -> local.q, a plain topic as is; docs/relay-targets.md). A destination that " +
		"cannot be mapped (whitespace, * or >, an empty token), a subject no JetStream stream captures (with " +
		"--create-streams=false) and a publish the broker rejects go to the dead letters at once with the " +
		"broker's message, without affecting the connection or the other destinations. With JetStream the " +
		"relay waits for the stream's acknowledgement (the message id is sent as Nats-Msg-Id), and creates a " +
		"stream for a subject no stream captures (--create-streams).\n\n" +
		"--to stdout prints each envelope instead, as one line (destination, message id, message type, size, " +
		"payload preview), and deletes it like any relayed envelope: for debugging, on a copy or a test database.\n\n" +
		"The relay is a watermill-jasper runtime (one node, its durability agent and one forwarder): rows held " +
		"by a running node (owner_id not 0, its lock held) are left alone, and the rows of a node that died (a " +
		"relay or a Jasper node killed, whose lock no session holds) are handed back by the agent and relayed. " +
		"The schema must have this library's extension columns (\"" + program + " schema migrate\", which is " +
		"safe on a Jasper database).\n\n" +
		"Progress is one line on stderr every --progress interval. SIGINT or SIGTERM stops the relay " +
		"gracefully: the publishes in flight finish, the claimed envelopes not sent are handed back, a summary " +
		"is printed on stderr and the exit status is 0; a second signal stops waiting for the broker (after a " +
		"minute the relay stops waiting by itself and exits with status 1). " +
		"The relay exits with status 1 when the database or RabbitMQ cannot be reached at start; later " +
		"outages are logged and retried (the connection to RabbitMQ is re-dialled with back-off). " +
		"Passwords of --to and --dsn are never printed.",
	examples: []string{
		"relay --to amqp://relay:secret@rabbit.internal:5672/ --dsn postgres://app@db.internal:5432/app --schema messaging",
		"relay --to amqp://guest:guest@localhost:5672/ --destination rabbitmq://queue/orders --declare-queues",
		"relay --to nats://127.0.0.1:4222 --schema messaging",
		"relay --to redis://:secret@127.0.0.1:6379/0 --schema messaging",
		"relay --to stdout --schema messaging --destination rabbitmq://queue/orders",
	},
	setup: setupRelay,
}

// destinationsFlag collects repeated --destination flags.
type destinationsFlag []string

// String returns the destinations, comma-separated.
func (d *destinationsFlag) String() string { return strings.Join(*d, ",") }

// Type names the value in the help when the usage names none.
func (d *destinationsFlag) Type() string { return "URI" }

// Set adds one destination.
func (d *destinationsFlag) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		return errors.New("empty destination")
	}
	*d = append(*d, v)
	return nil
}

// relayFlags are the relay command's flags.
type relayFlags struct {
	db            dbFlags
	sessionDSN    stringFlag
	replDSN       stringFlag
	slot          slotNameFlags
	createSlot    bool
	to            stringFlag
	destinations  destinationsFlag
	batch         int
	workers       int
	concurrency   int
	maxAttempts   int
	channels      int
	declareQueues bool
	createStreams bool
	pollInterval  time.Duration
	progress      time.Duration
	verbose       bool
}

// setupRelay registers the relay command's flags on fs and returns the function that runs it.
func setupRelay(fs *pflag.FlagSet) runFunc {
	var f relayFlags
	f.db.register(fs)
	fs.Var(&f.sessionDSN, "session-dsn", "a direct database `URL` for the two connections that keep a session of their own "+
		"(the node lock and LISTEN), when --dsn goes through PgBouncer in transaction mode (default: $"+sessionDSNEnv+
		", else --dsn itself; docs/deploying.md)")
	fs.Var(&f.replDSN, "replication-dsn", "follow the outbox through a logical replication slot instead of polling it: a database `URL` "+
		"of a role with REPLICATION (default: $"+replicationDSNEnv+"; none: poll). Needs wal_level = logical; see slot create and docs/relay-sources.md")
	fs.StringVar(&f.slot.names.Slot, "slot", "", "with --replication-dsn, the replication slot `NAME` (default: wj_outbox_<schema>)")
	fs.StringVar(&f.slot.names.Publication, "publication", "", "with --replication-dsn, the publication `NAME` (default: wj_outbox_<schema>)")
	fs.BoolVar(&f.createSlot, "create-slot", false, "with --replication-dsn, create the publication and the slot when missing")
	fs.Var(&f.to, "to", "where to relay: an AMQP `URL` amqp://USER:PASSWORD@HOST:PORT/VHOST (or amqps://), "+
		"NATS JetStream nats://[USER:PASSWORD@]HOST:PORT (or tls://), Redis Streams redis://[USER:PASSWORD@]HOST:PORT/DB (or rediss://), "+
		"or stdout to print the messages (default: $"+amqpURLEnv+")")
	fs.Var(&f.destinations, "destination", "relay only envelopes whose destination column is exactly `URI`, or starts with "+
		"what precedes a trailing * (rabbitmq://*); repeat it for several (default: every destination; required with --compatibility "+
		string(schema.Jasper2)+")")
	fs.IntVar(&f.batch, "batch", forwarder.DefaultBatchSize, "`N` envelopes claimed per statement")
	fs.IntVar(&f.workers, "workers", defaultRelayWorkers, "`N` claim loops running at once (one publishes a batch while another claims the next)")
	fs.IntVar(&f.concurrency, "concurrency", defaultRelayConcurrency, "`N` messages waiting for RabbitMQ's confirm at once")
	fs.IntVar(&f.maxAttempts, "max-attempts", forwarder.DefaultMaxAttempts, "failed publishes (`N`) before an envelope is moved to jasper_dead_letters")
	fs.IntVar(&f.channels, "channels", jasperamqp.DefaultConfirmChannels, "`N` AMQP channels in confirm mode the publishes are spread over")
	fs.BoolVar(&f.declareQueues, "declare-queues", false, "declare the queue of a rabbitmq://queue/NAME destination (durable) "+
		"when it does not exist, as Jasper's auto-provisioning does; otherwise its envelopes fail until it is created")
	fs.BoolVar(&f.createStreams, "create-streams", true, "with a nats:// --to, create a JetStream stream for a subject no stream captures "+
		"(named JASPER_<subject>_<hash>, file storage); with false, a stream must exist (nats stream add) or the envelopes are dead-lettered")
	fs.DurationVar(&f.pollInterval, "poll-interval", forwarder.DefaultPollInterval, "how often the table is queried when "+
		"no notification arrives (`DURATION`; rows inserted by Jasper or plain SQL send none)")
	fs.DurationVar(&f.progress, "progress", 10*time.Second, "print a status line on stderr every `DURATION` (0: never)")
	fs.BoolVar(&f.verbose, "verbose", false, "also log informational events (node lock, reconnections, paused destinations) on stderr")
	return f.run
}

// validate checks the flags and returns the --to target (else $AMQP_URL): an AMQP, NATS or
// Redis URL, or stdout.
func (f *relayFlags) validate() (to string, err error) {
	to = f.to.value
	if !f.to.set {
		to = os.Getenv(amqpURLEnv)
	}
	to = strings.TrimSpace(to)
	switch {
	case to == "":
		return "", usageErrorf("relay needs --to: an AMQP URL (amqp://USER:PASSWORD@HOST:PORT/), nats://HOST:PORT, redis://HOST:PORT/DB or stdout (or set $%s)", amqpURLEnv)
	case strings.EqualFold(to, toStdout):
		to = toStdout
	default:
		scheme, _, ok := strings.Cut(to, "://")
		if !ok || targetKind(scheme) == "" {
			return "", usageErrorf("invalid --to %s: want amqp://USER:PASSWORD@HOST:PORT/VHOST, amqps://..., nats://HOST:PORT, redis://HOST:PORT/DB or stdout", jasperamqp.RedactURL(to))
		}
	}
	for _, n := range []struct {
		name  string
		value int
	}{{"--batch", f.batch}, {"--workers", f.workers}, {"--concurrency", f.concurrency}, {"--max-attempts", f.maxAttempts}, {"--channels", f.channels}} {
		if n.value < 1 {
			return "", usageErrorf("%s must be at least 1, got %d", n.name, n.value)
		}
	}
	if f.batch > maxRelayBatch {
		return "", usageErrorf("--batch must be at most %d, got %d", maxRelayBatch, f.batch)
	}
	if f.pollInterval <= 0 {
		return "", usageErrorf("--poll-interval must be positive, got %s", f.pollInterval)
	}
	if f.progress < 0 {
		return "", usageErrorf("--progress must not be negative, got %s", f.progress)
	}
	if f.declareQueues && targetKind(strings.Split(to, "://")[0]) != "amqp" {
		return "", usageErrorf("--declare-queues needs an AMQP --to")
	}
	return to, nil
}

// run relays the outbox until ctx ends or a signal stops it (see relaySpec).
func (f *relayFlags) run(ctx context.Context, e *env, _ []string) error {
	to, err := f.validate()
	if err != nil {
		return err
	}
	dsn, _ := f.db.DSN()
	drv, cfg, closeDB, err := f.db.open(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := checkRelaySchema(ctx, drv, cfg); err != nil {
		return err
	}
	sessionDSN := f.sessionDSN.value
	if !f.sessionDSN.set {
		sessionDSN = os.Getenv(sessionDSNEnv)
	}
	var sessionDB database.Driver
	if sessionDSN != "" {
		var closeSessionDB func()
		if sessionDB, closeSessionDB, err = openDB(ctx, "--session-dsn", sessionDSN); err != nil {
			return err
		}
		defer closeSessionDB()
	} else if f.sessionDSN.set {
		return usageErrorf("--session-dsn is empty: give a direct database URL, or leave it out")
	}

	replDSN := f.replDSN.value
	if !f.replDSN.set {
		replDSN = os.Getenv(replicationDSNEnv)
	}
	var lr *forwarder.LogicalReplication
	switch {
	case strings.TrimSpace(replDSN) != "":
		lr = &forwarder.LogicalReplication{DSN: replDSN, Slot: f.slot.names.Slot, Publication: f.slot.names.Publication, Create: f.createSlot}
	case f.replDSN.set:
		return usageErrorf("--replication-dsn is empty: give the URL of a role with REPLICATION, or leave it out to poll")
	case f.slot.names.Slot != "" || f.slot.names.Publication != "" || f.createSlot:
		return usageErrorf("--slot, --publication and --create-slot need --replication-dsn (or $%s)", replicationDSNEnv)
	}

	secrets := []string{dsn, sessionDSN, replDSN}
	if to != toStdout {
		secrets = append(secrets, to)
	}
	logger := &stderrLogger{mu: &sync.Mutex{}, muted: &atomic.Bool{}, w: e.stderr, verbose: f.verbose, secrets: secrets}
	say := func(format string, args ...any) { logger.printf(format, args...) }

	var pub message.Publisher
	topic := jasperTopic
	target := jasperamqp.RedactURL(to)
	if to == toStdout {
		pub = &stdoutPublisher{w: e.stdout}
		topic = nil // every destination, verbatim
		target = "stdout"
	} else if kind := targetKind(strings.Split(to, "://")[0]); kind == "nats" {
		if pub, err = jaspernats.NewPublisher(jaspernats.Config{URL: to, CreateStreams: f.createStreams}, logger); err != nil {
			return errors.New(scrubAll(err.Error(), secrets))
		}
		topic = jaspernats.Subject
	} else if kind == "redis" {
		if pub, err = jasperredis.NewPublisher(jasperredis.Config{URL: to}, logger); err != nil {
			return errors.New(scrubAll(err.Error(), secrets))
		}
		topic = jasperredis.Key
	} else {
		pub, err = jasperamqp.NewConfirmPublisher(to, logger,
			jasperamqp.WithDeclareQueues(f.declareQueues),
			jasperamqp.WithConfirmChannels(f.channels))
		if err != nil {
			return err
		}
	}
	pubOpen := true
	defer func() {
		if pubOpen {
			_ = pub.Close()
		}
	}()

	// The relay is a runtime with one forwarder and nothing else: its durability agent hands
	// back the envelopes of dormant nodes (a relay or a Jasper node that died), releases due
	// scheduled sends and wakes the forwarder.
	rt, err := jasper.NewRuntime(drv, jasper.Config{
		Schema:        cfg.Schema,
		Compatibility: cfg.Compatibility,
		Node:          durability.NodeConfig{SessionDB: sessionDB},
		Forwarders: []forwarder.Config{{
			Publisher:          pub,
			Topic:              topic,
			BatchSize:          f.batch,
			Workers:            f.workers,
			PublishConcurrency: f.concurrency,
			MaxAttempts:        f.maxAttempts,
			PollInterval:       f.pollInterval,
			Destinations:       f.destinations,
			LogicalReplication: lr,
		}},
	}, logger)
	if err != nil {
		if errors.Is(err, forwarder.ErrInvalidConfig) {
			return &usageError{err}
		}
		return err
	}

	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(signals)

	start := time.Now()
	if err := rt.Start(ctx); err != nil {
		return err
	}
	fwd := rt.Forwarders()[0]
	only := "every destination"
	if len(f.destinations) > 0 {
		only = strings.Join(f.destinations, ", ")
	}
	source := "polling"
	if rs, ok := fwd.ReplicationStats(); ok {
		source = "replication slot " + rs.Slot + " (polling what it does not bring)"
	}
	say("relay: relaying schema %s of %s to %s (%s; %s; batch %d, workers %d, concurrency %d); SIGINT or SIGTERM stops",
		cfg.Schema, redactDSN(dsn), target, only, source, f.batch, f.workers, f.concurrency)

	prog := &statusLines{fwd: fwd, start: start, lastAt: start, say: say}
	signalled := waitForSignal(ctx, signals, f.progress, prog.print)

	say("relay: stopping: waiting for the publishes in flight, handing back the unsent envelopes (signal again to stop waiting)")
	// The stop context: cancelled by a second signal, so that Stop no longer waits for the
	// forwarder (whose publishes wait for the broker's confirms) and releases the node lock.
	stopCtx, abandon := context.WithCancel(context.WithoutCancel(ctx))
	defer abandon()
	stopped := make(chan error, 1)
	go func() { stopped <- rt.Stop(stopCtx) }()
	abandoned := false
	var stopErr error
closing:
	for {
		select {
		case stopErr = <-stopped:
			break closing
		case <-signals:
			if signalled++; signalled >= 2 && !abandoned {
				say("relay: second signal: no longer waiting for the broker's confirms")
				abandoned = true
				abandon()
			}
		}
	}
	elapsed := time.Since(start)
	pubOpen = false
	if abandoned || errors.Is(stopErr, context.DeadlineExceeded) {
		// Stop gave up on the forwarder (a second signal, or the runtime's StopTimeout): its
		// publishes still wait for their confirms (the runtime runs the forwarder on a context
		// Stop does not cancel) and closing the publisher would wait for them too; the
		// connection to the broker ends with the process. What they report meanwhile (their
		// statements fail once the pool is closed) is not printed. Their envelopes stay owned
		// by this node, whose lock is released: the next relay's durability agent hands them
		// back.
		logger.muted.Store(true)
	} else if err := pub.Close(); err != nil {
		say("relay: closing the publisher: %s", scrubAll(err.Error(), secrets))
	}
	say("relay: stopped after %s: %s", elapsed.Round(time.Millisecond), summaryLine(fwd.Stats(), elapsed))
	if stopErr != nil && !(abandoned && errors.Is(stopErr, context.Canceled)) {
		return stopErr
	}
	return nil
}

// waitForSignal calls tick every interval (0: never) until a signal arrives or ctx ends, and
// returns how many signals it read from signals (the first one may also have cancelled ctx,
// and then stays in signals).
func waitForSignal(ctx context.Context, signals <-chan os.Signal, interval time.Duration, tick func(time.Time)) int {
	var ticks <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return 0
		case <-signals:
			return 1
		case now := <-ticks:
			tick(now)
		}
	}
}

// statusLines prints the periodic status lines from the forwarder's counters.
type statusLines struct {
	fwd    *forwarder.Forwarder
	start  time.Time
	last   forwarder.Stats
	lastAt time.Time
	say    func(format string, args ...any)
}

// print prints the status line of the forwarder's counters since the last one.
func (p *statusLines) print(now time.Time) {
	st := p.fwd.Stats()
	p.say("relay: %s", progressLine(st, p.last, now.Sub(p.lastAt), now.Sub(p.start)))
	p.last, p.lastAt = st, now
}

// checkRelaySchema fails before the runtime starts when the schema lacks anything the runtime
// refuses to start without (every difference but a missing extension index, which only
// slows claims down), listing all of them with the command that fixes them. The runtime's
// own check (Start) names only the first difference and speaks to library users.
func checkRelaySchema(ctx context.Context, drv database.Driver, cfg schema.Config) error {
	diffs, err := schema.Verify(ctx, drv, cfg, schema.VerifyOptions{})
	if err != nil {
		return err
	}
	var missing []string
	fixable := true
	for _, d := range diffs {
		if d.Kind == schema.MissingIndex {
			continue
		}
		missing = append(missing, d.String())
		fixable = fixable && migrateFixes(cfg, d)
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	fix := fmt.Sprintf("run \"%s schema migrate --schema %s\" (safe on a database Jasper created)", program, cfg.Schema)
	if !fixable {
		fix = fmt.Sprintf("run \"%s schema migrate --schema %s\": it adds the missing tables, extensions and nullable "+
			"or defaulted columns of Jasper's, and refuses, naming them, the NOT NULL columns it cannot add to existing rows; "+
			"it never alters a column (a wrong type, nullability or primary key is fixed by hand)", program, cfg.Schema)
	}
	return fmt.Errorf("schema %s is not ready for the relay (%s): %s", cfg.Schema, strings.Join(missing, "; "), fix)
}

// targetKind is the broker a --to scheme names: amqp, nats, redis, or "" for none.
func targetKind(scheme string) string {
	switch strings.ToLower(scheme) {
	case "amqp", "amqps":
		return "amqp"
	case "nats", "tls":
		return "nats"
	case "redis", "rediss":
		return "redis"
	}
	return ""
}

// jasperTopic is the relay's topic mapping to RabbitMQ: the destination itself when it is a
// RabbitMQ URI; anything else is an error, which sends the envelope to the dead letters.
func jasperTopic(destination string) (string, error) {
	d, err := jasperamqp.ParseDestination(destination)
	if err != nil {
		return "", err
	}
	if !d.IsAMQP() {
		return "", fmt.Errorf("destination %q is not a RabbitMQ destination (%s): the relay sends only to RabbitMQ: %w",
			destination, jasperamqp.AcceptedShapes, jasperamqp.ErrNotRabbitMQ)
	}
	return destination, nil
}

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// progressLine is the periodic status: totals, and the send rate since the previous line.
func progressLine(st, last forwarder.Stats, since, total time.Duration) string {
	return fmt.Sprintf("sent %d (%.0f msgs/s over the last %s), failed %d, expired %d, dead-lettered %d, released %d, running %s",
		st.Sent, rate(st.Sent-last.Sent, since), since.Round(time.Millisecond), st.Failed, st.Expired, st.DeadLettered,
		st.Released, total.Round(time.Second))
}

// summaryLine is printed once the relay stopped.
func summaryLine(st forwarder.Stats, elapsed time.Duration) string {
	return fmt.Sprintf("sent %d (%.0f msgs/s), failed %d, expired %d, dead-lettered %d, released %d (handed back unsent), claimed %d",
		st.Sent, rate(st.Sent, elapsed), st.Failed, st.Expired, st.DeadLettered, st.Released, st.Claimed)
}

// stdoutPublisher prints one line per message: destination, message id, message type, size
// and a quoted preview of the payload.
type stdoutPublisher struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *stdoutPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range msgs {
		if m == nil {
			return errors.New("nil message")
		}
		if _, err := fmt.Fprintln(p.w, stdoutLine(topic, m)); err != nil {
			return fmt.Errorf("write to stdout: %w", err)
		}
	}
	return nil
}

func (p *stdoutPublisher) Close() error { return nil }

func stdoutLine(topic string, m *message.Message) string {
	typ := m.Metadata.Get(metadata.MessageType)
	if typ == "" {
		typ = "-"
	}
	preview := m.Payload
	cut := len(preview) > previewBytes
	if cut {
		preview = preview[:previewBytes]
		for len(preview) > 0 && !utf8.Valid(preview) { // do not split a character
			preview = preview[:len(preview)-1]
		}
	}
	q := strconv.Quote(string(preview))
	if cut {
		q += "..."
	}
	return fmt.Sprintf("%s %s %s %d bytes %s", topic, m.UUID, typ, len(m.Payload), q)
}

// stderrLogger is the relay's watermill.LoggerAdapter: errors (and, with --verbose, info) as
// one line on stderr each, without the passwords of the DSN and the AMQP URL.
type stderrLogger struct {
	mu      *sync.Mutex // shared by the loggers derived with With
	muted   *atomic.Bool
	w       io.Writer
	verbose bool
	secrets []string
	fields  watermill.LogFields
}

func (l *stderrLogger) log(level, msg string, err error, fields watermill.LogFields) {
	var b strings.Builder
	b.WriteString("relay: ")
	b.WriteString(level)
	b.WriteString(": ")
	b.WriteString(msg)
	if err != nil {
		b.WriteString(": ")
		b.WriteString(err.Error())
	}
	all := l.fields.Add(fields)
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, all[k])
	}
	line := strings.Join(strings.FieldsFunc(scrubAll(b.String(), l.secrets), func(r rune) bool { return r == '\n' || r == '\r' }), " ")
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.muted.Load() {
		fmt.Fprintln(l.w, line)
	}
}

func (l *stderrLogger) Error(msg string, err error, fields watermill.LogFields) {
	l.log("error", msg, err, fields)
}

func (l *stderrLogger) Info(msg string, fields watermill.LogFields) {
	if l.verbose {
		l.log("info", msg, nil, fields)
	}
}

func (l *stderrLogger) Debug(string, watermill.LogFields) {}

func (l *stderrLogger) Trace(string, watermill.LogFields) {}

func (l *stderrLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return &stderrLogger{mu: l.mu, muted: l.muted, w: l.w, verbose: l.verbose, secrets: l.secrets, fields: l.fields.Add(fields)}
}

// printf writes one line on stderr (the relay's own status lines, which show URLs redacted
// already), under the loggers' lock.
func (l *stderrLogger) printf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w, line)
}

// scrubAll removes the secrets of every URL in urls from s.
func scrubAll(s string, urls []string) string {
	for _, u := range urls {
		s = scrub(s, u)
	}
	return s
}
