package publisher_test

import (
	"context"
	stdsql "database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/envelope"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/sqlserver"
)

func str(p *string) string {
	if p == nil {
		return "<NULL>"
	}
	return *p
}

func TestPublishCommittedMapsEveryColumn(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		tx, commit, _ := h.begin(t)
		p := h.newPublisher(t, tx, publisher.Config{Schema: cfg})

		conv := uuid.New()
		deliverBy := time.Date(2030, 5, 6, 7, 8, 9, 123456000, time.UTC)
		const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		full := message.NewMessage("full", []byte(`{"order":1}`))
		full.Metadata = message.Metadata{
			metadata.MessageType:    "OrderPlaced",
			"name":                  "ignored.because.explicit",
			metadata.ContentType:    "application/x-protobuf",
			metadata.CorrelationID:  "corr-1",
			metadata.TraceParent:    traceparent,
			metadata.ConversationID: conv.String(),
			metadata.SagaID:         "saga-7",
			metadata.ReplyURI:       "rabbitmq://queue/replies",
			metadata.ReplyRequested: "OrderConfirmed",
			metadata.AckRequested:   "true",
			metadata.DeliverBy:      deliverBy.Format(time.RFC3339Nano),
			"custom":                "value with \"quotes\" and ünïcode",
		}
		cqrs := message.NewMessage("cqrs", []byte(`{}`))
		cqrs.Metadata.Set("name", "shop.OrderShipped") // watermill/components/cqrs marshalers
		bare := message.NewMessage("bare", nil)

		mustPublish(t, p, "orders", full, cqrs, bare)
		if err := commit(); err != nil {
			t.Fatal(err)
		}

		rows := outgoingRows(t, cfg)
		if len(rows) != 3 {
			t.Fatalf("got %d outgoing rows, want 3: %v", len(rows), rows)
		}
		for key, r := range rows {
			uuidStr := strings.TrimSuffix(key, "@orders")
			if r.ID != row.EnvelopeID("orders", uuidStr).String() {
				t.Errorf("%s: id = %s, want EnvelopeID(topic, uuid) %s", key, r.ID, row.EnvelopeID("orders", uuidStr))
			}
			if r.Destination != "orders" || r.OwnerID != 0 || r.Attempts == nil || *r.Attempts != 0 {
				t.Errorf("%s: destination %q owner %d attempts %v, want orders/0/0", key, r.Destination, r.OwnerID, r.Attempts)
			}
		}

		f := rows["full@orders"]
		checks := []struct{ name, got, want string }{
			{"message_type", f.MessageType, "OrderPlaced"},
			{"content_type", str(f.ContentType), "application/x-protobuf"},
			{"correlation_id", str(f.CorrelationID), "corr-1"},
			{"parent_id", str(f.ParentID), traceparent},
			{"conversation_id", str(f.ConversationID), conv.String()},
			{"saga_id", str(f.SagaID), "saga-7"},
			{"reply_uri", str(f.ReplyURI), "rabbitmq://queue/replies"},
			{"reply_requested", str(f.ReplyRequested), "OrderConfirmed"},
			{"message_uuid", str(f.MessageUUID), "full"},
			{"body", string(f.Body), `{"order":1}`},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("full: %s = %q, want %q", c.name, c.got, c.want)
			}
		}
		if f.AckRequested == nil || !*f.AckRequested {
			t.Errorf("full: ack_requested = %v, want true", f.AckRequested)
		}
		if f.DeliverBy == nil || !f.DeliverBy.Equal(deliverBy) {
			t.Errorf("full: deliver_by = %v, want %v", f.DeliverBy, deliverBy)
		}
		var headers map[string]string
		if err := json.Unmarshal([]byte(str(f.Headers)), &headers); err != nil {
			t.Fatalf("full: headers %q: %v", str(f.Headers), err)
		}
		if fmt.Sprint(headers) != fmt.Sprint(map[string]string(full.Metadata)) {
			t.Errorf("full: headers round trip\n got %v\nwant %v", headers, full.Metadata)
		}

		c := rows["cqrs@orders"]
		if c.MessageType != "shop.OrderShipped" || str(c.ContentType) != row.DefaultContentType {
			t.Errorf("cqrs: message_type %q content_type %q, want the CQRS name and %q", c.MessageType, str(c.ContentType), row.DefaultContentType)
		}
		b := rows["bare@orders"]
		if b.MessageType != row.DefaultMessageType || str(b.ContentType) != row.DefaultContentType {
			t.Errorf("bare: message_type %q content_type %q, want the defaults", b.MessageType, str(b.ContentType))
		}
		if b.Headers != nil || b.CorrelationID != nil || b.ParentID != nil || b.ConversationID != nil || b.DeliverBy != nil || b.AckRequested == nil || *b.AckRequested {
			t.Errorf("bare: optional columns should be NULL (ack_requested false): %+v", b)
		}
		if b.Body == nil || len(b.Body) != 0 {
			t.Errorf("bare: body = %v, want empty, not NULL", b.Body)
		}
	})
}

func TestConfiguredDefaults(t *testing.T) {
	_, cfg := testdb.Migrated(t)
	p := newPublisher(t, sql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{
		Schema:   cfg,
		Defaults: publisher.Defaults{MessageType: "my-type", ContentType: "text/plain"},
	})
	mustPublish(t, p, "t", message.NewMessage("m", []byte("x")))
	r := outgoingRows(t, cfg)["m@t"]
	if r.MessageType != "my-type" || str(r.ContentType) != "text/plain" {
		t.Errorf("message_type %q content_type %q, want my-type, text/plain", r.MessageType, str(r.ContentType))
	}
}

func TestRolledBackLeavesNothing(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		tx, _, rollback := h.begin(t)
		p := h.newPublisher(t, tx, publisher.Config{Schema: cfg})
		delayed := message.NewMessage("delayed", nil)
		delay.Message(delayed, delay.For(time.Hour))
		mustPublish(t, p, "orders", append(newMsgs(10, "m"), delayed)...)
		if err := rollback(); err != nil {
			t.Fatal(err)
		}
		wantCounts(t, cfg, 0, 0)
	})
}

func TestPoolPublisherJoinsContextTx(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		p := h.newPublisher(t, h.pool(t), publisher.Config{Schema: cfg})

		// Rolled back: the message went into the context's transaction.
		tx, _, rollback := h.begin(t)
		m := message.NewMessage("in-tx", nil)
		m.SetContext(publisher.WithTx(context.Background(), tx))
		mustPublish(t, p, "orders", m)
		if got, ok := publisher.TxFromContext(m.Context()); !ok || got != sql.ContextExecutor(tx) {
			t.Fatal("TxFromContext does not return the transaction set by WithTx")
		}
		if err := rollback(); err != nil {
			t.Fatal(err)
		}
		wantCounts(t, cfg, 0, 0)

		// Committed.
		tx, commit, _ := h.begin(t)
		m = message.NewMessage("in-tx", nil)
		m.SetContext(publisher.WithTx(context.Background(), tx))
		mustPublish(t, p, "orders", m)
		wantCounts(t, cfg, 0, 0) // not visible before commit
		if err := commit(); err != nil {
			t.Fatal(err)
		}
		wantCounts(t, cfg, 1, 0)

		// No transaction in the context: committed at once.
		mustPublish(t, p, "orders", message.NewMessage("autocommit", nil))
		wantCounts(t, cfg, 2, 0)
	})
}

func TestWithTxNil(t *testing.T) {
	ctx := publisher.WithTx(context.Background(), nil)
	if _, ok := publisher.TxFromContext(ctx); ok {
		t.Error("TxFromContext found a transaction after WithTx(ctx, nil)")
	}
}

func TestThousandMessagesOneStatement(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		tx, commit, _ := h.begin(t)
		ctx := &countingTx{Tx: tx}
		p := h.newPublisher(t, ctx, publisher.Config{Schema: cfg})
		msgs := newMsgs(1000, "m")
		delayed := newMsgs(10, "d")
		for _, m := range delayed {
			delay.Message(m, delay.For(time.Hour))
		}
		mustPublish(t, p, "orders", append(msgs, delayed...)...)
		if n := ctx.statements(); n != 1 {
			t.Errorf("Publish of 1000 + 10 delayed messages sent %d statements, want 1", n)
		}
		if err := commit(); err != nil {
			t.Fatal(err)
		}
		rows := outgoingRows(t, cfg)
		for _, m := range msgs {
			r, ok := rows[m.UUID+"@orders"]
			if !ok || string(r.Body) != string(m.Payload) {
				t.Fatalf("message %s: row %v present=%v", m.UUID, r, ok)
			}
		}
		wantCounts(t, cfg, 1000, 10)
	})
}

func TestLargePublishIsChunkedAtomically(t *testing.T) {
	_, cfg := testdb.Migrated(t)
	n := 65535/len(row.OutgoingColumns) + 100 // two statements

	// In a transaction: several statements, all in it.
	h := handles[0]
	tx, commit, _ := h.begin(t)
	ctx := &countingTx{Tx: tx}
	mustPublish(t, newPublisher(t, ctx, publisher.Config{Schema: cfg}), "big", newMsgs(n, "tx")...)
	if got := ctx.statements(); got != 2 {
		t.Errorf("%d messages sent %d statements, want 2", n, got)
	}
	if err := commit(); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, cfg, n, 0)

	// On a pool: the statements run in a transaction of their own; a failure of the second
	// leaves nothing.
	b := &failingBeginner{Beginner: h.pool(t), failAt: 2}
	err := newPublisher(t, b, publisher.Config{Schema: cfg}).Publish("big", newMsgs(n, "pool")...)
	if !errors.Is(err, errInjected) {
		t.Fatalf("Publish error = %v, want the injected failure", err)
	}
	if b.tx == nil || b.tx.execs.Load() != 2 {
		t.Fatalf("the pool publisher did not run its statements in its own transaction")
	}
	wantCounts(t, cfg, n, 0)

	b.failAt = 0
	mustPublish(t, newPublisher(t, b, publisher.Config{Schema: cfg}), "big", newMsgs(n, "pool")...)
	wantCounts(t, cfg, 2*n, 0)
}

func TestRepublishIsIdempotent(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		p := h.newPublisher(t, h.pool(t), publisher.Config{Schema: cfg})
		m := message.NewMessage("same", []byte("1"))
		mustPublish(t, p, "orders", m)
		mustPublish(t, p, "orders", m)
		mustPublish(t, p, "orders", m, message.NewMessage("same", []byte("2")))
		wantCounts(t, cfg, 1, 0)
		if r := outgoingRows(t, cfg)["same@orders"]; string(r.Body) != "1" {
			t.Errorf("body = %q, want the first publish's", r.Body)
		}
		mustPublish(t, p, "invoices", m) // another topic: another envelope
		wantCounts(t, cfg, 2, 0)

		d := message.NewMessage("later", nil)
		delay.Message(d, delay.For(time.Hour))
		mustPublish(t, p, "orders", d)
		mustPublish(t, p, "orders", d, d)
		wantCounts(t, cfg, 2, 1)
	})
}

func TestPublishErrors(t *testing.T) {
	_, cfg := testdb.Migrated(t)
	p := newPublisher(t, sql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{Schema: cfg})
	ok := message.NewMessage("ok", nil)

	err := p.Publish("orders", ok, nil, ok)
	if !errors.Is(err, publisher.ErrInvalidMessage) || !errors.Is(err, row.ErrInvalidMessage) || !strings.Contains(err.Error(), "message 1 of 3") {
		t.Errorf("nil message: %v", err)
	}
	for _, topic := range []string{"", strings.Repeat("x", 251), "a\x00b", "bad\xff"} {
		if err := p.Publish(topic, ok); !errors.Is(err, publisher.ErrInvalidTopic) {
			t.Errorf("topic %q: error %v, want ErrInvalidTopic", topic, err)
		}
	}
	if err := p.Publish(strings.Repeat("é", 125), ok); err != nil {
		t.Errorf("a 250-byte topic: %v", err)
	}
	bad := message.NewMessage("bad", nil)
	bad.Metadata.Set(metadata.ConversationID, "not-a-uuid")
	if err := p.Publish("orders", ok, bad); !errors.Is(err, row.ErrInvalidMessage) || !strings.Contains(err.Error(), metadata.ConversationID) {
		t.Errorf("bad metadata: %v", err)
	}
	badDelay := message.NewMessage("bad-delay", nil)
	badDelay.Metadata.Set(delay.DelayedUntilKey, "tomorrow")
	if err := p.Publish("orders", badDelay); !errors.Is(err, row.ErrInvalidMessage) {
		t.Errorf("bad delay metadata: %v", err)
	}
	wantCounts(t, cfg, 1, 0) // only the 250-byte topic; nothing of the failed calls
	if err := p.Publish("orders"); err != nil {
		t.Errorf("no messages: %v", err)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := p.Publish("orders", ok); !errors.Is(err, publisher.ErrPublisherClosed) {
		t.Errorf("after Close: %v, want ErrPublisherClosed", err)
	}
}

func TestNewPublisherErrors(t *testing.T) {
	db := sql.BeginnerFromPgx(testdb.Pool(t))
	cases := map[string]struct {
		db  sql.ContextExecutor
		cfg publisher.Config
	}{
		"nil db":        {nil, publisher.Config{}},
		"bad schema":    {db, publisher.Config{Schema: schema.Config{Schema: "no-dashes"}}},
		"bad dialect":   {db, publisher.Config{Schema: schema.Config{Dialect: "oracle"}}},
		"unknown table": {db, publisher.Config{Table: "elsewhere"}},
	}
	for name, c := range cases {
		if _, err := publisher.NewPublisher(c.db, c.cfg, nil); !errors.Is(err, publisher.ErrInvalidConfig) {
			t.Errorf("%s: error %v, want ErrInvalidConfig", name, err)
		}
	}
	if err := (publisher.Config{}).Validate(); err != nil {
		t.Errorf("zero Config: %v", err)
	}
	// A handle whose database can be seen must match the configured dialect; an empty
	// dialect takes the handle's.
	sqlServerCfg := publisher.Config{Schema: schema.Config{Dialect: schema.SQLServer}}
	for name, h := range map[string]sql.ContextExecutor{"pgx pool": db, "pgx stdlib *sql.DB": sql.BeginnerFromStdSQL(testdb.StdDB(t))} {
		if _, err := publisher.NewPublisher(h, sqlServerCfg, nil); !errors.Is(err, publisher.ErrInvalidConfig) || !strings.Contains(err.Error(), "sqlserver") {
			t.Errorf("%s with a SQL Server config: error %v, want ErrInvalidConfig naming the mismatch", name, err)
		}
		if _, err := publisher.NewPublisher(h, publisher.Config{}, nil); err != nil {
			t.Errorf("%s with no dialect: %v", name, err)
		}
	}
	// A *sql.Tx does not show its driver: the configured SQL Server dialect is taken, and SQL
	// Server needs a Driver.
	tx, err := testdb.StdDB(t).Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	const needsDriver = "publisher: SQL Server needs Config.Driver (sqlserver.FromStdSQL(db)) so that its SQL is linked; or take the publisher from the runtime"
	if _, err := publisher.NewPublisher(sql.TxFromStdSQL(tx), sqlServerCfg, nil); !errors.Is(err, publisher.ErrInvalidConfig) || !strings.HasSuffix(err.Error(), needsDriver) || strings.Contains(err.Error(), "\n") {
		t.Errorf("SQL Server without a Driver: error %v, want ErrInvalidConfig ending with %q", err, needsDriver)
	}
	mssql := sqlServerDriver(t)
	p, err := publisher.NewPublisher(sql.TxFromStdSQL(tx), publisher.Config{Driver: mssql}, nil)
	if err != nil {
		t.Errorf("SQL Server Driver on a *sql.Tx: %v", err)
	} else if p.Schema().Dialect != schema.SQLServer || p.Schema().Schema != "dbo" {
		t.Errorf("SQL Server Driver: schema %+v, want the driver's dialect and its default schema", p.Schema())
	}
	// A Driver must match the handle's database and the configured dialect.
	for name, c := range map[string]struct {
		db  sql.ContextExecutor
		cfg publisher.Config
	}{
		"SQL Server Driver on a pgx pool":       {db, publisher.Config{Driver: mssql}},
		"PostgreSQL Driver, SQL Server dialect": {sql.TxFromStdSQL(tx), publisher.Config{Driver: testdb.PgxDriver(t), Schema: sqlServerCfg.Schema}},
		"SQL Server Driver, PostgreSQL dialect": {sql.TxFromStdSQL(tx), publisher.Config{Driver: mssql, Schema: schema.Config{Dialect: schema.Postgres}}},
		"Driver, bad schema":                    {db, publisher.Config{Driver: testdb.PgxDriver(t), Schema: schema.Config{Schema: "no-dashes"}}},
	} {
		if _, err := publisher.NewPublisher(c.db, c.cfg, nil); !errors.Is(err, publisher.ErrInvalidConfig) {
			t.Errorf("%s: error %v, want ErrInvalidConfig", name, err)
		}
	}
}

// sqlServerDriver returns the Driver of a go-mssqldb pool that is never connected.
func sqlServerDriver(t *testing.T) database.Driver {
	t.Helper()
	sdb, err := stdsql.Open("sqlserver", "sqlserver://nobody@127.0.0.1:1?database=none")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sdb.Close() })
	d, err := sqlserver.FromStdSQL(sdb)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A database handle given through dbx.ToWatermill (as the runtime does) shows its dialect
// (and a Driver given so is the publisher's Driver); a transaction given so is bound: the publisher writes in it, whatever the context carries.
func TestDatabaseHandles(t *testing.T) {
	drv, cfg := testdb.Migrated(t)
	ctx := context.Background()
	if _, err := publisher.NewPublisher(dbx.ToWatermill(drv), publisher.Config{Schema: schema.Config{Dialect: schema.SQLServer}}, nil); !errors.Is(err, publisher.ErrInvalidConfig) {
		t.Errorf("SQL Server config on a PostgreSQL database.DB: %v, want ErrInvalidConfig", err)
	}
	mustPublish(t, newPublisher(t, dbx.ToWatermill(drv), publisher.Config{Schema: cfg}), "orders", newMsgs(1, "pool")...)
	wantCounts(t, cfg, 1, 0)

	tx, err := drv.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	p := newPublisher(t, dbx.ToWatermill(tx), publisher.Config{Schema: cfg})
	other, _, _ := pgxBegin(t)
	m := newMsgs(1, "tx")[0]
	m.SetContext(publisher.WithTx(ctx, other))
	mustPublish(t, p, "orders", m)
	var n int
	if err := database.QueryRow(ctx, tx, "SELECT count(*) FROM "+cfg.Qualified(schema.OutgoingTable), nil, &n); err != nil || n != 2 {
		t.Errorf("rows seen in the bound transaction: %d (%v), want 2", n, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, cfg, 1, 0)
}

func TestMissingTablesSayMigrate(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, _ schema.Config) {
		for _, s := range []string{testdb.Schema(t), "no_such_schema_" + h.name} {
			p := h.newPublisher(t, h.pool(t), publisher.Config{Schema: schema.Config{Schema: s}})
			err := p.Publish("orders", message.NewMessage("m", nil))
			if !errors.Is(err, publisher.ErrMissingTables) || !strings.Contains(err.Error(), "watermill-jasper schema migrate") || !strings.Contains(err.Error(), "schema.Migrate") {
				t.Errorf("schema %s: %v", s, err)
			}
		}
	})
}

func TestNotifyOnCommitOnly(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		ch := channels(t, cfg).Outgoing
		l := listen(t, ch)

		// Written but not committed: nothing yet; committed: one notification.
		tx, commit, _ := h.begin(t)
		mustPublish(t, h.newPublisher(t, tx, publisher.Config{Schema: cfg, Notify: publisher.NotifyEveryPublish}), "orders", newMsgs(3, "a")...)
		marker(t, ch, "before-commit")
		if got := l.next(); got != "before-commit" {
			t.Fatalf("got notification %q before the commit", got)
		}
		if err := commit(); err != nil {
			t.Fatal(err)
		}
		if got := l.next(); got != "" {
			t.Fatalf("after commit: notification %q, want the publisher's (empty payload)", got)
		}

		// Rolled back: none.
		tx, _, rollback := h.begin(t)
		mustPublish(t, h.newPublisher(t, tx, publisher.Config{Schema: cfg, Notify: publisher.NotifyEveryPublish}), "orders", newMsgs(3, "b")...)
		if err := rollback(); err != nil {
			t.Fatal(err)
		}
		marker(t, ch, "after-rollback")
		if got := l.next(); got != "after-rollback" {
			t.Fatalf("got notification %q from a rolled back publish", got)
		}

		// Nothing new inserted (re-publish), only scheduled sends, or NotifyNever: none.
		pool := h.newPublisher(t, h.pool(t), publisher.Config{Schema: cfg, Notify: publisher.NotifyEveryPublish})
		mustPublish(t, pool, "orders", newMsgs(3, "a")...)
		later := message.NewMessage("later", nil)
		delay.Message(later, delay.For(time.Hour))
		mustPublish(t, pool, "orders", later)
		quiet := h.newPublisher(t, h.pool(t), publisher.Config{Schema: cfg, Notify: publisher.NotifyNever})
		mustPublish(t, quiet, "orders", newMsgs(3, "c")...)
		marker(t, ch, "quiet")
		if got := l.next(); got != "quiet" {
			t.Fatalf("got notification %q, want none before the marker", got)
		}
		wantCounts(t, cfg, 6, 1)

		// A pool publisher without transaction notifies at once.
		mustPublish(t, pool, "orders", newMsgs(1, "d")...)
		if got := l.next(); got != "" {
			t.Fatalf("autocommit publish: notification %q", got)
		}
	})
}

func TestDelayedMessageBecomesScheduledSend(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		tx, commit, _ := h.begin(t)
		ctx := &countingTx{Tx: tx}
		p := h.newPublisher(t, ctx, publisher.Config{Schema: cfg})

		due := time.Now().UTC().Add(time.Hour).Truncate(time.Second)
		m := message.NewMessage("delayed-1", []byte(`{"remind":true}`))
		m.Metadata.Set("name", "Reminder")
		m.Metadata.Set(metadata.CorrelationID, "corr-9")
		m.Metadata.Set("custom", "x")
		m.Metadata.Set("id", "a metadata key the binary format reserves")
		made := time.Now()
		delay.Message(m, delay.Until(due))
		past := message.NewMessage("past-due", []byte("now"))
		delay.Message(past, delay.Until(time.Now().Add(-time.Minute)))
		before := time.Now().UTC()
		mustPublish(t, p, "reminders", m, past)
		// The due time is the publish time plus the delay components/delay measured when
		// the message was made: never before due, and late by at most the time in between.
		slack := time.Since(made)
		if n := ctx.statements(); n != 1 {
			t.Errorf("mixed Publish sent %d statements, want 1", n)
		}
		if err := commit(); err != nil {
			t.Fatal(err)
		}
		out := outgoingRows(t, cfg)
		if _, ok := out["past-due@reminders"]; len(out) != 1 || !ok {
			t.Fatalf("outgoing rows %v, want only past-due", out)
		}

		var (
			e         row.Envelope
			execution time.Time
		)
		err := testdb.Pool(t).QueryRow(context.Background(), fmt.Sprintf(`SELECT id, owner_id, status, received_at,
  execution_time, attempts, message_type, content_type, correlation_id, message_uuid, body, headers
  FROM %s`, cfg.Qualified(schema.IncomingTable))).Scan(&e.ID, &e.OwnerID, &e.Status, &e.Destination, &execution,
			&e.Attempts, &e.MessageType, &e.ContentType, &e.CorrelationID, &e.MessageUUID, &e.Body, &e.Headers)
		if err != nil {
			t.Fatal(err)
		}
		if e.ID != row.ScheduledEnvelopeID("reminders", m.UUID) || e.OwnerID != 0 || e.Status != "Scheduled" ||
			e.Destination != "local://durable" || !dueWithin(execution, due, slack) || e.Attempts != 0 ||
			e.MessageType != "scheduled-envelope" || e.ContentType != "binary/envelope" ||
			e.CorrelationID != "corr-9" || e.MessageUUID != m.UUID {
			t.Errorf("scheduled row: %+v execution_time %v (due %v)", e, execution, due)
		}

		inner, err := envelope.Decode(e.Body)
		if err != nil {
			t.Fatalf("body does not decode: %v", err)
		}
		if inner.Destination != "reminders" || inner.ID != row.EnvelopeID("reminders", m.UUID).String() ||
			string(inner.Data) != string(m.Payload) || inner.MessageType != "Reminder" ||
			inner.ContentType != row.DefaultContentType || inner.CorrelationID != "corr-9" ||
			inner.ScheduledTime == nil || !inner.ScheduledTime.Equal(execution) ||
			inner.SentAt.Before(before.Add(-time.Second)) || inner.SentAt.After(time.Now().Add(time.Second)) {
			t.Errorf("wrapped envelope: %+v", inner)
		}
		headers := map[string]string{}
		for _, hd := range inner.Headers {
			headers[hd.Key] = hd.Value
		}
		for k, v := range m.Metadata {
			if k == "id" {
				continue // reserved by the binary format; kept in the headers column
			}
			if headers[k] != v {
				t.Errorf("wrapped envelope header %q = %q, want %q", k, headers[k], v)
			}
		}

		topic, back, err := row.UnwrapScheduled(e)
		if err != nil {
			t.Fatal(err)
		}
		if topic != "reminders" || back.UUID != m.UUID || string(back.Payload) != string(m.Payload) ||
			fmt.Sprint(back.Metadata) != fmt.Sprint(m.Metadata) {
			t.Errorf("UnwrapScheduled = %q %s %v %q", topic, back.UUID, back.Metadata, back.Payload)
		}
	})
}

// dueWithin reports whether the stored due time got is due, or at most slack (and the
// microsecond it is rounded up to) later.
func dueWithin(got, due time.Time, slack time.Duration) bool {
	return !got.Before(due) && !got.After(due.Add(slack+time.Microsecond))
}

func TestReleaseDueScheduledSends(t *testing.T) {
	db, cfg := testdb.Migrated(t)
	ctx := context.Background()
	p := newPublisher(t, sql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{Schema: cfg})
	msgs := newMsgs(3, "s")
	for _, m := range msgs {
		m.Metadata.Set("k", m.UUID)
		delay.Message(m, delay.For(time.Hour))
	}
	mustPublish(t, p, "later", msgs...)
	// Make two due.
	if _, err := db.Exec(ctx, fmt.Sprintf(`UPDATE %s SET execution_time = now() - interval '1 second' WHERE message_uuid <> 's-00002'`,
		cfg.Qualified(schema.IncomingTable))); err != nil {
		t.Fatal(err)
	}

	// The durability agent's release: take the due scheduled sends and insert the envelopes
	// they wrap into the outbox, in one transaction.
	st, err := db.Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = st.InTx(ctx, func(ctx context.Context, tx store.Ops) error {
		released, err := tx.TakeDueScheduledSends(ctx, 100)
		if err != nil {
			return err
		}
		if len(released) != 2 {
			return fmt.Errorf("released %d scheduled sends, want 2", len(released))
		}
		var out []row.Envelope
		for _, e := range released {
			topic, msg, err := row.UnwrapScheduled(e)
			if err != nil {
				return err
			}
			o, err := row.FromMessage(topic, msg, row.Defaults{})
			if err != nil {
				return err
			}
			out = append(out, o)
		}
		return tx.InsertEnvelopes(ctx, store.InsertParams{Outgoing: out})
	})
	if err != nil {
		t.Fatal(err)
	}
	wantCounts(t, cfg, 2, 1)
	rowsOut := outgoingRows(t, cfg)
	for _, m := range msgs[:2] {
		r, ok := rowsOut[m.UUID+"@later"]
		if !ok || string(r.Body) != string(m.Payload) || r.ID != row.EnvelopeID("later", m.UUID).String() {
			t.Errorf("released %s: %+v (present %v)", m.UUID, r, ok)
		}
	}
}

// The Incoming table is a durable local queue: incoming rows with received_at = topic,
// status Incoming (or Scheduled with execution_time when delayed), owner 0; committed with the
// transaction and notifying the subscribers of the topic when Notify is set.
func TestIncomingTableIsADurableLocalQueue(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		ch := channels(t, cfg).Incoming
		l := listen(t, ch)
		tx, commit, _ := h.begin(t)
		p := h.newPublisher(t, tx, publisher.Config{Schema: cfg, Table: publisher.Incoming, Notify: publisher.NotifyEveryPublish})
		later := message.NewMessage("later", []byte("l"))
		due := time.Now().UTC().Add(time.Hour).Truncate(time.Second)
		made := time.Now()
		delay.Message(later, delay.Until(due))
		mustPublish(t, p, "local://orders", append(newMsgs(2, "now"), later)...)
		slack := time.Since(made) // see TestDelayedMessageBecomesScheduledSend
		marker(t, ch, "before-commit")
		if got := l.next(); got != "before-commit" {
			t.Fatalf("notification %q before the commit", got)
		}
		wantCounts(t, cfg, 0, 0)
		if err := commit(); err != nil {
			t.Fatal(err)
		}
		if got := l.next(); got != "local://orders" {
			t.Fatalf("after commit: notification %q, want the topic", got)
		}
		rows, err := testdb.Pool(t).Query(context.Background(), "SELECT message_uuid, status, owner_id, received_at, execution_time, message_type FROM "+cfg.Qualified(schema.IncomingTable)+" ORDER BY message_uuid")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var got []string
		for rows.Next() {
			var uuid, status, receivedAt, messageType string
			var owner int32
			var exec *time.Time
			if err := rows.Scan(&uuid, &status, &owner, &receivedAt, &exec, &messageType); err != nil {
				t.Fatal(err)
			}
			if owner != 0 || receivedAt != "local://orders" || messageType != "watermill-message" {
				t.Errorf("%s: owner %d, received_at %q, message_type %q", uuid, owner, receivedAt, messageType)
			}
			switch {
			case uuid == "later" && (status != schema.StatusScheduled || exec == nil || !dueWithin(*exec, due, slack)):
				t.Errorf("delayed message: status %s, execution_time %v, want Scheduled at %v", status, exec, due)
			case uuid != "later" && (status != schema.StatusIncoming || exec != nil):
				t.Errorf("%s: status %s, execution_time %v, want Incoming now", uuid, status, exec)
			}
			got = append(got, uuid)
		}
		if len(got) != 3 {
			t.Fatalf("incoming rows %v, want 3", got)
		}
	})
}

// NotifyCoalesced (the default) notifies at most once per NotifyInterval per schema, across
// the Publishers sharing a Coalescer (typically one per transaction); a Publisher without a
// shared Coalescer coalesces only its own publishes.
func TestNotifyCoalesced(t *testing.T) {
	forEachHandle(t, func(t *testing.T, h handle, cfg schema.Config) {
		ch := channels(t, cfg).Outgoing
		l := listen(t, ch)
		notifies := func(p *publisher.Publisher, prefix string) bool {
			t.Helper()
			mustPublish(t, p, "orders", newMsgs(1, prefix)...)
			marker(t, ch, prefix)
			got := l.next()
			if got == "" {
				if m := l.next(); m != prefix {
					t.Fatalf("after the publisher's notification: %q, want the marker %q", m, prefix)
				}
				return true
			}
			if got != prefix {
				t.Fatalf("notification %q, want the publisher's or the marker %q", got, prefix)
			}
			return false
		}

		shared := publisher.Config{Schema: cfg, NotifyInterval: time.Hour, Coalescer: &publisher.Coalescer{}}
		if !notifies(h.newPublisher(t, h.pool(t), shared), "a") {
			t.Fatal("first publish did not notify")
		}
		if notifies(h.newPublisher(t, h.pool(t), shared), "b") { // another Publisher, same Coalescer
			t.Fatal("second publish within the interval notified")
		}

		// Without a shared Coalescer: each new Publisher notifies on its first publish, then
		// coalesces its own.
		own := publisher.Config{Schema: cfg, NotifyInterval: time.Hour}
		p := h.newPublisher(t, h.pool(t), own)
		if !notifies(p, "c") {
			t.Fatal("a Publisher with its own Coalescer did not notify on its first publish")
		}
		if notifies(p, "d") {
			t.Fatal("a Publisher notified twice within the interval")
		}
		if !notifies(h.newPublisher(t, h.pool(t), own), "e") {
			t.Fatal("a new Publisher without a shared Coalescer did not notify on its first publish")
		}

		// The Incoming table coalesces per topic. A delayed message (a Scheduled row, which
		// subscribers cannot claim yet) notifies nobody and leaves the topic's notification
		// to the next undelayed message.
		inc := shared
		inc.Table = publisher.Incoming
		li := listen(t, channels(t, cfg).Incoming)
		delayed := message.NewMessage("delayed", nil)
		delay.Message(delayed, delay.For(time.Hour))
		mustPublish(t, h.newPublisher(t, h.pool(t), inc), "local://c", delayed)
		marker(t, channels(t, cfg).Incoming, "after the delayed message")
		if n := li.next(); n != "after the delayed message" {
			t.Fatalf("a delayed message notified %q", n)
		}
		for i, topic := range []string{"local://a", "local://a", "local://b", "local://c"} {
			mustPublish(t, h.newPublisher(t, h.pool(t), inc), topic, newMsgs(1, fmt.Sprint("i", i))...)
		}
		marker(t, channels(t, cfg).Incoming, "end")
		var got []string
		for n := li.next(); n != "end"; n = li.next() {
			got = append(got, n)
		}
		if fmt.Sprint(got) != "[local://a local://b local://c]" {
			t.Errorf("incoming notifications %q, want one per topic", got)
		}
	})
}
