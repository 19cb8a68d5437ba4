package tracing

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// Without a TracerProvider there is no Tracer: the components skip tracing on a nil check.
func TestNilProviderIsOff(t *testing.T) {
	if tr := New(nil); tr != nil || tr.Enabled() {
		t.Fatalf("New(nil) = %v, want nil (off)", tr)
	}
}

// Inject and Extract round-trip the W3C keys through message metadata; a send span continues
// the metadata's trace, not an unrelated span of the context.
func TestPropagationThroughMetadata(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tr := New(tp)
	msg := message.NewMessage("m-1", []byte("x"))
	msg.Metadata = nil
	ctx, pub := tr.Start(ParentForPublish(msg), Publish, "orders", msg)
	Inject(ctx, msg)
	End(pub, nil)
	if msg.Metadata.Get("traceparent") == "" {
		t.Fatal("no traceparent injected")
	}
	_, unrelated := tp.Tracer("x").Start(context.Background(), "run")
	runCtx := trace.ContextWithSpan(context.Background(), unrelated)
	_, send := tr.Start(ParentForDelivery(runCtx, msg), Send, "orders", msg)
	End(send, nil)
	ended := rec.Ended()
	if got := ended[1].Parent().SpanID(); got != pub.SpanContext().SpanID() {
		t.Fatalf("send span's parent %s, want the publish span %s", got, pub.SpanContext().SpanID())
	}
}
