package forwarder

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// ordered records the bodies a subscription receives, in arrival order.
type ordered struct {
	mu     sync.Mutex
	bodies []string
	seen   chan struct{} // signalled (coalesced) on every message
}

func receiveInOrder(t *testing.T, sub message.Subscriber, topics ...string) *ordered {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	o := &ordered{seen: make(chan struct{}, 1)}
	for _, topic := range topics {
		ch, err := sub.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for m := range ch {
				o.mu.Lock()
				o.bodies = append(o.bodies, string(m.Payload))
				o.mu.Unlock()
				m.Ack()
				select {
				case o.seen <- struct{}{}:
				default:
				}
			}
		}()
	}
	return o
}

// waitFor waits until every body in want arrived.
func (o *ordered) waitFor(t *testing.T, want ...string) {
	t.Helper()
	timeout := time.After(testTimeout)
	for {
		o.mu.Lock()
		got := map[string]bool{}
		for _, b := range o.bodies {
			got[b] = true
		}
		o.mu.Unlock()
		missing := 0
		for _, w := range want {
			if !got[w] {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		select {
		case <-o.seen:
		case <-timeout:
			t.Fatalf("%d of %d messages did not arrive", missing, len(want))
		}
	}
}

// checkKeyOrder checks that the bodies "<key>-<n>" of each key arrived in the order of n, with
// duplicates removed (a redelivery may repeat an earlier message, never overtake a later one).
func (o *ordered) checkKeyOrder(t *testing.T) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	last := map[string]int{}
	for _, b := range o.bodies {
		i := strings.LastIndexByte(b, '-')
		key := b[:i]
		var n int
		if _, err := fmt.Sscan(b[i+1:], &n); err != nil {
			t.Fatalf("body %q: %v", b, err)
		}
		prev, ok := last[key]
		switch {
		case !ok && n != 0:
			t.Fatalf("key %s: message %d arrived first (order %q)", key, n, o.bodies)
		case ok && n > prev+1:
			t.Fatalf("key %s: message %d arrived after %d", key, n, prev)
		case ok && n <= prev:
			continue // a duplicate of one delivered before
		}
		last[key] = n
	}
}

// The table-less outbox end to end: envelopes emitted as logical decoding messages (no row)
// are relayed from the slot in per-key order, also when publishes fail and are retried; a
// message that keeps failing and an unreadable one go to the dead letters; an envelope of
// another forwarder's destination is written as a row; what is emitted while no forwarder
// runs waits in the slot and is relayed by the next one.
func TestLogicalReplicationTableLess(t *testing.T) {
	t.Parallel()
	e := newReplicationEnv(t)
	// Publish returns once the subscriber acked: the order of publishes is the order received.
	pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024, BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubsub.Close() })
	rec := newRecorder(pubsub)
	rec.fail["flaky"] = errBroken
	rec.fail["doomed"] = errBroken
	rec.onFail = func(topic string, calls int) {
		if topic == "flaky" && calls >= 2 {
			rec.mu.Lock()
			delete(rec.fail, topic)
			rec.mu.Unlock()
		}
	}
	got := receiveInOrder(t, pubsub, "orders", "flaky")
	// The failing destination is paused after 2 failures and then only probed, and still
	// reaches MaxAttempts: the source takes its probes itself (no row, no polling claim).
	cfg := Config{Publisher: rec, Destinations: []string{"orders", "flaky", "doomed"}, MaxAttempts: 5,
		CircuitBreakAfter: 2, CircuitPause: 50 * time.Millisecond}
	paused := make(chan string, 16)
	onPause := func(d string) {
		select {
		case paused <- d:
		default:
		}
	}
	cfg.LogicalReplication = &e.lr
	f := e.forwarder(cfg)
	f.onPause = onPause
	dead := deadLettered(f)
	start(t, f)
	awaitStreaming(t, f, true)

	lc, err := logrepl.Config{Schema: e.schema.Schema, Slot: e.lr.Slot}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	envelope := func(dest, key string, n int) row.Envelope {
		msg := message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf("%s-%d", key, n)))
		r, err := row.FromMessage(dest, msg, row.Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		r.PartitionKey = key
		return r
	}
	// emit writes envs as logical decoding messages in one transaction.
	emit := func(envs ...row.Envelope) {
		t.Helper()
		tx, err := e.db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		ok, err := e.store.With(tx).EmitOutgoing(ctx, store.EmitParams{Slot: lc.Slot, Prefix: lc.MessagePrefix(), Envelopes: envs})
		if err != nil || !ok {
			t.Fatalf("emit: %v (emitted %v)", err, ok)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}

	const keys, perKey = 10, 20
	var want []string
	for n := 0; n < perKey; n += 2 { // two messages of each key per transaction
		var envs []row.Envelope
		for k := range keys {
			key := fmt.Sprintf("k%d", k)
			envs = append(envs, envelope("orders", key, n), envelope("orders", key, n+1))
			want = append(want, fmt.Sprintf("%s-%d", key, n), fmt.Sprintf("%s-%d", key, n+1))
		}
		emit(envs...)
	}
	// Two failed publishes, then the key's order holds: f-1 and f-2 wait for f-0.
	emit(envelope("flaky", "f", 0), envelope("flaky", "f", 1))
	emit(envelope("flaky", "f", 2))
	want = append(want, "f-0", "f-1", "f-2")
	doomed := envelope("doomed", "d", 0)
	emit(doomed)
	other := envelope("invoices", "i", 0)
	emit(other)
	e.exec(t, "SELECT pg_logical_emit_message(true, $1, '\\x0102'::bytea)", lc.MessagePrefix())

	got.waitFor(t, want...)
	got.checkKeyOrder(t)
	waitDeadLettered(t, dead, 2, "the message that keeps failing and the unreadable one")
	if dl := e.deadLetter(doomed.ID); !strings.Contains(dl.Explanation, "5 times") || dl.Attempts != 5 {
		t.Fatalf("dead letter of the failing message: %q, %d attempts", dl.Explanation, dl.Attempts)
	}
	select {
	case d := <-paused:
		if d != "doomed" && d != "flaky" {
			t.Fatalf("destination %q paused", d)
		}
	default:
		t.Fatal("no destination was paused")
	}
	if n := e.count(schema.DeadLetterTable, "explanation LIKE 'The emitted envelope cannot be read%'"); n != 1 {
		t.Fatalf("%d dead letters of the unreadable message, want 1", n)
	}
	// No row was written but the other forwarder's.
	if n, m := e.outgoing(), e.count(schema.OutgoingTable, "id = $1", other.ID); n != 1 || m != 1 {
		t.Fatalf("%d outgoing rows (%d of them the invoices envelope), want only the invoices envelope", n, m)
	}
	if n := rec.attemptsOf("doomed"); n != 5 {
		t.Fatalf("%d publishes of the failing message, want MaxAttempts (5)", n)
	}
	// The one row is the invoices envelope the source wrote, which the slot may have brought
	// back by now (not this forwarder's destination: skipped).
	s, _ := f.ReplicationStats()
	if s.Emitted != keys*perKey+3+1+1+1 || s.Rows > 1 || s.Handover < 1 {
		t.Fatalf("replication stats %+v: want %d emitted, at most the invoices row, it handed over", s, keys*perKey+6)
	}

	// Emitted while no forwarder runs: kept by the slot, relayed by the next forwarder.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	emit(envelope("orders", "later", 0), envelope("orders", "later", 1))
	following(t, e.env, &e.lr, cfg)
	got.waitFor(t, "later-0", "later-1")
	got.checkKeyOrder(t)
}

// exec runs a statement on the env's database.
func (e *replicationEnv) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
