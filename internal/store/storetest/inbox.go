package storetest

import (
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// The inbox and dead-letter middleware's operations (MarkIncomingHandled, IncomingStatus,
// InsertHandled, DeleteHandledMark, BeginMarkHandled, BeginInsertHandled, InsertDeadLetter)
// and the savepoints of a handler attempt.

// status is IncomingStatus, failing the case on error.
func (e *env) status(id uuid.UUID, topic string) (string, bool) {
	e.t.Helper()
	st, found, err := e.s.IncomingStatus(e.ctx, id, topic)
	e.ok(err)
	return st, found
}

// checkStatus checks the status of an incoming envelope of a topic ("" for none).
func (e *env) checkStatus(what string, id uuid.UUID, topic, want string) {
	e.t.Helper()
	st, found := e.status(id, topic)
	if found != (want != "") || st != want {
		e.t.Errorf("%s: status %q (found %v), want %q", what, st, found, want)
	}
}

// checkMark checks an incoming row made a Handled mark kept for about an hour: unowned, its
// body emptied when it was a delivered envelope.
func (e *env) checkMark(what string, id uuid.UUID, body []byte) {
	e.t.Helper()
	r := e.mustIncoming(id)
	if r.Status != layout.StatusHandled || r.Owner != 0 || string(r.Body) != string(body) || !r.KeepUntil.Valid {
		e.t.Fatalf("%s: %+v, want an unowned Handled row with body %q and keep_until", what, r, body)
	}
	e.between(what+": keep_until from now", r.KeepUntil.Time.Sub(e.dbNow()), 59*time.Minute, time.Hour)
}

// A delivered envelope is marked Handled once, only while Incoming in its topic.
func testMarkIncomingHandled(e *env) {
	in, sched := inEnv("inbox", layout.StatusIncoming, nil), inEnv("inbox", layout.StatusScheduled, at(time.Hour))
	e.in(in, sched)
	e.claimIn(3, "inbox", 10)
	mark := func(id uuid.UUID, topic string) bool {
		return must(e.s.MarkIncomingHandled(e.ctx, store.MarkHandledParams{ID: id, Topic: topic, Keep: time.Hour}))
	}
	check(e, "marked in another topic", mark(in.ID, "other"), false)
	check(e, "marked", mark(in.ID, "inbox"), true)
	check(e, "marked again", mark(in.ID, "inbox"), false)
	check(e, "marked while Scheduled", mark(sched.ID, "inbox"), false)
	check(e, "marked a missing envelope", mark(uuid.New(), "inbox"), false)
	e.checkMark("marked envelope", in.ID, nil)

	e.checkStatus("marked envelope", in.ID, "inbox", layout.StatusHandled)
	e.checkStatus("marked envelope in another topic", in.ID, "other", "")
	e.checkStatus("scheduled envelope", sched.ID, "inbox", layout.StatusScheduled)
	e.checkStatus("missing envelope", uuid.New(), "inbox", "")
}

// handledMark is a keyed inbox mark of topic inbox.
func handledMark() store.InsertHandledParams {
	return store.InsertHandledParams{Mark: inEnv("inbox", layout.StatusHandled, nil), Keep: time.Hour}
}

// A keyed mark is recorded once; the second insert of its id is a duplicate.
func testInsertHandled(e *env) {
	p := handledMark()
	check(e, "first insert recorded", must(e.s.InsertHandled(e.ctx, p)), true)
	check(e, "duplicate recorded", must(e.s.InsertHandled(e.ctx, p)), false)
	e.checkMark("keyed mark", p.Mark.ID, p.Mark.Body)
	e.checkStatus("keyed mark", p.Mark.ID, "inbox", layout.StatusHandled)
}

// A concurrent insert of a mark waits for the transaction that inserted it first: a
// duplicate once it committed, recorded once it rolled back.
func testInsertHandledWaitsForConcurrentInsert(e *env) {
	for _, commit := range []bool{true, false} {
		p := handledMark()
		tx := e.begin()
		check(e, "insert in a transaction", must(tx.ops.InsertHandled(e.ctx, p)), true)
		type result struct {
			recorded bool
			err      error
		}
		done := make(chan result, 1)
		go func() {
			ok, err := e.s.InsertHandled(e.ctx, p)
			done <- result{ok, err}
		}()
		end := tx.Rollback
		if commit {
			end = tx.Commit
		}
		e.ok(end(e.ctx))
		r := <-done
		e.ok(r.err)
		if r.recorded == commit {
			e.t.Errorf("concurrent insert recorded = %v after the first transaction ended (committed: %v)", r.recorded, commit)
		}
		check(e, "mark present", e.found(p.Mark.ID), true)
	}
}

// An inbox withdraws the mark it wrote in its transaction; an envelope that is not Handled
// stays.
func testDeleteHandledMark(e *env) {
	p := handledMark()
	tx := e.begin()
	must(tx.ops.InsertHandled(e.ctx, p))
	e.ok(tx.ops.DeleteHandledMark(e.ctx, p.Mark.ID))
	e.ok(tx.Commit(e.ctx))
	check(e, "withdrawn mark present", e.found(p.Mark.ID), false)
	in := inEnv("inbox", layout.StatusIncoming, nil)
	e.in(in)
	e.ok(e.s.DeleteHandledMark(e.ctx, in.ID))
	check(e, "Incoming envelope present after DeleteHandledMark", e.found(in.ID), true)
}

// checkBegin runs a Begin operation three times: rolled back (nothing stays), committed (its
// change stays) and once more (nothing to do: false, with a transaction to end).
func (e *env) checkBegin(what string, begin func() (dbx.Tx, bool, error), applied func() bool) {
	e.t.Helper()
	for _, step := range []struct {
		name                string
		ok, commit, applied bool
	}{{"rolled back", true, false, false}, {"committed", true, true, true}, {"repeated", false, false, true}} {
		tx, ok, err := begin()
		e.ok(err)
		if tx == nil {
			e.t.Fatalf("%s %s: no transaction", what, step.name)
		}
		end := tx.Rollback
		if step.commit {
			end = tx.Commit
		}
		e.ok(end(e.ctx))
		if ok != step.ok || applied() != step.applied {
			e.t.Errorf("%s %s: statement applied %v, visible after the transaction %v; want %v, %v", what, step.name, ok, applied(), step.ok, step.applied)
		}
	}
}

func testBeginMarkHandled(e *env) {
	in := inEnv("inbox", layout.StatusIncoming, nil)
	e.in(in)
	p := store.MarkHandledParams{ID: in.ID, Topic: "inbox", Keep: time.Hour}
	e.checkBegin("BeginMarkHandled", func() (dbx.Tx, bool, error) { return e.s.BeginMarkHandled(e.ctx, p) },
		func() bool { st, _ := e.status(in.ID, "inbox"); return st == layout.StatusHandled })
	e.checkMark("marked envelope", in.ID, nil)
}

func testBeginInsertHandled(e *env) {
	p := handledMark()
	e.checkBegin("BeginInsertHandled", func() (dbx.Tx, bool, error) { return e.s.BeginInsertHandled(e.ctx, p) },
		func() bool { return e.found(p.Mark.ID) })
	e.checkMark("keyed mark", p.Mark.ID, p.Mark.Body)
}

// The middleware writes a dead letter from an envelope; writing one of the same id again
// replaces it. A message_type wider than SQL Server's dead-letter column is cut there.
func testInsertDeadLetter(e *env) {
	env := inEnv("orders", layout.StatusIncoming, at(-time.Minute))
	env.Attempts = 3
	env.MessageType = strings.Repeat("t", 150)
	e.ok(e.s.InsertDeadLetter(e.ctx, env, reason("first")))
	e.ok(e.s.InsertDeadLetter(e.ctx, env, reason("second")))
	e.sameDeadLetter(e.deadLetter(env.ID), env, reason("second"), 3)
	noTopic := inEnv("", layout.StatusIncoming, nil)
	noTopic.Headers = nil
	e.ok(e.s.InsertDeadLetter(e.ctx, noTopic, store.Reason{}))
	e.sameDeadLetter(e.deadLetter(noTopic.ID), noTopic, store.Reason{}, 0)
	check(e, "dead letters", e.counts().DeadLetters, int64(2))
}

// A rolled back attempt leaves nothing of its own and keeps what came before its savepoint.
func testSavepoints(e *env) {
	keep, drop := inEnv("sp", layout.StatusIncoming, nil), inEnv("sp", layout.StatusIncoming, nil)
	tx := e.begin()
	insert := func(env row.Envelope) {
		e.ok(tx.ops.InsertEnvelopes(e.ctx, store.InsertParams{Incoming: []row.Envelope{env}}))
	}
	insert(keep)
	e.ok(tx.ops.Savepoint(e.ctx))
	insert(drop)
	e.ok(tx.ops.RollbackToSavepoint(e.ctx))
	e.ok(tx.ops.Savepoint(e.ctx))
	e.ok(tx.ops.ReleaseSavepoint(e.ctx))
	e.ok(tx.Commit(e.ctx))
	check(e, "envelope before the savepoint present", e.found(keep.ID), true)
	check(e, "envelope of the rolled back attempt present", e.found(drop.ID), false)
	if !e.s.Caps().SavepointRelease {
		return
	}
	tx = e.begin()
	e.ok(tx.ops.Savepoint(e.ctx))
	e.ok(tx.ops.ReleaseSavepoint(e.ctx))
	if err := tx.ops.RollbackToSavepoint(e.ctx); err == nil {
		e.t.Error("rolled back to a released savepoint")
	}
}
