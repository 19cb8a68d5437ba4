package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// TestRiverLegs runs River's legs at a tiny size: a drain of 500 jobs into a GoChannel sink, a
// one-second latency leg and a consume leg of 300 jobs, and checks that every count is exact
// (each message once, no job left uncompleted) and that each leg's schema is dropped.
func TestRiverLegs(t *testing.T) {
	pool := testdb.Pool(t) // fails with a hint when PostgreSQL is down
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := withZeroFrom(OutboxConfig{DSN: testdb.PostgresDSN(), AMQPURI: AMQPNone, Rate: 100, LatencyDuration: time.Second}, outboxDefaults)
	var progress bytes.Buffer
	e, err := newEnv(ctx, cfg, &progress)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = e.close()
		}
	}()
	before := len(createdSchemas())
	fail := func(what string, err error) {
		t.Helper()
		t.Fatalf("%s: %v\nprogress:\n%s", what, err, progress.String())
	}

	const drained = 500
	d, err := e.drainLeg(ctx, implRiver, newRiverOutbox(), sinkGoChannel, drained)
	if err != nil {
		fail("drain", err)
	}
	if d.Impl != implRiver || d.N != drained || d.Received != drained || d.Dups != 0 || d.Left != 0 || d.Rate <= 0 || d.Statements != -1 {
		t.Errorf("drain: %+v", d)
	}

	l, err := e.latencyLeg(ctx, implRiver, newRiverOutbox(), sinkGoChannel)
	if err != nil {
		fail("latency", err)
	}
	if l.Impl != implRiver || l.Sent == 0 || l.Received != l.Sent || l.Dups != 0 || l.Max < l.P50 {
		t.Errorf("latency: %+v", l)
	}

	const backlog = 300
	c, err := e.riverConsumeLeg(ctx, SubscriberConfig{Backlog: backlog, Payload: 64})
	if err != nil {
		fail("consume", err)
	}
	if c.Impl != implRiver || c.InFlight != riverMaxWorkers || c.N != backlog || c.Received != backlog || c.Dups != 0 ||
		c.Left != 0 || c.Rate <= 0 || c.Elapsed < c.FirstMsg || c.Statements != -1 {
		t.Errorf("consume: %+v", c)
	}

	// Every leg dropped its own schema (checked before env.close, which would drop leftovers).
	created := createdSchemas()[before:]
	if len(created) != 3 {
		t.Errorf("%d schemas created, want 3", len(created))
	}
	var left int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", created).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d of River's schemas were not dropped", left)
	}
	closed = true
	if err := e.close(); err != nil {
		t.Errorf("close env: %v", err)
	}
	t.Logf("progress:\n%s", progress.String())
}

// A job carries its message whole: UUID, payload and metadata survive River's JSON encoding.
func TestRiverMessageArgs(t *testing.T) {
	msg := message.NewMessage("8d1f4a52-0f5c-4e3b-9a59-6f3f2b1c0a11", []byte{0, 1, 2, 255})
	msg.Metadata.Set("correlation_id", "42")
	b, err := json.Marshal(newRiverMessageArgs("orders", msg))
	if err != nil {
		t.Fatal(err)
	}
	var args riverMessageArgs
	if err := json.Unmarshal(b, &args); err != nil {
		t.Fatal(err)
	}
	got := args.message()
	if args.Topic != "orders" || !got.Equals(msg) {
		t.Errorf("topic %q, message %s %v %v", args.Topic, got.UUID, got.Payload, got.Metadata)
	}
}

// failingPublisher fails every Publish.
type failingPublisher struct{ calls int }

func (p *failingPublisher) Publish(string, ...*message.Message) error {
	p.calls++
	return errors.New("sink down")
}

func (p *failingPublisher) Close() error { return nil }

// The relay's worker fails the job when Publish fails (River then retries it), and the River
// outbox refuses the AMQP sink with an error.
func TestRiverRelayWorkerFailsWithPublish(t *testing.T) {
	p := &failingPublisher{}
	w := &riverRelayWorker{out: p}
	job := &river.Job[riverMessageArgs]{JobRow: &rivertype.JobRow{}, Args: riverMessageArgs{Topic: "t", UUID: "u"}}
	if err := w.Work(context.Background(), job); err == nil || p.calls != 1 {
		t.Errorf("Work = %v after %d publishes, want the publish error after 1", err, p.calls)
	}
	if _, _, err := (&riverOutbox{}).output(&sink{kind: sinkAMQP}); err == nil {
		t.Error("the River outbox accepted the AMQP sink")
	}
}
