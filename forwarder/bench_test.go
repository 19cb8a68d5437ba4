package forwarder

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// backlogs are the outbox sizes the drain benchmarks run with (flat throughput expected).
var backlogs = []int{5000, 20000, 80000}

// seed fills the outbox with n envelopes of a 64-byte payload and some metadata.
func seed(b *testing.B, e *env, topic string, n int) {
	b.Helper()
	payload := make([]byte, 64)
	msgs := make([]*message.Message, n)
	for i := range msgs {
		m := message.NewMessage(watermill.NewUUID(), payload)
		m.Metadata.Set("k", "v")
		msgs[i] = m
	}
	e.insert(topic, msgs...)
	if _, err := e.db.Exec(context.Background(), "ANALYZE "+e.schema.Qualified("jasper_outgoing_envelopes")); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRawClaimDelete is the floor the forwarder is compared with: claim a batch,
// read it, delete it, in one loop, nothing published.
func BenchmarkRawClaimDelete(b *testing.B) {
	for _, n := range backlogs {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			e := newEnv(b)
			ctx := context.Background()
			ids := make([]uuid.UUID, 0, DefaultBatchSize)
			var total time.Duration
			for range b.N {
				seed(b, e, "t", n)
				startAt := time.Now()
				for left := n; left > 0; {
					envs, err := e.store.ClaimOutgoing(ctx, store.ClaimOutgoingParams{Owner: 42, Limit: DefaultBatchSize})
					if err != nil {
						b.Fatal(err)
					}
					ids = ids[:0]
					for i := range envs {
						ids = append(ids, envs[i].ID)
					}
					if err := e.store.DeleteOutgoing(ctx, ids); err != nil {
						b.Fatal(err)
					}
					left -= len(ids)
				}
				total += time.Since(startAt)
			}
			b.ReportMetric(float64(n*b.N)/total.Seconds(), "msg/s")
		})
	}
}

// BenchmarkDrainGoChannel drains a backlog through the forwarder to a GoChannel subscriber.
func BenchmarkDrainGoChannel(b *testing.B) {
	for _, n := range backlogs {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			drainGoChannel(b, newEnv(b), n)
		})
	}
}

// drainGoChannel drains a backlog of n rows b.N times through a forwarder of e to a GoChannel
// subscriber and reports the rate.
func drainGoChannel(b *testing.B, e *env, n int) {
	var total time.Duration
	for range b.N {
		seed(b, e, "t", n)
		pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 4096}, watermill.NopLogger{})
		c := collect(b, pubsub, "t", n)
		f := e.forwarder(Config{Publisher: pubsub})
		startAt := time.Now()
		go func() { _ = f.Run(context.Background()) }()
		c.wait(b, "drain")
		total += time.Since(startAt)
		_ = f.Close()
		_ = pubsub.Close()
		if left := e.outgoing(); left != 0 {
			b.Fatalf("%d rows left", left)
		}
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "msg/s")
}

// BenchmarkDrainGoChannelRTT is BenchmarkDrainGoChannel of a 20,000-row backlog with the
// database behind a proxy that adds a network's latency to every round trip (1 ms and 5 ms;
// internal/tcpproxy): what the relay's round trips per batch cost away from the loopback.
func BenchmarkDrainGoChannelRTT(b *testing.B) {
	for _, rtt := range []time.Duration{time.Millisecond, 5 * time.Millisecond} {
		b.Run(rtt.String(), func(b *testing.B) {
			_, cfg := testdb.Migrated(b)
			db, proxy := testdb.Proxied(b, 10, 5*time.Second)
			proxy.DelayReplies(rtt) // the pool has not connected yet
			drainGoChannel(b, newEnvOn(b, db, cfg), 20000)
		})
	}
}

// BenchmarkDrainRabbitMQ drains a backlog to a durable RabbitMQ queue with publisher
// confirms; "serial" is one publish at a time, as Watermill's forwarder does.
func BenchmarkDrainRabbitMQ(b *testing.B) {
	requireRabbitMQ(b)
	const n = 20000
	for _, mode := range []struct {
		name                 string
		workers, concurrency int
		channelPool          int
	}{
		{"serial", 1, 1, 0},
		{"default", 0, 0, 0},
		{"default_channel_pool_64", 0, 0, 64},
	} {
		b.Run(mode.name, func(b *testing.B) {
			e := newEnv(b)
			queue := testQueue(b, "wj_fwd_bench_")
			cfg := amqp.NewDurableQueueConfig(amqpURI)
			cfg.Publish.ConfirmDelivery = true
			cfg.Publish.ChannelPoolSize = mode.channelPool
			pub, err := amqp.NewPublisher(cfg, watermill.NopLogger{})
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			// Declare the queue (the publisher of this config does not).
			sub, err := amqp.NewSubscriber(cfg, watermill.NopLogger{})
			if err != nil {
				b.Fatal(err)
			}
			if err := sub.SubscribeInitialize(queue); err != nil {
				b.Fatal(err)
			}
			_ = sub.Close()
			count := n
			if mode.workers == 1 {
				count = n / 10 // the serial relay is slow
			}
			var total time.Duration
			for range b.N {
				seed(b, e, queue, count)
				f := e.forwarder(Config{Publisher: pub, Workers: mode.workers, PublishConcurrency: mode.concurrency})
				done := make(chan struct{})
				var once sync.Once
				f.onFlushed = func() {
					if f.Stats().Sent >= int64(count) {
						once.Do(func() { close(done) })
					}
				}
				startAt := time.Now()
				go func() { _ = f.Run(context.Background()) }()
				select {
				case <-done:
				case <-time.After(5 * time.Minute):
					b.Fatalf("drain timed out: %+v", f.Stats())
				}
				total += time.Since(startAt)
				_ = f.Close()
			}
			b.ReportMetric(float64(count*b.N)/total.Seconds(), "msg/s")
		})
	}
}

// BenchmarkRawAMQPConfirm is the ceiling the RabbitMQ drain is compared with: 64 goroutines
// calling watermill-amqp's Publish (ConfirmDelivery) in a loop, no database.
func BenchmarkRawAMQPConfirm(b *testing.B) {
	requireRabbitMQ(b)
	const n, concurrency = 10000, 64
	for _, pool := range []int{0, 64} {
		b.Run(fmt.Sprintf("channel_pool_%d", pool), func(b *testing.B) {
			queue := testQueue(b, "wj_fwd_raw_bench_")
			cfg := amqp.NewDurableQueueConfig(amqpURI)
			cfg.Publish.ConfirmDelivery = true
			cfg.Publish.ChannelPoolSize = pool
			pub, err := amqp.NewPublisher(cfg, watermill.NopLogger{})
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			sub, err := amqp.NewSubscriber(cfg, watermill.NopLogger{})
			if err != nil {
				b.Fatal(err)
			}
			if err := sub.SubscribeInitialize(queue); err != nil {
				b.Fatal(err)
			}
			_ = sub.Close()
			payload := make([]byte, 64)
			var total time.Duration
			for range b.N {
				startAt := time.Now()
				jobs := make(chan struct{})
				var wg sync.WaitGroup
				for range concurrency {
					wg.Go(func() {
						for range jobs {
							if err := pub.Publish(queue, message.NewMessage(watermill.NewUUID(), payload)); err != nil {
								b.Error(err)
							}
						}
					})
				}
				for range n {
					jobs <- struct{}{}
				}
				close(jobs)
				wg.Wait()
				total += time.Since(startAt)
			}
			b.ReportMetric(float64(n*b.N)/total.Seconds(), "msg/s")
		})
	}
}
