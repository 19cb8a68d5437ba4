package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/publisher"
)

// oursOptions vary how our outbox is used.
type oursOptions struct {
	// notify publishes with publisher.NotifyEveryPublish (default: NotifyCoalesced).
	notify bool
	// sharedPublisher publishes through the runtime's Publisher (built on the pool), joining
	// each business transaction with publisher.WithTx, instead of a publisher per
	// transaction (rt.TxPublisher(sql.TxFromPgx(tx))).
	sharedPublisher bool
	// replication relays through a logical replication slot (forwarder.LogicalReplication),
	// created with the outbox (before any prefill) and dropped with it.
	replication bool
	// tableLess publishes logical decoding messages instead of rows (publisher.Config.TableLess;
	// with replication): the prefill emits them too.
	tableLess bool
	// prefillTxRows, when positive, makes a drain leg's prefill commit that many rows per
	// transaction (jasperSchema.prefillInTxs) instead of one COPY of the whole backlog.
	prefillTxRows int
}

// runtimeStopTimeout bounds the stop of a runtime (forwarders, subscribers, agent, node).
const runtimeStopTimeout = 40 * time.Second

// stopRuntime stops rt within runtimeStopTimeout, also when the leg's context is done.
func stopRuntime(rt *jasper.Runtime) error {
	ctx, cancel := context.WithTimeout(context.Background(), runtimeStopTimeout)
	defer cancel()
	return rt.Stop(ctx)
}

// oursOutbox is this library's outbox in a fresh migrated schema, used as a service uses it:
// a jasper.Runtime on database.FromPgx(pool) whose publishers write in the business
// transaction, and, for the relay legs, a runtime with one forwarder (its default
// configuration) relaying to the sink.
type oursOutbox struct {
	js   *jasperSchema
	opts oursOptions
	// pubRT hands out the publishers while no relay runs (the publish legs); it is never
	// started (publishers need no Start).
	pubRT *jasper.Runtime
	// relayRT is the runtime of the relay once started: the business transactions of the
	// latency legs take their publishers from it, as one process has one runtime.
	relayRT atomic.Pointer[jasper.Runtime]
}

func newOursOutbox(opts oursOptions) outboxFactory {
	return func(ctx context.Context, e *env) (outbox, error) {
		js, err := newJasperSchema(ctx, e)
		if err != nil {
			return nil, err
		}
		o := &oursOutbox{js: js, opts: opts}
		if opts.replication {
			if err := js.createSlot(ctx); err != nil {
				return nil, errors.Join(err, js.close())
			}
		}
		o.pubRT, err = o.newRuntime(e.drv, nil)
		if err != nil {
			return nil, errors.Join(err, o.dropSlot(), js.close())
		}
		return o, nil
	}
}

// newRuntime is the runtime of this outbox's schema on drv with forwarders.
func (o *oursOutbox) newRuntime(drv store.Driver, forwarders []forwarder.Config) (*jasper.Runtime, error) {
	pc := publisher.Config{TableLess: o.opts.tableLess}
	if o.opts.notify {
		pc.Notify = publisher.NotifyEveryPublish
	}
	return jasper.NewRuntime(drv, jasper.Config{Schema: o.js.cfg.Schema, Publisher: pc, Forwarders: forwarders}, o.js.e.logger)
}

func (o *oursOutbox) close() error {
	return errors.Join(stopRuntime(o.pubRT), o.dropSlot(), o.js.close())
}

// dropSlot drops the outbox's slot and publication when it has them.
func (o *oursOutbox) dropSlot() error {
	if !o.opts.replication {
		return nil
	}
	return o.js.dropSlot()
}

// runtime is the runtime whose publishers the business transactions use.
func (o *oursOutbox) runtime() *jasper.Runtime {
	if rt := o.relayRT.Load(); rt != nil {
		return rt
	}
	return o.pubRT
}

// topic is the envelope's destination: a Jasper RabbitMQ queue URI for the AMQP sink (what
// jasperamqp's publisher routes by), the GoChannel topic otherwise.
func (o *oursOutbox) topic(s *sink) string {
	if s.kind == sinkAMQP {
		return "rabbitmq://queue/" + s.topic
	}
	return s.topic
}

// output is the GoChannel, or jasperamqp's confirm publisher (amqp091 with pipelined
// publisher confirms, persistent messages: what the relay command uses) for RabbitMQ.
func (o *oursOutbox) output(s *sink) (message.Publisher, bool, error) {
	if s.kind != sinkAMQP {
		return s.publisher, false, nil
	}
	p, err := jasperamqp.NewConfirmPublisher(o.js.e.cfg.AMQPURI, o.js.e.logger)
	if err != nil {
		return nil, false, fmt.Errorf("bench: jasperamqp publisher: %w", err)
	}
	return p, true, nil
}

func (o *oursOutbox) prefill(ctx context.Context, topic string, n int) error {
	switch {
	case o.opts.tableLess:
		return o.js.emitInTxs(ctx, topic, n, max(o.opts.prefillTxRows, 1))
	case o.opts.prefillTxRows > 0:
		return o.js.prefillInTxs(ctx, topic, n, o.opts.prefillTxRows)
	}
	return o.js.prefill(ctx, topic, n)
}

func (o *oursOutbox) left(ctx context.Context) (int64, error) { return o.js.left(ctx) }

// heldBack is nil: our forwarder claims every committed row (FOR UPDATE SKIP LOCKED skips
// only the rows another claim holds).
func (o *oursOutbox) heldBack() heldFunc { return nil }

// businessTx is one business transaction: the order and its message through our publisher.
func (o *oursOutbox) businessTx(ctx context.Context, topic string, msg *message.Message) error {
	rt := o.runtime()
	return pgx.BeginFunc(ctx, o.js.e.pool, func(tx pgx.Tx) error {
		if err := insertOrder(ctx, tx, o.js.cfg.Schema, msg); err != nil {
			return err
		}
		if o.opts.sharedPublisher {
			msg.SetContext(publisher.WithTx(ctx, wmsql.TxFromPgx(tx)))
			return rt.Publisher().Publish(topic, msg)
		}
		pub, err := rt.TxPublisher(wmsql.TxFromPgx(tx))
		if err != nil {
			return err
		}
		return pub.Publish(topic, msg)
	})
}

// bareInsertTx is the baseline of the publish cost: the business insert and a bare insert
// of the identical outgoing row (same mapping, the store's InsertEnvelopes without the
// notification) in the same transaction.
func (o *oursOutbox) bareInsertTx(ctx context.Context, topic string, msg *message.Message) error {
	env, err := row.FromMessage(topic, msg, row.Defaults{})
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, o.js.e.pool, func(tx pgx.Tx) error {
		if err := insertOrder(ctx, tx, o.js.cfg.Schema, msg); err != nil {
			return err
		}
		ops := o.js.store.With(dbx.FromWatermill(wmsql.TxFromPgx(tx)))
		return ops.InsertEnvelopes(ctx, store.InsertParams{Outgoing: []row.Envelope{env}})
	})
}

// ordersOnlyTx is the business transaction without any message.
func (o *oursOutbox) ordersOnlyTx(ctx context.Context, msg *message.Message) error {
	return pgx.BeginFunc(ctx, o.js.e.pool, func(tx pgx.Tx) error {
		return insertOrder(ctx, tx, o.js.cfg.Schema, msg)
	})
}

// oursRelay is a started runtime with one forwarder.
type oursRelay struct {
	rt  *jasper.Runtime
	fwd *forwarder.Forwarder
	qc  *queryCounter
	out message.Publisher // closed on stop when set
}

func (r *oursRelay) counts() (int64, int64) {
	return r.qc.statements.Load(), r.qc.txs.Load()
}

func (r *oursRelay) outboxStatements() int64 { return r.qc.outbox.Load() }

func (r *oursRelay) relayStatements() int64 { return r.qc.relay.Load() }

// describe reports the forwarder's own counters, for the progress lines: with a slot, how
// many rows the slot brought and how many it left to the polling path.
func (r *oursRelay) describe() string {
	s := r.fwd.Stats()
	d := fmt.Sprintf("forwarder stats: claimed %d, sent %d, failed %d, released %d, dead-lettered %d",
		s.Claimed, s.Sent, s.Failed, s.Released, s.DeadLettered)
	if rs, ok := r.fwd.ReplicationStats(); ok {
		d += fmt.Sprintf("; slot: %d transactions, %d rows, %d left to polling", rs.Transactions, rs.Rows, rs.Handover)
	}
	return d
}

func (r *oursRelay) stop() error {
	errs := []error{stopRuntime(r.rt)}
	if r.out != nil {
		errs = append(errs, r.out.Close())
	}
	return errors.Join(errs...)
}

// startRelay starts a runtime with one forwarder with its defaults (batch size, workers,
// publish concurrency, LISTEN/NOTIFY wake-up through the agent, 1 s poll; with the
// replication option, the slot of the outbox) from this outbox to out. The runtime runs on database.FromPgx(pool) with a statement counter in between.
func (o *oursOutbox) startRelay(ctx context.Context, out message.Publisher, owned bool) (relay, error) {
	qc := &queryCounter{}
	drv, err := countingDriver(o.js.e.pool, qc)
	var rt *jasper.Runtime
	if err == nil {
		fc := forwarder.Config{Publisher: out}
		if o.opts.replication {
			fc.LogicalReplication = &forwarder.LogicalReplication{DSN: o.js.e.cfg.DSN}
		}
		rt, err = o.newRuntime(drv, []forwarder.Config{fc})
	}
	if err == nil {
		err = rt.Start(ctx)
	}
	if err != nil {
		if owned {
			err = errors.Join(err, out.Close())
		}
		return nil, err
	}
	r := &oursRelay{rt: rt, fwd: rt.Forwarders()[0], qc: qc}
	if owned {
		r.out = out
	}
	o.relayRT.Store(rt)
	return r, nil
}
