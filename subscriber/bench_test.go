package subscriber_test

import (
	"context"
	stdsql "database/sql"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

const (
	benchBacklog = 30000
	// benchPayload is JSON because watermill-sql's default PostgreSQL schema stores JSONB.
	benchPayload = `{"payload":"0123456789012345678901234567890123456789012345678"}`
)

// BenchmarkRouter drains a backlog of envelopes through a Watermill router whose handler
// only acks (the shape of watermill-benchmark's subscribe test) and reports messages/s.
// BenchmarkRouterWatermillSQL runs watermill-sql's subscriber through the same harness, so
// the two can be compared on one machine in one run:
//
//	go test -run '^$' -bench Router -benchtime 3x ./subscriber/
func BenchmarkRouter(b *testing.B) {
	const backlog = benchBacklog
	for _, inFlight := range []int{1, 4} {
		b.Run(fmt.Sprintf("in-flight-%d", inFlight), func(b *testing.B) {
			e := newEnv(b)
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				topic := fmt.Sprintf("bench-%d", i)
				envs := make([]row.Envelope, backlog)
				for j := range envs {
					envs[j] = envelope(b, topic, message.NewMessage(watermill.NewUUID(), []byte(benchPayload)), schema.StatusIncoming)
				}
				e.insert(topic, envs...)
				if _, err := e.db.Exec(context.Background(), "VACUUM ANALYZE "+e.cfg.Qualified(schema.IncomingTable)); err != nil {
					b.Fatal(err)
				}
				c := subscriber.Config{MaxInFlight: inFlight}
				s, err := subscriber.NewSubscriber(e.agent, c, watermill.NopLogger{})
				if err != nil {
					b.Fatal(err)
				}
				total += drain(b, s, topic, backlog)
				_ = s.Close()
			}
			b.ReportMetric(float64(backlog*b.N)/total.Seconds(), "msg/s")
		})
	}
}

func BenchmarkRouterWatermillSQL(b *testing.B) {
	const backlog = benchBacklog
	db, err := stdsql.Open("pgx", testdb.PostgresDSN())
	if err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(10)
	defer db.Close()
	beginner := wsql.BeginnerFromStdSQL(db)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		topic := fmt.Sprintf("wj_bench_%d_%d", time.Now().UnixNano(), i)
		b.Cleanup(func() {
			_, _ = db.Exec(`DROP TABLE IF EXISTS "watermill_` + topic + `"`)
			_, _ = db.Exec(`DROP TABLE IF EXISTS "watermill_offsets_` + topic + `"`)
		})
		pub, err := wsql.NewPublisher(beginner, wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}, AutoInitializeSchema: true}, watermill.NopLogger{})
		if err != nil {
			b.Fatal(err)
		}
		for j := 0; j < backlog; j += 500 {
			msgs := make([]*message.Message, 500)
			for k := range msgs {
				msgs[k] = message.NewMessage(watermill.NewUUID(), []byte(benchPayload))
			}
			if err := pub.Publish(topic, msgs...); err != nil {
				b.Fatal(err)
			}
		}
		// watermill-sql tuned for throughput: PollInterval 10ms (batches of its default 100).
		sub, err := wsql.NewSubscriber(beginner, wsql.SubscriberConfig{
			SchemaAdapter: wsql.DefaultPostgreSQLSchema{}, OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
			InitializeSchema: true, PollInterval: 10 * time.Millisecond, ConsumerGroup: "bench",
		}, watermill.NopLogger{})
		if err != nil {
			b.Fatal(err)
		}
		total += drain(b, sub, topic, backlog)
		_ = sub.Close()
	}
	b.ReportMetric(float64(backlog*b.N)/total.Seconds(), "msg/s")
}

// drain runs a router whose handler only acks over topic of sub until backlog messages were
// handled, and returns how long that took (the benchmark timer runs meanwhile only).
func drain(b *testing.B, sub message.Subscriber, topic string, backlog int64) time.Duration {
	b.Helper()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	var n atomic.Int64
	done := make(chan struct{})
	r.AddConsumerHandler("h", topic, sub, func(*message.Message) error {
		if n.Add(1) == backlog {
			close(done)
		}
		return nil
	})
	b.StartTimer()
	defer b.StopTimer()
	start := time.Now()
	go func() { _ = r.Run(context.Background()) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("only %d of %d consumed", n.Load(), backlog)
	}
	return time.Since(start)
}
