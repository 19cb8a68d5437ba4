package durability

import (
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// The database restarts (crash, then start) under two live nodes, each with an agent that
// checks its own lock every 3 s; A also judges dormant nodes every 50 ms (checking its own lock
// first), so A takes its lock again at once and B up to 3 s after the restart. Every session dies
// with the server, so for a moment no node lock is held. Each node takes its lock again, and
// hands back its own envelopes (checkNode); neither takes the other for dead in between: a
// node that had to take its lock again judges nobody for three node-check intervals.
func TestDatabaseRestartReleasesNoLiveNodesEnvelopes(t *testing.T) {
	t.Parallel()
	cluster := testdb.StartCluster(t)
	db, st := cluster.Migrated(t)
	envA, envB := envOn(t, db, st.Schema()), envOn(t, db, st.Schema())
	c := quietConfig()
	c.NodeReassignmentPollingTime, c.FirstNodeReassignmentExecution = 50*time.Millisecond, 50*time.Millisecond
	c.NodeCheckInterval = 3 * time.Second
	c.DisableNotify = true // the pool has four connections: two hold the node locks
	// While the server is down or starting, jobs fail; a check may also find its old backend
	// still exiting with the lock (ErrNodeIDInUse).
	down := func(err error) bool { return err != nil }
	cb := c
	cb.NodeReassignmentPollingTime = -1 // B takes its lock again at its node check only
	a, b := envA.agent(c), envB.agent(cb)
	// A's reassignment passes and B's node checks, as the ticks of the waits below.
	passesA, checksB := jobsTolerating(t, a, JobReassignment, down), jobsTolerating(t, b, JobNodeCheck, down)
	envA.start(a)
	envB.start(b)
	envA.incoming(3, "invoices", schema.StatusIncoming, envA.node.ID(), nil)
	envB.incoming(5, "invoices", schema.StatusIncoming, envB.node.ID(), nil)
	envB.outgoing(2, "orders", envB.node.ID(), nil)
	n := 0
	waitFor(t, passesA, "A's reassignment does not run", func() bool { n++; return n > 3 })

	cluster.Crash()
	cluster.Start()
	waitFor(t, passesA, "node A did not take its lock again", func() bool { return envA.node.Relocks() > 0 })
	waitFor(t, checksB, "node B did not take its lock again", func() bool { return envB.node.Relocks() > 0 })
	if s := a.Stats(); s.DormantNodes != 0 {
		t.Fatalf("node A took live node B for dead after the restart (B took its lock again %s after A): %d envelopes handed back",
			envB.node.lastRelock().Sub(envA.node.lastRelock()).Round(time.Millisecond), s.Recovered)
	}
	waitFor(t, checksB, "B did not hand back its own envelopes", func() bool { return b.Stats().HandedBack == 7 })
	waitFor(t, passesA, "A did not hand back its own envelopes", func() bool { return a.Stats().HandedBack == 3 })
	// Passes of A's reassignment once its grace is over, judging nobody dormant either.
	grace := relockGraceChecks * c.NodeCheckInterval
	n = 0
	waitFor(t, passesA, "A's reassignment did not run after its grace", func() bool {
		if time.Since(envA.node.lastRelock()) > grace {
			n++
		}
		return n > 5
	})
	t.Logf("B took its lock again %s after A", envB.node.lastRelock().Sub(envA.node.lastRelock()).Round(time.Millisecond))
	for name, ag := range map[string]*Agent{"A": a, "B": b} {
		if s := ag.Stats(); s.DormantNodes != 0 || s.Recovered != 0 {
			t.Errorf("node %s took a live node for dead after the restart: %d dormant nodes, %d envelopes handed back", name, s.DormantNodes, s.Recovered)
		}
	}
	if in, out := envB.owned(envB.node.ID()); in+out != 0 {
		t.Errorf("node B still owns %d incoming and %d outgoing envelopes", in, out)
	}
}
