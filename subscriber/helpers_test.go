package subscriber_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// wait bounds every wait for a message or a row of these tests.
const wait = 15 * time.Second

// agentConfig is the durability config of these tests: the schema, fast timers. opts change
// it further.
func agentConfig(cfg schema.Config, opts ...func(*durability.Config)) durability.Config {
	c := durability.Config{
		Schema:                  cfg,
		ScheduledJobPollingTime: 100 * time.Millisecond,
		NodeCheckInterval:       100 * time.Millisecond,
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// newAgent creates a node and its agent (not started) on db for cfg. stop stops the agent
// and closes the node; it is idempotent and runs when the test ends.
func newAgent(t testing.TB, db database.Driver, cfg schema.Config, opts ...func(*durability.Config)) (a *durability.Agent, stop func() error) {
	t.Helper()
	node, err := durability.NewNode(context.Background(), db, durability.NodeConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	a, err = durability.NewAgent(node, agentConfig(cfg, opts...), watermill.NopLogger{})
	if err != nil {
		_ = node.Close()
		t.Fatal(err)
	}
	stop = sync.OnceValue(func() error {
		return errors.Join(a.Stop(context.Background()), node.Close())
	})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stop the agent: %v", err)
		}
	})
	return a, stop
}

// startAgent is newAgent, started.
func startAgent(t testing.TB, db database.Driver, cfg schema.Config, opts ...func(*durability.Config)) *durability.Agent {
	t.Helper()
	a, _ := newAgent(t, db, cfg, opts...)
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return a
}

// env is a migrated schema of the test database and a running agent for it.
type env struct {
	t     testing.TB
	db    database.Driver
	cfg   schema.Config
	agent *durability.Agent
}

// newEnv migrates a fresh schema and starts an agent for it (opts change its config).
func newEnv(t testing.TB, opts ...func(*durability.Config)) *env {
	t.Helper()
	db, cfg := testdb.Migrated(t)
	return &env{t: t, db: db, cfg: cfg, agent: startAgent(t, db, cfg, opts...)}
}

// slowAgent turns the agent's periodic scheduled pass (release and recovery wake-ups) off in
// practice: only ScheduleAt, notifications and the subscription's own wake-ups act.
func slowAgent(c *durability.Config) {
	c.ScheduledJobPollingTime = time.Hour
}

// fastConfig is a subscriber config for tests: short back-offs.
func fastConfig() subscriber.Config {
	return subscriber.Config{
		NackBackoff:    10 * time.Millisecond,
		MaxNackBackoff: 200 * time.Millisecond,
		RetryInterval:  100 * time.Millisecond,
	}
}

// subscriber returns a Subscriber of the env's agent, closed when the test ends.
func (e *env) subscriber(cfg subscriber.Config) *subscriber.Subscriber {
	e.t.Helper()
	return newSubscriber(e.t, e.agent, cfg)
}

func newSubscriber(t testing.TB, a *durability.Agent, cfg subscriber.Config) *subscriber.Subscriber {
	t.Helper()
	s, err := subscriber.NewSubscriber(a, cfg, watermill.NewStdLogger(false, false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close subscriber: %v", err)
		}
	})
	return s
}

// insert writes incoming envelopes of topic through the store and notifies the topic's
// subscribers, as a publisher of the durable local queue does.
func (e *env) insert(topic string, envs ...row.Envelope) {
	e.t.Helper()
	err := e.agent.Store().InsertEnvelopes(context.Background(), store.InsertParams{Incoming: envs, NotifyTopics: []string{topic}})
	if err != nil {
		e.t.Fatal(err)
	}
}

// envelope is msg as an incoming envelope of topic with a status.
func envelope(t testing.TB, topic string, msg *message.Message, status string) row.Envelope {
	t.Helper()
	e, err := row.FromMessage(topic, msg, row.Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	e.Status = status
	return e
}

// publish writes n Incoming envelopes of topic and returns their messages.
func (e *env) publish(topic string, n int) []*message.Message {
	e.t.Helper()
	msgs := make([]*message.Message, n)
	envs := make([]row.Envelope, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(uuid.NewString()))
		msgs[i].Metadata.Set("i", string(rune('a'+i%26)))
		envs[i] = envelope(e.t, topic, msgs[i], schema.StatusIncoming)
	}
	e.insert(topic, envs...)
	return msgs
}

// receive waits up to timeout for the next message.
func receive(t testing.TB, ch <-chan *message.Message, timeout time.Duration) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return m
	case <-time.After(timeout):
		t.Fatalf("no message within %s", timeout)
	}
	return nil
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func queryInt(t testing.TB, db database.DB, query string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := database.QueryRow(context.Background(), db, query, args, &n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// count counts the incoming envelopes matching where ("" all).
func (e *env) count(where string, args ...any) int64 {
	e.t.Helper()
	q := "SELECT count(*) FROM " + e.cfg.Qualified(schema.IncomingTable)
	if where != "" {
		q += " WHERE " + where
	}
	return queryInt(e.t, e.db, q, args...)
}

// now is the database clock.
func (e *env) now() time.Time {
	e.t.Helper()
	var now time.Time
	if err := database.QueryRow(context.Background(), e.db, "SELECT now()", nil, &now); err != nil {
		e.t.Fatal(err)
	}
	return now
}
