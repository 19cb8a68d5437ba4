package sqldialect

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Behaviour tests of every statement on real rows, one set for both dialects, run against
// each database testdb.Targets returns (PostgreSQL always; SQL Server when
// WATERMILL_JASPER_TEST_MSSQL holds a DSN).

type bt struct {
	t   *testing.T
	ctx context.Context
	db  database.DB
	d   Dialect
	cfg schema.Config
}

func forEachTarget(t *testing.T, fn func(b *bt)) {
	t.Parallel()
	for _, tg := range testdb.Targets(t) {
		t.Run(tg.Name, func(t *testing.T) {
			d, err := For(tg.Schema)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			fn(&bt{t: t, ctx: ctx, db: tg.DB, d: d, cfg: tg.Schema})
		})
	}
}

// ph is the n-th placeholder of the dialect, for the few test-only reads.
func (b *bt) ph(n int) string {
	if b.d.Name() == database.SQLServer {
		return fmt.Sprintf("@p%d", n)
	}
	return fmt.Sprintf("$%d", n)
}

func (b *bt) exec(q database.Querier, query string, args ...any) int64 {
	b.t.Helper()
	n, err := q.Exec(b.ctx, query, args...)
	if err != nil {
		b.t.Fatalf("%v\n%s", err, query)
	}
	return n
}

func (b *bt) row(q database.Querier, query string, args []any, dest ...any) {
	b.t.Helper()
	if err := database.QueryRow(b.ctx, q, query, args, dest...); err != nil {
		b.t.Fatalf("%v\n%s", err, query)
	}
}

func (b *bt) count(table, where string, args ...any) int64 {
	b.t.Helper()
	var n int64
	q := "SELECT count(*) FROM " + b.cfg.Qualified(table)
	if where != "" {
		q += " WHERE " + where
	}
	b.row(b.db, q, args, &n)
	return n
}

func (b *bt) claimOut(q database.Querier, owner int32, excluded, only []string, limit int) []row.Envelope {
	b.t.Helper()
	rows, err := q.Query(b.ctx, b.d.ClaimOutgoing(), owner, b.d.StringList(excluded), b.d.StringList(only), limit)
	if err != nil {
		b.t.Fatal(err)
	}
	defer rows.Close()
	var out []row.Envelope
	for rows.Next() {
		e, err := row.ScanOutgoing(rows, b.d.UUIDs())
		if err != nil {
			b.t.Fatal(err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		b.t.Fatal(err)
	}
	return out
}

func (b *bt) claimIn(owner int32, topic string, limit int) []row.Envelope {
	b.t.Helper()
	rows, err := b.db.Query(b.ctx, b.d.ClaimIncoming(), owner, topic, limit)
	if err != nil {
		b.t.Fatal(err)
	}
	defer rows.Close()
	var out []row.Envelope
	for rows.Next() {
		e, err := row.ScanIncoming(rows, b.d.UUIDs())
		if err != nil {
			b.t.Fatal(err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		b.t.Fatal(err)
	}
	return out
}

func outEnv(dest string) row.Envelope {
	id := uuid.New()
	conv := uuid.New()
	return row.Envelope{ID: id, Destination: dest, Body: []byte("body-" + dest), MessageType: "test.Message",
		ContentType: "application/json", CorrelationID: "corr", ConversationID: &conv, AckRequested: true,
		MessageUUID: id.String(), Headers: []byte(`{"k":"v"}`)}
}

func inEnv(topic, status string, exec *time.Time) row.Envelope {
	e := outEnv(topic)
	e.Status = status
	e.ExecutionTime = exec
	return e
}

func ids(envs []row.Envelope) []uuid.UUID {
	out := make([]uuid.UUID, len(envs))
	for i, e := range envs {
		out[i] = e.ID
	}
	return out
}

func (b *bt) insertOut(envs ...row.Envelope) {
	b.t.Helper()
	var args []any
	for i := range envs {
		args = envs[i].OutgoingArgs(args, b.d.UUIDs())
	}
	b.exec(b.db, b.d.InsertOutgoing(len(envs)), args...)
}

func (b *bt) insertIn(envs ...row.Envelope) {
	b.t.Helper()
	var args []any
	for i := range envs {
		args = envs[i].IncomingArgs(args, b.d.UUIDs())
	}
	b.exec(b.db, b.d.InsertIncoming(len(envs)), args...)
}

func TestBehaviourOutgoing(t *testing.T) {
	forEachTarget(t, func(b *bt) {
		a1, a2, c := outEnv("a"), outEnv("a"), outEnv("b")
		b.insertOut(a1, a2, c)
		// Idempotent: the same ids again, and a batch repeating an id, insert nothing new.
		b.insertOut(a1, a2, c)
		b.insertOut(c, c)
		if n := b.count(schema.OutgoingTable, ""); n != 3 {
			t.Fatalf("%d outgoing rows, want 3", n)
		}
		// InsertEnvelopes: outgoing and incoming in one statement, notify or not.
		o, i := outEnv("x"), inEnv("tx", schema.StatusIncoming, nil)
		args := o.OutgoingArgs(nil, b.d.UUIDs())
		args = i.IncomingArgs(args, b.d.UUIDs())
		b.exec(b.db, b.d.InsertEnvelopes(1, 1, true), args...)
		b.exec(b.db, b.d.InsertEnvelopes(1, 1, false), args...)
		if n := b.count(schema.IncomingTable, ""); n != 1 {
			t.Fatalf("%d incoming rows, want 1", n)
		}
		b.exec(b.db, b.d.DeleteOutgoing(), b.d.IDList([]uuid.UUID{o.ID}))

		// Claim with excluded and only destinations.
		got := b.claimOut(b.db, 7, []string{"b"}, nil, 10)
		if len(got) != 2 || got[0].Destination != "a" || got[0].OwnerID != 7 {
			t.Fatalf("claim excluding b: %+v", got)
		}
		// Every column round-trips.
		for _, e := range got {
			if e.ID == a1.ID && (string(e.Body) != "body-a" || e.MessageType != a1.MessageType || e.CorrelationID != "corr" ||
				e.ConversationID == nil || *e.ConversationID != *a1.ConversationID || !e.AckRequested ||
				e.MessageUUID != a1.MessageUUID || string(e.Headers) != `{"k":"v"}`) {
				t.Fatalf("claimed envelope differs from the inserted one: %+v", e)
			}
		}
		if got := b.claimOut(b.db, 8, nil, []string{"b"}, 10); len(got) != 1 || got[0].ID != c.ID {
			t.Fatalf("claim only b: %+v", got)
		}
		if got := b.claimOut(b.db, 9, nil, nil, 10); len(got) != 0 {
			t.Fatalf("claimed owned envelopes: %+v", got)
		}
		// Releases touch only the rows still owned by the node.
		if n := b.exec(b.db, b.d.ReleaseOutgoing(), b.d.IDList([]uuid.UUID{a1.ID, a2.ID}), int32(8)); n != 0 {
			t.Fatalf("another owner released %d rows", n)
		}
		b.exec(b.db, b.d.ReleaseOutgoingFailed(), b.d.IDList([]uuid.UUID{a1.ID}), int32(7))
		b.exec(b.db, b.d.ReleaseOutgoing(), b.d.IDList([]uuid.UUID{a2.ID}), int32(7))
		b.exec(b.db, b.d.ReleaseOutgoing(), b.d.IDList([]uuid.UUID{c.ID}), int32(8))

		// Skip locked: a claim in an open transaction hides its rows from another claim,
		// which does not wait.
		tx, err := b.db.Begin(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		held := b.claimOut(tx, 10, nil, nil, 1)
		if len(held) != 1 {
			t.Fatalf("claim in tx: %+v", held)
		}
		rest := b.claimOut(b.db, 11, nil, nil, 10)
		if len(rest) != 2 {
			t.Fatalf("claim beside a claiming transaction got %d, want 2", len(rest))
		}
		for _, e := range rest {
			if e.ID == held[0].ID {
				t.Fatal("a row locked by another transaction was claimed")
			}
			if e.ID == a1.ID && e.Attempts != 1 {
				t.Fatalf("attempts after a failed release = %d, want 1", e.Attempts)
			}
		}
		_ = tx.Rollback(b.ctx)
		b.exec(b.db, b.d.ReleaseOutgoing(), b.d.IDList(ids(rest)), int32(11))

		// Dead letters: reasons zipped by position, values fitted to the dead-letter table.
		long := strings.Repeat("m", 200)
		b.exec(b.db, "UPDATE "+b.cfg.Qualified(schema.OutgoingTable)+" SET message_type = "+b.ph(1)+" WHERE id = "+b.ph(2), long, b.d.UUIDs().Arg(a2.ID))
		b.exec(b.db, b.d.DeadLetterOutgoing(), b.d.DeadLetterArgs([]uuid.UUID{a1.ID, a2.ID},
			[]string{"exp1", "exp2"}, []string{"T1", "T2"}, []string{"M1", "M2"}, []string{"X1", "X2"}, []string{"S1", "S2"})...)
		if n := b.count(schema.OutgoingTable, ""); n != 1 {
			t.Fatalf("%d outgoing rows left, want 1", n)
		}
		var exp, typ, src, recv, mt string
		var attempts int64
		b.row(b.db, "SELECT explanation, exception_type, source, received_at, message_type, attempts FROM "+
			b.cfg.Qualified(schema.DeadLetterTable)+" WHERE id = "+b.ph(1), []any{b.d.UUIDs().Arg(a1.ID)}, &exp, &typ, &src, &recv, &mt, &attempts)
		if exp != "exp1" || typ != "T1" || src != "S1" || recv != "a" || attempts != 2 {
			t.Fatalf("dead letter of a1: %q %q %q %q attempts %d", exp, typ, src, recv, attempts)
		}
		b.row(b.db, "SELECT explanation, message_type FROM "+b.cfg.Qualified(schema.DeadLetterTable)+" WHERE id = "+b.ph(1),
			[]any{b.d.UUIDs().Arg(a2.ID)}, &exp, &mt)
		if b.d.Name() == database.SQLServer {
			if len(mt) != 100 || !strings.HasPrefix(exp, "exp2") || !strings.Contains(exp, "message_type truncated to 100") {
				t.Fatalf("SQL Server dead letter of a long message_type: %q (%d chars)", exp, len(mt))
			}
		} else if mt != long || exp != "exp2" {
			t.Fatalf("dead letter of a2: %q %d", exp, len(mt))
		}
		// Moving the same id again replaces the dead letter.
		b.insertOut(a1)
		b.exec(b.db, b.d.DeadLetterOutgoing(), b.d.DeadLetterArgs([]uuid.UUID{a1.ID}, []string{"again"}, []string{""}, []string{""}, []string{""}, []string{""})...)
		if n := b.count(schema.DeadLetterTable, ""); n != 2 {
			t.Fatalf("%d dead letters, want 2", n)
		}
		b.exec(b.db, b.d.DeleteOutgoing(), b.d.IDList([]uuid.UUID{c.ID}))
		if n := b.count(schema.OutgoingTable, ""); n != 0 {
			t.Fatalf("%d outgoing rows after delete", n)
		}
	})
}

func TestBehaviourIncoming(t *testing.T) {
	forEachTarget(t, func(b *bt) {
		past, future := time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
		i1, i2, i3 := inEnv("t1", schema.StatusIncoming, nil), inEnv("t1", schema.StatusIncoming, nil), inEnv("t1", schema.StatusIncoming, nil)
		due, later := inEnv("t1", schema.StatusScheduled, &past), inEnv("t1", schema.StatusScheduled, &future)
		other := inEnv("t2", schema.StatusIncoming, nil)
		b.insertIn(i1, i2, i3, due, later, other)
		b.insertIn(i1)
		got := b.claimIn(5, "t1", 10)
		if len(got) != 3 {
			t.Fatalf("claimed %d, want 3", len(got))
		}
		if got[0].Destination != "t1" || got[0].Status != schema.StatusIncoming || got[0].OwnerID != 5 {
			t.Fatalf("claimed %+v", got[0])
		}
		// Retry now, retry later, release with and without an attempt.
		b.exec(b.db, b.d.RetryIncoming(), b.d.IDList([]uuid.UUID{i1.ID}), int64(0), int32(5))
		b.exec(b.db, b.d.RetryIncoming(), b.d.IDList([]uuid.UUID{i2.ID}), int64(60_000), int32(5))
		if n := b.exec(b.db, b.d.ReleaseIncoming(), b.d.IDList([]uuid.UUID{i3.ID}), b.d.IDList([]uuid.UUID{i3.ID}), int32(6)); n != 0 {
			t.Fatalf("another owner released %d", n)
		}
		b.exec(b.db, b.d.ReleaseIncoming(), b.d.IDList([]uuid.UUID{i3.ID}), b.d.IDList([]uuid.UUID{i3.ID}), int32(5))
		if n := b.count(schema.IncomingTable, "status = 'Scheduled'"); n != 3 {
			t.Fatalf("%d scheduled, want 3", n)
		}
		// Release the due scheduled envelope; the next one is due in about a minute.
		var released int64
		var next *float64
		b.row(b.db, b.d.ReleaseScheduled(), []any{b.d.StringList([]string{"t1"}), 10}, &released, &next)
		if released != 1 || next == nil || *next <= 0 || *next > 60_001 {
			t.Fatalf("release scheduled: %d, next %v ms", released, next)
		}
		b.row(b.db, b.d.ReleaseScheduled(), []any{b.d.StringList(nil), 10}, &released, &next)
		if released != 0 {
			t.Fatalf("released %d again", released)
		}
		got = b.claimIn(5, "t1", 10)
		if len(got) != 3 {
			t.Fatalf("claimed %d after releases, want 3 (i1, i3, due)", len(got))
		}
		for _, e := range got {
			if (e.ID == i1.ID || e.ID == i3.ID) && e.Attempts != 1 {
				t.Fatalf("attempts of %s = %d, want 1", e.ID, e.Attempts)
			}
		}
		// Dead-letter one, acknowledge the others.
		b.exec(b.db, b.d.DeadLetterIncoming(), b.d.DeadLetterArgs([]uuid.UUID{due.ID}, []string{"bad"}, []string{"T"}, []string{"M"}, []string{"X"}, []string{"S"})...)
		var recv string
		b.row(b.db, "SELECT received_at FROM "+b.cfg.Qualified(schema.DeadLetterTable)+" WHERE id = "+b.ph(1), []any{b.d.UUIDs().Arg(due.ID)}, &recv)
		if recv != "t1" {
			t.Fatalf("dead letter received_at %q", recv)
		}
		b.exec(b.db, b.d.DeleteIncoming(), b.d.IDList([]uuid.UUID{i1.ID, i3.ID}))
		if n := b.count(schema.IncomingTable, ""); n != 3 {
			t.Fatalf("%d incoming rows left, want 3 (i2, later, other)", n)
		}

		// A topic longer than received_at (varchar(100) on SQL Server) does not match the
		// topic named by its first 100 characters.
		prefix := strings.Repeat("p", 100)
		b.insertIn(inEnv(prefix, schema.StatusIncoming, nil))
		if got := b.claimIn(5, prefix+"-longer", 10); len(got) != 0 {
			t.Fatalf("a longer topic claimed %d envelopes of its prefix", len(got))
		}
		if got := b.claimIn(5, prefix, 10); len(got) != 1 {
			t.Fatalf("claimed %d envelopes of a 100-character topic, want 1", len(got))
		}

		// Scheduled sends: due ones are deleted and returned.
		send := inEnv(row.DurableLocalURI, schema.StatusScheduled, &past)
		send.MessageType = row.ScheduledEnvelopeType
		b.insertIn(send)
		rows, err := b.db.Query(b.ctx, b.d.ReleaseDueScheduledSends(), 10)
		if err != nil {
			t.Fatal(err)
		}
		var sends []row.Envelope
		for rows.Next() {
			e, err := row.ScanIncoming(rows, b.d.UUIDs())
			if err != nil {
				t.Fatal(err)
			}
			sends = append(sends, e)
		}
		_ = rows.Close()
		if len(sends) != 1 || sends[0].ID != send.ID {
			t.Fatalf("due scheduled sends: %+v", sends)
		}
	})
}

func TestBehaviourInbox(t *testing.T) {
	forEachTarget(t, func(b *bt) {
		h := inEnv("inbox", schema.StatusHandled, nil)
		args := append(h.IncomingArgs(nil, b.d.UUIDs()), int64(60_000))
		if n := b.exec(b.db, b.d.InsertHandled(), args...); n != 1 {
			t.Fatalf("InsertHandled affected %d, want 1", n)
		}
		if n := b.exec(b.db, b.d.InsertHandled(), args...); n != 0 {
			t.Fatalf("InsertHandled of a duplicate affected %d, want 0", n)
		}
		in := inEnv("inbox", schema.StatusIncoming, nil)
		b.insertIn(in)
		if n := b.exec(b.db, b.d.MarkIncomingHandled(), b.d.UUIDs().Arg(in.ID), "inbox", int64(-1000)); n != 1 {
			t.Fatalf("mark handled affected %d", n)
		}
		if n := b.exec(b.db, b.d.MarkIncomingHandled(), b.d.UUIDs().Arg(in.ID), "inbox", int64(-1000)); n != 0 {
			t.Fatalf("second mark affected %d", n)
		}
		var st string
		b.row(b.db, b.d.IncomingStatus(), []any{b.d.UUIDs().Arg(in.ID), "inbox"}, &st)
		if st != schema.StatusHandled {
			t.Fatalf("status %q", st)
		}
		// Handled rows survive an acknowledgement.
		b.exec(b.db, b.d.DeleteIncoming(), b.d.IDList([]uuid.UUID{in.ID, h.ID}))
		if n := b.count(schema.IncomingTable, ""); n != 2 {
			t.Fatalf("%d rows after deleting Handled ones, want 2", n)
		}
		if n := b.exec(b.db, b.d.DeleteExpiredHandled(), 10); n != 1 {
			t.Fatalf("deleted %d expired Handled rows, want 1", n)
		}
		if n := b.exec(b.db, b.d.DeleteHandledMark(), b.d.UUIDs().Arg(h.ID)); n != 1 {
			t.Fatalf("DeleteHandledMark affected %d", n)
		}
		// Dead letters written by the middleware replace an older one of the same id.
		dl := inEnv("inbox", schema.StatusIncoming, nil)
		dl.MessageType = strings.Repeat("t", 150)
		for _, exp := range []string{"first", "second"} {
			args := append(dl.IncomingArgs(nil, b.d.UUIDs()), exp, "T", "M", "X", "S")
			b.exec(b.db, b.d.InsertDeadLetter(), args...)
		}
		var exp string
		b.row(b.db, "SELECT explanation FROM "+b.cfg.Qualified(schema.DeadLetterTable)+" WHERE id = "+b.ph(1), []any{b.d.UUIDs().Arg(dl.ID)}, &exp)
		if !strings.HasPrefix(exp, "second") || (b.d.Name() == database.SQLServer) != strings.Contains(exp, "truncated") {
			t.Fatalf("explanation %q", exp)
		}
		// Savepoints: a rolled-back attempt leaves nothing.
		tx, err := b.db.Begin(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		keep, drop := inEnv("sp", schema.StatusIncoming, nil), inEnv("sp", schema.StatusIncoming, nil)
		b.exec(tx, b.d.InsertIncoming(1), keep.IncomingArgs(nil, b.d.UUIDs())...)
		b.exec(tx, b.d.Savepoint())
		b.exec(tx, b.d.InsertIncoming(1), drop.IncomingArgs(nil, b.d.UUIDs())...)
		b.exec(tx, b.d.RollbackToSavepoint())
		b.exec(tx, b.d.Savepoint())
		if rel := b.d.ReleaseSavepoint(); rel != "" {
			b.exec(tx, rel)
		}
		if err := tx.Commit(b.ctx); err != nil {
			t.Fatal(err)
		}
		if n := b.count(schema.IncomingTable, "received_at = 'sp'"); n != 1 {
			t.Fatalf("%d rows after a rolled-back savepoint, want 1", n)
		}
	})
}

func randomKey() int32 { return int32(rand.Uint32()) }

func TestBehaviourLocks(t *testing.T) {
	forEachTarget(t, func(b *bt) {
		key := b.d.AdvisoryLockKey(randomKey())
		c1, err := b.db.Acquire(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c1.Close(false)
		c2, err := b.db.Acquire(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close(false)
		var ok bool
		if b.row(c1, b.d.TryAdvisoryLock(), []any{key}, &ok); !ok {
			t.Fatal("lock not taken")
		}
		if b.row(c1, b.d.HoldsAdvisoryLock(), []any{key}, &ok); !ok {
			t.Fatal("holder does not hold its lock")
		}
		if b.row(c2, b.d.HoldsAdvisoryLock(), []any{key}, &ok); ok {
			t.Fatal("another session holds the lock")
		}
		if b.row(c2, b.d.TryAdvisoryLock(), []any{key}, &ok); ok {
			t.Fatal("lock taken twice")
		}
		// A transaction-level lock conflicts with the session lock.
		tx, err := b.db.Begin(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b.row(tx, b.d.TryAdvisoryXactLock(), []any{key}, &ok); ok {
			t.Fatal("transaction lock taken beside a session lock")
		}
		_ = tx.Rollback(b.ctx)
		if b.row(c1, b.d.ReleaseAdvisoryLock(), []any{key}, &ok); !ok {
			t.Fatal("release failed")
		}
		if b.row(c1, b.d.ReleaseAdvisoryLock(), []any{key}, &ok); ok {
			t.Fatal("released a lock not held")
		}
		tx, err = b.db.Begin(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b.row(tx, b.d.TryAdvisoryXactLock(), []any{key}, &ok); !ok {
			t.Fatal("transaction lock not taken once free")
		}
		if b.row(c2, b.d.TryAdvisoryLock(), []any{key}, &ok); ok {
			t.Fatal("session lock taken beside a transaction lock")
		}
		if err := tx.Commit(b.ctx); err != nil {
			t.Fatal(err)
		}
		if b.row(c2, b.d.TryAdvisoryLock(), []any{key}, &ok); !ok {
			t.Fatal("lock not free after the transaction ended")
		}
		b.row(c2, b.d.ReleaseAdvisoryLock(), []any{key}, &ok)
	})
}

func TestBehaviourDurability(t *testing.T) {
	forEachTarget(t, func(b *bt) {
		live, dead, self := randomKey(), randomKey(), randomKey()
		conn, err := b.db.Acquire(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(false)
		var ok bool
		if b.row(conn, b.d.TryAdvisoryLock(), []any{b.d.AdvisoryLockKey(live)}, &ok); !ok {
			t.Fatal("lock not taken")
		}
		defer b.row(conn, b.d.ReleaseAdvisoryLock(), []any{b.d.AdvisoryLockKey(live)}, &ok)

		o1, o2, o3 := outEnv("d"), outEnv("d"), outEnv("d")
		o1.OwnerID, o2.OwnerID = live, dead
		expired := time.Now().Add(-time.Second)
		o3.DeliverBy = &expired
		b.insertOut(o1, o2, o3)
		i1, i2 := inEnv("topic-a", schema.StatusIncoming, nil), inEnv("topic-b", schema.StatusIncoming, nil)
		i1.OwnerID, i2.OwnerID = dead, self
		b.insertIn(i1, i2)

		rows, err := b.db.Query(b.ctx, b.d.OtherOwners(), self)
		if err != nil {
			t.Fatal(err)
		}
		owners := map[int32]bool{}
		for rows.Next() {
			var id int32
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			owners[id] = true
		}
		_ = rows.Close()
		if len(owners) != 2 || !owners[live] || !owners[dead] {
			t.Fatalf("other owners %v, want %d and %d", owners, live, dead)
		}

		rows, err = b.db.Query(b.ctx, b.d.OwnersAlive(), b.d.OwnerList([]int32{live, dead}))
		if err != nil {
			t.Fatal(err)
		}
		alive := map[int32]bool{}
		for rows.Next() {
			var id int32
			var a bool
			if err := rows.Scan(&id, &a); err != nil {
				t.Fatal(err)
			}
			alive[id] = a
		}
		_ = rows.Close()
		if len(alive) != 2 || !alive[live] || alive[dead] {
			t.Fatalf("owners alive %v", alive)
		}

		var inc, sch, handled, out, dlq, dormant int64
		var age *float64
		b.row(b.db, b.d.StorageGauges(), nil, &inc, &sch, &handled, &out, &dlq, &age, &dormant)
		if inc != 2 || sch != 0 || handled != 0 || out != 3 || dlq != 0 || age == nil || *age < 0 || dormant < 3 {
			// dormant counts every owner without a lock: dead (2 rows) and self (1 row).
			t.Fatalf("gauges: %d %d %d %d %d %v %d", inc, sch, handled, out, dlq, age, dormant)
		}

		var bin, bout int64
		var topics string
		b.row(b.db, b.d.ReleaseOwner(), []any{dead, 10}, &bin, &bout, &topics)
		var ts []string
		if err := json.Unmarshal([]byte(topics), &ts); err != nil || bin != 1 || bout != 1 || len(ts) != 1 || ts[0] != "topic-a" {
			t.Fatalf("release owner: %d %d %q %v", bin, bout, topics, err)
		}
		var anyOut bool
		b.row(b.db, b.d.UnownedEnvelopes(), nil, &anyOut, &topics)
		if err := json.Unmarshal([]byte(topics), &ts); err != nil || !anyOut || len(ts) != 1 || ts[0] != "topic-a" {
			t.Fatalf("unowned: %v %q %v", anyOut, topics, err)
		}
		if n := b.exec(b.db, b.d.DeleteExpiredOutgoing(), 10); n != 1 {
			t.Fatalf("deleted %d expired, want 1", n)
		}
		b.exec(b.db, b.d.DeleteOutgoing(), b.d.IDList([]uuid.UUID{o2.ID}))
		b.exec(b.db, "DELETE FROM "+b.cfg.Qualified(schema.IncomingTable)+" WHERE owner_id = 0")
		b.row(b.db, b.d.UnownedEnvelopes(), nil, &anyOut, &topics)
		if anyOut || topics != "[]" {
			t.Fatalf("unowned after cleanup: %v %q", anyOut, topics)
		}
	})
}
