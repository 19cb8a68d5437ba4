package jasper_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/internal/testproc"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Per-key ordering across processes, relay sources and a SIGKILL: 20,000 messages over 200
// partition keys, published by three node processes (each its own keys, 100 messages a key,
// in commit order within the key), relayed into a durable local queue and handled by the
// three subscribers. Two nodes follow the outbox through the schema's replication slot (the
// first streams it, the second stands by), the third polls. The streaming node, a slow one, is
// killed with SIGKILL while its relay holds locked batches. The stand-by takes the slot over,
// nothing is lost, and per key both the relayed sequence and the handled sequence are the
// published order once duplicates are removed, a duplicate being only ever a copy of the
// latest message of its key (a redelivery never overtakes a later message).
func TestCrashOrderedByKeySIGKILL(t *testing.T) {
	t.Parallel()
	cluster, _, s := slotCrashSchema(t)
	// The victim publishes 6,800 messages over 68 keys, the others 6,600 over 66: 20,000
	// over 200 keys, 100 a key.
	plan := []struct {
		messages, keys int
		slot           bool
	}{{6800, 68, true}, {6600, 66, true}, {6600, 66, false}}
	const following = "Following the outbox through the replication slot"
	start := time.Now()
	var procs [3]*testproc.Proc
	var ids [3]int32
	for i, p := range plan {
		a := []string{"-dsn", cluster.DSN(), "-schema", s.cfg.Schema, "-prefix", fmt.Sprintf("n%d", i),
			"-messages", fmt.Sprint(p.messages), "-keys", fmt.Sprint(p.keys), "-batch", "100",
			"-forwarder-batch", "100", "-forwarder-workers", "2", "-forwarder-concurrency", "8",
			"-subscriber-batch", "50", "-subscriber-inflight", "4", "-reassign", "2s"}
		if i == 0 {
			a = append(a, "-sink-latency", "20ms", "-handler-latency", "5ms")
		}
		if p.slot {
			a = append(a, "-replication-dsn", cluster.DSN())
		}
		procs[i], ids[i] = startNode(t, fmt.Sprintf("node%d", i), a...)
		if i == 0 { // the first streams the slot; the second then stands by
			procs[0].Await(crashTimeout, func(e testproc.Event) bool { return e.Str("msg") == following })
		}
	}
	victim, standBy := procs[0], procs[1]
	victim.Await(crashTimeout, func(e testproc.Event) bool {
		return e.Str("event") == "published" && e.Num("count") == int64(plan[0].messages)
	})
	_, heldOut := s.awaitHolding(ids[0], 1, 10)
	victim.Kill()
	killedAt := time.Now()
	t.Logf("node %d (streaming the slot) killed with SIGKILL %s after start while relays held %d outgoing envelopes locked",
		ids[0], killedAt.Sub(start).Round(time.Millisecond), heldOut)
	standBy.Await(crashTimeout, func(e testproc.Event) bool { return e.Str("msg") == following })
	t.Logf("node %d took the slot over %s after the kill", ids[1], time.Since(killedAt).Round(time.Millisecond))

	// One message of a key at a time through the relay and then the queue: 100 sequential
	// steps a key on each side, a minute or more on a loaded 2-core machine.
	sent, handled := s.awaitHandledWithin(3 * time.Minute)
	t.Logf("%d of %d committed messages relayed and handled %s after start", handled, sent, time.Since(start).Round(time.Millisecond))
	if sent != 20000 || handled != sent {
		t.Fatalf("%d messages committed and %d handled, want 20,000 each", sent, handled)
	}
	relays := s.checkOrder("relay_log", 200, 100)
	handlings := s.checkOrder("handle_log", 200, 100)
	t.Logf("per-key order held over 200 keys: %d relays (%d duplicates), %d handlings (%d duplicates)",
		relays, relays-20000, handlings, handlings-20000)
	for _, p := range procs[1:] {
		p.Stop(crashTimeout)
	}
}

// checkOrder reads a log table (id order, uuid "<prefix>-<n>", partition key) and checks,
// per key, that the messages appear in the order of n, each message after its predecessor,
// with duplicates only of the latest message; it returns the number of log rows.
func (s *crashSchema) checkOrder(table string, keys, perKey int) int {
	s.t.Helper()
	return s.checkKeyOrder(table, keys, perKey, false)
}

// checkFirstOrder is checkOrder for the first arrival of each message only: a duplicate may
// repeat any earlier message (a table-less redelivery replays from the slot's position).
func (s *crashSchema) checkFirstOrder(table string, keys, perKey int) int {
	s.t.Helper()
	return s.checkKeyOrder(table, keys, perKey, true)
}

// checkKeyOrder is checkOrder, or checkFirstOrder with firstOnly.
func (s *crashSchema) checkKeyOrder(table string, keys, perKey int, firstOnly bool) int {
	s.t.Helper()
	rows, err := s.db.Query(context.Background(), `SELECT uuid, COALESCE(pkey, '') FROM `+s.prefix+table+` ORDER BY id`)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	arrived := map[string]bool{} // uuids seen
	last := map[string]int{}     // key -> n of the latest message seen
	seen := map[string]int{}     // key -> distinct messages seen
	total := 0
	for rows.Next() {
		var uuid, key string
		if err := rows.Scan(&uuid, &key); err != nil {
			s.t.Fatal(err)
		}
		total++
		if key == "" {
			s.t.Fatalf("%s: message %s has no partition key", table, uuid)
		}
		if firstOnly && arrived[uuid] {
			continue
		}
		arrived[uuid] = true
		i := strings.LastIndexByte(uuid, '-')
		n, err := strconv.Atoi(uuid[i+1:])
		if err != nil {
			s.t.Fatalf("%s: uuid %q", table, uuid)
		}
		prev, ok := last[key]
		switch {
		case ok && n == prev: // a duplicate of the latest: allowed
		case !ok, n > prev: // the next message of the key (the counts below check none is missing)
			last[key] = n
			seen[key]++
		default:
			s.t.Fatalf("%s: key %s: message %d after %d (out of order)", table, key, n, prev)
		}
	}
	if err := rows.Err(); err != nil {
		s.t.Fatal(err)
	}
	if len(seen) != keys {
		s.t.Fatalf("%s: %d keys, want %d", table, len(seen), keys)
	}
	for key, n := range seen {
		if n != perKey {
			s.t.Fatalf("%s: key %s: %d distinct messages, want %d", table, key, n, perKey)
		}
	}
	return total
}

// Per-key ordering of the table-less outbox across a SIGKILL: 6,000 messages over 60 partition
// keys, published table-less (logical decoding messages, no row) by three node processes, two
// of which follow the schema's slot (the first streams it, the second stands by); the third
// only publishes. The streaming node, a slow one, is killed with SIGKILL while it relays. The
// stand-by takes the slot over and receives again what was not confirmed: nothing is lost,
// no outbox row is ever written, and per key the first arrival of each message is in the
// published order. A redelivery here may repeat several earlier messages of a key (the slot
// resends from its confirmed position, docs/ordering.md), so duplicates are not checked.
func TestCrashTableLessSIGKILL(t *testing.T) {
	t.Parallel()
	cluster, db, s := slotCrashSchema(t)
	const following = "Following the outbox through the replication slot"
	start := time.Now()
	var procs [3]*testproc.Proc
	var ids [3]int32
	for i := range procs {
		a := []string{"-dsn", cluster.DSN(), "-schema", s.cfg.Schema, "-prefix", fmt.Sprintf("n%d", i),
			"-messages", "2000", "-keys", "20", "-batch", "50", "-table-less",
			"-forwarder-batch", "100", "-forwarder-workers", "2", "-forwarder-concurrency", "8",
			"-subscriber-batch", "50", "-subscriber-inflight", "4", "-reassign", "2s"}
		if i == 0 {
			a = append(a, "-sink-latency", "20ms")
		}
		if i < 2 {
			a = append(a, "-replication-dsn", cluster.DSN())
		}
		procs[i], ids[i] = startNode(t, fmt.Sprintf("node%d", i), a...)
		if i == 0 { // the first streams the slot; the second then stands by
			procs[0].Await(crashTimeout, func(e testproc.Event) bool { return e.Str("msg") == following })
		}
	}
	victim, standBy := procs[0], procs[1]
	for _, p := range procs {
		p.Await(crashTimeout, func(e testproc.Event) bool { return e.Str("event") == "published" && e.Num("count") == 2000 })
	}
	// Killed while it relays: some of its messages have reached the queue, not all.
	s.awaitRelayed(1000)
	victim.Kill()
	killedAt := time.Now()
	t.Logf("node %d (streaming the slot) killed with SIGKILL %s after start", ids[0], killedAt.Sub(start).Round(time.Millisecond))
	standBy.Await(crashTimeout, func(e testproc.Event) bool { return e.Str("msg") == following })
	t.Logf("node %d took the slot over %s after the kill", ids[1], time.Since(killedAt).Round(time.Millisecond))

	sent, handled := s.awaitHandledWithin(2 * time.Minute)
	if sent != 6000 || handled != sent {
		t.Fatalf("%d messages committed and %d handled, want 6,000 each", sent, handled)
	}
	var inserted int64
	if err := database.QueryRow(context.Background(), db, `SELECT COALESCE(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables
		WHERE schemaname = $1 AND relname = $2`, []any{s.cfg.Schema, schema.OutgoingTable}, &inserted); err != nil {
		t.Fatal(err)
	}
	if inserted != 0 {
		t.Fatalf("%d rows were inserted into the outbox, want none (table-less)", inserted)
	}
	relays := s.checkFirstOrder("relay_log", 60, 100)
	handlings := s.checkFirstOrder("handle_log", 60, 100)
	t.Logf("per-key order of first arrivals held over 60 keys: %d relays, %d handlings of 6,000 messages", relays, handlings)
	for _, p := range procs[1:] {
		p.Stop(crashTimeout)
	}
}

// awaitRelayed waits until at least n relayed copies are in relay_log (the tables hold the
// state it waits for: it polls them).
func (s *crashSchema) awaitRelayed(n int64) {
	s.t.Helper()
	deadline := time.Now().Add(crashTimeout)
	for {
		var got int64
		if err := database.QueryRow(context.Background(), s.db, `SELECT count(*) FROM `+s.prefix+`relay_log`, nil, &got); err != nil {
			s.t.Fatal(err)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%d messages relayed after %s, want %d", got, crashTimeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slotCrashSchema starts a private cluster with wal_level = logical, migrates a crash schema
// on it and creates the schema's slot and publication.
func slotCrashSchema(t *testing.T) (*testdb.Cluster, database.DB, *crashSchema) {
	t.Helper()
	cluster := testdb.StartLogicalCluster(t)
	db, st := cluster.Migrated(t)
	s := newCrashSchemaOn(t, db, st.Schema())
	if _, err := admin.CreateReplicationSlot(context.Background(), cluster.DSN(), s.cfg, admin.ReplicationSlot{}); err != nil {
		t.Fatal(err)
	}
	return cluster, db, s
}
