package logrepl_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// TestReader runs the reader's subtests on one private cluster with wal_level = logical and
// pg_stat_statements loaded; each subtest has its own schema, publication and slot.
func TestReader(t *testing.T) {
	srv := startLogicalServer(t)
	srv.exec(t, "CREATE ROLE relay LOGIN REPLICATION")
	srv.exec(t, "CREATE ROLE plain LOGIN")

	t.Run("CommitOrder", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		r, _ := e.start()
		// committed, rolled back, committed: the rolled-back one never arrives (the second
		// transaction received is the third).
		first := e.commitTx("first", 3)
		rolledBack := e.begin()
		e.insert(rolledBack, envelopes("orders", "rolled-back", 2))
		if err := rolledBack.Rollback(context.Background()); err != nil {
			t.Fatal(err)
		}
		third := e.commitTx("third", 1)
		t1 := expect(t, r, "first transaction", first)
		t3 := expect(t, r, "third transaction (the second was rolled back)", third)
		if !(t1.CommitLSN < t1.EndLSN && t1.EndLSN <= t3.CommitLSN) {
			t.Fatalf("LSNs out of order: first %s..%s, third %s..%s", t1.CommitLSN, t1.EndLSN, t3.CommitLSN, t3.EndLSN)
		}
		if t1.CommitTime.IsZero() || t3.CommitTime.Before(t1.CommitTime) {
			t.Fatalf("commit times: %s then %s", t1.CommitTime, t3.CommitTime)
		}
		for _, rw := range t1.Rows {
			if rw.CommitLSN != t1.CommitLSN || rw.EndLSN != t1.EndLSN || !rw.CommitTime.Equal(t1.CommitTime) {
				t.Fatalf("row %s carries commit %s/%s/%s, its transaction %s/%s/%s", rw.ID, rw.CommitLSN, rw.EndLSN, rw.CommitTime, t1.CommitLSN, t1.EndLSN, t1.CommitTime)
			}
		}

		// Interleaved: A begins and inserts first, B inserts, A inserts again, B commits,
		// then A: B arrives first (commit order), A with both its rows.
		a, b := e.begin(), e.begin()
		envA1, envB, envA2 := envelopes("orders", "a1", 1), envelopes("invoices", "b", 2), envelopes("orders", "a2", 1)
		e.insert(a, envA1)
		e.insert(b, envB)
		e.insert(a, envA2)
		if err := b.Commit(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := a.Commit(context.Background()); err != nil {
			t.Fatal(err)
		}
		expect(t, r, "B, committed first", ids(envB))
		expect(t, r, "A, committed second", append(ids(envA1), ids(envA2)...))
	})

	// The table-less outbox: envelopes emitted as logical decoding messages arrive in the
	// transaction's Emitted, in order, beside its rows; rolled-back ones, other prefixes and
	// non-transactional messages never do; a malformed one arrives with its error.
	t.Run("Emitted", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		r, _ := e.start()
		ctx := context.Background()
		emit := func(ops store.Ops, slot string, envs []row.Envelope) bool {
			t.Helper()
			ok, err := ops.EmitOutgoing(ctx, store.EmitParams{Slot: slot, Prefix: e.cfg.MessagePrefix(), Envelopes: envs})
			if err != nil {
				t.Fatalf("emit: %v", err)
			}
			return ok
		}

		// No such slot: nothing is written, and the caller is told.
		tx := e.begin()
		if emit(e.st.With(tx), "wj_no_such_slot", envelopes("orders", "lost", 1)) {
			t.Fatal("EmitOutgoing reported success for a slot that does not exist")
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}

		rolledBack := e.begin()
		if !emit(e.st.With(rolledBack), e.cfg.Slot, envelopes("orders", "rolled-back", 2)) {
			t.Fatal("EmitOutgoing found no slot")
		}
		if err := rolledBack.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		// Another schema's prefix, a non-transactional message with this prefix: not ours.
		e.srv.exec(t, "SELECT pg_logical_emit_message(true, 'watermill-jasper/outgoing/other', 'x'::bytea)")
		e.srv.exec(t, "SELECT pg_logical_emit_message(false, $1, 'x'::bytea)", e.cfg.MessagePrefix())

		mixed := e.begin()
		rows := envelopes("orders", "row", 1)
		emitted := envelopes("orders", "emitted", 3)
		emitted[1].PartitionKey = "order-1"
		by := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
		emitted[2].DeliverBy, emitted[2].Headers = &by, []byte(`{"k":"v"}`)
		e.insert(mixed, rows)
		if !emit(e.st.With(mixed), e.cfg.Slot, emitted) {
			t.Fatal("EmitOutgoing found no slot")
		}
		if err := mixed.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		got := expect(t, r, "the transaction with a row and emitted envelopes (the rolled-back one and the others' messages never arrive)", ids(rows))
		if len(got.Emitted) != len(emitted) {
			t.Fatalf("%d emitted envelopes arrived, want %d", len(got.Emitted), len(emitted))
		}
		for i, rw := range got.Emitted {
			if rw.Err != nil {
				t.Fatalf("emitted %d: %v", i, rw.Err)
			}
			if rw.WrittenAt == nil || !rw.WrittenAt.Equal(got.CommitTime) {
				t.Fatalf("emitted %d: WrittenAt %v, want the commit time %s", i, rw.WrittenAt, got.CommitTime)
			}
			want := emitted[i]
			want.WrittenAt = rw.WrittenAt
			if !reflect.DeepEqual(rw.Envelope, want) {
				t.Fatalf("emitted %d:\n got %+v\nwant %+v", i, rw.Envelope, want)
			}
			if rw.CommitLSN != got.CommitLSN || rw.EndLSN != got.EndLSN {
				t.Fatalf("emitted %d carries commit %s..%s, its transaction %s..%s", i, rw.CommitLSN, rw.EndLSN, got.CommitLSN, got.EndLSN)
			}
		}
		r.Confirm(got.EndLSN)

		// Emitted only, then a malformed one.
		only := envelopes("orders", "only", 1)
		if !emit(e.st, e.cfg.Slot, only) {
			t.Fatal("EmitOutgoing found no slot")
		}
		if tx := next(t, r); len(tx.Rows) != 0 || len(tx.Emitted) != 1 || tx.Emitted[0].ID != only[0].ID {
			t.Fatalf("a transaction that only emitted: rows %d, emitted %+v", len(tx.Rows), tx.Emitted)
		}
		e.srv.exec(t, "SELECT pg_logical_emit_message(true, $1, '\\x0102'::bytea)", e.cfg.MessagePrefix())
		if tx := next(t, r); len(tx.Emitted) != 1 || !errors.Is(tx.Emitted[0].Err, row.ErrMalformedEmitted) ||
			tx.Emitted[0].ID == uuid.Nil || string(tx.Emitted[0].Body) != "\x01\x02" {
			t.Fatalf("a malformed emitted envelope (its content as the body, an id from its position): %+v", tx.Emitted)
		}
	})

	t.Run("ConcurrentWriters", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		r, _ := e.start()
		const writers, perWriter = 4, 50
		// Each writer commits its transactions one after the other, so its own order is
		// their commit order; writers run at once, so their transactions interleave.
		type mark struct{ writer, seq int }
		byID := make(map[uuid.UUID]mark)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWriter {
					envs := envelopes("orders", fmt.Sprintf("w%d-%d", w, i), 1+i%3)
					mu.Lock()
					for _, en := range envs {
						byID[en.ID] = mark{w, i}
					}
					mu.Unlock()
					if err := e.st.InsertEnvelopes(context.Background(), store.InsertParams{Outgoing: envs}); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		seen := map[uuid.UUID]bool{}
		lastSeq := map[int]int{}
		var last logrepl.Tx
		for n := 0; n < writers*perWriter; n++ {
			tx := next(t, r)
			if n > 0 && tx.CommitLSN < last.EndLSN {
				t.Fatalf("transaction %d commits at %s, before the previous one's end %s", n, tx.CommitLSN, last.EndLSN)
			}
			m := byID[tx.Rows[0].ID]
			if prev, ok := lastSeq[m.writer]; ok && m.seq != prev+1 {
				t.Fatalf("writer %d: transaction %d arrived after %d", m.writer, m.seq, prev)
			}
			lastSeq[m.writer] = m.seq
			for _, rw := range tx.Rows {
				if seen[rw.ID] || byID[rw.ID] != m {
					t.Fatalf("row %s: seen %v, from %v in a transaction of %v", rw.ID, seen[rw.ID], byID[rw.ID], m)
				}
				seen[rw.ID] = true
			}
			r.Confirm(tx.EndLSN)
			last = tx
		}
		if len(seen) != len(byID) {
			t.Fatalf("%d rows of %d arrived", len(seen), len(byID))
		}
	})

	// While the caller does not take transactions (its batch is being relayed), the reader
	// decodes ahead: the 20 committed meanwhile are all ready, and TryNext takes them in one
	// go, in commit order, instead of one at a time.
	t.Run("ReadsAhead", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		r, _ := e.start()
		var want [][]uuid.UUID
		for i := range 20 {
			want = append(want, e.commitTx(fmt.Sprintf("ahead-%d", i), 1+i%3))
		}
		deadline := time.Now().Add(waitLimit)
		for r.Ready() < 19 { // the 20th may wait in the reader, beside the full channel
			if time.Now().After(deadline) {
				t.Fatalf("%d transactions ready after %s, want the 20 committed (19 at least)", r.Ready(), waitLimit)
			}
			time.Sleep(5 * time.Millisecond) // no event for the reader's progress
		}
		expect(t, r, "the first transaction", want[0])
		for i := 1; i < 19; i++ {
			tx, ok := r.TryNext()
			if !ok {
				t.Fatalf("TryNext found nothing ready at transaction %d of 20", i+1)
			}
			if got := rowIDs(tx); fmt.Sprint(got) != fmt.Sprint(want[i]) {
				t.Fatalf("transaction %d: got rows %v, want %v", i+1, got, want[i])
			}
		}
		expect(t, r, "the last transaction", want[19])
	})

	t.Run("QuietTableReleasesWAL", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		r, _ := e.start()
		r.Confirm(expect(t, r, "a row", e.commitTx("one", 1)).EndLSN)
		// Writes to a table outside the publication: the caught-up reader reports the
		// server's position, so the slot does not hold their WAL back.
		table := `"` + e.cfg.Schema + `".other`
		srv.exec(t, "CREATE TABLE "+table+" (n int)")
		srv.exec(t, "INSERT INTO "+table+" SELECT generate_series(1, 1000)")
		var target logrepl.LSN
		if err := srv.pool.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&target); err != nil {
			t.Fatal(err)
		}
		e.waitConfirmed(target)
		// A new row still arrives, after the position reported.
		expect(t, r, "a row after the quiet period", e.commitTx("two", 1))
	})

	t.Run("AnswersKeepalives", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		e.cfg.StatusInterval = time.Minute // only the server's reply requests make it answer
		// This session's walsender ends a client that says nothing for 2s; it asks for a
		// reply after 1s of silence.
		conn, err := logrepl.Dial(context.Background(), srv.dsnAs("postgres")+"&options=-c%20wal_sender_timeout%3D2s")
		if err != nil {
			t.Fatal(err)
		}
		r, err := logrepl.Start(context.Background(), conn, e.cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		expect(t, r, "a row", e.commitTx("before", 1))
		select {
		case <-r.Done():
			t.Fatalf("the stream ended while idle: %v", r.Err())
		case <-time.After(5 * time.Second): // two and a half times the server's timeout
		}
		expect(t, r, "a row after 5s of idleness", e.commitTx("after", 1))
	})

	t.Run("LargeValues", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		r, _ := e.start()
		// A body stored out of line (TOAST) and a transaction of 5,000 rows.
		big := envelopes("orders", "big", 1)
		big[0].Body = make([]byte, 3<<20)
		for i := range big[0].Body {
			big[0].Body[i] = byte(i * 7919 >> 3)
		}
		e.insert(nil, big)
		many := envelopes("orders", "many", 5000)
		e.insert(nil, many)
		tx := expect(t, r, "the big row", ids(big))
		if string(tx.Rows[0].Body) != string(big[0].Body) {
			t.Fatalf("the big body came back with %d bytes, differing", len(tx.Rows[0].Body))
		}
		tx = expect(t, r, "5,000 rows", ids(many))
		for i, rw := range tx.Rows {
			if string(rw.Body) != fmt.Sprintf("many-%d", i) {
				t.Fatalf("row %d: body %q", i, rw.Body)
			}
		}
	})

	t.Run("Columns", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		r, _ := e.start()
		conv := uuid.New()
		deliverBy := time.Date(2031, 5, 6, 7, 8, 9, 123456000, time.UTC)
		full := row.Envelope{
			ID: uuid.New(), Destination: "amqp://orders", Body: []byte{0, 1, 2, 0xff, '\\', 'x'},
			DeliverBy: &deliverBy, Attempts: 0, ConversationID: &conv, CorrelationID: "corr", ParentID: "00-trace-01",
			SagaID: "saga", MessageType: "OrderPlaced", ContentType: "application/json", ReplyRequested: "Reply",
			AckRequested: true, ReplyURI: "rabbitmq://replies", MessageUUID: "msg-1", Headers: []byte(`{"a":"b"}`),
		}
		sparse := row.Envelope{ID: uuid.New(), Destination: "d", Body: []byte{}, MessageType: "m"}
		e.insert(nil, []row.Envelope{full, sparse})
		tx := expect(t, r, "the two rows", []uuid.UUID{full.ID, sparse.ID})
		got := tx.Rows[0]
		check := func(name string, got, want any) {
			t.Helper()
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("%s: got %v, want %v", name, got, want)
			}
		}
		check("destination", got.Destination, full.Destination)
		check("body", got.Body, full.Body)
		check("deliver_by", got.DeliverBy.UTC(), deliverBy)
		check("conversation_id", *got.ConversationID, conv)
		check("owner_id", got.OwnerID, 0)
		check("attempts", got.Attempts, 0)
		for name, pair := range map[string][2]string{
			"correlation_id": {got.CorrelationID, full.CorrelationID}, "parent_id": {got.ParentID, full.ParentID},
			"saga_id": {got.SagaID, full.SagaID}, "message_type": {got.MessageType, full.MessageType},
			"content_type": {got.ContentType, full.ContentType}, "reply_requested": {got.ReplyRequested, full.ReplyRequested},
			"reply_uri": {got.ReplyURI, full.ReplyURI}, "message_uuid": {got.MessageUUID, full.MessageUUID},
			"headers": {string(got.Headers), string(full.Headers)},
		} {
			check(name, pair[0], pair[1])
		}
		check("ack_requested", got.AckRequested, true)
		if got.WrittenAt == nil || got.WrittenAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("timestamp: %v", got.WrittenAt)
		}
		// Columns this package decodes into fields never land in Other (columns added to the
		// layout later, e.g. by a migration this package does not know yet, do).
		for _, known := range []string{"id", "owner_id", "destination", "deliver_by", "body", "attempts", "conversation_id",
			"correlation_id", "parent_id", "saga_id", "message_type", "content_type", "reply_requested", "ack_requested",
			"reply_uri", "message_uuid", "headers", "timestamp"} {
			if _, ok := got.Other[known]; ok {
				t.Errorf("column %s landed in Other: %v", known, got.Other)
			}
		}
		sp := tx.Rows[1]
		if sp.DeliverBy != nil || sp.ConversationID != nil || sp.Headers != nil || sp.AckRequested || sp.Body == nil || len(sp.Body) != 0 {
			t.Errorf("sparse row: %+v", sp.Envelope)
		}

		// A value that cannot be decoded (deliver_by = infinity): the row still arrives,
		// with its other columns and the reason.
		bad := uuid.New()
		if _, err := e.srv.pool.Exec(context.Background(), `INSERT INTO "`+e.cfg.Schema+`".jasper_outgoing_envelopes
			(id, owner_id, destination, deliver_by, body, message_type) VALUES ($1, 0, 'odd', 'infinity', '\x01', 'm')`, bad); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		oddTx, err := r.Next(ctx)
		cancel()
		if err != nil || len(oddTx.Rows) != 1 {
			t.Fatalf("the row with deliver_by = infinity: %+v, %v", oddTx, err)
		}
		odd := oddTx.Rows[0]
		if odd.ID != bad || odd.Destination != "odd" || odd.Err == nil || !strings.Contains(odd.Err.Error(), "deliver_by") {
			t.Fatalf("the row with deliver_by = infinity: id %s destination %q err %v", odd.ID, odd.Destination, odd.Err)
		}
		t.Logf("undecodable column: %v", odd.Err)

		// A column added by someone else, placed before known ones: decoded by name.
		if _, err := e.srv.pool.Exec(context.Background(), `ALTER TABLE "`+e.cfg.Schema+`".jasper_outgoing_envelopes ADD COLUMN tenant int DEFAULT 7`); err != nil {
			t.Fatal(err)
		}
		more := envelopes("orders", "after-alter", 1)
		e.insert(nil, more)
		tx = expect(t, r, "a row after ALTER TABLE", ids(more))
		if v := tx.Rows[0].Other["tenant"]; fmt.Sprint(v) != "7" || tx.Rows[0].Destination != "orders" {
			t.Errorf("after ALTER TABLE: tenant %v (%T), destination %q", v, v, tx.Rows[0].Destination)
		}
	})

	t.Run("Restart", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		for _, abrupt := range []bool{false, true} {
			r, conn := e.start()
			var sent [][]uuid.UUID
			for i := range 4 {
				sent = append(sent, e.commitTx(fmt.Sprintf("batch%d-abrupt%v", i, abrupt), 2))
			}
			var txs []logrepl.Tx
			for i, want := range sent {
				txs = append(txs, expect(t, r, fmt.Sprintf("transaction %d", i), want))
			}
			// Confirm the first two only.
			r.Confirm(txs[1].EndLSN)
			if abrupt {
				// The status update is on the wire; once the server shows it processed it,
				// the socket dies without a goodbye (a close with unread data sends a reset,
				// which may discard what the server had not read yet: only redelivery).
				if err := r.Flush(context.Background()); err != nil {
					t.Fatal(err)
				}
				e.waitConfirmed(txs[1].EndLSN)
				_ = conn.Conn().Close()
				select {
				case <-r.Done():
				case <-time.After(waitLimit):
					t.Fatal("the reader did not see its connection die")
				}
				if r.Err() == nil || errors.Is(r.Err(), logrepl.ErrClosed) {
					t.Fatalf("stream error after the socket died: %v", r.Err())
				}
			} else {
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
				if _, err := r.Next(context.Background()); !errors.Is(err, logrepl.ErrClosed) {
					t.Fatalf("Next after Close: %v", err)
				}
			}
			// The slot's confirmed position is the confirmed transaction's end.
			conn2 := e.dial("postgres")
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			r2, err := logrepl.WaitForSlot(ctx, conn2, e.cfg, 20*time.Millisecond)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r2.Close() })
			expect(t, r2, "the first unconfirmed transaction, again", sent[2])
			expect(t, r2, "the second unconfirmed transaction, again", sent[3])
			after := e.commitTx("after-restart", 1)
			last := expect(t, r2, "the next new transaction (nothing else redelivered)", after)
			r2.Confirm(last.EndLSN)
			if err := r2.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("SlotInUse", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		a, _ := e.start()
		connB := e.dial("postgres")
		_, err := logrepl.Start(context.Background(), connB, e.cfg)
		oneLine(t, err, logrepl.ErrSlotInUse, fmt.Sprint(a.PID()), e.cfg.Slot)

		// Standing by while A streams: START_REPLICATION fails again and again, and the
		// connection stays usable after each refusal.
		short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err = logrepl.WaitForSlot(short, connB, e.cfg, 20*time.Millisecond)
		cancelShort()
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, logrepl.ErrSlotInUse) {
			t.Fatalf("WaitForSlot while A streams: %v", err)
		}
		// B stands by on the same connection.
		type result struct {
			r   *logrepl.Reader
			err error
			at  time.Time
		}
		bCh := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			r, err := logrepl.WaitForSlot(ctx, connB, e.cfg, 50*time.Millisecond)
			bCh <- result{r, err, time.Now()}
		}()
		first := e.commitTx("to-a", 1)
		a.Confirm(expect(t, a, "A holds the slot", first).EndLSN)
		if err := a.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		var pid uint32 = a.PID()
		e.srv.exec(t, "SELECT pg_terminate_backend($1)", int32(pid))
		res := <-bCh
		if res.err != nil {
			t.Fatalf("stand-by B: %v", res.err)
		}
		b := res.r
		t.Cleanup(func() { _ = b.Close() })
		t.Logf("B took the slot %s after A's backend was terminated", res.at.Sub(killed).Round(time.Millisecond))
		if d := res.at.Sub(killed); d > 5*time.Second {
			t.Fatalf("B took %s to take the slot", d)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		if _, err := a.Next(ctx); err == nil || errors.Is(err, logrepl.ErrClosed) {
			t.Fatalf("A after its backend was terminated: %v", err)
		}
		cancel()
		// A's confirmation may not have been processed before its backend ended: B may get
		// A's transaction again (at least once), then the new one.
		second := e.commitTx("to-b", 1)
		tx := next(t, b)
		if fmt.Sprint(rowIDs(tx)) == fmt.Sprint(first) {
			t.Log("B got A's confirmed transaction again (its confirmation was lost with A's backend)")
			tx = next(t, b)
		}
		if fmt.Sprint(rowIDs(tx)) != fmt.Sprint(second) {
			t.Fatalf("B streams the slot: got %v, want %v", rowIDs(tx), second)
		}
	})

	t.Run("Idle", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		e.cfg.StatusInterval = 200 * time.Millisecond
		srv.exec(t, `GRANT USAGE ON SCHEMA "`+e.cfg.Schema+`" TO relay`)
		statements := func() int64 { return srv.cluster.StatementCount(t, "relay") }
		if n := statements(); n != 0 {
			t.Fatalf("role relay ran %d statements before the test", n)
		}
		conn := e.dial("relay")
		r, err := logrepl.Start(context.Background(), conn, e.cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		// The start-up check is counted: the measure sees the reader's statements.
		atStart := statements()
		if atStart == 0 {
			t.Fatal("pg_stat_statements counted none of the reader's start-up statements: the idle measure would prove nothing")
		}
		// A transaction goes through, so the reader is streaming.
		expect(t, r, "a row", e.commitTx("idle", 1))
		replies := func() (time.Time, string) {
			var at time.Time
			var query string
			if err := srv.pool.QueryRow(context.Background(),
				`SELECT r.reply_time, a.query FROM pg_stat_replication r JOIN pg_stat_activity a ON a.pid = r.pid WHERE r.pid = $1`, int32(r.PID())).Scan(&at, &query); err != nil {
				t.Fatal(err)
			}
			return at, query
		}
		before, _ := replies()
		time.Sleep(3 * time.Second) // the measured idle period
		after, query := replies()
		if n := statements(); n != atStart {
			t.Fatalf("the idle reader ran %d statements in 3s", n-atStart)
		}
		if !after.After(before) {
			t.Fatalf("the reader sent no status update in 3s (reply_time %s then %s)", before, after)
		}
		if !strings.HasPrefix(query, "START_REPLICATION") {
			t.Fatalf("the reader's last command is %q", query)
		}
		t.Logf("idle 3s: 0 statements (%d at start-up), status updates until %s", atStart, after.Format(time.RFC3339Nano))
	})

	t.Run("Admin", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		conn := e.admin("postgres")
		// Setup again: nothing created, nothing refused.
		res, err := logrepl.Setup(context.Background(), conn, e.cfg)
		if err != nil || res.CreatedPublication || res.CreatedSlot {
			t.Fatalf("second setup: %+v, %v", res, err)
		}
		// Setup, List and Drop work on a replication connection too.
		e2 := newEnv(t, srv, false)
		repl := e2.dial("postgres")
		if res, err := logrepl.Setup(context.Background(), repl, e2.cfg); err != nil || !res.CreatedPublication || !res.CreatedSlot {
			t.Fatalf("setup on a replication connection: %+v, %v", res, err)
		}
		if st, err := logrepl.List(context.Background(), repl); err != nil || len(st.Slots) == 0 {
			t.Fatalf("list on a replication connection: %+v, %v", st, err)
		}
		if res, err := logrepl.Drop(context.Background(), repl, e2.cfg); err != nil || !res.DroppedSlot || !res.DroppedPublication {
			t.Fatalf("drop on a replication connection: %+v, %v", res, err)
		}
		r, _ := e.start()
		st, err := logrepl.List(context.Background(), conn)
		if err != nil {
			t.Fatal(err)
		}
		if st.WALLevel != "logical" || st.ServerVersion < 140000 {
			t.Fatalf("list: %+v", st)
		}
		var slot *logrepl.SlotInfo
		for i := range st.Slots {
			if st.Slots[i].Name == e.cfg.Slot {
				slot = &st.Slots[i]
			}
		}
		if slot == nil || !slot.Active || slot.ActivePID != int64(r.PID()) || slot.Plugin != "pgoutput" || slot.LagBytes < 0 ||
			slot.RestartLSN == 0 || slot.ConfirmedFlushLSN == 0 || slot.WALStatus == "" {
			t.Fatalf("slot %s: %+v", e.cfg.Slot, slot)
		}
		var pub *logrepl.PublicationInfo
		for i := range st.Publications {
			if st.Publications[i].Name == e.cfg.Publication {
				pub = &st.Publications[i]
			}
		}
		if pub == nil || !pub.Insert || pub.Update || pub.Delete || pub.Truncate || fmt.Sprint(pub.Tables) != "["+e.cfg.Schema+".jasper_outgoing_envelopes]" {
			t.Fatalf("publication: %+v", pub)
		}
		// An active slot is not dropped.
		_, err = logrepl.Drop(context.Background(), conn, e.cfg)
		oneLine(t, err, logrepl.ErrSlotInUse, "stop the reader first")
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		// Close ended the stream with the server's answer: the slot is free at once, and
		// Drop drops both.
		if res, err := logrepl.Drop(context.Background(), conn, e.cfg); err != nil || !res.DroppedSlot || !res.DroppedPublication {
			t.Fatalf("drop: %+v, %v", res, err)
		}
		if res, err := logrepl.Drop(context.Background(), conn, e.cfg); err != nil || res.DroppedSlot || res.DroppedPublication {
			t.Fatalf("second drop: %+v, %v", res, err)
		}
	})

	t.Run("Refusals", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, srv, true)
		ctx := context.Background()

		// A role without REPLICATION: no replication connection, no Setup.
		_, err := logrepl.Dial(ctx, srv.dsnAs("plain"))
		oneLine(t, err, logrepl.ErrNoReplicationRight, `ALTER ROLE "plain" REPLICATION`)
		_, err = logrepl.Setup(ctx, e.admin("plain"), e.cfg)
		oneLine(t, err, logrepl.ErrNoReplicationRight, `ALTER ROLE "plain" REPLICATION`)

		// A dropped slot.
		srv.exec(t, "SELECT pg_drop_replication_slot($1)", e.cfg.Slot)
		_, err = logrepl.Start(ctx, e.dial("postgres"), e.cfg)
		oneLine(t, err, logrepl.ErrSlotMissing, e.cfg.Slot, "does not exist")

		// A missing table.
		missing := e.cfg
		missing.Schema = "no_such_schema"
		_, err = logrepl.Setup(ctx, e.admin("postgres"), missing)
		oneLine(t, err, logrepl.ErrTableMissing, "no_such_schema.jasper_outgoing_envelopes")

		// A missing publication, and one that does not publish the table.
		other := e.cfg
		other.Publication = "wj_no_such_publication"
		_, err = logrepl.Start(ctx, e.dial("postgres"), other)
		oneLine(t, err, logrepl.ErrPublicationMissing, "wj_no_such_publication")
		srv.exec(t, "CREATE PUBLICATION wj_other_pub FOR TABLE \""+e.cfg.Schema+"\".jasper_incoming_envelopes")
		other.Publication = "wj_other_pub"
		_, err = logrepl.Setup(ctx, e.admin("postgres"), other)
		oneLine(t, err, logrepl.ErrPublicationMismatch, "wj_other_pub")

		// Bad names.
		for _, c := range []logrepl.Config{{Slot: "Upper"}, {Slot: strings.Repeat("s", 64)}, {Publication: "bad-name"}, {Schema: "1x"}} {
			_, err = logrepl.Setup(ctx, e.admin("postgres"), c)
			oneLine(t, err, logrepl.ErrInvalidConfig)
		}

		// A normal connection cannot stream.
		e2 := newEnv(t, srv, true)
		_, err = logrepl.Start(ctx, e2.admin("postgres"), e2.cfg)
		oneLine(t, err, logrepl.ErrNotReplicationConn, "replication=database")
	})
}
