package middleware

import (
	"context"
	"errors"
	"sync/atomic"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/publisher"
)

var (
	// ErrNoTransaction is returned by Publish when the context carries no inbox transaction
	// (the handler does not run behind Inbox.Middleware, or the context is not the
	// message's).
	ErrNoTransaction = errors.New("watermill-jasper: the context carries no inbox transaction; run the handler behind middleware.Inbox and pass msg.Context()")
	// ErrTxOwnedByInbox is returned by Commit and Rollback of the transaction TxFromContext
	// returns: the inbox commits when the handler returns nil and rolls back when it returns
	// an error.
	ErrTxOwnedByInbox = errors.New("watermill-jasper: the inbox commits or rolls back this transaction; return nil to commit, an error to roll back")
)

type txStateKey struct{}

// txState is what the inbox puts in the handler's context.
type txState struct {
	inbox *Inbox
	tx    database.Tx
	// ops are the inbox store's operations on tx.
	ops store.Ops
	// deadLettered is set by a DeadLetter middleware running inside the inbox when it wrote
	// the message's dead letter; the inbox then withdraws its mark.
	deadLettered atomic.Bool
}

// context returns parent carrying the state and, for this library's publisher, the
// transaction (publisher.WithTx).
func (st *txState) context(parent context.Context) context.Context {
	ctx := context.WithValue(parent, txStateKey{}, st)
	return publisher.WithTx(ctx, st.executor())
}

func stateFrom(ctx context.Context) *txState {
	if ctx == nil {
		return nil
	}
	st, _ := ctx.Value(txStateKey{}).(*txState)
	return st
}

// TxFromContext returns the inbox transaction a handler runs in (pass msg.Context()). Write
// the handler's own rows through it: they commit with the Handled mark. Its Commit and
// Rollback return ErrTxOwnedByInbox. Like any transaction it is for one goroutine at a
// time.
func TxFromContext(ctx context.Context) (database.Tx, bool) {
	st := stateFrom(ctx)
	if st == nil {
		return nil, false
	}
	return handlerTx{st.tx}, true
}

// ExecutorFromContext returns the inbox transaction as a watermill-sql ContextExecutor, for
// code written against watermill-sql (its publisher, sql.TxFromPgx-style helpers). This
// library's publisher needs nothing: built on the pool, it joins the transaction of the
// message context it publishes in (see Publish).
func ExecutorFromContext(ctx context.Context) (wmsql.ContextExecutor, bool) {
	st := stateFrom(ctx)
	if st == nil {
		return nil, false
	}
	return st.executor(), true
}

// executor is the transaction as a watermill-sql ContextExecutor. It has no Commit or
// Rollback, and the transaction behind it is the handler's (handlerTx): code holding it
// cannot end the inbox transaction.
func (st *txState) executor() wmsql.ContextExecutor { return dbx.ToWatermill(handlerTx{st.tx}) }

// Publish publishes msgs to topic through pub inside the inbox transaction carried by ctx
// (the handled message's context): it sets ctx on each message and calls pub.Publish. With
// this library's outbox publisher built on the pool (a jasper.Runtime's Publisher, or
// publisher.NewPublisher(sql.BeginnerFromPgx(pool), ...)) the envelopes commit with the
// handler's writes and the Handled mark, or not at all. A publisher of a broker would send
// at once, outside the transaction. It returns ErrNoTransaction when ctx carries no inbox transaction.
func Publish(ctx context.Context, pub message.Publisher, topic string, msgs ...*message.Message) error {
	if stateFrom(ctx) == nil {
		return ErrNoTransaction
	}
	for _, m := range msgs {
		if m != nil {
			m.SetContext(ctx)
		}
	}
	return pub.Publish(topic, msgs...)
}

// handlerTx is the inbox transaction as handed to the handler: it cannot end it.
type handlerTx struct{ tx database.Tx }

func (t handlerTx) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return t.tx.Exec(ctx, query, args...)
}
func (t handlerTx) Query(ctx context.Context, query string, args ...any) (database.Rows, error) {
	return t.tx.Query(ctx, query, args...)
}
func (handlerTx) Commit(context.Context) error   { return ErrTxOwnedByInbox }
func (handlerTx) Rollback(context.Context) error { return ErrTxOwnedByInbox }
