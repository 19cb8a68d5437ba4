package bench

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"time"

	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	wmforwarder "github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

// wmForwarderTopic is the forwarder topic of Watermill's outbox (its default), i.e. the
// watermill-sql table watermill_forwarder_topic.
const wmForwarderTopic = "forwarder_topic"

// wmOutbox is Watermill's own outbox in one schema: watermill-sql's default PostgreSQL log
// schema (DefaultPostgreSQLSchema + DefaultPostgreSQLOffsetsAdapter) with schema-qualified
// table names, written through forwarder.NewPublisher in the business transaction and relayed
// by components/forwarder reading a watermill-sql subscriber (poll interval 10 ms).
type wmOutbox struct {
	e       *env
	schema  string
	adapter wmsql.DefaultPostgreSQLSchema
	offsets wmsql.DefaultPostgreSQLOffsetsAdapter
	// jasperAMQP makes the relay publish to RabbitMQ through jasperamqp's publisher (the
	// one our forwarder uses) instead of watermill-amqp's with confirms.
	jasperAMQP bool
}

func newWMOutbox() outboxFactory {
	return func(ctx context.Context, e *env) (outbox, error) { return openWMOutbox(ctx, e) }
}

// newWMOutboxJasperAMQP is Watermill's outbox relaying to RabbitMQ through jasperamqp's
// publisher, the one our forwarder uses: the same AMQP client, only the relay differs.
func newWMOutboxJasperAMQP() outboxFactory {
	return func(ctx context.Context, e *env) (outbox, error) {
		w, err := openWMOutbox(ctx, e)
		if err != nil {
			return nil, err
		}
		w.jasperAMQP = true
		return w, nil
	}
}

func openWMOutbox(ctx context.Context, e *env) (*wmOutbox, error) {
	name, err := e.newSchema(ctx)
	if err != nil {
		return nil, err
	}
	w := &wmOutbox{e: e, schema: name}
	w.adapter, w.offsets = wmAdapters(name)
	sub, err := w.newSubscriber(wmsql.BeginnerFromPgx(e.pool))
	if err != nil {
		return nil, errors.Join(err, w.close())
	}
	defer sub.Close()
	if err := sub.SubscribeInitialize(wmForwarderTopic); err != nil {
		return nil, errors.Join(fmt.Errorf("bench: initialize watermill-sql tables: %w", err), w.close())
	}
	return w, nil
}

// wmAdapters are watermill-sql's default PostgreSQL log schema and offsets adapter with
// their tables in schema name.
func wmAdapters(name string) (wmsql.DefaultPostgreSQLSchema, wmsql.DefaultPostgreSQLOffsetsAdapter) {
	return wmsql.DefaultPostgreSQLSchema{
			GenerateMessagesTableName: func(topic string) string { return fmt.Sprintf(`%q."watermill_%s"`, name, topic) },
		}, wmsql.DefaultPostgreSQLOffsetsAdapter{
			GenerateMessagesOffsetsTableName: func(topic string) string { return fmt.Sprintf(`%q."watermill_offsets_%s"`, name, topic) },
		}
}

// wmLeft counts the messages of table past the offset that consumer group has acknowledged
// (in offsetsTable).
func (e *env) wmLeft(ctx context.Context, table, offsetsTable, group string) (int64, error) {
	var n int64
	err := e.pool.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s t
WHERE NOT EXISTS (SELECT 1 FROM %s o WHERE o.consumer_group = $1
  AND (t.transaction_id, t."offset") <= (o.last_processed_transaction_id, o.offset_acked))`,
		table, offsetsTable), group).Scan(&n)
	return n, err
}

// wmHeldBack counts the committed messages of table that watermill-sql's subscriber does not
// read yet. It reads only the rows whose transaction_id is below the xmin of its snapshot:
// below every transaction id still running on the server, in any database (transaction ids
// are server-wide), so that it never skips a row that a slower, older transaction commits
// later. A transaction that has written anything and stays open, in any session on the
// server, thus holds back every message committed after it began, for as long as it stays
// open. waitingFor names the oldest such transaction that pg_stat_activity shows.
func (e *env) wmHeldBack(table string) heldFunc {
	return func(ctx context.Context) (n int64, waitingFor string, err error) {
		err = e.pool.QueryRow(ctx, `SELECT count(*), coalesce((
  SELECT format('the transaction of backend %s (%s, open for %s)', pid, state, date_trunc('second', now() - xact_start))
  FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY age(backend_xid) DESC LIMIT 1), 'an older transaction')
FROM `+table+` WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())`).Scan(&n, &waitingFor)
		return n, waitingFor, err
	}
}

func (w *wmOutbox) close() error { return w.e.dropSchema(w.schema) }

func (w *wmOutbox) messagesTable() string { return w.adapter.MessagesTable(wmForwarderTopic) }

func (w *wmOutbox) newSubscriber(db wmsql.Beginner) (*wmsql.Subscriber, error) {
	return wmsql.NewSubscriber(db, wmsql.SubscriberConfig{
		PollInterval:   WatermillPollInterval,
		SchemaAdapter:  w.adapter,
		OffsetsAdapter: w.offsets,
	}, w.e.logger)
}

// publish writes msgs to topic through Watermill's outbox in tx, the way Watermill's
// transactional-events-forwarder example does: a watermill-sql publisher bound to the
// transaction, decorated by forwarder.NewPublisher.
func (w *wmOutbox) publish(tx pgx.Tx, topic string, msgs ...*message.Message) error {
	pub, err := wmsql.NewPublisher(wmsql.TxFromPgx(tx), wmsql.PublisherConfig{SchemaAdapter: w.adapter}, w.e.logger)
	if err != nil {
		return err
	}
	return wmforwarder.NewPublisher(pub, wmforwarder.PublisherConfig{ForwarderTopic: wmForwarderTopic}).Publish(topic, msgs...)
}

// businessTx is one business transaction: an order and its event, committed together.
func (w *wmOutbox) businessTx(ctx context.Context, topic string, msg *message.Message) error {
	return pgx.BeginFunc(ctx, w.e.pool, func(tx pgx.Tx) error {
		if err := insertOrder(ctx, tx, w.schema, msg); err != nil {
			return err
		}
		return w.publish(tx, topic, msg)
	})
}

// prefill writes n messages for topic through the same publisher, prefillBatch (1,000) per
// transaction.
func (w *wmOutbox) prefill(ctx context.Context, topic string, n int) error {
	err := w.e.inBatches(n, func(msgs []*message.Message) error {
		return pgx.BeginFunc(ctx, w.e.pool, func(tx pgx.Tx) error { return w.publish(tx, topic, msgs...) })
	})
	if err != nil {
		return fmt.Errorf("bench: prefill Watermill outbox: %w", err)
	}
	return w.e.analyze(ctx, w.messagesTable())
}

// left counts the rows past the (default) consumer group's acknowledged offset.
func (w *wmOutbox) left(ctx context.Context) (int64, error) {
	return w.e.wmLeft(ctx, w.messagesTable(), w.offsets.MessagesOffsetsTable(wmForwarderTopic), "")
}

// heldBack counts the messages watermill-sql does not read yet (env.wmHeldBack).
func (w *wmOutbox) heldBack() heldFunc { return w.e.wmHeldBack(w.messagesTable()) }

type wmRelay struct {
	fwd   *wmforwarder.Forwarder
	sub   *wmsql.Subscriber
	done  chan error
	qc    *queryCounter
	owned []interface{ Close() error }
}

func (r *wmRelay) counts() (int64, int64) { return r.qc.statements.Load(), r.qc.txs.Load() }

func (r *wmRelay) stop() error {
	errs := []error{r.fwd.Close()}
	select {
	case err := <-r.done:
		errs = append(errs, err)
	case <-time.After(40 * time.Second):
		errs = append(errs, errors.New("watermill forwarder did not stop within 40s"))
	}
	errs = append(errs, r.sub.Close())
	for _, c := range r.owned {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// topic is the Watermill topic the messages are published to: the queue name on RabbitMQ
// (default exchange, routing key = topic), or its Jasper URI for jasperamqp.
func (w *wmOutbox) topic(s *sink) string {
	if s.kind == sinkAMQP && w.jasperAMQP {
		return "rabbitmq://queue/" + s.topic
	}
	return s.topic
}

// output builds the relay's output publisher: the GoChannel itself, or a watermill-amqp
// publisher with confirms (amqpPublisherConfig), or jasperamqp's.
func (w *wmOutbox) output(s *sink) (message.Publisher, bool, error) {
	if s.kind != sinkAMQP {
		return s.publisher, false, nil
	}
	if w.jasperAMQP {
		p, err := jasperamqp.NewPublisher(w.e.cfg.AMQPURI, w.e.logger)
		if err != nil {
			return nil, false, fmt.Errorf("bench: jasperamqp publisher: %w", err)
		}
		return p, true, nil
	}
	p, err := wmamqp.NewPublisher(amqpPublisherConfig(w.e.cfg.AMQPURI), w.e.logger)
	if err != nil {
		return nil, false, fmt.Errorf("bench: watermill-amqp publisher: %w", err)
	}
	return p, true, nil
}

// startRelay runs Watermill's forwarder from this outbox to out (which it closes on stop
// when closeOut is set).
func (w *wmOutbox) startRelay(ctx context.Context, out message.Publisher, closeOut bool) (relay, error) {
	qc := &queryCounter{}
	sub, err := w.newSubscriber(countingBeginner{b: wmsql.BeginnerFromPgx(w.e.pool), qc: qc})
	if err != nil {
		return nil, err
	}
	fwd, err := wmforwarder.NewForwarder(sub, out, w.e.logger, wmforwarder.Config{ForwarderTopic: wmForwarderTopic})
	if err != nil {
		_ = sub.Close()
		return nil, err
	}
	r := &wmRelay{fwd: fwd, sub: sub, done: make(chan error, 1), qc: qc}
	if closeOut {
		r.owned = append(r.owned, out)
	}
	go func() { r.done <- fwd.Run(ctx) }()
	select {
	case <-fwd.Running():
		return r, nil
	case err := <-r.done:
		_ = sub.Close()
		return nil, fmt.Errorf("watermill forwarder stopped at start: %w", err)
	case <-ctx.Done():
		_ = r.stop()
		return nil, ctx.Err()
	}
}

// countingBeginner counts what watermill-sql's subscriber sends: every BEGIN, statement,
// COMMIT and ROLLBACK is one statement; BEGIN and every statement outside a transaction
// count one transaction.
type countingBeginner struct {
	b  wmsql.Beginner
	qc *queryCounter
}

func (c countingBeginner) BeginTx(ctx context.Context, opts *stdsql.TxOptions) (wmsql.Tx, error) {
	c.qc.addAutocommit(ctx, "BEGIN")
	tx, err := c.b.BeginTx(ctx, opts)
	if err != nil {
		return tx, err
	}
	return countingTx{tx: tx, qc: c.qc}, nil
}

func (c countingBeginner) ExecContext(ctx context.Context, q string, args ...any) (wmsql.Result, error) {
	c.qc.addAutocommit(ctx, q)
	return c.b.ExecContext(ctx, q, args...)
}

func (c countingBeginner) QueryContext(ctx context.Context, q string, args ...any) (wmsql.Rows, error) {
	c.qc.addAutocommit(ctx, q)
	return c.b.QueryContext(ctx, q, args...)
}

type countingTx struct {
	tx wmsql.Tx
	qc *queryCounter
}

func (c countingTx) ExecContext(ctx context.Context, q string, args ...any) (wmsql.Result, error) {
	c.qc.query(ctx, q)
	return c.tx.ExecContext(ctx, q, args...)
}

func (c countingTx) QueryContext(ctx context.Context, q string, args ...any) (wmsql.Rows, error) {
	c.qc.query(ctx, q)
	return c.tx.QueryContext(ctx, q, args...)
}

func (c countingTx) Commit() error   { c.qc.statements.Add(1); return c.tx.Commit() }
func (c countingTx) Rollback() error { c.qc.statements.Add(1); return c.tx.Rollback() }
