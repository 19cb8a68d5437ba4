package durability

import (
	"context"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// The node and every job of the agent on each database testdb.Targets returns (PostgreSQL
// always; SQL Server when WATERMILL_JASPER_TEST_MSSQL holds a DSN). Rows are written and
// counted through the store, so the test holds no SQL of its own.
func TestNodeAndAgentOnEveryDatabase(t *testing.T) {
	t.Parallel()
	for _, tg := range testdb.Targets(t) {
		t.Run(tg.Name, func(t *testing.T) {
			ctx := context.Background()
			e := envOn(t, tg.DB, tg.Schema)
			node := e.node
			if err := node.Check(ctx); err != nil {
				t.Fatalf("check: %v", err)
			}
			// Another node with the same id is refused while the lock is held.
			if _, err := NewNode(ctx, tg.DB, NodeConfig{ID: node.ID()}, nil); err == nil {
				t.Fatal("a second node took a held id")
			}
			a := e.agent(Config{})

			dead := deadNodeID()
			e.outgoing(3, "rabbitmq://queue/a", dead, nil)
			e.incoming(2, "topic-a", schema.StatusIncoming, dead, nil)
			past, future := time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
			e.incoming(2, "topic-b", schema.StatusScheduled, 0, &past)
			e.incoming(1, "topic-b", schema.StatusScheduled, 0, &future)
			e.outgoing(1, "rabbitmq://queue/a", 0, &past)

			g, err := a.SampleGauges(ctx)
			if err != nil || g.Outgoing != 4 || g.Incoming != 2 || g.Scheduled != 3 || g.DormantOwned < 5 {
				t.Fatalf("gauges %+v, %v", g, err)
			}
			res := reassign(t, a)
			handed := int64(0)
			for _, r := range res.Dormant {
				if r.Owner == dead {
					handed = r.Incoming + r.Outgoing
				}
			}
			if handed != 5 {
				t.Fatalf("reassignment %+v: handed back %d of the dead node's 5 envelopes", res, handed)
			}
			if in, out := e.owned(0); in != 5 || out != 4 { // incoming: 2 handed back, 3 Scheduled
				t.Fatalf("unowned after the reassignment: %d/%d, want 5/4", in, out)
			}
			b := newWakeCount()
			unregister := a.OnIncoming("topic-b", b.wake)
			sched := runScheduled(t, a)
			if sched.Released != 2 || sched.NextDue <= 0 || sched.NextDue > time.Hour {
				t.Fatalf("scheduled jobs %+v", sched)
			}
			if b.n.Load() == 0 {
				t.Error("the subscribers of the released topic were not woken")
			}
			unregister()
			u, err := a.RecoverUnowned(ctx)
			if err != nil || !u.Outgoing || len(u.Topics) != 2 {
				t.Fatalf("unowned %+v, %v", u, err)
			}
			n, err := a.DeleteExpiredEnvelopes(ctx)
			if err != nil || n != 1 {
				t.Fatalf("expired: %d, %v", n, err)
			}
			if _, err := a.DeleteExpiredHandled(ctx); err != nil {
				t.Fatal(err)
			}

			// Started (with a LISTEN connection where the database has notifications) and
			// stopped: the node's envelopes are handed back.
			e.startStopHandsBack(a)

			if err := node.Close(); err != nil {
				t.Fatal(err)
			}
			// The id is free again once the node closed.
			again, err := NewNode(ctx, tg.DB, NodeConfig{ID: node.ID()}, nil)
			if err != nil {
				t.Fatalf("id not free after Close: %v", err)
			}
			_ = again.Close()
		})
	}
}
