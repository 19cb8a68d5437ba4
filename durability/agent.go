package durability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/backoff"
	"github.com/watermill-jasper/watermill-jasper/internal/component"
	"github.com/watermill-jasper/watermill-jasper/internal/jasperid"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

var (
	// ErrAgentStopped is returned by Start once Stop was called.
	ErrAgentStopped = errors.New("watermill-jasper: durability agent is stopped")
	// ErrAgentRunning is returned by a second call of Start.
	ErrAgentRunning = errors.New("watermill-jasper: durability agent is already running")
	// ErrAgentNotRunning is wrapped by the errors of components started on an agent that is
	// not running: nobody would read their reports (a claim whose answer was lost) or run the
	// jobs they rely on (scheduled release, recovery, cleanup).
	ErrAgentNotRunning = errors.New("watermill-jasper: the durability agent is not running; start it (Agent.Start) before its components, or use a jasper.Runtime, which does")
)

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
	// Wakeups counts the times the agent woke components (OnOutgoing, OnIncoming) after it
	// released, recovered or handed back envelopes.
	Wakeups int64
	// Notifications counts the notifications received on the LISTEN connection (commits of
	// envelopes, on PostgreSQL).
	Notifications int64
	// JobErrors counts failed job runs, by job name.
	JobErrors map[string]int64
}

// Gauges is one sample of the tables (Agent.SampleGauges).
type Gauges = store.Gauges

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
	// NextDue is how long, from when RunScheduledJobs returns, until the next scheduled
	// envelope or scheduled send falls due by the database's clock (0: none, or unknown; at
	// least 1 µs when one fell due during the pass). It is measured from a moment after the
	// database read its clock, so a timer set to it never fires before the envelope is due.
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
type Unowned = store.Unowned

// Agent is the durability agent of one node for one schema: Jasper's DurabilityAgent for the
// Go side of a database shared with other Go and .NET nodes, and the one owner of every
// background job of that schema in this process. Start runs its jobs, each on a timer of its
// own so that none delays another:
//
//   - scheduled jobs (every ScheduledJobPollingTime, when the next scheduled envelope or
//     scheduled send falls due, and at the times components ask for with ScheduleAt; under
//     Jasper's "scheduled-jobs" lock): due Scheduled envelopes become Incoming; due
//     scheduled sends (Jasper's scheduled-envelope rows) become outgoing envelopes for their
//     destination, in the transaction that deletes them; one that cannot be read goes to the
//     dead letters. The database's clock decides what is due; the pass planned for the
//     next due time never runs before that clock reaches it;
//   - recovery (same timer): when unowned envelopes wait, the components are woken;
//   - dormant-node reassignment (every NodeReassignmentPollingTime, under Jasper's
//     "jasper-reassign-envelopes" lock): every other owner of envelopes whose node lock can
//     be taken is dead, and its envelopes are handed back (owner_id = 0) in bounded batches;
//     an owner whose lock another session holds (a live Go or .NET node) is never touched;
//   - expired envelopes (every ExpiredEnvelopesPollingTime, under Jasper's
//     "recover-outgoing-messages" lock): unowned outgoing envelopes past deliver_by are
//     deleted;
//   - Handled cleanup (every HandledCleanupPollingTime, under HandledCleanupLockID): inbox
//     marks past keep_until are deleted in bounded batches, each its own transaction;
//   - node check (every NodeCheckInterval): Node.Check takes the node lock again after its
//     connection was lost; the envelopes still marked with this node's id are then handed
//     back, since other nodes were free to consider it dead meanwhile, and so are they after
//     a component reported a claim whose answer was lost (ReportUnknownOutcome);
//   - gauges (every MetricsSamplingInterval): one query sampling the tables (Gauges);
//   - notifications: one LISTEN connection for the schema's channels (PostgreSQL), whose
//     notifications wake the components registered with OnOutgoing and OnIncoming.
//
// Global locks are transaction-level locks on Jasper's lock ids: they exclude a .NET agent
// holding the same id as a session lock and are released by the end of their transaction
// whatever happens to the connection. Jasper's lock ids are database-wide, so agents of other
// schemas of the same database take turns with this one: a job that finds its lock held runs
// again after about half a second rather than a whole period. A failed pass is tried again
// after 1 s, doubling up to its period.
//
// Stop hands the node's envelopes back (owner_id = 0), as Jasper's agent does; stop the
// components first, then the agent, then the Node.
type Agent struct {
	db     database.Driver
	store  store.Store
	node   *Node
	config Config
	logger watermill.LoggerAdapter
	self   int32
	// onJob is a test hook called after every job run of the timers.
	onJob func(job string, err error)

	mu      sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
	running atomic.Bool

	wakers  wakers
	kick    chan struct{} // buffered(1): run the scheduled-jobs pass early
	schedMu sync.Mutex
	schedAt []time.Time // times components asked for a scheduled pass, sorted, distinct
	// schedSkips counts consecutive scheduled passes skipped because another session held
	// the lock (scheduled-jobs goroutine only).
	schedSkips int

	relocks uint64 // the node's Relocks seen last (node-check goroutine only)
	unknown uint64 // the node's UnknownOutcomes seen last (node-check goroutine only)
	gauges  atomic.Pointer[Gauges]

	scheduledReleased, scheduledSent, deadLettered, recovered, dormantNodes atomic.Int64
	discarded, handledDeleted, handedBack, wakeups, notifications           atomic.Int64
	errMu                                                                   sync.Mutex
	jobErrors                                                               map[string]int64
}

// NewAgent validates config and returns the agent of node for the tables of config.Schema
// (on the node's database). Start it with Start.
func NewAgent(node *Node, config Config, logger watermill.LoggerAdapter) (*Agent, error) {
	if node == nil || node.db == nil {
		return nil, fmt.Errorf("%w: a *Node is required (durability.NewNode): the agent acts for it and hands its envelopes back when stopping", ErrInvalidConfig)
	}
	db := node.db
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
	st, err := db.Store(config.Schema)
	if err != nil {
		return nil, fmt.Errorf("%w: Schema: %w", ErrInvalidConfig, err)
	}
	config.Schema = st.Schema()
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	a := &Agent{
		db:        db,
		store:     st,
		node:      node,
		config:    config,
		self:      node.ID(),
		done:      make(chan struct{}),
		kick:      make(chan struct{}, 1),
		relocks:   node.Relocks(),
		unknown:   node.UnknownOutcomes(),
		jobErrors: map[string]int64{},
		logger: logger.With(watermill.LogFields{
			"component": "watermill-jasper/durability", "node_id": node.ID(), "schema": st.Schema().Schema,
		}),
	}
	a.wakers.init()
	return a, nil
}

// NodeID is the id of the node the agent acts for.
func (a *Agent) NodeID() int32 { return a.self }

// Node is the node the agent acts for.
func (a *Agent) Node() *Node { return a.node }

// Schema is the normalized schema config of the agent's tables.
func (a *Agent) Schema() schema.Config { return a.store.Schema() }

// Driver is the database the agent works on.
func (a *Agent) Driver() database.Driver { return a.db }

// Store is the typed storage of the agent's schema, for the components of this module.
func (a *Agent) Store() store.Store { return a.store }

// Logger is the agent's logger.
func (a *Agent) Logger() watermill.LoggerAdapter { return a.logger }

// Running reports whether Start has started the jobs and Stop has not been called.
func (a *Agent) Running() bool { return a.running.Load() }

// CheckRunning returns an error wrapping ErrAgentNotRunning, naming the component, when the
// agent is not running. Components call it when they start.
func (a *Agent) CheckRunning(component string) error {
	if !a.Running() {
		return fmt.Errorf("watermill-jasper: %s: %w", component, ErrAgentNotRunning)
	}
	return nil
}

// ReportUnknownOutcome tells the agent that a claim marking envelopes with the node's id
// failed without a readable answer (see Node.ReportUnknownOutcome): the node's envelopes are
// handed back at the next node check. Subscribers call it (a forwarder marks nothing: its
// batches are locked in a transaction).
func (a *Agent) ReportUnknownOutcome() { a.node.ReportUnknownOutcome() }

// maxScheduleRequests bounds the times ScheduleAt remembers. Beyond it the latest are
// forgotten: the pass planned from the table (ScheduledResult.NextDue) still releases their
// envelopes on time once they are committed, and the periodic pass in any case.
const maxScheduleRequests = 4096

// ScheduleAt asks for a scheduled-jobs pass at t (at once when t has passed), for example
// when a nacked message or a delayed message becomes due. Every time asked for is kept until
// a pass starts at or after it (up to maxScheduleRequests of them), so a request for a later
// time is not lost to an earlier one: a row written in a transaction that commits after the
// earlier pass is still released at its time.
func (a *Agent) ScheduleAt(t time.Time) {
	a.schedMu.Lock()
	i, found := slices.BinarySearchFunc(a.schedAt, t, time.Time.Compare)
	switch {
	case found:
	case len(a.schedAt) < maxScheduleRequests:
		a.schedAt = slices.Insert(a.schedAt, i, t)
	case i < len(a.schedAt):
		a.schedAt = slices.Insert(a.schedAt[:len(a.schedAt)-1], i, t) // forget the latest
	}
	a.schedMu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// nextScheduleAt returns the earliest time asked for with ScheduleAt (zero: none).
func (a *Agent) nextScheduleAt() time.Time {
	a.schedMu.Lock()
	defer a.schedMu.Unlock()
	if len(a.schedAt) == 0 {
		return time.Time{}
	}
	return a.schedAt[0]
}

// takeScheduleAt forgets the times asked for up to now: the pass about to start serves them
// (their rows were committed before ScheduleAt was called, or are found by the pass planned
// from the table).
func (a *Agent) takeScheduleAt(now time.Time) {
	a.schedMu.Lock()
	defer a.schedMu.Unlock()
	i, found := slices.BinarySearchFunc(a.schedAt, now, time.Time.Compare)
	if found {
		i++
	}
	a.schedAt = a.schedAt[:copy(a.schedAt, a.schedAt[i:])]
}

// Start starts the jobs and the LISTEN connection and returns once they run (after the
// first LISTEN attempt, so that a component started next misses no notification). ctx
// bounds only the start; Stop ends the agent. It returns ErrAgentRunning when called twice
// and ErrAgentStopped after Stop. Database failures while running are logged and retried
// with back-off; they never stop the agent.
func (a *Agent) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.stopped:
		return ErrAgentStopped
	case a.started:
		return ErrAgentRunning
	}
	a.started = true
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	// The jobs' statements and goroutines carry the pprof label watermill_jasper=agent.
	runCtx = component.With(runCtx, component.Agent)
	c := a.config
	var wg sync.WaitGroup
	goLabelled := func(fn func()) {
		wg.Go(func() {
			pprof.SetGoroutineLabels(runCtx)
			fn()
		})
	}
	start := func(name string, first, period time.Duration, fn func(context.Context) (time.Duration, error), kick <-chan struct{}) {
		if period < 0 {
			return // turned off
		}
		goLabelled(func() { a.loop(runCtx, name, first, period, fn, kick) })
	}
	start(JobNodeCheck, c.NodeCheckInterval, c.NodeCheckInterval, a.checkNode, nil)
	start(JobScheduled, c.ScheduledJobFirstExecution, c.ScheduledJobPollingTime, a.scheduledPass, a.kick)
	start(JobReassignment, c.FirstNodeReassignmentExecution, c.NodeReassignmentPollingTime, a.reassignPass, nil)
	start(JobExpired, c.ExpiredEnvelopesPollingTime, c.ExpiredEnvelopesPollingTime, func(ctx context.Context) (time.Duration, error) {
		_, skipped, err := a.deleteExpiredEnvelopes(ctx)
		return retryIfSkipped(skipped), err
	}, nil)
	start(JobHandled, c.HandledCleanupPollingTime, c.HandledCleanupPollingTime, func(ctx context.Context) (time.Duration, error) {
		_, skipped, err := a.deleteExpiredHandled(ctx)
		return retryIfSkipped(skipped), err
	}, nil)
	start(JobGauges, c.MetricsSamplingInterval, c.MetricsSamplingInterval, func(ctx context.Context) (time.Duration, error) {
		_, err := a.SampleGauges(ctx)
		return 0, err
	}, nil)
	listening := make(chan struct{})
	if !c.DisableNotify && a.store.Caps().Notifications {
		goLabelled(func() { a.listen(runCtx, listening) })
	} else {
		close(listening)
		if c.DisableNotify && a.store.Caps().Notifications {
			a.logger.Info("Notifications are off (DisableNotify): components find new envelopes by polling", nil)
		}
	}
	go func() {
		wg.Wait()
		close(a.done)
	}()
	select {
	case <-listening:
	case <-ctx.Done():
	}
	a.running.Store(true)
	a.logger.Info("Durability agent started", watermill.LogFields{
		"scheduled_job_polling_time":     c.ScheduledJobPollingTime.String(),
		"node_reassignment_polling_time": c.NodeReassignmentPollingTime.String(),
		"recovery_batch_size":            c.RecoveryBatchSize,
	})
	return nil
}

// handBackGrace bounds the hand-back of Stop when its context has ended already.
const handBackGrace = 5 * time.Second

// Stop stops the jobs (a job in progress is cancelled: its transaction rolls back) and the
// LISTEN connection, hands the node's envelopes back (for at most StatementTimeout, or 5 s
// when ctx has ended) and returns. Stop the components first: what they still hold would be handed back under
// them. It is idempotent; it does not close the Node.
func (a *Agent) Stop(ctx context.Context) error {
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return nil
	}
	a.stopped = true
	started := a.started
	a.running.Store(false)
	if a.cancel != nil {
		a.cancel()
	}
	a.mu.Unlock()
	if !started {
		return nil
	}
	<-a.done
	// Hand back what this node still holds, as Jasper's StopAsync does: always tried, for at
	// most StatementTimeout, or handBackGrace once ctx has ended (a caller that stops waiting
	// still gets the claims handed back when the database answers at once).
	grace := a.config.StatementTimeout
	if ctx.Err() != nil {
		grace = min(grace, handBackGrace)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	in, out, err := a.ReleaseOwnEnvelopes(rctx)
	if err != nil {
		a.logger.Error("Cannot hand this node's envelopes back while stopping; a living node's agent will once the node lock is released", err, nil)
	} else if in+out > 0 {
		a.logger.Info("Envelopes of this node handed back", watermill.LogFields{"incoming": in, "outgoing": out})
	}
	a.logger.Info("Durability agent stopped", nil)
	return err
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
		Notifications:     a.notifications.Load(),
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

// jobBackoff is the wait before a failed pass runs again: 1 s, doubling, at most the job's
// period (its Max).
var jobBackoff = backoff.Policy{Initial: time.Second, Multiplier: 2}

// loop runs fn after first and then every period (or sooner, when fn asks for it, or when
// kick fires) until ctx ends. Failures are logged once when they start and once when they
// stop.
func (a *Agent) loop(ctx context.Context, name string, first, period time.Duration, fn func(context.Context) (time.Duration, error), kick <-chan struct{}) {
	t := time.NewTimer(first)
	defer t.Stop()
	at := time.Now().Add(first) // when t fires
	failing := 0                // consecutive failed passes
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			want, now := a.nextScheduleAt(), time.Now()
			if want.IsZero() {
				continue
			}
			if want.Before(now) {
				want = now
			}
			if want.Before(at) {
				t.Reset(want.Sub(now))
				at = want
			}
			continue
		case <-t.C:
		}
		if kick != nil {
			a.takeScheduleAt(time.Now())
		}
		next, err := fn(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.errMu.Lock()
			a.jobErrors[name]++
			a.errMu.Unlock()
			if failing == 0 {
				a.logger.Error("Durability job failed; retrying with back-off up to every period", err, watermill.LogFields{"job": name, "period": period.String()})
			} else {
				a.logger.Debug("Durability job failed again", watermill.LogFields{"job": name, "error": err.Error()})
			}
			failing++
		} else if failing > 0 {
			a.logger.Info("Durability job works again", watermill.LogFields{"job": name})
			failing = 0
		}
		if a.onJob != nil {
			a.onJob(name, err)
		}
		d := period
		if next > 0 && next < d {
			d = next
		}
		if kick != nil {
			// A time asked for during the pass, or later than the pass it was asked before.
			if want := a.nextScheduleAt(); !want.IsZero() {
				d = max(min(d, time.Until(want)), 0)
			}
		}
		if err != nil {
			// A failed pass (database unreachable, too many clients, a statement timeout) is
			// tried again soon rather than a whole period later (a minute for the
			// reassignment).
			p := jobBackoff
			p.Max = period
			d = min(d, p.Jittered(failing))
		}
		t.Reset(d)
		at = time.Now().Add(d)
	}
}

// lockedTx runs fn in a transaction bounded by StatementTimeout that first takes the global
// lock id (transaction-level); locked is false, and fn not run, when another session holds
// it.
func (a *Agent) lockedTx(ctx context.Context, id int32, fn func(ctx context.Context, tx store.Ops) error) (locked bool, err error) {
	err = a.inTx(ctx, func(ctx context.Context, tx store.Ops) error {
		ok, err := tx.TryGlobalLock(ctx, id)
		if err != nil || !ok {
			return err
		}
		locked = true
		return fn(ctx, tx)
	})
	return locked && err == nil, err
}

// bounded runs one read of the store within timeout.
func bounded[T any](ctx context.Context, timeout time.Duration, read func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return read(ctx)
}

// inTx runs fn in a transaction bounded by StatementTimeout.
func (a *Agent) inTx(ctx context.Context, fn func(ctx context.Context, tx store.Ops) error) error {
	ctx, cancel := context.WithTimeout(ctx, a.config.StatementTimeout)
	defer cancel()
	return a.store.InTx(ctx, fn)
}

// skippedRetry is how soon a job whose lock was held by another session runs again. Jasper's
// lock ids are database-wide, not per schema: the holder may be an agent of another schema
// that did not do this schema's work, so waiting a whole period (a minute for the
// reassignment) would be too long; trying a lock costs one short transaction.
const skippedRetry = 500 * time.Millisecond

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
	// Not cancelled by Stop: a check cut off mid-statement would close the lock's connection
	// (pgx drops a connection whose query was cancelled), and the lock would outlive Stop
	// until the server noticed.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.config.StatementTimeout)
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

// skippedScheduledRetry is how soon a scheduled pass whose lock another session held runs
// again: the holder is most likely another agent's pass (of this schema or another one: the
// lock id is database-wide), which takes milliseconds, and a due envelope should not wait
// for skippedRetry. It doubles with each consecutive skip up to skippedRetry.
var skippedScheduledRetry = backoff.Policy{Initial: 2 * time.Millisecond, Max: skippedRetry, Multiplier: 2, Jitter: 0.5}

// scheduledPass runs the scheduled jobs and then the recovery probe; it asks to run again
// when the next scheduled envelope falls due before the next tick (exactly then: NextDue
// never runs ahead of the database's clock), and soon when another session held the lock.
func (a *Agent) scheduledPass(ctx context.Context) (time.Duration, error) {
	res, err := a.RunScheduledJobs(ctx)
	var dueAt time.Time
	if res.NextDue > 0 {
		dueAt = time.Now().Add(res.NextDue)
	}
	_, rerr := a.RecoverUnowned(ctx)
	if err == nil {
		err = rerr
	}
	var next time.Duration
	if res.Skipped {
		a.schedSkips++
		next = skippedScheduledRetry.Jittered(a.schedSkips)
	} else {
		a.schedSkips = 0
	}
	if !dueAt.IsZero() {
		// At least 1 ns: 0 would mean "nothing planned".
		if d := max(time.Until(dueAt), time.Nanosecond); next == 0 || d < next {
			next = d
		}
	}
	return next, err
}

// RunScheduledJobs releases the due scheduled envelopes under Jasper's scheduled-jobs lock:
// Scheduled envelopes become Incoming (owner 0), and scheduled sends (scheduled-envelope
// rows) are unwrapped into outgoing envelopes for their destination, in the transaction that
// deletes them (an unreadable one is moved to the dead letters with the reason). It works in
// batches of RecoveryBatchSize until nothing due is left, and wakes the components of the
// released topics (and the forwarders, after scheduled sends). The agent runs it every
// ScheduledJobPollingTime and when a component asks (ScheduleAt).
func (a *Agent) RunScheduledJobs(ctx context.Context) (res ScheduledResult, err error) {
	batch := a.config.RecoveryBatchSize
	defer func() {
		if res.Released+res.Sent > 0 {
			a.wakeups.Add(1)
		}
	}()
	var (
		r store.ScheduledRelease
		// dueAt is when the next scheduled row falls due, on this process's monotonic clock:
		// r.NextDue from a moment after the statement returned, hence after the database read
		// the clock r.NextDue is relative to (PostgreSQL's now(), the start of the
		// transaction; SQL Server's SYSDATETIMEOFFSET(), of the statement). A pass planned for
		// it never runs before the database's clock says the row is due, whatever the offset
		// between the two clocks. batchDue is the same for the batch not yet committed.
		dueAt, batchDue time.Time
	)
	skipped, err := a.batches(ctx, jasperid.ScheduledJobLockID, "release due scheduled envelopes", func(ctx context.Context, tx store.Ops) error {
		var err error
		if r, err = tx.ReleaseScheduled(ctx, nil, batch); err != nil {
			return err
		}
		batchDue = time.Time{}
		if r.NextDue > 0 {
			batchDue = time.Now().Add(r.NextDue)
		}
		for _, t := range r.Topics {
			if err := tx.NotifyIncoming(ctx, t); err != nil {
				return err
			}
		}
		return nil
	}, func() bool {
		res.Released += r.Released
		a.scheduledReleased.Add(r.Released)
		dueAt = batchDue
		// Wake the topics' subscriptions as soon as the batch is committed.
		switch {
		case r.Released > 0 && r.Topics == nil:
			a.wakers.wakeAllIncoming()
		default:
			for _, t := range r.Topics {
				a.wakers.wakeIncoming(t)
			}
		}
		return r.Released == int64(batch)
	})
	defer func() { // res is the named result
		if !dueAt.IsZero() {
			// From now; at least 1 µs when it fell due meanwhile (0 means none).
			res.NextDue = max(time.Until(dueAt), time.Microsecond)
		}
	}()
	if err != nil || skipped {
		res.Skipped = skipped
		return res, err
	}
	var taken, sent, dead int
	res.Skipped, err = a.batches(ctx, jasperid.ScheduledJobLockID, "release due scheduled sends", func(ctx context.Context, tx store.Ops) error {
		var err error
		taken, sent, dead, err = a.releaseScheduledSends(ctx, tx, batch)
		return err
	}, func() bool {
		res.Sent += int64(sent)
		res.DeadLettered += int64(dead)
		a.scheduledSent.Add(int64(sent))
		a.deadLettered.Add(int64(dead))
		if sent > 0 {
			a.wakers.wakeOutgoing() // the forwarders take them as soon as they are committed
		}
		return taken == batch
	})
	return res, err
}

// batches runs pass in transactions under the global lock id, one batch each, calling
// committed after each commit, until committed reports a batch that was not full. skipped is
// true when another session held the lock; what names the job in errors.
func (a *Agent) batches(ctx context.Context, id int32, what string, pass func(ctx context.Context, tx store.Ops) error, committed func() (full bool)) (skipped bool, err error) {
	for {
		locked, err := a.lockedTx(ctx, id, pass)
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		if !locked {
			return true, nil
		}
		if !committed() {
			return false, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
	}
}

// releaseScheduledSends deletes up to limit due scheduled sends and, in the same
// transaction, inserts the envelopes they wrap into the outgoing table (notifying the
// forwarders) or moves unreadable ones to the dead letters.
func (a *Agent) releaseScheduledSends(ctx context.Context, tx store.Ops, limit int) (taken, sent, dead int, err error) {
	envs, err := tx.TakeDueScheduledSends(ctx, limit)
	if err != nil {
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
			typ, text, chain := fault.Describe(err)
			reason := store.Reason{
				Explanation:      "The scheduled send cannot be read, so it cannot be forwarded: " + err.Error(),
				ExceptionType:    typ,
				ExceptionMessage: text,
				ExceptionText:    chain,
				Source:           "watermill-jasper/durability",
			}
			if err := tx.InsertDeadLetter(ctx, *e, reason); err != nil {
				return 0, 0, 0, fmt.Errorf("move an unreadable scheduled send to the dead letters: %w", err)
			}
			a.logger.Error("Unreadable scheduled send moved to the dead letters", err, watermill.LogFields{"envelope_id": e.ID.String()})
			dead++
			continue
		}
		o.OwnerID = 0
		o.Attempts = 0
		out = append(out, o)
	}
	if len(out) > 0 {
		if err := tx.InsertEnvelopes(ctx, store.InsertParams{Outgoing: out, NotifyOutgoing: true}); err != nil {
			return 0, 0, 0, fmt.Errorf("insert the envelopes of scheduled sends: %w", err)
		}
	}
	return len(envs), len(out), dead, nil
}

// RecoverUnowned looks (through indexes only) for unowned envelopes: outgoing ones, and
// Incoming ones by topic, and wakes their components when there are some. Forwarders and
// subscribers claim unowned envelopes themselves; this makes them do it now rather than at
// their next poll. The agent runs it after every scheduled-jobs pass.
func (a *Agent) RecoverUnowned(ctx context.Context) (Unowned, error) {
	u, err := bounded(ctx, a.config.StatementTimeout, a.store.Unowned)
	if err != nil {
		return u, fmt.Errorf("look for unowned envelopes: %w", err)
	}
	if u.Outgoing {
		a.wakers.wakeOutgoing()
	}
	for _, t := range u.Topics {
		a.wakers.wakeIncoming(t)
	}
	if u.Outgoing || len(u.Topics) > 0 {
		a.wakeups.Add(1)
	}
	return u, nil
}

// ReassignDormantNodes hands back (owner_id = 0) the envelopes of every other owner whose
// node lock no session holds, under Jasper's reassignment lock, as Jasper's NodeReassignment
// does: an owner is dormant when pg_try_advisory_xact_lock(owner) succeeds, and that lock
// keeps it so until the transaction ends. Envelopes are handed back in batches of
// RecoveryBatchSize, each in its own transaction that takes both locks again; an owner whose
// lock another session holds is never touched. Subscribers and forwarders everywhere are
// notified, and the local components woken. The agent runs it every
// NodeReassignmentPollingTime.
func (a *Agent) ReassignDormantNodes(ctx context.Context) (ReassignResult, error) {
	var res ReassignResult
	var owners []int32
	locked, err := a.lockedTx(ctx, jasperid.ReassignmentLockID, func(ctx context.Context, tx store.Ops) error {
		var err error
		owners, err = tx.OtherOwners(ctx, a.self)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("list the owners of envelopes: %w", err)
	}
	if !locked {
		res.Skipped = true
		return res, nil
	}
	for _, owner := range owners {
		in, out, st, err := a.handBack(ctx, owner, true)
		if in+out > 0 {
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

// relockGraceChecks is how many node-check intervals a node that took its lock again waits
// before judging other nodes dormant (reassignPass).
const relockGraceChecks = 3

// reassignPass is the periodic dormant-node reassignment. It first checks this node's own
// lock: a node that has to take it again lost its session, and so, most likely, did every
// node (the database restarted, or the network failed): their locks look free until each
// takes its own again, at its next node check. So for relockGraceChecks node-check intervals
// after taking its lock again, the node judges nobody dormant, and live nodes keep their
// envelopes (they hand them back themselves after their relock: checkNode). A node that
// cannot check its own lock judges nobody either.
func (a *Agent) reassignPass(ctx context.Context) (time.Duration, error) {
	// Not cancelled by Stop: a check cut off mid-statement would close the lock's connection
	// (pgx drops a connection whose query was cancelled), and the lock would outlive Stop
	// until the server noticed.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.config.StatementTimeout)
	err := a.node.Check(cctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("node lock, before judging other nodes: %w", err)
	}
	grace := relockGraceChecks * a.config.NodeCheckInterval
	if at := a.node.lastRelock(); !at.IsZero() {
		if wait := grace - time.Since(at); wait > 0 {
			a.logger.Debug("Node lock taken again lately: dormant nodes are judged later", watermill.LogFields{"in": wait.String()})
			return wait, nil
		}
	}
	res, err := a.ReassignDormantNodes(ctx)
	return retryIfSkipped(res.Skipped), err
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
		var r store.Released
		err := a.inTx(ctx, func(ctx context.Context, tx store.Ops) error {
			if checkLocks {
				ok, err := tx.TryGlobalLock(ctx, jasperid.ReassignmentLockID)
				if err != nil {
					return err
				}
				if !ok {
					st = lockLost
					return nil
				}
				if ok, err = tx.TryGlobalLock(ctx, owner); err != nil {
					return err
				}
				if !ok {
					st = ownerAlive
					return nil
				}
			}
			var err error
			if r, err = tx.ReleaseOwner(ctx, owner, batch); err != nil {
				return err
			}
			return notify(ctx, tx, r)
		})
		if err != nil {
			return in, out, st, err
		}
		if st != handedBack {
			return in, out, st, nil
		}
		a.wake(r)
		in += r.Incoming
		out += r.Outgoing
		if r.Incoming < int64(batch) && r.Outgoing < int64(batch) {
			return in, out, st, nil
		}
		if err := ctx.Err(); err != nil {
			return in, out, st, err
		}
	}
}

// notify wakes, when the transaction commits, the forwarders (outgoing) and the subscribers
// of the topics of handed back envelopes, in every process.
func notify(ctx context.Context, tx store.Ops, r store.Released) error {
	if r.Outgoing > 0 {
		if err := tx.NotifyOutgoing(ctx); err != nil {
			return err
		}
	}
	for _, t := range r.Topics {
		if err := tx.NotifyIncoming(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

// wake wakes the local components that claim what was handed back.
func (a *Agent) wake(r store.Released) {
	if r.Outgoing > 0 {
		a.wakers.wakeOutgoing()
	}
	for _, t := range r.Topics {
		a.wakers.wakeIncoming(t)
	}
	if r.Incoming+r.Outgoing > 0 {
		a.wakeups.Add(1)
	}
}

// ReleaseOwnEnvelopes hands back (owner_id = 0) every envelope marked with this node's id,
// in batches, and notifies the forwarders and subscribers of every process. The agent runs it
// when stopping and after the node lock had to be taken again. While this node's forwarders
// or subscribers run, envelopes they are working on are handed back too and may be sent or
// delivered a second time.
func (a *Agent) ReleaseOwnEnvelopes(ctx context.Context) (incoming, outgoing int64, err error) {
	in, out, _, err := a.handBack(ctx, a.self, false)
	a.handedBack.Add(in + out)
	if err != nil {
		return in, out, fmt.Errorf("hand back the envelopes of node %d: %w", a.self, err)
	}
	return in, out, nil
}

// DeleteExpiredEnvelopes deletes the unowned outgoing envelopes whose deliver_by has passed,
// in batches of RecoveryBatchSize under Jasper's recover-outgoing-messages lock, and returns
// how many. The agent runs it every ExpiredEnvelopesPollingTime.
func (a *Agent) DeleteExpiredEnvelopes(ctx context.Context) (int64, error) {
	n, _, err := a.deleteExpiredEnvelopes(ctx)
	return n, err
}

func (a *Agent) deleteExpiredEnvelopes(ctx context.Context) (int64, bool, error) {
	n, skipped, err := a.deleteInBatches(ctx, jasperid.OutgoingMessageLockID, "delete expired outgoing envelopes",
		store.Ops.DeleteExpiredOutgoing, a.config.RecoveryBatchSize)
	a.discarded.Add(n)
	if n > 0 {
		a.logger.Info("Expired outgoing envelopes discarded", watermill.LogFields{"count": n})
	}
	return n, skipped, err
}

// DeleteExpiredHandled deletes the Handled incoming rows whose keep_until has passed, in
// batches of HandledCleanupBatchSize, each in its own transaction under
// HandledCleanupLockID, and returns how many. The agent runs it every HandledCleanupPollingTime.
func (a *Agent) DeleteExpiredHandled(ctx context.Context) (int64, error) {
	n, _, err := a.deleteExpiredHandled(ctx)
	return n, err
}

func (a *Agent) deleteExpiredHandled(ctx context.Context) (int64, bool, error) {
	n, skipped, err := a.deleteInBatches(ctx, HandledCleanupLockID, "delete expired Handled envelopes",
		store.Ops.DeleteExpiredHandled, a.config.HandledCleanupBatchSize)
	a.handledDeleted.Add(n)
	return n, skipped, err
}

// deleteInBatches runs a bounded DELETE in transactions taking lockID until it deletes less
// than a batch; skipped is true when another session held the lock.
func (a *Agent) deleteInBatches(ctx context.Context, lockID int32, what string, del func(store.Ops, context.Context, int) (int64, error), batch int) (total int64, skipped bool, err error) {
	var n int64
	skipped, err = a.batches(ctx, lockID, what, func(ctx context.Context, tx store.Ops) error {
		var err error
		n, err = del(tx, ctx, batch)
		return err
	}, func() bool {
		total += n
		return n == int64(batch)
	})
	return total, skipped, err
}

// SampleGauges samples the tables with one query and keeps the result for Gauges. The agent
// runs it every MetricsSamplingInterval.
func (a *Agent) SampleGauges(ctx context.Context) (Gauges, error) {
	g, err := bounded(ctx, a.config.StatementTimeout, a.store.Gauges)
	if err != nil {
		return g, fmt.Errorf("sample the tables: %w", err)
	}
	g.SampledAt = time.Now()
	a.gauges.Store(&g)
	return g, nil
}
