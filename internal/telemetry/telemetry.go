// Package telemetry sets up OpenTelemetry for the service: metrics served as
// Prometheus text on /metrics and, when an OTLP endpoint is configured
// through the standard OTEL_EXPORTER_OTLP_* variables, metrics and traces
// exported over OTLP/HTTP. Instruments across the project come from the
// global providers it installs.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprometheus "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Telemetry holds the installed providers.
type Telemetry struct {
	// MetricsHandler serves the metrics as Prometheus text.
	MetricsHandler http.Handler

	// OTLP is true when metrics and traces are also exported over OTLP.
	OTLP bool

	shutdown []func(context.Context) error
}

// Options adjusts Setup.
type Options struct {
	// SpanExporter, when set, receives every span as it ends, as tests need.
	SpanExporter sdktrace.SpanExporter
}

// Setup installs global meter and tracer providers and the W3C trace context
// propagator. Call Shutdown before exit to flush exports.
func Setup(ctx context.Context, serviceName string) (*Telemetry, error) {
	return SetupWith(ctx, serviceName, Options{})
}

// SetupWith is Setup with options.
func SetupWith(ctx context.Context, serviceName string, options Options) (*Telemetry, error) {
	res := resource.NewSchemaless(attribute.String("service.name", serviceName))

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	promExporter, err := otelprometheus.New(otelprometheus.WithRegisterer(registry), otelprometheus.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("create Prometheus exporter: %w", err)
	}
	t := &Telemetry{MetricsHandler: promhttp.HandlerFor(registry, promhttp.HandlerOpts{})}

	meterOptions := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(promExporter)}
	traceOptions := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if options.SpanExporter != nil {
		traceOptions = append(traceOptions, sdktrace.WithSyncer(options.SpanExporter))
	}
	if otlpConfigured() {
		t.OTLP = true
		metricExporter, err := otlpmetrichttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("create OTLP metric exporter: %w", err)
		}
		meterOptions = append(meterOptions,
			sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metricExporter, sdkmetric.WithInterval(30*time.Second))))
		traceExporter, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("create OTLP trace exporter: %w", err)
		}
		traceOptions = append(traceOptions, sdktrace.WithBatcher(traceExporter))
	}

	meterProvider := sdkmetric.NewMeterProvider(meterOptions...)
	tracerProvider := sdktrace.NewTracerProvider(traceOptions...)
	otel.SetMeterProvider(meterProvider)
	otel.SetTracerProvider(tracerProvider)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.shutdown = append(t.shutdown, meterProvider.Shutdown, tracerProvider.Shutdown)
	return t, nil
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	for _, shutdown := range t.shutdown {
		errs = append(errs, shutdown(ctx))
	}
	return errors.Join(errs...)
}

func otlpConfigured() bool {
	for _, name := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if os.Getenv(name) != "" {
			return true
		}
	}
	return false
}
