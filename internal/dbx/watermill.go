package dbx

import (
	"context"
	"database/sql"
	"errors"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
)

// The one adapter between watermill-sql's handles (what publishers take, as watermill-sql's
// own publisher does) and this package's: ToWatermill turns a Querier (a pool, the inbox's
// transaction) into a watermill-sql ContextExecutor, FromWatermill the other way.

// ToWatermill returns q as a watermill-sql ContextExecutor. When q is a DB (it can Begin),
// the result is also a watermill-sql Beginner. It has no Commit or Rollback: code holding it
// cannot end a transaction q is.
func ToWatermill(q Querier) wmsql.ContextExecutor {
	if db, ok := q.(DB); ok {
		return wmBeginner{wmExecutor{db}, db}
	}
	return wmExecutor{q}
}

type wmExecutor struct{ q Querier }

type affected int64

func (r affected) RowsAffected() (int64, error) { return int64(r), nil }

func (e wmExecutor) ExecContext(ctx context.Context, query string, args ...any) (wmsql.Result, error) {
	n, err := e.q.Exec(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return affected(n), nil
}

func (e wmExecutor) QueryContext(ctx context.Context, query string, args ...any) (wmsql.Rows, error) {
	return e.q.Query(ctx, query, args...)
}

// Unwrap returns the Querier behind the executor (FromWatermill uses it).
func (e wmExecutor) Unwrap() Querier { return e.q }

type wmBeginner struct {
	wmExecutor
	db DB
}

func (b wmBeginner) BeginTx(ctx context.Context, _ *sql.TxOptions) (wmsql.Tx, error) {
	tx, err := b.db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return wmTx{wmExecutor{tx}, tx}, nil
}

type wmTx struct {
	wmExecutor
	tx Tx
}

func (t wmTx) Commit() error   { return t.tx.Commit(context.Background()) }
func (t wmTx) Rollback() error { return t.tx.Rollback(context.Background()) }

// FromWatermill returns a watermill-sql ContextExecutor as a Querier. When e is a
// watermill-sql Beginner (a pool), the Querier can also Begin (see Beginner), so that
// statements that must be atomic run in a transaction of it.
func FromWatermill(e wmsql.ContextExecutor) Querier {
	if w, ok := e.(interface{ Unwrap() Querier }); ok {
		return w.Unwrap()
	}
	if b, ok := e.(wmsql.Beginner); ok {
		return wmBeginnerQuerier{wmQuerier{b}, b}
	}
	return wmQuerier{e}
}

// Beginner is a Querier that can start transactions: a DB, or a pool given as a
// watermill-sql Beginner.
type Beginner interface {
	Querier
	Begin(ctx context.Context) (Tx, error)
}

type wmQuerier struct{ e wmsql.ContextExecutor }

func (q wmQuerier) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := q.e.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, nil // some statements report no count
	}
	return n, nil
}

func (q wmQuerier) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	rows, err := q.e.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	if r, ok := rows.(Rows); ok {
		return r, nil
	}
	return wmRows{rows}, nil
}

// wmRows adds Err to watermill-sql's Rows (which lacks it) when the driver's rows have it.
type wmRows struct{ wmsql.Rows }

func (r wmRows) Err() error {
	if e, ok := r.Rows.(interface{ Err() error }); ok {
		return e.Err()
	}
	return nil
}

type wmBeginnerQuerier struct {
	wmQuerier
	b wmsql.Beginner
}

func (q wmBeginnerQuerier) Begin(ctx context.Context) (Tx, error) {
	tx, err := q.b.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return wmTxQuerier{wmQuerier{tx}, tx}, nil
}

type wmTxQuerier struct {
	wmQuerier
	tx wmsql.Tx
}

func (t wmTxQuerier) Commit(context.Context) error { return t.tx.Commit() }
func (t wmTxQuerier) Rollback(context.Context) error {
	if err := t.tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		return err
	}
	return nil
}
