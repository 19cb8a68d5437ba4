package forwarder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/internal/backoff"
	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// LogicalReplication makes a forwarder follow the outbox through a PostgreSQL logical
// replication slot instead of polling it (docs/relay-sources.md): the committed inserts into
// jasper_outgoing_envelopes arrive from the write-ahead log, in commit order, and the
// forwarder issues no statement while the outbox is idle.
//
// Every row it was told of is locked by primary key (one statement per batch of
// transactions, at most BatchSize rows, skipping rows another relay or a .NET Jasper node
// holds, claimed or already deleted), published, deleted, and the batch committed; Workers
// batches run at once, and the slot's position is confirmed up to the batches committed in
// slot order. A row it did not send (skipped, failed, behind an earlier row of its partition
// key, unreadable) stays in the table, and the polling path of the same forwarder relays it:
// that is the handover, and why nothing falls between the two. The polling path also relays
// what was waiting before the slot existed (at start), what the agent hands back or finds
// unowned, and a backlog (a full batch from the slot wakes it; the slot is not read while its
// batches come back full); it runs on those wake-ups only, never on a timer or a notification
// while the slot streams. When the slot cannot be read (missing, invalidated, the connection
// lost), the forwarder polls as usual and tries the slot again every RetryInterval.
//
// The slot also brings the table-less outbox (publisher.Config.TableLess): envelopes written
// as logical decoding messages, with no row. The source publishes them before it confirms
// their transactions, per partition key one at a time, and tries a failed one again from the
// slot after a back-off until it is sent or dead-lettered (forwarder/emitted.go).
//
// Several forwarders may name one slot: one streams it, the others stand by (polling only
// when woken, as the streaming one does) and take it over within RetryInterval of the active
// one's end (PostgreSQL lets one reader stream a slot at a time); the one that takes over
// first drains what the table holds.
type LogicalReplication struct {
	// DSN is a PostgreSQL connection string (URL or key=value) of a role with the REPLICATION
	// attribute, to the database of the outbox; the connection is opened with
	// replication=database. Required.
	DSN string
	// Slot is the logical replication slot (plugin pgoutput). Default "wj_outbox_<schema>".
	Slot string
	// Publication is the publication of the outbox table. Default "wj_outbox_<schema>".
	Publication string
	// Create creates the publication and the slot when they are missing (the role must own
	// the outbox table). Default false: create them beforehand (watermill-jasper slot create),
	// and a missing one is refused with a line naming it.
	Create bool
	// RetryInterval is how often a stand-by tries to take the slot, and the first wait before
	// trying the slot again after an error (doubling up to a minute). Default 1s.
	RetryInterval time.Duration
}

// DefaultReplicationRetryInterval is LogicalReplication.RetryInterval's default.
const DefaultReplicationRetryInterval = time.Second

// ReplicationStats describe a forwarder's logical-replication source.
type ReplicationStats struct {
	// Slot is the slot's name.
	Slot string
	// Streaming reports whether this forwarder streams the slot now (false: standing by, or
	// polling after an error).
	Streaming bool
	// Transactions counts the transactions received from the slot; Rows their outbox rows;
	// Emitted their envelopes without a row (the table-less outbox, publisher.Config.TableLess);
	// Handover the rows left to the polling path (skipped, unsent, unreadable) and the emitted
	// envelopes of other forwarders' destinations written as rows.
	Transactions, Rows, Emitted, Handover int64
	// LagBytes is how far the confirmed position is behind the server's write-ahead log, as
	// the server last told the stream (0 when not streaming).
	LagBytes int64
	// LagSeconds is how long ago the oldest transaction received and not yet confirmed
	// committed (0 when caught up or not streaming).
	LagSeconds float64
	// LastError is the last error of the source ("" after it streamed again).
	LastError string
}

// follower is a forwarder's logical-replication source.
type follower struct {
	f     *Forwarder
	cfg   logrepl.Config
	lr    LogicalReplication
	retry backoff.Policy
	// workers are the source's free workers: Config.Workers batches of the slot are relayed
	// at once, so that one batch's commit does not hold up the next one's publishes.
	workers  chan *worker
	inflight sync.WaitGroup

	streaming           atomic.Bool
	standingBy          atomic.Bool // waiting for the slot another relay streams
	reader              atomic.Pointer[logrepl.Reader]
	oldest              atomic.Int64 // unix nanos of the commit of the oldest unconfirmed transaction; 0: none
	txs, rows, handover atomic.Int64
	emittedN            atomic.Int64
	mu                  sync.Mutex
	lastErr             string

	// Guarded by bmu: the batches handed to the workers, in slot order (the slot is
	// confirmed up to the end of the longest finished prefix), and the rows not locked yet.
	bmu     sync.Mutex
	batches []*slotBatch
	pending []uuid.UUID // rows not locked yet (sweep)
	sweeps  int         // tries of the pending rows so far
	sweepAt time.Time   // when the pending rows are tried next
}

// slotBatch is a batch of the slot's transactions on its way through a worker.
type slotBatch struct {
	end    logrepl.LSN // the end of its last transaction
	commit time.Time   // the commit of its first transaction
	done   bool
}

// newFollower validates the source of schema's outbox.
func newFollower(f *Forwarder, lr LogicalReplication, schemaName string) (*follower, error) {
	if strings.TrimSpace(lr.DSN) == "" {
		return nil, fmt.Errorf("%w: LogicalReplication.DSN is required (a role with REPLICATION, to the outbox's database)", ErrInvalidConfig)
	}
	if _, err := pgconn.ParseConfig(lr.DSN); err != nil {
		return nil, fmt.Errorf("%w: LogicalReplication.DSN: %w", ErrInvalidConfig, err) // pgconn redacts the password
	}
	cfg, err := logrepl.Config{Schema: schemaName, Slot: lr.Slot, Publication: lr.Publication}.Normalized()
	if err != nil {
		return nil, fmt.Errorf("%w: LogicalReplication: %w", ErrInvalidConfig, err)
	}
	if lr.RetryInterval <= 0 {
		lr.RetryInterval = DefaultReplicationRetryInterval
	}
	return &follower{
		f: f, cfg: cfg, lr: lr,
		retry: backoff.Policy{Initial: lr.RetryInterval, Max: max(lr.RetryInterval, time.Minute)},
	}, nil
}

// run follows the slot until ctx ends, falling back to polling while it cannot.
func (fl *follower) run(ctx context.Context) {
	f := fl.f
	failures := 0
	for ctx.Err() == nil {
		err := fl.follow(ctx)
		wasStreaming := fl.streaming.Swap(false)
		fl.reader.Store(nil)
		fl.oldest.Store(0)
		if ctx.Err() != nil {
			return
		}
		// Poll as usual until the slot streams again.
		select {
		case f.busy <- struct{}{}:
		default:
		}
		f.signal()
		if wasStreaming {
			failures = 0
		}
		failures++
		fl.setErr(err)
		f.logger.Error("Cannot follow the outbox through the replication slot; polling it until the slot can be read again", err, watermill.LogFields{
			"slot": fl.cfg.Slot, "retry_in": fl.retry.Delay(failures).String(),
		})
		select {
		case <-ctx.Done():
			return
		case <-time.After(fl.retry.Delay(failures)):
		}
	}
}

func (fl *follower) setErr(err error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if err == nil {
		fl.lastErr = ""
		return
	}
	fl.lastErr = err.Error()
}

// follow streams the slot until an error or ctx's end.
func (fl *follower) follow(ctx context.Context) error {
	f := fl.f
	conn, err := logrepl.Dial(ctx, fl.lr.DSN)
	if err != nil {
		return err
	}
	if fl.lr.Create {
		if _, err := logrepl.Setup(ctx, conn, fl.cfg); err != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
			return err
		}
	}
	// What was committed before the slot's position (before it existed, or while no relay
	// streamed it) is the polling path's: drained before the stream starts.
	if err := fl.awaitDrained(ctx); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return err
	}
	r, err := logrepl.Start(ctx, conn, fl.cfg)
	if errors.Is(err, logrepl.ErrSlotInUse) {
		f.logger.Info("Replication slot in use by another relay: standing by", watermill.LogFields{"slot": fl.cfg.Slot, "error": err.Error()})
		fl.standingBy.Store(true)
		r, err = logrepl.WaitForSlot(ctx, conn, fl.cfg, fl.lr.RetryInterval)
		fl.standingBy.Store(false)
		if err == nil {
			// Taken over: what the relay that streamed it left is in the table.
			f.signal()
		}
	}
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return err
	}
	defer func() {
		fl.inflight.Wait() // their outcomes are confirmed on this stream
		_ = r.Close()
	}()
	fl.reader.Store(r)
	fl.bmu.Lock()
	// The polling path took what the last stream left.
	fl.batches, fl.pending, fl.sweeps = fl.batches[:0], fl.pending[:0], 0
	fl.bmu.Unlock()
	fl.streaming.Store(true)
	fl.setErr(nil)
	f.logger.Info("Following the outbox through the replication slot", watermill.LogFields{"slot": fl.cfg.Slot, "pid": r.PID()})
	var txs []logrepl.Tx
	for {
		if f.draining.Load() {
			// The polling path works through a backlog: the slot is not read meanwhile (its
			// decoding would take the machine from that drain); what it brings afterwards
			// that the drain sent is skipped.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(drainingRecheck):
			}
			continue
		}
		// Wait for the next transaction; with rows pending, only until their sweep is due
		// (with batches in flight, which may leave rows pending, a moment at a time).
		fl.bmu.Lock()
		wait := time.Duration(-1)
		switch {
		case len(fl.pending) > 0:
			wait = max(time.Until(fl.sweepAt), 0)
		case len(fl.batches) > 0:
			wait = sweepDelays[0]
		}
		fl.bmu.Unlock()
		var tx logrepl.Tx
		var err error
		if wait >= 0 {
			nctx, cancel := context.WithTimeout(ctx, wait)
			tx, err = r.Next(nctx)
			cancel()
			if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				if fl.sweepDue() {
					fl.sweep(ctx)
				}
				continue
			}
		} else {
			tx, err = r.Next(ctx)
		}
		if err != nil {
			return err
		}
		txs = append(txs[:0], tx)
		rows, size := len(tx.Rows), tx.Size()
		for size < f.config.BatchSize {
			next, ok := r.TryNext()
			if !ok {
				break
			}
			txs = append(txs, next)
			rows += len(next.Rows)
			size += next.Size()
		}
		fl.txs.Add(int64(len(txs)))
		fl.rows.Add(int64(rows))
		// The table-less outbox's envelopes are only in the slot: relayed first, and the
		// batch is confirmed (below) only after them. Meanwhile the lag counts from this
		// batch's first commit.
		fl.oldest.CompareAndSwap(0, tx.CommitTime.UnixNano())
		if err := fl.relayEmitted(ctx, txs); err != nil {
			clear(txs)
			return err
		}
		if rows >= f.config.BatchSize {
			// A full batch: the slot is behind the outbox (a backlog, or more than one
			// relay can send). The polling path's workers help; while they drain, the slot
			// waits (above).
			f.signal()
		}
		b := &slotBatch{end: txs[len(txs)-1].EndLSN, commit: tx.CommitTime}
		ids := fl.ids(txs)
		clear(txs)
		fl.bmu.Lock()
		fl.batches = append(fl.batches, b)
		fl.bmu.Unlock()
		fl.oldest.CompareAndSwap(0, b.commit.UnixNano())
		if len(ids) == 0 || f.draining.Load() {
			// Nothing of this forwarder's, or the polling path's drain takes them (the
			// sweep after it relays what it left).
			fl.finish(r, b, ids)
			continue
		}
		var w *worker
		select {
		case w = <-fl.workers:
		case <-ctx.Done():
			fl.finish(r, b, ids)
			return ctx.Err()
		}
		fl.inflight.Add(1)
		go func() {
			defer fl.inflight.Done()
			left := fl.lockAndRelayAll(ctx, w, ids)
			fl.workers <- w
			fl.finish(r, b, left)
		}()
	}
}

// awaitDrained wakes the polling path and returns once a batch of it has finished since, and
// the last one came back less than full: what the table held when the source was about to
// stream (a backlog left while no relay streamed the slot, or before the slot existed; the
// slot exists by then, so whatever is committed later is the slot's) has been sent by the
// polling path's parallel workers. The stream starts only then, because the
// slot's sender would decode the same rows on the same machine meanwhile, which slows that
// drain; the slot brings them afterwards, and they are skipped, as they are gone. A batch
// that fails ends the wait too (the slot then brings what is committed after its position,
// and the polling path what it is woken for, as always).
func (fl *follower) awaitDrained(ctx context.Context) error {
	f := fl.f
	polls := f.polls.Load()
	f.signal()
	for f.polls.Load() == polls || f.draining.Load() {
		// No event tells a batch's end to the source: look every drainingRecheck.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(drainingRecheck):
		}
	}
	return nil
}

// sweepDue reports whether pending rows wait and their sweep is due.
func (fl *follower) sweepDue() bool {
	fl.bmu.Lock()
	defer fl.bmu.Unlock()
	return len(fl.pending) > 0 && !time.Now().Before(fl.sweepAt)
}

// finish records that batch b is done (left: its rows not locked, to sweep) and confirms the
// slot up to the end of the batches done in slot order: everything of them was sent and
// deleted, or is in the table for the polling path.
func (fl *follower) finish(r *logrepl.Reader, b *slotBatch, left []uuid.UUID) {
	fl.bmu.Lock()
	b.done = true
	if len(left) > 0 {
		if len(fl.pending) == 0 {
			fl.sweeps, fl.sweepAt = 0, time.Now().Add(sweepDelays[0])
		}
		fl.pending = append(fl.pending, left...)
	}
	var end logrepl.LSN
	n := 0
	for n < len(fl.batches) && fl.batches[n].done {
		end = fl.batches[n].end
		n++
	}
	fl.batches = fl.batches[:copy(fl.batches, fl.batches[n:])]
	oldest := int64(0)
	if len(fl.batches) > 0 {
		oldest = fl.batches[0].commit.UnixNano()
	}
	fl.oldest.Store(oldest)
	fl.bmu.Unlock()
	if n > 0 {
		r.Confirm(end)
	}
}

// ids are the rows of txs this forwarder sends through the slot. Rows of other forwarders'
// destinations are not its; unreadable rows and rows a node owns are handed to the polling
// path at once.
func (fl *follower) ids(txs []logrepl.Tx) []uuid.UUID {
	f := fl.f
	var ids []uuid.UUID
	other := 0
	for _, tx := range txs {
		for i := range tx.Rows {
			rw := &tx.Rows[i]
			if !f.takes(rw.Destination) {
				continue // not this forwarder's
			}
			if rw.Err != nil || rw.OwnerID != 0 {
				other++ // unreadable here, or owned by a node: the polling path's
				continue
			}
			ids = append(ids, rw.ID)
		}
	}
	if other > 0 {
		fl.handover.Add(int64(other))
		f.signal()
	}
	return ids
}

// lockAndRelayAll is lockAndRelay of ids BatchSize at a time, on w (a transaction may bring
// any number of rows).
func (fl *follower) lockAndRelayAll(ctx context.Context, w *worker, ids []uuid.UUID) (left []uuid.UUID) {
	for len(ids) > 0 {
		n := min(len(ids), fl.f.config.BatchSize)
		left = append(left, fl.lockAndRelay(ctx, w, ids[:n])...)
		ids = ids[n:]
	}
	return left
}

// lockAndRelay relays, in one batch, those of ids it can lock, and returns the others.
func (fl *follower) lockAndRelay(ctx context.Context, w *worker, ids []uuid.UUID) (left []uuid.UUID) {
	f := fl.f
	if len(ids) == 0 {
		return nil
	}
	locked := map[uuid.UUID]bool{}
	lock := func(base context.Context, ops store.Ops) (int, error) {
		excluded := f.breaker.excluded(w.excluded[:0])
		w.excluded = excluded
		n, err := w.lockInto(base, ops, store.LockOutgoingParams{IDs: ids, Exclude: excluded, Only: f.config.Destinations})
		for _, e := range w.envs {
			locked[e.ID] = true
		}
		return n, err
	}
	if _, _, err := w.relay(context.WithoutCancel(ctx), lock); err != nil {
		f.logger.Error("Relaying a batch of the replication slot failed; its envelopes are tried again", err, watermill.LogFields{"slot": fl.cfg.Slot})
		clear(locked) // rolled back: all still there
	}
	for _, id := range ids {
		if !locked[id] {
			left = append(left, id)
		}
	}
	return left
}

// sweepDelays are the waits before each try of the pending rows. The first is short: the
// slot may bring a transaction a moment before its commit is visible to other sessions
// (PostgreSQL flushes the commit record, which wakes the slot's sender, before it marks the
// transaction committed for new snapshots), so a lock by id can miss a row that is there. A
// row another relay holds is normally sent (and gone) within a batch's time; a loaded server
// can take longer to show either, hence the later tries. What is still
// missed after the last try is handed to the polling path: one claim finds whatever of it is
// left, and the agent's recovery pass wakes that path again while unowned rows remain
// (durability.Agent.RecoverUnowned).
var sweepDelays = []time.Duration{2 * time.Millisecond, 20 * time.Millisecond, 100 * time.Millisecond, 500 * time.Millisecond}

// drainingRecheck is how often the replication source looks whether the polling path's
// drain of a backlog is done (no statement, no slot reading until then).
const drainingRecheck = 10 * time.Millisecond

// sweep tries the pending rows again: those it can lock now are relayed; rows that are gone
// (sent or dead-lettered by another relay) are never returned and are dropped after the last
// try, with a wake-up of the polling path.
func (fl *follower) sweep(ctx context.Context) {
	if fl.f.draining.Load() {
		fl.bmu.Lock()
		fl.sweepAt = time.Now().Add(drainingRecheck) // its drain may take them all
		fl.bmu.Unlock()
		return
	}
	var w *worker
	select {
	case w = <-fl.workers:
	case <-ctx.Done():
		return
	}
	fl.bmu.Lock()
	ids := fl.pending
	fl.pending = nil
	fl.bmu.Unlock()
	left := fl.lockAndRelayAll(ctx, w, ids)
	fl.workers <- w
	fl.bmu.Lock()
	defer fl.bmu.Unlock()
	fl.pending = append(left, fl.pending...) // and what batches left meanwhile
	fl.sweeps++
	switch {
	case len(fl.pending) == 0:
		fl.sweeps = 0
	case fl.sweeps >= len(sweepDelays):
		fl.handover.Add(int64(len(fl.pending)))
		fl.pending, fl.sweeps = fl.pending[:0], 0
		fl.f.signal()
	default:
		fl.sweepAt = time.Now().Add(sweepDelays[fl.sweeps])
	}
}

// stats reads the source's figures.
func (fl *follower) stats() ReplicationStats {
	s := ReplicationStats{
		Slot: fl.cfg.Slot, Streaming: fl.streaming.Load(),
		Transactions: fl.txs.Load(), Rows: fl.rows.Load(), Emitted: fl.emittedN.Load(), Handover: fl.handover.Load(),
	}
	if r := fl.reader.Load(); r != nil && s.Streaming {
		if end, conf := r.ServerWALEnd(), max(r.Confirmed(), r.Reported()); end > conf && conf > 0 {
			s.LagBytes = int64(end - conf)
		}
		if t := fl.oldest.Load(); t > 0 {
			s.LagSeconds = max(time.Since(time.Unix(0, t)).Seconds(), 0)
		}
	}
	fl.mu.Lock()
	s.LastError = fl.lastErr
	fl.mu.Unlock()
	return s
}

// ReplicationStats describes the forwarder's logical-replication source; ok is false when it
// has none (LogicalReplication not set).
func (f *Forwarder) ReplicationStats() (s ReplicationStats, ok bool) {
	if f.follower == nil {
		return ReplicationStats{}, false
	}
	return f.follower.stats(), true
}

// following reports whether the forwarder streams its replication slot, or stands by while
// another relay streams it: the polling path then runs on wake-ups only (the streaming relay
// polls what its slot does not bring; a stand-by that takes the slot over drains what is
// left first).
func (f *Forwarder) following() bool {
	return f.follower != nil && (f.follower.streaming.Load() || f.follower.standingBy.Load())
}

// takes reports whether destination is one of Config.Destinations (all when empty).
func (f *Forwarder) takes(destination string) bool {
	if len(f.config.Destinations) == 0 {
		return true
	}
	for _, d := range f.config.Destinations {
		if prefix, ok := strings.CutSuffix(d, "*"); ok {
			if strings.HasPrefix(destination, prefix) {
				return true
			}
		} else if d == destination {
			return true
		}
	}
	return false
}
