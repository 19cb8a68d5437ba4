package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// New returns the store of one schema over db, running the statements of d.
func New(db dbx.DB, d Dialect) *Store {
	return &Store{ops: ops{q: db, d: d, pooled: true}, db: db}
}

// Store implements store.Store over a Dialect.
type Store struct {
	ops
	db dbx.DB
}

var _ store.Store = (*Store)(nil)

// ops implements store.Ops on one querier: the pool (pooled) or a transaction or connection.
type ops struct {
	q      dbx.Querier
	d      Dialect
	pooled bool // q is a pool or a connection: several statements need a transaction of it
}

// Dialect returns the dialect's name.
func (s *Store) Dialect() dbx.Dialect { return s.d.Name() }

// Schema returns the normalized schema config.
func (s *Store) Schema() layout.Config { return s.d.Schema() }

// DB returns the pool.
func (s *Store) DB() dbx.DB { return s.db }

// Statements returns the dialect (for tests that check statements offline).
func (s *Store) Statements() Dialect { return s.d }

// With binds the operations to q. When q can begin transactions (a pool or a connection),
// operations of several statements run in a transaction of it, as on the store's own pool.
func (s *Store) With(q dbx.Querier) store.Ops {
	_, pooled := q.(dbx.Beginner)
	return &ops{q: q, d: s.d, pooled: pooled}
}

// InTx runs fn in a transaction of the pool.
func (s *Store) InTx(ctx context.Context, fn func(ctx context.Context, tx store.Ops) error) error {
	return dbx.InTx(ctx, s.db, func(tx dbx.Tx) error { return fn(ctx, &ops{q: tx, d: s.d}) })
}

// Caps returns what the database can do.
func (s *Store) Caps() store.Caps { return s.d.Caps() }

// IsMissingTable reports whether err says a table or the schema does not exist.
func (s *Store) IsMissingTable(err error) bool { return s.d.IsMissingTable(err) }

// IsMissingColumn reports whether err says a column does not exist.
func (s *Store) IsMissingColumn(err error) bool { return s.d.IsMissingColumn(err) }

// IsStatementError reports whether err is the database's answer that a statement failed.
func (s *Store) IsStatementError(err error) bool { return s.d.IsStatementError(err) }

// Channels returns the notification channels of the schema.
func (s *Store) Channels() store.Channels {
	if !s.d.Caps().Notifications {
		return store.Channels{}
	}
	return store.Channels{Outgoing: s.d.OutgoingChannel(), Incoming: s.d.IncomingChannel()}
}

// Listen subscribes conn to channels.
func (s *Store) Listen(ctx context.Context, conn dbx.Conn, channels ...string) error {
	if !s.d.Caps().Notifications {
		return fmt.Errorf("%w: notifications (LISTEN) on %s", store.ErrNotSupported, s.d.Name())
	}
	for _, ch := range channels {
		var stmt string
		switch ch {
		case s.d.OutgoingChannel():
			stmt = s.d.ListenOutgoing()
		case s.d.IncomingChannel():
			stmt = s.d.ListenIncoming()
		default:
			return fmt.Errorf("watermill-jasper: LISTEN: %q is not a channel of schema %s", ch, s.d.Schema().Schema)
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}

// TryNodeLock takes the session lock of id on conn without waiting.
func (s *Store) TryNodeLock(ctx context.Context, conn dbx.Conn, id int32) (bool, error) {
	return s.boolRow(ctx, conn, s.d.TryAdvisoryLock(), s.d.AdvisoryLockKey(id))
}

// HoldsNodeLock reports whether conn's session holds the lock of id.
func (s *Store) HoldsNodeLock(ctx context.Context, conn dbx.Conn, id int32) (bool, error) {
	return s.boolRow(ctx, conn, s.d.HoldsAdvisoryLock(), s.d.AdvisoryLockKey(id))
}

// ReleaseNodeLock releases one level of the session lock of id.
func (s *Store) ReleaseNodeLock(ctx context.Context, conn dbx.Conn, id int32) (bool, error) {
	return s.boolRow(ctx, conn, s.d.ReleaseAdvisoryLock(), s.d.AdvisoryLockKey(id))
}

// SessionID returns the id of the database session q runs on.
func (s *Store) SessionID(ctx context.Context, q dbx.Querier) (int64, error) {
	var id int64
	err := dbx.QueryRow(ctx, q, s.d.SessionID(), nil, &id)
	return id, err
}

func (s *Store) boolRow(ctx context.Context, q dbx.Querier, query string, args ...any) (bool, error) {
	var ok bool
	err := dbx.QueryRow(ctx, q, query, s.d.Bind(args), &ok)
	return ok, err
}

// BeginMarkHandled starts a transaction whose first statement is MarkIncomingHandled.
func (s *Store) BeginMarkHandled(ctx context.Context, p store.MarkHandledParams) (dbx.Tx, bool, error) {
	tx, n, err := dbx.BeginExec(ctx, s.db, s.d.Counted(s.d.MarkIncomingHandled()), s.d.Bind([]any{s.uuid(p.ID), p.Topic, p.Keep.Milliseconds()})...)
	return tx, n == 1, err
}

// BeginRelay starts a relay's batch transaction: BEGIN and the dialect's RelayTxSettings go
// with its first statement (the lock) where the pool can send them together.
func (s *Store) BeginRelay(ctx context.Context) (dbx.Tx, error) {
	var first []string
	if q := s.d.RelayTxSettings(); q != "" {
		first = append(first, q)
	}
	return dbx.BeginDeferred(ctx, s.db, first...)
}

// BeginInsertHandled starts a transaction whose first statement is InsertHandled.
func (s *Store) BeginInsertHandled(ctx context.Context, p store.InsertHandledParams) (dbx.Tx, bool, error) {
	tx, n, err := dbx.BeginExec(ctx, s.db, s.d.Counted(s.d.InsertHandled()), s.d.Bind(s.insertHandledArgs(p))...)
	return tx, n > 0, err
}

func (o *ops) uuid(id uuid.UUID) any { return o.d.UUIDs().Arg(id) }

// exec, query and row run every statement of the operations: arguments bound for the
// driver (Dialect.Bind), and exec's count read from a query that reports it (Dialect.Counted).
func (o *ops) exec(ctx context.Context, query string, args ...any) (int64, error) {
	return o.q.Exec(ctx, o.d.Counted(query), o.d.Bind(args)...)
}

func (o *ops) query(ctx context.Context, query string, args ...any) (dbx.Rows, error) {
	return o.q.Query(ctx, query, o.d.Bind(args)...)
}

func (o *ops) row(ctx context.Context, query string, args []any, dest ...any) error {
	return dbx.QueryRow(ctx, o.q, query, o.d.Bind(args), dest...)
}

// inTx runs fn in a transaction when the ops run on the pool and several statements must be
// atomic; on a bound querier fn runs on it directly.
func (o *ops) inTx(ctx context.Context, fn func(o *ops) error) error {
	if !o.pooled {
		return fn(o)
	}
	b, ok := o.q.(dbx.Beginner)
	if !ok {
		return fn(o)
	}
	return dbx.InTx(ctx, b, func(tx dbx.Tx) error { return fn(&ops{q: tx, d: o.d}) })
}

// InsertEnvelopes inserts outgoing and incoming envelopes, packed into as few statements as
// the parameter limit allows.
func (o *ops) InsertEnvelopes(ctx context.Context, p store.InsertParams) error {
	notify := p.NotifyOutgoing && o.d.Caps().Notifications
	topics := p.NotifyTopics
	if !o.d.Caps().Notifications {
		topics = nil
	}
	codec := o.d.UUIDs()
	wo, wi := len(row.OutgoingColumns), len(row.IncomingColumns)
	maxParams := o.d.MaxParams()
	type statement struct {
		query string
		args  []any
	}
	var stmts []statement
	out, inc := p.Outgoing, p.Incoming
	for len(out)+len(inc) > 0 {
		no := min(len(out), maxParams/wo)
		ni := min(len(inc), (maxParams-no*wo)/wi)
		args := make([]any, 0, no*wo+ni*wi)
		for k := range out[:no] {
			args = out[k].OutgoingArgs(args, codec)
		}
		for k := range inc[:ni] {
			args = inc[k].IncomingArgs(args, codec)
		}
		stmts = append(stmts, statement{query: o.d.InsertEnvelopes(no, ni, notify && no > 0), args: args})
		out, inc = out[no:], inc[ni:]
	}
	for _, t := range topics {
		stmts = append(stmts, statement{query: o.d.NotifyIncoming(), args: []any{t}})
	}
	run := func(o *ops) error {
		for _, st := range stmts {
			if _, err := o.exec(ctx, st.query, st.args...); err != nil {
				return err
			}
		}
		return nil
	}
	if len(stmts) > 1 {
		return o.inTx(ctx, run)
	}
	return run(o)
}

// EmitOutgoing writes outgoing envelopes as logical decoding messages, when the slot exists.
func (o *ops) EmitOutgoing(ctx context.Context, p store.EmitParams) (bool, error) {
	query := o.d.EmitOutgoing()
	if query == "" {
		return false, fmt.Errorf("%w: the table-less outbox (logical decoding messages) needs PostgreSQL 14 or later", dbx.ErrUnsupported)
	}
	if len(p.Envelopes) == 0 {
		return true, nil
	}
	contents := make([][]byte, len(p.Envelopes))
	for i := range p.Envelopes {
		b, err := p.Envelopes[i].EncodeEmitted(nil)
		if err != nil {
			return false, err
		}
		contents[i] = b
	}
	var n int64
	if err := o.row(ctx, query, []any{p.Prefix, p.Slot, contents}, &n); err != nil {
		return false, err
	}
	switch {
	case n == 0:
		return false, nil
	case n != int64(len(contents)):
		// The statement writes all or none: a different count is a bug, not a state.
		return false, fmt.Errorf("emit outgoing envelopes: %d of %d written", n, len(contents))
	}
	return true, nil
}

// claim runs a claim and reads its rows; a failure after some rows were read wraps
// store.ErrStranded.
func (o *ops) claim(ctx context.Context, scan func(row.Scanner, row.UUIDCodec) (row.Envelope, error), query string, args ...any) ([]row.Envelope, error) {
	rows, err := o.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	codec := o.d.UUIDs()
	var envs []row.Envelope
	var scanErr error
	for rows.Next() {
		e, err := scan(rows, codec)
		if err != nil {
			scanErr = err
			break
		}
		envs = append(envs, e)
	}
	closeErr := rows.Close()
	switch {
	case scanErr != nil:
		return envs, fmt.Errorf("%w: read a claimed envelope: %w", store.ErrStranded, scanErr)
	case closeErr != nil && len(envs) > 0:
		return envs, fmt.Errorf("%w: %w", store.ErrStranded, closeErr)
	case closeErr != nil:
		return nil, closeErr
	}
	return envs, nil
}

// ClaimOutgoing claims up to Limit unowned outgoing envelopes for Owner.
func (o *ops) ClaimOutgoing(ctx context.Context, p store.ClaimOutgoingParams) ([]row.Envelope, error) {
	return o.claim(ctx, row.ScanClaimedOutgoing, o.d.ClaimOutgoing(), p.Owner, o.d.StringList(p.Exclude), o.d.StringList(likePatterns(p.Only)), p.Limit)
}

// LockOutgoing locks up to Limit unowned outgoing envelopes in the caller's transaction.
func (o *ops) LockOutgoing(ctx context.Context, p store.LockOutgoingParams) ([]row.Envelope, error) {
	if len(p.IDs) > 0 {
		return o.claim(ctx, row.ScanClaimedOutgoing, o.d.LockOutgoingByID(), o.d.IDList(p.IDs), o.d.StringList(p.Exclude), o.d.StringList(likePatterns(p.Only)))
	}
	return o.claim(ctx, row.ScanClaimedOutgoing, o.d.LockOutgoing(), o.d.StringList(p.Exclude), o.d.StringList(likePatterns(p.Only)), p.Limit)
}

// DeleteOutgoing deletes outgoing envelopes by id.
func (o *ops) DeleteOutgoing(ctx context.Context, ids []uuid.UUID) error {
	_, err := o.exec(ctx, o.d.DeleteOutgoing(), o.d.IDList(ids))
	return err
}

// ReleaseOutgoing hands outgoing envelopes back.
func (o *ops) ReleaseOutgoing(ctx context.Context, p store.ReleaseParams) error {
	query := o.d.ReleaseOutgoing()
	if p.CountAttempt {
		query = o.d.ReleaseOutgoingFailed()
	}
	_, err := o.exec(ctx, query, o.d.IDList(p.IDs), p.Owner)
	return err
}

func (o *ops) deadLetterArgs(letters []store.DeadLetterReason) []any {
	n := len(letters)
	ids := make([]uuid.UUID, n)
	explanation, typ, msg, text, source := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, l := range letters {
		ids[i], explanation[i], typ[i], msg[i], text[i], source[i] = l.ID, l.Explanation, l.ExceptionType, l.ExceptionMessage, l.ExceptionText, l.Source
	}
	return o.d.DeadLetterArgs(ids, explanation, typ, msg, text, source)
}

// DeadLetterOutgoing moves outgoing envelopes to the dead letters.
func (o *ops) DeadLetterOutgoing(ctx context.Context, letters []store.DeadLetterReason) error {
	return o.moveToDeadLetters(ctx, o.d.DeadLetterOutgoing(), letters)
}

// DeadLetterIncoming moves incoming envelopes to the dead letters.
func (o *ops) DeadLetterIncoming(ctx context.Context, letters []store.DeadLetterReason) error {
	return o.moveToDeadLetters(ctx, o.d.DeadLetterIncoming(), letters)
}

func (o *ops) moveToDeadLetters(ctx context.Context, query string, letters []store.DeadLetterReason) error {
	if len(letters) == 0 {
		return nil
	}
	args := o.deadLetterArgs(letters)
	if o.d.MoveNeedsTx() {
		return o.inTx(ctx, func(o *ops) error {
			_, err := o.exec(ctx, query, args...)
			return err
		})
	}
	_, err := o.exec(ctx, query, args...)
	return err
}

// likeEscaper escapes what LIKE reads as wildcards on both databases (with escape character
// \: PostgreSQL's default, ESCAPE '\' on SQL Server, whose LIKE also reads [ as a class).
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`, `[`, `\[`)

// likePatterns turns destinations into the LIKE patterns of the relay's claims: an entry
// ending in * matches by prefix, any other exactly.
func likePatterns(only []string) []string {
	if len(only) == 0 {
		return nil
	}
	out := make([]string, len(only))
	for i, d := range only {
		if prefix, ok := strings.CutSuffix(d, "*"); ok {
			out[i] = likeEscaper.Replace(prefix) + "%"
		} else {
			out[i] = likeEscaper.Replace(d)
		}
	}
	return out
}

// ClaimIncoming claims up to Limit unowned Incoming envelopes of Topic for Owner.
func (o *ops) ClaimIncoming(ctx context.Context, p store.ClaimIncomingParams) ([]row.Envelope, error) {
	return o.claim(ctx, row.ScanIncoming, o.d.ClaimIncoming(), p.Owner, p.Topic, p.Limit)
}

// DeleteIncoming deletes acknowledged incoming envelopes.
func (o *ops) DeleteIncoming(ctx context.Context, ids []uuid.UUID) error {
	_, err := o.exec(ctx, o.d.DeleteIncoming(), o.d.IDList(ids))
	return err
}

// RetryIncoming hands nacked envelopes back for a retry after Delay.
func (o *ops) RetryIncoming(ctx context.Context, p store.RetryParams) error {
	_, err := o.exec(ctx, o.d.RetryIncoming(), o.d.IDList(p.IDs), p.Delay.Milliseconds(), p.Owner)
	return err
}

// ReleaseIncoming hands incoming envelopes back.
func (o *ops) ReleaseIncoming(ctx context.Context, p store.ReleaseIncomingParams) error {
	_, err := o.exec(ctx, o.d.ReleaseIncoming(), o.d.IDList(p.IDs), o.d.IDList(p.Attempted), p.Owner)
	return err
}

// MarkIncomingHandled marks a delivered incoming envelope Handled.
func (o *ops) MarkIncomingHandled(ctx context.Context, p store.MarkHandledParams) (bool, error) {
	n, err := o.exec(ctx, o.d.MarkIncomingHandled(), o.uuid(p.ID), p.Topic, p.Keep.Milliseconds())
	return n == 1, err
}

// IncomingStatus returns the status of one incoming envelope of a topic.
func (o *ops) IncomingStatus(ctx context.Context, id uuid.UUID, topic string) (string, bool, error) {
	var status string
	err := o.row(ctx, o.d.IncomingStatus(), []any{o.uuid(id), topic}, &status)
	if errors.Is(err, dbx.ErrNoRows) {
		return "", false, nil
	}
	return status, err == nil, err
}

func (o *ops) insertHandledArgs(p store.InsertHandledParams) []any {
	args := p.Mark.IncomingArgs(make([]any, 0, len(row.IncomingColumns)+1), o.d.UUIDs())
	return append(args, p.Keep.Milliseconds())
}

// InsertHandled records a keyed inbox mark.
func (o *ops) InsertHandled(ctx context.Context, p store.InsertHandledParams) (bool, error) {
	n, err := o.exec(ctx, o.d.InsertHandled(), o.insertHandledArgs(p)...)
	return n > 0, err
}

// DeleteHandledMark withdraws a Handled mark.
func (o *ops) DeleteHandledMark(ctx context.Context, id uuid.UUID) error {
	_, err := o.exec(ctx, o.d.DeleteHandledMark(), o.uuid(id))
	return err
}

// InsertDeadLetter writes one dead letter from an envelope.
func (o *ops) InsertDeadLetter(ctx context.Context, e row.Envelope, r store.Reason) error {
	args := e.IncomingArgs(make([]any, 0, len(row.IncomingColumns)+5), o.d.UUIDs())
	args = append(args, r.Explanation, r.ExceptionType, r.ExceptionMessage, r.ExceptionText, r.Source)
	_, err := o.exec(ctx, o.d.InsertDeadLetter(), args...)
	return err
}

// Savepoint sets the savepoint of a handler attempt.
func (o *ops) Savepoint(ctx context.Context) error {
	_, err := o.exec(ctx, o.d.Savepoint())
	return err
}

// RollbackToSavepoint rolls the attempt back.
func (o *ops) RollbackToSavepoint(ctx context.Context) error {
	_, err := o.exec(ctx, o.d.RollbackToSavepoint())
	return err
}

// ReleaseSavepoint releases the savepoint, where the database can.
func (o *ops) ReleaseSavepoint(ctx context.Context) error {
	if !o.d.Caps().SavepointRelease {
		return nil
	}
	_, err := o.exec(ctx, o.d.ReleaseSavepoint())
	return err
}

// NotifyOutgoing wakes the relays when the transaction commits.
func (o *ops) NotifyOutgoing(ctx context.Context) error {
	if !o.d.Caps().Notifications {
		return nil
	}
	_, err := o.exec(ctx, o.d.NotifyOutgoing())
	return err
}

// NotifyIncoming wakes the subscribers of topic when the transaction commits.
func (o *ops) NotifyIncoming(ctx context.Context, topic string) error {
	if !o.d.Caps().Notifications {
		return nil
	}
	_, err := o.exec(ctx, o.d.NotifyIncoming(), topic)
	return err
}
