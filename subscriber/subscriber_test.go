package subscriber_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

func subscribe(t testing.TB, s *subscriber.Subscriber, topic string) <-chan *message.Message {
	t.Helper()
	ch, err := s.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// receiveAndAck receives the next message, checks it is want and acks it.
func receiveAndAck(t testing.TB, ch <-chan *message.Message, want *message.Message) {
	t.Helper()
	m := receive(t, ch, wait)
	if m.UUID != want.UUID {
		t.Fatalf("got %s, want %s", m.UUID, want.UUID)
	}
	m.Ack()
}

func TestAckDeletesEnvelope(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.subscriber(fastConfig())
	sent := e.publish("orders", 3)
	ch := subscribe(t, s, "orders")
	byUUID := map[string]*message.Message{}
	for _, m := range sent {
		byUUID[m.UUID] = m
	}
	for range sent {
		m := receive(t, ch, wait)
		want := byUUID[m.UUID]
		if want == nil {
			t.Fatalf("unexpected message %s", m.UUID)
		}
		delete(byUUID, m.UUID)
		if string(m.Payload) != string(want.Payload) || m.Metadata.Get("i") != want.Metadata.Get("i") {
			t.Errorf("message %s: got payload %q metadata %v, want %q %v", m.UUID, m.Payload, m.Metadata, want.Payload, want.Metadata)
		}
		id := row.EnvelopeID("orders", m.UUID).String()
		if got := m.Metadata.Get(metadata.EnvelopeID); got != id {
			t.Errorf("metadata %s = %q, want %q", metadata.EnvelopeID, got, id)
		}
		if got := m.Metadata.Get(metadata.Attempts); got != "0" {
			t.Errorf("metadata %s = %q, want 0", metadata.Attempts, got)
		}
		// Delivered means claimed and committed: the row is the agent's node's.
		if s.NodeID() != e.agent.NodeID() {
			t.Fatalf("subscriber node %d, agent node %d", s.NodeID(), e.agent.NodeID())
		}
		if n := e.count("id = $1 AND owner_id = $2", id, s.NodeID()); n != 1 {
			t.Errorf("delivered envelope %s is not owned by node %d", id, s.NodeID())
		}
		m.Ack()
	}
	eventually(t, wait, "acked envelopes deleted", func() bool { return e.count("") == 0 })
}

// A nacked message is handed back as a Jasper scheduled retry (status Scheduled,
// execution_time = nack + back-off, attempts + 1); the agent makes it Incoming when due,
// at the time the subscription asked for (ScheduleAt: the agent's periodic pass and the
// subscription's polling are an hour apart here), and it is delivered again, not before its
// execution_time. The back-off doubles up to MaxNackBackoff.
func TestNackRedeliveredWhenDueThroughAgent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, slowAgent)
	c := fastConfig()
	c.NackBackoff = 300 * time.Millisecond
	c.MaxNackBackoff = time.Second
	c.PollInterval = time.Hour
	s := e.subscriber(c)
	sent := e.publish("retry", 1)[0]
	ch := subscribe(t, s, "retry")
	id := row.EnvelopeID("retry", sent.UUID).String()
	table := e.cfg.Qualified(schema.IncomingTable)
	var nackedAfter time.Time // database clock, before the nack
	for attempt, backoff := range []time.Duration{0, 300 * time.Millisecond, 600 * time.Millisecond, time.Second} {
		m := receive(t, ch, wait)
		receivedAt := e.now()
		if m.UUID != sent.UUID || string(m.Payload) != string(sent.Payload) || m.Metadata.Get("i") != sent.Metadata.Get("i") {
			t.Fatalf("redelivered message differs: %s %q %v", m.UUID, m.Payload, m.Metadata)
		}
		if got, want := m.Metadata.Get(metadata.Attempts), []string{"0", "1", "2", "3"}[attempt]; got != want {
			t.Errorf("attempt %d: metadata %s = %q, want %q", attempt, metadata.Attempts, got, want)
		}
		if attempt > 0 {
			var due time.Time
			var attempts int
			if err := database.QueryRow(context.Background(), e.db, "SELECT execution_time, attempts FROM "+table+" WHERE id = $1",
				[]any{id}, &due, &attempts); err != nil {
				t.Fatal(err)
			}
			if attempts != attempt {
				t.Errorf("attempt %d: attempts column %d", attempt, attempts)
			}
			if due.Before(nackedAfter.Add(backoff)) {
				t.Errorf("attempt %d: execution_time %s is less than the back-off %s after the nack (%s)", attempt, due, backoff, nackedAfter)
			}
			if receivedAt.Before(due) {
				t.Errorf("attempt %d: delivered at %s (database clock), before its execution_time %s", attempt, receivedAt, due)
			}
		}
		if attempt == 3 {
			m.Ack()
			break
		}
		nackedAfter = receivedAt
		m.Nack()
	}
	eventually(t, wait, "acked envelope deleted", func() bool { return e.count("") == 0 })
	if st := e.agent.Stats(); st.ScheduledReleased < 3 {
		t.Errorf("the agent released %d scheduled envelopes, want the 3 nacked ones", st.ScheduledReleased)
	}
}

// Without a nack back-off the envelope is Incoming at once and the subscription is woken
// locally: no poll, no scheduled pass.
func TestNackWithoutBackoffRedeliveredAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, slowAgent)
	c := fastConfig()
	c.NackBackoff = -1
	c.PollInterval = time.Hour
	s := e.subscriber(c)
	sent := e.publish("again", 1)[0]
	ch := subscribe(t, s, "again")
	receive(t, ch, wait).Nack()
	m := receive(t, ch, wait)
	if m.UUID != sent.UUID || m.Metadata.Get(metadata.Attempts) != "1" {
		t.Fatalf("got %s with %s %q, want %s with 1", m.UUID, metadata.Attempts, m.Metadata.Get(metadata.Attempts), sent.UUID)
	}
	m.Ack()
	eventually(t, wait, "acked envelope deleted", func() bool { return e.count("") == 0 })
}

// Nothing claimed is lost at Close: publish 10, ack 3, close while the 4th is pending: a new
// subscriber must receive the other 7.
func TestCloseHandsBackWhatWasNotAcked(t *testing.T) {
	t.Parallel()
	for _, inFlight := range []int{1, 4} {
		t.Run(map[int]string{1: "one in flight", 4: "four in flight"}[inFlight], func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			c := fastConfig()
			c.MaxInFlight = inFlight
			sent := e.publish("q", 10)
			s1 := e.subscriber(c)
			ch1 := subscribe(t, s1, "q")
			acked := map[string]bool{}
			for range 3 {
				m := receive(t, ch1, wait)
				acked[m.UUID] = true
				m.Ack()
			}
			pending := receive(t, ch1, wait)
			if err := s1.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-pending.Context().Done():
			default:
				t.Error("the context of a message pending at Close is not cancelled")
			}
			// With several in flight, messages already sent may still be read; the channel
			// must be closed after them.
			for range ch1 {
			}
			if n := e.count(""); n != 7 {
				t.Fatalf("%d envelopes left after acking 3 of 10, want 7", n)
			}
			if n := e.count("owner_id <> 0"); n != 0 {
				t.Fatalf("%d envelopes still owned after Close", n)
			}
			pendingID := row.EnvelopeID("q", pending.UUID).String()
			if n := e.count("id = $1 AND attempts = 1", pendingID); n != 1 {
				t.Error("the envelope delivered but not acked at Close did not count an attempt")
			}

			ch2 := subscribe(t, e.subscriber(c), "q")
			got := map[string]bool{}
			for len(got) < 7 {
				m := receive(t, ch2, wait)
				if acked[m.UUID] {
					t.Fatalf("acked message %s delivered again", m.UUID)
				}
				got[m.UUID] = true
				m.Ack()
			}
			for _, m := range sent {
				if !acked[m.UUID] && !got[m.UUID] {
					t.Errorf("message %s lost", m.UUID)
				}
			}
		})
	}
}

func TestSubscribeContextCancelClosesChannelAndHandsBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.subscriber(fastConfig())
	sent := e.publish("cancel", 5)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := s.Subscribe(ctx, "cancel")
	if err != nil {
		t.Fatal(err)
	}
	m := receive(t, ch, wait)
	cancel()
	select {
	case extra, open := <-ch:
		if open {
			t.Fatalf("message %s delivered after the context was cancelled while the first was unacked", extra.UUID)
		}
	case <-time.After(wait):
		t.Fatal("channel not closed after the Subscribe context was cancelled")
	}
	select {
	case <-m.Context().Done():
	default:
		t.Error("message context not cancelled")
	}
	eventually(t, wait, "claimed envelopes handed back", func() bool { return e.count("owner_id <> 0") == 0 })

	ch = subscribe(t, s, "cancel")
	got := map[string]bool{}
	for len(got) < len(sent) {
		m := receive(t, ch, wait)
		got[m.UUID] = true
		m.Ack()
	}
}

// A delayed message written by a publisher (status Scheduled) is released by the agent's
// scheduled pass when due, and delivered then, never before its execution_time.
func TestScheduledEnvelopeDeliveredWhenDue(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := fastConfig()
	c.PollInterval = time.Minute // only the agent's wake-ups may deliver
	s := e.subscriber(c)

	const in = time.Second
	schedule := func(topic string) (*message.Message, time.Time) {
		t.Helper()
		msg := message.NewMessage(watermill.NewUUID(), []byte("later"))
		env := envelope(t, topic, msg, schema.StatusScheduled)
		due := e.now().Add(in)
		env.ExecutionTime = &due
		e.insert(topic, env)
		return msg, due
	}
	check := func(ch <-chan *message.Message, msg *message.Message, due time.Time) {
		t.Helper()
		m := receive(t, ch, wait)
		if now := e.now(); now.Before(due) {
			t.Errorf("delivered at %s (database clock), before its execution_time %s", now, due)
		}
		if m.UUID != msg.UUID {
			t.Errorf("got %s, want %s", m.UUID, msg.UUID)
		}
		m.Ack()
	}

	// Scheduled before the subscription starts.
	msg, due := schedule("sched-before")
	check(subscribe(t, s, "sched-before"), msg, due)

	// Scheduled while the subscription idles.
	ch := subscribe(t, s, "sched-after")
	msg, due = schedule("sched-after")
	check(ch, msg, due)
	eventually(t, wait, "acked envelopes deleted", func() bool { return e.count("") == 0 })
}

// A subscription never releases scheduled envelopes itself, even when woken: the agent's
// scheduled pass does, and wakes it.
func TestScheduledReleasedByAgentOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, slowAgent, func(c *durability.Config) { c.ScheduledJobFirstExecution = time.Hour })
	c := fastConfig()
	c.PollInterval = time.Hour
	s := e.subscriber(c)
	ch := subscribe(t, s, "agent")
	msg := message.NewMessage(watermill.NewUUID(), []byte("due"))
	env := envelope(t, "agent", msg, schema.StatusScheduled)
	due := e.now().Add(-time.Second)
	env.ExecutionTime = &due
	e.insert("agent", env) // notifies the topic
	s.Wake()
	select {
	case m := <-ch:
		t.Fatalf("scheduled message %s delivered before the agent released it", m.UUID)
	case <-time.After(300 * time.Millisecond):
	}
	// The scheduled-jobs lock is database-wide: agents of other schemas may hold it, also
	// between a pass's two phases (the release of this envelope and the scheduled sends),
	// so a pass that released it may still report Skipped: count the releases over the passes.
	var released int64
	eventually(t, wait, "the agent's scheduled pass releases the envelope", func() bool {
		res, err := e.agent.RunScheduledJobs(context.Background())
		released += res.Released
		if err != nil || released > 1 || !res.Skipped && released != 1 {
			t.Fatalf("RunScheduledJobs: %+v, %v, %d released in all; want 1 released", res, err, released)
		}
		return released == 1
	})
	receiveAndAck(t, ch, msg)
}

func TestUnreadableEnvelopeIsDeadLettered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.subscriber(fastConfig())

	bad := message.NewMessage(watermill.NewUUID(), []byte("bad"))
	env := envelope(t, "dl", bad, schema.StatusIncoming)
	env.Headers = []byte(`{"not": json`)
	e.insert("dl", env)
	good := e.publish("dl", 1)[0]

	receiveAndAck(t, subscribe(t, s, "dl"), good)
	dlq := e.cfg.Qualified(schema.DeadLetterTable)
	eventually(t, wait, "unreadable envelope moved to the dead letters", func() bool {
		return queryInt(t, e.db, "SELECT count(*) FROM "+dlq+" WHERE id = $1", env.ID.String()) == 1
	})
	var explanation, excType, excMessage, excText, source, receivedAt, messageUUID string
	var body []byte
	err := database.QueryRow(context.Background(), e.db,
		"SELECT explanation, exception_type, exception_message, exception_text, source, received_at, message_uuid, body FROM "+dlq+" WHERE id = $1",
		[]any{env.ID.String()}, &explanation, &excType, &excMessage, &excText, &source, &receivedAt, &messageUUID, &body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(explanation, "unreadable") || !strings.Contains(excMessage, "headers") || excType == "" || excText == "" {
		t.Errorf("explanation %q, exception %s %q %q: want an unreadable-headers explanation", explanation, excType, excMessage, excText)
	}
	if source != "watermill-jasper/subscriber" {
		t.Errorf("source %q", source)
	}
	if receivedAt != "dl" || messageUUID != bad.UUID || string(body) != "bad" {
		t.Errorf("dead letter received_at %q message_uuid %q body %q: want the envelope's", receivedAt, messageUUID, body)
	}
	eventually(t, wait, "incoming table empty", func() bool { return e.count("") == 0 })
}

// Two subscribers of one topic on two nodes (two agents) claim disjoint envelopes: no
// envelope is ever delivered by both at once, nacked ones included.
func TestTwoSubscribersNeverDeliverOneEnvelopeConcurrently(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := startAgent(t, e.db, e.cfg)
	c := fastConfig()
	c.MaxInFlight, c.BatchSize = 4, 10
	subs := []*subscriber.Subscriber{e.subscriber(c), newSubscriber(t, other, c)}
	if subs[0].NodeID() == subs[1].NodeID() {
		t.Fatal("the two subscribers share a node id")
	}
	const total = 300
	sent := e.publish("shared", total)

	var mu sync.Mutex
	inFlight := map[string]int{} // UUID -> subscriber delivering it
	acked := map[string]int{}
	deliveries := [2]int{}
	done := make(chan struct{})
	var closeDone sync.Once
	var wg sync.WaitGroup
	for i, s := range subs {
		ch := subscribe(t, s, "shared")
		for range 4 {
			wg.Go(func() {
				for {
					var m *message.Message
					select {
					case m = <-ch:
					case <-done:
						return
					}
					mu.Lock()
					if other, ok := inFlight[m.UUID]; ok {
						t.Errorf("message %s delivered by subscriber %d while subscriber %d holds it", m.UUID, i, other)
					}
					inFlight[m.UUID] = i
					deliveries[i]++
					mu.Unlock()
					first := m.Metadata.Get(metadata.Attempts) == "0"
					time.Sleep(time.Millisecond) // the handler's work, while the other subscriber claims
					mu.Lock()
					delete(inFlight, m.UUID)
					if !first {
						acked[m.UUID]++
					}
					n := len(acked)
					mu.Unlock()
					if first {
						m.Nack() // every message goes round twice
					} else {
						m.Ack()
					}
					if n == total {
						closeDone.Do(func() { close(done) })
					}
				}
			})
		}
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		closeDone.Do(func() { close(done) })
		t.Errorf("timed out")
	}
	wg.Wait()
	for _, m := range sent {
		if acked[m.UUID] != 1 {
			t.Errorf("message %s acked %d times, want 1", m.UUID, acked[m.UUID])
		}
	}
	t.Logf("deliveries per subscriber: %v", deliveries)
	eventually(t, wait, "acked envelopes deleted", func() bool { return e.count("") == 0 })
}

func TestMaxInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := fastConfig()
	c.MaxInFlight = 3
	s := e.subscriber(c)
	e.publish("inflight", 5)
	ch := subscribe(t, s, "inflight")
	held := []*message.Message{receive(t, ch, wait), receive(t, ch, wait), receive(t, ch, wait)}
	select {
	case m := <-ch:
		t.Fatalf("a fourth message (%s) was sent while three await their ack", m.UUID)
	case <-time.After(200 * time.Millisecond):
	}
	held[0].Ack()
	receive(t, ch, wait).Ack()
	held[1].Ack()
	held[2].Ack()
	receive(t, ch, wait).Ack()
}

// The agent's notifications wake the subscription of the notified topic.
func TestNotificationWakesSubscription(t *testing.T) {
	t.Parallel()
	e := newEnv(t, slowAgent)
	c := fastConfig()
	c.PollInterval = time.Hour
	ch := subscribe(t, e.subscriber(c), "wake")
	for range 3 {
		receiveAndAck(t, ch, e.publish("wake", 1)[0]) // polling would take an hour
	}
}

func TestPollingWithoutNotifications(t *testing.T) {
	t.Parallel()
	e := newEnv(t, slowAgent, func(c *durability.Config) { c.DisableNotify = true })
	c := fastConfig()
	c.PollInterval = 50 * time.Millisecond
	ch := subscribe(t, e.subscriber(c), "poll")
	receiveAndAck(t, ch, e.publish("poll", 1)[0])
}

// The agent's LISTEN connection is lost (backend terminated): the agent listens again and
// wakes every subscription, so what was published meanwhile is delivered without a poll.
func TestWokenAfterListenConnectionRestored(t *testing.T) {
	t.Parallel()
	e := newEnv(t, slowAgent)
	c := fastConfig()
	c.PollInterval = time.Hour
	ch := subscribe(t, e.subscriber(c), "reconnect")
	receiveAndAck(t, ch, e.publish("reconnect", 1)[0])

	listen := `LISTEN "` + e.agent.Store().Channels().Incoming + `"`
	var pid int32
	if err := database.QueryRow(context.Background(), e.db,
		"SELECT pid FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()", []any{listen}, &pid); err != nil {
		t.Fatalf("find the agent's LISTEN connection: %v", err)
	}
	if _, err := e.db.Exec(context.Background(), "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	// Published while the listener may be down: found when it is back (wake-up on reconnect).
	receiveAndAck(t, ch, e.publish("reconnect", 1)[0])
	eventually(t, wait, "LISTEN again on a new connection", func() bool {
		return queryInt(t, e.db, "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND pid <> $2", listen, pid) == 1
	})
	receiveAndAck(t, ch, e.publish("reconnect", 1)[0])
}

func TestDatabaseSQLHandle(t *testing.T) {
	t.Parallel()
	pgx, cfg := testdb.Migrated(t)
	e := &env{t: t, db: testdb.StdDriver(t), cfg: cfg}
	e.agent = startAgent(t, e.db, cfg)
	s := e.subscriber(fastConfig())
	sent := e.publish("std", 3)
	ch := subscribe(t, s, "std")
	got := map[string]bool{}
	nacked := false
	for len(got) < len(sent) {
		m := receive(t, ch, wait)
		if !nacked {
			nacked = true
			m.Nack()
			continue
		}
		got[m.UUID] = true
		m.Ack()
	}
	eventually(t, wait, "acked envelopes deleted", func() bool {
		return queryInt(t, pgx, "SELECT count(*) FROM "+cfg.Qualified(schema.IncomingTable)) == 0
	})
}

func TestSubscribeInitialize(t *testing.T) {
	t.Parallel()
	db := testdb.PgxDriver(t)
	cfg := schema.Config{Schema: testdb.Schema(t)} // exists, without tables
	a := startAgent(t, db, cfg)

	s := newSubscriber(t, a, subscriber.Config{})
	err := s.SubscribeInitialize("any")
	if !errors.Is(err, subscriber.ErrSchemaNotReady) || !strings.Contains(err.Error(), "watermill-jasper schema migrate") ||
		!strings.Contains(err.Error(), schema.IncomingTable) {
		t.Fatalf("SubscribeInitialize on a schema without tables: %v; want ErrSchemaNotReady naming the table and the fix", err)
	}
	if _, err := s.Subscribe(context.Background(), "any"); !errors.Is(err, subscriber.ErrSchemaNotReady) {
		t.Fatalf("Subscribe on a schema without tables: %v; want ErrSchemaNotReady", err)
	}
	if n := queryInt(t, db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", cfg.Schema); n != 0 {
		t.Fatalf("SubscribeInitialize created %d tables without InitializeSchema", n)
	}

	s = newSubscriber(t, a, subscriber.Config{InitializeSchema: true})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := s.SubscribeInitialize("any"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	diffs, err := schema.Verify(context.Background(), db, cfg, schema.VerifyOptions{})
	if err != nil || len(diffs) != 0 {
		t.Fatalf("after SubscribeInitialize with InitializeSchema: %v %v", diffs, err)
	}
}

// Subscribe and SubscribeInitialize refuse to start on an agent that does not run: nobody
// would release the nacked envelopes or hand back what a lost claim marked.
func TestSubscribeNeedsRunningAgent(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	idle, _ := newAgent(t, db, cfg) // never started
	stopped, stop := newAgent(t, db, cfg)
	if err := stopped.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for name, a := range map[string]*durability.Agent{"never started": idle, "stopped": stopped} {
		s := newSubscriber(t, a, fastConfig())
		if _, err := s.Subscribe(context.Background(), "t"); !errors.Is(err, durability.ErrAgentNotRunning) {
			t.Errorf("%s agent: Subscribe: %v; want an error wrapping durability.ErrAgentNotRunning", name, err)
		} else if !strings.Contains(err.Error(), "subscriber") {
			t.Errorf("%s agent: Subscribe: %q does not name the subscriber", name, err)
		}
		if err := s.SubscribeInitialize("t"); !errors.Is(err, durability.ErrAgentNotRunning) {
			t.Errorf("%s agent: SubscribeInitialize: %v; want an error wrapping durability.ErrAgentNotRunning", name, err)
		}
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, err := subscriber.NewSubscriber(e.agent, fastConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.publish("c", 2)
	ch1 := subscribe(t, s, "c")
	ch2 := subscribe(t, s, "other")
	receive(t, ch1, wait) // left unacked: Close must not wait for it
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := s.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, ch := range []<-chan *message.Message{ch1, ch2} {
		select {
		case _, open := <-ch:
			if open {
				t.Error("message delivered after Close")
			}
		default:
			t.Error("channel not closed when Close returned")
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Subscribe(context.Background(), "c"); !errors.Is(err, subscriber.ErrSubscriberClosed) {
		t.Fatalf("Subscribe after Close: %v, want ErrSubscriberClosed", err)
	}
	if n := e.count("owner_id <> 0"); n != 0 {
		t.Fatalf("%d envelopes still owned after Close", n)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	if err := (subscriber.Config{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	for name, c := range map[string]subscriber.Config{
		"batch size":      {BatchSize: -1},
		"huge batch":      {BatchSize: subscriber.MaxBatchSize + 1},
		"max in flight":   {MaxInFlight: -2},
		"poll interval":   {PollInterval: -time.Second},
		"nack backoff":    {NackBackoff: time.Minute, MaxNackBackoff: time.Second},
		"ack flush":       {AckFlushInterval: -time.Millisecond},
		"ack batch size":  {AckBatchSize: -1},
		"close timeout":   {CloseTimeout: -time.Second},
		"retry interval":  {RetryInterval: -time.Second},
		"max nack backof": {MaxNackBackoff: -time.Second},
	} {
		if err := c.Validate(); !errors.Is(err, subscriber.ErrInvalidConfig) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidConfig", name, err)
		}
	}
}

// NewSubscriber without an agent fails with one line saying how to build one.
func TestNewSubscriberWithoutAgent(t *testing.T) {
	t.Parallel()
	_, err := subscriber.NewSubscriber(nil, subscriber.Config{}, nil)
	if !errors.Is(err, subscriber.ErrInvalidConfig) {
		t.Fatalf("nil agent: %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"durability.Agent", "jasper.NewRuntime", "durability.NewNode", "durability.NewAgent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("nil agent: %q does not mention %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("nil agent: %q is not one line", err)
	}
}
