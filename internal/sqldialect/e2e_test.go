package sqldialect_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// End to end on each database testdb.Targets returns: publisher -> outbox -> forwarder ->
// GoChannel, and publisher (durable local queue) -> subscriber. On SQL Server there are no
// notifications, so both rely on polling.
func TestEndToEndOnEveryDatabase(t *testing.T) {
	t.Parallel()
	for _, tg := range testdb.Targets(t) {
		t.Run(tg.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var exec watermillsql.ContextExecutor
			if tg.Schema.Dialect == schema.SQLServer {
				exec = watermillsql.BeginnerFromStdSQL(testdb.SQLServerDB(t))
			} else {
				exec = watermillsql.BeginnerFromPgx(testdb.Pool(t))
			}
			logger := watermill.NopLogger{}

			// Outbox -> forwarder -> GoChannel.
			gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, logger)
			defer gc.Close()
			out, err := gc.Subscribe(ctx, "orders")
			if err != nil {
				t.Fatal(err)
			}
			fwd, err := forwarder.NewForwarder(tg.DB, forwarder.Config{Schema: tg.Schema, Publisher: gc, PollInterval: 50 * time.Millisecond}, logger)
			if err != nil {
				t.Fatal(err)
			}
			go func() { _ = fwd.Run(ctx) }()
			defer fwd.Close()
			pub, err := publisher.NewPublisher(exec, publisher.Config{Schema: tg.Schema}, logger)
			if err != nil {
				t.Fatal(err)
			}
			sent := map[string]bool{}
			for i := 0; i < 5; i++ {
				m := message.NewMessage(watermill.NewUUID(), []byte(`{"i":1}`))
				m.Metadata.Set("k", "v")
				sent[m.UUID] = true
				if err := pub.Publish("orders", m); err != nil {
					t.Fatal(err)
				}
			}
			for len(sent) > 0 {
				select {
				case m := <-out:
					if !sent[m.UUID] || m.Metadata.Get("k") != "v" || string(m.Payload) != `{"i":1}` {
						t.Fatalf("unexpected message %s %v %q", m.UUID, m.Metadata, m.Payload)
					}
					delete(sent, m.UUID)
					m.Ack()
				case <-ctx.Done():
					t.Fatalf("%d messages not forwarded", len(sent))
				}
			}

			// Durable local queue -> subscriber, with one Nack (redelivered).
			inPub, err := publisher.NewPublisher(exec, publisher.Config{Schema: tg.Schema, Table: publisher.Incoming}, logger)
			if err != nil {
				t.Fatal(err)
			}
			sub, err := subscriber.NewSubscriber(tg.DB, subscriber.Config{Schema: tg.Schema, PollInterval: 50 * time.Millisecond,
				NackBackoff: time.Millisecond}, logger)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			msgs, err := sub.Subscribe(ctx, "jobs")
			if err != nil {
				t.Fatal(err)
			}
			want := message.NewMessage(watermill.NewUUID(), []byte("job"))
			if err := inPub.Publish("jobs", want); err != nil {
				t.Fatal(err)
			}
			nacked := false
			for done := false; !done; {
				select {
				case m := <-msgs:
					if m.UUID != want.UUID {
						t.Fatalf("got %s, want %s", m.UUID, want.UUID)
					}
					if !nacked {
						nacked = true
						m.Nack()
						continue
					}
					m.Ack()
					done = true
				case <-ctx.Done():
					t.Fatalf("message not delivered (nacked: %v)", nacked)
				}
			}
		})
	}
}
