package worker_test

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/outbox"
)

// identifierPatterns match values that must never become metric or span
// attributes: ids, real request paths, tokens and URLs.
var identifierPatterns = map[string]*regexp.Regexp{
	"uuid":         regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`),
	"request path": regexp.MustCompile(`/open-(banking|insurance)/`),
	"url":          regexp.MustCompile(`https?://`),
	"token":        regexp.MustCompile(`(?i)bearer|eyJ[0-9A-Za-z_-]{10,}`),
	"tenant":       regexp.MustCompile(`tenant-[ab]`),
}

func TestTelemetryCarriesNoIdentifiers(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{})

	generator := demo.NewGenerator(61, testTenants)
	events := make([]*outbox.Event, 30)
	for i := range events {
		events[i] = generator.Event()
		events[i].TraceParent = fmt.Sprintf("00-%032x-%016x-01", i+1, i+1)
	}
	appendEvents(t, p, events, func(int) int { return 5 })
	waitSettled(t, p, events)

	// Prometheus text: every label value of every series.
	metrics := scrape(t, p)
	require.Contains(t, metrics, "eventruntime_submit_duration")
	labels := regexp.MustCompile(`\{[^}]*\}`).FindAllString(metrics, -1)
	require.NotEmpty(t, labels)
	for _, set := range labels {
		for name, pattern := range identifierPatterns {
			require.False(t, pattern.MatchString(set), "metric labels %s contain a %s", set, name)
		}
	}

	spans := testSpans.GetSpans()
	require.NotEmpty(t, spans)
	var linked bool
	for _, span := range spans {
		if span.Name == "regulator.report" && len(span.Links) > 0 {
			linked = true
		}
		for _, attr := range span.Attributes {
			value := attr.Value.Emit()
			for name, pattern := range identifierPatterns {
				require.False(t, pattern.MatchString(value), "span %s attribute %s=%q contains a %s",
					span.Name, attr.Key, value, name)
			}
		}
	}
	require.True(t, linked, "the regulator request's span links back to the events' traces")
}
