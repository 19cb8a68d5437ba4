package jasper_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// tracedQueue declares a durable RabbitMQ queue with a unique name, deleted when the test ends.
func tracedQueue(t *testing.T) string {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL())
	if err != nil {
		t.Fatalf("RabbitMQ is not reachable at %s (start it with: rabbitmq-server -detached): %v", amqpURL(), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue := testdb.RandomName("wj_trace_")
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
			t.Errorf("delete queue %s: %v", queue, err)
		}
	})
	return queue
}

// One trace from an HTTP request to the handler of the relayed message: the request's span,
// the publish in its business transaction, the forwarder's send to RabbitMQ, the inbox's
// process span of the consumer and the handler's own span, each the parent of the next.
func TestTraceFromRequestThroughRabbitMQToHandler(t *testing.T) {
	t.Parallel()
	queue := tracedQueue(t)
	destination := "rabbitmq://queue/" + queue

	recorder := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tracer := tp.Tracer("tracing_test")

	logger := watermill.NopLogger{}
	toBroker, err := jasperamqp.NewConfirmPublisher(amqpURL(), logger)
	if err != nil {
		t.Fatalf("RabbitMQ at %s (start it with: rabbitmq-server -detached): %v", amqpURL(), err)
	}
	t.Cleanup(func() { _ = toBroker.Close() })

	db, cfg := testdb.Migrated(t)
	pool := testdb.Pool(t)
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema:         cfg.Schema,
		Forwarders:     []forwarder.Config{{Publisher: toBroker}},
		TracerProvider: tp,
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)

	// The consumer: a router on the RabbitMQ queue behind the runtime's inbox.
	inbox, err := rt.Inbox(middleware.InboxConfig{ConsumerName: "traced"})
	if err != nil {
		t.Fatal(err)
	}
	fromBroker, err := amqp.NewSubscriber(jasperamqp.NewSubscriberConfig(amqpURL()), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fromBroker.Close() })
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(inbox.Middleware)
	handled := make(chan string, 1)
	router.AddConsumerHandler("traced", queue, fromBroker, func(msg *message.Message) error {
		_, span := tracer.Start(msg.Context(), "handle order")
		span.End()
		select {
		case handled <- msg.UUID:
		default:
		}
		return nil
	})
	runRouter(t, router)

	// The producer: an HTTP request whose span covers a business transaction that publishes.
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, span := tracer.Start(r.Context(), "POST /orders", trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT 1`); err != nil { // the business write
				return err
			}
			pub, err := rt.TxPublisher(watermillsql.TxFromPgx(tx))
			if err != nil {
				return err
			}
			msg := message.NewMessage("order-1", []byte(`{"order":1}`))
			msg.SetContext(ctx)
			return pub.Publish(destination, msg)
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}))
	t.Cleanup(server.Close)
	resp, err := http.Post(server.URL+"/orders", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /orders: %s", resp.Status)
	}

	select {
	case id := <-handled:
		if id != "order-1" {
			t.Fatalf("handled %q, want order-1", id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the message was not relayed through RabbitMQ and handled within 30s")
	}

	// The inbox's span ends after the handler returns: wait for it.
	want := []string{"POST /orders", "publish " + destination, "send " + destination, "process " + queue, "handle order"}
	var spans map[string]sdktrace.ReadOnlySpan
	deadline := time.Now().Add(10 * time.Second)
	for {
		spans = map[string]sdktrace.ReadOnlySpan{}
		for _, s := range recorder.Ended() {
			spans[s.Name()] = s
		}
		if len(spans) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, name := range want {
		if spans[name] == nil {
			t.Fatalf("no span %q among %v", name, names(spans))
		}
	}
	traceID := spans[want[0]].SpanContext().TraceID()
	for i, name := range want {
		s := spans[name]
		if s.SpanContext().TraceID() != traceID {
			t.Errorf("span %q is in trace %s, want %s (the request's)", name, s.SpanContext().TraceID(), traceID)
		}
		if i == 0 {
			continue
		}
		parent := spans[want[i-1]]
		if s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("span %q has parent %s, want %q (%s)", name, s.Parent().SpanID(), want[i-1], parent.SpanContext().SpanID())
		}
	}

	// Kinds and messaging attributes (OpenTelemetry messaging semantic conventions).
	for name, want := range map[string]struct {
		kind trace.SpanKind
		op   string
		dest string
	}{
		"publish " + destination: {trace.SpanKindProducer, "publish", destination},
		"send " + destination:    {trace.SpanKindProducer, "send", destination},
		"process " + queue:       {trace.SpanKindConsumer, "process", queue},
	} {
		s := spans[name]
		if s.SpanKind() != want.kind {
			t.Errorf("span %q: kind %s, want %s", name, s.SpanKind(), want.kind)
		}
		attrs := map[attribute.Key]string{}
		for _, a := range s.Attributes() {
			attrs[a.Key] = a.Value.Emit()
		}
		for key, value := range map[attribute.Key]string{
			"messaging.system":           "jasper",
			"messaging.operation.type":   want.op,
			"messaging.destination.name": want.dest,
			"messaging.message.id":       "order-1",
		} {
			if attrs[key] != value {
				t.Errorf("span %q: %s = %q, want %q", name, key, attrs[key], value)
			}
		}
	}
	if got := spans["process "+queue].Parent(); !got.IsRemote() {
		t.Errorf("the process span's parent is not remote (extracted from the message metadata): %+v", got)
	}
}

func names(spans map[string]sdktrace.ReadOnlySpan) []string {
	out := make([]string, 0, len(spans))
	for n := range spans {
		out = append(out, fmt.Sprintf("%q", n))
	}
	return out
}

// A durable local queue continues the trace too: publish (incoming table), the subscriber's
// process span from delivery to ack, the inbox's process span inside it, the handler's span.
func TestTraceThroughDurableLocalQueue(t *testing.T) {
	t.Parallel()
	recorder := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tracer := tp.Tracer("tracing_test")

	db, cfg := testdb.Migrated(t)
	rt, err := jasper.NewRuntime(db, jasper.Config{Schema: cfg.Schema, TracerProvider: tp}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)
	queue, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{
		Schema: rt.Schema(), Table: publisher.Incoming, TracerProvider: tp,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := rt.Inbox(middleware.InboxConfig{ConsumerName: "traced-local"})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := rt.Subscriber(subscriber.Config{})
	if err != nil {
		t.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(inbox.Middleware)
	router.AddConsumerHandler("traced-local", "local-orders", sub, func(msg *message.Message) error {
		_, span := tracer.Start(msg.Context(), "handle order")
		span.End()
		return nil
	})
	runRouter(t, router)

	ctx, root := tracer.Start(context.Background(), "place order")
	msg := message.NewMessage("local-order-1", []byte(`{}`))
	msg.SetContext(ctx)
	if err := queue.Publish("local-orders", msg); err != nil {
		t.Fatal(err)
	}
	root.End()

	var ended []sdktrace.ReadOnlySpan
	deadline := time.Now().Add(30 * time.Second)
	for len(ended) < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		ended = recorder.Ended()
	}
	if len(ended) < 5 {
		t.Fatalf("%d spans ended, want 5", len(ended))
	}
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	var handle sdktrace.ReadOnlySpan
	for _, s := range ended {
		byID[s.SpanContext().SpanID()] = s
		if s.Name() == "handle order" {
			handle = s
		}
		if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			t.Errorf("span %q is in another trace", s.Name())
		}
	}
	if handle == nil {
		t.Fatal("no handler span")
	}
	var chain []string // from the handler up to the root
	for s := handle; s != nil; s = byID[s.Parent().SpanID()] {
		chain = append(chain, s.Name())
	}
	want := []string{"handle order", "process local-orders", "process local-orders", "publish local-orders", "place order"}
	if fmt.Sprint(chain) != fmt.Sprint(want) {
		t.Fatalf("parent chain %q, want %q", chain, want)
	}
}
