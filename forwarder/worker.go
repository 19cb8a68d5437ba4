package forwarder

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/metadata"
)

// worker is one relay loop: it locks a batch in a transaction, publishes it, records the
// outcomes in the same transaction and commits (relayBatch). Its slices are reused from
// batch to batch.
type worker struct {
	f      *Forwarder
	id     int
	msgCtx context.Context // Run's context, set on every message
	stop   <-chan struct{} // closed when the forwarder stops

	envs     []row.Envelope // locked: the probes first, then the batch
	nProbes  int            // envs[:nProbes] are probes of paused destinations
	items    []item
	excluded []string
	probes   []string
	wg       sync.WaitGroup

	// Outcomes of the batch, recorded before its transaction commits. Envelopes not sent
	// (destination paused, forwarder stopping) need no statement: the commit unlocks them as
	// they were.
	done  []uuid.UUID // sent or expired: deleted
	retry []uuid.UUID // failed: one more attempt counted
	dead  []store.DeadLetterReason

	// idle: the last batch found nothing, so the next one first looks without a transaction
	// (one statement instead of BEGIN, a lock and ROLLBACK while the outbox stays empty).
	idle bool
	// resolved is how many envelopes the last committed batch deleted (sent, expired) or
	// moved to the dead letters.
	resolved int
}

// deadLetter queues the move of an envelope to the dead letters, with err described as
// Jasper fills a dead letter (fault.Describe).
func (w *worker) deadLetter(id uuid.UUID, explanation string, err error, source string) {
	typ, msg, chain := fault.Describe(err)
	w.dead = append(w.dead, store.DeadLetterReason{ID: id, Reason: store.Reason{
		Explanation: explanation, ExceptionType: typ, ExceptionMessage: msg, ExceptionText: chain, Source: source,
	}})
}

func (f *Forwarder) newWorker(msgCtx context.Context, id int, stop <-chan struct{}) *worker {
	return &worker{
		f: f, id: id, msgCtx: msgCtx, stop: stop,
		envs:  make([]row.Envelope, 0, f.config.BatchSize),
		items: make([]item, 0, f.config.BatchSize),
	}
}

// run relays batches until ctx ends. After a full batch it relays the next at once (and
// wakes another worker to lock one in parallel); otherwise it waits for a wake-up.
func (w *worker) run(ctx context.Context) {
	f := w.f
	// A batch's statements run to its end even while stopping.
	finish := context.WithoutCancel(ctx)
	full := false
	for {
		if !full {
			select {
			case <-ctx.Done():
				return
			case <-f.wake:
			}
		}
		if ctx.Err() != nil {
			return
		}
		n, found, err := w.relayBatch(finish)
		if err != nil {
			f.logger.Error("Relaying a batch of outgoing envelopes failed; its envelopes are unlocked and relayed again", err, watermill.LogFields{"worker": w.id})
		}
		full = err == nil && n == f.config.BatchSize
		f.draining.Store(full)
		f.polls.Add(1) // after draining: a batch counted is one whose outcome draining tells
		if found {
			now := time.Now().UnixNano()
			if prev := f.lastFound.Swap(now); time.Duration(now-prev) >= f.config.PollInterval {
				select { // idle until now: switch the poller to the active pace
				case f.busy <- struct{}{}:
				default:
				}
			}
		}
		if full {
			f.signal() // more is waiting: let another worker lock the next batch meanwhile
		}
	}
}

// relayBatch is one batch in one transaction: lock up to BatchSize unowned envelopes (after
// one probe per destination whose pause just ended), publish them, then delete the sent and
// expired ones, count an attempt on the failed ones, move the dead ones to the dead letters,
// and commit. The envelopes are never marked with an owner: while the transaction is open
// other relays skip them, and when it ends without a commit (a failed statement, a lost
// connection, a crash) they are free to be relayed again at once, by anyone; no agent has to
// hand them back. The commit is the one moment the outcomes are recorded: when its answer is
// lost, the batch may be relayed again (at least once). It does not wait for the disk
// (store.Store.BeginRelay): a crash of the database may lose it, and the batch is relayed
// again, as after a crash of the relay. It returns the size of the regular
// lock and whether any envelope was found.
func (w *worker) relayBatch(base context.Context) (n int, found bool, err error) {
	if w.idle && !w.anythingToLock(base) {
		return 0, false, nil
	}
	return w.relay(base, w.lock)
}

// relay runs one batch whose envelopes lock takes in the batch's transaction (ops): the
// polling claim (worker.lock) or the logical-replication source's lock by id.
func (w *worker) relay(base context.Context, lock func(base context.Context, ops store.Ops) (int, error)) (n int, found bool, err error) {
	f := w.f
	w.resolved = 0
	defer w.reset()
	// Begin's context must live as long as the transaction (database/sql rolls a
	// transaction back when it ends); base is never cancelled, and every statement has its
	// own timeout.
	tx, err := f.store.BeginRelay(base)
	if err != nil {
		return 0, false, fmt.Errorf("begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			ctx, cancel := context.WithTimeout(base, statementTimeout)
			_ = tx.Rollback(ctx)
			cancel()
		}
	}()
	ops := f.store.With(tx)
	n, err = lock(base, ops)
	w.idle = err == nil && len(w.envs) == 0
	if err != nil || len(w.envs) == 0 {
		return n, false, err
	}
	w.process()
	// The outcomes go with the COMMIT, in one round trip, where the pool can (dbx.Queued).
	if err := w.record(base, f.store.With(dbx.Queued(tx))); err != nil {
		return n, true, err
	}
	ctx, cancel := context.WithTimeout(base, statementTimeout)
	defer cancel()
	if err := tx.Commit(ctx); err != nil {
		return n, true, fmt.Errorf("commit the outcomes of %d envelopes (relayed again unless the commit was applied): %w", len(w.envs), err)
	}
	committed = true
	w.resolved = len(w.done) + len(w.dead)
	if len(w.retry) > 0 && f.following() {
		// No poll comes while the replication slot streams: try the failed ones again soon
		// (a paused destination is woken by its pause's end instead).
		time.AfterFunc(f.config.CircuitPause, f.signal)
	}
	for i := range w.envs {
		if w.envs[i].PartitionKey != "" {
			// The next envelope of a key becomes claimable only now that its predecessor's
			// outcome committed (per-key ordering): relay it without waiting for a poll.
			f.signal()
			break
		}
	}
	if len(w.dead) > 0 {
		f.logger.Info("Envelopes moved to the dead letters", watermill.LogFields{"count": len(w.dead), "explanation": w.dead[0].Explanation})
		if f.onDeadLettered != nil {
			f.onDeadLettered(len(w.dead))
		}
	}
	if f.onFlushed != nil {
		f.onFlushed()
	}
	return n, true, nil
}

// reset empties the batch's envelopes, messages and outcomes (their arrays are reused).
func (w *worker) reset() {
	clear(w.items) // drop the messages
	clear(w.envs)
	clear(w.dead)
	w.envs, w.items, w.done, w.retry, w.dead = w.envs[:0], w.items[:0], w.done[:0], w.retry[:0], w.dead[:0]
	w.nProbes = 0
}

// anythingToLock reports whether an envelope the next batch would lock is waiting (or a
// paused destination's probe is due, or the look failed: the batch then says why). It is
// one autocommit statement, whose lock ends with it.
func (w *worker) anythingToLock(base context.Context) bool {
	f := w.f
	if f.breaker.probesDue(time.Now()) {
		return true
	}
	ctx, cancel := context.WithTimeout(base, statementTimeout)
	defer cancel()
	w.excluded = f.breaker.excluded(w.excluded[:0])
	envs, err := f.store.LockOutgoing(ctx, store.LockOutgoingParams{Exclude: w.excluded, Only: f.config.Destinations, Limit: 1})
	return err != nil || len(envs) > 0
}

// lock takes one envelope of each destination whose pause just ended (its probe), then up to
// BatchSize envelopes of the destinations not paused, in the batch's transaction (ops). It
// returns the size of the regular lock; the envelopes are in w.envs.
func (w *worker) lock(base context.Context, ops store.Ops) (int, error) {
	f := w.f
	w.probes = f.breaker.takeProbes(time.Now(), w.probes[:0])
	for i, d := range w.probes {
		n, err := w.lockInto(base, ops, store.LockOutgoingParams{Only: []string{d}, Limit: 1})
		if err == nil && n == 0 {
			f.breaker.probeEmpty(d)
		}
		if err != nil {
			for _, d := range w.probes[i:] {
				f.breaker.probeDone(d)
			}
			return 0, err
		}
	}
	w.nProbes = len(w.envs)
	w.excluded = f.breaker.excluded(w.excluded[:0])
	return w.lockInto(base, ops, store.LockOutgoingParams{Exclude: w.excluded, Only: f.config.Destinations, Limit: f.config.BatchSize})
}

// lockInto runs one lock statement and appends the envelopes read to w.envs. On an error
// nothing of the batch is relayed: the transaction is rolled back.
func (w *worker) lockInto(base context.Context, ops store.Ops, p store.LockOutgoingParams) (int, error) {
	f := w.f
	ctx, cancel := context.WithTimeout(base, statementTimeout)
	defer cancel()
	envs, err := ops.LockOutgoing(ctx, p)
	if err != nil {
		w.envs = w.envs[:0]
		return 0, fmt.Errorf("lock outgoing envelopes: %w", err)
	}
	w.envs = append(w.envs, envs...)
	f.claimed.Add(int64(len(envs)))
	return len(envs), nil
}

// process relays the claimed batch: expired envelopes are dropped, unmappable or unreadable
// ones dead-lettered, the rest published concurrently (probes of half-open destinations
// first), and every outcome is queued for record.
func (w *worker) process() {
	f := w.f
	now := time.Now()
	items := w.items[:0]
	var expired, deadNow int64
	for i := range w.envs {
		e := &w.envs[i]
		probe := i < w.nProbes
		if e.DeliverBy != nil && !e.DeliverBy.After(now) {
			w.done = append(w.done, e.ID)
			expired++
			f.breaker.stats.Get(e.Destination).expired.Add(1)
			if probe {
				f.breaker.probeDone(e.Destination)
			}
			continue
		}
		topic, err := f.topic(e.Destination)
		if err != nil {
			w.deadLetter(e.ID, fmt.Sprintf("The destination %q cannot be mapped to a topic: %v", e.Destination, err), err, "")
			deadNow++
			f.breaker.stats.Get(e.Destination).deadLettered.Add(1)
			if probe {
				f.breaker.probeDone(e.Destination)
			}
			continue
		}
		msg, err := e.ToMessage()
		if err != nil {
			w.deadLetter(e.ID, fmt.Sprintf("The envelope cannot be read as a Watermill message: %v", err), err, "")
			deadNow++
			f.breaker.stats.Get(e.Destination).deadLettered.Add(1)
			if probe {
				f.breaker.probeDone(e.Destination)
			}
			continue
		}
		msg.Metadata.Set(metadata.Destination, e.Destination)
		msg.SetContext(w.msgCtx)
		items = append(items, item{w: w, env: e, msg: msg, topic: topic, probe: probe})
	}
	w.items = items
	f.expired.Add(expired)
	f.deadLettered.Add(deadNow) // counted now; the statement follows in flush

	// Probes of paused destinations are published alone first: a success resumes the
	// destination (and wakes a worker to claim its envelopes), a failure pauses it longer.
	if w.nProbes > 0 {
		w.dispatch(true)
	}
	w.dispatch(false)

	var sentN, failedN, released int64
	var firstErr error
	var firstDest string
	confirmed := time.Now() // the broker confirmed the batch's sent envelopes by now
	for i := range items {
		it := &items[i]
		switch it.result {
		case sent:
			w.done = append(w.done, it.env.ID)
			sentN++
			dc := f.breaker.stats.Get(it.env.Destination)
			dc.sent.Add(1)
			if wa := it.env.WrittenAt; wa != nil {
				dc.lag.Observe(confirmed.Sub(*wa))
			}
		case failed:
			failedN++
			dc := f.breaker.stats.Get(it.env.Destination)
			dc.failed.Add(1)
			if firstErr == nil {
				firstErr, firstDest = it.err, it.env.Destination
			}
			switch kind := fault.KindOf(it.err); {
			case kind == fault.KindPermanent:
				w.deadLetter(it.env.ID, fmt.Sprintf("Publishing to topic %q failed permanently", it.topic),
					it.err, it.msg.Metadata.Get(metadata.Source))
				f.deadLettered.Add(1)
				dc.deadLettered.Add(1)
			case kind == fault.KindTemporary:
				// The failure says nothing about the envelope (e.g. the broker connection was
				// lost): it stays as it was, no attempt counted; the breaker still counts it.
			case it.env.Attempts+1 >= f.config.MaxAttempts:
				attempts := it.env.Attempts + 1
				w.deadLetter(it.env.ID, fmt.Sprintf("Publishing to topic %q failed %d times (MaxAttempts %d)", it.topic, attempts, f.config.MaxAttempts),
					it.err, it.msg.Metadata.Get(metadata.Source))
				f.deadLettered.Add(1)
				dc.deadLettered.Add(1)
			default:
				w.retry = append(w.retry, it.env.ID)
			}
		default:
			released++ // unlocked as it was by the commit
		}
	}
	f.sent.Add(sentN)
	f.failed.Add(failedN)
	f.released.Add(released)
	if firstErr != nil {
		f.logger.Error("Publishing envelopes failed", firstErr, watermill.LogFields{
			"failed": failedN, "destination": firstDest, "worker": w.id,
		})
	}
}

// dispatch hands the batch's probes (or the other items) to the publishing goroutines and
// waits for them. Once the forwarder stops, the items not handed over stay unsent.
func (w *worker) dispatch(probes bool) {
	for i := range w.items {
		it := &w.items[i]
		if it.probe != probes {
			continue
		}
		select {
		case <-w.stop:
			w.wg.Wait()
			return
		default:
		}
		w.wg.Add(1)
		select {
		case w.f.jobs <- it:
		case <-w.stop:
			w.wg.Done()
			w.wg.Wait()
			return
		}
	}
	w.wg.Wait()
}

// record runs the statements of the batch's outcomes in its transaction (ops), one per
// kind.
func (w *worker) record(base context.Context, ops store.Ops) error {
	run := func(op func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(base, statementTimeout)
		defer cancel()
		return op(ctx)
	}
	if len(w.done) > 0 {
		if err := run(func(ctx context.Context) error { return ops.DeleteOutgoing(ctx, w.done) }); err != nil {
			return fmt.Errorf("delete sent envelopes: %w", err)
		}
	}
	if len(w.dead) > 0 {
		if err := run(func(ctx context.Context) error { return ops.DeadLetterOutgoing(ctx, w.dead) }); err != nil {
			return fmt.Errorf("move envelopes to the dead letters: %w", err)
		}
	}
	if len(w.retry) > 0 {
		// The envelopes are unowned (owner 0): the release counts an attempt on them.
		p := store.ReleaseParams{IDs: w.retry, Owner: 0, CountAttempt: true}
		if err := run(func(ctx context.Context) error { return ops.ReleaseOutgoing(ctx, p) }); err != nil {
			return fmt.Errorf("count an attempt on failed envelopes: %w", err)
		}
	}
	return nil
}
