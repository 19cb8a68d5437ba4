package durability

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/jasperid"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
)

// ErrAgentClosed is returned by Run once Close was called.
var ErrAgentClosed = errors.New("watermill-jasper: durability agent is closed")

// ErrAgentRunning is returned by a second call of Run.
var ErrAgentRunning = errors.New("watermill-jasper: durability agent is already running")

// HandledCleanupLockID is the advisory lock id under which one agent at a time deletes
// expired Handled rows. Jasper has no such job (Wolverine added it); the id is Jasper's hash
// (GetDeterministicHashCode) of "watermill-jasper-handled-cleanup", as Jasper derives its own
// lock ids from their names, and differs from them.
const HandledCleanupLockID int32 = -1292983443

// Job names, as they appear in logs and in Stats.JobErrors.
const (
	JobScheduled    = "scheduled-jobs"
	JobRecovery     = "recover-unowned"
	JobReassignment = "reassign-dormant-nodes"
	JobExpired      = "delete-expired-envelopes"
	JobHandled      = "delete-expired-handled"
	JobNodeCheck    = "node-check"
	JobGauges       = "sample-gauges"
)

// Waker is something that claims unowned envelopes (a forwarder, a subscriber) and should
// look for them at once. Wake must not block: it only signals.
type Waker interface{ Wake() }

// WakerFunc adapts a function to Waker.
type WakerFunc func()

// Wake calls f.
func (f WakerFunc) Wake() { f() }

// Stats counts what an Agent did since it was created.
type Stats struct {
	// ScheduledReleased counts scheduled envelopes made Incoming (due).
	ScheduledReleased int64
	// ScheduledSent counts scheduled sends (scheduled-envelope rows) turned into outgoing
	// envelopes.
	ScheduledSent int64
	// DeadLettered counts scheduled sends that could not be read, moved to the dead letters.
	DeadLettered int64
	// Recovered counts envelopes of dormant nodes handed back (owner_id = 0).
	Recovered int64
	// DormantNodes counts the dormant nodes whose envelopes were handed back.
	DormantNodes int64
	// Discarded counts expired outgoing envelopes deleted.
	Discarded int64
	// HandledDeleted counts Handled rows deleted after keep_until.
	HandledDeleted int64
	// HandedBack counts this node's own envelopes handed back: when stopping, and after its
	// lock was lost and taken again.
	HandedBack int64
	// Wakeups counts the times the Wakers were woken.
	Wakeups int64
	// JobErrors counts failed job runs, by job name.
	JobErrors map[string]int64
}

// Gauges is one sample of the tables (Agent.SampleGauges).
type Gauges struct {
	// Incoming, Scheduled and Handled count the incoming envelopes with that status.
	Incoming, Scheduled, Handled int64
	// Outgoing counts the outgoing envelopes (the outbox).
	Outgoing int64
	// DeadLetters counts the dead letters.
	DeadLetters int64
	// OldestOutgoingAge is the age of the oldest outgoing envelope (by its timestamp
	// column, on the database clock); 0 when there is none.
	OldestOutgoingAge time.Duration
	// DormantOwned counts the envelopes held by nodes whose lock no session holds: they wait
	// for a reassignment pass. A value that stays above 0 means no agent runs.
	DormantOwned int64
	// SampledAt is when the sample was taken (local clock).
	SampledAt time.Time
}

// ScheduledResult is what one scheduled-job pass did.
type ScheduledResult struct {
	// Skipped is true when another agent (Go or .NET) held the scheduled-jobs lock.
	Skipped bool
	// Released scheduled envelopes were made Incoming.
	Released int64
	// Sent scheduled sends were turned into outgoing envelopes.
	Sent int64
	// DeadLettered scheduled sends could not be read and went to the dead letters.
	DeadLettered int64
	// NextDue is how long until the next scheduled envelope falls due (0: none, or unknown).
	NextDue time.Duration
}

// Reassigned is the envelopes of one dormant node handed back.
type Reassigned struct {
	Owner              int32
	Incoming, Outgoing int64
}

// ReassignResult is what one reassignment pass did.
type ReassignResult struct {
	// Skipped is true when another agent (Go or .NET) held the reassignment lock.
	Skipped bool
	// Dormant lists the dormant nodes whose envelopes were handed back.
	Dormant []Reassigned
	// Alive lists the other owners found alive (their lock is held): untouched.
	Alive []int32
}

// Unowned is what a recovery pass found.
type Unowned struct {
	// Outgoing is true when some outgoing envelope has owner 0.
	Outgoing bool
	// Topics have Incoming envelopes with owner 0.
	Topics []string
}

// Agent is the durability agent of one node: Jasper's DurabilityAgent (jasper-spec §5) for
// the Go side of a database shared with other Go and .NET nodes. Run starts its jobs, each
// on a timer of its own so that none delays another:
//
//   - scheduled jobs (every ScheduledJobPollingTime, under Jasper's "scheduled-jobs" lock):
//     due Scheduled envelopes become Incoming; due scheduled sends (Jasper's
//     scheduled-envelope rows) become outgoing envelopes for their destination, in the
//     transaction that deletes them; one that cannot be read goes to the dead letters;
//   - recovery (same timer): when unowned envelopes wait, the Wakers are woken (forwarders
//     and subscribers claim unowned envelopes themselves, so nothing is claimed here);
//   - dormant-node reassignment (every NodeReassignmentPollingTime, under Jasper's
//     "jasper-reassign-envelopes" lock): every other owner of envelopes whose node lock can
//     be taken (pg_try_advisory_xact_lock(owner) on PostgreSQL, sp_getapplock owned by the
//     transaction on SQL Server, as Jasper does) is dead, and its envelopes
//     are handed back (owner_id = 0) in bounded batches; an owner whose lock another session
//     holds (a live Go or .NET node) is never touched;
//   - expired envelopes (every ExpiredEnvelopesPollingTime, under Jasper's
//     "recover-outgoing-messages" lock): unowned outgoing envelopes past deliver_by are
//     deleted;
//   - Handled cleanup (every HandledCleanupPollingTime, under HandledCleanupLockID): inbox
//     rows past keep_until are deleted in bounded batches, each its own transaction;
//   - node check (every NodeCheckInterval): Node.Check takes the node lock again after its
//     connection was lost; the envelopes still marked with this node's id are then handed
//     back, since other nodes were free to consider it dead meanwhile;
//   - gauges (every MetricsSamplingInterval): one query sampling the tables (Gauges).
//
// Global locks are transaction-level advisory locks on Jasper's lock ids (SQL Server:
// sp_getapplock @LockOwner = 'Transaction' on the resource named by the decimal id): they exclude a
// .NET agent holding the same id as a session lock, are released by the end of their
// transaction whatever happens to the connection, and work through PgBouncer in transaction
// mode. Jasper's lock ids are database-wide, so agents of other schemas of the same database
// take turns with this one: a job that finds its lock held runs again after about half a
// second rather than a whole period.
//
// Stopping (Close, or Run's context) hands the node's envelopes back (owner_id = 0), as
// Jasper's agent does; close the forwarders and subscribers first, then the agent, then the
// Node.
type Agent struct {
	db      database.DB
	node    *Node
	config  Config
	dialect sqldialect.Dialect
	uuids   row.UUIDCodec
	logger  watermill.LoggerAdapter
	self    int32
	// onJob is a test hook called after every job run of Run's timers.
	onJob func(job string, err error)

	mu      sync.Mutex
	wakers  []Waker
	started bool
	closed  bool
	stop    context.CancelFunc
	done    chan struct{}
	running chan struct{}

	relocks uint64 // the node's Relocks seen last (node-check goroutine only)
	unknown uint64 // the node's UnknownOutcomes seen last (node-check goroutine only)
	gauges  atomic.Pointer[Gauges]

	scheduledReleased, scheduledSent, deadLettered, recovered, dormantNodes atomic.Int64
	discarded, handledDeleted, handedBack, wakeups                          atomic.Int64
	errMu                                                                   sync.Mutex
	jobErrors                                                               map[string]int64
}

// NewAgent validates config and returns the agent of node over db (the pool the node was
// made from: database.FromPgx or database.FromStdSQL). Start it with Run.
func NewAgent(db database.DB, node *Node, config Config, logger watermill.LoggerAdapter) (*Agent, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: a database.DB is required (database.FromPgx or database.FromStdSQL)", ErrInvalidConfig)
	}
	if node == nil {
		return nil, fmt.Errorf("%w: a *Node is required (durability.NewNode): the agent acts for it and hands its envelopes back when stopping", ErrInvalidConfig)
	}
	if config.Schema.Dialect == "" {
		config.Schema.Dialect = db.Dialect()
	}
	if err := config.Validate(); err != nil {
		return nil, err
	}
	config.setDefaults()
	if config.Schema.Dialect != db.Dialect() {
		return nil, fmt.Errorf("%w: Schema.Dialect is %s but the database is %s", ErrInvalidConfig, config.Schema.Dialect, db.Dialect())
	}
	d, err := sqldialect.For(config.Schema)
	if err != nil {
		return nil, fmt.Errorf("watermill-jasper: durability agent: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	a := &Agent{
		db:        db,
		node:      node,
		config:    config,
		dialect:   d,
		uuids:     d.UUIDs(),
		self:      node.ID(),
		wakers:    append([]Waker(nil), config.Wakers...),
		done:      make(chan struct{}),
		running:   make(chan struct{}),
		relocks:   node.Relocks(),
		unknown:   node.UnknownOutcomes(),
		jobErrors: map[string]int64{},
		logger: logger.With(watermill.LogFields{
			"component": "watermill-jasper/durability", "node_id": node.ID(), "schema": d.Schema().Schema,
		}),
	}
	return a, nil
}

// NodeID is the id of the node the agent acts for.
func (a *Agent) NodeID() int32 { return a.self }

// AddWaker registers Wakers (forwarders, subscribers) woken when envelopes became
// claimable. Safe to call at any time.
func (a *Agent) AddWaker(w ...Waker) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, x := range w {
		if x != nil {
			a.wakers = append(a.wakers, x)
		}
	}
}

// wake wakes every Waker; a panicking Waker is logged and skipped.
func (a *Agent) wake() {
	a.mu.Lock()
	ws := append([]Waker(nil), a.wakers...)
	a.mu.Unlock()
	if len(ws) == 0 {
		return
	}
	a.wakeups.Add(1)
	for _, w := range ws {
		func() {
			defer func() {
				if r := recover(); r != nil {
					a.logger.Error("Waker panicked", fmt.Errorf("%v", r), nil)
				}
			}()
			w.Wake()
		}()
	}
}

// Run runs the jobs until Close is called or ctx is cancelled, then hands the node's
// envelopes back and returns nil. It returns an error only when it cannot start (Run
// called twice, or after Close). Database failures are logged and the failed job tried
// again with back-off (after 1 s, doubling, at most its period); they never stop Run.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	switch {
	case a.closed:
		a.mu.Unlock()
		return ErrAgentClosed
	case a.started:
		a.mu.Unlock()
		return ErrAgentRunning
	}
	a.started = true
	runCtx, stop := context.WithCancel(ctx)
	a.stop = stop
	a.mu.Unlock()
	defer close(a.done)
	defer stop()

	c := a.config
	var wg sync.WaitGroup
	start := func(name string, first, period time.Duration, fn func(context.Context) (time.Duration, error)) {
		if period < 0 {
			return // turned off
		}
		wg.Go(func() { a.loop(runCtx, name, first, period, fn) })
	}
	start(JobNodeCheck, c.NodeCheckInterval, c.NodeCheckInterval, a.checkNode)
	start(JobScheduled, c.ScheduledJobFirstExecution, c.ScheduledJobPollingTime, a.scheduledPass)
	start(JobReassignment, c.FirstNodeReassignmentExecution, c.NodeReassignmentPollingTime, func(ctx context.Context) (time.Duration, error) {
		res, err := a.ReassignDormantNodes(ctx)
		return retryIfSkipped(res.Skipped), err
	})
	start(JobExpired, c.ExpiredEnvelopesPollingTime, c.ExpiredEnvelopesPollingTime, func(ctx context.Context) (time.Duration, error) {
		_, skipped, err := a.deleteExpiredEnvelopes(ctx)
		return retryIfSkipped(skipped), err
	})
	start(JobHandled, c.HandledCleanupPollingTime, c.HandledCleanupPollingTime, func(ctx context.Context) (time.Duration, error) {
		_, skipped, err := a.deleteExpiredHandled(ctx)
		return retryIfSkipped(skipped), err
	})
	start(JobGauges, 0, c.MetricsSamplingInterval, func(ctx context.Context) (time.Duration, error) {
		_, err := a.SampleGauges(ctx)
		return 0, err
	})
	a.logger.Info("Durability agent started", watermill.LogFields{
		"scheduled_job_polling_time":     c.ScheduledJobPollingTime.String(),
		"node_reassignment_polling_time": c.NodeReassignmentPollingTime.String(),
		"recovery_batch_size":            c.RecoveryBatchSize,
	})
	close(a.running)
	<-runCtx.Done()
	wg.Wait()

	// Hand back what this node still holds, as Jasper's StopAsync does.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.StatementTimeout)
	defer cancel()
	in, out, err := a.ReleaseOwnEnvelopes(rctx)
	if err != nil {
		a.logger.Error("Cannot hand this node's envelopes back while stopping; a living node's agent will once the node lock is released", err, nil)
	} else if in+out > 0 {
		a.logger.Info("Envelopes of this node handed back", watermill.LogFields{"incoming": in, "outgoing": out})
	}
	a.logger.Info("Durability agent stopped", nil)
	return nil
}

// Running is closed once Run has started its jobs.
func (a *Agent) Running() <-chan struct{} { return a.running }

// Close stops the jobs (a job in progress is cancelled: its transaction rolls back), hands
// the node's envelopes back and returns once Run has returned. It is idempotent. It does
// not close the Node.
func (a *Agent) Close() error {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		if a.stop != nil {
			a.stop()
		}
	}
	started := a.started
	a.mu.Unlock()
	if started {
		<-a.done
	}
	return nil
}

// Stats returns the counters. A counter moves once the job's transaction has committed, so a
// component the job woke may already have acted on the envelopes it counts.
func (a *Agent) Stats() Stats {
	a.errMu.Lock()
	errs := make(map[string]int64, len(a.jobErrors))
	for k, v := range a.jobErrors {
		errs[k] = v
	}
	a.errMu.Unlock()
	return Stats{
		ScheduledReleased: a.scheduledReleased.Load(),
		ScheduledSent:     a.scheduledSent.Load(),
		DeadLettered:      a.deadLettered.Load(),
		Recovered:         a.recovered.Load(),
		DormantNodes:      a.dormantNodes.Load(),
		Discarded:         a.discarded.Load(),
		HandledDeleted:    a.handledDeleted.Load(),
		HandedBack:        a.handedBack.Load(),
		Wakeups:           a.wakeups.Load(),
		JobErrors:         errs,
	}
}

// Gauges returns the latest sample of the tables and true, or false before the first
// sample succeeded.
func (a *Agent) Gauges() (Gauges, bool) {
	g := a.gauges.Load()
	if g == nil {
		return Gauges{}, false
	}
	return *g, true
}

// loop runs fn after first and then every period (or sooner, when fn asks for it) until
// ctx ends. Failures are logged once when they start and once when they stop.
func (a *Agent) loop(ctx context.Context, name string, first, period time.Duration, fn func(context.Context) (time.Duration, error)) {
	t := time.NewTimer(first)
	defer t.Stop()
	failing := false
	var backoff time.Duration // after a failure: how soon to try again (doubling, up to period)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next, err := fn(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.errMu.Lock()
			a.jobErrors[name]++
			a.errMu.Unlock()
			if !failing {
				a.logger.Error("Durability job failed; retrying with back-off up to every period", err, watermill.LogFields{"job": name, "period": period.String()})
			} else {
				a.logger.Debug("Durability job failed again", watermill.LogFields{"job": name, "error": err.Error()})
			}
			failing = true
		} else if failing {
			a.logger.Info("Durability job works again", watermill.LogFields{"job": name})
			failing = false
		}
		if a.onJob != nil {
			a.onJob(name, err)
		}
		d := period
		if next > 0 && next < d {
			d = next
		}
		if err != nil {
			// A failed pass (database unreachable, too many clients, a statement timeout) is
			// tried again soon rather than a whole period later (a minute for the
			// reassignment): from failureRetry, doubling, never more often than that nor
			// later than the period.
			backoff = min(max(2*backoff, failureRetry), period)
			d = min(d, backoff+rand.N(backoff/4+1))
		} else {
			backoff = 0
		}
		t.Reset(d)
	}
}

// inTx runs fn in a transaction bounded by StatementTimeout.
func (a *Agent) inTx(ctx context.Context, fn func(ctx context.Context, tx database.Tx) error) error {
	ctx, cancel := context.WithTimeout(ctx, a.config.StatementTimeout)
	defer cancel()
	return database.InTx(ctx, a.db, func(tx database.Tx) error { return fn(ctx, tx) })
}

// tryLock takes the transaction-level advisory lock of id.
func (a *Agent) tryLock(ctx context.Context, tx database.Tx, id int32) (bool, error) {
	var ok bool
	err := database.QueryRow(ctx, tx, a.dialect.TryAdvisoryXactLock(), []any{a.dialect.AdvisoryLockKey(id)}, &ok)
	return ok, err
}

// skippedRetry is how soon a job whose lock was held by another session runs again. Jasper's
// lock ids are database-wide, not per schema: the holder may be an agent of another schema
// that did not do this schema's work, so waiting a whole period (a minute for the
// reassignment) would be too long; trying a lock costs one short transaction.
const skippedRetry = 500 * time.Millisecond

// failureRetry is how soon a job whose pass failed runs again the first time; the wait
// doubles with each further failure, up to the job's period.
const failureRetry = time.Second

func retryIfSkipped(skipped bool) time.Duration {
	if !skipped {
		return 0
	}
	return skippedRetry + rand.N(skippedRetry/2) // jittered, so that agents do not retry in step
}

// checkNode checks the node lock and, when it had to be taken again or a component reported
// a claim whose outcome is unknown (Node.ReportUnknownOutcome), hands back the
// envelopes still marked with this node's id.
func (a *Agent) checkNode(ctx context.Context) (time.Duration, error) {
	cctx, cancel := context.WithTimeout(ctx, a.config.StatementTimeout)
	err := a.node.Check(cctx)
	cancel()
	if err != nil {
		if errors.Is(err, ErrNodeIDInUse) {
			a.logger.Error("Another session holds this node's id: envelopes this process marks with it will not be handed back by other nodes until that session ends", err, nil)
		}
		return 0, fmt.Errorf("node lock: %w", err)
	}
	r, u := a.node.Relocks(), a.node.UnknownOutcomes()
	if r == a.relocks && u == a.unknown {
		return 0, nil
	}
	why := "its lock was taken again"
	if r == a.relocks {
		why = "a claim's outcome was unknown"
	}
	in, out, err := a.ReleaseOwnEnvelopes(ctx)
	if err != nil {
		return 0, fmt.Errorf("hand back this node's envelopes after %s: %w", why, err)
	}
	a.relocks, a.unknown = r, u // only once handed back; otherwise tried again at the next check
	a.logger.Info("Envelopes marked with this node handed back after "+why, watermill.LogFields{
		"incoming": in, "outgoing": out,
	})
	return 0, nil
}

// scheduledPass runs the scheduled jobs and then the recovery probe; it asks to run again
// when the next scheduled envelope falls due before the next tick.
func (a *Agent) scheduledPass(ctx context.Context) (time.Duration, error) {
	res, err := a.RunScheduledJobs(ctx)
	_, rerr := a.RecoverUnowned(ctx)
	if err == nil {
		err = rerr
	}
	next := retryIfSkipped(res.Skipped)
	if res.NextDue > 0 && (next == 0 || res.NextDue < next) {
		next = res.NextDue + 10*time.Millisecond
	}
	return next, err
}

// RunScheduledJobs releases the due scheduled envelopes under Jasper's scheduled-jobs lock:
// Scheduled envelopes become Incoming (owner 0), and scheduled sends (scheduled-envelope
// rows) are unwrapped into outgoing envelopes for their destination, in the transaction that
// deletes them (an unreadable one is moved to the dead letters with the reason). It works in
// batches of RecoveryBatchSize until nothing due is left, and wakes the Wakers when it
// released something. Run calls it every ScheduledJobPollingTime.
func (a *Agent) RunScheduledJobs(ctx context.Context) (ScheduledResult, error) {
	var res ScheduledResult
	batch := a.config.RecoveryBatchSize
	defer func() {
		if res.Released+res.Sent > 0 {
			a.wake()
		}
	}()
	for {
		var n int64
		var next sql.NullFloat64
		locked := true
		err := a.inTx(ctx, func(ctx context.Context, tx database.Tx) error {
			ok, err := a.tryLock(ctx, tx, jasperid.ScheduledJobLockID)
			if err != nil || !ok {
				locked = false
				return err
			}
			return database.QueryRow(ctx, tx, a.dialect.ReleaseScheduled(), []any{a.dialect.StringList(nil), batch}, &n, &next)
		})
		if err != nil {
			return res, fmt.Errorf("release due scheduled envelopes: %w", err)
		}
		if !locked {
			res.Skipped = true
			return res, nil
		}
		res.Released += n
		a.scheduledReleased.Add(n)
		res.NextDue = 0
		if next.Valid && next.Float64 > 0 {
			res.NextDue = time.Duration(next.Float64 * float64(time.Millisecond))
		}
		if n < int64(batch) {
			break
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	for {
		var taken, sent, dead int
		locked := true
		err := a.inTx(ctx, func(ctx context.Context, tx database.Tx) error {
			ok, err := a.tryLock(ctx, tx, jasperid.ScheduledJobLockID)
			if err != nil || !ok {
				locked = false
				return err
			}
			taken, sent, dead, err = a.releaseScheduledSends(ctx, tx, batch)
			return err
		})
		if err != nil {
			return res, fmt.Errorf("release due scheduled sends: %w", err)
		}
		if !locked {
			res.Skipped = true
			return res, nil
		}
		res.Sent += int64(sent)
		res.DeadLettered += int64(dead)
		a.scheduledSent.Add(int64(sent))
		a.deadLettered.Add(int64(dead))
		if taken < batch {
			return res, nil
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
}

// releaseScheduledSends deletes up to limit due scheduled sends and, in the same
// transaction, inserts the envelopes they wrap into the outgoing table (notifying the
// forwarders) or moves unreadable ones to the dead letters.
func (a *Agent) releaseScheduledSends(ctx context.Context, tx database.Tx, limit int) (taken, sent, dead int, err error) {
	rows, err := tx.Query(ctx, a.dialect.ReleaseDueScheduledSends(), limit)
	if err != nil {
		return 0, 0, 0, err
	}
	var envs []row.Envelope
	for rows.Next() {
		e, err := row.ScanIncoming(rows, a.uuids)
		if err != nil {
			_ = rows.Close()
			return 0, 0, 0, fmt.Errorf("read a scheduled send: %w", err)
		}
		envs = append(envs, e)
	}
	if err := rows.Close(); err != nil {
		return 0, 0, 0, err
	}
	var out []row.Envelope
	for i := range envs {
		e := &envs[i]
		topic, msg, err := row.UnwrapScheduled(*e)
		var o row.Envelope
		if err == nil {
			o, err = row.FromMessage(topic, msg, a.config.Defaults)
		}
		if err != nil {
			if err := a.deadLetterScheduled(ctx, tx, e, err); err != nil {
				return 0, 0, 0, err
			}
			a.logger.Error("Unreadable scheduled send moved to the dead letters", err, watermill.LogFields{"envelope_id": e.ID.String()})
			dead++
			continue
		}
		o.OwnerID = 0
		o.Attempts = 0
		out = append(out, o)
	}
	per := a.dialect.MaxParams() / len(row.OutgoingColumns)
	for rest := out; len(rest) > 0; {
		n := min(len(rest), per)
		args := make([]any, 0, n*len(row.OutgoingColumns))
		for i := range rest[:n] {
			args = rest[i].OutgoingArgs(args, a.uuids)
		}
		if _, err := tx.Exec(ctx, a.dialect.InsertEnvelopes(n, 0, true), args...); err != nil {
			return 0, 0, 0, fmt.Errorf("insert the envelopes of scheduled sends: %w", err)
		}
		rest = rest[n:]
	}
	return len(envs), len(out), dead, nil
}

// deadLetterScheduled writes a scheduled send that cannot be forwarded to the dead letters.
func (a *Agent) deadLetterScheduled(ctx context.Context, tx database.Tx, e *row.Envelope, cause error) error {
	args := e.IncomingArgs(nil, a.uuids)
	args = append(args,
		"The scheduled send cannot be read, so it cannot be forwarded: "+cause.Error(),
		fmt.Sprintf("%T", rootCause(cause)),
		cause.Error(),
		errorChain(cause),
		"watermill-jasper/durability",
	)
	if _, err := tx.Exec(ctx, a.dialect.InsertDeadLetter(), args...); err != nil {
		return fmt.Errorf("move an unreadable scheduled send to the dead letters: %w", err)
	}
	return nil
}

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

func errorChain(err error) string {
	s := ""
	for e := err; e != nil; e = errors.Unwrap(e) {
		if s != "" {
			s += "\n"
		}
		s += fmt.Sprintf("%T: %s", e, e.Error())
	}
	return s
}

// RecoverUnowned looks (through indexes only) for unowned envelopes: outgoing ones, and
// Incoming ones by topic, and wakes the Wakers when there are some. Forwarders and
// subscribers claim unowned envelopes themselves; this makes them do it now rather than at
// their next poll. Run calls it after every scheduled-jobs pass.
func (a *Agent) RecoverUnowned(ctx context.Context) (Unowned, error) {
	var u Unowned
	var topics string
	qctx, cancel := context.WithTimeout(ctx, a.config.StatementTimeout)
	defer cancel()
	if err := database.QueryRow(qctx, a.db, a.dialect.UnownedEnvelopes(), nil, &u.Outgoing, &topics); err != nil {
		return u, fmt.Errorf("look for unowned envelopes: %w", err)
	}
	if err := json.Unmarshal([]byte(topics), &u.Topics); err != nil {
		return u, fmt.Errorf("read the topics of unowned envelopes: %w", err)
	}
	if u.Outgoing || len(u.Topics) > 0 {
		a.wake()
	}
	return u, nil
}

// ReassignDormantNodes hands back (owner_id = 0) the envelopes of every other owner whose
// node lock no session holds, under Jasper's reassignment lock, as Jasper's NodeReassignment
// does: an owner is dormant when pg_try_advisory_xact_lock(owner) succeeds, and that lock
// keeps it so until the transaction ends. Envelopes are handed back in batches of
// RecoveryBatchSize, each in its own transaction that takes both locks again; an owner whose
// lock another session holds is never touched. Subscribers and forwarders everywhere are
// notified, and the local Wakers woken. Run calls it every NodeReassignmentPollingTime.
func (a *Agent) ReassignDormantNodes(ctx context.Context) (ReassignResult, error) {
	var res ReassignResult
	var owners []int32
	locked := true
	err := a.inTx(ctx, func(ctx context.Context, tx database.Tx) error {
		ok, err := a.tryLock(ctx, tx, jasperid.ReassignmentLockID)
		if err != nil || !ok {
			locked = false
			return err
		}
		rows, err := tx.Query(ctx, a.dialect.OtherOwners(), a.self)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id int32
			if err := rows.Scan(&id); err != nil {
				_ = rows.Close()
				return err
			}
			owners = append(owners, id)
		}
		return rows.Close()
	})
	if err != nil {
		return res, fmt.Errorf("list the owners of envelopes: %w", err)
	}
	if !locked {
		res.Skipped = true
		return res, nil
	}
	woken := false
	defer func() {
		if woken {
			a.wake()
		}
	}()
	for _, owner := range owners {
		in, out, st, err := a.handBack(ctx, owner, true)
		if in+out > 0 {
			woken = true
			res.Dormant = append(res.Dormant, Reassigned{Owner: owner, Incoming: in, Outgoing: out})
			a.recovered.Add(in + out)
			a.dormantNodes.Add(1)
			a.logger.Info("Envelopes of a dormant node handed back", watermill.LogFields{
				"owner_id": owner, "incoming": in, "outgoing": out,
			})
		}
		if err != nil {
			return res, fmt.Errorf("hand back the envelopes of node %d: %w", owner, err)
		}
		switch st {
		case ownerAlive:
			res.Alive = append(res.Alive, owner)
		case lockLost:
			res.Skipped = true
			return res, nil
		}
	}
	return res, nil
}

type handBackState int

const (
	handedBack handBackState = iota
	ownerAlive               // the owner's lock is held by a session: untouched
	lockLost                 // another agent took the reassignment lock meanwhile
)

// handBack hands back every envelope of owner in batches, each its own transaction. With
// checkLocks, each batch first takes the reassignment lock and the owner's lock
// (transaction-level) and stops when either is held elsewhere.
func (a *Agent) handBack(ctx context.Context, owner int32, checkLocks bool) (in, out int64, st handBackState, err error) {
	batch := a.config.RecoveryBatchSize
	for {
		var bin, bout int64
		err := a.inTx(ctx, func(ctx context.Context, tx database.Tx) error {
			if checkLocks {
				ok, err := a.tryLock(ctx, tx, jasperid.ReassignmentLockID)
				if err != nil {
					return err
				}
				if !ok {
					st = lockLost
					return nil
				}
				if ok, err = a.tryLock(ctx, tx, owner); err != nil {
					return err
				}
				if !ok {
					st = ownerAlive
					return nil
				}
			}
			var topics string
			if err := database.QueryRow(ctx, tx, a.dialect.ReleaseOwner(), []any{owner, batch}, &bin, &bout, &topics); err != nil {
				return err
			}
			return a.notify(ctx, tx, bout > 0, topics)
		})
		if err != nil {
			return in, out, st, err
		}
		if st != handedBack {
			return in, out, st, nil
		}
		in += bin
		out += bout
		if bin < int64(batch) && bout < int64(batch) {
			return in, out, st, nil
		}
		if err := ctx.Err(); err != nil {
			return in, out, st, err
		}
	}
}

// notify wakes, when the transaction commits, the forwarders (outgoing) and the subscribers
// of topics (a JSON array) in every process.
func (a *Agent) notify(ctx context.Context, tx database.Tx, outgoing bool, topics string) error {
	if outgoing && a.dialect.NotifyOutgoing() != "" {
		if _, err := tx.Exec(ctx, a.dialect.NotifyOutgoing()); err != nil {
			return err
		}
	}
	var ts []string
	if err := json.Unmarshal([]byte(topics), &ts); err != nil {
		return fmt.Errorf("read the topics of handed back envelopes: %w", err)
	}
	if a.dialect.IncomingChannel() == "" {
		return nil
	}
	for _, t := range ts {
		if _, err := tx.Exec(ctx, a.dialect.NotifyIncoming(), t); err != nil {
			return err
		}
	}
	return nil
}

// ReleaseOwnEnvelopes hands back (owner_id = 0) every envelope marked with this node's id,
// in batches, and notifies the forwarders and subscribers of every process. Run calls it
// when stopping and after the node lock had to be taken again. While this node's forwarders
// or subscribers run, envelopes they are working on are handed back too and may be sent or
// delivered a second time.
func (a *Agent) ReleaseOwnEnvelopes(ctx context.Context) (incoming, outgoing int64, err error) {
	in, out, _, err := a.handBack(ctx, a.self, false)
	a.handedBack.Add(in + out)
	if in+out > 0 {
		a.wake()
	}
	if err != nil {
		return in, out, fmt.Errorf("hand back the envelopes of node %d: %w", a.self, err)
	}
	return in, out, nil
}

// DeleteExpiredEnvelopes deletes the unowned outgoing envelopes whose deliver_by has passed,
// in batches of RecoveryBatchSize under Jasper's recover-outgoing-messages lock, and returns
// how many. Run calls it every ExpiredEnvelopesPollingTime.
func (a *Agent) DeleteExpiredEnvelopes(ctx context.Context) (int64, error) {
	n, _, err := a.deleteExpiredEnvelopes(ctx)
	return n, err
}

func (a *Agent) deleteExpiredEnvelopes(ctx context.Context) (int64, bool, error) {
	n, skipped, err := a.deleteInBatches(ctx, jasperid.OutgoingMessageLockID, a.dialect.DeleteExpiredOutgoing(), a.config.RecoveryBatchSize)
	a.discarded.Add(n)
	if n > 0 {
		a.logger.Info("Expired outgoing envelopes discarded", watermill.LogFields{"count": n})
	}
	if err != nil {
		return n, skipped, fmt.Errorf("delete expired outgoing envelopes: %w", err)
	}
	return n, skipped, nil
}

// DeleteExpiredHandled deletes the Handled incoming rows whose keep_until has passed, in
// batches of HandledCleanupBatchSize, each in its own transaction under
// HandledCleanupLockID, and returns how many. Run calls it every HandledCleanupPollingTime.
func (a *Agent) DeleteExpiredHandled(ctx context.Context) (int64, error) {
	n, _, err := a.deleteExpiredHandled(ctx)
	return n, err
}

func (a *Agent) deleteExpiredHandled(ctx context.Context) (int64, bool, error) {
	n, skipped, err := a.deleteInBatches(ctx, HandledCleanupLockID, a.dialect.DeleteExpiredHandled(), a.config.HandledCleanupBatchSize)
	a.handledDeleted.Add(n)
	if err != nil {
		return n, skipped, fmt.Errorf("delete expired Handled envelopes: %w", err)
	}
	return n, skipped, nil
}

// deleteInBatches runs a bounded DELETE in transactions taking lockID until it deletes less
// than a batch; skipped is true when another session held the lock.
func (a *Agent) deleteInBatches(ctx context.Context, lockID int32, query string, batch int) (total int64, skipped bool, err error) {
	for {
		var n int64
		locked := true
		err := a.inTx(ctx, func(ctx context.Context, tx database.Tx) error {
			ok, err := a.tryLock(ctx, tx, lockID)
			if err != nil || !ok {
				locked = false
				return err
			}
			n, err = tx.Exec(ctx, query, batch)
			return err
		})
		if err != nil || !locked {
			return total, !locked, err
		}
		total += n
		if n < int64(batch) {
			return total, false, nil
		}
		if err := ctx.Err(); err != nil {
			return total, false, err
		}
	}
}

// SampleGauges samples the tables with one query and keeps the result for Gauges. Run
// calls it every MetricsSamplingInterval.
func (a *Agent) SampleGauges(ctx context.Context) (Gauges, error) {
	var g Gauges
	var age sql.NullFloat64
	qctx, cancel := context.WithTimeout(ctx, a.config.StatementTimeout)
	defer cancel()
	err := database.QueryRow(qctx, a.db, a.dialect.StorageGauges(), nil,
		&g.Incoming, &g.Scheduled, &g.Handled, &g.Outgoing, &g.DeadLetters, &age, &g.DormantOwned)
	if err != nil {
		return g, fmt.Errorf("sample the tables: %w", err)
	}
	if age.Valid && age.Float64 > 0 {
		g.OldestOutgoingAge = time.Duration(age.Float64 * float64(time.Second))
	}
	g.SampledAt = time.Now()
	a.gauges.Store(&g)
	return g, nil
}
