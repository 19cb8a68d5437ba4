package durability_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// crashTimeout bounds every wait of the crash tests.
const crashTimeout = 60 * time.Second

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
	buildOut  []byte
	buildDir  string
)

// TestMain removes the crash test program built by crashNodeBinary.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func makeTempDir() (string, error) { return os.MkdirTemp("", "watermill-jasper-crashnode-") }

// crashNodeBinary builds ./internal/crashnode once per test binary.
func crashNodeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("the go command is needed to build the crash test program: %w", err)
			return
		}
		buildDir, buildErr = makeTempDir()
		if buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "crashnode")
		cmd := exec.Command(goBin, "build", "-o", buildBin, "./internal/crashnode")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build ./internal/crashnode: %v\n%s", buildErr, buildOut)
	}
	return buildBin
}

// event is one line a crashnode process wrote.
type event map[string]any

func (e event) str(k string) string { s, _ := e[k].(string); return s }

func (e event) num(k string) int64 {
	f, _ := e[k].(float64)
	return int64(f)
}

func (e event) field(k string) int64 {
	m, _ := e["fields"].(map[string]any)
	f, _ := m[k].(float64)
	return int64(f)
}

// proc is one running crashnode process.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	events chan event
	stderr bytes.Buffer
	exited chan struct{}
	err    error // of Wait, once exited is closed
	nodeID int32
}

func startNode(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, events: make(chan event, 100000), exited: make(chan struct{})}
	p.cmd = exec.Command(crashNodeBinary(t), args...)
	p.cmd.Stderr = &p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			if e.str("event") == "log" && e.str("level") == "error" {
				t.Logf("%s: %s", name, sc.Text())
			}
			p.events <- e
		}
		p.err = p.cmd.Wait()
		close(p.events)
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	ready := p.await(func(e event) bool { return e.str("event") == "ready" })
	p.nodeID = int32(ready.num("node_id"))
	return p
}

// await reads the process's events until match accepts one, and returns it.
func (p *proc) await(match func(event) bool) event {
	p.t.Helper()
	timeout := time.After(crashTimeout)
	for {
		select {
		case e, ok := <-p.events:
			if !ok {
				p.t.Fatalf("%s exited (%v) before the awaited event; stderr:\n%s", p.name, p.err, p.stderr.String())
			}
			if e.str("event") == "error" {
				p.t.Fatalf("%s: %s", p.name, e.str("error"))
			}
			if match(e) {
				return e
			}
		case <-timeout:
			p.t.Fatalf("%s: timed out waiting for an event", p.name)
		}
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	p.await(func(e event) bool { return e.str("event") == "stopped" })
	select {
	case <-p.exited:
	case <-time.After(crashTimeout):
		p.t.Fatalf("%s did not exit", p.name)
	}
	if p.err != nil {
		p.t.Fatalf("%s exited with %v; stderr:\n%s", p.name, p.err, p.stderr.String())
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	<-p.exited
}

// crashSchema is a migrated schema with the tables of the crash test program.
type crashSchema struct {
	t      *testing.T
	db     database.DB
	cfg    schema.Config
	prefix string // quoted schema name
}

func newCrashSchema(t *testing.T) *crashSchema {
	db, cfg := testdb.Migrated(t)
	s := &crashSchema{t: t, db: db, cfg: cfg, prefix: cfg.QuoteIdent(cfg.Schema) + "."}
	for _, q := range []string{
		`CREATE TABLE ` + s.prefix + `sent_log (uuid text PRIMARY KEY)`,
		`CREATE TABLE ` + s.prefix + `received (uuid text PRIMARY KEY, node int NOT NULL)`,
		`CREATE TABLE ` + s.prefix + `duplicates (uuid text NOT NULL, node int NOT NULL)`,
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

func (s *crashSchema) owned(owner int32) int64 {
	return s.count(`SELECT (SELECT count(*) FROM `+s.cfg.Qualified(schema.IncomingTable)+` WHERE owner_id = $1)
	  + (SELECT count(*) FROM `+s.cfg.Qualified(schema.OutgoingTable)+` WHERE owner_id = $1)`, owner)
}

// awaitDelivered waits until every message of sent_log was received and the outbox is empty
// (the database offers no event for it: it is polled).
func (s *crashSchema) awaitDelivered() (sent, received int64) {
	s.t.Helper()
	deadline := time.Now().Add(crashTimeout)
	for {
		sent = s.count(`SELECT count(*) FROM ` + s.prefix + `sent_log`)
		received = s.count(`SELECT count(*) FROM ` + s.prefix + `received`)
		left := s.count(`SELECT count(*) FROM ` + s.cfg.Qualified(schema.OutgoingTable))
		if sent == received && left == 0 {
			return sent, received
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("not delivered: %d sent, %d received, %d left in the outbox", sent, received, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkDelivery asserts that every message of sent_log was received, that nothing else was,
// and that every duplicate was first received from victim; it returns the duplicates.
func (s *crashSchema) checkDelivery(victim int32, maxDuplicates int64) int64 {
	s.t.Helper()
	if n := s.count(`SELECT count(*) FROM ` + s.prefix + `sent_log l WHERE NOT EXISTS (SELECT 1 FROM ` + s.prefix + `received r WHERE r.uuid = l.uuid)`); n != 0 {
		s.t.Errorf("%d committed messages were never delivered", n)
	}
	if n := s.count(`SELECT count(*) FROM ` + s.prefix + `received r WHERE NOT EXISTS (SELECT 1 FROM ` + s.prefix + `sent_log l WHERE l.uuid = r.uuid)`); n != 0 {
		s.t.Errorf("%d messages delivered that were never committed", n)
	}
	dups := s.count(`SELECT count(*) FROM ` + s.prefix + `duplicates`)
	foreign := s.count(`SELECT count(*) FROM `+s.prefix+`duplicates d JOIN `+s.prefix+`received r USING (uuid) WHERE r.node <> $1`, victim)
	if foreign != 0 {
		s.t.Errorf("%d of %d duplicates were first sent by a node that was not killed", foreign, dups)
	}
	if dups > maxDuplicates {
		s.t.Errorf("%d duplicates, more than the killed node's in-flight capacity %d", dups, maxDuplicates)
	}
	return dups
}

// Three OS processes publish 30,000 messages through the outbox and relay them; one is
// killed with SIGKILL mid-run. Every committed message is delivered, duplicates come only
// from the killed node's in-flight batches, and its envelopes are handed back by a living
// node's agent within one reassignment period.
func TestCrashThreeProcessesSIGKILL(t *testing.T) {
	t.Parallel()
	const (
		perNode  = 10000
		reassign = 2 * time.Second
		batch    = 100 // forwarder BatchSize
		workers  = 2   // forwarder Workers
	)
	s := newCrashSchema(t)
	args := func(prefix string) []string {
		return []string{"-dsn", testdb.PostgresDSN(), "-schema", s.cfg.Schema, "-prefix", prefix,
			"-messages", fmt.Sprint(perNode), "-batch", "100", "-publish-pause", "10ms", "-sink-latency", "1ms",
			"-forwarder-batch", fmt.Sprint(batch), "-forwarder-workers", fmt.Sprint(workers), "-forwarder-concurrency", "8",
			"-reassign", reassign.String()}
	}
	crashNodeBinary(t) // built before the clock starts
	start := time.Now()
	var procs [3]*proc
	for i := range procs {
		procs[i] = startNode(t, fmt.Sprintf("node%d", i), args(fmt.Sprintf("n%d", i))...)
	}
	victim, survivors := procs[0], procs[1:]
	t.Logf("nodes %d (victim), %d, %d started in %s", victim.nodeID, survivors[0].nodeID, survivors[1].nodeID, time.Since(start))

	// Kill the victim once it has committed 4,000 messages: its forwarder is busy then.
	victim.await(func(e event) bool { return e.str("event") == "published" && e.num("count") >= 4000 })
	victim.kill()
	killedAt := time.Now()
	t.Logf("node %d killed with SIGKILL %s after start; it had committed %d messages", victim.nodeID, killedAt.Sub(start),
		s.count(`SELECT count(*) FROM `+s.prefix+`sent_log WHERE uuid LIKE 'n0-%'`))

	// A living node's agent hands the victim's envelopes back within one reassignment period.
	reassigned := make(chan event, 2)
	var watchers sync.WaitGroup
	stopWatch := make(chan struct{})
	for _, p := range survivors {
		watchers.Go(func() {
			for {
				select {
				case e, ok := <-p.events:
					if !ok {
						return
					}
					if e.str("msg") == "Envelopes of a dormant node handed back" && int32(e.field("owner_id")) == victim.nodeID {
						reassigned <- e
						return
					}
				case <-stopWatch:
					return
				}
			}
		})
	}
	var handedBack int64
	select {
	case e := <-reassigned:
		elapsed := time.Since(killedAt)
		handedBack = e.field("incoming") + e.field("outgoing")
		t.Logf("its %d in-flight envelopes were handed back %s after the kill (reassignment period %s)", handedBack, elapsed, reassign)
		// The pass starts within one period of the kill; the margin is for the pass itself
		// on a loaded machine.
		if elapsed > reassign+time.Second {
			t.Errorf("reassigned %s after the kill, more than one reassignment period (%s)", elapsed, reassign)
		}
	case <-time.After(reassign + 2*time.Second):
		if n := s.owned(victim.nodeID); n != 0 {
			t.Fatalf("%d envelopes of the killed node not handed back after %s", n, time.Since(killedAt))
		}
		t.Logf("the killed node held no envelopes when it died: nothing to hand back")
	}
	close(stopWatch)
	watchers.Wait()

	for _, p := range survivors {
		p.await(func(e event) bool { return e.str("event") == "published" && e.num("count") == perNode })
	}
	sent, received := s.awaitDelivered()
	t.Logf("%d committed messages delivered %s after start", received, time.Since(start))
	if sent < 2*perNode+4000 {
		t.Errorf("only %d messages committed", sent)
	}
	dups := s.checkDelivery(victim.nodeID, workers*batch)
	t.Logf("%d duplicates, all first sent by the killed node (its in-flight batches: at most %d)", dups, workers*batch)
	if dups > handedBack {
		t.Errorf("%d duplicates but only %d envelopes were handed back", dups, handedBack)
	}

	for _, p := range survivors {
		p.stop()
	}
	if n := s.count(`SELECT count(*) FROM ` + s.cfg.Qualified(schema.OutgoingTable) + ` WHERE owner_id <> 0`); n != 0 {
		t.Errorf("%d envelopes still owned after the graceful stops", n)
	}
	t.Logf("total %s", time.Since(start))
}

// A node started on a database left behind by a killed node (nothing else running) hands
// the dead node's envelopes back at once and delivers everything.
func TestRestartAfterSIGKILL(t *testing.T) {
	t.Parallel()
	s := newCrashSchema(t)
	crashNodeBinary(t)
	start := time.Now()
	first := startNode(t, "first", "-dsn", testdb.PostgresDSN(), "-schema", s.cfg.Schema, "-prefix", "a",
		"-messages", "3000", "-batch", "100", "-sink-latency", "5ms", "-forwarder-concurrency", "4")
	first.await(func(e event) bool { return e.str("event") == "published" && e.num("count") == 3000 })
	first.kill()
	left := s.count(`SELECT count(*) FROM ` + s.cfg.Qualified(schema.OutgoingTable))
	owned := s.owned(first.nodeID)
	t.Logf("node %d killed: %d envelopes left in the outbox, %d of them owned by it", first.nodeID, left, owned)
	if left == 0 {
		t.Fatal("the killed node had relayed everything: the test proves nothing")
	}

	// A long reassignment period: only the pass at start can hand the envelopes back.
	restarted := startNode(t, "restarted", "-dsn", testdb.PostgresDSN(), "-schema", s.cfg.Schema, "-prefix", "b",
		"-messages", "0", "-reassign", "1h")
	if owned > 0 {
		e := restarted.await(func(e event) bool {
			return e.str("msg") == "Envelopes of a dormant node handed back" && int32(e.field("owner_id")) == first.nodeID
		})
		t.Logf("the restarted node handed back %d envelopes of the killed one", e.field("incoming")+e.field("outgoing"))
	}
	sent, received := s.awaitDelivered()
	if sent != 3000 || received != 3000 {
		t.Errorf("%d sent, %d received, want 3000", sent, received)
	}
	dups := s.checkDelivery(first.nodeID, 2*100)
	t.Logf("delivered everything %s after start, %d duplicates", time.Since(start), dups)
	restarted.stop()
}
