package jasper_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/jasperid"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/internal/testproc"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// crashTimeout bounds every wait of the crash tests.
const crashTimeout = 60 * time.Second

// TestMain runs the child processes of the crash tests (internal/testproc) instead of the
// tests when it is one of them.
func TestMain(m *testing.M) {
	testproc.Main(map[string]func() error{"crashnode": crashNodeMain})
	os.Exit(m.Run())
}

// startNode starts a crash node (crashNodeMain) with a fresh node id, waits for it to be
// ready and returns it with its id.
func startNode(t *testing.T, name string, args ...string) (*testproc.Proc, int32) {
	t.Helper()
	id := jasperid.NewNodeID()
	p := testproc.Start(t, name, "crashnode", append(args, "-node-id", fmt.Sprint(id))...)
	p.Await(crashTimeout, func(e testproc.Event) bool { return e.Str("event") == "ready" })
	return p, id
}

// crashSchema is a migrated schema with the tables of the crash test program.
type crashSchema struct {
	t      *testing.T
	db     database.Driver
	cfg    schema.Config
	prefix string // quoted schema name
}

func newCrashSchema(t *testing.T) *crashSchema {
	db, cfg := testdb.Migrated(t)
	return newCrashSchemaOn(t, db, cfg)
}

// newCrashSchemaOn creates the crash test program's tables in the migrated schema cfg of db.
func newCrashSchemaOn(t *testing.T, db database.Driver, cfg schema.Config) *crashSchema {
	s := &crashSchema{t: t, db: db, cfg: cfg, prefix: cfg.QuoteIdent(cfg.Schema) + "."}
	for _, q := range []string{
		`CREATE TABLE ` + s.prefix + `sent_log (uuid text PRIMARY KEY)`,
		`CREATE TABLE ` + s.prefix + `forwarded (uuid text PRIMARY KEY, first_node int NOT NULL, count int NOT NULL)`,
		`CREATE TABLE ` + s.prefix + `handled (uuid text PRIMARY KEY, first_node int NOT NULL, count int NOT NULL)`,
		// The order of every relay and handling, with the message's partition key.
		`CREATE TABLE ` + s.prefix + `relay_log (id bigserial PRIMARY KEY, uuid text NOT NULL, pkey text)`,
		`CREATE TABLE ` + s.prefix + `handle_log (id bigserial PRIMARY KEY, uuid text NOT NULL, pkey text)`,
		// Every envelope a forwarder relays into the queue is counted by the inserting
		// statement itself, with the relaying node's crashnode.node session parameter. A
		// BEFORE trigger also fires for a copy that ON CONFLICT DO NOTHING then drops (the
		// queue still held the first), so every relay counts.
		`CREATE FUNCTION ` + s.prefix + `count_relay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ` + s.prefix + `forwarded (uuid, first_node, count)
    VALUES (NEW.message_uuid, current_setting('crashnode.node', true)::int, 1)
    ON CONFLICT (uuid) DO UPDATE SET count = forwarded.count + 1;
  INSERT INTO ` + s.prefix + `relay_log (uuid, pkey) VALUES (NEW.message_uuid, NEW.partition_key);
  RETURN NEW;
END $$`,
		`CREATE TRIGGER count_relay BEFORE INSERT ON ` + cfg.Qualified(schema.IncomingTable) +
			` FOR EACH ROW WHEN (NEW.status = 'Incoming') EXECUTE FUNCTION ` + s.prefix + `count_relay()`,
	} {
		if _, err := db.Exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *crashSchema) count(q string, args ...any) int64 {
	s.t.Helper()
	var n int64
	if err := database.QueryRow(context.Background(), s.db, q, args, &n); err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// owned returns how many incoming and outgoing envelopes owner holds.
func (s *crashSchema) owned(owner int32) (in, out int64) {
	s.t.Helper()
	err := database.QueryRow(context.Background(), s.db, `SELECT
	  (SELECT count(*) FROM `+s.cfg.Qualified(schema.IncomingTable)+` WHERE owner_id = $1),
	  (SELECT count(*) FROM `+s.cfg.Qualified(schema.OutgoingTable)+` WHERE owner_id = $1)`, []any{owner}, &in, &out)
	if err != nil {
		s.t.Fatal(err)
	}
	return in, out
}

// awaitHolding polls (the database offers no event for it) until owner holds at least minIn
// incoming envelopes (marked with its id) while at least minOut outgoing envelopes are locked
// by relays' batch transactions (forwarders never mark them).
func (s *crashSchema) awaitHolding(owner int32, minIn, minOut int64) (in, out int64) {
	s.t.Helper()
	deadline := time.Now().Add(crashTimeout)
	for {
		in, _ = s.owned(owner)
		out = s.lockedOutgoing()
		if in >= minIn && out >= minOut {
			return in, out
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("node %d never held %d incoming envelopes while %d outgoing ones were locked (last: %d incoming, %d locked)", owner, minIn, minOut, in, out)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// lockedOutgoing counts the outgoing envelopes locked by other transactions (relays'
// batches): those FOR UPDATE SKIP LOCKED skips, in a transaction rolled back at once.
func (s *crashSchema) lockedOutgoing() int64 {
	s.t.Helper()
	ctx := context.Background()
	tx, err := s.db.Begin(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var n int64
	t := s.cfg.Qualified(schema.OutgoingTable)
	if err := database.QueryRow(ctx, tx, `SELECT (SELECT count(*) FROM `+t+`) - (SELECT count(*) FROM (SELECT id FROM `+t+` FOR UPDATE SKIP LOCKED) AS free)`, nil, &n); err != nil {
		s.t.Fatal(err)
	}
	return n
}

// awaitHandled waits until every message of sent_log was handled and both envelope tables
// are empty (the database offers no event for it: it is polled).
func (s *crashSchema) awaitHandled() (sent, handled int64) {
	s.t.Helper()
	return s.awaitHandledWithin(crashTimeout)
}

// awaitHandledWithin is awaitHandled with its own timeout: the longest time without progress
// (a message handled, or a row leaving the tables). The whole wait may take longer on a
// loaded machine as long as the messages keep moving; a stall fails after timeout.
func (s *crashSchema) awaitHandledWithin(timeout time.Duration) (sent, handled int64) {
	s.t.Helper()
	lastChange := time.Now()
	var progress []int64 // handled, every 5 s
	lastMark := time.Now()
	prevHandled, prevLeft := int64(-1), int64(-1)
	for {
		var in, out int64
		err := database.QueryRow(context.Background(), s.db, `SELECT
		  (SELECT count(*) FROM `+s.prefix+`sent_log), (SELECT count(*) FROM `+s.prefix+`handled),
		  (SELECT count(*) FROM `+s.cfg.Qualified(schema.IncomingTable)+`),
		  (SELECT count(*) FROM `+s.cfg.Qualified(schema.OutgoingTable)+`)`, nil, &sent, &handled, &in, &out)
		if err != nil {
			s.t.Fatal(err)
		}
		if sent == handled && in == 0 && out == 0 {
			return sent, handled
		}
		now := time.Now()
		if handled != prevHandled || in+out != prevLeft {
			prevHandled, prevLeft, lastChange = handled, in+out, now
		}
		if now.Sub(lastMark) >= 5*time.Second {
			progress = append(progress, handled)
			lastMark = now
		}
		if now.Sub(lastChange) > timeout {
			s.t.Fatalf("not handled, no progress for %s: %d sent, %d handled, %d left in the incoming table, %d in the outbox; handled every 5 s: %v; owners: %s",
				timeout, sent, handled, in, out, progress, s.owners())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// owners describes who holds the envelopes left in both tables (owner_id: count), and how
// many outgoing ones relays have locked, for a failure message.
func (s *crashSchema) owners() string {
	s.t.Helper()
	var b strings.Builder
	for _, tab := range []string{schema.IncomingTable, schema.OutgoingTable} {
		var held string
		err := database.QueryRow(context.Background(), s.db, `SELECT COALESCE(string_agg(owner_id || ': ' || n, ', ' ORDER BY owner_id), '')
		  FROM (SELECT owner_id, count(*) AS n FROM `+s.cfg.Qualified(tab)+` GROUP BY owner_id) AS o`, nil, &held)
		if err != nil {
			return err.Error()
		}
		fmt.Fprintf(&b, "%s {%s} ", tab, held)
	}
	fmt.Fprintf(&b, "outgoing locked by relays: %d", s.lockedOutgoing())
	return b.String()
}

// duplicates counts the copies beyond the first, in forwarded and handled.
type duplicates struct {
	forwarded, forwardedMsgs int64 // extra relays, and messages relayed more than once
	handled, handledMsgs     int64 // extra handlings, and messages handled more than once
	handledByVictim          int64 // extra handlings of messages the killed node handled first
}

// checkDelivery asserts that every message of sent_log was relayed and handled at least once
// and nothing else was, and that every duplicate is explained by the killed node's in-flight
// envelopes, which its death left to others: a message relayed more than once was relayed
// first by victim, and there were at most maxInFlightOut of them (the most outgoing
// envelopes the killed node's forwarder can hold: its Workers x BatchSize, whose batch
// transactions died with it); a message handled more than once was handled once more than it
// was relayed only if victim handled it first (the incoming envelope it held), at most
// handedBackIn of them.
func (s *crashSchema) checkDelivery(victim int32, handedBackIn, maxInFlightOut int64) duplicates {
	s.t.Helper()
	for _, c := range []struct{ what, q string }{
		{"committed messages were never relayed", `SELECT count(*) FROM sent_log l WHERE NOT EXISTS (SELECT 1 FROM forwarded f WHERE f.uuid = l.uuid)`},
		{"committed messages were never handled", `SELECT count(*) FROM sent_log l WHERE NOT EXISTS (SELECT 1 FROM handled h WHERE h.uuid = l.uuid)`},
		{"messages relayed that were never committed", `SELECT count(*) FROM forwarded f WHERE NOT EXISTS (SELECT 1 FROM sent_log l WHERE l.uuid = f.uuid)`},
		{"messages handled that were never committed", `SELECT count(*) FROM handled h WHERE NOT EXISTS (SELECT 1 FROM sent_log l WHERE l.uuid = h.uuid)`},
	} {
		if n := s.count(strings.NewReplacer("sent_log", s.prefix+"sent_log", "forwarded", s.prefix+"forwarded", "handled", s.prefix+"handled").Replace(c.q)); n != 0 {
			s.t.Errorf("%d %s", n, c.what)
		}
	}
	var d duplicates
	var foreignRelays, unexplained int64
	err := database.QueryRow(context.Background(), s.db, `SELECT
	  (SELECT COALESCE(sum(count - 1), 0) FROM `+s.prefix+`forwarded),
	  (SELECT count(*) FROM `+s.prefix+`forwarded WHERE count > 1),
	  (SELECT count(*) FROM `+s.prefix+`forwarded WHERE count > 1 AND first_node <> $1),
	  (SELECT COALESCE(sum(count - 1), 0) FROM `+s.prefix+`handled),
	  (SELECT count(*) FROM `+s.prefix+`handled WHERE count > 1),
	  (SELECT COALESCE(sum(count - 1), 0) FROM `+s.prefix+`handled WHERE first_node = $1),
	  (SELECT count(*) FROM `+s.prefix+`handled h JOIN `+s.prefix+`forwarded f USING (uuid)
	     WHERE h.count > f.count + CASE WHEN h.first_node = $1 THEN 1 ELSE 0 END)`, []any{victim},
		&d.forwarded, &d.forwardedMsgs, &foreignRelays, &d.handled, &d.handledMsgs, &d.handledByVictim, &unexplained)
	if err != nil {
		s.t.Fatal(err)
	}
	if foreignRelays != 0 {
		s.t.Errorf("%d messages relayed more than once were first relayed by a node that was not killed", foreignRelays)
	}
	if d.forwarded > maxInFlightOut {
		s.t.Errorf("%d extra relays, more than the %d outgoing envelopes the killed node's forwarder can hold", d.forwarded, maxInFlightOut)
	}
	if unexplained != 0 {
		s.t.Errorf("%d messages were handled more often than relayed without the killed node having handled them first", unexplained)
	}
	if d.handled > handedBackIn+d.forwarded {
		s.t.Errorf("%d extra handlings, more than the %d incoming envelopes the killed node held plus the %d extra relays",
			d.handled, handedBackIn, d.forwarded)
	}
	return d
}

// awaitReassigned waits until the agent of one of procs hands back the envelopes of victim,
// and returns the event and when it was read.
func awaitReassigned(t *testing.T, victim int32, procs []*testproc.Proc, timeout time.Duration) (testproc.Event, time.Time, bool) {
	t.Helper()
	type found struct {
		e  testproc.Event
		at time.Time
	}
	reassigned := make(chan found, len(procs))
	var watchers sync.WaitGroup
	stopWatch := make(chan struct{})
	for _, p := range procs {
		watchers.Go(func() {
			for {
				select {
				case e, ok := <-p.Events():
					if !ok {
						return
					}
					if e.Str("event") == "log" && e.Str("level") == "error" {
						continue // logged by the reader
					}
					if e.Str("msg") == "Envelopes of a dormant node handed back" && int32(e.Field("owner_id")) == victim {
						reassigned <- found{e, time.Now()}
						return
					}
				case <-stopWatch:
					return
				}
			}
		})
	}
	defer func() {
		close(stopWatch)
		watchers.Wait()
	}()
	select {
	case f := <-reassigned:
		return f.e, f.at, true
	case <-time.After(timeout):
		return nil, time.Time{}, false
	}
}

// Three OS processes, each running the outbox publisher, a forwarder, a subscriber and a
// durability agent on one database, publish 30,000 messages through the outbox; the forwarders
// relay them into a durable local queue (the incoming table) and the subscribers handle them.
// One process is killed with SIGKILL mid-run, while it holds claimed outgoing and incoming
// envelopes. Every message is relayed and handled at least once, duplicates come only from
// the killed node's in-flight envelopes (counted and reported), and a living node's agent
// hands the killed node's envelopes back within one reassignment period.
func TestCrashThreeProcessesSIGKILL(t *testing.T) {
	t.Parallel()
	const (
		perNode    = 10000
		reassign   = 2 * time.Second
		fwdBatch   = 100 // forwarder BatchSize
		fwdWorkers = 2   // forwarder Workers
		subBatch   = 50  // subscriber BatchSize
	)
	s := newCrashSchema(t)
	args := func(prefix string) []string {
		return []string{"-dsn", testdb.PostgresDSN(), "-schema", s.cfg.Schema, "-prefix", prefix,
			"-messages", fmt.Sprint(perNode), "-batch", "100", "-forwarder-batch", fmt.Sprint(fwdBatch), "-forwarder-workers", fmt.Sprint(fwdWorkers),
			"-forwarder-concurrency", "8", "-subscriber-batch", fmt.Sprint(subBatch), "-subscriber-inflight", "4",
			"-reassign", reassign.String()}
	}
	start := time.Now()
	// The victim is a slow node: each relay takes 20ms (a slow broker) and each handling
	// 20ms, so that what it claims stays claimed long after the poll below saw it (50
	// outgoing envelopes take its 8 relaying goroutines at least 140ms, 10 incoming ones its 4
	// handlers at least 60ms) and the kill finds them still claimed.
	var procs [3]*testproc.Proc
	var ids [3]int32
	for i := range procs {
		a := args(fmt.Sprintf("n%d", i))
		if i == 0 {
			a = append(a, "-sink-latency", "20ms", "-handler-latency", "20ms")
		}
		procs[i], ids[i] = startNode(t, fmt.Sprintf("node%d", i), a...)
	}
	victim, victimID, survivors := procs[0], ids[0], procs[1:]
	t.Logf("nodes %d (victim), %d, %d started in %s", victimID, ids[1], ids[2], time.Since(start))

	// Kill the victim once it has committed all its messages and, while the others are still
	// being relayed and handled, its subscriber holds claimed envelopes and relays' batches
	// hold locked ones (the slow victim's, mostly).
	victim.Await(crashTimeout, func(e testproc.Event) bool { return e.Str("event") == "published" && e.Num("count") == perNode })
	heldIn, heldOut := s.awaitHolding(victimID, 10, 50)
	victim.Kill()
	killedAt := time.Now()
	var relayed, handled int64
	_ = database.QueryRow(context.Background(), s.db, `SELECT (SELECT count(*) FROM `+s.prefix+`forwarded), (SELECT count(*) FROM `+s.prefix+`handled)`, nil, &relayed, &handled)
	t.Logf("node %d killed with SIGKILL %s after start, holding about %d incoming envelopes, %d outgoing ones locked by relays; of %d messages, %d relayed and %d handled by then",
		victimID, killedAt.Sub(start).Round(time.Millisecond), heldIn, heldOut, 3*perNode, relayed, handled)

	// A living node's agent hands the victim's envelopes back within one reassignment period.
	e, at, ok := awaitReassigned(t, victimID, survivors, reassign+5*time.Second)
	if !ok {
		in, out := s.owned(victimID)
		t.Fatalf("the killed node's envelopes (%d incoming, %d outgoing) not handed back %s after the kill", in, out, time.Since(killedAt))
	}
	elapsed := at.Sub(killedAt)
	handedBackIn, handedBackOut := e.Field("incoming"), e.Field("outgoing")
	t.Logf("its %d incoming and %d outgoing envelopes were handed back %s after the kill (reassignment period %s)",
		handedBackIn, handedBackOut, elapsed.Round(time.Millisecond), reassign)
	// The pass starts within one period of the kill; the margin is for the pass itself on a
	// loaded machine.
	if elapsed > reassign+time.Second {
		t.Errorf("reassigned %s after the kill, more than one reassignment period (%s)", elapsed, reassign)
	}
	if handedBackIn == 0 {
		t.Errorf("the killed node held %d incoming envelopes: the test wanted some", handedBackIn)
	}
	if handedBackOut != 0 {
		t.Errorf("%d outgoing envelopes of the killed node handed back: its forwarder marks none", handedBackOut)
	}
	if in, out := s.owned(victimID); in+out != 0 {
		t.Errorf("%d incoming and %d outgoing envelopes still owned by the killed node after the hand-back", in, out)
	}

	sent, handled := s.awaitHandled()
	t.Logf("%d committed messages relayed and handled %s after start", handled, time.Since(start).Round(time.Millisecond))
	if sent != 3*perNode {
		t.Errorf("%d messages committed, want %d", sent, 3*perNode)
	}
	d := s.checkDelivery(victimID, handedBackIn, fwdWorkers*fwdBatch)
	t.Logf("duplicates, all from the killed node's in-flight envelopes: %d messages relayed twice (%d extra relays; %d outgoing were locked at the kill), "+
		"%d messages handled more than once (%d extra handlings: %d of messages it had handled before dying, of the %d incoming it held; %d after a second relay)",
		d.forwardedMsgs, d.forwarded, heldOut, d.handledMsgs, d.handled, d.handledByVictim, handedBackIn, d.handled-d.handledByVictim)

	for _, p := range survivors {
		p.Stop(crashTimeout)
	}
	if n := s.count(`SELECT (SELECT count(*) FROM ` + s.cfg.Qualified(schema.OutgoingTable) + `) + (SELECT count(*) FROM ` +
		s.cfg.Qualified(schema.IncomingTable) + `)`); n != 0 {
		t.Errorf("%d envelopes left after the graceful stops", n)
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// A node started on a database left behind by a killed node (nothing else running) hands
// the dead node's envelopes back at once and relays and handles everything.
func TestRestartAfterSIGKILL(t *testing.T) {
	t.Parallel()
	s := newCrashSchema(t)
	start := time.Now()
	first, firstID := startNode(t, "first", "-dsn", testdb.PostgresDSN(), "-schema", s.cfg.Schema, "-prefix", "a",
		"-messages", "3000", "-batch", "100", "-sink-latency", "10ms", "-forwarder-concurrency", "4", "-handler-latency", "1ms")
	first.Await(crashTimeout, func(e testproc.Event) bool { return e.Str("event") == "published" && e.Num("count") == 3000 })
	first.Kill()
	left := s.count(`SELECT count(*) FROM ` + s.cfg.Qualified(schema.OutgoingTable))
	in, out := s.owned(firstID)
	t.Logf("node %d killed: %d envelopes left in the outbox, %d of them owned by it; %d incoming envelopes owned by it", firstID, left, out, in)
	if left == 0 {
		t.Fatal("the killed node had relayed everything: the test proves nothing")
	}

	// A long reassignment period: only the pass at start can hand the envelopes back.
	restarted, _ := startNode(t, "restarted", "-dsn", testdb.PostgresDSN(), "-schema", s.cfg.Schema, "-prefix", "b",
		"-messages", "0", "-reassign", "1h")
	var handedBackIn, handedBackOut int64
	if in+out > 0 {
		e := restarted.Await(crashTimeout, func(e testproc.Event) bool {
			return e.Str("msg") == "Envelopes of a dormant node handed back" && int32(e.Field("owner_id")) == firstID
		})
		handedBackIn, handedBackOut = e.Field("incoming"), e.Field("outgoing")
		t.Logf("the restarted node handed back %d incoming and %d outgoing envelopes of the killed one", handedBackIn, handedBackOut)
	}
	sent, handled := s.awaitHandled()
	if sent != 3000 || handled != 3000 {
		t.Errorf("%d sent, %d handled, want 3000", sent, handled)
	}
	d := s.checkDelivery(firstID, handedBackIn, forwarder.DefaultWorkers*forwarder.DefaultBatchSize)
	t.Logf("relayed and handled everything %s after start; %d extra relays, %d extra handlings", time.Since(start), d.forwarded, d.handled)
	restarted.Stop(crashTimeout)
}
