package admin_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/sqldialect"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// The dead-letter tools on every handle: PostgreSQL through pgx and database/sql, and SQL
// Server when WATERMILL_JASPER_TEST_MSSQL holds a DSN. Dead letters are written with the
// dialect's own statement (as the middleware writes them), so the test holds no SQL.
func TestDeadLetterToolsOnEveryDialect(t *testing.T) {
	t.Parallel()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg, err := migrated(t, db).Normalized()
			if err != nil {
				t.Fatal(err)
			}
			d, err := sqldialect.For(cfg)
			if err != nil {
				t.Fatal(err)
			}
			write := func(topic string) uuid.UUID {
				id := uuid.New()
				e := row.Envelope{ID: id, Destination: topic, Status: schema.StatusIncoming, Attempts: 3, Body: []byte(`{"n":1}`),
					MessageType: "Ping", ContentType: "application/json", MessageUUID: "msg-" + id.String(),
					Headers: []byte(`{"a":"b","jasper_attempts":"3"}`)}
				args := append(e.IncomingArgs(nil, d.UUIDs()), "Handler failed", "main.Err", "boom", "boom\nstack", "orders-handler")
				if _, err := db.Exec(ctx, d.InsertDeadLetter(), args...); err != nil {
					t.Fatal(err)
				}
				return id
			}
			a, b, c := write("orders"), write("orders"), write("billing")

			all, err := admin.ListDeadLetters(ctx, db, cfg, admin.ListOptions{})
			if err != nil || len(all) != 3 {
				t.Fatalf("list: %d, %v", len(all), err)
			}
			if l, err := admin.ListDeadLetters(ctx, db, cfg, admin.ListOptions{Topic: "billing", Limit: -1}); err != nil || len(l) != 1 || l[0].ID != c || l[0].BodySize != 7 {
				t.Fatalf("list by topic: %+v, %v", l, err)
			}
			if n, err := admin.CountDeadLetters(ctx, db, cfg, "orders", 0); err != nil || n != 2 {
				t.Fatalf("count: %d, %v", n, err)
			}
			got, err := admin.GetDeadLetter(ctx, db, cfg, a)
			if err != nil || got.ID != a || string(got.Body) != `{"n":1}` || got.ExceptionMessage != "boom" || got.Attempts != 3 ||
				got.Headers["a"] != "b" || got.Source != "orders-handler" || got.Timestamp == nil {
				t.Fatalf("get: %+v, %v", got, err)
			}

			pub := &recordingPublisher{}
			res, err := admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{IDs: []uuid.UUID{c, uuid.New()}}, admin.ReplayOptions{Publisher: pub})
			if err != nil || res.Replayed != 1 || len(res.NotFound) != 1 || len(pub.msgs["billing"]) != 1 {
				t.Fatalf("replay by id through a publisher: %+v, %v", res, err)
			}
			res, err = admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{Topic: "orders"}, admin.ReplayOptions{BatchSize: 1})
			if err != nil || res.Replayed != 2 || len(res.Skipped) != 0 {
				t.Fatalf("replay to incoming: %+v, %v", res, err)
			}
			claimed := 0
			rows, err := db.Query(ctx, d.ClaimIncoming(), int32(42), "orders", 10)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				e, err := row.ScanIncoming(rows, d.UUIDs())
				if err != nil {
					t.Fatal(err)
				}
				var h map[string]string
				_ = json.Unmarshal(e.Headers, &h)
				if (e.ID != a && e.ID != b) || e.Attempts != 0 || len(h) != 1 || h["a"] != "b" {
					t.Errorf("replayed envelope %+v (headers %s)", e, e.Headers)
				}
				claimed++
			}
			_ = rows.Close()
			if claimed != 2 {
				t.Fatalf("%d replayed envelopes claimable, want 2", claimed)
			}

			write("old")
			if n, err := admin.PurgeDeadLetters(ctx, db, cfg, admin.PurgeOptions{OlderThan: time.Hour}); err != nil || n != 0 {
				t.Fatalf("purge older than an hour: %d, %v", n, err)
			}
			if n, err := admin.PurgeDeadLetters(ctx, db, cfg, admin.PurgeOptions{Topic: "old"}); err != nil || n != 1 {
				t.Fatalf("purge: %d, %v", n, err)
			}
		})
	}
}
