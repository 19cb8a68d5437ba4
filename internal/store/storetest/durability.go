package storetest

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// The durability agent's operations: locks (TryGlobalLock, node locks), scheduled release
// (ReleaseScheduled, TakeDueScheduledSends), dormant owners (OtherOwners, OwnersAlive,
// ReleaseOwner), Unowned, the expiry cleanups and Gauges.

// randomID is a random non-zero Jasper lock or node id (cases running at once on one
// database do not share locks).
func randomID() int32 {
	for {
		if id := int32(rand.Uint32()); id != 0 {
			return id
		}
	}
}

// globalLock is TryGlobalLock on a transaction, failing the case on error.
func (e *env) globalLock(tx openTx, id int32) bool {
	e.t.Helper()
	return must(tx.ops.TryGlobalLock(e.ctx, id))
}

// A transaction-level lock is held by one transaction at a time, until it ends, and not
// while a session holds the node lock of the same id (nor the other way round).
func testTryGlobalLock(e *env) {
	id := randomID()
	t1, t2 := e.begin(), e.begin()
	check(e, "taken by the first transaction", e.globalLock(t1, id), true)
	check(e, "taken by a second transaction", e.globalLock(t2, id), false)
	check(e, "another id taken by the second transaction", e.globalLock(t2, randomID()), true)
	e.ok(t1.Commit(e.ctx))
	check(e, "taken once the holder committed", e.globalLock(t2, id), true)
	e.ok(t2.Rollback(e.ctx))

	c := e.conn()
	check(e, "node lock taken", must(e.s.TryNodeLock(e.ctx, c, id)), true)
	t3 := e.begin()
	check(e, "taken beside a node lock", e.globalLock(t3, id), false)
	e.ok(t3.Rollback(e.ctx))
	check(e, "node lock released", must(e.s.ReleaseNodeLock(e.ctx, c, id)), true)
	t4 := e.begin()
	check(e, "taken once the node lock was released", e.globalLock(t4, id), true)
	check(e, "node lock taken beside a transaction lock", must(e.s.TryNodeLock(e.ctx, c, id)), false)
	e.ok(t4.Rollback(e.ctx))
	check(e, "node lock taken once the transaction ended", must(e.s.TryNodeLock(e.ctx, c, id)), true)
}

// Two connections held at once run on two sessions (the suite's database is direct), and one
// connection keeps its session from statement to statement; a transaction runs on its
// connection's session.
func testSessionIDs(e *env) {
	c1, c2 := e.conn(), e.conn()
	id1, id2 := must(e.s.SessionID(e.ctx, c1)), must(e.s.SessionID(e.ctx, c2))
	if id1 == id2 || id1 == 0 || id2 == 0 {
		e.t.Errorf("session ids of two connections held at once: %d and %d, want two different non-zero ids", id1, id2)
	}
	check(e, "the same connection asked again answers its session", must(e.s.SessionID(e.ctx, c1)) == id1, true)
	tx := must(c2.Begin(e.ctx))
	check(e, "a transaction of a connection runs on its session", must(e.s.SessionID(e.ctx, tx)) == id2, true)
	e.ok(tx.Rollback(e.ctx))
}

// A node lock is a session's, re-entrant, released one level at a time, and seen only by
// the session holding it.
func testNodeLocks(e *env) {
	id := randomID()
	c1, c2 := e.conn(), e.conn()
	type op = func(context.Context, dbx.Conn, int32) (bool, error)
	take, holds, release := op(e.s.TryNodeLock), op(e.s.HoldsNodeLock), op(e.s.ReleaseNodeLock)
	for i, step := range []struct {
		what string
		op   op
		conn dbx.Conn
		want bool
	}{
		{"take on 1", take, c1, true},
		{"holds on 1", holds, c1, true},
		{"holds on 2", holds, c2, false},
		{"take on 2", take, c2, false},
		{"take again on 1", take, c1, true},
		{"release one level on 1", release, c1, true},
		{"holds on 1 after one release of two", holds, c1, true},
		{"take on 2 while 1 holds one level", take, c2, false},
		{"release the last level on 1", release, c1, true},
		{"release on 1, not held", release, c1, false},
		{"holds on 1 after the release", holds, c1, false},
		{"take on 2 once free", take, c2, true},
		{"holds on 2", holds, c2, true},
		{"release on 2", release, c2, true},
	} {
		if got := must(step.op(e.ctx, step.conn, id)); got != step.want {
			e.t.Errorf("step %d, %s: %v, want %v", i+1, step.what, got, step.want)
		}
	}
}

// releaseScheduled is ReleaseScheduled, failing the case on error.
func (e *env) releaseScheduled(topics []string, limit int) store.ScheduledRelease {
	e.t.Helper()
	return must(e.s.ReleaseScheduled(e.ctx, topics, limit))
}

// checkRelease checks a scheduled release: the count, the topics where the database tells
// (PostgreSQL must), and whether an envelope remains scheduled for later.
func (e *env) checkRelease(what string, r store.ScheduledRelease, released int64, topics []string, later bool) {
	e.t.Helper()
	check(e, what+": released", r.Released, released)
	if r.Topics != nil || e.s.Dialect() == dbx.Postgres {
		check(e, what+": topics", sorted(r.Topics), sorted(topics))
	}
	if !later {
		check(e, what+": next due", r.NextDue, time.Duration(0))
		return
	}
	e.between(what+": next due", r.NextDue, 59*time.Minute, time.Hour)
}

// sendEnv is a Jasper scheduled send due at due.
func sendEnv(due *time.Time) row.Envelope {
	s := inEnv(row.DurableLocalURI, layout.StatusScheduled, due)
	s.MessageType, s.ContentType = row.ScheduledEnvelopeType, row.BinaryEnvelopeContentType
	return s
}

// Due Scheduled envelopes of the given topics become Incoming, up to the limit; owned ones,
// later ones and scheduled sends stay.
func testReleaseScheduled(e *env) {
	past := at(-time.Minute)
	t1, t2 := inEnv("t1", layout.StatusScheduled, past), inEnv("t2", layout.StatusScheduled, at(-3*time.Minute))
	t3 := []row.Envelope{inEnv("t3", layout.StatusScheduled, at(-2*time.Minute)), inEnv("t3", layout.StatusScheduled, at(-time.Second)),
		inEnv("t3", layout.StatusScheduled, past)}
	e.in(append(t3, t1, t2, inEnv("t1", layout.StatusScheduled, at(time.Hour)),
		owned(5, inEnv("t1", layout.StatusScheduled, past))[0], sendEnv(past))...)
	e.checkRelease("t1", e.releaseScheduled([]string{"t1"}, 10), 1, []string{"t1"}, true)
	e.checkRelease("t2 and t3, limit 2", e.releaseScheduled([]string{"t2", "t3"}, 2), 2, []string{"t2", "t3"}, false)
	e.checkRelease("t2 and t3 again", e.releaseScheduled([]string{"t2", "t3"}, 10), 2, []string{"t3"}, false)
	e.checkRelease("every topic", e.releaseScheduled(nil, 10), 0, nil, true)
	e.claimedIDs("t1", e.claimIn(1, "t1", 10), 1, t1)
	e.claimedIDs("t2", e.claimIn(1, "t2", 10), 1, t2)
	e.claimedIDs("t3", e.claimIn(1, "t3", 10), 1, t3...)
	check(e, "incoming by status", e.counts().IncomingByStatus, map[string]int64{layout.StatusIncoming: 5, layout.StatusScheduled: 3})
}

// Due scheduled sends are deleted and returned, oldest first, up to the limit; later sends
// and due envelopes that are not sends stay.
func testTakeDueScheduledSends(e *env) {
	first, second, later := sendEnv(at(-time.Minute)), sendEnv(at(-time.Second)), sendEnv(at(time.Hour))
	retry := inEnv(row.DurableLocalURI, layout.StatusScheduled, at(-time.Minute))
	e.in(second, later, first, retry)
	taken := must(e.s.TakeDueScheduledSends(e.ctx, 1))
	if len(taken) != 1 {
		e.t.Fatalf("took %d sends with a limit of 1", len(taken))
	}
	e.sameEnvelope("oldest due send", taken[0], first, 0, 0)
	e.claimedIDs("next take", must(e.s.TakeDueScheduledSends(e.ctx, 10)), 0, second)
	e.claimedIDs("take with none due", must(e.s.TakeDueScheduledSends(e.ctx, 10)), 0)
	for _, env := range []row.Envelope{first, second} {
		check(e, "taken send present", e.found(env.ID), false)
	}
	for _, env := range []row.Envelope{later, retry} {
		check(e, "untaken envelope present", e.found(env.ID), true)
	}
}

// nodeLocked takes the node lock of a random id on a connection of its own and returns the
// id (a live owner).
func (e *env) nodeLocked() int32 {
	e.t.Helper()
	id := randomID()
	if !must(e.s.TryNodeLock(e.ctx, e.conn(), id)) {
		e.t.Fatalf("node lock %d not taken", id)
	}
	return id
}

// Other owners are listed, told alive or dormant, and a dormant owner's envelopes are handed
// back, up to the limit per table.
func testOwners(e *env) {
	live, dead, self := e.nodeLocked(), randomID(), randomID()
	e.insert(
		[]row.Envelope{owned(live, outEnv("d"))[0], owned(dead, outEnv("d"))[0], outEnv("d"), owned(self, outEnv("d"))[0]},
		append(owned(dead, inEnv("topic-a", layout.StatusIncoming, nil), inEnv("topic-a", layout.StatusIncoming, nil)),
			owned(self, inEnv("topic-b", layout.StatusIncoming, nil))...))
	check(e, "other owners", sorted(must(e.s.OtherOwners(e.ctx, self))), sorted([]int32{live, dead}))
	check(e, "owners alive", must(e.s.OwnersAlive(e.ctx, []int32{live, dead})), map[int32]bool{live: true, dead: false})
	check(e, "owners alive of none", must(e.s.OwnersAlive(e.ctx, nil)), map[int32]bool{})

	for i, want := range []store.Released{
		{Incoming: 1, Outgoing: 1, Topics: []string{"topic-a"}},
		{Incoming: 1, Outgoing: 0, Topics: []string{"topic-a"}},
		{},
	} {
		got := must(e.s.ReleaseOwner(e.ctx, dead, 1))
		got.Topics = sorted(got.Topics)
		check(e, "hand-back "+string(rune('1'+i))+" of a dormant owner", got, want)
	}
	check(e, "other owners after the hand-back", must(e.s.OtherOwners(e.ctx, self)), []int32{live})
	c := e.counts()
	check(e, "incoming by owner", c.IncomingByOwner, map[int32]int64{0: 2, self: 1})
	check(e, "outgoing by owner", c.OutgoingByOwner, map[int32]int64{0: 2, live: 1, self: 1})
}

// Unowned tells whether an unowned outgoing envelope waits and which topics have unowned
// Incoming envelopes (not Scheduled or Handled ones, not owned ones).
func testUnowned(e *env) {
	check(e, "unowned of an empty schema", e.unowned(), store.Unowned{})
	e.insert([]row.Envelope{owned(3, outEnv("x"))[0]}, []row.Envelope{owned(3, inEnv("owned", layout.StatusIncoming, nil))[0],
		inEnv("scheduled", layout.StatusScheduled, at(-time.Minute)), inEnv("handled", layout.StatusHandled, nil)})
	check(e, "unowned with nothing to claim", e.unowned(), store.Unowned{})
	e.insert([]row.Envelope{outEnv("x")}, []row.Envelope{inEnv("t2", layout.StatusIncoming, nil),
		inEnv("t1", layout.StatusIncoming, nil), inEnv("t1", layout.StatusIncoming, nil)})
	check(e, "unowned", e.unowned(), store.Unowned{Outgoing: true, Topics: []string{"t1", "t2"}})
}

// unowned is Unowned with sorted topics (nil when none).
func (e *env) unowned() store.Unowned {
	e.t.Helper()
	u := must(e.s.Unowned(e.ctx))
	u.Topics = sorted(u.Topics)
	return u
}

// checkDeletes runs a cleanup three times (limit 1, then 10, then 10) and checks how many
// rows each deleted.
func (e *env) checkDeletes(what string, del func(context.Context, int) (int64, error), want ...int64) {
	e.t.Helper()
	for i, limit := range []int{1, 10, 10} {
		check(e, what+" run "+string(rune('1'+i)), must(del(e.ctx, limit)), want[i])
	}
}

// Unowned outgoing envelopes past deliver_by are deleted, up to the limit; owned ones and
// those still deliverable stay.
func testDeleteExpiredOutgoing(e *env) {
	expiring := func(owner int32, by *time.Time) row.Envelope {
		o := outEnv("x")
		o.OwnerID, o.DeliverBy = owner, by
		return o
	}
	future, none := expiring(0, at(time.Hour)), expiring(0, nil)
	e.out(expiring(0, at(-time.Minute)), expiring(0, at(-time.Second)), expiring(4, at(-time.Minute)), future, none)
	e.checkDeletes("DeleteExpiredOutgoing", e.s.DeleteExpiredOutgoing, 1, 1, 0)
	check(e, "outgoing by owner", e.counts().OutgoingByOwner, map[int32]int64{0: 2, 4: 1})
	e.claimedIDs("left", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 9, Limit: 10}), 9, future, none)
}

// Handled marks past keep_until are deleted (keyed marks and marked envelopes), up to the
// limit; others stay.
func testDeleteExpiredHandled(e *env) {
	mark := func(keep time.Duration) row.Envelope {
		p := handledMark()
		p.Keep = keep
		check(e, "mark recorded", must(e.s.InsertHandled(e.ctx, p)), true)
		return p.Mark
	}
	expired, fresh := mark(-time.Minute), mark(time.Hour)
	delivered, in := inEnv("inbox", layout.StatusIncoming, nil), inEnv("inbox", layout.StatusIncoming, nil)
	e.in(delivered, in)
	check(e, "marked", must(e.s.MarkIncomingHandled(e.ctx, store.MarkHandledParams{ID: delivered.ID, Topic: "inbox", Keep: -time.Minute})), true)
	e.checkDeletes("DeleteExpiredHandled", e.s.DeleteExpiredHandled, 1, 1, 0)
	for env, want := range map[*row.Envelope]bool{&expired: false, &delivered: false, &fresh: true, &in: true} {
		check(e, "present after the cleanup: "+env.ID.String(), e.found(env.ID), want)
	}
}

// Gauges sample the tables in one query: rows by status, outgoing rows and the age of the
// oldest, dead letters, and the rows held by owners whose node lock no session holds.
func testGauges(e *env) {
	check(e, "gauges of an empty schema", must(e.s.Gauges(e.ctx)), store.Gauges{})
	live, dead := e.nodeLocked(), randomID()
	old := outEnv("g")
	e.insert([]row.Envelope{owned(live, outEnv("g"))[0], owned(dead, outEnv("g"))[0], old},
		[]row.Envelope{owned(dead, inEnv("g", layout.StatusIncoming, nil))[0], inEnv("g", layout.StatusScheduled, at(time.Hour))})
	e.set(layout.OutgoingTable, "timestamp", old.ID, time.Now().Add(-time.Hour).UTC())
	must(e.s.InsertHandled(e.ctx, handledMark()))
	e.ok(e.s.InsertDeadLetter(e.ctx, inEnv("g", layout.StatusIncoming, nil), reason("g")))
	g := must(e.s.Gauges(e.ctx))
	e.between("age of the oldest outgoing envelope", g.OldestOutgoingAge, 55*time.Minute, 65*time.Minute)
	g.OldestOutgoingAge = 0
	check(e, "gauges", g, store.Gauges{Incoming: 1, Scheduled: 1, Handled: 1, Outgoing: 3, DeadLetters: 1, DormantOwned: 2})
}
