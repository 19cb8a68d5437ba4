package subscriber

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/backoff"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/tracing"
)

// A subscription is one Subscribe call: a claimer goroutine that claims batches of
// envelopes into ready, MaxInFlight workers that deliver them one at a time each and wait
// for the ack, and a flusher that deletes acked envelopes and hands nacked ones back in
// batches. Every claimed envelope is accounted for exactly once: acked (deleted), nacked
// (retried), dead-lettered, or handed back when the subscription ends.
type subscription struct {
	s        *Subscriber
	topic    string
	counters *topicCounters  // the topic's, shared by the Subscriber's subscriptions of it
	ctx      context.Context // the Subscribe context, cancelled by Close too
	cancel   context.CancelFunc
	logger   watermill.LoggerAdapter
	out      chan *message.Message

	ready       chan row.Envelope // claimed, not yet delivered
	outstanding atomic.Int64      // claimed and not yet acked/nacked/dead-lettered/handed back
	lowWater    int64             // claim again when outstanding falls to this
	wake        chan struct{}     // new envelopes may exist (the agent's wake-ups, Subscriber.Wake)
	keyed       atomic.Bool       // a claimed envelope had a partition key: wake after each flush
	need        chan struct{}     // outstanding fell to lowWater
	unregister  func()            // stops the agent's wake-ups (set by Subscribe before run)
	retry       backoff.Policy    // the wait after database errors

	fl flusher

	hbMu     sync.Mutex
	handback []row.Envelope // to hand back when the subscription ends
	attempts []uuid.UUID    // ids among handback that were delivered (count an attempt)

	done chan struct{}
	err  error // set before done is closed
}

func newSubscription(s *Subscriber, parent context.Context, topic string) *subscription {
	ctx, cancel := context.WithCancel(parent)
	lowWater := int64(max(s.config.BatchSize, s.config.MaxInFlight))
	sub := &subscription{
		s:        s,
		topic:    topic,
		counters: s.topics.Get(topic),
		ctx:      ctx,
		cancel:   cancel,
		logger:   s.logger.With(watermill.LogFields{"topic": topic}),
		out:      make(chan *message.Message),
		ready:    make(chan row.Envelope, int(lowWater)+maxClaims*s.config.BatchSize),
		lowWater: lowWater,
		wake:     make(chan struct{}, 1),
		need:     make(chan struct{}, 1),
		retry:    s.config.retryPolicy(),
		done:     make(chan struct{}),
	}
	sub.fl = flusher{sub: sub, signal: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
	return sub
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// wakeUp makes the claimer look for envelopes; it never blocks (the agent calls it).
func (sub *subscription) wakeUp() { signal(sub.wake) }

// stmtCtx bounds one statement. It is not cancelled by Close: a claim interrupted halfway
// could leave envelopes owned by this node with nobody delivering them.
func (sub *subscription) stmtCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), sub.s.config.CloseTimeout)
}

func (sub *subscription) run() {
	cfg := &sub.s.config
	var wg sync.WaitGroup
	wg.Add(1 + cfg.MaxInFlight)
	go func() {
		defer wg.Done()
		sub.claimLoop()
	}()
	for range cfg.MaxInFlight {
		go func() {
			defer wg.Done()
			sub.deliverLoop()
		}()
	}
	go sub.fl.run()

	<-sub.ctx.Done()
	wg.Wait()
	for drained := false; !drained; {
		select {
		case e := <-sub.ready:
			sub.handBack(e, false)
		default:
			drained = true
		}
	}
	close(sub.out)

	var errs []error
	close(sub.fl.stop)
	<-sub.fl.stopped
	if sub.fl.err != nil {
		errs = append(errs, sub.fl.err)
	}
	if err := sub.releaseHandback(); err != nil {
		errs = append(errs, err)
	}
	sub.unregister()
	sub.s.removeSub(sub)
	sub.err = errors.Join(errs...)
	close(sub.done)
}

// maxClaims is how many claims of one subscription may run at once. A second claim starts
// only while a backlog is known (the last claim was full) and there is room for it, so that
// the claim latency overlaps with delivery instead of bounding the rate.
const maxClaims = 2

type claimResult struct {
	n   int
	err error
}

// claimLoop claims envelopes whenever there may be some (a wake-up, a poll, a full batch
// last time) and the subscription has room.
func (sub *subscription) claimLoop() {
	cfg := &sub.s.config
	limit := cfg.BatchSize
	poll := time.NewTicker(cfg.PollInterval)
	defer poll.Stop()
	results := make(chan claimResult, maxClaims)
	pending := 0
	defer func() {
		for ; pending > 0; pending-- {
			<-results // the claimed envelopes are in ready; run hands them back
		}
	}()
	var retry <-chan time.Time // set while waiting after an error
	failures := 0              // consecutive failed claims
	woken, more := true, false
	for {
		if sub.ctx.Err() != nil {
			return
		}
		for retry == nil && pending < maxClaims {
			// Held envelopes plus what the running claims may bring: up to lowWater before
			// a claim without a known backlog, one batch more while there is a backlog.
			reserved := sub.outstanding.Load() + int64(pending*limit)
			start := more && reserved <= sub.lowWater+int64((maxClaims-1)*limit) ||
				woken && pending == 0 && reserved <= sub.lowWater
			if !start {
				break
			}
			woken = false
			pending++
			go func() {
				n, err := sub.claim(limit)
				results <- claimResult{n: n, err: err}
			}()
		}
		select {
		case <-sub.ctx.Done():
			return
		case r := <-results:
			pending--
			if r.err != nil {
				failures++
				sub.logger.Error("Cannot claim envelopes", r.err, watermill.LogFields{"failures": failures})
				if retry == nil {
					retry = time.After(sub.retry.Jittered(failures))
				}
				woken = true
				continue
			}
			failures = 0
			more = r.n == limit
		case <-retry:
			retry = nil
		case <-sub.wake:
			woken = true
		case <-sub.need:
		case <-poll.C:
			woken = true
		}
	}
}

// claim claims up to limit envelopes and queues them for delivery. Nothing is delivered
// before the claim has committed (the rows are all read): a nack or ack racing with an
// uncommitted claim would not see the row as ours.
func (sub *subscription) claim(limit int) (int, error) {
	s := sub.s
	ctx, cancel := sub.stmtCtx()
	defer cancel()
	envs, err := s.store.ClaimIncoming(ctx, store.ClaimIncomingParams{Owner: s.ownerID, Topic: sub.topic, Limit: limit})
	// The rows read are ours, even when the claim failed afterwards (stranded).
	sub.outstanding.Add(int64(len(envs)))
	for _, e := range envs {
		if e.PartitionKey != "" && !sub.keyed.Load() {
			sub.keyed.Store(true)
		}
		sub.ready <- e // never blocks: ready holds lowWater + maxClaims*BatchSize
	}
	switch {
	case err == nil:
		return len(envs), nil
	case errors.Is(err, store.ErrStranded):
		// The claim committed but some rows could not be read: they stay marked with this
		// node's id, and the agent hands them back.
		s.agent.ReportUnknownOutcome()
		return len(envs), fmt.Errorf("read claimed envelopes (the unread ones stay owned by node %d until its agent hands them back): %w", s.ownerID, err)
	case !s.store.IsStatementError(err):
		// The answer was lost: the claim may have committed unseen.
		s.agent.ReportUnknownOutcome()
	}
	return 0, err
}

// deliverLoop delivers envelopes one at a time until the subscription ends.
// errNacked is the error status of the process span of a nacked message.
var errNacked = errors.New("watermill-jasper: message nacked")

func (sub *subscription) deliverLoop() {
	for {
		var e row.Envelope
		select {
		case <-sub.ctx.Done():
			return
		case e = <-sub.ready:
		}
		if sub.ctx.Err() != nil {
			sub.handBack(e, false)
			return
		}
		msg, err := e.ToMessage()
		if err != nil {
			sub.fl.deadLetter(e, err)
			sub.counters.deadLettered.Add(1)
			sub.resolved()
			continue
		}
		msgCtx, cancelMsg := context.WithCancel(sub.ctx)
		var span trace.Span
		if sub.s.tracer != nil {
			msgCtx, span = sub.s.tracer.Start(tracing.ParentForDelivery(msgCtx, msg), tracing.Process, sub.topic, msg)
		}
		msg.SetContext(msgCtx)
		select {
		case sub.out <- msg:
		case <-sub.ctx.Done():
			cancelMsg()
			sub.handBack(e, false)
			return
		}
		sub.counters.inFlight.Add(1)
		var acked, nacked bool
		select {
		case <-msg.Acked():
			acked = true
		case <-msg.Nacked():
			nacked = true
		case <-sub.ctx.Done():
			// Ack or Nack may have raced with the end of the subscription.
			select {
			case <-msg.Acked():
				acked = true
			case <-msg.Nacked():
				nacked = true
			default:
			}
		}
		cancelMsg()
		sub.counters.inFlight.Add(-1)
		if span != nil {
			var err error
			if nacked {
				err = errNacked
			}
			tracing.End(span, err)
		}
		switch {
		case acked:
			sub.fl.ack(e.ID)
			sub.counters.acked.Add(1)
		case nacked:
			sub.fl.nack(e.ID, sub.s.config.nackDelay(e.Attempts))
			sub.counters.nacked.Add(1)
		default:
			sub.handBack(e, true)
			return
		}
		sub.resolved()
	}
}

// resolved counts one envelope less outstanding and lets the claimer know when there is room.
func (sub *subscription) resolved() {
	if sub.outstanding.Add(-1) == sub.lowWater {
		signal(sub.need)
	}
}

func (sub *subscription) handBack(e row.Envelope, delivered bool) {
	sub.outstanding.Add(-1)
	sub.hbMu.Lock()
	sub.handback = append(sub.handback, e)
	if delivered {
		sub.attempts = append(sub.attempts, e.ID)
	}
	sub.hbMu.Unlock()
}

// releaseHandback hands back (owner 0) what the subscription held when it ended, retrying
// until CloseTimeout, and wakes the topic's other subscriptions of the agent.
func (sub *subscription) releaseHandback() error {
	s := sub.s
	sub.hbMu.Lock()
	envs, attempted := sub.handback, sub.attempts
	sub.handback, sub.attempts = nil, nil
	sub.hbMu.Unlock()
	if len(envs) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, len(envs))
	for i, e := range envs {
		ids[i] = e.ID
	}
	p := store.ReleaseIncomingParams{IDs: ids, Attempted: attempted, Owner: s.ownerID}
	err := sub.persist(func(ctx context.Context) error { return s.store.ReleaseIncoming(ctx, p) })
	if err != nil {
		err = fmt.Errorf("watermill-jasper: subscriber of topic %s: hand back %d envelopes (they stay owned by node %d until its agent hands them back): %w",
			sub.topic, len(ids), s.ownerID, err)
		sub.logger.Error("Cannot hand envelopes back", err, nil)
		return err
	}
	sub.logger.Debug("Envelopes handed back", watermill.LogFields{"count": len(ids)})
	s.agent.WakeIncoming(sub.topic) // the topic's other local subscriptions take them now
	return nil
}

// persist runs fn until it succeeds or CloseTimeout has passed, waiting with the retry
// back-off between tries, and returns fn's last error. fn's context ends at the deadline.
func (sub *subscription) persist(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), sub.s.config.CloseTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	for n := 1; ; n++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		wait := sub.retry.Jittered(n)
		if time.Until(deadline) < wait {
			return err
		}
		time.Sleep(wait)
	}
}

// flusher deletes acked envelopes and hands nacked ones back, many per statement.
type flusher struct {
	sub     *subscription
	signal  chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	err     error // of the final flush, set before stopped is closed

	mu    sync.Mutex
	acks  []uuid.UUID
	nacks []nackItem
	dead  []deadItem
}

type nackItem struct {
	id    uuid.UUID
	delay time.Duration
}

type deadItem struct {
	env row.Envelope
	err error
}

func (f *flusher) ack(id uuid.UUID) {
	f.mu.Lock()
	f.acks = append(f.acks, id)
	n := len(f.acks)
	f.mu.Unlock()
	if n == 1 || n == f.sub.s.config.AckBatchSize {
		signal(f.signal)
	}
}

func (f *flusher) nack(id uuid.UUID, delay time.Duration) {
	f.mu.Lock()
	f.nacks = append(f.nacks, nackItem{id, delay})
	f.mu.Unlock()
	signal(f.signal)
}

func (f *flusher) deadLetter(e row.Envelope, err error) {
	f.mu.Lock()
	f.dead = append(f.dead, deadItem{e, err})
	f.mu.Unlock()
	signal(f.signal)
}

func (f *flusher) run() {
	defer close(f.stopped)
	cfg := &f.sub.s.config
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	armed := false
	failures := 0 // consecutive failed flushes
	flush := func() {
		timer.Stop()
		armed = false
		if err := f.flush(context.Background()); err != nil {
			failures++
			timer.Reset(f.sub.retry.Jittered(failures))
			armed = true
			return
		}
		failures = 0
	}
	for {
		select {
		case <-f.stop:
			f.err = f.final()
			return
		case <-timer.C:
			armed = false
			flush()
			continue
		case <-f.signal:
		}
		f.mu.Lock()
		acks := len(f.acks)
		urgent := len(f.nacks) > 0 || len(f.dead) > 0 || acks >= cfg.AckBatchSize || cfg.AckFlushInterval == 0
		f.mu.Unlock()
		switch {
		case urgent && failures == 0:
			flush()
		case acks > 0 && !armed:
			timer.Reset(cfg.AckFlushInterval)
			armed = true
		}
	}
}

// final flushes what is pending, retrying until CloseTimeout.
func (f *flusher) final() error {
	err := f.sub.persist(f.flush)
	if err != nil {
		err = fmt.Errorf("watermill-jasper: subscriber of topic %s: flush acks and nacks (unflushed envelopes stay owned by node %d until its agent hands them back, then they are delivered again): %w",
			f.sub.topic, f.sub.s.ownerID, err)
		f.sub.logger.Error("Cannot flush acks and nacks", err, nil)
	}
	return err
}

// flush runs the pending statements, each bounded by CloseTimeout within ctx; what fails
// stays pending.
func (f *flusher) flush(ctx context.Context) error {
	f.mu.Lock()
	acks, nacks, dead := f.acks, f.nacks, f.dead
	f.acks, f.nacks, f.dead = nil, nil, nil
	f.mu.Unlock()
	var errs []error
	if len(acks) > 0 {
		if err := f.deleteAcked(ctx, acks); err != nil {
			errs = append(errs, fmt.Errorf("delete %d acked envelopes: %w", len(acks), err))
			putBack(&f.mu, &f.acks, acks)
		}
	}
	if len(nacks) > 0 {
		if failed, err := f.retry(ctx, nacks); err != nil {
			errs = append(errs, fmt.Errorf("hand back %d nacked envelopes: %w", len(failed), err))
			putBack(&f.mu, &f.nacks, failed)
		}
	}
	if len(dead) > 0 {
		if err := f.moveToDeadLetters(ctx, dead); err != nil {
			errs = append(errs, fmt.Errorf("move %d envelopes to the dead letters: %w", len(dead), err))
			putBack(&f.mu, &f.dead, dead)
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		f.sub.logger.Error("Flush failed, retrying", err, nil)
	}
	if len(acks)+len(dead) > 0 && f.sub.keyed.Load() {
		// The next envelope of a partition key becomes claimable only once its predecessor
		// is deleted (per-key ordering): claim without waiting for a poll.
		signal(f.sub.wake)
	}
	return err
}

// stmtCtx bounds one statement of the flusher by CloseTimeout within ctx.
func (f *flusher) stmtCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, f.sub.s.config.CloseTimeout)
}

func (f *flusher) deleteAcked(ctx context.Context, ids []uuid.UUID) error {
	ctx, cancel := f.stmtCtx(ctx)
	defer cancel()
	return f.sub.s.store.DeleteIncoming(ctx, ids)
}

// retry hands nacked envelopes back for a retry, one statement per distinct delay, and
// returns those that failed. Once a statement committed, the agent is asked for a scheduled
// pass when the envelopes fall due, which makes them Incoming and wakes the topic's
// subscriptions; envelopes handed back without a delay are Incoming at once, and the local
// subscriptions of the topic are woken.
func (f *flusher) retry(ctx context.Context, nacks []nackItem) ([]nackItem, error) {
	s := f.sub.s
	byDelay := map[time.Duration][]uuid.UUID{}
	for _, n := range nacks {
		byDelay[n.delay] = append(byDelay[n.delay], n.id)
	}
	var failed []nackItem
	var errs []error
	for delay, ids := range byDelay {
		sctx, cancel := f.stmtCtx(ctx)
		err := s.store.RetryIncoming(sctx, store.RetryParams{IDs: ids, Owner: s.ownerID, Delay: delay})
		cancel()
		if err != nil {
			errs = append(errs, err)
			for _, id := range ids {
				failed = append(failed, nackItem{id, delay})
			}
			continue
		}
		if delay > 0 {
			s.agent.ScheduleAt(time.Now().Add(delay))
		} else {
			s.agent.WakeIncoming(f.sub.topic)
		}
	}
	return failed, errors.Join(errs...)
}

func (f *flusher) moveToDeadLetters(ctx context.Context, dead []deadItem) error {
	s := f.sub.s
	letters := make([]store.DeadLetterReason, len(dead))
	for i, d := range dead {
		typ, msg, chain := fault.Describe(d.err)
		letters[i] = store.DeadLetterReason{ID: d.env.ID, Reason: store.Reason{
			Explanation: fmt.Sprintf("watermill-jasper subscriber: unreadable envelope, it cannot become a Watermill message (topic %q, message %q, claimed by node %d)",
				f.sub.topic, d.env.MessageUUID, s.ownerID),
			ExceptionType:    typ,
			ExceptionMessage: msg,
			ExceptionText:    chain,
			Source:           "watermill-jasper/subscriber",
		}}
	}
	ctx, cancel := f.stmtCtx(ctx)
	defer cancel()
	if err := s.store.DeadLetterIncoming(ctx, letters); err != nil {
		return err
	}
	for _, d := range dead {
		f.sub.logger.Error("Unreadable envelope moved to the dead letters", d.err, watermill.LogFields{"envelope_id": d.env.ID.String()})
	}
	return nil
}

// putBack puts items whose statement failed back in front of the pending ones, under mu.
func putBack[T any](mu *sync.Mutex, pending *[]T, items []T) {
	mu.Lock()
	defer mu.Unlock()
	*pending = append(items, *pending...)
}
