package publisher_test

import (
	"context"
	stdsql "database/sql"
	"log"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Publishing inside a business transaction with database/sql (pgx's stdlib driver): the
// order row and its OrderPlaced message commit, or roll back, together. The tables must
// exist: `watermill-jasper schema migrate` or schema.Migrate.
func Example() {
	ctx := context.Background()
	db, err := stdsql.Open("pgx", "postgres://app@localhost:5432/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// Built once and shared by the publishers of every transaction: the driver holds the
	// schema's statements, the coalescer lets them notify the forwarders once per interval.
	// (jasper.Runtime.TxPublisher hands out publishers set up so.)
	drv, err := database.FromStdSQL(db)
	if err != nil {
		log.Fatal(err)
	}
	coalescer := &publisher.Coalescer{}

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback() // no-op after Commit

	if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, total) VALUES ($1, $2)`, "o-42", 1999); err != nil {
		log.Fatal(err)
	}

	// One Publisher per transaction, as with watermill-sql; it is cheap to build.
	pub, err := publisher.NewPublisher(sql.TxFromStdSQL(tx), publisher.Config{
		Schema:    schema.Config{Schema: "public"},
		Driver:    drv,
		Coalescer: coalescer,
	}, watermill.NewStdLogger(false, false))
	if err != nil {
		log.Fatal(err)
	}
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order_id":"o-42"}`))
	msg.Metadata.Set(metadata.MessageType, "OrderPlaced") // Jasper's message type alias
	if err := pub.Publish("orders", msg); err != nil {
		log.Fatal(err)
	}

	// A delayed message (Watermill's components/delay) becomes a Jasper scheduled send.
	reminder := message.NewMessage(watermill.NewUUID(), []byte(`{"order_id":"o-42"}`))
	delay.Message(reminder, delay.For(24*time.Hour))
	if err := pub.Publish("payment-reminders", reminder); err != nil {
		log.Fatal(err)
	}

	if err := tx.Commit(); err != nil { // the forwarders are notified now
		log.Fatal(err)
	}
}

// Publishing inside a pgx transaction, natively.
func Example_pgx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@localhost:5432/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE orders SET status = 'shipped' WHERE id = $1`, "o-42"); err != nil {
			return err
		}
		pub, err := publisher.NewPublisher(sql.TxFromPgx(tx), publisher.Config{}, nil)
		if err != nil {
			return err
		}
		return pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(`{"order_id":"o-42","status":"shipped"}`)))
	})
	if err != nil {
		log.Fatal(err)
	}
}

// One long-lived Publisher on the pool joins the transaction carried by the message's
// context (the inbox middleware sets it for the messages a handler produces).
func ExampleWithTx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@localhost:5432/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	pub, err := publisher.NewPublisher(sql.BeginnerFromPgx(pool), publisher.Config{}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()

	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx)
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	msg.SetContext(publisher.WithTx(ctx, sql.TxFromPgx(tx)))
	if err := pub.Publish("orders", msg); err != nil { // written in tx
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}

	// Without a transaction in the context, Publish commits on its own.
	if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(`{}`))); err != nil {
		log.Fatal(err)
	}
}

// The table-less outbox: the message is a logical decoding message written in the business
// transaction, no row; the forwarder following the slot wj_outbox_public
// (forwarder.LogicalReplication, created beforehand with `watermill-jasper slot create`)
// publishes it. While that slot is missing the publisher writes rows instead.
func Example_tableLess() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@localhost:5432/shop")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	pub, err := publisher.NewPublisher(sql.BeginnerFromPgx(pool), publisher.Config{
		Schema:    schema.Config{Schema: "public"},
		TableLess: true,
	}, watermill.NewStdLogger(false, false))
	if err != nil {
		log.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, total) VALUES ($1, $2)`, "o-43", 2499); err != nil {
			return err
		}
		msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order":"o-43"}`))
		msg.Metadata.Set(metadata.PartitionKey, "o-43") // in order with the order's other events
		msg.SetContext(publisher.WithTx(ctx, sql.TxFromPgx(tx)))
		return pub.Publish("orders", msg)
	})
	if err != nil {
		log.Fatal(err)
	}
}
