package telemetry

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// MaxLinks caps the span links a batch span carries, one per traced event.
const MaxLinks = 128

// Tracer returns the project's tracer from the global provider.
func Tracer() trace.Tracer { return otel.Tracer("github.com/finnest/eventruntime") }

// SpanContext parses a W3C traceparent header value. ok is false when it is
// empty or invalid.
func SpanContext(traceParent string) (trace.SpanContext, bool) {
	if traceParent == "" {
		return trace.SpanContext{}, false
	}
	carrier := propagation.MapCarrier{"traceparent": traceParent}
	ctx := propagation.TraceContext{}.Extract(context.Background(), carrier)
	spanContext := trace.SpanContextFromContext(ctx)
	return spanContext, spanContext.IsValid()
}

// Links returns a span link for each valid traceparent, at most MaxLinks,
// so a span that works on a batch points back at each event's trace.
func Links(traceParents []string) []trace.Link {
	var links []trace.Link
	for _, traceParent := range traceParents {
		if len(links) == MaxLinks {
			break
		}
		if spanContext, ok := SpanContext(traceParent); ok {
			links = append(links, trace.Link{SpanContext: spanContext})
		}
	}
	return links
}

// TraceParent returns the W3C traceparent of the span in ctx, or empty.
func TraceParent(ctx context.Context) string {
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	return carrier["traceparent"]
}
