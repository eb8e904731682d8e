package jobs

import (
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// instruments are the pipeline's metrics. Attributes are low-cardinality:
// ecosystem, outcome, status class or reason class, never an id.
type instruments struct {
	batches           metric.Int64Counter
	discardedItems    metric.Int64Counter
	escalatedItems    metric.Int64Gauge
	unconfiguredItems metric.Int64Gauge
	quarantinedItems  metric.Int64Counter
	rejectedBatches   metric.Int64Counter
	submitDuration    metric.Float64Histogram
	reconcileGaps     metric.Int64Counter
	readBackRecovered metric.Int64Counter
}

func newInstruments() *instruments {
	meter := otel.Meter("github.com/finnest/eventruntime/jobs")
	var i instruments
	i.batches, _ = meter.Int64Counter("eventruntime.submit.batches",
		metric.WithDescription("Export batches that reached a final state, by outcome."))
	i.discardedItems, _ = meter.Int64Counter("eventruntime.report_items.discarded",
		metric.WithDescription("Report items the regulator discarded, by reason class."))
	i.escalatedItems, _ = meter.Int64Gauge("eventruntime.deadline.escalated_items",
		metric.WithDescription("Report items not yet submitted whose business day is close to the regulator's final deadline (D+7)."))
	i.unconfiguredItems, _ = meter.Int64Gauge("eventruntime.flush.unconfigured_items",
		metric.WithDescription("Pending report items of tenants with no enabled configuration for their ecosystem, which no flush seals."))
	i.quarantinedItems, _ = meter.Int64Counter("eventruntime.report_items.quarantined",
		metric.WithDescription("Report items kept back because they failed a check before sending, by reason class."))
	i.rejectedBatches, _ = meter.Int64Counter("eventruntime.submit.rejected_batches",
		metric.WithDescription("Export batches the regulator rejected outright (400, 403, 415 and similar), by status code."))
	i.submitDuration, _ = meter.Float64Histogram("eventruntime.submit.duration",
		metric.WithDescription("Duration of regulator report requests."), metric.WithUnit("s"))
	i.reconcileGaps, _ = meter.Int64Counter("eventruntime.reconcile.gaps",
		metric.WithDescription("Reconciliations that found a gap between captured and accepted items."))
	i.readBackRecovered, _ = meter.Int64Counter("eventruntime.submit.read_back_recovered",
		metric.WithDescription("Report items found at the regulator by read-back after a lost response, so not sent again."))
	return &i
}

var metrics = newInstruments()

func ecosystemAttr(ecosystem string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("ecosystem", ecosystem))
}

func metricAttrs(ecosystem string, attrs ...attribute.KeyValue) metric.AddOption {
	return metric.WithAttributes(append(attrs, attribute.String("ecosystem", ecosystem))...)
}

// discardClass sorts a regulator's discard message into a small fixed set of
// reasons, for metrics and alerts.
func discardClass(message string) string {
	lower := strings.ToLower(message)
	switch {
	case strings.Contains(lower, "old") || strings.Contains(lower, "expired"):
		return "too_old"
	case strings.Contains(lower, "future"):
		return "future_timestamp"
	case strings.Contains(lower, "organi"):
		return "organisation_mismatch"
	case strings.Contains(lower, "endpoint"):
		return "endpoint"
	case strings.Contains(lower, "duplicat"):
		return "duplicate"
	case strings.Contains(lower, "missing") || strings.Contains(lower, "invalid"):
		return "invalid"
	default:
		return "other"
	}
}
