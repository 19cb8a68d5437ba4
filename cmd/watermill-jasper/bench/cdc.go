package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/pgcluster"
)

// Implementation names of the logical-replication legs. They run on a server with wal_level
// = logical (OutboxConfig.CDCDSN, the DSN's own server when it is logical, or a private
// cluster), so the polling relay runs there too, as their baseline: the same server, the
// same run, the legs one after the other.
const (
	implCDC        = "ours by slot"
	implCDCPolling = "ours polling (same server)"
	implCDCRaw     = "bare slot reader (limit)"
	// implCDCTableLess is the slot's forwarder relaying the table-less outbox: the publisher
	// writes logical decoding messages (publisher.Config.TableLess), no row.
	implCDCTableLess = "ours table-less"
)

// onLogicalServer reports whether impl's legs ran on the logical-replication legs' server
// (which is not the server of the raw loops).
func onLogicalServer(impl string) bool {
	return impl == implCDC || impl == implCDCPolling || impl == implCDCRaw || impl == implCDCTableLess
}

// cdcClusterSettings are the postgresql.conf lines of the private cluster of the
// logical-replication legs: logical decoding, and the durability and memory settings of a
// stock server (pgcluster turns fsync off for the tests; a benchmark must not).
var cdcClusterSettings = []string{
	"wal_level = logical", "max_wal_senders = 10", "max_replication_slots = 10",
	"fsync = on", "full_page_writes = on", "shared_buffers = 128MB",
}

// cdcEnv is the env of the logical-replication legs, opened on first use and closed by
// e.close: on OutboxConfig.CDCDSN, else on the DSN's server when it runs wal_level =
// logical, else on a private cluster started for the benchmark (internal/pgcluster; it needs
// PostgreSQL's server programs) and removed when it ends.
func (e *env) cdcEnv(ctx context.Context) (*env, error) {
	if e.cdc != nil {
		return e.cdc, nil
	}
	dsn := e.cfg.CDCDSN
	var cluster *pgcluster.Cluster
	if dsn == "" {
		var level string
		if err := e.pool.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
			return nil, fmt.Errorf("bench: read wal_level: %w", err)
		}
		if level == "logical" {
			dsn = e.cfg.DSN
		} else {
			e.logf("logical replication legs: the server runs wal_level = %s; starting a private PostgreSQL cluster with wal_level = logical", level)
			var err error
			if cluster, err = pgcluster.New(ctx, pgcluster.Options{Settings: cdcClusterSettings}); err != nil {
				return nil, fmt.Errorf("bench: the logical-replication legs need a server with wal_level = logical (--cdc-dsn) or PostgreSQL's server programs to start one (or --skip-cdc): %w", err)
			}
			dsn = cluster.DSN()
		}
	}
	cfg := e.cfg
	cfg.DSN = dsn
	c, err := newEnv(ctx, cfg, e.progress)
	if err != nil {
		if cluster != nil {
			return nil, errors.Join(err, cluster.Close())
		}
		return nil, fmt.Errorf("%w (the logical-replication legs' --cdc-dsn; --skip-cdc skips them)", err)
	}
	c.legs, c.cluster, c.logger = e.legs, cluster, e.logger
	e.cdc = c
	return c, nil
}

// createSlot creates the publication and the slot of j's outbox (their default names), so
// that the slot sees every row written after it: a drain leg's prefill included.
func (j *jasperSchema) createSlot(ctx context.Context) error {
	if _, err := admin.CreateReplicationSlot(ctx, j.e.cfg.DSN, j.cfg, admin.ReplicationSlot{}); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// dropSlot drops the slot and the publication of j's outbox: a slot left behind would keep
// the server's write-ahead log forever.
func (j *jasperSchema) dropSlot() error {
	ctx, cancel := context.WithTimeout(context.Background(), runtimeStopTimeout)
	defer cancel()
	if _, err := admin.DropReplicationSlot(ctx, j.e.cfg.DSN, j.cfg, admin.ReplicationSlot{}); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// cdcPrefillTxRows is how many rows each transaction of the logical-replication legs'
// prefill commits: a backlog of many small transactions, as business transactions leave it,
// which the slot brings one transaction at a time (a single COPY of the whole backlog would
// be one transaction of Backlog rows).
const cdcPrefillTxRows = 10

// cdcLegs are the logical-replication legs of one run, in the order they run: each polling
// baseline right before the slot's leg of the same kind.
type cdcLegs struct {
	drains []outboxDrainLeg
	lats   []outboxLatLeg
	idles  []outboxIdleLeg
}

func (l cdcLegs) count() int { return len(l.drains) + len(l.lats) + len(l.idles) }

// cdcLegs are the logical-replication legs of e's config (none with SkipCDC).
func (e *env) cdcLegs() cdcLegs {
	if e.cfg.SkipCDC {
		return cdcLegs{}
	}
	polling := newOursOutbox(oursOptions{prefillTxRows: cdcPrefillTxRows})
	slot := newOursOutbox(oursOptions{replication: true, prefillTxRows: cdcPrefillTxRows})
	tableLess := newOursOutbox(oursOptions{replication: true, tableLess: true, prefillTxRows: cdcPrefillTxRows})
	return cdcLegs{
		drains: []outboxDrainLeg{
			{implCDCPolling, polling, sinkGoChannel, e.cfg.Backlog},
			{implCDC, slot, sinkGoChannel, e.cfg.Backlog},
			{implCDCTableLess, tableLess, sinkGoChannel, e.cfg.Backlog},
		},
		lats: []outboxLatLeg{
			{implCDCRaw, newRawSlotOutbox(), sinkGoChannel},
			{implCDCPolling, polling, sinkGoChannel},
			{implCDC, slot, sinkGoChannel},
			{implCDCTableLess, tableLess, sinkGoChannel},
		},
		idles: []outboxIdleLeg{{implCDC, slot}},
	}
}

// runCDC runs the logical-replication legs of one run on the cdc env into r.
func (e *env) runCDC(ctx context.Context, legs cdcLegs, r *runResult) error {
	if legs.count() == 0 {
		return nil
	}
	c, err := e.cdcEnv(ctx)
	if err != nil {
		return err
	}
	if err := c.runDrains(ctx, legs.drains, r); err != nil {
		return err
	}
	if err := c.runLatencies(ctx, legs.lats, r); err != nil {
		return err
	}
	return c.runIdles(ctx, legs.idles, r)
}

// rawSlotOutbox is the limit of the logical-replication latency leg, measured in the same
// run: the outbox's slot read by a bare reader (internal/logrepl) that hands every row's
// message to the sink as its transaction arrives and confirms it at once. No lock, no
// delete, no commit: the server's decoding, the stream and the sink alone. What a relay that
// follows a slot adds is the gap between its latency and this one.
type rawSlotOutbox struct{ *oursOutbox }

func newRawSlotOutbox() outboxFactory {
	ours := newOursOutbox(oursOptions{replication: true})
	return func(ctx context.Context, e *env) (outbox, error) {
		o, err := ours(ctx, e)
		if err != nil {
			return nil, err
		}
		return rawSlotOutbox{o.(*oursOutbox)}, nil
	}
}

// startRelay starts the bare reader of the outbox's slot, publishing to out.
func (o rawSlotOutbox) startRelay(ctx context.Context, out message.Publisher, owned bool) (relay, error) {
	cfg, err := logrepl.Config{Schema: o.js.cfg.Schema}.Normalized()
	var r *logrepl.Reader
	if err == nil {
		var conn *pgconn.PgConn
		if conn, err = logrepl.Dial(ctx, o.js.e.cfg.DSN); err == nil {
			if r, err = logrepl.Start(ctx, conn, cfg); err != nil {
				_ = conn.Close(context.WithoutCancel(ctx))
			}
		}
	}
	if err != nil {
		if owned {
			err = errors.Join(err, out.Close())
		}
		return nil, fmt.Errorf("bench: bare slot reader: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	rr := &rawSlotRelay{r: r, cancel: cancel, done: make(chan error, 1)}
	if owned {
		rr.out = out
	}
	go func() { rr.done <- rr.run(runCtx, out) }()
	return rr, nil
}

// rawSlotRelay is a running bare slot reader.
type rawSlotRelay struct {
	r      *logrepl.Reader
	cancel context.CancelFunc
	done   chan error
	out    message.Publisher // closed on stop when set
}

// run publishes the rows of every transaction of the slot to out, until ctx ends.
func (rr *rawSlotRelay) run(ctx context.Context, out message.Publisher) error {
	for {
		tx, err := rr.r.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("bench: bare slot reader: %w", err)
		}
		for _, rw := range tx.Rows {
			msg, err := rw.ToMessage()
			if err == nil {
				err = out.Publish(rw.Destination, msg)
			}
			if err != nil {
				return fmt.Errorf("bench: bare slot reader: row %s: %w", rw.ID, err)
			}
		}
		rr.r.Confirm(tx.EndLSN)
	}
}

// counts are not counted: the reader sends no statement.
func (rr *rawSlotRelay) counts() (int64, int64) { return -1, -1 }

func (rr *rawSlotRelay) stop() error {
	rr.cancel()
	errs := []error{<-rr.done, rr.r.Close()}
	if rr.out != nil {
		errs = append(errs, rr.out.Close())
	}
	return errors.Join(errs...)
}
