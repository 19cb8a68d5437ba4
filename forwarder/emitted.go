package forwarder

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// The table-less outbox (publisher.Config.TableLess, docs/relay-sources.md): envelopes written
// as logical decoding messages, with no row. The slot is the only place they are, so the
// source relays them before it confirms the slot past their transaction: in slot order, one
// batch at a time, and per partition key one message at a time (a key's next message waits
// for its predecessor's outcome). A failed publish is tried again after a back-off, from the
// slot's own copy, until it is sent, expires, or is moved to the dead letters (MaxAttempts, a
// permanent failure, an unreadable message), so that a killed relay's successor receives
// what was not confirmed again (at least once). Envelopes of destinations this forwarder
// does not relay (Config.Destinations) are written as rows, for the forwarder that does.

// emitted splits the emitted envelopes of txs into this forwarder's (returned, in slot
// order), the unreadable ones (dead) and the others' (rows).
func (fl *follower) emitted(txs []logrepl.Tx) (mine, dead, others []logrepl.Row) {
	for _, tx := range txs {
		for _, rw := range tx.Emitted {
			switch {
			case rw.Err != nil:
				dead = append(dead, rw)
			case !fl.f.takes(rw.Destination):
				others = append(others, rw)
			default:
				mine = append(mine, rw)
			}
		}
	}
	return mine, dead, others
}

// relayEmitted relays the emitted envelopes of txs and returns once every one is done with
// (sent, expired, dead-lettered, or written as a row for another forwarder), or ctx's error.
func (fl *follower) relayEmitted(ctx context.Context, txs []logrepl.Tx) error {
	mine, dead, others := fl.emitted(txs)
	if len(mine)+len(dead)+len(others) == 0 {
		return nil
	}
	fl.emittedN.Add(int64(len(mine) + len(dead) + len(others)))
	f := fl.f
	if len(others) > 0 {
		envs := make([]row.Envelope, len(others))
		for i := range others {
			envs[i] = others[i].Envelope
		}
		if err := fl.persist(ctx, "write emitted envelopes of other forwarders' destinations as rows", func(ctx context.Context) error {
			return f.store.InsertEnvelopes(ctx, store.InsertParams{Outgoing: envs, NotifyOutgoing: true})
		}); err != nil {
			return err
		}
		fl.handover.Add(int64(len(envs)))
	}
	for _, rw := range dead {
		typ, msg, chain := fault.Describe(rw.Err)
		reason := store.Reason{Explanation: "The emitted envelope cannot be read: " + rw.Err.Error(), ExceptionType: typ, ExceptionMessage: msg, ExceptionText: chain}
		if err := fl.deadLetter(ctx, rw.Envelope, reason); err != nil {
			return err
		}
		f.deadLettered.Add(1)
	}
	if len(mine) == 0 {
		return nil
	}
	var w *worker
	select {
	case w = <-fl.workers:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { fl.workers <- w }()
	pending := make([]row.Envelope, len(mine))
	for i := range mine {
		pending[i] = mine[i].Envelope
	}
	failures := 0
	for len(pending) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		resolved, anyFailed, err := fl.emittedRound(ctx, w, pending)
		if err != nil {
			return err
		}
		pending = removeIDs(pending, resolved)
		if !anyFailed && len(resolved) > 0 {
			failures = 0
			continue
		}
		// A failure, or nothing published (a paused destination waits for its probe; the
		// forwarder is stopping): wait for the back-off, or for the end of a pause when that
		// comes first.
		if anyFailed {
			failures++
		}
		wait := fl.retry.Delay(max(failures, 1))
		if t, ok := f.breaker.nextProbe(); ok {
			wait = min(wait, max(time.Until(t), time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	return nil
}

// emittedRound publishes, at once, every pending envelope without a partition key and the
// first pending envelope of each key, and records their outcomes: it returns the ids done
// with (sent, expired, dead-lettered) and whether any publish failed. A failed envelope
// counts an attempt (in pending) unless the failure was temporary. The circuit breaker
// applies as to rows: a paused destination's envelopes wait (and hold their keys back),
// except one, its probe, once the pause is over.
func (fl *follower) emittedRound(ctx context.Context, w *worker, pending []row.Envelope) (resolved map[uuid.UUID]bool, anyFailed bool, err error) {
	f := fl.f
	defer w.reset()
	paused := map[string]bool{}
	for _, d := range f.breaker.excluded(nil) {
		paused[d] = true
	}
	probing := map[string]bool{} // destinations this round probes: whether its probe is taken
	if len(paused) > 0 {
		for _, d := range f.breaker.takeProbes(time.Now(), nil) {
			probing[d] = false
		}
	}
	keys := map[string]bool{}
	var regular []row.Envelope
	for _, e := range pending {
		if e.PartitionKey != "" {
			if keys[e.PartitionKey] {
				continue // behind an earlier envelope of its key
			}
			keys[e.PartitionKey] = true
		}
		if paused[e.Destination] {
			if taken, ok := probing[e.Destination]; ok && !taken {
				probing[e.Destination] = true
				w.envs = append(w.envs, e) // the probes go first (w.nProbes)
			}
			continue
		}
		regular = append(regular, e)
	}
	for d, taken := range probing {
		if !taken {
			f.breaker.probeDone(d) // nothing of it here: the polling path probes it
		}
	}
	w.nProbes = len(w.envs)
	w.envs = append(w.envs, regular...)
	w.process()
	resolved = make(map[uuid.UUID]bool, len(w.envs))
	for _, id := range w.done {
		resolved[id] = true
	}
	failedIDs := map[uuid.UUID]bool{}
	for i := range w.items {
		if w.items[i].result == failed {
			anyFailed = true
			failedIDs[w.items[i].env.ID] = true
		}
	}
	if len(w.dead) > 0 {
		byID := make(map[uuid.UUID]row.Envelope, len(w.envs))
		for _, e := range w.envs {
			byID[e.ID] = e
		}
		for _, d := range w.dead {
			e := byID[d.ID]
			if failedIDs[e.ID] {
				e.Attempts++ // the failed publish that ends it, as the rows' dead letters count it
			}
			if err := fl.deadLetter(ctx, e, d.Reason); err != nil {
				return nil, false, err
			}
			resolved[d.ID] = true
		}
	}
	retry := make(map[uuid.UUID]bool, len(w.retry))
	for _, id := range w.retry {
		retry[id] = true
	}
	for i := range pending {
		if retry[pending[i].ID] {
			pending[i].Attempts++
		}
	}
	return resolved, anyFailed, nil
}

// deadLetter writes an emitted envelope to the dead letters (its own statement; tried again
// after a failure until ctx ends).
func (fl *follower) deadLetter(ctx context.Context, e row.Envelope, r store.Reason) error {
	err := fl.persist(ctx, "move an emitted envelope to the dead letters", func(ctx context.Context) error {
		return fl.f.store.InsertDeadLetter(ctx, e, r)
	})
	if err == nil {
		fl.f.logger.Info("Emitted envelope moved to the dead letters", watermill.LogFields{"id": e.ID.String(), "explanation": r.Explanation})
		if fl.f.onDeadLettered != nil {
			fl.f.onDeadLettered(1)
		}
	}
	return err
}

// persist runs a statement that must succeed before the slot is confirmed past the envelopes
// it records, trying again after a back-off until it does or ctx ends.
func (fl *follower) persist(ctx context.Context, what string, op func(ctx context.Context) error) error {
	for failures := 1; ; failures++ {
		sctx, cancel := context.WithTimeout(ctx, statementTimeout)
		err := op(sctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fl.f.logger.Error("Cannot "+what+"; trying again", err, watermill.LogFields{"slot": fl.cfg.Slot, "retry_in": fl.retry.Delay(failures).String()})
		if err := fl.retry.Sleep(ctx, failures); err != nil {
			return err
		}
	}
}

// removeIDs returns envs without the ids in drop, in order (reusing envs' array).
func removeIDs(envs []row.Envelope, drop map[uuid.UUID]bool) []row.Envelope {
	out := envs[:0]
	for _, e := range envs {
		if !drop[e.ID] {
			out = append(out, e)
		}
	}
	return out
}
