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

	"github.com/watermill-jasper/watermill-jasper/internal/row"
)

// A subscription is one Subscribe call: a claimer goroutine that claims batches of
// envelopes into ready, MaxInFlight workers that deliver them one at a time each and wait
// for the ack, and a flusher that deletes acked envelopes and hands nacked ones back in
// batches. Every claimed envelope is accounted for exactly once: acked (deleted), nacked
// (retried), dead-lettered, or handed back when the subscription ends.
type subscription struct {
	s      *Subscriber
	topic  string
	ctx    context.Context // the Subscribe context, cancelled by Close too
	cancel context.CancelFunc
	logger watermill.LoggerAdapter
	out    chan *message.Message

	ready       chan row.Envelope // claimed, not yet delivered
	outstanding atomic.Int64      // claimed and not yet acked/nacked/dead-lettered/handed back
	lowWater    int64             // claim again when outstanding falls to this
	wake        chan struct{}     // new envelopes may exist (notification, nack without delay)
	need        chan struct{}     // outstanding fell to lowWater
	sched       chan struct{}     // nextDue changed

	schedMu sync.Mutex
	nextDue time.Time // when a nacked envelope becomes due (zero: none known)

	listening bool
	fl        flusher

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
		ctx:      ctx,
		cancel:   cancel,
		logger:   s.logger.With(watermill.LogFields{"topic": topic}),
		out:      make(chan *message.Message),
		ready:    make(chan row.Envelope, int(lowWater)+maxClaims*s.config.BatchSize),
		lowWater: lowWater,
		wake:     make(chan struct{}, 1),
		need:     make(chan struct{}, 1),
		sched:    make(chan struct{}, 1),
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

func (sub *subscription) wakeUp() { signal(sub.wake) }

// dueIn records that an envelope of the topic becomes due after d.
func (sub *subscription) dueIn(d time.Duration) {
	t := time.Now().Add(d)
	sub.schedMu.Lock()
	if sub.nextDue.IsZero() || t.Before(sub.nextDue) {
		sub.nextDue = t
	}
	sub.schedMu.Unlock()
	signal(sub.sched)
}

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
	if sub.listening {
		sub.s.hub.unlisten(sub.s.stmts.channel, sub.topic, sub)
	}
	sub.s.removeSub(sub)
	sub.err = errors.Join(errs...)
	close(sub.done)
}

// maxClaims is how many claims of one subscription may run at once. A second claim starts
// only while a backlog is known (the last claim was full) and there is room for it, so that
// the claim latency overlaps with delivery instead of bounding the rate.
const maxClaims = 2

type claimResult struct {
	n      int
	err    error
	woken  bool // the claim was started by a wake-up (notification, poll)
	failed bool
}

// claimLoop claims envelopes whenever there may be some and the subscription has room, and
// releases the topic's due scheduled envelopes.
func (sub *subscription) claimLoop() {
	cfg := &sub.s.config
	limit := cfg.BatchSize
	poll := time.NewTicker(cfg.PollInterval)
	defer poll.Stop()
	schedTimer := time.NewTimer(time.Hour)
	schedTimer.Stop()
	defer schedTimer.Stop()
	var schedAt time.Time // when schedTimer fires (zero: not armed)
	armSched := func(d time.Duration) {
		at := time.Now().Add(d)
		if schedAt.IsZero() || at.Before(schedAt) {
			schedAt = at
			schedTimer.Reset(d)
		}
	}
	results := make(chan claimResult, maxClaims)
	pending := 0
	defer func() {
		for ; pending > 0; pending-- {
			<-results // the claimed envelopes are in ready; run hands them back
		}
	}()
	var retry <-chan time.Time // set while waiting after an error
	woken, checkScheduled, more := true, !cfg.DisableScheduledRelease, false
	for {
		if sub.ctx.Err() != nil {
			return
		}
		if retry == nil && checkScheduled {
			checkScheduled = false
			released, nextIn, err := sub.releaseScheduled(limit)
			if err != nil {
				sub.logger.Error("Cannot release due scheduled envelopes", err, nil)
				retry, checkScheduled = time.After(cfg.RetryInterval), true
			} else {
				if released > 0 {
					woken = true
				}
				if released == int64(limit) {
					checkScheduled = true
				}
				if nextIn != nil {
					armSched(*nextIn)
				}
			}
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
			byWake := woken
			woken = false
			pending++
			go func() {
				n, err := sub.claim(limit)
				results <- claimResult{n: n, err: err, woken: byWake}
			}()
		}
		if retry == nil && checkScheduled {
			continue
		}
		select {
		case <-sub.ctx.Done():
			return
		case r := <-results:
			pending--
			switch {
			case r.err != nil:
				sub.logger.Error("Cannot claim envelopes", r.err, nil)
				if retry == nil {
					retry = time.After(cfg.RetryInterval)
				}
				woken = true
			default:
				more = r.n == limit
				if r.n == 0 && r.woken && !cfg.DisableScheduledRelease {
					// A wake-up with nothing to claim may be for a scheduled envelope.
					checkScheduled = true
				}
			}
		case <-retry:
			retry = nil
			checkScheduled = !cfg.DisableScheduledRelease
		case <-sub.wake:
			woken = true
		case <-sub.need:
		case <-poll.C:
			woken = true
			checkScheduled = !cfg.DisableScheduledRelease
		case <-schedTimer.C:
			schedAt = time.Time{}
			checkScheduled = !cfg.DisableScheduledRelease
		case <-sub.sched:
			sub.schedMu.Lock()
			due := sub.nextDue
			sub.nextDue = time.Time{}
			sub.schedMu.Unlock()
			if !due.IsZero() {
				armSched(time.Until(due))
			}
		}
	}
}

// claim claims up to limit envelopes and queues them for delivery. Nothing is delivered
// before the claim has committed (the rows are all read and closed): a nack or ack racing
// with an uncommitted claim would not see the row as ours.
func (sub *subscription) claim(limit int) (int, error) {
	s := sub.s
	ctx, cancel := sub.stmtCtx()
	defer cancel()
	rows, err := s.db.Query(ctx, s.stmts.claim, s.ownerID, sub.topic, limit)
	if err != nil {
		sub.claimFailed(err, false)
		return 0, err
	}
	codec := s.codec()
	envs := make([]row.Envelope, 0, limit)
	var scanErr error
	for rows.Next() {
		e, err := row.ScanIncoming(rows, codec)
		if err != nil {
			scanErr = err
			break
		}
		envs = append(envs, e)
	}
	closeErr := rows.Close()
	if scanErr == nil && closeErr != nil {
		// The claim failed (nothing was claimed) or its outcome is unknown (what was claimed
		// is marked with this node's id: its agent hands it back).
		sub.claimFailed(closeErr, len(envs) > 0)
		return 0, closeErr
	}
	sub.outstanding.Add(int64(len(envs)))
	for _, e := range envs {
		sub.ready <- e // never blocks: ready holds lowWater + maxClaims*BatchSize
	}
	if scanErr != nil {
		sub.claimFailed(scanErr, true)
		return len(envs), fmt.Errorf("read claimed envelopes (the unread ones stay owned by node %d until its agent hands them back): %w", s.ownerID, scanErr)
	}
	return len(envs), nil
}

// claimFailed tells the node when a failed claim may have left envelopes marked with its id
// that this subscription does not hold: the claim's answer was lost (not a statement
// error), or rows of a committed claim were left unread (stranded).
func (sub *subscription) claimFailed(err error, stranded bool) {
	if stranded || !sub.s.dialect.IsStatementError(err) {
		sub.s.node.ReportUnknownOutcome()
	}
}

// releaseScheduled makes the topic's due scheduled envelopes Incoming and returns how many,
// and how long until the next one is due (nil: none).
func (sub *subscription) releaseScheduled(limit int) (int64, *time.Duration, error) {
	s := sub.s
	ctx, cancel := sub.stmtCtx()
	defer cancel()
	var released int64
	var nextMS *float64
	err := queryRow(ctx, s, s.stmts.releaseScheduled, []any{s.dialect.StringList([]string{sub.topic}), limit}, &released, &nextMS)
	if err != nil {
		return 0, nil, err
	}
	if nextMS == nil {
		return released, nil, nil
	}
	d := time.Duration(*nextMS * float64(time.Millisecond))
	d = max(d, time.Millisecond)
	return released, &d, nil
}

// deliverLoop delivers envelopes one at a time until the subscription ends.
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
			sub.resolved()
			continue
		}
		msgCtx, cancelMsg := context.WithCancel(sub.ctx)
		msg.SetContext(msgCtx)
		select {
		case sub.out <- msg:
		case <-sub.ctx.Done():
			cancelMsg()
			sub.handBack(e, false)
			return
		}
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
		switch {
		case acked:
			sub.fl.ack(e.ID)
		case nacked:
			sub.fl.nack(e.ID, sub.s.config.nackDelay(e.Attempts))
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
// until CloseTimeout.
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
	args := []any{s.dialect.IDList(ids), s.dialect.IDList(attempted), s.ownerID}
	err := retryUntil(s.config.CloseTimeout, s.config.RetryInterval, func(ctx context.Context) error {
		_, err := s.db.Exec(ctx, s.stmts.release, args...)
		return err
	})
	if err != nil {
		err = fmt.Errorf("watermill-jasper: subscriber of topic %s: hand back %d envelopes (they stay owned by node %d until its lock is released, then the durability agent recovers them): %w",
			sub.topic, len(ids), s.ownerID, err)
		sub.logger.Error("Cannot hand envelopes back", err, nil)
		return err
	}
	sub.logger.Debug("Envelopes handed back", watermill.LogFields{"count": len(ids)})
	return nil
}

// retryUntil runs fn until it succeeds or timeout passes, waiting interval between tries.
func retryUntil(timeout, interval time.Duration, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := fn(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().Add(interval).After(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}

func queryRow(ctx context.Context, s *Subscriber, query string, args []any, dest ...any) error {
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return errors.New("no row returned")
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	return rows.Close()
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
	for {
		select {
		case <-f.stop:
			f.err = f.final()
			return
		case <-timer.C:
			armed = false
			if err := f.flush(); err != nil {
				timer.Reset(cfg.RetryInterval)
				armed = true
			}
			continue
		case <-f.signal:
		}
		f.mu.Lock()
		acks := len(f.acks)
		urgent := len(f.nacks) > 0 || len(f.dead) > 0 || acks >= cfg.AckBatchSize || cfg.AckFlushInterval == 0
		f.mu.Unlock()
		switch {
		case urgent:
			timer.Stop()
			armed = false
			if err := f.flush(); err != nil {
				timer.Reset(cfg.RetryInterval)
				armed = true
			}
		case acks > 0 && !armed:
			timer.Reset(cfg.AckFlushInterval)
			armed = true
		}
	}
}

// final flushes what is pending, retrying until CloseTimeout.
func (f *flusher) final() error {
	cfg := &f.sub.s.config
	deadline := time.Now().Add(cfg.CloseTimeout)
	for {
		err := f.flush()
		if err == nil {
			return nil
		}
		if time.Now().Add(cfg.RetryInterval).After(deadline) {
			err = fmt.Errorf("watermill-jasper: subscriber of topic %s: flush acks and nacks (unflushed envelopes stay owned by node %d until its lock is released, then they are delivered again): %w",
				f.sub.topic, f.sub.s.ownerID, err)
			f.sub.logger.Error("Cannot flush acks and nacks", err, nil)
			return err
		}
		time.Sleep(cfg.RetryInterval)
	}
}

// flush runs the pending statements; what fails stays pending.
func (f *flusher) flush() error {
	f.mu.Lock()
	acks, nacks, dead := f.acks, f.nacks, f.dead
	f.acks, f.nacks, f.dead = nil, nil, nil
	f.mu.Unlock()
	var errs []error
	if len(acks) > 0 {
		if err := f.deleteAcked(acks); err != nil {
			errs = append(errs, fmt.Errorf("delete %d acked envelopes: %w", len(acks), err))
			f.mu.Lock()
			f.acks = append(acks, f.acks...)
			f.mu.Unlock()
		}
	}
	if len(nacks) > 0 {
		if failed, err := f.retry(nacks); err != nil {
			errs = append(errs, fmt.Errorf("hand back %d nacked envelopes: %w", len(failed), err))
			f.mu.Lock()
			f.nacks = append(failed, f.nacks...)
			f.mu.Unlock()
		}
	}
	if len(dead) > 0 {
		if err := f.moveToDeadLetters(dead); err != nil {
			errs = append(errs, fmt.Errorf("move %d envelopes to the dead letters: %w", len(dead), err))
			f.mu.Lock()
			f.dead = append(dead, f.dead...)
			f.mu.Unlock()
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		f.sub.logger.Error("Flush failed, retrying", err, nil)
	}
	return err
}

func (f *flusher) deleteAcked(ids []uuid.UUID) error {
	s := f.sub.s
	ctx, cancel := f.sub.stmtCtx()
	defer cancel()
	_, err := s.db.Exec(ctx, s.stmts.deleteIDs, s.dialect.IDList(ids))
	return err
}

// retry hands nacked envelopes back for a retry, one statement per distinct delay, and
// returns those that failed.
func (f *flusher) retry(nacks []nackItem) ([]nackItem, error) {
	s := f.sub.s
	byDelay := map[time.Duration][]uuid.UUID{}
	for _, n := range nacks {
		byDelay[n.delay] = append(byDelay[n.delay], n.id)
	}
	var failed []nackItem
	var errs []error
	for delay, ids := range byDelay {
		ctx, cancel := f.sub.stmtCtx()
		_, err := s.db.Exec(ctx, s.stmts.retry, s.dialect.IDList(ids), delay.Milliseconds(), s.ownerID)
		cancel()
		if err != nil {
			errs = append(errs, err)
			for _, id := range ids {
				failed = append(failed, nackItem{id, delay})
			}
			continue
		}
		if delay.Milliseconds() > 0 {
			f.sub.dueIn(delay)
		} else {
			f.sub.wakeUp()
		}
	}
	return failed, errors.Join(errs...)
}

func (f *flusher) moveToDeadLetters(dead []deadItem) error {
	s := f.sub.s
	n := len(dead)
	ids := make([]uuid.UUID, n)
	explanation, typ, msg, text, source := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, d := range dead {
		ids[i] = d.env.ID
		explanation[i] = "watermill-jasper subscriber: unreadable envelope, it cannot become a Watermill message"
		typ[i] = fmt.Sprintf("%T", rootCause(d.err))
		msg[i] = d.err.Error()
		text[i] = fmt.Sprintf("envelope %s of topic %q (message %q) was claimed by node %d and cannot be delivered: %v",
			d.env.ID, f.sub.topic, d.env.MessageUUID, s.ownerID, d.err)
		source[i] = "watermill-jasper/subscriber"
	}
	ctx, cancel := f.sub.stmtCtx()
	defer cancel()
	_, err := s.db.Exec(ctx, s.stmts.deadLetter, s.dialect.DeadLetterArgs(ids, explanation, typ, msg, text, source)...)
	if err == nil {
		for _, d := range dead {
			f.sub.logger.Error("Unreadable envelope moved to the dead letters", d.err, watermill.LogFields{"envelope_id": d.env.ID.String()})
		}
	}
	return err
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
