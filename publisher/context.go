package publisher

import (
	"context"

	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
)

type txContextKey struct{}

// WithTx returns a context carrying tx. A Publisher built on a pool (sql.BeginnerFromStdSQL,
// sql.BeginnerFromPgx) writes the messages of a Publish call inside tx when the first
// message's context carries one, so they commit or roll back with tx:
//
//	msg.SetContext(publisher.WithTx(ctx, sql.TxFromPgx(tx)))
//
// The inbox middleware sets it for the messages a handler produces. A nil tx is ignored.
func WithTx(ctx context.Context, tx sql.ContextExecutor) context.Context {
	if tx == nil {
		return ctx
	}
	return context.WithValue(ctx, txContextKey{}, tx)
}

// TxFromContext returns the transaction set by WithTx, if any.
func TxFromContext(ctx context.Context) (sql.ContextExecutor, bool) {
	if ctx == nil {
		return nil, false
	}
	tx, ok := ctx.Value(txContextKey{}).(sql.ContextExecutor)
	return tx, ok && tx != nil
}
