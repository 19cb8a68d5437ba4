package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/publisher"
)

// oursOptions vary how our outbox is used.
type oursOptions struct {
	// notify publishes with publisher.NotifyEveryPublish (default: NotifyCoalesced).
	notify bool
	// sharedPublisher publishes through one Publisher built on the pool, joining each
	// business transaction with publisher.WithTx, instead of a Publisher per transaction
	// (sql.TxFromPgx(tx)).
	sharedPublisher bool
}

// oursOutbox is this library's outbox in a fresh migrated schema: publisher.Publisher in the
// business transaction, forwarder.Forwarder relaying with its default configuration.
type oursOutbox struct {
	js     *jasperSchema
	opts   oursOptions
	shared *publisher.Publisher
}

func newOursOutbox(opts oursOptions) outboxFactory {
	return func(ctx context.Context, e *env) (outbox, error) {
		js, err := newJasperSchema(ctx, e)
		if err != nil {
			return nil, err
		}
		o := &oursOutbox{js: js, opts: opts}
		if opts.sharedPublisher {
			o.shared, err = publisher.NewPublisher(wmsql.BeginnerFromPgx(e.pool), o.publisherConfig(), e.logger)
			if err != nil {
				return nil, errors.Join(err, js.close())
			}
		}
		return o, nil
	}
}

func (o *oursOutbox) close() error { return o.js.close() }

func (o *oursOutbox) publisherConfig() publisher.Config {
	cfg := publisher.Config{Schema: o.js.cfg}
	if o.opts.notify {
		cfg.Notify = publisher.NotifyEveryPublish
	}
	return cfg
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
	return o.js.prefill(ctx, topic, n)
}

func (o *oursOutbox) left(ctx context.Context) (int64, error) { return o.js.left(ctx) }

// businessTx is one business transaction: the order and its message through our publisher.
func (o *oursOutbox) businessTx(ctx context.Context, topic string, msg *message.Message) error {
	e := o.js.e
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if err := insertOrder(ctx, tx, o.js.cfg.Schema, msg); err != nil {
			return err
		}
		if o.shared != nil {
			msg.SetContext(publisher.WithTx(ctx, wmsql.TxFromPgx(tx)))
			return o.shared.Publish(topic, msg)
		}
		pub, err := publisher.NewPublisher(wmsql.TxFromPgx(tx), o.publisherConfig(), e.logger)
		if err != nil {
			return err
		}
		return pub.Publish(topic, msg)
	})
}

// bareInsertTx is the baseline of the publish cost: the business insert and a bare INSERT
// of the identical outgoing row (same mapping, same statement without the notification).
func (o *oursOutbox) bareInsertTx(ctx context.Context, topic string, msg *message.Message) error {
	e, d := o.js.e, o.js.dialect
	env, err := row.FromMessage(topic, msg, row.Defaults{})
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if err := insertOrder(ctx, tx, o.js.cfg.Schema, msg); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, d.InsertEnvelopes(1, 0, false), env.OutgoingArgs(nil, d.UUIDs())...)
		return err
	})
}

// ordersOnlyTx is the business transaction without any message.
func (o *oursOutbox) ordersOnlyTx(ctx context.Context, msg *message.Message) error {
	return pgx.BeginFunc(ctx, o.js.e.pool, func(tx pgx.Tx) error {
		return insertOrder(ctx, tx, o.js.cfg.Schema, msg)
	})
}

type oursRelay struct {
	fwd  *forwarder.Forwarder
	done chan error
	cdb  *countingDB
	out  message.Publisher // closed on stop when set
}

func (r *oursRelay) counts() (int64, int64) {
	return r.cdb.qc.statements.Load(), r.cdb.qc.txs.Load()
}

// describe reports the forwarder's own counters, for the progress lines.
func (r *oursRelay) describe() string {
	s := r.fwd.Stats()
	return fmt.Sprintf("forwarder stats: claimed %d, sent %d, failed %d, released %d, dead-lettered %d",
		s.Claimed, s.Sent, s.Failed, s.Released, s.DeadLettered)
}

func (r *oursRelay) stop() error {
	errs := []error{r.fwd.Close()}
	select {
	case err := <-r.done:
		if !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	case <-time.After(40 * time.Second):
		errs = append(errs, errors.New("forwarder did not stop within 40s"))
	}
	if r.out != nil {
		errs = append(errs, r.out.Close())
	}
	return errors.Join(errs...)
}

// startRelay runs our forwarder with its defaults (batch size, workers, publish
// concurrency, LISTEN/NOTIFY wake-up, 1 s poll) from this outbox to out.
func (o *oursOutbox) startRelay(ctx context.Context, out message.Publisher, owned bool) (relay, error) {
	e := o.js.e
	cdb := &countingDB{db: database.FromPgx(e.pool), qc: &queryCounter{}}
	fwd, err := forwarder.NewForwarder(cdb, forwarder.Config{Schema: o.js.cfg, Publisher: out}, e.logger)
	if err != nil {
		return nil, err
	}
	r := &oursRelay{fwd: fwd, done: make(chan error, 1), cdb: cdb}
	if owned {
		r.out = out
	}
	go func() { r.done <- fwd.Run(ctx) }()
	return r, nil
}
