package durability

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// listenSessions counts the sessions whose last statement LISTENed on a channel of the
// env's schema (the agent LISTENs on the outgoing, then the incoming channel; the channel
// names hold the schema's random name, so only this test's agents match).
func (e *agentEnv) listenSessions() int64 {
	e.t.Helper()
	ch := e.st.Channels()
	var n int64
	err := database.QueryRow(context.Background(), e.db, `SELECT count(*) FROM pg_stat_activity
  WHERE datname = current_database() AND pid <> pg_backend_pid() AND query IN ($1, $2)`,
		[]any{`LISTEN "` + ch.Outgoing + `"`, `LISTEN "` + ch.Incoming + `"`}, &n)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// untilListenSessions waits until listenSessions is want: a closed connection's backend
// leaves pg_stat_activity shortly after the client closed it, with no event to wait for.
func (e *agentEnv) untilListenSessions(want int64) {
	e.t.Helper()
	deadline := time.Now().Add(agentTimeout)
	for e.listenSessions() != want {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d LISTEN sessions of schema %s, want %d", e.listenSessions(), e.schema.Schema, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// notifyOutgoing commits an outgoing envelope with a notification.
func (e *agentEnv) notifyOutgoing() {
	e.t.Helper()
	e.insert(store.InsertParams{Outgoing: envelopes(e.t, 1, "orders", func(*row.Envelope) {}), NotifyOutgoing: true})
}

// notifyIncoming commits an Incoming envelope of topic with a notification of its topic.
func (e *agentEnv) notifyIncoming(topic string) {
	e.t.Helper()
	e.insert(store.InsertParams{
		Incoming:     envelopes(e.t, 1, topic, func(r *row.Envelope) { r.Status = schema.StatusIncoming }),
		NotifyTopics: []string{topic},
	})
}

// The agent's one LISTEN connection wakes the OnOutgoing registrations on a notification of
// committed outgoing envelopes, and the OnIncoming registrations of the notified topic only.
// No job runs, so every wake-up comes from a notification. Notifications reach the one
// connection in commit order and are handled in turn, so once the wake-up of a later
// notification was seen, an earlier one has been handled: that is the barrier for the
// "not woken" assertions.
func TestAgentListenWakesRegistrations(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	a := e.agent(quietConfig())
	e.start(a)
	if n := e.listenSessions(); n != 1 {
		t.Fatalf("%d LISTEN sessions of the schema after Start, want the agent's one", n)
	}
	// Registered after Start: the wake-up of everyone when LISTEN starts is over.
	out, topicA, topicB := newWakeCount(), newWakeCount(), newWakeCount()
	a.OnOutgoing(out.wake)
	a.OnIncoming("a", topicA.wake)
	a.OnIncoming("b", topicB.wake)

	e.notifyOutgoing()
	out.wait(t, "OnOutgoing, by the notification of an outgoing envelope,")
	if topicA.n.Load()+topicB.n.Load() != 0 {
		t.Errorf("an outgoing notification woke incoming registrations: a %d, b %d", topicA.n.Load(), topicB.n.Load())
	}

	e.notifyIncoming("a")
	topicA.wait(t, `OnIncoming("a"), by the notification of topic a,`)
	e.notifyOutgoing() // barrier: handled after the notification of a
	out.wait(t, "OnOutgoing, by the second outgoing notification,")
	if got := out.n.Load(); got != 2 {
		t.Errorf("OnOutgoing woken %d times, want 2 (once per outgoing notification)", got)
	}
	if got := topicB.n.Load(); got != 0 {
		t.Errorf(`OnIncoming("b") woken %d times by a notification of topic a`, got)
	}
	if got := topicA.n.Load(); got != 1 {
		t.Errorf(`OnIncoming("a") woken %d times, want 1`, got)
	}
}

// A registration with NotifiedWhile is woken by the notifications of outgoing envelopes only
// while its condition holds; the agent's own wake-ups (WakeOutgoing: hand-backs, recovery,
// scheduled releases) always wake it. A plain registration beside it is woken by every
// notification, and is the barrier for the "not woken" assertion: notifications are handled
// in turn, and the registrations a notification wakes are chosen before any is called, so
// once the plain one saw the second notification, the first one is handled and the
// condition was read for the second.
func TestAgentNotifiedWhileGatesNotificationsOnly(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	a := e.agent(quietConfig())
	e.start(a)
	var notified atomic.Bool // false: notifications do not wake gated
	gated, plain := newWakeCount(), newWakeCount()
	a.OnOutgoing(gated.wake, NotifiedWhile(notified.Load))
	a.OnOutgoing(plain.wake)

	e.notifyOutgoing()
	e.notifyOutgoing()
	for plain.n.Load() < 2 {
		plain.wait(t, "the plain registration, by two notifications,")
	}
	if got := gated.n.Load(); got != 0 {
		t.Errorf("a notification woke the gated registration %d times while its condition was false", got)
	}
	a.WakeOutgoing()
	gated.wait(t, "the gated registration, by the agent's own wake-up,")

	notified.Store(true)
	e.notifyOutgoing()
	gated.wait(t, "the gated registration, by a notification once its condition holds,")
	if got := gated.n.Load(); got != 2 {
		t.Errorf("gated registration woken %d times, want 2 (the agent's wake-up and the second notification)", got)
	}
}

// With DisableNotify the agent holds no LISTEN connection (PgBouncer in transaction mode);
// without it, exactly one, closed by Stop.
func TestAgentDisableNotifyHoldsNoListenConnection(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	c := quietConfig()
	c.DisableNotify = true
	off := e.agent(c)
	if err := off.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.listenSessions(); n != 0 {
		t.Errorf("%d LISTEN sessions of the schema with DisableNotify, want 0", n)
	}
	if err := off.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	on := e.agent(quietConfig())
	if err := on.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := e.listenSessions(); n != 1 {
		t.Errorf("%d LISTEN sessions of the schema with notifications, want 1", n)
	}
	if err := on.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.untilListenSessions(0)
}

// A component asks for a scheduled-jobs pass at the due time of an envelope (ScheduleAt):
// with the timer an hour away, the envelope is released then, and the subscribers of its
// topic are woken. It is never released before its execution_time (database clock).
func TestAgentScheduleAtReleasesWhenDue(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	c := quietConfig()
	c.ScheduledJobFirstExecution, c.ScheduledJobPollingTime = time.Hour, time.Hour
	a := e.agent(c)
	passes := jobs(t, a, JobScheduled)
	e.start(a)
	woken := newWakeCount()
	a.OnIncoming("reminders", woken.wake)

	due := time.Now().Add(300 * time.Millisecond)
	id := e.incoming(1, "reminders", schema.StatusScheduled, 0, &due)[0]
	a.ScheduleAt(due)
	a.ScheduleAt(due.Add(time.Hour)) // a later request does not delay the earlier one

	// released: the row is Incoming; due: the database clock has reached its execution_time.
	state := func() (released, due bool) {
		t.Helper()
		var status string
		err := database.QueryRow(context.Background(), e.db, `SELECT status, execution_time <= now() FROM `+e.table(schema.IncomingTable)+` WHERE id = $1`,
			[]any{id}, &status, &due)
		if err != nil {
			t.Fatal(err)
		}
		return status == schema.StatusIncoming, due
	}
	if released, due := state(); released && !due {
		t.Fatal("released before its execution_time")
	}
	timeout := time.After(agentTimeout)
	for {
		select {
		case <-woken.c:
		case <-timeout:
			t.Fatalf("not released (stats %+v)", a.Stats())
		}
		released, due := state()
		if released {
			if !due {
				t.Fatal("released before its execution_time")
			}
			break
		}
	}
	// The notification may wake the subscribers before the pass has counted what it did.
	waitFor(t, passes, "the release was not counted", func() bool { return a.Stats().ScheduledReleased == 1 })
}

// An unregistered wake function is not called any more, by notifications or by the agent's
// own wake-ups; other registrations of the same topic still are.
func TestAgentUnregisterStopsWakeups(t *testing.T) {
	t.Parallel()
	e := newAgentEnv(t)
	a := e.agent(quietConfig())
	e.start(a)
	out, gone, goneOut, stays := newWakeCount(), newWakeCount(), newWakeCount(), newWakeCount()
	a.OnOutgoing(out.wake)
	unregisterOut := a.OnOutgoing(goneOut.wake)
	unregister := a.OnIncoming("a", gone.wake)
	a.OnIncoming("a", stays.wake)

	e.notifyIncoming("a")
	gone.wait(t, `OnIncoming("a")`)
	stays.wait(t, `the second OnIncoming("a")`)
	unregister()
	unregister() // idempotent
	unregisterOut()

	e.notifyIncoming("a")
	stays.wait(t, `the remaining OnIncoming("a")`)
	e.notifyOutgoing() // barrier: handled after the notification of a
	out.wait(t, "OnOutgoing")
	a.WakeIncoming("a")
	a.WakeOutgoing()
	if got := gone.n.Load(); got != 1 {
		t.Errorf("unregistered OnIncoming woken %d times, want 1 (before it was unregistered)", got)
	}
	if got := goneOut.n.Load(); got != 0 {
		t.Errorf("unregistered OnOutgoing woken %d times", got)
	}
	if got := stays.n.Load(); got != 3 {
		t.Errorf("registered OnIncoming woken %d times, want 3", got)
	}
	if got := out.n.Load(); got != 2 {
		t.Errorf("registered OnOutgoing woken %d times, want 2", got)
	}
}
