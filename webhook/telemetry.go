package webhook

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// instruments are the package's metrics. Attributes are low-cardinality
// (ecosystem, outcome, status class, reason), never an id or a URL.
type instruments struct {
	attempts     metric.Int64Counter
	attemptTime  metric.Float64Histogram
	deadLetters  metric.Int64Counter
	deliveries   metric.Int64Counter
	fannedOut    metric.Int64Counter
	replayed     metric.Int64Counter
	retries      metric.Int64Counter
	snoozes      metric.Int64Counter
	subsDisabled metric.Int64Counter
}

func newInstruments() *instruments {
	meter := otel.Meter("github.com/finnest/eventruntime/webhook")
	var i instruments
	i.attempts, _ = meter.Int64Counter("eventruntime.webhook.attempts",
		metric.WithDescription("HTTP attempts to customer endpoints, by outcome and status class."))
	i.attemptTime, _ = meter.Float64Histogram("eventruntime.webhook.attempt.duration",
		metric.WithDescription("Duration of HTTP attempts to customer endpoints."), metric.WithUnit("s"))
	i.deadLetters, _ = meter.Int64Counter("eventruntime.webhook.dead_letters",
		metric.WithDescription("Deliveries dead-lettered, by reason."))
	i.deliveries, _ = meter.Int64Counter("eventruntime.webhook.deliveries",
		metric.WithDescription("Deliveries that reached a 2xx response."))
	i.fannedOut, _ = meter.Int64Counter("eventruntime.webhook.fanned_out",
		metric.WithDescription("Deliveries created by the fan-out consumer."))
	i.replayed, _ = meter.Int64Counter("eventruntime.webhook.replayed",
		metric.WithDescription("Deliveries queued again by a replay."))
	i.retries, _ = meter.Int64Counter("eventruntime.webhook.retries",
		metric.WithDescription("Failed attempts that were scheduled to be retried."))
	i.snoozes, _ = meter.Int64Counter("eventruntime.webhook.snoozes",
		metric.WithDescription("Delivery jobs postponed without an attempt, by reason (predecessor, endpoint_busy)."))
	i.subsDisabled, _ = meter.Int64Counter("eventruntime.webhook.subscriptions_disabled",
		metric.WithDescription("Subscriptions disabled by the service because the endpoint answered 410 Gone."))
	return &i
}

var metrics = newInstruments()

func attrs(ecosystem string, extra ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributes(append(extra, attribute.String("ecosystem", ecosystem))...)
}

func count(ctx context.Context, counter metric.Int64Counter, n int64, ecosystem string, extra ...attribute.KeyValue) {
	counter.Add(ctx, n, attrs(ecosystem, extra...))
}

// statusClass returns "2xx" to "5xx" for an HTTP status, or "none" when no
// response arrived.
func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "none"
	}
	return string(rune('0'+status/100)) + "xx"
}

func reasonAttr(reason string) attribute.KeyValue { return attribute.String("reason", reason) }
