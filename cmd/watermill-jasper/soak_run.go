package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/pgcluster"
	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/middleware"
)

const (
	// soakSchema holds the Jasper tables and the soak's business tables in the private cluster.
	soakSchema = "soak"
	// soakHandler is the name of the consumers' router handler (the inbox keys its marks by it:
	// every consumer uses the same name, so a message is applied once across all of them).
	soakHandler = "soak-apply"
	// soakConsumerName is the inbox's consumer name.
	soakConsumerName = "soak"
	// defaultRefusedDestination is a destination the relay never publishes to: not a RabbitMQ
	// URI, so each envelope is dead-lettered on its first claim.
	defaultRefusedDestination = "tcp://127.0.0.1:1/refused"
	// soakStatementTimeout bounds every statement of the publishers and the checks.
	soakStatementTimeout = 10 * time.Second
	// progressEvery is how often a progress line is printed.
	progressEvery = 10 * time.Second
)

// soakConfig is the soak's configuration (the command's flags).
type soakConfig struct {
	Duration           time.Duration
	AMQPURL            string
	Relays             int
	Rate               int
	Publishers         int
	Consumers          int
	KillMin, KillMax   time.Duration
	FaultEvery         time.Duration
	Outage             time.Duration
	Faults             map[string]bool
	Rollback           float64
	Refused            float64
	RefusedDestination string
	MaxAttempts        int
	DrainTimeout       time.Duration
	PGBin              string
	// KeepLogs keeps the directory of the logs also when the soak passes.
	KeepLogs bool
	// Executable is this program, run with the relay command.
	Executable string
}

// executable is this program's path, which the soak runs as its relays.
func executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find this program to run its relays: %w", err)
	}
	return exe, nil
}

// faultEvent is one injected fault: the service was down from Start to End.
type faultEvent struct {
	Kind  string
	Start time.Time
	End   time.Time
}

// intent is what a publisher meant to do with one business transaction.
type intent struct {
	rollback bool
	refused  bool
	acked    bool // the commit returned without error
}

// soak is one run.
type soak struct {
	cfg      soakConfig
	out      io.Writer // progress
	outMu    sync.Mutex
	workDir  string
	runID    string
	queue    string
	started  time.Time
	secrets  []string
	logger   *soakLogger
	cluster  *pgcluster.Cluster
	dbProxy  *tcpproxy.Proxy
	mqProxy  *tcpproxy.Proxy
	direct   *pgxpool.Pool // publishers and checks: straight to the cluster
	proxied  *pgxpool.Pool // the consumers' runtime: through dbProxy
	rt       *jasper.Runtime
	relays   []*relaySlot
	routers  []*message.Router
	relayDSN string
	relayMQ  string
	// stopSupervisor stops the goroutine restarting the relays that exit by themselves.
	stopSupervisor func()

	mu         sync.Mutex
	intents    map[string]intent
	deliveries map[string]int
	// acked are the messages whose handling succeeded once (the delivery was acknowledged);
	// redelivered counts the deliveries of a message acknowledged before.
	acked       map[string]bool
	redelivered int
	faults      []faultEvent

	drainTook       time.Duration
	publishErrors   atomic.Int64
	unexpectedExits atomic.Int64
}

// runSoak runs the soak and returns its figures. Errors are failures to run it (a server
// missing, a fault that could not be undone), not its findings, which the report holds.
func runSoak(ctx context.Context, cfg soakConfig, progress io.Writer) (rep *soakReport, err error) {
	s := &soak{
		cfg: cfg, out: progress, intents: map[string]intent{}, deliveries: map[string]int{}, acked: map[string]bool{},
		runID: strings.ToLower(watermill.NewULID()),
	}
	s.queue = "wj-soak-" + s.runID
	s.secrets = []string{cfg.AMQPURL}
	if s.workDir, err = os.MkdirTemp("", "wj-soak-"); err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	logFile, err := os.Create(filepath.Join(s.workDir, "soak.log"))
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	s.logger = &soakLogger{mu: &sync.Mutex{}, w: logFile, secrets: s.secrets}
	defer func() {
		s.teardown()
		logFile.Close()
		passed := rep != nil && err == nil && len(rep.problems()) == 0
		if !s.started.IsZero() && (!passed || cfg.KeepLogs) {
			s.say("logs kept in %s", s.workDir)
			if rep != nil {
				rep.LogDir = s.workDir
			}
		} else {
			_ = os.RemoveAll(s.workDir) // passed, or failed before anything ran
		}
	}()
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	if err := s.drive(ctx); err != nil {
		return nil, err
	}
	drained, err := s.drain(ctx)
	if err != nil {
		return nil, err
	}
	s.stopComponents()
	return s.collect(ctx, drained)
}

func (s *soak) say(format string, args ...any) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	el := ""
	if !s.started.IsZero() {
		el = fmt.Sprintf(" %s", time.Since(s.started).Round(time.Second))
	}
	fmt.Fprintf(s.out, "soak%s: %s\n", el, scrubAll(fmt.Sprintf(format, args...), s.secrets))
}

// setup starts the database, the proxies, the runtime of the consumers, the queue and the
// relays.
func (s *soak) setup(ctx context.Context) error {
	conn, err := amqp091.Dial(s.cfg.AMQPURL)
	if err != nil {
		return fmt.Errorf("RabbitMQ is not reachable at %s (%v); start it with: rabbitmq-server -detached",
			jasperamqp.RedactURL(s.cfg.AMQPURL), err)
	}
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDeclare(s.queue, true, false, false, false, nil)
		ch.Close()
	}
	conn.Close()
	if err != nil {
		return fmt.Errorf("declare the soak queue %s: %w", s.queue, err)
	}

	s.say("starting a private PostgreSQL cluster")
	if s.cluster, err = pgcluster.New(ctx, pgcluster.Options{Bin: s.cfg.PGBin, Settings: []string{"max_connections = 200"}}); err != nil {
		return err
	}
	if s.dbProxy, err = tcpproxy.New(s.cluster.Addr()); err != nil {
		return err
	}
	mqURL, err := url.Parse(s.cfg.AMQPURL)
	if err != nil {
		return fmt.Errorf("invalid --amqp: %s", jasperamqp.RedactURL(s.cfg.AMQPURL))
	}
	host := mqURL.Host
	if mqURL.Port() == "" {
		host = net.JoinHostPort(mqURL.Hostname(), "5672")
	}
	if s.mqProxy, err = tcpproxy.New(host); err != nil {
		return err
	}
	proxiedMQ := *mqURL
	proxiedMQ.Host = s.mqProxy.Addr()
	s.relayMQ = proxiedMQ.String()
	s.secrets = append(s.secrets, s.relayMQ)
	s.logger.secrets = s.secrets
	_, dbPort, _ := net.SplitHostPort(s.dbProxy.Addr())
	s.relayDSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%s/test?sslmode=disable&connect_timeout=2", dbPort)

	if s.direct, err = newSoakPool(ctx, s.cluster.DSN()+"&connect_timeout=2", 2*s.cfg.Publishers+4); err != nil {
		return err
	}
	if s.proxied, err = newSoakPool(ctx, s.relayDSN, 2*s.cfg.Consumers+6); err != nil {
		return err
	}
	s.rt, err = jasper.NewRuntime(database.FromPgx(s.proxied), jasper.Config{Schema: soakSchema, MigrateSchema: true}, s.logger)
	if err != nil {
		return err
	}
	if err := s.rt.Start(ctx); err != nil {
		s.rt = nil
		return err
	}
	if _, err := s.direct.Exec(ctx, `
CREATE TABLE soak.orders (id uuid PRIMARY KEY, refused boolean NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE soak.effects (message_id uuid PRIMARY KEY, applications int NOT NULL,
  first_applied_at timestamptz NOT NULL, last_applied_at timestamptz NOT NULL)`); err != nil {
		return fmt.Errorf("create the soak's business tables: %w", err)
	}
	if err := s.startConsumers(ctx); err != nil {
		return err
	}
	for i := range s.cfg.Relays {
		slot := &relaySlot{s: s, n: i + 1}
		if err := slot.start(); err != nil {
			return err
		}
		s.relays = append(s.relays, slot)
	}
	supCtx, cancelSup := context.WithCancel(context.WithoutCancel(ctx))
	supDone := make(chan struct{})
	go func() { defer close(supDone); s.supervise(supCtx) }()
	s.stopSupervisor = func() { cancelSup(); <-supDone }
	s.say("%d relays, %d consumers, queue %s, publishing %d msg/s for %s (rollback %.0f%%, refused %.0f%% to %s)",
		s.cfg.Relays, s.cfg.Consumers, s.queue, s.cfg.Rate, s.cfg.Duration, 100*s.cfg.Rollback, 100*s.cfg.Refused, s.cfg.RefusedDestination)
	return nil
}

func newSoakPool(ctx context.Context, dsn string, size int) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("soak database: %w", err)
	}
	pc.MaxConns = int32(size)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("soak database: %w", err)
	}
	return pool, nil
}

// startConsumers starts the routers consuming the queue through the broker proxy: each
// delivery is counted, then goes through the dead-letter middleware and the inbox to the
// handler, which applies the effect.
func (s *soak) startConsumers(ctx context.Context) error {
	inbox, err := s.rt.Inbox(middleware.InboxConfig{ConsumerName: soakConsumerName})
	if err != nil {
		return err
	}
	dead, err := s.rt.DeadLetter(middleware.DeadLetterConfig{})
	if err != nil {
		return err
	}
	for range s.cfg.Consumers {
		sub, err := amqp.NewSubscriber(jasperamqp.NewSubscriberConfig(s.relayMQ, jasperamqp.WithPrefetchCount(16)), s.logger)
		if err != nil {
			return fmt.Errorf("consumer: %w", err)
		}
		router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, s.logger)
		if err != nil {
			return err
		}
		router.AddMiddleware(s.countDelivery, dead.Middleware, transientAsTemporary, inbox.Middleware)
		router.AddConsumerHandler(soakHandler, s.queue, sub, s.apply)
		go func() {
			if err := router.Run(context.WithoutCancel(ctx)); err != nil {
				s.logger.Error("router stopped", err, nil)
			}
		}()
		select {
		case <-router.Running():
		case <-time.After(30 * time.Second):
			return errors.New("consumer: the router did not start within 30s")
		}
		s.routers = append(s.routers, router)
	}
	return nil
}

// countDelivery counts every delivery of a message by the broker (the outermost middleware).
func (s *soak) countDelivery(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		s.mu.Lock()
		s.deliveries[msg.UUID]++
		if s.acked[msg.UUID] {
			s.redelivered++
		}
		s.mu.Unlock()
		out, err := h(msg)
		if err == nil {
			s.mu.Lock()
			s.acked[msg.UUID] = true
			s.mu.Unlock()
		}
		return out, err
	}
}

// transientAsTemporary marks the errors of a lost or refused database connection as
// temporary (fault.Temporary), so that the dead-letter middleware redelivers the message
// instead of counting an attempt: an outage says nothing about the message. It waits
// transientPause first, so that an outage does not turn into a tight loop of redeliveries.
func transientAsTemporary(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err != nil && isTransient(err) {
			err = fault.Temporary(err)
			sleep(msg.Context(), transientPause)
		}
		return out, err
	}
}

// transientPause is how long a consumer waits before nacking a message whose handling
// failed for want of the database.
const transientPause = 100 * time.Millisecond

// isTransient reports errors of the connection rather than of the statement: network
// errors, a connection closed under the transaction, a server shutting down or starting.
func isTransient(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), strings.HasPrefix(pgErr.Code, "57P"), pgErr.Code == "53300":
			return true
		}
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "connection")
}

// apply is the handler: it applies the message's effect in the inbox transaction, counting
// the applications of each message id.
func (s *soak) apply(msg *message.Message) error {
	tx, ok := middleware.TxFromContext(msg.Context())
	if !ok {
		return fault.Permanent(errors.New("no inbox transaction"))
	}
	var p struct {
		Order string `json:"order"`
	}
	if err := json.Unmarshal(msg.Payload, &p); err != nil {
		return fault.Permanent(fmt.Errorf("payload: %w", err))
	}
	_, err := tx.Exec(msg.Context(), `INSERT INTO soak.effects (message_id, applications, first_applied_at, last_applied_at)
VALUES ($1, 1, clock_timestamp(), clock_timestamp())
ON CONFLICT (message_id) DO UPDATE SET applications = soak.effects.applications + 1, last_applied_at = clock_timestamp()`, p.Order)
	return err
}

// drive publishes and injects the faults for the configured duration.
func (s *soak) drive(ctx context.Context) error {
	s.started = time.Now()
	runCtx, cancel := context.WithTimeout(ctx, s.cfg.Duration)
	defer cancel()

	var wg sync.WaitGroup
	tokens := make(chan struct{}, s.cfg.Rate)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(tokens)
		t := time.NewTicker(time.Second / time.Duration(s.cfg.Rate))
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				select {
				case tokens <- struct{}{}:
				default: // the publishers are behind (an outage): the tick is dropped
				}
			}
		}
	}()
	for range s.cfg.Publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tokens {
				s.publishOne(ctx)
			}
		}()
	}

	faultErr := make(chan error, 3)
	var fwg sync.WaitGroup
	if s.cfg.Faults[faultKill] {
		fwg.Add(1)
		go func() { defer fwg.Done(); faultErr <- s.killRelays(runCtx) }()
	}
	if s.cfg.Faults[faultBrokerCut] || s.cfg.Faults[faultDBCut] || s.cfg.Faults[faultDBRestart] {
		fwg.Add(1)
		go func() { defer fwg.Done(); faultErr <- s.cutAndRestart(runCtx) }()
	}
	fwg.Add(1)
	go func() { defer fwg.Done(); s.printProgress(runCtx) }()

	wg.Wait()
	cancel()
	fwg.Wait()
	close(faultErr)
	for err := range faultErr {
		if err != nil {
			return err
		}
	}
	s.say("publishing stopped; faults ended")
	return ctx.Err()
}

// publishOne runs one business transaction: a business row and one outbox message,
// committed or (on purpose) rolled back.
func (s *soak) publishOne(ctx context.Context) {
	id := uuid.New()
	in := intent{rollback: rand.Float64() < s.cfg.Rollback, refused: rand.Float64() < s.cfg.Refused}
	key := id.String()
	s.mu.Lock()
	s.intents[key] = in
	s.mu.Unlock()
	destination := "rabbitmq://queue/" + s.queue
	if in.refused {
		destination = s.cfg.RefusedDestination
	}
	ctx, cancel := context.WithTimeout(ctx, soakStatementTimeout)
	defer cancel()
	err := func() error {
		tx, err := s.direct.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		if _, err := tx.Exec(ctx, `INSERT INTO soak.orders (id, refused) VALUES ($1, $2)`, id, in.refused); err != nil {
			return err
		}
		pub, err := s.rt.TxPublisher(wmsql.TxFromPgx(tx))
		if err != nil {
			return err
		}
		msg := message.NewMessage(key, []byte(`{"order":"`+key+`"}`))
		if err := pub.Publish(destination, msg); err != nil {
			return err
		}
		if in.rollback {
			return tx.Rollback(ctx)
		}
		return tx.Commit(ctx)
	}()
	if err != nil {
		s.publishErrors.Add(1)
		return
	}
	if !in.rollback {
		in.acked = true
		s.mu.Lock()
		s.intents[key] = in
		s.mu.Unlock()
	}
}

// addFault records a fault that ended.
func (s *soak) addFault(kind string, start, end time.Time) {
	s.mu.Lock()
	s.faults = append(s.faults, faultEvent{Kind: kind, Start: start, End: end})
	s.mu.Unlock()
}

// sleep waits d or until ctx ends; it reports whether the wait was complete.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// killRelays kills a random relay with SIGKILL every KillMin..KillMax and restarts it.
func (s *soak) killRelays(ctx context.Context) error {
	for {
		wait := s.cfg.KillMin
		if s.cfg.KillMax > s.cfg.KillMin {
			wait += rand.N(s.cfg.KillMax - s.cfg.KillMin)
		}
		if !sleep(ctx, wait) {
			return nil
		}
		slot := s.relays[rand.N(len(s.relays))]
		start := time.Now()
		if err := slot.killAndRestart(); err != nil {
			return err
		}
		s.addFault(faultKill, start, time.Now())
		s.say("fault: relay %d killed (SIGKILL) and restarted", slot.n)
	}
}

// cutAndRestart cuts the broker's and the database's connections in turn every FaultEvery,
// each for Outage, and restarts the database once mid-run. A fault under way when the run
// ends is completed (the service restored) before it returns.
func (s *soak) cutAndRestart(ctx context.Context) error {
	var cuts []string
	for _, k := range []string{faultBrokerCut, faultDBCut} {
		if s.cfg.Faults[k] {
			cuts = append(cuts, k)
		}
	}
	restartAt := s.started.Add(s.cfg.Duration / 2)
	restarted := !s.cfg.Faults[faultDBRestart]
	next := 0
	for {
		wait := s.cfg.FaultEvery
		if !restarted {
			wait = min(wait, time.Until(restartAt))
		}
		if len(cuts) == 0 && restarted {
			return nil
		}
		if !sleep(ctx, wait) {
			return nil
		}
		start := time.Now()
		switch {
		case !restarted && !start.Before(restartAt):
			restarted = true
			if err := s.cluster.Crash(context.WithoutCancel(ctx)); err != nil {
				return err
			}
			s.say("fault: database stopped (pg_ctl stop -m immediate)")
			time.Sleep(s.cfg.Outage)
			if err := s.cluster.Start(context.WithoutCancel(ctx)); err != nil {
				return err
			}
			s.addFault(faultDBRestart, start, time.Now())
			s.say("fault: database started again after %s", time.Since(start).Round(time.Millisecond))
		case len(cuts) > 0:
			kind := cuts[next%len(cuts)]
			next++
			p := s.mqProxy
			if kind == faultDBCut {
				p = s.dbProxy
			}
			p.Cut()
			time.Sleep(s.cfg.Outage)
			if err := p.Restore(); err != nil {
				return err
			}
			s.addFault(kind, start, time.Now())
			s.say("fault: %s for %s", kind, s.cfg.Outage)
		}
	}
}

// supervise restarts the relays that exit by themselves (a relay whose database or broker
// is unreachable when it starts exits with status 1).
func (s *soak) supervise(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, slot := range s.relays {
			if restarted, err := slot.restartIfExited(); err != nil {
				s.logger.Error("restart relay", err, nil)
			} else if restarted {
				s.unexpectedExits.Add(1)
			}
		}
	}
}

func (s *soak) printProgress(ctx context.Context) {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.say("%s", s.progressLine(context.WithoutCancel(ctx)))
	}
}

// progressLine reads the counts of the tables (straight from the cluster; "?" while it is down).
func (s *soak) progressLine(ctx context.Context) string {
	s.mu.Lock()
	acked, faults := 0, len(s.faults)
	for _, in := range s.intents {
		if in.acked {
			acked++
		}
	}
	s.mu.Unlock()
	counts := "database down"
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var applied, outbox, dead int64
	if err := s.direct.QueryRow(ctx, `SELECT (SELECT count(*) FROM soak.effects), (SELECT count(*) FROM soak.jasper_outgoing_envelopes),
  (SELECT count(*) FROM soak.jasper_dead_letters)`).Scan(&applied, &outbox, &dead); err == nil {
		counts = fmt.Sprintf("applied %d, outbox %d, dead letters %d", applied, outbox, dead)
	}
	return fmt.Sprintf("committed %d (publish errors %d), %s, faults %d, relay restarts after a failed start %d",
		acked, s.publishErrors.Load(), counts, faults, s.unexpectedExits.Load())
}

// drain waits until the outbox is empty, every committed message to the queue is applied
// and the queue is empty, or DrainTimeout. It reports whether it drained.
func (s *soak) drain(ctx context.Context) (bool, error) {
	s.say("draining (up to %s)", s.cfg.DrainTimeout)
	begin := time.Now()
	deadline := begin.Add(s.cfg.DrainTimeout)
	last := begin
	defer func() { s.drainTook = time.Since(begin) }()
	for {
		done, line := s.drained(ctx)
		if done {
			s.say("drained: %s", line)
			return true, nil
		}
		if time.Now().After(deadline) {
			s.say("drain timed out: %s", line)
			return false, nil
		}
		if time.Since(last) >= progressEvery {
			s.say("draining: %s", line)
			last = time.Now()
		}
		if !sleep(ctx, 500*time.Millisecond) {
			return false, ctx.Err()
		}
	}
}

func (s *soak) drained(ctx context.Context) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var outbox, pending int64
	if err := s.direct.QueryRow(ctx, `SELECT (SELECT count(*) FROM soak.jasper_outgoing_envelopes),
  (SELECT count(*) FROM soak.orders o WHERE NOT o.refused AND NOT EXISTS (SELECT 1 FROM soak.effects e WHERE e.message_id = o.id))`).Scan(&outbox, &pending); err != nil {
		return false, "database: " + err.Error()
	}
	ready := -1
	if conn, err := amqp091.Dial(s.cfg.AMQPURL); err == nil {
		if ch, err := conn.Channel(); err == nil {
			if q, err := ch.QueueDeclarePassive(s.queue, true, false, false, false, nil); err == nil {
				ready = q.Messages
			}
		}
		conn.Close()
	}
	return outbox == 0 && pending == 0 && ready == 0,
		fmt.Sprintf("outbox %d, committed not applied %d, queue %d", outbox, pending, ready)
}

// stopComponents stops the consumers and the relays (the figures are read afterwards, so
// nothing changes under them).
func (s *soak) stopComponents() {
	if s.stopSupervisor != nil {
		s.stopSupervisor()
		s.stopSupervisor = nil
	}
	for _, r := range s.routers {
		_ = r.Close()
	}
	s.routers = nil
	var wg sync.WaitGroup
	for _, slot := range s.relays {
		wg.Add(1)
		go func() { defer wg.Done(); slot.stop() }()
	}
	wg.Wait()
	s.relays = nil
}

// teardown stops and removes everything the soak started, also after a failure.
func (s *soak) teardown() {
	s.stopComponents()
	if s.rt != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = s.rt.Stop(ctx)
		cancel()
	}
	for _, p := range []*pgxpool.Pool{s.proxied, s.direct} {
		if p != nil {
			p.Close()
		}
	}
	for _, p := range []*tcpproxy.Proxy{s.dbProxy, s.mqProxy} {
		if p != nil {
			_ = p.Close()
		}
	}
	if s.cluster != nil {
		_ = s.cluster.Close()
	}
	if conn, err := amqp091.Dial(s.cfg.AMQPURL); err == nil {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(s.queue, false, false, false)
		}
		conn.Close()
	}
}

// relaySlot is one of the relay processes, restarted after each kill.
type relaySlot struct {
	s    *soak
	n    int
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// start starts the relay process (slot locked by the caller, or not yet shared).
func (r *relaySlot) start() error {
	if r.log == nil {
		f, err := os.Create(filepath.Join(r.s.workDir, "relay-"+strconv.Itoa(r.n)+".log"))
		if err != nil {
			return fmt.Errorf("relay %d: %w", r.n, err)
		}
		r.log = f
	}
	cmd := exec.Command(r.s.cfg.Executable, "relay", "--dsn", r.s.relayDSN, "--schema", soakSchema, "--to", r.s.relayMQ,
		"--max-attempts", strconv.Itoa(r.s.cfg.MaxAttempts), "--progress", "0")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, dsnEnv+"=") && !strings.HasPrefix(kv, amqpURLEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = r.log, r.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start relay %d: %w", r.n, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done
	return nil
}

// killAndRestart kills the relay with SIGKILL, waits for it to be gone and starts it again.
func (r *relaySlot) killAndRestart() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return nil
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	return r.start()
}

// restartIfExited starts the relay again when it exited by itself.
func (r *relaySlot) restartIfExited() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return false, nil
	}
	select {
	case <-r.done:
	default:
		return false, nil
	}
	r.s.logger.Error(fmt.Sprintf("relay %d exited by itself (%s); restarting it", r.n, r.cmd.ProcessState), nil, nil)
	return true, r.start()
}

// stop stops the relay gracefully (SIGTERM), or with SIGKILL after 30 s.
func (r *relaySlot) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
	if r.log != nil {
		r.log.Close()
		r.log = nil
	}
}

// soakLogger is the watermill.LoggerAdapter of the soak's own components: errors (and info)
// as one line each in the soak's log file, without the passwords of the URLs it knows.
type soakLogger struct {
	mu      *sync.Mutex
	w       io.Writer
	secrets []string
	fields  watermill.LogFields
}

func (l *soakLogger) log(level, msg string, err error, fields watermill.LogFields) {
	line := fmt.Sprintf("%s %s: %s", time.Now().Format("15:04:05.000"), level, msg)
	if err != nil {
		line += ": " + err.Error()
	}
	for k, v := range l.fields.Add(fields) {
		line += fmt.Sprintf(" %s=%v", k, v)
	}
	line = strings.Join(strings.FieldsFunc(scrubAll(line, l.secrets), func(r rune) bool { return r == '\n' || r == '\r' }), " ")
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w, line)
}

func (l *soakLogger) Error(msg string, err error, fields watermill.LogFields) {
	l.log("error", msg, err, fields)
}
func (l *soakLogger) Info(msg string, fields watermill.LogFields) { l.log("info", msg, nil, fields) }
func (l *soakLogger) Debug(string, watermill.LogFields)           {}
func (l *soakLogger) Trace(string, watermill.LogFields)           {}
func (l *soakLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return &soakLogger{mu: l.mu, w: l.w, secrets: l.secrets, fields: l.fields.Add(fields)}
}
