package publisher_test

import (
	"context"
	stdsql "database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// TableLess: without the slot, messages are written as rows (and that is logged once);
// with it, they are logical decoding messages the slot's reader receives, and no row is
// written, on the pool and in a caller's transaction, through pgx and database/sql.
func TestTableLess(t *testing.T) {
	t.Parallel()
	cluster := testdb.StartLogicalCluster(t)
	_, st := cluster.Migrated(t)
	_, pool := cluster.Driver(t)
	std, err := stdsql.Open("pgx", cluster.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = std.Close() })
	ctx := context.Background()
	outgoing := func() int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+st.Schema().Qualified(schema.OutgoingTable)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	logger := watermill.NewCaptureLogger()
	cfg := publisher.Config{Schema: st.Schema(), TableLess: true}
	pgxPub, err := publisher.NewPublisher(sql.BeginnerFromPgx(pool), cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	stdPub, err := publisher.NewPublisher(sql.BeginnerFromStdSQL(std), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}

	lc, err := logrepl.Config{Schema: st.Schema().Schema}.Normalized()
	if err != nil {
		t.Fatal(err)
	}

	// No slot yet: rows, and one error log line naming the slot.
	for range 2 {
		if err := pgxPub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("row"))); err != nil {
			t.Fatal(err)
		}
	}
	if n := outgoing(); n != 2 {
		t.Fatalf("%d outgoing rows without a slot, want 2", n)
	}
	if logs := logger.Captured()[watermill.ErrorLogLevel]; len(logs) != 1 || !strings.Contains(logs[0].Msg, "writes rows") || logs[0].Fields["slot"] != lc.Slot {
		t.Fatalf("logged %+v, want one error naming the slot", logs)
	}

	admin, err := logrepl.Dial(ctx, cluster.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	if _, err := logrepl.Setup(ctx, admin, lc); err != nil {
		t.Fatal(err)
	}
	conn, err := logrepl.Dial(ctx, cluster.DSN())
	if err != nil {
		t.Fatal(err)
	}
	r, err := logrepl.Start(ctx, conn, lc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })

	// With the slot: on the pool (pgx), in a caller's transaction (database/sql).
	onPool := message.NewMessage(watermill.NewUUID(), []byte("pool"))
	if err := pgxPub.Publish("orders", onPool); err != nil {
		t.Fatal(err)
	}
	tx, err := std.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	inTx := []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("tx-1")), message.NewMessage(watermill.NewUUID(), []byte("tx-2"))}
	for _, m := range inTx {
		m.SetContext(publisher.WithTx(ctx, sql.TxFromStdSQL(tx)))
	}
	if err := stdPub.Publish("invoices", inTx...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if n := outgoing(); n != 2 {
		t.Fatalf("%d outgoing rows after publishing with the slot, want the 2 of before", n)
	}
	for _, want := range [][]*message.Message{{onPool}, inTx} {
		nctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		got, err := r.Next(nctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Rows) != 0 || len(got.Emitted) != len(want) {
			t.Fatalf("transaction with %d rows and %d emitted envelopes, want %d emitted", len(got.Rows), len(got.Emitted), len(want))
		}
		for i, e := range got.Emitted {
			if e.Err != nil || e.MessageUUID != want[i].UUID || string(e.Body) != string(want[i].Payload) {
				t.Fatalf("emitted %d: uuid %s body %q (%v), want %s %q", i, e.MessageUUID, e.Body, e.Err, want[i].UUID, want[i].Payload)
			}
		}
	}
	// On the pool, undelayed and delayed messages in one Publish: all rows, in one statement.
	mixed := []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("now")), message.NewMessage(watermill.NewUUID(), []byte("later"))}
	delay.Message(mixed[1], delay.For(time.Hour))
	if err := pgxPub.Publish("orders", mixed...); err != nil {
		t.Fatal(err)
	}
	if n := outgoing(); n != 3 {
		t.Fatalf("%d outgoing rows after a mixed Publish on the pool, want 3 (its undelayed message as a row)", n)
	}
	if logs := logger.Captured()[watermill.InfoLogLevel]; len(logs) != 1 || !strings.Contains(logs[0].Msg, "found its replication slot again") {
		t.Fatalf("logged %+v, want one line saying the slot is back", logs)
	}
}

// TableLess is refused where it cannot work, each with one line naming the setting.
func TestTableLessConfig(t *testing.T) {
	for name, c := range map[string]struct {
		cfg  publisher.Config
		hint string
	}{
		"incoming table": {publisher.Config{TableLess: true, Table: publisher.Incoming}, "outgoing messages only"},
		"sql server":     {publisher.Config{TableLess: true, Schema: schema.Config{Dialect: schema.SQLServer}}, "needs PostgreSQL"},
		"bad slot":       {publisher.Config{TableLess: true, TableLessSlot: "Bad-Slot"}, "slot name"},
		"slot alone":     {publisher.Config{TableLessSlot: "wj_outbox_public"}, "TableLess is not"},
	} {
		t.Run(name, func(t *testing.T) {
			err := c.cfg.Validate()
			if !errors.Is(err, publisher.ErrInvalidConfig) || !strings.Contains(err.Error(), c.hint) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Validate: %v, want one line wrapping ErrInvalidConfig and saying %q", err, c.hint)
			}
		})
	}
}
