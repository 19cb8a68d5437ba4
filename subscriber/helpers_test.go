package subscriber_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// testPublisher is a minimal durable-local-queue publisher for these tests: it writes
// incoming envelopes (status Incoming, owner 0, received_at = topic) and notifies the
// schema's incoming channel. The real publisher will replace it.
type testPublisher struct {
	db     database.DB
	d      sqldialect.Dialect
	closed atomic.Bool
}

func newTestPublisher(t testing.TB, db database.DB, cfg schema.Config) *testPublisher {
	t.Helper()
	d, err := sqldialect.For(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testPublisher{db: db, d: d}
}

func (p *testPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.closed.Load() {
		return errors.New("test publisher closed")
	}
	envs := make([]row.Envelope, 0, len(msgs))
	for _, m := range msgs {
		e, err := row.FromMessage(topic, m, row.Defaults{})
		if err != nil {
			return err
		}
		e.Status = schema.StatusIncoming
		envs = append(envs, e)
	}
	return p.insert(context.Background(), topic, envs)
}

const maxRowsPerInsert = 500

func (p *testPublisher) insert(ctx context.Context, topic string, envs []row.Envelope) error {
	err := database.InTx(ctx, p.db, func(tx database.Tx) error {
		for len(envs) > 0 {
			n := min(len(envs), maxRowsPerInsert)
			args := make([]any, 0, n*len(row.IncomingColumns))
			for i := range envs[:n] {
				args = envs[i].IncomingArgs(args, p.d.UUIDs())
			}
			if _, err := tx.Exec(ctx, p.d.InsertIncoming(n), args...); err != nil {
				return err
			}
			envs = envs[n:]
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Notify after the commit, in a transaction of its own: a NOTIFY in the inserting
	// transaction holds PostgreSQL's global notify lock across that transaction's commit
	// flush, serializing every publishing commit (~900 msg/s instead of ~4,500 here).
	_, err = p.db.Exec(ctx, p.d.NotifyIncoming(), topic)
	return err
}

func (p *testPublisher) Close() error {
	p.closed.Store(true)
	return nil
}

// fastConfig is a subscriber config for tests: the given schema, short back-offs.
func fastConfig(cfg schema.Config) subscriber.Config {
	return subscriber.Config{
		Schema:         cfg,
		NackBackoff:    10 * time.Millisecond,
		MaxNackBackoff: 200 * time.Millisecond,
		RetryInterval:  100 * time.Millisecond,
	}
}

func newSubscriber(t testing.TB, db database.DB, cfg subscriber.Config) *subscriber.Subscriber {
	t.Helper()
	s, err := subscriber.NewSubscriber(db, cfg, watermill.NewStdLogger(false, false))
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

func publish(t testing.TB, p *testPublisher, topic string, n int) []*message.Message {
	t.Helper()
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(uuid.NewString()))
		msgs[i].Metadata.Set("i", string(rune('a'+i%26)))
	}
	if err := p.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
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

func incomingCount(t testing.TB, db database.DB, cfg schema.Config, where string, args ...any) int64 {
	t.Helper()
	q := "SELECT count(*) FROM " + cfg.Qualified(schema.IncomingTable)
	if where != "" {
		q += " WHERE " + where
	}
	return queryInt(t, db, q, args...)
}

func dbNow(t testing.TB, db database.DB) time.Time {
	t.Helper()
	var now time.Time
	if err := database.QueryRow(context.Background(), db, "SELECT now()", nil, &now); err != nil {
		t.Fatal(err)
	}
	return now
}
