package durability

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// A request for a later pass is kept while an earlier one is pending, and served at its
// time: here the row it is for is committed only after the earlier pass ran, so the pass
// planned from the table (NextDue) cannot know of it — as for a delayed message published in
// a transaction that commits late. It is not released before its execution_time.
func TestAgentKeepsLaterScheduleRequests(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	c := quietConfig()
	c.ScheduledJobFirstExecution, c.ScheduledJobPollingTime = time.Hour, time.Hour
	a := e.agent(c)
	passes := jobs(t, a, JobScheduled)
	e.start(a)
	woken := newWakeCount()
	a.OnIncoming("reminders", woken.wake)

	first := time.Now().Add(50 * time.Millisecond)
	due := time.Now().Add(400 * time.Millisecond)
	a.ScheduleAt(due)
	a.ScheduleAt(first) // an earlier request does not replace the later one
	select {
	case <-passes:
	case <-time.After(agentTimeout):
		t.Fatal("no pass at the first time asked for")
	}
	id := e.incoming(1, "reminders", schema.StatusScheduled, 0, &due)[0]
	for !e.released(id) {
		woken.wait(t, "the topic's subscribers")
	}
	if !e.isDue(id) {
		t.Fatal("released before its execution_time")
	}
}

// ScheduleAt remembers at most maxScheduleRequests distinct times, the earliest ones, in
// order; a pass forgets those it serves.
func TestScheduleAtKeepsTheEarliestRequests(t *testing.T) {
	t.Parallel()
	a := &Agent{kick: make(chan struct{}, 1)}
	base := time.Now().Add(time.Hour)
	for i := maxScheduleRequests; i >= 0; i-- { // one more than kept, latest first
		a.ScheduleAt(base.Add(time.Duration(i) * time.Second))
	}
	a.ScheduleAt(base) // again: kept once
	if len(a.schedAt) != maxScheduleRequests || !slices.IsSortedFunc(a.schedAt, time.Time.Compare) ||
		!a.schedAt[0].Equal(base) || !a.schedAt[len(a.schedAt)-1].Equal(base.Add(time.Duration(maxScheduleRequests-1)*time.Second)) {
		t.Fatalf("%d times kept, from %s to %s", len(a.schedAt), a.schedAt[0], a.schedAt[len(a.schedAt)-1])
	}
	a.ScheduleAt(base.Add(-time.Second)) // earlier than every kept one: the latest is forgotten
	if len(a.schedAt) != maxScheduleRequests || !a.nextScheduleAt().Equal(base.Add(-time.Second)) {
		t.Fatalf("an earlier request: %d kept, next %s", len(a.schedAt), a.nextScheduleAt())
	}
	a.takeScheduleAt(base.Add(10 * time.Second)) // served: base-1s .. base+10s
	if len(a.schedAt) != maxScheduleRequests-12 || !a.nextScheduleAt().Equal(base.Add(11*time.Second)) {
		t.Fatalf("after a pass: %d kept, next %s", len(a.schedAt), a.nextScheduleAt())
	}
	a.takeScheduleAt(base.Add(time.Duration(maxScheduleRequests) * time.Second))
	if !a.nextScheduleAt().IsZero() {
		t.Fatalf("after the last pass: next %s", a.nextScheduleAt())
	}
}

// A scheduled send (the outbox's delayed message) counts for NextDue, so the agent plans its
// pass for it even when nobody asked with ScheduleAt, and moves it to the outbox then: not
// before its execution_time.
func TestAgentPlansThePassOfAScheduledSend(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	due := time.Now().Add(300 * time.Millisecond)
	send, err := row.WrapScheduled("orders", message.NewMessage(watermill.NewUUID(), []byte(`{}`)), row.Defaults{}, due, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e.insert(store.InsertParams{Incoming: []row.Envelope{send}})

	res := runScheduled(t, e.agent(quietConfig()))
	if res.Sent != 0 || res.NextDue <= 0 || res.NextDue > 300*time.Millisecond {
		t.Fatalf("before it is due: %+v, want nothing sent and NextDue within 300ms", res)
	}

	c := quietConfig()
	c.ScheduledJobPollingTime = time.Hour // the pass at start plans the next one
	a := e.agent(c)
	passes := jobs(t, a, JobScheduled)
	forwarders := newWakeCount()
	a.OnOutgoing(forwarders.wake)
	e.start(a)
	waitFor(t, passes, "the scheduled send was not moved to the outbox", func() bool { return a.Stats().ScheduledSent == 1 })
	if time.Now().Before(due) {
		t.Fatal("moved to the outbox before its execution_time")
	}
	forwarders.wait(t, "the forwarders")
}

// released reports whether the incoming envelope id is Incoming.
func (e *agentEnv) released(id uuid.UUID) bool {
	e.t.Helper()
	var status string
	if err := database.QueryRow(context.Background(), e.db, `SELECT status FROM `+e.table(schema.IncomingTable)+` WHERE id = $1`,
		[]any{id}, &status); err != nil {
		e.t.Fatal(err)
	}
	return status == schema.StatusIncoming
}

// isDue reports whether the database clock has reached the execution_time of the incoming
// envelope id.
func (e *agentEnv) isDue(id uuid.UUID) bool {
	e.t.Helper()
	var due bool
	if err := database.QueryRow(context.Background(), e.db, `SELECT execution_time <= now() FROM `+e.table(schema.IncomingTable)+` WHERE id = $1`,
		[]any{id}, &due); err != nil {
		e.t.Fatal(err)
	}
	return due
}
