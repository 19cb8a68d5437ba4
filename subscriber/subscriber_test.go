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
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

const wait = 15 * time.Second

func TestAckDeletesEnvelope(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	s := newSubscriber(t, db, fastConfig(cfg))
	sent := publish(t, p, "orders", 3)
	ch, err := s.Subscribe(context.Background(), "orders")
	if err != nil {
		t.Fatal(err)
	}
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
		// Delivered means claimed and committed: the row is this node's.
		if n := incomingCount(t, db, cfg, "id = $1 AND owner_id = $2", id, s.NodeID()); n != 1 {
			t.Errorf("delivered envelope %s is not owned by node %d", id, s.NodeID())
		}
		m.Ack()
	}
	eventually(t, wait, "acked envelopes deleted", func() bool { return incomingCount(t, db, cfg, "") == 0 })
}

func TestNackCountsAttemptAndRedeliversAfterBackoff(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	c := fastConfig(cfg)
	c.NackBackoff = 500 * time.Millisecond
	c.MaxNackBackoff = time.Second
	c.PollInterval = time.Minute // the back-off timer, not polling, brings it back
	s := newSubscriber(t, db, c)
	sent := publish(t, p, "retry", 1)[0]
	ch, err := s.Subscribe(context.Background(), "retry")
	if err != nil {
		t.Fatal(err)
	}
	id := row.EnvelopeID("retry", sent.UUID).String()
	var nackedAt time.Time
	for attempt, backoff := range []time.Duration{0, 500 * time.Millisecond, time.Second, time.Second} {
		m := receive(t, ch, wait)
		// The back-off runs on the database clock from the nack's flush, after Nack.
		if elapsed := time.Since(nackedAt); attempt > 0 && elapsed < backoff-10*time.Millisecond { // 10ms: wall vs monotonic clock
			t.Errorf("attempt %d delivered %s after the nack, before its back-off of %s", attempt, elapsed, backoff)
		}
		if m.UUID != sent.UUID || string(m.Payload) != string(sent.Payload) || m.Metadata.Get("i") != sent.Metadata.Get("i") {
			t.Fatalf("redelivered message differs: %s %q %v", m.UUID, m.Payload, m.Metadata)
		}
		if got, want := m.Metadata.Get(metadata.Attempts), []string{"0", "1", "2", "3"}[attempt]; got != want {
			t.Errorf("attempt %d: metadata %s = %q, want %q", attempt, metadata.Attempts, got, want)
		}
		if attempt == 3 {
			m.Ack()
			break
		}
		nackedAt = time.Now()
		m.Nack()
		// Handed back as a Jasper scheduled retry, with the attempt counted.
		eventually(t, wait, "nacked envelope scheduled for a retry", func() bool {
			return incomingCount(t, db, cfg, "id = $1 AND status = 'Scheduled' AND owner_id = 0 AND attempts = $2 AND execution_time > now()", id, attempt+1) == 1
		})
	}
	eventually(t, wait, "acked envelope deleted", func() bool { return incomingCount(t, db, cfg, "") == 0 })
}

// The watermill-sql queue defect (watermill-notes §5.5): publish 10, ack 3, close while
// the 4th is pending: a new subscriber must receive the other 7.
func TestCloseHandsBackWhatWasNotAcked(t *testing.T) {
	t.Parallel()
	for _, inFlight := range []int{1, 4} {
		t.Run(map[int]string{1: "one in flight", 4: "four in flight"}[inFlight], func(t *testing.T) {
			t.Parallel()
			db, cfg := testdb.Migrated(t)
			p := newTestPublisher(t, db, cfg)
			c := fastConfig(cfg)
			c.MaxInFlight = inFlight
			sent := publish(t, p, "q", 10)
			s1 := newSubscriber(t, db, c)
			ch1, err := s1.Subscribe(context.Background(), "q")
			if err != nil {
				t.Fatal(err)
			}
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
			if _, open := <-ch1; open {
				// With several in flight, messages already sent may still be read; the
				// channel must be closed after them.
				for range ch1 {
				}
			}
			if n := incomingCount(t, db, cfg, ""); n != 7 {
				t.Fatalf("%d envelopes left after acking 3 of 10, want 7", n)
			}
			if n := incomingCount(t, db, cfg, "owner_id <> 0"); n != 0 {
				t.Fatalf("%d envelopes still owned after Close", n)
			}
			pendingID := row.EnvelopeID("q", pending.UUID).String()
			if n := incomingCount(t, db, cfg, "id = $1 AND attempts = 1", pendingID); n != 1 {
				t.Error("the envelope delivered but not acked at Close did not count an attempt")
			}

			s2 := newSubscriber(t, db, c)
			ch2, err := s2.Subscribe(context.Background(), "q")
			if err != nil {
				t.Fatal(err)
			}
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
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	s := newSubscriber(t, db, fastConfig(cfg))
	sent := publish(t, p, "cancel", 5)
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
	eventually(t, wait, "claimed envelopes handed back", func() bool { return incomingCount(t, db, cfg, "owner_id <> 0") == 0 })

	ch, err = s.Subscribe(context.Background(), "cancel")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for len(got) < len(sent) {
		m := receive(t, ch, wait)
		got[m.UUID] = true
		m.Ack()
	}
}

func TestScheduledEnvelopeDeliveredWhenDue(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	c := fastConfig(cfg)
	c.PollInterval = time.Minute // only the due-time timer and notifications may deliver
	s := newSubscriber(t, db, c)

	schedule := func(topic string, in time.Duration) (*message.Message, time.Time) {
		t.Helper()
		msg := message.NewMessage(watermill.NewUUID(), []byte("later"))
		e, err := row.FromMessage(topic, msg, row.Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		due := dbNow(t, db).Add(in)
		e.Status, e.ExecutionTime = schema.StatusScheduled, &due
		if err := p.insert(context.Background(), topic, []row.Envelope{e}); err != nil {
			t.Fatal(err)
		}
		return msg, due
	}
	check := func(ch <-chan *message.Message, msg *message.Message, due time.Time, start time.Time, in time.Duration) {
		t.Helper()
		select {
		case m := <-ch:
			t.Fatalf("scheduled message %s delivered %s before it was due", m.UUID, in-time.Since(start))
		case <-time.After(time.Until(start.Add(in - 200*time.Millisecond))):
		}
		m := receive(t, ch, wait)
		if now := dbNow(t, db); now.Before(due) {
			t.Errorf("delivered at %s (database clock), before its execution_time %s", now, due)
		}
		if m.UUID != msg.UUID {
			t.Errorf("got %s, want %s", m.UUID, msg.UUID)
		}
		m.Ack()
	}

	// Scheduled before the subscription starts: it sets a timer for the due time.
	const in = 1500 * time.Millisecond
	start := time.Now()
	msg, due := schedule("sched-before", in)
	ch, err := s.Subscribe(context.Background(), "sched-before")
	if err != nil {
		t.Fatal(err)
	}
	check(ch, msg, due, start, in)

	// Scheduled while the subscription idles: the notification makes it look.
	ch, err = s.Subscribe(context.Background(), "sched-after")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	msg, due = schedule("sched-after", in)
	check(ch, msg, due, start, in)
	eventually(t, wait, "acked envelopes deleted", func() bool { return incomingCount(t, db, cfg, "") == 0 })
}

func TestUnreadableEnvelopeIsDeadLettered(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	s := newSubscriber(t, db, fastConfig(cfg))

	bad := message.NewMessage(watermill.NewUUID(), []byte("bad"))
	e, err := row.FromMessage("dl", bad, row.Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	e.Status, e.Headers = schema.StatusIncoming, []byte(`{"not": json`)
	if err := p.insert(context.Background(), "dl", []row.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	good := publish(t, p, "dl", 1)[0]

	ch, err := s.Subscribe(context.Background(), "dl")
	if err != nil {
		t.Fatal(err)
	}
	m := receive(t, ch, wait)
	if m.UUID != good.UUID {
		t.Fatalf("got %s, want the readable message %s", m.UUID, good.UUID)
	}
	m.Ack()
	dlq := cfg.Qualified(schema.DeadLetterTable)
	eventually(t, wait, "unreadable envelope moved to the dead letters", func() bool {
		return queryInt(t, db, "SELECT count(*) FROM "+dlq+" WHERE id = $1", e.ID.String()) == 1
	})
	var explanation, excType, excMessage, receivedAt, messageUUID string
	var body []byte
	err = database.QueryRow(context.Background(), db,
		"SELECT explanation, exception_type, exception_message, received_at, message_uuid, body FROM "+dlq+" WHERE id = $1",
		[]any{e.ID.String()}, &explanation, &excType, &excMessage, &receivedAt, &messageUUID, &body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(explanation, "unreadable") || !strings.Contains(excMessage, "headers") || excType == "" {
		t.Errorf("explanation %q, exception %s %q: want an unreadable-headers explanation", explanation, excType, excMessage)
	}
	if receivedAt != "dl" || messageUUID != bad.UUID || string(body) != "bad" {
		t.Errorf("dead letter received_at %q message_uuid %q body %q: want the envelope's", receivedAt, messageUUID, body)
	}
	eventually(t, wait, "incoming table empty", func() bool { return incomingCount(t, db, cfg, "") == 0 })
}

// Two subscribers of one topic (two nodes here) claim disjoint envelopes: no envelope is
// ever delivered by both at once, nacked ones included.
func TestTwoSubscribersNeverDeliverOneEnvelopeConcurrently(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	node, err := durability.NewNode(context.Background(), db, durability.NodeConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	c1 := fastConfig(cfg)
	c1.MaxInFlight, c1.BatchSize = 4, 10
	c2 := c1
	c2.Node = node
	subs := []*subscriber.Subscriber{newSubscriber(t, db, c1), newSubscriber(t, db, c2)}
	if subs[0].NodeID() == subs[1].NodeID() {
		t.Fatal("the two subscribers share a node id")
	}
	const total = 300
	sent := publish(t, p, "shared", total)

	var mu sync.Mutex
	inFlight := map[string]int{} // UUID -> subscriber delivering it
	acked := map[string]int{}
	deliveries := [2]int{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range subs {
		ch, err := s.Subscribe(context.Background(), "shared")
		if err != nil {
			t.Fatal(err)
		}
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
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
						select {
						case <-done:
						default:
							close(done)
						}
					}
				}
			}()
		}
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		close(done)
		t.Errorf("timed out")
	}
	wg.Wait()
	for _, m := range sent {
		if acked[m.UUID] != 1 {
			t.Errorf("message %s acked %d times, want 1", m.UUID, acked[m.UUID])
		}
	}
	t.Logf("deliveries per subscriber: %v", deliveries)
	eventually(t, wait, "acked envelopes deleted", func() bool { return incomingCount(t, db, cfg, "") == 0 })
}

func TestMaxInFlight(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	c := fastConfig(cfg)
	c.MaxInFlight = 3
	s := newSubscriber(t, db, c)
	publish(t, p, "inflight", 5)
	ch, err := s.Subscribe(context.Background(), "inflight")
	if err != nil {
		t.Fatal(err)
	}
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

func TestNotificationWakesSubscription(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	c := fastConfig(cfg)
	c.PollInterval = time.Hour
	s := newSubscriber(t, db, c)
	ch, err := s.Subscribe(context.Background(), "wake")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		sent := publish(t, p, "wake", 1)[0]
		m := receive(t, ch, wait) // polling would take an hour
		if m.UUID != sent.UUID {
			t.Fatalf("got %s, want %s", m.UUID, sent.UUID)
		}
		m.Ack()
	}
}

func TestPollingWithoutNotifications(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	c := fastConfig(cfg)
	c.DisableNotify = true
	c.PollInterval = 50 * time.Millisecond
	s := newSubscriber(t, db, c)
	ch, err := s.Subscribe(context.Background(), "poll")
	if err != nil {
		t.Fatal(err)
	}
	sent := publish(t, p, "poll", 1)[0]
	if m := receive(t, ch, wait); m.UUID != sent.UUID {
		t.Fatalf("got %s, want %s", m.UUID, sent.UUID)
	} else {
		m.Ack()
	}
}

func TestDatabaseSQLHandle(t *testing.T) {
	t.Parallel()
	pgxDB, cfg := testdb.Migrated(t)
	db, err := database.FromStdSQL(testdb.StdDB(t))
	if err != nil {
		t.Fatal(err)
	}
	p := newTestPublisher(t, db, cfg)
	s := newSubscriber(t, db, fastConfig(cfg))
	sent := publish(t, p, "std", 3)
	ch, err := s.Subscribe(context.Background(), "std")
	if err != nil {
		t.Fatal(err)
	}
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
	eventually(t, wait, "acked envelopes deleted", func() bool { return incomingCount(t, pgxDB, cfg, "") == 0 })
}

func TestSubscribeInitialize(t *testing.T) {
	t.Parallel()
	db := database.FromPgx(testdb.Pool(t))
	cfg := schema.Config{Schema: testdb.Schema(t)} // exists, without tables

	s := newSubscriber(t, db, subscriber.Config{Schema: cfg})
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

	s = newSubscriber(t, db, subscriber.Config{Schema: cfg, InitializeSchema: true})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.SubscribeInitialize("any"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	diffs, err := schema.Verify(context.Background(), db, cfg, schema.VerifyOptions{})
	if err != nil || len(diffs) != 0 {
		t.Fatalf("after SubscribeInitialize with InitializeSchema: %v %v", diffs, err)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	s, err := subscriber.NewSubscriber(db, fastConfig(cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, p, "c", 2)
	ch1, err := s.Subscribe(context.Background(), "c")
	if err != nil {
		t.Fatal(err)
	}
	ch2, err := s.Subscribe(context.Background(), "other")
	if err != nil {
		t.Fatal(err)
	}
	receive(t, ch1, wait) // left unacked: Close must not wait for it
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Close(); err != nil {
				t.Error(err)
			}
		}()
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
	if n := incomingCount(t, db, cfg, "owner_id <> 0"); n != 0 {
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
		"schema name":     {Schema: schema.Config{Schema: "bad name"}},
		"dialect":         {Schema: schema.Config{Dialect: "oracle"}},
		"ack batch size":  {AckBatchSize: -1},
		"close timeout":   {CloseTimeout: -time.Second},
		"retry interval":  {RetryInterval: -time.Second},
		"max nack backof": {MaxNackBackoff: -time.Second},
	} {
		if err := c.Validate(); !errors.Is(err, subscriber.ErrInvalidConfig) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := subscriber.NewSubscriber(nil, subscriber.Config{}, nil); !errors.Is(err, subscriber.ErrInvalidConfig) {
		t.Errorf("nil db: %v", err)
	}
}

// The shared LISTEN connection is lost (backend terminated): the hub reconnects, LISTENs
// again and wakes every subscription, so nothing waits for a poll.
func TestListenConnectionLostAndRestored(t *testing.T) {
	t.Parallel()
	_, cfg := testdb.Migrated(t)
	pcfg, err := pgxpool.ParseConfig(testdb.PostgresDSN())
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db := database.FromPgx(pool) // its own hub: the other tests keep theirs
	p := newTestPublisher(t, db, cfg)
	c := fastConfig(cfg)
	c.PollInterval = time.Hour
	s := newSubscriber(t, db, c)
	ch, err := s.Subscribe(context.Background(), "reconnect")
	if err != nil {
		t.Fatal(err)
	}
	sent := publish(t, p, "reconnect", 1)[0]
	if m := receive(t, ch, wait); m.UUID != sent.UUID {
		t.Fatalf("got %s, want %s", m.UUID, sent.UUID)
	} else {
		m.Ack()
	}

	d, err := sqldialect.For(cfg)
	if err != nil {
		t.Fatal(err)
	}
	listen := d.ListenIncoming()
	var pid int32
	if err := database.QueryRow(context.Background(), db,
		"SELECT pid FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()", []any{listen}, &pid); err != nil {
		t.Fatalf("find the LISTEN connection: %v", err)
	}
	if _, err := db.Exec(context.Background(), "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	// Published while the listener may be down: found when it is back (wake-up on reconnect).
	sent = publish(t, p, "reconnect", 1)[0]
	if m := receive(t, ch, wait); m.UUID != sent.UUID {
		t.Fatalf("got %s, want %s", m.UUID, sent.UUID)
	} else {
		m.Ack()
	}
	eventually(t, wait, "LISTEN again on a new connection", func() bool {
		return queryInt(t, db, "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND pid <> $2", listen, pid) == 1
	})
	sent = publish(t, p, "reconnect", 1)[0]
	if m := receive(t, ch, wait); m.UUID != sent.UUID {
		t.Fatalf("got %s, want %s", m.UUID, sent.UUID)
	} else {
		m.Ack()
	}
}

// With DisableScheduledRelease a durability agent releases due scheduled envelopes (with
// sqldialect's ReleaseScheduled for every topic) and wakes the subscriber.
func TestWakeAfterAgentReleasedScheduled(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	p := newTestPublisher(t, db, cfg)
	c := fastConfig(cfg)
	c.DisableNotify, c.DisableScheduledRelease, c.PollInterval = true, true, time.Hour
	s := newSubscriber(t, db, c)
	ch, err := s.Subscribe(context.Background(), "agent")
	if err != nil {
		t.Fatal(err)
	}
	msg := message.NewMessage(watermill.NewUUID(), []byte("due"))
	e, err := row.FromMessage("agent", msg, row.Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	due := dbNow(t, db).Add(-time.Second)
	e.Status, e.ExecutionTime = schema.StatusScheduled, &due
	if err := p.insert(context.Background(), "agent", []row.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	s.Wake()
	select {
	case m := <-ch:
		t.Fatalf("scheduled message %s delivered though the subscriber does not release scheduled envelopes", m.UUID)
	case <-time.After(300 * time.Millisecond):
	}
	d, err := sqldialect.For(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var released int64
	var nextMS *float64
	if err := database.QueryRow(context.Background(), db, d.ReleaseScheduled(), []any{d.StringList(nil), 100}, &released, &nextMS); err != nil {
		t.Fatal(err)
	}
	if released != 1 || nextMS != nil {
		t.Fatalf("ReleaseScheduled released %d, next due %v; want 1 and none", released, nextMS)
	}
	s.Wake()
	if m := receive(t, ch, wait); m.UUID != msg.UUID {
		t.Fatalf("got %s, want %s", m.UUID, msg.UUID)
	} else {
		m.Ack()
	}
}
