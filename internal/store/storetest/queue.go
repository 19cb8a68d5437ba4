package storetest

import (
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// The durable local queues' operations on incoming envelopes (ClaimIncoming, DeleteIncoming,
// RetryIncoming, ReleaseIncoming, DeadLetterIncoming).

// A claim takes the unowned Incoming envelopes of its topic only (not Scheduled or Handled
// ones, not another topic's, not a topic that merely starts with its own), up to its limit.
func testClaimIncoming(e *env) {
	i1, i2 := inEnv("t1", layout.StatusIncoming, nil), inEnv("t1", layout.StatusIncoming, nil)
	other := inEnv("t2", layout.StatusIncoming, nil)
	prefix := strings.Repeat("p", 100) // received_at is varchar(100) on SQL Server
	long := inEnv(prefix, layout.StatusIncoming, nil)
	e.in(i1, i2, other, long, owned(9, inEnv("t1", layout.StatusIncoming, nil))[0],
		inEnv("t1", layout.StatusScheduled, at(-time.Minute)), inEnv("t1", layout.StatusHandled, nil))
	first := e.claimIn(5, "t1", 1)
	if len(first) != 1 {
		e.t.Fatalf("claim of 1 took %d", len(first))
	}
	e.claimedIDs("t1", append(first, e.claimIn(5, "t1", 10)...), 5, i1, i2)
	e.claimedIDs("t1 once claimed", e.claimIn(5, "t1", 10), 5)
	e.claimedIDs("t2", e.claimIn(6, "t2", 10), 6, other)
	e.claimedIDs("a longer topic starting with a topic", e.claimIn(5, prefix+"-longer", 10), 5)
	e.claimedIDs("a 100-character topic", e.claimIn(5, prefix, 10), 5, long)
}

func testClaimIncomingSkipsLockedRows(e *env) {
	envs := []row.Envelope{inEnv("t", layout.StatusIncoming, nil), inEnv("t", layout.StatusIncoming, nil), inEnv("t", layout.StatusIncoming, nil)}
	e.in(envs...)
	e.skipsLocked(envs, func(ops store.Ops, owner int32, limit int) []row.Envelope {
		return must(ops.ClaimIncoming(e.ctx, store.ClaimIncomingParams{Owner: owner, Topic: "t", Limit: limit}))
	})
}

// found reports whether the incoming table has a row id.
func (e *env) found(id uuid.UUID) bool {
	e.t.Helper()
	_, ok := e.incoming(id)
	return ok
}

// An acknowledgement deletes incoming envelopes, except Handled inbox marks.
func testDeleteIncoming(e *env) {
	a, b := inEnv("t", layout.StatusIncoming, nil), inEnv("t", layout.StatusIncoming, nil)
	e.in(a, b)
	mark := inEnv("t", layout.StatusHandled, nil)
	must(e.s.InsertHandled(e.ctx, store.InsertHandledParams{Mark: mark, Keep: time.Hour}))
	e.ok(e.s.DeleteIncoming(e.ctx, nil))
	e.ok(e.s.DeleteIncoming(e.ctx, []uuid.UUID{a.ID, mark.ID, uuid.New()}))
	check(e, "acknowledged envelope present", e.found(a.ID), false)
	check(e, "other envelope present", e.found(b.ID), true)
	check(e, "status of the Handled mark", e.mustIncoming(mark.ID).Status, layout.StatusHandled)
}

// between checks that d lies in (lo, hi].
func (e *env) between(what string, d, lo, hi time.Duration) {
	e.t.Helper()
	if d <= lo || d > hi {
		e.t.Errorf("%s = %v, want more than %v and at most %v", what, d, lo, hi)
	}
}

// A retry counts an attempt and hands the envelope back: at once (Incoming) without a delay,
// Scheduled at now + delay with one; only envelopes still owned by the node are touched.
func testRetryIncoming(e *env) {
	now, later, other := inEnv("t", layout.StatusIncoming, nil), inEnv("t", layout.StatusIncoming, nil), inEnv("t", layout.StatusIncoming, nil)
	e.in(now, later, other)
	e.claimIn(5, "t", 10)
	e.ok(e.s.RetryIncoming(e.ctx, store.RetryParams{IDs: idsOf(now, later, other), Owner: 6, Delay: time.Minute}))
	e.ok(e.s.RetryIncoming(e.ctx, store.RetryParams{IDs: idsOf(now), Owner: 5}))
	e.ok(e.s.RetryIncoming(e.ctx, store.RetryParams{IDs: idsOf(later), Owner: 5, Delay: time.Hour}))
	check(e, "retried at once", e.mustIncoming(now.ID), incomingRow{Status: layout.StatusIncoming, Attempts: 1, Body: now.Body})
	r := e.mustIncoming(later.ID)
	if r.Status != layout.StatusScheduled || r.Owner != 0 || r.Attempts != 1 || !r.ExecutionTime.Valid {
		e.t.Fatalf("retried later: %+v", r)
	}
	e.between("execution time of the retry from now", r.ExecutionTime.Time.Sub(e.dbNow()), 59*time.Minute, time.Hour)
	check(e, "not retried by another owner", e.mustIncoming(other.ID), incomingRow{Status: layout.StatusIncoming, Owner: 5, Body: other.Body})
	rel := must(e.s.ReleaseScheduled(e.ctx, nil, 10))
	check(e, "released before due", rel.Released, int64(0))
	e.between("next due", rel.NextDue, 59*time.Minute, time.Hour)
	e.claimedIDs("after the retries", e.claimIn(7, "t", 10), 7, now)
}

// A release hands back the envelopes still owned by the node; those delivered count an
// attempt.
func testReleaseIncoming(e *env) {
	a, b, c := inEnv("t", layout.StatusIncoming, nil), inEnv("t", layout.StatusIncoming, nil), inEnv("t", layout.StatusIncoming, nil)
	e.in(a, b, c)
	e.claimIn(5, "t", 10)
	e.ok(e.s.ReleaseIncoming(e.ctx, store.ReleaseIncomingParams{IDs: idsOf(a, b), Attempted: idsOf(a), Owner: 6}))
	e.ok(e.s.ReleaseIncoming(e.ctx, store.ReleaseIncomingParams{IDs: idsOf(a, b), Attempted: idsOf(a), Owner: 5}))
	got := e.claimIn(7, "t", 10)
	e.claimedIDs("released", got, 7, a, b)
	check(e, "attempts of a delivered envelope", e.byID(got, a.ID).Attempts, 1)
	check(e, "attempts of an undelivered envelope", e.byID(got, b.ID).Attempts, 0)
	check(e, "incoming by owner", e.counts().IncomingByOwner, map[int32]int64{5: 1, 7: 2})
}

// Moved envelopes leave the table and become dead letters with their reasons, received at
// their topic, keeping their attempts and execution time.
func testDeadLetterIncoming(e *env) {
	a, s, keep := inEnv("jobs", layout.StatusIncoming, nil), inEnv("jobs", layout.StatusScheduled, at(time.Hour)), inEnv("jobs", layout.StatusIncoming, nil)
	a.Attempts = 2
	e.in(a, s, keep)
	e.ok(e.s.DeadLetterIncoming(e.ctx, nil))
	e.ok(e.s.DeadLetterIncoming(e.ctx, letters([]row.Envelope{a, s}, "a", "s")))
	e.sameDeadLetter(e.deadLetter(a.ID), a, reason("a"), 2)
	e.sameDeadLetter(e.deadLetter(s.ID), s, reason("s"), 0)
	check(e, "moved envelope present", e.found(a.ID), false)
	check(e, "other envelope present", e.found(keep.ID), true)
}
