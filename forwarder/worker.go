package forwarder

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/metadata"
)

// worker is one claim loop. Its slices are reused from batch to batch; the outcome lists
// survive a failed flush and are retried before the next claim.
type worker struct {
	f      *Forwarder
	id     int
	owner  int32
	msgCtx context.Context // Run's context, set on every message
	stop   <-chan struct{} // closed when the forwarder stops

	envs     []row.Envelope // claimed: the probes first, then the batch
	nProbes  int            // envs[:nProbes] are probes of paused destinations
	items    []item
	excluded []string
	probes   []string
	wg       sync.WaitGroup

	// Outcomes waiting for their statement.
	done    []uuid.UUID // sent or expired: deleted
	retry   []uuid.UUID // failed: handed back with one more attempt
	release []uuid.UUID // not sent: handed back as they were
	dead    []store.DeadLetterReason
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
		f: f, id: id, owner: f.owner, msgCtx: msgCtx, stop: stop,
		envs:  make([]row.Envelope, 0, f.config.BatchSize),
		items: make([]item, 0, f.config.BatchSize),
	}
}

func (w *worker) pending() bool {
	return len(w.done)+len(w.retry)+len(w.release)+len(w.dead) > 0
}

// run claims and relays batches until ctx ends. After a full batch it claims again at once
// (and wakes another worker to claim in parallel); otherwise it waits for a wake-up.
func (w *worker) run(ctx context.Context) {
	f := w.f
	// Statements that record outcomes must run even while stopping.
	finish := context.WithoutCancel(ctx)
	defer func() {
		if w.pending() {
			w.flush(finish)
		}
		if w.pending() {
			f.logger.Error("Envelopes stay owned by this node after failed statements; the node's durability agent hands them back when it stops (or a living node's agent, once this node's lock is released)", nil,
				watermill.LogFields{"node_id": w.owner, "sent_or_expired": len(w.done), "failed": len(w.retry),
					"unsent": len(w.release), "dead_letters": len(w.dead)})
		}
	}()
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
		if w.pending() {
			w.flush(finish)
		}
		n, err := w.claim(finish)
		if err != nil {
			f.logger.Error("Cannot claim outgoing envelopes; retrying at the next wake-up", err, watermill.LogFields{"worker": w.id})
		}
		full = err == nil && n == f.config.BatchSize
		if len(w.envs) > 0 {
			now := time.Now().UnixNano()
			if prev := f.lastFound.Swap(now); time.Duration(now-prev) >= f.config.PollInterval {
				select { // idle until now: switch the poller to the active pace
				case f.busy <- struct{}{}:
				default:
				}
			}
		}
		if full {
			f.signal() // more is waiting: let another worker claim the next batch meanwhile
		}
		if len(w.envs) > 0 { // the probes and the regular claim (what was read of it)
			w.process()
			w.flush(finish)
			if f.onFlushed != nil {
				f.onFlushed()
			}
		}
	}
}

// claim takes one envelope of each destination whose pause just ended (its probe), then
// up to BatchSize envelopes of the destinations not paused, each in one autocommit
// statement. It runs with a context that stopping does not cancel, so that a claim that
// committed is always read. It returns the size of the regular claim. The envelopes read
// are in w.envs even when it fails (a claim whose rows were not all read).
func (w *worker) claim(base context.Context) (int, error) {
	f := w.f
	w.envs = w.envs[:0]
	w.nProbes = 0
	w.probes = f.breaker.takeProbes(time.Now(), w.probes[:0])
	for i, d := range w.probes {
		n, err := w.claimInto(base, nil, []string{d}, 1)
		if err == nil && n == 0 {
			f.breaker.probeEmpty(d)
		}
		if err != nil {
			unclaimed := w.probes[i+1:]
			if n == 0 {
				unclaimed = w.probes[i:]
			}
			for _, d := range unclaimed {
				f.breaker.probeDone(d)
			}
			w.nProbes = len(w.envs)
			return 0, err
		}
	}
	w.nProbes = len(w.envs)
	w.excluded = f.breaker.excluded(w.excluded[:0])
	return w.claimInto(base, w.excluded, f.config.Destinations, f.config.BatchSize)
}

// claimInto runs one claim and appends the envelopes read to w.envs. When the claim's
// answer was lost (not the database's statement error: it may have committed unseen), or it
// committed but not all its rows could be read (store.ErrStranded; those read are relayed),
// envelopes may be marked with the node's id that this worker does not hold: the agent is
// told, and hands the node's envelopes back at its next node check.
func (w *worker) claimInto(base context.Context, excluded, only []string, limit int) (int, error) {
	f := w.f
	ctx, cancel := context.WithTimeout(base, statementTimeout)
	defer cancel()
	envs, err := f.store.ClaimOutgoing(ctx, store.ClaimOutgoingParams{
		Owner: w.owner, Exclude: excluded, Only: only, Limit: limit,
	})
	w.envs = append(w.envs, envs...)
	f.claimed.Add(int64(len(envs)))
	if err != nil {
		if errors.Is(err, store.ErrStranded) || !f.store.IsStatementError(err) {
			f.agent.ReportUnknownOutcome()
			return len(envs), fmt.Errorf("claim outgoing envelopes (what this node may hold unread is handed back by its durability agent): %w", err)
		}
		return len(envs), fmt.Errorf("claim outgoing envelopes: %w", err)
	}
	return len(envs), nil
}

// process relays the claimed batch: expired envelopes are dropped, unmappable or unreadable
// ones dead-lettered, the rest published concurrently (probes of half-open destinations
// first), and every outcome is queued for flush.
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
			if probe {
				f.breaker.probeDone(e.Destination)
			}
			continue
		}
		topic, err := f.topic(e.Destination)
		if err != nil {
			w.deadLetter(e.ID, fmt.Sprintf("The destination %q cannot be mapped to a topic: %v", e.Destination, err), err, "")
			deadNow++
			if probe {
				f.breaker.probeDone(e.Destination)
			}
			continue
		}
		msg, err := e.ToMessage()
		if err != nil {
			w.deadLetter(e.ID, fmt.Sprintf("The envelope cannot be read as a Watermill message: %v", err), err, "")
			deadNow++
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
	for i := range items {
		it := &items[i]
		switch it.result {
		case sent:
			w.done = append(w.done, it.env.ID)
			sentN++
		case failed:
			failedN++
			if firstErr == nil {
				firstErr, firstDest = it.err, it.env.Destination
			}
			switch kind := fault.KindOf(it.err); {
			case kind == fault.KindPermanent:
				w.deadLetter(it.env.ID, fmt.Sprintf("Publishing to topic %q failed permanently", it.topic),
					it.err, it.msg.Metadata.Get(metadata.Source))
				f.deadLettered.Add(1)
			case kind == fault.KindTemporary:
				// The failure says nothing about the envelope (e.g. the broker connection was
				// lost): hand it back without counting an attempt; the breaker still counts it.
				w.release = append(w.release, it.env.ID)
			case it.env.Attempts+1 >= f.config.MaxAttempts:
				attempts := it.env.Attempts + 1
				w.deadLetter(it.env.ID, fmt.Sprintf("Publishing to topic %q failed %d times (MaxAttempts %d)", it.topic, attempts, f.config.MaxAttempts),
					it.err, it.msg.Metadata.Get(metadata.Source))
				f.deadLettered.Add(1)
			default:
				w.retry = append(w.retry, it.env.ID)
			}
		default:
			w.release = append(w.release, it.env.ID)
			released++
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
	clear(w.items) // drop the messages
	clear(w.envs)
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

// flush runs the statements recording the outcomes, retrying a few times with a growing
// delay (flushBackoff). What still fails stays queued for the next flush.
func (w *worker) flush(base context.Context) {
	for attempt := 1; ; attempt++ {
		err := w.flushOnce(base)
		if err == nil {
			return
		}
		w.f.logger.Error("Cannot record relayed envelopes in the outbox table", err, watermill.LogFields{
			"worker": w.id, "attempt": attempt,
		})
		if attempt > flushRetries {
			return
		}
		_ = flushBackoff.Sleep(base, attempt)
	}
}

// flushOnce records the outcomes, one statement per kind; a kind recorded is not recorded
// again when a later one fails.
func (w *worker) flushOnce(base context.Context) error {
	f := w.f
	run := func(op func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(base, statementTimeout)
		defer cancel()
		return op(ctx)
	}
	if len(w.done) > 0 {
		if err := run(func(ctx context.Context) error { return f.store.DeleteOutgoing(ctx, w.done) }); err != nil {
			return fmt.Errorf("delete sent envelopes: %w", err)
		}
		w.done = w.done[:0]
	}
	if len(w.dead) > 0 {
		if err := run(func(ctx context.Context) error { return f.store.DeadLetterOutgoing(ctx, w.dead) }); err != nil {
			return fmt.Errorf("move envelopes to the dead letters: %w", err)
		}
		f.logger.Info("Envelopes moved to the dead letters", watermill.LogFields{"count": len(w.dead), "explanation": w.dead[0].Explanation})
		if f.onDeadLettered != nil {
			f.onDeadLettered(len(w.dead))
		}
		clear(w.dead)
		w.dead = w.dead[:0]
	}
	if len(w.retry) > 0 {
		p := store.ReleaseParams{IDs: w.retry, Owner: w.owner, CountAttempt: true}
		if err := run(func(ctx context.Context) error { return f.store.ReleaseOutgoing(ctx, p) }); err != nil {
			return fmt.Errorf("hand back failed envelopes: %w", err)
		}
		w.retry = w.retry[:0]
	}
	if len(w.release) > 0 {
		p := store.ReleaseParams{IDs: w.release, Owner: w.owner}
		if err := run(func(ctx context.Context) error { return f.store.ReleaseOutgoing(ctx, p) }); err != nil {
			return fmt.Errorf("hand back unsent envelopes: %w", err)
		}
		w.release = w.release[:0]
	}
	return nil
}
