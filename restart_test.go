package jasper_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// The database crashes mid-run (a private cluster stopped with pg_ctl -m immediate, then
// started: crash recovery from the write-ahead log) while a publisher commits messages one
// per transaction and the runtime's forwarder relays them. Every message whose commit was
// acknowledged reaches the sink (at least once), the outbox ends empty, and the node takes
// its lock again under the same id.
func TestDatabaseCrashMidRunLosesNothing(t *testing.T) {
	t.Parallel()
	cluster := testdb.StartCluster(t)
	db, pool := cluster.Driver(t)
	sink := &memorySink{copies: map[string]int{}}
	rt, err := jasper.NewRuntime(db, jasper.Config{
		MigrateSchema: true,
		Agent:         durability.Config{NodeCheckInterval: 200 * time.Millisecond},
		Forwarders:    []forwarder.Config{{Publisher: sink, PollInterval: 100 * time.Millisecond}},
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)
	node := rt.Agent().NodeID()

	// The publisher: one message per transaction, retried until its commit is acknowledged
	// (an error during the outage may hide a commit: the same message UUID is then written
	// again, and the envelope id derived from it makes the retry a no-op).
	var (
		mu        sync.Mutex
		committed []string
		failures  atomic.Int64
	)
	stop := make(chan struct{})
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := fmt.Sprintf("crash-%04d", i)
			for {
				if err := rt.Publisher().Publish("orders", message.NewMessage(id, []byte(`{}`))); err == nil {
					break
				}
				failures.Add(1)
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
			mu.Lock()
			committed = append(committed, id)
			mu.Unlock()
		}
	}()
	countCommitted := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(committed)
	}
	awaitCommitted := func(n int) {
		t.Helper()
		deadline := time.Now().Add(crashTimeout)
		for countCommitted() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d messages committed after %s; want %d", countCommitted(), crashTimeout, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	awaitCommitted(200)
	select {
	case <-sink.reached(100):
	case <-time.After(crashTimeout):
		t.Fatal("nothing relayed before the crash")
	}
	before := countCommitted()
	cluster.Crash()
	cluster.Start()
	// Recovery: from the database accepting connections again to the next commit, and to the
	// next message relayed.
	up := time.Now()
	relayedAtUp, _ := sink.stats()
	awaitCommitted(countCommitted() + 1)
	commitRecovery := time.Since(up)
	select {
	case <-sink.reached(relayedAtUp + 1):
	case <-time.After(crashTimeout):
		t.Fatal("nothing relayed after the restart")
	}
	relayRecovery := time.Since(up)
	awaitCommitted(before + 200)
	close(stop)
	<-published

	all := countCommitted()
	select {
	case <-sink.reached(all):
	case <-time.After(crashTimeout):
		distinct, _ := sink.stats()
		t.Fatalf("%d of %d committed messages reached the sink after the crash", distinct, all)
	}
	mu.Lock()
	for _, id := range committed {
		if !sink.has(id) {
			t.Errorf("committed message %s never reached the sink", id)
		}
	}
	mu.Unlock()
	awaitRows(t, pool, fmt.Sprintf("SELECT count(*) FROM %s", schema.Config{Schema: "public"}.Qualified(schema.OutgoingTable)), 0)
	// The node holds its lock again, under the same id (pg_locks: the low 32 bits of the
	// sign-extended key).
	awaitRows(t, pool, fmt.Sprintf("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %d", uint32(node)), 1)
	if n := rt.Agent().Node().Relocks(); n == 0 {
		t.Error("the node never found its lock lost: did the database crash?")
	}
	t.Logf("%d messages committed (%d before the crash), %d publish errors during the outage, node %d relocked %d time(s); after the restart: first commit in %s, first relay in %s",
		all, before, failures.Load(), node, rt.Agent().Node().Relocks(), commitRecovery.Round(time.Millisecond), relayRecovery.Round(time.Millisecond))
}

// The database crashes while a durable local queue is consumed behind the inbox: every
// message whose publish was acknowledged has its effect applied exactly once (the inbox's
// mark and the effect commit together), and the queue ends empty of Incoming rows.
func TestDatabaseCrashMidRunAppliesEachMessageOnce(t *testing.T) {
	t.Parallel()
	cluster := testdb.StartCluster(t)
	db, pool := cluster.Driver(t)
	rt, err := jasper.NewRuntime(db, jasper.Config{
		MigrateSchema: true,
		Agent:         durability.Config{NodeCheckInterval: 200 * time.Millisecond},
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)
	execSQL(t, pool, "CREATE TABLE effects (message_uuid text NOT NULL)")
	queue := localQueue(t, rt, pool)
	applyEffects(t, rt, subscriber.Config{MaxInFlight: 4, PollInterval: 100 * time.Millisecond}, "crash", "effects")

	var committed atomic.Int64
	stop := make(chan struct{})
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := 0; ; i++ {
			id := fmt.Sprintf("work-%04d", i)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := queue.Publish("work", message.NewMessage(id, []byte(`{}`))); err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			committed.Add(1)
		}
	}()
	var before int64
	effects := func() int64 { return count(t, pool, "SELECT count(*) FROM effects") }
	awaitEffects := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(crashTimeout)
		for effects() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d effects after %s; want %d (%d before the crash); missing: %s; incoming rows by status and owner: %s (node %d, relocks %d)", effects(), crashTimeout, n, before,
					queryStrings(t, pool, fmt.Sprintf("SELECT string_agg(g::text, ',') FROM generate_series(0, %d) g WHERE NOT EXISTS (SELECT 1 FROM effects WHERE message_uuid = 'work-' || lpad(g::text, 4, '0'))", n-1)),
					queryStrings(t, pool, fmt.Sprintf("SELECT status || ':' || owner_id || ':' || count(*) FROM %s GROUP BY status, owner_id",
						schema.Config{Schema: "public"}.Qualified(schema.IncomingTable))), rt.Agent().NodeID(), rt.Agent().Node().Relocks())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	awaitEffects(100)
	before = committed.Load()
	cluster.Crash()
	cluster.Start()
	up := time.Now()
	atUp := effects()
	deadline := up.Add(crashTimeout)
	for effects() <= atUp {
		if time.Now().After(deadline) {
			t.Fatal("no effect applied after the restart")
		}
		time.Sleep(5 * time.Millisecond)
	}
	recovery := time.Since(up)
	for committed.Load() < before+100 {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-published
	all := committed.Load()
	awaitEffects(all)
	awaitRows(t, pool, fmt.Sprintf("SELECT count(*) FROM %s WHERE status <> 'Handled'", schema.Config{Schema: "public"}.Qualified(schema.IncomingTable)), 0)
	if n := count(t, pool, "SELECT count(*) FROM (SELECT message_uuid FROM effects GROUP BY message_uuid HAVING count(*) > 1) d"); n != 0 {
		t.Errorf("%d messages had their effect applied more than once", n)
	}
	if n := effects(); n != all {
		t.Errorf("%d effects for %d committed messages", n, all)
	}
	t.Logf("%d messages committed (%d before the crash), node relocked %d time(s); first effect applied %s after the restart",
		all, before, rt.Agent().Node().Relocks(), recovery.Round(time.Millisecond))
}
