package storetest

import (
	"context"
	"errors"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// End to end through the operations only, as the components use them: an outbox relayed
// (published in a caller's transaction, claimed, sent, one send failing until it is a dead
// letter) and a durable local queue (delivered, nacked with a delay, released when due,
// delivered again, handled by an inbox and acknowledged); and the store's own methods the
// components run them through (InTx, With, Schema).

func testOutboxLifecycle(e *env) {
	msgs := bulk("orders", 3)
	tx := e.begin()
	e.ok(tx.ops.InsertEnvelopes(e.ctx, store.InsertParams{Outgoing: msgs, NotifyOutgoing: true}))
	e.claimedIDs("before the publisher committed", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 1, Limit: 10}), 1)
	e.ok(tx.Commit(e.ctx))
	e.claimedIDs("relay", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 1, Limit: 10}), 1, msgs...)
	e.ok(e.s.DeleteOutgoing(e.ctx, idsOf(msgs[0], msgs[1])))
	e.ok(e.s.ReleaseOutgoing(e.ctx, store.ReleaseParams{IDs: idsOf(msgs[2]), Owner: 1, CountAttempt: true}))
	again := e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 2, Limit: 10})
	e.claimedIDs("relay after a failed send", again, 2, msgs[2])
	e.sameEnvelope("envelope after a failed send", again[0], msgs[2], 2, 1)
	e.ok(e.s.DeadLetterOutgoing(e.ctx, letters(msgs[2:], "poisoned")))
	e.sameDeadLetter(e.deadLetter(msgs[2].ID), msgs[2], reason("poisoned"), 2)
	check(e, "outgoing left", e.counts().OutgoingByDestination, map[string]int64{})
}

func testQueueLifecycle(e *env) {
	job := inEnv("jobs", layout.StatusIncoming, nil)
	e.ok(e.s.InsertEnvelopes(e.ctx, store.InsertParams{Incoming: []row.Envelope{job}, NotifyTopics: []string{"jobs"}}))
	e.claimedIDs("first delivery", e.claimIn(3, "jobs", 10), 3, job)
	e.ok(e.s.RetryIncoming(e.ctx, store.RetryParams{IDs: idsOf(job), Owner: 3, Delay: time.Hour}))
	e.claimedIDs("while the retry waits", e.claimIn(3, "jobs", 10), 3)
	e.set(layout.IncomingTable, "execution_time", job.ID, time.Now().Add(-time.Second).UTC())
	check(e, "released when due", e.releaseScheduled([]string{"jobs"}, 10).Released, int64(1))
	second := e.claimIn(4, "jobs", 10)
	e.claimedIDs("second delivery", second, 4, job)
	check(e, "attempts of the second delivery", second[0].Attempts, 1)

	tx, marked, err := e.s.BeginMarkHandled(e.ctx, store.MarkHandledParams{ID: job.ID, Topic: "jobs", Keep: time.Hour})
	e.ok(err)
	check(e, "marked by the inbox", marked, true)
	e.ok(tx.Commit(e.ctx))
	e.ok(e.s.DeleteIncoming(e.ctx, idsOf(job)))
	e.checkStatus("acknowledged envelope an inbox handled", job.ID, "jobs", layout.StatusHandled)
	check(e, "expired marks deleted", must(e.s.DeleteExpiredHandled(e.ctx, 10)), int64(0))
	check(e, "gauges", must(e.s.Gauges(e.ctx)), store.Gauges{Handled: 1})
}

// InTx commits when its function returns nil and rolls back otherwise; With runs the
// operations on a dedicated connection; Schema is the normalized config.
func testInTxAndWith(e *env) {
	a, b := outEnv("a"), outEnv("b")
	insert := func(env row.Envelope) func(context.Context, store.Ops) error {
		return func(ctx context.Context, tx store.Ops) error {
			return tx.InsertEnvelopes(ctx, store.InsertParams{Outgoing: []row.Envelope{env}})
		}
	}
	e.ok(e.s.InTx(e.ctx, insert(a)))
	boom := errors.New("boom")
	err := e.s.InTx(e.ctx, func(ctx context.Context, tx store.Ops) error {
		if err := insert(b)(ctx, tx); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		e.t.Errorf("InTx returned %v, want its function's error", err)
	}
	check(e, "outgoing seen on a dedicated connection", must(e.s.With(e.conn()).Counts(e.ctx)).OutgoingByDestination, map[string]int64{"a": 1})
	norm, err := e.s.Schema().Normalized()
	e.ok(err)
	check(e, "schema", e.s.Schema(), norm)
	check(e, "dialect", e.s.Schema().Dialect, e.s.Dialect())
	check(e, "pool dialect", e.s.DB().Dialect(), e.s.Dialect())
}
