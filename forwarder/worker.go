package forwarder

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/metadata"
)

// worker is one claim loop. Its slices are reused from batch to batch; the outcome lists
// survive a failed flush and are retried before the next claim.
type worker struct {
	f      *Forwarder
	id     int
	node   *durability.Node
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
	done    uuidList // sent or expired: deleted
	retry   uuidList // failed: handed back with one more attempt
	release uuidList // not sent: handed back as they were
	dead    deadLetters
}

// deadLetters are the columns of DeadLetterOutgoing, one entry per envelope.
type deadLetters struct {
	ids                                     uuidList
	explanation, typ, message, text, source []string
}

func (d *deadLetters) add(id uuid.UUID, explanation string, err error, source string) {
	typ, msg, text := errorReport(err)
	d.ids = append(d.ids, id)
	d.explanation = append(d.explanation, explanation)
	d.typ = append(d.typ, typ)
	d.message = append(d.message, msg)
	d.text = append(d.text, text)
	d.source = append(d.source, source)
}

func (d *deadLetters) reset() {
	d.ids, d.explanation, d.typ, d.message, d.text, d.source =
		d.ids[:0], d.explanation[:0], d.typ[:0], d.message[:0], d.text[:0], d.source[:0]
}

func (f *Forwarder) newWorker(msgCtx context.Context, id int, node *durability.Node, stop <-chan struct{}) *worker {
	return &worker{
		f: f, id: id, node: node, owner: node.ID(), msgCtx: msgCtx, stop: stop,
		envs:  make([]row.Envelope, 0, f.config.BatchSize),
		items: make([]item, 0, f.config.BatchSize),
	}
}

func (w *worker) pending() bool {
	return len(w.done)+len(w.retry)+len(w.release)+len(w.dead.ids) > 0
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
			f.logger.Error("Envelopes stay owned by this node after failed statements; the durability agent of a living node hands them back once this node's lock is released", nil,
				watermill.LogFields{"node_id": w.owner, "sent_or_expired": len(w.done), "failed": len(w.retry),
					"unsent": len(w.release), "dead_letters": len(w.dead.ids)})
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
// committed is always read. It returns the size of the regular claim.
func (w *worker) claim(base context.Context) (int, error) {
	f := w.f
	w.envs = w.envs[:0]
	w.nProbes = 0
	w.probes = f.breaker.takeProbes(time.Now(), w.probes[:0])
	for i, d := range w.probes {
		n, err := w.claimInto(base, nil, []string{d}, 1)
		if err != nil {
			for _, d := range w.probes[i:] {
				f.breaker.probeDone(d)
			}
			return 0, err
		}
		if n == 0 {
			f.breaker.probeEmpty(d)
		}
	}
	w.nProbes = len(w.envs)
	w.excluded = f.breaker.excluded(w.excluded[:0])
	n, err := w.claimInto(base, w.excluded, f.config.Destinations, f.config.BatchSize)
	return n, err
}

// claimInto runs one claim and appends the envelopes to w.envs.
func (w *worker) claimInto(base context.Context, excluded, only []string, limit int) (int, error) {
	f := w.f
	ctx, cancel := context.WithTimeout(base, statementTimeout)
	defer cancel()
	rows, err := f.db.Query(ctx, f.dialect.ClaimOutgoing(), w.owner, f.dialect.StringList(excluded),
		f.dialect.StringList(only), limit)
	if err != nil {
		w.claimFailed(err, false)
		return 0, err
	}
	defer rows.Close()
	before := len(w.envs)
	for rows.Next() {
		e, err := row.ScanOutgoing(rows, f.uuids)
		if err != nil {
			f.claimed.Add(int64(len(w.envs) - before))
			w.claimFailed(err, true)
			return len(w.envs) - before, fmt.Errorf("read a claimed envelope (the rest of the batch stays owned by node %d until its agent hands it back): %w", w.owner, err)
		}
		w.envs = append(w.envs, e)
	}
	n := len(w.envs) - before
	f.claimed.Add(int64(n))
	if err := rows.Err(); err != nil {
		w.claimFailed(err, n > 0)
		return n, fmt.Errorf("read claimed envelopes (the rest of the batch stays owned by node %d until its agent hands it back): %w", w.owner, err)
	}
	return n, nil
}

// claimFailed tells the node when a failed claim may have left envelopes marked with its id
// that this worker does not hold: the claim's answer was lost (not a statement error), or
// rows of a committed claim were left unread (stranded).
func (w *worker) claimFailed(err error, stranded bool) {
	if stranded || !w.f.dialect.IsStatementError(err) {
		w.node.ReportUnknownOutcome()
	}
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
			w.dead.add(e.ID, fmt.Sprintf("The destination %q cannot be mapped to a topic: %v", e.Destination, err), err, "")
			deadNow++
			if probe {
				f.breaker.probeDone(e.Destination)
			}
			continue
		}
		msg, err := e.ToMessage()
		if err != nil {
			w.dead.add(e.ID, fmt.Sprintf("The envelope cannot be read as a Watermill message: %v", err), err, "")
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
				w.dead.add(it.env.ID, fmt.Sprintf("Publishing to topic %q failed permanently", it.topic),
					it.err, it.msg.Metadata.Get(metadata.Source))
				f.deadLettered.Add(1)
			case kind == fault.KindTemporary:
				// The failure says nothing about the envelope (e.g. the broker connection was
				// lost): hand it back without counting an attempt; the breaker still counts it.
				w.release = append(w.release, it.env.ID)
			case it.env.Attempts+1 >= f.config.MaxAttempts:
				attempts := it.env.Attempts + 1
				w.dead.add(it.env.ID, fmt.Sprintf("Publishing to topic %q failed %d times (MaxAttempts %d)", it.topic, attempts, f.config.MaxAttempts),
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
// delay. What still fails stays queued for the next flush.
func (w *worker) flush(base context.Context) {
	delay := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := w.flushOnce(base)
		if err == nil {
			return
		}
		w.f.logger.Error("Cannot record relayed envelopes in the outbox table", err, watermill.LogFields{
			"worker": w.id, "attempt": attempt + 1,
		})
		if attempt >= flushRetries {
			return
		}
		time.Sleep(delay)
		delay *= 2
	}
}

func (w *worker) flushOnce(base context.Context) error {
	f := w.f
	d := f.dialect
	exec := func(query string, args ...any) error {
		ctx, cancel := context.WithTimeout(base, statementTimeout)
		defer cancel()
		_, err := f.db.Exec(ctx, query, args...)
		return err
	}
	if len(w.done) > 0 {
		if err := exec(d.DeleteOutgoing(), d.IDList(w.done)); err != nil {
			return fmt.Errorf("delete sent envelopes: %w", err)
		}
		w.done = w.done[:0]
	}
	if len(w.dead.ids) > 0 {
		dl := &w.dead
		if err := exec(d.DeadLetterOutgoing(), d.DeadLetterArgs(dl.ids, dl.explanation, dl.typ, dl.message, dl.text, dl.source)...); err != nil {
			return fmt.Errorf("move envelopes to the dead letters: %w", err)
		}
		f.logger.Info("Envelopes moved to the dead letters", watermill.LogFields{"count": len(dl.ids), "explanation": dl.explanation[0]})
		if f.onDeadLettered != nil {
			f.onDeadLettered(len(dl.ids))
		}
		dl.reset()
	}
	if len(w.retry) > 0 {
		if err := exec(d.ReleaseOutgoingFailed(), d.IDList(w.retry), w.owner); err != nil {
			return fmt.Errorf("hand back failed envelopes: %w", err)
		}
		w.retry = w.retry[:0]
	}
	if len(w.release) > 0 {
		if err := exec(d.ReleaseOutgoing(), d.IDList(w.release), w.owner); err != nil {
			return fmt.Errorf("hand back unsent envelopes: %w", err)
		}
		w.release = w.release[:0]
	}
	return nil
}
