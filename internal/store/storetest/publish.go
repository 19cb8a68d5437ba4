package storetest

import (
	"errors"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// Publishing (InsertEnvelopes) and notifications (Listen, NotifyOutgoing, NotifyIncoming).

// Every column of both tables round-trips; a re-publish (same ids, even changed, even twice
// in one call) and an empty call insert nothing.
func testInsertEnvelopes(e *env) {
	o1, o2 := outEnv("orders"), outEnv("billing")
	o1.DeliverBy = at(time.Hour)
	// Nullable columns left empty are read back empty.
	o2.ConversationID, o2.Headers, o2.CorrelationID, o2.ContentType, o2.AckRequested, o2.MessageUUID = nil, nil, "", "", false, ""
	i1, i2 := inEnv("jobs", layout.StatusIncoming, nil), inEnv("jobs", layout.StatusScheduled, at(-time.Minute))
	i2.Attempts = 2
	e.insert([]row.Envelope{o1, o2}, []row.Envelope{i1, i2})

	changed := o1
	changed.Body = []byte("changed")
	e.insert([]row.Envelope{changed, o2, o2}, []row.Envelope{i1, i1})
	e.insert(nil, nil)
	c := e.counts()
	check(e, "outgoing by destination", c.OutgoingByDestination, map[string]int64{"orders": 1, "billing": 1})
	check(e, "incoming by status", c.IncomingByStatus, map[string]int64{layout.StatusIncoming: 1, layout.StatusScheduled: 1})

	got := e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 3, Limit: 10})
	e.sameEnvelope("outgoing o1", e.byID(got, o1.ID), o1, 3, 0)
	e.sameEnvelope("outgoing o2", e.byID(got, o2.ID), o2, 3, 0)
	e.sameEnvelope("incoming i1", e.byID(e.claimIn(4, "jobs", 10), i1.ID), i1, 4, 0)
	must(e.s.ReleaseScheduled(e.ctx, nil, 10))
	released := i2
	released.Status = layout.StatusIncoming
	e.sameEnvelope("incoming i2", e.byID(e.claimIn(5, "jobs", 10), i2.ID), released, 5, 2)
}

// maxParams is the most bind parameters one statement of the store may carry: the dialect's
// (sqlstore stores tell), else PostgreSQL's 65535, the largest of the databases.
func maxParams(s store.Store) int {
	if st, ok := s.(interface{ Statements() sqlstore.Dialect }); ok {
		return st.Statements().MaxParams()
	}
	return 65535
}

// bulk returns n outgoing envelopes to dest.
func bulk(dest string, n int) []row.Envelope {
	out := make([]row.Envelope, n)
	for i := range out {
		out[i] = outEnv(dest)
	}
	return out
}

// More envelopes than one statement can bind are inserted, and inserted once.
func testInsertEnvelopesBeyondParameterLimit(e *env) {
	n := maxParams(e.s)/len(row.OutgoingColumns) + 2
	p := store.InsertParams{Outgoing: bulk("bulk", n), Incoming: []row.Envelope{
		inEnv("bulk", layout.StatusIncoming, nil), inEnv("bulk", layout.StatusIncoming, nil), inEnv("bulk", layout.StatusIncoming, nil),
	}}
	for range 2 {
		e.ok(e.s.InsertEnvelopes(e.ctx, p))
		c := e.counts()
		check(e, "outgoing by destination", c.OutgoingByDestination, map[string]int64{"bulk": int64(n)})
		check(e, "incoming by status", c.IncomingByStatus, map[string]int64{layout.StatusIncoming: 3})
	}
}

// On the pool, the statements of one call run in one transaction: when the last fails, the
// envelopes of the first are not inserted either.
func testInsertEnvelopesAtomicAcrossStatements(e *env) {
	e.refuse(layout.IncomingTable, "received_at", "refused")
	bad := inEnv("refused", layout.StatusIncoming, nil)
	err := e.s.InsertEnvelopes(e.ctx, store.InsertParams{
		Outgoing: bulk("bulk", maxParams(e.s)/len(row.OutgoingColumns)+1), Incoming: []row.Envelope{bad},
	})
	if err == nil {
		e.t.Fatal("an incoming envelope the table refuses was inserted")
	}
	if !e.s.IsStatementError(err) {
		e.t.Errorf("the failed insert is not a statement error: %v", err)
	}
	c := e.counts()
	check(e, "outgoing after a failed insert", c.OutgoingByDestination, map[string]int64{})
	check(e, "incoming after a failed insert", c.IncomingByStatus, map[string]int64{})
}

// A database without notifications: no channels, Listen fails with ErrNotSupported, and the
// notify operations do nothing.
func (e *env) checkNoNotifications() {
	e.t.Helper()
	check(e, "channels", e.s.Channels(), store.Channels{})
	if err := e.s.Listen(e.ctx, e.conn(), "jasper_outgoing"); !errors.Is(err, store.ErrNotSupported) {
		e.t.Errorf("Listen without notifications: %v, want an error wrapping store.ErrNotSupported", err)
	}
	tx := e.begin()
	e.ok(tx.ops.NotifyOutgoing(e.ctx))
	e.ok(tx.ops.NotifyIncoming(e.ctx, "jobs"))
	e.ok(tx.Commit(e.ctx))
}

// listener is a dedicated connection listening to both channels of the schema.
type listener struct {
	e    *env
	conn dbx.Conn
}

func (e *env) listen() listener {
	e.t.Helper()
	ch := e.s.Channels()
	c := e.conn()
	e.ok(e.s.Listen(e.ctx, c, ch.Outgoing, ch.Incoming))
	return listener{e: e, conn: c}
}

// expect waits for the next notification and checks it.
func (l listener) expect(what, channel, payload string) {
	l.e.t.Helper()
	ch, p, err := l.conn.WaitForNotification(l.e.ctx)
	l.e.ok(err)
	if ch != channel || p != payload {
		l.e.t.Errorf("%s: notification %s %q, want %s %q", what, ch, p, channel, payload)
	}
}

// quiet checks that no notification is pending: the next one is a sentinel notified now
// (notifications arrive in the order their transactions committed).
func (l listener) quiet(what string) {
	l.e.t.Helper()
	l.e.ok(l.e.s.NotifyIncoming(l.e.ctx, "sentinel"))
	l.expect(what+" (nothing before the sentinel)", l.e.s.Channels().Incoming, "sentinel")
}

// InsertEnvelopes wakes the relays when it inserted an outgoing envelope and was asked to,
// and the subscribers of the topics it was given.
func testInsertEnvelopesNotifies(e *env) {
	if !e.notifies() {
		e.ok(e.s.InsertEnvelopes(e.ctx, store.InsertParams{Outgoing: []row.Envelope{outEnv("orders")},
			Incoming: []row.Envelope{inEnv("jobs", layout.StatusIncoming, nil)}, NotifyOutgoing: true, NotifyTopics: []string{"jobs"}}))
		e.checkNoNotifications()
		return
	}
	ch := e.s.Channels()
	l := e.listen()
	o := outEnv("orders")
	e.ok(e.s.InsertEnvelopes(e.ctx, store.InsertParams{Outgoing: []row.Envelope{o},
		Incoming: []row.Envelope{inEnv("jobs", layout.StatusIncoming, nil)}, NotifyOutgoing: true, NotifyTopics: []string{"jobs", "other"}}))
	l.expect("outgoing insert", ch.Outgoing, "")
	l.expect("first topic", ch.Incoming, "jobs")
	l.expect("second topic", ch.Incoming, "other")

	e.ok(e.s.InsertEnvelopes(e.ctx, store.InsertParams{Outgoing: []row.Envelope{o}, NotifyOutgoing: true}))
	l.quiet("re-publish of an existing envelope")
	e.ok(e.s.InsertEnvelopes(e.ctx, store.InsertParams{Outgoing: []row.Envelope{outEnv("orders")}}))
	l.quiet("insert without NotifyOutgoing")
	e.ok(e.s.InsertEnvelopes(e.ctx, store.InsertParams{Incoming: []row.Envelope{inEnv("jobs", layout.StatusIncoming, nil)}, NotifyOutgoing: true}))
	l.quiet("incoming-only insert without topics")

	// An insert of several statements wakes the relays too (once: PostgreSQL folds equal
	// notifications of one transaction).
	e.ok(e.s.InsertEnvelopes(e.ctx, store.InsertParams{Outgoing: bulk("bulk", maxParams(e.s)/len(row.OutgoingColumns)+1), NotifyOutgoing: true}))
	l.expect("multi-statement insert", ch.Outgoing, "")
	l.quiet("after the multi-statement insert")
}

// Notifications reach a listening connection when the notifying transaction commits, not
// before, and never after a rollback.
func testListenAndNotify(e *env) {
	if !e.notifies() {
		e.checkNoNotifications()
		return
	}
	ch := e.s.Channels()
	if ch.Outgoing == "" || ch.Incoming == "" || ch.Outgoing == ch.Incoming {
		e.t.Fatalf("channels %+v: want two distinct names", ch)
	}
	if err := e.s.Listen(e.ctx, e.conn(), "not_a_channel_of_this_schema"); err == nil || errors.Is(err, store.ErrNotSupported) {
		e.t.Errorf("Listen to an unknown channel: %v, want an error naming it", err)
	}
	l := e.listen()
	tx := e.begin()
	e.ok(tx.ops.NotifyOutgoing(e.ctx))
	e.ok(tx.ops.NotifyIncoming(e.ctx, "jobs"))
	l.quiet("notifications of an open transaction")
	e.ok(tx.Commit(e.ctx))
	l.expect("after commit", ch.Outgoing, "")
	l.expect("after commit", ch.Incoming, "jobs")

	tx = e.begin()
	e.ok(tx.ops.NotifyIncoming(e.ctx, "rolled back"))
	e.ok(tx.Rollback(e.ctx))
	l.quiet("notification of a rolled back transaction")
}

// EmitOutgoing writes nothing and reports false when the slot it names does not exist (the
// outbox stays empty), on a database with logical decoding messages; elsewhere it is refused
// with an error wrapping dbx.ErrUnsupported. Emitting through an existing slot needs
// wal_level = logical: internal/logrepl's, forwarder's and publisher's tests run it on a
// private cluster.
func testEmitOutgoing(e *env) {
	p := store.EmitParams{Slot: "wj_no_such_slot", Prefix: "watermill-jasper/outgoing/x/wj_no_such_slot", Envelopes: []row.Envelope{outEnv("orders")}}
	emitted, err := e.s.EmitOutgoing(e.ctx, p)
	if st, ok := e.s.(interface{ Statements() sqlstore.Dialect }); ok && st.Statements().EmitOutgoing() == "" {
		if !errors.Is(err, dbx.ErrUnsupported) || emitted {
			e.t.Errorf("EmitOutgoing without logical decoding messages: %v (emitted %v), want an error wrapping dbx.ErrUnsupported", err, emitted)
		}
		return
	}
	e.ok(err)
	if emitted {
		e.t.Errorf("EmitOutgoing reported success for a slot that does not exist")
	}
	if n := len(e.counts().OutgoingByDestination); n != 0 {
		e.t.Errorf("EmitOutgoing without its slot left %d destinations in the outbox, want none", n)
	}
}
