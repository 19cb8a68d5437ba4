package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// pgHandles are the PostgreSQL handles: these tests write rows with PostgreSQL SQL
// (TestDeadLetterToolsOnEveryDialect covers SQL Server).
func pgHandles(t *testing.T) map[string]database.Driver {
	h := handles(t)
	delete(h, "sqlserver")
	return h
}

// jasperDeadLetter inserts a dead letter as .NET Jasper 2.0 writes it
// (MoveToDeadLetterStorageAsync: Jasper's columns only, raw message bytes in body).
func jasperDeadLetter(t *testing.T, db database.Driver, cfg schema.Config, receivedAt string) uuid.UUID {
	t.Helper()
	id := uuid.New()
	q := fmt.Sprintf(`INSERT INTO %s (id, execution_time, attempts, body, conversation_id, correlation_id, parent_id,
  saga_id, message_type, content_type, reply_requested, ack_requested, reply_uri, received_at, source, explanation,
  exception_text, exception_type, exception_message)
VALUES ($1, NULL, 2, $2, $3, 'corr-9', '00-abc-def-01', 'saga-9', 'OrderPlaced', 'application/json', 'OrderAccepted',
  true, 'rabbitmq://queue/replies', $4, 'billing', 'Exception Detected',
  'System.InvalidOperationException: nope\n   at Billing.Handle()', 'System.InvalidOperationException', 'nope')`,
		cfg.Qualified(schema.DeadLetterTable))
	if _, err := db.Exec(context.Background(), q, id.String(), []byte(`{"id":9}`), "6f9619ff-8b86-d011-b42d-00c04fc964ff", receivedAt); err != nil {
		t.Fatal(err)
	}
	return id
}

type recordingPublisher struct {
	mu   sync.Mutex
	msgs map[string][]*message.Message
	fail string // a message UUID whose publish fails
}

func (p *recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range msgs {
		if m.UUID == p.fail {
			return errors.New("broker down")
		}
		if p.msgs == nil {
			p.msgs = map[string][]*message.Message{}
		}
		p.msgs[topic] = append(p.msgs[topic], m)
	}
	return nil
}
func (p *recordingPublisher) Close() error { return nil }

func count(t *testing.T, db database.Driver, q string, args ...any) int {
	t.Helper()
	var n int64
	if err := database.QueryRow(context.Background(), db, q, args, &n); err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// Rows written by Jasper itself are listed, shown and replayable, both ways.
func TestDeadLettersWrittenByJasper(t *testing.T) {
	t.Parallel()
	for name, db := range pgHandles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			cfg := migrated(t, db)
			durable1 := jasperDeadLetter(t, db, cfg, "local://durable/orders")
			durable2 := jasperDeadLetter(t, db, cfg, "local://durable/orders")
			invoice := jasperDeadLetter(t, db, cfg, "rabbitmq://queue/invoices")

			all, err := admin.ListDeadLetters(ctx, db, cfg, admin.ListOptions{})
			if err != nil || len(all) != 3 {
				t.Fatalf("list: %d rows, %v", len(all), err)
			}
			d := all[0]
			if d.MessageType != "OrderPlaced" || d.Source != "billing" || d.ExceptionType != "System.InvalidOperationException" ||
				d.ExceptionMessage != "nope" || d.Explanation != "Exception Detected" || d.Attempts != 2 || d.BodySize != 8 ||
				d.Body != nil || d.Headers != nil || d.MessageUUID != "" || d.Timestamp == nil {
				t.Errorf("listed %+v", d)
			}
			if n, err := admin.CountDeadLetters(ctx, db, cfg, "local://durable/orders", 0); err != nil || n != 2 {
				t.Errorf("count by topic: %d, %v", n, err)
			}
			if l, _ := admin.ListDeadLetters(ctx, db, cfg, admin.ListOptions{Topic: "rabbitmq://queue/invoices"}); len(l) != 1 || l[0].ID != invoice {
				t.Errorf("list by topic: %+v", l)
			}
			if l, _ := admin.ListDeadLetters(ctx, db, cfg, admin.ListOptions{Limit: 2}); len(l) != 2 {
				t.Errorf("list limit 2: %d rows", len(l))
			}

			got, err := admin.GetDeadLetter(ctx, db, cfg, invoice)
			if err != nil || string(got.Body) != `{"id":9}` || !strings.Contains(got.ExceptionText, "at Billing.Handle()") {
				t.Fatalf("get: %+v, %v", got, err)
			}
			msg, err := got.Message()
			if err != nil {
				t.Fatal(err)
			}
			want := message.Metadata{
				metadata.MessageType: "OrderPlaced", metadata.ContentType: "application/json", metadata.CorrelationID: "corr-9",
				metadata.TraceParent: "00-abc-def-01", metadata.SagaID: "saga-9", metadata.ReplyURI: "rabbitmq://queue/replies",
				metadata.ReplyRequested: "OrderAccepted", metadata.AckRequested: "true",
				metadata.ConversationID: "6f9619ff-8b86-d011-b42d-00c04fc964ff",
			}
			if msg.UUID != invoice.String() || string(msg.Payload) != `{"id":9}` || fmt.Sprint(msg.Metadata) != fmt.Sprint(want) {
				t.Errorf("message %s %q %v", msg.UUID, msg.Payload, msg.Metadata)
			}
			if _, err := admin.GetDeadLetter(ctx, db, cfg, uuid.New()); !errors.Is(err, admin.ErrDeadLetterNotFound) {
				t.Errorf("get unknown id: %v", err)
			}

			// Republished through a publisher, by topic.
			pub := &recordingPublisher{}
			res, err := admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{Topic: "rabbitmq://queue/invoices"}, admin.ReplayOptions{Publisher: pub})
			if err != nil || res.Replayed != 1 || len(pub.msgs["rabbitmq://queue/invoices"]) != 1 || pub.msgs["rabbitmq://queue/invoices"][0].UUID != invoice.String() {
				t.Fatalf("replay via publisher: %+v %v %v", res, pub.msgs, err)
			}

			// Back to the incoming table, all of them, with progress.
			var progress []admin.ReplayProgress
			res, err = admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{All: true},
				admin.ReplayOptions{BatchSize: 1, Progress: func(p admin.ReplayProgress) { progress = append(progress, p) }})
			if err != nil || res.Replayed != 2 || len(res.Skipped) != 0 {
				t.Fatalf("replay to incoming: %+v, %v", res, err)
			}
			if len(progress) != 2 || progress[1].Done != 2 || progress[1].Total != 2 || progress[1].Replayed != 2 {
				t.Errorf("progress %+v", progress)
			}
			inc := cfg.Qualified(schema.IncomingTable)
			for _, id := range []uuid.UUID{durable1, durable2} {
				n := count(t, db, `SELECT count(*) FROM `+inc+` WHERE id = $1 AND status = 'Incoming' AND owner_id = 0 AND attempts = 0
  AND received_at = 'local://durable/orders' AND message_type = 'OrderPlaced' AND body = '{"id":9}'::bytea
  AND correlation_id = 'corr-9' AND ack_requested AND headers IS NULL AND message_uuid IS NULL`, id.String())
				if n != 1 {
					t.Errorf("dead letter %s is not an Incoming envelope of its queue", id)
				}
			}
			if n := count(t, db, "SELECT count(*) FROM "+cfg.Qualified(schema.DeadLetterTable)); n != 0 {
				t.Errorf("%d dead letters left", n)
			}
		})
	}
}

func TestReplaySkipsAndReports(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgHandles(t)["pgx"]
	cfg := migrated(t, db)
	noTopic := jasperDeadLetter(t, db, cfg, "")
	if _, err := db.Exec(ctx, "UPDATE "+cfg.Qualified(schema.DeadLetterTable)+" SET received_at = NULL"); err != nil {
		t.Fatal(err)
	}
	clash := jasperDeadLetter(t, db, cfg, "q")
	if _, err := db.Exec(ctx, "INSERT INTO "+cfg.Qualified(schema.IncomingTable)+" (id, status, owner_id, body, message_type) VALUES ($1, 'Handled', 0, '', 't')", clash.String()); err != nil {
		t.Fatal(err)
	}
	unknown := uuid.New()
	var progress []admin.ReplayProgress
	res, err := admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{IDs: []uuid.UUID{noTopic, clash, unknown}},
		admin.ReplayOptions{BatchSize: 1, Progress: func(p admin.ReplayProgress) { progress = append(progress, p) }})
	if err != nil || res.Replayed != 0 || len(res.Skipped) != 2 || len(res.NotFound) != 1 || res.NotFound[0] != unknown {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	if fmt.Sprint(progress) != "[{1 2 0} {2 2 0}]" {
		t.Errorf("progress of a replay by ids in batches of 1: %+v (2 of the 3 ids are dead letters)", progress)
	}
	// The topic given replaces the missing received_at.
	res, err = admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{IDs: []uuid.UUID{noTopic}}, admin.ReplayOptions{Topic: "orders"})
	if err != nil || res.Replayed != 1 || count(t, db, "SELECT count(*) FROM "+cfg.Qualified(schema.IncomingTable)+" WHERE received_at = 'orders'") != 1 {
		t.Fatalf("replay with a topic: %+v, %v", res, err)
	}
	// A failing publish stops the replay; what was published is deleted, the rest stays.
	a, b := jasperDeadLetter(t, db, cfg, "q2"), jasperDeadLetter(t, db, cfg, "q2")
	ids := []uuid.UUID{a, b}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	pub := &recordingPublisher{fail: ids[1].String()}
	res, err = admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{Topic: "q2"}, admin.ReplayOptions{Publisher: pub})
	if err == nil || !strings.Contains(err.Error(), "broker down") || res.Replayed != 1 {
		t.Fatalf("failing publish: %+v, %v", res, err)
	}
	if n, _ := admin.CountDeadLetters(ctx, db, cfg, "q2", 0); n != 1 {
		t.Errorf("%d dead letters of q2 left, want the unpublished one", n)
	}
	for _, sel := range []admin.ReplaySelection{{}, {All: true, Topic: "x"}, {IDs: []uuid.UUID{a}, All: true}} {
		if _, err := admin.ReplayDeadLetters(ctx, db, cfg, sel, admin.ReplayOptions{}); !errors.Is(err, schema.ErrInvalidConfig) {
			t.Errorf("selection %+v: %v", sel, err)
		}
	}
}

func TestPurgeDeadLetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, db := range pgHandles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := migrated(t, db)
			dlq := cfg.Qualified(schema.DeadLetterTable)
			for range 5 {
				jasperDeadLetter(t, db, cfg, "old")
			}
			if _, err := db.Exec(ctx, `UPDATE `+dlq+` SET "timestamp" = now() - interval '3 days'`); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				jasperDeadLetter(t, db, cfg, "new")
			}
			if n, err := admin.CountDeadLetters(ctx, db, cfg, "", 48*time.Hour); err != nil || n != 5 {
				t.Fatalf("count older than 48h: %d, %v", n, err)
			}
			var reports []int64
			n, err := admin.PurgeDeadLetters(ctx, db, cfg, admin.PurgeOptions{OlderThan: 48 * 3600e9, BatchSize: 2, Progress: func(d int64) { reports = append(reports, d) }})
			if err != nil || n != 5 || fmt.Sprint(reports) != "[2 4 5]" {
				t.Fatalf("purge older than 48h: %d %v %v", n, reports, err)
			}
			if n, err := admin.PurgeDeadLetters(ctx, db, cfg, admin.PurgeOptions{Topic: "elsewhere"}); err != nil || n != 0 {
				t.Fatalf("purge another topic: %d %v", n, err)
			}
			if n, err := admin.PurgeDeadLetters(ctx, db, cfg, admin.PurgeOptions{}); err != nil || n != 3 {
				t.Fatalf("purge all: %d %v", n, err)
			}
		})
	}
}

// A database Jasper created, not migrated: the error says to migrate.
func TestDeadLettersNeedMigratedColumns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgHandles(t)["pgx"]
	cfg := migrated(t, db)
	if _, err := db.Exec(ctx, `ALTER TABLE `+cfg.Qualified(schema.DeadLetterTable)+` DROP COLUMN headers`); err != nil {
		t.Fatal(err)
	}
	_, err := admin.ListDeadLetters(ctx, db, cfg, admin.ListOptions{})
	if err == nil || !strings.Contains(err.Error(), "schema migrate") {
		t.Errorf("list without extension columns: %v", err)
	}
	empty := emptySchema(t, db)
	if _, err := admin.ListDeadLetters(ctx, db, empty, admin.ListOptions{}); !errors.Is(err, admin.ErrTablesMissing) {
		t.Errorf("list without tables: %v", err)
	}
}

// The dead-letter tools on every driver: PostgreSQL through pgx and database/sql, and SQL
// Server when WATERMILL_JASPER_TEST_MSSQL holds a DSN. Dead letters are written and replayed
// envelopes claimed through the store (as the middleware and the subscriber do), so the test
// holds no SQL.
func TestDeadLetterToolsOnEveryDialect(t *testing.T) {
	t.Parallel()
	for name, db := range handles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg := migrated(t, db)
			s, err := db.Store(cfg)
			if err != nil {
				t.Fatal(err)
			}
			write := func(topic string) uuid.UUID {
				id := uuid.New()
				e := row.Envelope{ID: id, Destination: topic, Status: schema.StatusIncoming, Attempts: 3, Body: []byte(`{"n":1}`),
					MessageType: "Ping", ContentType: "application/json", MessageUUID: "msg-" + id.String(),
					Headers: []byte(`{"a":"b","jasper_attempts":"3"}`)}
				r := store.Reason{Explanation: "Handler failed", ExceptionType: "main.Err", ExceptionMessage: "boom",
					ExceptionText: "boom\nstack", Source: "orders-handler"}
				if err := s.InsertDeadLetter(ctx, e, r); err != nil {
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
			var progress []admin.ReplayProgress
			res, err := admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{IDs: []uuid.UUID{c, uuid.New()}},
				admin.ReplayOptions{Publisher: pub, Progress: func(p admin.ReplayProgress) { progress = append(progress, p) }})
			if err != nil || res.Replayed != 1 || len(res.NotFound) != 1 || len(pub.msgs["billing"]) != 1 {
				t.Fatalf("replay by id through a publisher: %+v, %v", res, err)
			}
			if len(progress) != 1 || progress[0] != (admin.ReplayProgress{Done: 1, Total: 1, Replayed: 1}) {
				t.Errorf("progress of a replay by id: %+v (the unknown id is not counted)", progress)
			}
			res, err = admin.ReplayDeadLetters(ctx, db, cfg, admin.ReplaySelection{Topic: "orders"}, admin.ReplayOptions{BatchSize: 1})
			if err != nil || res.Replayed != 2 || len(res.Skipped) != 0 {
				t.Fatalf("replay to incoming: %+v, %v", res, err)
			}
			claimed, err := s.ClaimIncoming(ctx, store.ClaimIncomingParams{Owner: 42, Topic: "orders", Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range claimed {
				var h map[string]string
				_ = json.Unmarshal(e.Headers, &h)
				if (e.ID != a && e.ID != b) || e.Attempts != 0 || len(h) != 1 || h["a"] != "b" {
					t.Errorf("replayed envelope %+v (headers %s)", e, e.Headers)
				}
			}
			if len(claimed) != 2 {
				t.Fatalf("%d replayed envelopes claimable, want 2", len(claimed))
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
