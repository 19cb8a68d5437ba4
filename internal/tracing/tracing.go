// Package tracing is the OpenTelemetry instrumentation shared by the publisher, the forwarder,
// the subscriber and the inbox middleware: spans named and attributed after the OpenTelemetry
// messaging semantic conventions, and the W3C trace context (traceparent, tracestate) carried
// in Watermill message metadata. A nil *Tracer (no TracerProvider configured) does nothing
// and allocates nothing.
package tracing

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of every span of this library.
const ScopeName = "github.com/watermill-jasper/watermill-jasper"

// System is the value of messaging.system on the spans of this library.
const System = "jasper"

// Operation types (messaging.operation.type) and span name prefixes.
const (
	Publish = "publish" // a message written to a Jasper table (publisher)
	Send    = "send"    // an envelope relayed to the broker (forwarder)
	Process = "process" // a delivered message handled (subscriber, inbox)
)

// Attribute keys of the messaging semantic conventions used here.
const (
	AttrSystem          = "messaging.system"
	AttrOperationType   = "messaging.operation.type"
	AttrOperationName   = "messaging.operation.name"
	AttrDestinationName = "messaging.destination.name"
	AttrMessageID       = "messaging.message.id"
	AttrConversationID  = "messaging.message.conversation_id"
	AttrBodySize        = "messaging.message.body.size"
	AttrConsumerGroup   = "messaging.consumer.group.name"
	AttrErrorType       = "error.type"
)

// propagator reads and writes the W3C keys (traceparent, tracestate) of message metadata.
var propagator = propagation.TraceContext{}

// Tracer starts the spans of one component. The zero of *Tracer (nil) is "tracing off".
type Tracer struct {
	tracer trace.Tracer
}

// New returns a Tracer of tp, or nil when tp is nil.
func New(tp trace.TracerProvider) *Tracer {
	if tp == nil {
		return nil
	}
	return &Tracer{tracer: tp.Tracer(ScopeName)}
}

// Enabled reports whether t starts spans.
func (t *Tracer) Enabled() bool { return t != nil }

// Start starts the span of operation op (Publish, Send or Process) of msg on topic, as a child
// of parent (see ParentForPublish, ParentForDelivery), and returns the span's context.
// Extra attributes (e.g. the consumer group) are added to the semantic ones.
func (t *Tracer) Start(parent context.Context, op, topic string, msg *message.Message, extra ...attribute.KeyValue) (context.Context, trace.Span) {
	kind := trace.SpanKindProducer
	if op == Process {
		kind = trace.SpanKindConsumer
	}
	attrs := make([]attribute.KeyValue, 0, 7+len(extra))
	attrs = append(attrs,
		attribute.String(AttrSystem, System),
		attribute.String(AttrOperationType, op),
		attribute.String(AttrOperationName, op),
		attribute.String(AttrDestinationName, topic),
		attribute.String(AttrMessageID, msg.UUID),
		attribute.Int(AttrBodySize, len(msg.Payload)),
	)
	if c := msg.Metadata.Get("correlation_id"); c != "" {
		attrs = append(attrs, attribute.String(AttrConversationID, c))
	}
	attrs = append(attrs, extra...)
	return t.tracer.Start(parent, op+" "+topic, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
}

// End ends span, recording err (if any) as its error status.
func End(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(attribute.String(AttrErrorType, "_OTHER"))
	}
	span.End()
}

// Inject writes the trace context of ctx's span into msg's metadata (traceparent and, when
// not empty, tracestate), replacing what was there.
func Inject(ctx context.Context, msg *message.Message) {
	if msg.Metadata == nil {
		msg.Metadata = make(message.Metadata)
	}
	delete(msg.Metadata, "tracestate")
	propagator.Inject(ctx, propagation.MapCarrier(msg.Metadata))
}

// Extract returns ctx with the remote span context of msg's metadata, if it has a valid one.
func Extract(ctx context.Context, msg *message.Message) context.Context {
	return propagator.Extract(ctx, propagation.MapCarrier(msg.Metadata))
}

// ParentForPublish is the parent of a publish span: the span of the message's context (the
// business transaction's, e.g. an HTTP request's), else the trace context already in its
// metadata.
func ParentForPublish(msg *message.Message) context.Context {
	ctx := msg.Context()
	if trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	return Extract(ctx, msg)
}

// ParentForDelivery is the parent of a send or process span: the trace context of the
// message's metadata (the producer's), unless the context's span already belongs to that
// trace (a subscriber's process span around the inbox's) or the metadata has none.
func ParentForDelivery(ctx context.Context, msg *message.Message) context.Context {
	remote := Extract(context.Background(), msg)
	rsc := trace.SpanContextFromContext(remote)
	if !rsc.IsValid() {
		return ctx
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && sc.TraceID() == rsc.TraceID() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, rsc)
}
