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
// transactions, skipping rows another relay or a .NET Jasper node holds, claimed or already
// deleted), published, deleted, and the batch committed before the slot's position is
// confirmed. A row it did not send (skipped, failed, behind an earlier row of its partition
// key, unreadable) stays in the table, and the polling path of the same forwarder relays it:
// that is the handover, and why nothing falls between the two. The polling path also relays
// what was waiting before the slot existed (at start) and what the agent hands back; it runs
// on those wake-ups only, never on a timer while the slot streams. When the slot cannot be
// read (missing, invalidated, the connection lost), the forwarder polls as usual and tries the
// slot again every RetryInterval.
//
// Several forwarders may name one slot: one streams it, the others stand by (and poll only
// when woken) and take it over within RetryInterval of the active one's end (PostgreSQL lets
// one reader stream a slot at a time).
type LogicalReplication struct {
	// DSN is a PostgreSQL connection string (URL or key=value) of a role with the REPLICATION
	// attribute, to the database of the outbox; "replication=database" is added. Required.
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
	// Handover the rows left to the polling path (skipped, unsent, unreadable).
	Transactions, Rows, Handover int64
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
	dsn   string
	lr    LogicalReplication
	retry backoff.Policy
	w     *worker

	streaming           atomic.Bool
	reader              atomic.Pointer[logrepl.Reader]
	oldest              atomic.Int64 // unix nanos of the commit of the oldest unconfirmed transaction; 0: none
	txs, rows, handover atomic.Int64
	mu                  sync.Mutex
	lastErr             string
	ids                 []uuid.UUID
}

// newFollower validates the source of schema's outbox.
func newFollower(f *Forwarder, lr LogicalReplication, schemaName string) (*follower, error) {
	if strings.TrimSpace(lr.DSN) == "" {
		return nil, fmt.Errorf("%w: LogicalReplication.DSN is required (a role with REPLICATION, to the outbox's database)", ErrInvalidConfig)
	}
	dsn, err := replicationDSN(lr.DSN)
	if err != nil {
		return nil, err
	}
	cfg, err := logrepl.Config{Schema: schemaName, Slot: lr.Slot, Publication: lr.Publication}.Normalized()
	if err != nil {
		return nil, fmt.Errorf("%w: LogicalReplication: %w", ErrInvalidConfig, err)
	}
	if lr.RetryInterval <= 0 {
		lr.RetryInterval = DefaultReplicationRetryInterval
	}
	return &follower{
		f: f, cfg: cfg, dsn: dsn, lr: lr,
		retry: backoff.Policy{Initial: lr.RetryInterval, Max: max(lr.RetryInterval, time.Minute)},
	}, nil
}

// replicationDSN adds replication=database to a URL or key=value DSN.
func replicationDSN(dsn string) (string, error) {
	dsn = strings.TrimSpace(dsn)
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		if strings.Contains(dsn, "replication=") {
			return dsn, nil
		}
		return dsn + sep + "replication=database", nil
	case strings.Contains(dsn, "://"):
		return "", fmt.Errorf("%w: LogicalReplication.DSN must be a postgres:// URL or key=value pairs", ErrInvalidConfig)
	case strings.Contains(dsn, "replication="):
		return dsn, nil
	}
	return dsn + " replication=database", nil
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
	conn, err := logrepl.Dial(ctx, fl.dsn)
	if err != nil {
		return err
	}
	if fl.lr.Create {
		if _, err := logrepl.Setup(ctx, conn, fl.cfg); err != nil {
			_ = conn.Close(context.WithoutCancel(ctx))
			return err
		}
	}
	r, err := logrepl.Start(ctx, conn, fl.cfg)
	if errors.Is(err, logrepl.ErrSlotInUse) {
		f.logger.Info("Replication slot in use by another relay: standing by", watermill.LogFields{"slot": fl.cfg.Slot, "error": err.Error()})
		r, err = logrepl.WaitForSlot(ctx, conn, fl.cfg, fl.lr.RetryInterval)
	}
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return err
	}
	defer func() { _ = r.Close() }()
	fl.reader.Store(r)
	fl.streaming.Store(true)
	fl.setErr(nil)
	f.logger.Info("Following the outbox through the replication slot", watermill.LogFields{"slot": fl.cfg.Slot, "pid": r.PID()})
	// What was committed before the slot's position (and while no relay streamed it) is the
	// polling path's: drain it once.
	f.signal()
	var txs []logrepl.Tx
	for {
		tx, err := r.Next(ctx)
		if err != nil {
			return err
		}
		txs = append(txs[:0], tx)
		fl.oldest.Store(tx.CommitTime.UnixNano())
		rows := len(tx.Rows)
		for rows < f.config.BatchSize {
			next, ok := r.TryNext()
			if !ok {
				break
			}
			txs = append(txs, next)
			rows += len(next.Rows)
		}
		fl.txs.Add(int64(len(txs)))
		fl.rows.Add(int64(rows))
		fl.relay(ctx, txs)
		// Everything of these transactions was sent and deleted, or is in the table for the
		// polling path: the slot may forget them.
		r.Confirm(txs[len(txs)-1].EndLSN)
		fl.oldest.Store(0)
		clear(txs)
	}
}

// relay sends the rows of txs in one batch (commit order between batches; within a batch
// the rows of one partition key are sent one at a time, the later ones by the polling path)
// and wakes the polling path for what it left.
func (fl *follower) relay(ctx context.Context, txs []logrepl.Tx) {
	f := fl.f
	ids := fl.ids[:0]
	wanted := 0
	for _, tx := range txs {
		for i := range tx.Rows {
			rw := &tx.Rows[i]
			if !f.takes(rw.Destination) {
				continue // not this forwarder's: nothing to hand over
			}
			wanted++
			if rw.Err != nil || rw.OwnerID != 0 {
				continue // unreadable here, or owned by a node: the polling path's
			}
			ids = append(ids, rw.ID)
		}
	}
	fl.ids = ids
	sent := 0
	if len(ids) > 0 {
		lock := func(base context.Context, ops store.Ops) (int, error) {
			excluded := f.breaker.excluded(fl.w.excluded[:0])
			fl.w.excluded = excluded
			return fl.w.lockInto(base, ops, store.LockOutgoingParams{IDs: ids, Exclude: excluded, Only: f.config.Destinations})
		}
		if _, _, err := fl.w.relay(context.WithoutCancel(ctx), lock); err != nil {
			f.logger.Error("Relaying a batch of the replication slot failed; the polling path relays its envelopes", err, watermill.LogFields{"slot": fl.cfg.Slot})
		} else {
			sent = fl.w.resolved
		}
	}
	if left := wanted - sent; left > 0 {
		fl.handover.Add(int64(left))
		f.signal()
	}
	clear(fl.ids)
}

// stats reads the source's figures.
func (fl *follower) stats() ReplicationStats {
	s := ReplicationStats{
		Slot: fl.cfg.Slot, Streaming: fl.streaming.Load(),
		Transactions: fl.txs.Load(), Rows: fl.rows.Load(), Handover: fl.handover.Load(),
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

// following reports whether the forwarder streams its replication slot now: the polling
// path then runs on wake-ups only.
func (f *Forwarder) following() bool { return f.follower != nil && f.follower.streaming.Load() }

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
