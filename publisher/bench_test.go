package publisher_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
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

// What the table-less outbox costs the publishing transaction, on a private cluster with
// wal_level = logical and the schema's slot (not streamed: the server's decoding is not in
// the publisher's path), 8 transactions at once, each one message and its commit:
//
//   - bare_insert: INSERT of the outgoing row, the floor of a publish by row;
//   - rows: Publish through the publisher, joining the transaction (WithTx);
//   - tableless: the same with Config.TableLess (one pg_logical_emit_message, its slot checked);
//   - bare_emit: pg_logical_emit_message alone, the floor of a table-less publish;
//   - guarded_emit: the table-less statement alone (bare_emit plus the slot's check).
//
// Run the legs alternately for a comparison (docs/benchmarks.md, "The table-less outbox").
func BenchmarkPublishTableLess(b *testing.B) {
	cluster := testdb.StartLogicalCluster(b)
	_, st := cluster.Migrated(b)
	_, pool := cluster.Driver(b)
	ctx := context.Background()
	lc, err := logrepl.Config{Schema: st.Schema().Schema}.Normalized()
	if err != nil {
		b.Fatal(err)
	}
	conn, err := logrepl.Dial(ctx, cluster.DSN())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := logrepl.Setup(ctx, conn, lc); err != nil {
		b.Fatal(err)
	}
	defer func() { _, _ = logrepl.Drop(ctx, conn, lc) }()
	publishers := map[string]*publisher.Publisher{}
	for name, tableLess := range map[string]bool{"rows": false, "tableless": true} {
		p, err := publisher.NewPublisher(sql.BeginnerFromPgx(pool), publisher.Config{Schema: st.Schema(), TableLess: tableLess}, nil)
		if err != nil {
			b.Fatal(err)
		}
		publishers[name] = p
	}
	table := st.Schema().Qualified(schema.OutgoingTable)
	cfg, err := st.Schema().Normalized()
	if err != nil {
		b.Fatal(err)
	}
	emitSQL := postgres.Dialect(cfg).EmitOutgoing()
	env := row.Envelope{ID: uuid.New(), Destination: "orders", MessageType: "m", Body: []byte(`{"order_id":"o-42","amount":1999}`)}
	content, err := env.EncodeEmitted(nil)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"order_id":"o-42","amount":1999}`)
	legs := []struct {
		name string
		tx   func(tx pgx.Tx) error
	}{
		{"bare_insert", func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO `+table+` (id, owner_id, destination, body, message_type) VALUES ($1, 0, 'orders', $2, 'm')`, uuid.New(), body)
			return err
		}},
		{"rows", nil},
		{"tableless", nil},
		{"bare_emit", func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2::bytea)`, lc.MessagePrefix(), body)
			return err
		}},
		// The table-less statement alone (the slot's check included), with the content
		// encoded once: what the SQL costs beside the bare emit.
		{"guarded_emit", func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, emitSQL, lc.MessagePrefix(), lc.Slot, [][]byte{content})
			return err
		}},
	}
	for _, leg := range legs {
		b.Run(leg.name, func(b *testing.B) {
			b.SetParallelism(4) // 8 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
						if leg.tx != nil {
							return leg.tx(tx)
						}
						msg := message.NewMessage(watermill.NewUUID(), body)
						msg.SetContext(publisher.WithTx(ctx, sql.TxFromPgx(tx)))
						return publishers[leg.name].Publish("orders", msg)
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
