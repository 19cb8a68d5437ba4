package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// The relay's operations on outgoing envelopes (ClaimOutgoing, DeleteOutgoing,
// ReleaseOutgoing, DeadLetterOutgoing) and the dead-letter checks shared with the queue's.

// A claim takes unowned envelopes only, up to its limit, skipping excluded destinations and
// keeping to the only ones when given.
func testClaimOutgoing(e *env) {
	a1, a2, b, c := outEnv("a"), outEnv("a"), outEnv("b"), outEnv("c")
	e.out(a1, a2, b, c, owned(9, outEnv("a"))[0])
	first := e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 7, Exclude: []string{"b", "c"}, Limit: 1})
	if len(first) != 1 || first[0].Destination != "a" {
		e.t.Fatalf("claim of 1 excluding b and c: %+v", first)
	}
	rest := e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 7, Exclude: []string{"b", "c"}, Limit: 10})
	e.claimedIDs("excluding b and c", append(first, rest...), 7, a1, a2)
	e.writtenAt("claimed", append(first, rest...))
	e.claimedIDs("only b and c, c excluded", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 8, Exclude: []string{"c"}, Only: []string{"b", "c"}, Limit: 10}), 8, b)
	e.claimedIDs("only c", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 8, Only: []string{"c"}, Limit: 10}), 8, c)
	e.claimedIDs("with nothing unowned left", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 9, Limit: 10}), 9)
	check(e, "outgoing by owner", e.counts().OutgoingByOwner, map[int32]int64{7: 2, 8: 2, 9: 1})
}

// skipsLocked checks a claim beside a transaction that claimed (and so locked) one of
// envs: it takes the others without waiting, and the locked one once the transaction rolled
// back.
func (e *env) skipsLocked(envs []row.Envelope, claim func(ops store.Ops, owner int32, limit int) []row.Envelope) {
	e.t.Helper()
	tx := e.begin()
	held := claim(tx.ops, 10, 1)
	if len(held) != 1 {
		e.t.Fatalf("claim of 1 in a transaction took %d", len(held))
	}
	var others []row.Envelope
	for _, env := range envs {
		if env.ID != held[0].ID {
			others = append(others, env)
		}
	}
	e.claimedIDs("beside a transaction holding a row", claim(e.s, 11, 10), 11, others...)
	e.ok(tx.Rollback(e.ctx))
	e.claimedIDs("after the transaction rolled back", claim(e.s, 12, 10), 12, held[0])
}

func testClaimOutgoingSkipsLockedRows(e *env) {
	envs := []row.Envelope{outEnv("a"), outEnv("a"), outEnv("a")}
	e.out(envs...)
	e.skipsLocked(envs, func(ops store.Ops, owner int32, limit int) []row.Envelope {
		return e.claimOut(ops, store.ClaimOutgoingParams{Owner: owner, Limit: limit})
	})
}

// A lock takes unowned envelopes only, in the caller's transaction, up to its limit and
// within the destination filters, without marking them; a second transaction skips what the
// first holds, and once the first commits a delete or rolls back, what it held is gone or
// free again.
func testLockOutgoing(e *env) {
	a1, a2, b, c := outEnv("a"), outEnv("a"), outEnv("b"), outEnv("c")
	e.out(a1, a2, b, c, owned(9, outEnv("a"))[0])
	lock := func(tx openTx, p store.LockOutgoingParams) []row.Envelope {
		e.t.Helper()
		return must(tx.ops.LockOutgoing(e.ctx, p))
	}
	written := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	e.set(layout.OutgoingTable, "timestamp", a2.ID, written)
	first := e.begin()
	got := lock(first, store.LockOutgoingParams{Exclude: []string{"b", "c"}, Limit: 10})
	e.claimedIDs("excluding b and c", got, 0, a1, a2)
	for _, env := range got {
		if env.ID == a2.ID && (env.WrittenAt == nil || !env.WrittenAt.Equal(written)) {
			e.t.Fatalf("locked envelope's WrittenAt = %v, want its timestamp column %v", env.WrittenAt, written)
		}
	}
	second := e.begin()
	e.claimedIDs("beside the first, only a, b", lock(second, store.LockOutgoingParams{Only: []string{"a", "b"}, Limit: 10}), 0, b)
	e.ok(second.Rollback(e.ctx))
	third := e.begin()
	e.claimedIDs("limit 1 of c", lock(third, store.LockOutgoingParams{Exclude: []string{"b"}, Limit: 1}), 0, c)
	e.ok(third.Rollback(e.ctx))
	e.ok(first.ops.DeleteOutgoing(e.ctx, idsOf(a1)))
	e.ok(first.Rollback(e.ctx))
	again := e.begin()
	e.claimedIDs("after the first rolled back", lock(again, store.LockOutgoingParams{Limit: 10}), 0, a1, a2, b, c)
	e.ok(again.ops.DeleteOutgoing(e.ctx, idsOf(a1, b)))
	e.ok(again.Commit(e.ctx))
	check(e, "outgoing by owner after the commit", e.counts().OutgoingByOwner, map[int32]int64{0: 2, 9: 1})
}

// A relay's batch transaction (BeginRelay) locks, deletes and commits like any other; its
// commit does not wait for the disk on PostgreSQL (synchronous_commit off for that
// transaction alone), and a rolled-back batch leaves its envelopes to be relayed again.
func testBeginRelay(e *env) {
	a, b := outEnv("a"), outEnv("a")
	e.out(a, b)
	for _, commit := range []bool{false, true} {
		tx := must(e.s.BeginRelay(e.ctx))
		ops := e.s.With(tx)
		e.claimedIDs("in a relay's batch", must(ops.LockOutgoing(e.ctx, store.LockOutgoingParams{IDs: idsOf(a)})), 0, a)
		e.ok(ops.DeleteOutgoing(e.ctx, idsOf(a)))
		if e.s.Dialect() == dbx.Postgres {
			if got := e.setting(tx, "synchronous_commit"); got != "off" {
				e.t.Errorf("synchronous_commit in a relay's batch = %q, want off", got)
			}
		}
		end := tx.Rollback
		if commit {
			end = tx.Commit
		}
		e.ok(end(e.ctx))
		want := map[int32]int64{0: 2}
		if commit {
			want = map[int32]int64{0: 1}
		}
		check(e, fmt.Sprintf("outgoing after the batch (committed %v)", commit), e.counts().OutgoingByOwner, want)
	}
}

// setting reads a PostgreSQL setting in q.
func (e *env) setting(q dbx.Querier, name string) string {
	e.t.Helper()
	var v string
	e.ok(dbx.QueryRow(e.ctx, q, "SELECT current_setting($1)", []any{name}, &v))
	return v
}

// An "only" destination ending in * is a prefix; everything else in it, LIKE's wildcards and
// SQL Server's [ classes included, matches literally.
func testLockOutgoingByPrefix(e *env) {
	under, plain, pct, z, class := outEnv("rabbitmq://queue/a_1"), outEnv("rabbitmq://queue/ab"), outEnv("x%y"), outEnv("xzy"), outEnv("q[1]")
	e.out(under, plain, pct, z, class)
	for _, c := range []struct {
		only []string
		want []row.Envelope
	}{
		{[]string{"rabbitmq://*"}, []row.Envelope{under, plain}},
		{[]string{"rabbitmq://queue/a_*"}, []row.Envelope{under}},
		{[]string{"x%y"}, []row.Envelope{pct}},
		{[]string{"x%*"}, []row.Envelope{pct}},
		{[]string{"q[1]", "xzy"}, []row.Envelope{class, z}},
		{[]string{"q*", "rabbitmq://queue/ab"}, []row.Envelope{class, plain}},
	} {
		tx := e.begin()
		e.claimedIDs(fmt.Sprintf("only %q", c.only), must(tx.ops.LockOutgoing(e.ctx, store.LockOutgoingParams{Only: c.only, Limit: 10})), 0, c.want...)
		e.ok(tx.Rollback(e.ctx))
	}
}

func testDeleteOutgoing(e *env) {
	a, b := outEnv("a"), outEnv("a")
	e.out(a, b)
	e.ok(e.s.DeleteOutgoing(e.ctx, nil))
	e.ok(e.s.DeleteOutgoing(e.ctx, []uuid.UUID{a.ID, uuid.New()}))
	e.claimedIDs("left after the delete", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 1, Limit: 10}), 1, b)
}

// A release hands back only the envelopes still owned by the releasing node, counting an
// attempt when asked.
func testReleaseOutgoing(e *env) {
	a, b, c := outEnv("a"), outEnv("a"), outEnv("a")
	e.out(a, b, c)
	e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 7, Limit: 10})
	e.ok(e.s.ReleaseOutgoing(e.ctx, store.ReleaseParams{IDs: idsOf(a, b), Owner: 8, CountAttempt: true}))
	e.ok(e.s.ReleaseOutgoing(e.ctx, store.ReleaseParams{IDs: idsOf(a), Owner: 7, CountAttempt: true}))
	e.ok(e.s.ReleaseOutgoing(e.ctx, store.ReleaseParams{IDs: idsOf(b), Owner: 7}))
	got := e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 9, Limit: 10})
	e.claimedIDs("released", got, 9, a, b)
	check(e, "attempts after a failed release", e.byID(got, a.ID).Attempts, 1)
	check(e, "attempts after a plain release", e.byID(got, b.ID).Attempts, 0)
	check(e, "outgoing by owner", e.counts().OutgoingByOwner, map[int32]int64{7: 1, 9: 2})
}

// sqlServerDeadLetterMessageType is the dead letters' message_type size on SQL Server; the
// dialect truncates longer values and says so in the explanation (internal/store/sqlserver).
const sqlServerDeadLetterMessageType = 100

// fitted is what a dead letter of env with reason r holds: on SQL Server a message_type
// wider than the dead letters' column is cut and the explanation notes it.
func (e *env) fitted(env row.Envelope, r store.Reason) (row.Envelope, store.Reason) {
	if e.sqlserver() && len(env.MessageType) > sqlServerDeadLetterMessageType {
		env.MessageType = env.MessageType[:sqlServerDeadLetterMessageType]
		r.Explanation += " [SQL Server: message_type truncated to 100 characters]"
	}
	return env, r
}

// sameDeadLetter checks every column of a dead letter read with its body against the
// envelope it was made of, its reason and its attempts.
func (e *env) sameDeadLetter(got row.DeadLetter, env row.Envelope, r store.Reason, attempts int) {
	e.t.Helper()
	env, r = e.fitted(env, r)
	want := row.DeadLetter{
		ID: env.ID, ReceivedAt: env.Destination, Source: r.Source, MessageType: env.MessageType,
		ContentType: env.ContentType, Explanation: r.Explanation, ExceptionType: r.ExceptionType,
		ExceptionMessage: r.ExceptionMessage, ExceptionText: r.ExceptionText, Attempts: attempts,
		ExecutionTime: utc(env.ExecutionTime), MessageUUID: env.MessageUUID, CorrelationID: env.CorrelationID,
		ParentID: env.ParentID, SagaID: env.SagaID, ReplyURI: env.ReplyURI, ReplyRequested: env.ReplyRequested,
		ConversationID: env.ConversationID, AckRequested: env.AckRequested, Body: env.Body, BodySize: len(env.Body),
	}
	if env.Headers != nil {
		e.ok(json.Unmarshal(env.Headers, &want.Headers))
	}
	if got.Timestamp == nil {
		e.t.Errorf("dead letter %s has no timestamp", got.ID)
	}
	got.Timestamp, got.ExecutionTime = nil, utc(got.ExecutionTime)
	check(e, "dead letter "+env.ID.String(), got, want)
}

// Moved envelopes leave the table and become dead letters with their own reasons, received
// at their destination, with one more attempt (the failed send); moving an id again
// replaces its dead letter.
func testDeadLetterOutgoing(e *env) {
	a, b, keep := outEnv("orders"), outEnv("orders"), outEnv("orders")
	a.Attempts = 2
	b.MessageType = strings.Repeat("m", 200) // wider than SQL Server's dead-letter column
	e.out(a, b, keep)
	e.ok(e.s.DeadLetterOutgoing(e.ctx, nil))
	e.ok(e.s.DeadLetterOutgoing(e.ctx, letters([]row.Envelope{a, b}, "a", "b")))
	e.claimedIDs("left after the move", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 1, Limit: 10}), 1, keep)
	e.sameDeadLetter(e.deadLetter(a.ID), a, reason("a"), 3)
	e.sameDeadLetter(e.deadLetter(b.ID), b, reason("b"), 1)

	e.out(a)
	e.ok(e.s.DeadLetterOutgoing(e.ctx, letters([]row.Envelope{a}, "again")))
	e.sameDeadLetter(e.deadLetter(a.ID), a, reason("again"), 3)
	check(e, "dead letters", e.counts().DeadLetters, int64(2))
}

// A move whose dead letters cannot be written deletes nothing, for any envelope of the call.
func testDeadLetterMovesAreAtomic(e *env) {
	e.refuse(layout.DeadLetterTable, "explanation", "refused")
	o1, o2 := outEnv("orders"), outEnv("orders")
	i1, i2 := inEnv("jobs", layout.StatusIncoming, nil), inEnv("jobs", layout.StatusIncoming, nil)
	e.insert([]row.Envelope{o1, o2}, []row.Envelope{i1, i2})
	for _, m := range []struct {
		what string
		move func(context.Context, []store.DeadLetterReason) error
		envs []row.Envelope
	}{
		{"DeadLetterOutgoing", e.s.DeadLetterOutgoing, []row.Envelope{o1, o2}},
		{"DeadLetterIncoming", e.s.DeadLetterIncoming, []row.Envelope{i1, i2}},
	} {
		ls := letters(m.envs, "fine", "refused")
		ls[1].Explanation = "refused"
		if err := m.move(e.ctx, ls); err == nil {
			e.t.Errorf("%s wrote a dead letter the table refuses", m.what)
		}
	}
	c := e.counts()
	check(e, "outgoing after refused moves", c.OutgoingByDestination, map[string]int64{"orders": 2})
	check(e, "incoming after refused moves", c.IncomingByStatus, map[string]int64{layout.StatusIncoming: 2})
	check(e, "dead letters after refused moves", c.DeadLetters, int64(0))
}

// writtenAt checks that claimed envelopes carry their rows' timestamp (written just now).
func (e *env) writtenAt(what string, envs []row.Envelope) {
	e.t.Helper()
	now := e.dbNow()
	for _, env := range envs {
		if env.WrittenAt == nil {
			e.t.Fatalf("%s: envelope %s has no WrittenAt (its timestamp column)", what, env.ID)
		}
		e.between(what+": WrittenAt before now", now.Sub(*env.WrittenAt), -time.Second, time.Minute)
	}
}
