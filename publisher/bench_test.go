package publisher_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
)

// The cost of the per-transaction pattern: begin, build a Publisher on the transaction,
// publish one message, commit; with and without a shared Driver and Coalescer.
func BenchmarkPublisherPerTransaction(b *testing.B) {
	drv, cfg := testdb.Migrated(b)
	pool := testdb.Pool(b)
	ctx := context.Background()
	for _, c := range []struct {
		name string
		cfg  publisher.Config
	}{
		{"no_driver", publisher.Config{Schema: cfg}},
		{"no_driver_shared_coalescer", publisher.Config{Schema: cfg, Coalescer: &publisher.Coalescer{}}},
		{"driver", publisher.Config{Schema: cfg, Driver: drv}},
		{"driver_shared_coalescer", publisher.Config{Schema: cfg, Driver: drv, Coalescer: &publisher.Coalescer{}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				tx, err := pool.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				p, err := publisher.NewPublisher(sql.TxFromPgx(tx), c.cfg, nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := p.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(`{"n":1}`))); err != nil {
					b.Fatal(err)
				}
				if err := tx.Commit(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The cost of NewPublisher alone (no round trip).
func BenchmarkNewPublisher(b *testing.B) {
	drv, cfg := testdb.Migrated(b)
	db := sql.BeginnerFromPgx(testdb.Pool(b))
	for _, c := range []struct {
		name string
		cfg  publisher.Config
	}{
		{"no_driver", publisher.Config{Schema: cfg}},
		{"driver", publisher.Config{Schema: cfg, Driver: drv}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := publisher.NewPublisher(db, c.cfg, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
