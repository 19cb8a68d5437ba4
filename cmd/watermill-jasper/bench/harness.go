package bench

import (
	"context"
	"fmt"
	"math"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/internal/component"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// stallTimeout fails a drain, latency or consume leg that makes no progress for this long
// (see awaitCount). A variable for the tests.
var stallTimeout = 60 * time.Second

// profiled runs fn with the pprof label leg=name (goroutines fn starts inherit it), so that
// one --cpuprofile of a whole run separates the legs: go tool pprof -tagfocus leg=NAME FILE.
func profiled[R any](ctx context.Context, name string, fn func(context.Context) (R, error)) (r R, err error) {
	pprof.Do(ctx, pprof.Labels("leg", name), func(ctx context.Context) { r, err = fn(ctx) })
	return r, err
}

// timedPhase labels the calling goroutine, and the goroutines it starts from then on, with
// phase=timed on top of its leg label, until the returned func is called: a profile then
// leaves out a leg's setup (prefill) with -tagfocus phase=timed.
func timedPhase(ctx context.Context) (context.Context, func()) {
	timed := pprof.WithLabels(ctx, pprof.Labels("phase", "timed"))
	pprof.SetGoroutineLabels(timed)
	return timed, func() { pprof.SetGoroutineLabels(ctx) }
}

// PublishResult is one publish leg: business transactions per second.
type PublishResult struct {
	Name    string
	TPS     float64       // committed business transactions per second
	Txs     int64         // committed during the measurement
	Elapsed time.Duration // measured time (warm-ups excluded)
}

// timedPublish runs txFn in workers goroutines for a warm-up and then dur, and reports the
// committed business transactions per second during dur.
func (e *env) timedPublish(ctx context.Context, label string, workers int, warmup, dur time.Duration, txFn func(ctx context.Context) error) (PublishResult, error) {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := txFn(ctx); err != nil {
					if ctx.Err() == nil {
						errOnce.Do(func() { firstErr = err; cancel() })
					}
					return
				}
				done.Add(1)
			}
		}()
	}
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	result := PublishResult{Name: label}
	if wait(warmup) {
		n0 := done.Load()
		result.Elapsed = forDuration(ctx, dur, nil, nil, func(el time.Duration) {
			e.logf("publish %s: %.0fs/%.0fs %d tx (%.0f tx/s)", label, el.Seconds(), dur.Seconds(), done.Load()-n0, float64(done.Load()-n0)/el.Seconds())
		})
		result.Txs = done.Load() - n0
		result.TPS = float64(result.Txs) / result.Elapsed.Seconds()
	}
	cancel()
	wg.Wait()
	if firstErr != nil {
		return result, fmt.Errorf("publish %s: %w", label, firstErr)
	}
	if err := parent.Err(); err != nil {
		return result, fmt.Errorf("publish %s: %w", label, err)
	}
	return result, nil
}

// forDuration runs for dur, or until ctx ends, and returns the time it ran: on every tick of
// pace (nil: none) it calls step, every second progress, each with the time elapsed.
func forDuration(ctx context.Context, dur time.Duration, pace <-chan time.Time, step, progress func(elapsed time.Duration)) time.Duration {
	start := time.Now()
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	end := time.NewTimer(dur)
	defer end.Stop()
	for {
		select {
		case <-pace:
			step(time.Since(start))
		case <-ticker.C:
			progress(time.Since(start))
		case <-end.C:
			return time.Since(start)
		case <-ctx.Done():
			return time.Since(start)
		}
	}
}

// heldFunc counts the committed messages that the relay or subscriber under test does not
// read yet, by its design, and names what they wait for (see env.wmHeldBack).
type heldFunc func(ctx context.Context) (n int64, waitingFor string, err error)

// awaitCount waits until c has counted n (its target) distinct messages, saying the progress
// every tick (t0: when the leg's clock started). It fails when ctx ends, when stopped yields
// (the router under test stopped; nil: never), or when the count has not moved for
// stallTimeout while held (nil: none) reports no message held back: a relay that waits, by
// its design, for another session's transaction to end is not stalled, however long that
// transaction stays open.
func (e *env) awaitCount(ctx context.Context, label string, c *counter, n int, t0 time.Time, tick time.Duration, held heldFunc, stopped <-chan error) error {
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	lastProgress, lastCount := time.Now(), 0
	for {
		select {
		case <-c.done:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", label, ctx.Err())
		case err := <-stopped:
			got, _ := c.counts()
			return fmt.Errorf("%s: router stopped after %d/%d messages: %w", label, got, n, err)
		case <-ticker.C:
			got, _ := c.counts()
			e.logf("%s: %d/%d (%.0f msg/s)", label, got, n, float64(got)/time.Since(t0).Seconds())
			switch {
			case got != lastCount:
				lastProgress, lastCount = time.Now(), got
			case e.heldBack(ctx, label, held):
				lastProgress = time.Now()
			case time.Since(lastProgress) > stallTimeout:
				return fmt.Errorf("%s: stalled at %d/%d for %s", label, got, n, stallTimeout)
			}
		}
	}
}

// heldBack reports whether held (nil: never) counts messages held back, and says so.
func (e *env) heldBack(ctx context.Context, label string, held heldFunc) bool {
	if held == nil {
		return false
	}
	n, waitingFor, err := held(ctx)
	if err != nil || n == 0 {
		return false
	}
	e.logf("%s: %d messages wait for %s to end", label, n, waitingFor)
	return true
}

// awaitAcked polls left every poll until the relay or subscriber under test has
// acknowledged every message in the database (deleted its row or committed its offset), or
// 10s have passed, and returns what is left.
func awaitAcked(ctx context.Context, left func(context.Context) (int64, error), poll time.Duration) (int64, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := left(ctx)
		if err != nil || n == 0 || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(poll)
	}
}

// DrainResult is one drain leg: how fast a relay emptied a prefilled backlog into a sink.
type DrainResult struct {
	Impl, Sink string
	N          int
	Elapsed    time.Duration // relay start -> last message at the sink
	FirstMsg   time.Duration // relay start -> first message at the sink
	Rate       float64
	Received   int   // distinct messages at the sink
	Dups       int64 // duplicate arrivals
	Left       int64 // rows the relay had not deleted/acked when stopped
	Statements int64 // statements the relay sent, when counted (-1 otherwise)
	// PeakRSSMB is the peak resident set of the benchmark's process from the relay's start to
	// the last message at the sink, in MB (NaN where unknown): the relay, the sink and the
	// benchmark's bookkeeping (a few hundred KB), the prefill's memory returned before.
	PeakRSSMB float64
}

// relay is a running outbox relay.
type relay interface {
	// stop closes the relay and waits for it.
	stop() error
	// counts returns how many statements (every BEGIN, COMMIT and ROLLBACK included) and
	// transactions it has sent, or -1, -1 when they are not counted.
	counts() (statements, txs int64)
}

// timedDrain starts a relay over a prefilled backlog of n messages and times it until the
// sink's consumer has received all n (held: see awaitCount). Then it waits for the relay to
// finish acknowledging (left reports the rows not yet deleted/acked), stops it and checks
// for duplicates.
func (e *env) timedDrain(ctx context.Context, impl string, s *sink, n int, start func(context.Context) (relay, error),
	left func(context.Context) (int64, error), held heldFunc) (DrainResult, error) {
	ctx, untimed := timedPhase(ctx)
	defer untimed()
	label := fmt.Sprintf("drain %s %s %d", impl, s.kind, n)
	res := DrainResult{Impl: impl, Sink: s.kind, N: n, Statements: -1, PeakRSSMB: nan}
	rss := resetPeakRSS()
	t0 := time.Now()
	r, err := start(ctx)
	if err != nil {
		return res, fmt.Errorf("%s: start relay: %w", label, err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = r.stop()
		}
	}()
	if err := e.awaitCount(ctx, label, s.counter, n, t0, time.Second, held, nil); err != nil {
		return res, err
	}
	res.Elapsed, res.FirstMsg, res.Rate = s.counter.timing(t0)
	if rss {
		res.PeakRSSMB = peakRSSMB()
	}
	// Let the relay finish its deletes/acks, then stop it.
	if res.Left, err = awaitAcked(ctx, left, 20*time.Millisecond); err != nil {
		return res, fmt.Errorf("%s: count rows left: %w", label, err)
	}
	res.Statements, _ = r.counts()
	stopped = true
	if err := r.stop(); err != nil {
		return res, fmt.Errorf("%s: stop relay: %w", label, err)
	}
	if d, ok := r.(interface{ describe() string }); ok {
		e.logf("%s: %s", label, d.describe())
	}
	// Late duplicates would arrive within a moment of the stop.
	time.Sleep(100 * time.Millisecond)
	res.Received, res.Dups = s.counter.counts()
	e.logf("%s: %d/%d in %s (%.0f msg/s), %d duplicates, %d rows left", label, res.Received, n, res.Elapsed.Round(time.Millisecond), res.Rate, res.Dups, res.Left)
	if res.Received != n {
		return res, fmt.Errorf("%s: sink received %d distinct messages, want %d", label, res.Received, n)
	}
	return res, nil
}

// LatencyResult is one latency leg: commit -> sink arrival at a steady publish rate.
type LatencyResult struct {
	Impl, Sink    string
	Rate          float64 // achieved publish rate
	Sent          int
	Received      int
	Dups          int64
	P50, P99, Max time.Duration
}

// latencyWorkers run the business transactions of a latency leg, so that slow commits do not
// hold back the ticker's pace.
const latencyWorkers = 16

// latencyWarmup is the start of a latency leg whose messages are relayed and counted but
// left out of the percentiles: each leg has a fresh schema, so its statements are prepared
// anew on every connection of the pool (a round trip more each), which a running service
// did long before.
const latencyWarmup = time.Second

// timedLatency publishes one message per business transaction at a steady rate (ticker
// paced, several workers so that one slow commit does not delay the next ones) for dur, and
// measures, per message, the time from Commit() returning to the sink's consumer receiving
// it (held: see awaitCount); the messages of the first latencyWarmup (a fifth of a shorter
// leg) are checked but not measured. The relay must be running.
func (e *env) timedLatency(ctx context.Context, impl string, s *sink, rate int, dur time.Duration,
	publishOne func(ctx context.Context, msg *message.Message) error, held heldFunc) (LatencyResult, error) {
	ctx, untimed := timedPhase(ctx)
	defer untimed()
	label := fmt.Sprintf("latency %s %s %d/s", impl, s.kind, rate)
	res := LatencyResult{Impl: impl, Sink: s.kind}
	var (
		mu        sync.Mutex
		committed = map[string]time.Time{}
		firstErr  error
		wg        sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ticks := make(chan struct{}, 1024)
	for range latencyWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range ticks {
				msg := e.newMessage()
				if err := publishOne(ctx, msg); err != nil {
					mu.Lock()
					if firstErr == nil && ctx.Err() == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
					continue
				}
				at := time.Now()
				mu.Lock()
				committed[msg.UUID] = at
				mu.Unlock()
			}
		}()
	}
	// The ticker wakes the dispatcher; each wake-up issues every message due by then, so
	// that a late wake-up (a busy scheduler) does not lower the rate.
	ticker := time.NewTicker(min(time.Second/time.Duration(rate), 5*time.Millisecond))
	t0 := time.Now()
	issued, dropped := 0, 0
	elapsed := forDuration(ctx, dur, ticker.C, func(el time.Duration) {
		due := min(int(el.Seconds()*float64(rate)), int(dur.Seconds()*float64(rate)))
		for ; issued < due; issued++ {
			select {
			case ticks <- struct{}{}:
			default:
				dropped++
			}
		}
	}, func(el time.Duration) {
		mu.Lock()
		sent := len(committed)
		mu.Unlock()
		got, _ := s.counter.counts()
		e.logf("%s: %.0fs/%.0fs sent %d, received %d", label, el.Seconds(), dur.Seconds(), sent, got)
	})
	ticker.Stop()
	close(ticks)
	wg.Wait()
	if firstErr != nil {
		return res, fmt.Errorf("%s: %w", label, firstErr)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%s: %w", label, err)
	}
	res.Sent = len(committed)
	res.Rate = float64(issued-dropped) / elapsed.Seconds()
	// Wait for everything sent to arrive.
	s.counter.expect(res.Sent)
	if err := e.awaitCount(ctx, label, s.counter, res.Sent, t0, time.Second, held, nil); err != nil {
		return res, err
	}
	time.Sleep(100 * time.Millisecond)
	res.Received, res.Dups = s.counter.counts()
	lat := make([]time.Duration, 0, len(committed))
	warmup := min(latencyWarmup, dur/5)
	for id, at := range committed {
		got, ok := s.counter.receivedAt(id)
		if !ok {
			return res, fmt.Errorf("%s: message %s was committed but never arrived", label, id)
		}
		if at.Sub(t0) < warmup {
			continue
		}
		// The relay may deliver before the publishing goroutine has read the clock after
		// Commit returned; such a message counts as 0.
		lat = append(lat, max(got.Sub(at), 0))
	}
	if res.Received != res.Sent {
		return res, fmt.Errorf("%s: sink received %d distinct messages, %d were sent", label, res.Received, res.Sent)
	}
	res.P50, res.P99, res.Max = percentile(lat, 0.50), percentile(lat, 0.99), percentile(lat, 1)
	note := ""
	if dropped > 0 {
		note = fmt.Sprintf(" (%d ticks dropped: publishing fell behind)", dropped)
	}
	e.logf("%s: %d msgs at %.0f/s: p50 %s p99 %s max %s%s", label, res.Sent, res.Rate, fmtMs(res.P50), fmtMs(res.P99), fmtMs(res.Max), note)
	return res, nil
}

// percentile returns the nearest-rank p-quantile of ds (sorted in place).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

func fmtMs(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

// IdleResult is what an idle relay (nothing to send) costs the database.
type IdleResult struct {
	Impl          string
	StatementsSec float64
	TxSec         float64
	// OutboxStatementsSec counts only the statements that name the outbox table, whoever
	// sends them; RelayStatementsSec only those of the relay's forwarder (not its agent's),
	// whatever they name (both NaN for a relay that does not count them).
	OutboxStatementsSec, RelayStatementsSec float64
}

// componentCounter is a relay that also counts the statements naming the outbox table and
// those of its forwarder.
type componentCounter interface {
	outboxStatements() int64
	relayStatements() int64
}

// timedIdle starts a relay over an empty outbox, lets it settle and counts its statements
// and transactions over dur.
func (e *env) timedIdle(ctx context.Context, impl string, dur time.Duration, start func(context.Context) (relay, error)) (IdleResult, error) {
	label := "idle " + impl
	res := IdleResult{Impl: impl}
	r, err := start(ctx)
	if err != nil {
		return res, fmt.Errorf("%s: %w", label, err)
	}
	defer func() { _ = r.stop() }()
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	s0, t0 := r.counts()
	cc, counts := r.(componentCounter)
	var o0, r0 int64
	if counts {
		o0, r0 = cc.outboxStatements(), cc.relayStatements()
	}
	at := time.Now()
	select {
	case <-time.After(dur):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	el := time.Since(at).Seconds()
	s1, t1 := r.counts()
	if s0 < 0 {
		return res, fmt.Errorf("%s: the relay does not count its statements", label)
	}
	res.StatementsSec = float64(s1-s0) / el
	res.TxSec = float64(t1-t0) / el
	res.OutboxStatementsSec, res.RelayStatementsSec = nan, nan
	if counts {
		res.OutboxStatementsSec = float64(cc.outboxStatements()-o0) / el
		res.RelayStatementsSec = float64(cc.relayStatements()-r0) / el
	}
	e.logf("%s: %.1f statements/s (%.1f on the outbox table, %.1f of the forwarder), %.1f transactions/s",
		label, res.StatementsSec, res.OutboxStatementsSec, res.RelayStatementsSec, res.TxSec)
	return res, nil
}

// queryCounter counts the statements and transactions a relay sends.
type queryCounter struct {
	statements atomic.Int64
	txs        atomic.Int64
	// outbox counts the statements that name the outbox table (schema.OutgoingTable): what
	// reads or writes it, BEGIN and COMMIT left out.
	outbox atomic.Int64
	// relay counts the statements of our relay's forwarder, whatever they name (BEGIN and
	// COMMIT included): those run with its pprof label (internal/component); the agent's
	// jobs are left out.
	relay atomic.Int64
}

// query counts a statement of a transaction whose text is query, run with ctx.
func (q *queryCounter) query(ctx context.Context, query string) {
	q.statements.Add(1)
	if strings.Contains(query, schema.OutgoingTable) {
		q.outbox.Add(1)
	}
	if component.Of(ctx) == component.Forwarder {
		q.relay.Add(1)
	}
}

// addAutocommit counts a statement sent outside a transaction (or a BEGIN): one statement
// and one transaction.
func (q *queryCounter) addAutocommit(ctx context.Context, query string) {
	q.query(ctx, query)
	q.txs.Add(1)
}
