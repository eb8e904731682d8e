package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator/ofb"
)

// InstrumentationName is the name of the package's OpenTelemetry meter.
const InstrumentationName = "github.com/finnest/eventruntime/outbox/capture"

// Defaults of Config.
const (
	DefaultMaxBufferedBytes = 1 << 20
	DefaultPersistTimeout   = 5 * time.Second
)

// Capture durability settings, the values of tenant_config.capture_durability.
const (
	DurabilityFailClosed = "fail_closed"
	DurabilityFailOpen   = "fail_open"
)

// EventWriter persists one event and returns nil only once it is durable.
// *outbox.Writer implements it with group commit.
type EventWriter interface {
	Write(ctx context.Context, event *outbox.Event) error
}

// DurabilityLookup returns a tenant's capture durability,
// DurabilityFailClosed or DurabilityFailOpen. *TenantDurability implements it
// over tenant_config.
type DurabilityLookup interface {
	CaptureDurability(ctx context.Context, tenantID, ecosystem string) string
}

// ServerParties identifies the two organisations of a call this platform
// served, and the tenant it belongs to.
type ServerParties struct {
	// ClientOrgID is the calling participant's organisation id, usually read
	// from its transport certificate.
	ClientOrgID string

	// ServerOrgID is the tenant's own organisation id.
	ServerOrgID string

	// TenantID is the tenant that served the call.
	TenantID string
}

// ServerResolver returns the parties of a served call. ok is false when the
// request belongs to no tenant; such calls are counted and logged as
// unattributed, and not reported.
type ServerResolver func(r *http.Request) (parties ServerParties, ok bool)

// Config configures a Recorder.
type Config struct {
	// Allowlist maps real paths to the regulator's endpoint templates. Nil
	// means ofb.PrivateReportsAllowlist().
	Allowlist *ofb.Allowlist

	// Durability returns each tenant's capture durability. The middleware
	// reads it at the start of each captured call, so the lookup should
	// cache. Nil means DurabilityFailClosed for every tenant.
	Durability DurabilityLookup

	// Ecosystem is the ecosystem of every captured event. Empty means
	// outbox.EcosystemOFB.
	Ecosystem string

	// Logger receives capture failures, unmatched and unattributed calls.
	// Nil discards them.
	Logger *slog.Logger

	// MaxBufferedBytes is how much of a response body the middleware holds
	// back while the capture is not yet durable. A larger body makes it
	// persist the capture at that point, before the first byte is sent.
	// Zero means DefaultMaxBufferedBytes.
	MaxBufferedBytes int

	// Meter creates the OpenTelemetry instruments. Nil means
	// otel.Meter(InstrumentationName).
	Meter metric.Meter

	// OnResult, when set, is called after each capture attempt, before the
	// response is released. Tests use it to learn which captures were
	// reported durable.
	OnResult func(Result)

	// PersistTimeout bounds how long a request waits for its capture to
	// become durable. Zero means DefaultPersistTimeout.
	PersistTimeout time.Duration

	// ResolveServer returns the parties of a served call. Required by
	// Middleware.
	ResolveServer ServerResolver

	// Writer persists the captured events. Required.
	Writer EventWriter
}

// Result is the outcome of one capture attempt.
type Result struct {
	// Err is nil when the event is durable in the outbox.
	Err error

	// Event is the captured event with its ID set, or nil when the event
	// could not be built.
	Event *outbox.Event

	// Interaction is the event's payload.
	Interaction outbox.Interaction
}

// Stats counts capture outcomes since the Recorder was created.
type Stats struct {
	// Captured counts events that are durable in the outbox.
	Captured int64

	// ClientNoResponse counts outgoing calls that failed without a response
	// and without a timeout. They are not reported.
	ClientNoResponse int64

	// PersistFailures counts captures that could not be made durable.
	PersistFailures int64

	// Rejected counts served calls whose response was replaced by 503
	// because the tenant's capture durability is fail_closed.
	Rejected int64

	// Unattributed counts calls to a listed endpoint that belong to no
	// tenant.
	Unattributed int64

	// UnmatchedRoutes counts calls whose path matches no listed endpoint.
	UnmatchedRoutes int64
}

// Recorder captures calls to and from regulated APIs as
// outbox.TypeInteractionRecorded events. Middleware captures served calls and
// Transport captures outgoing ones. A Recorder is safe for concurrent use.
type Recorder struct {
	allowlist        *ofb.Allowlist
	durability       DurabilityLookup
	ecosystem        string
	logger           *slog.Logger
	maxBufferedBytes int
	onResult         func(Result)
	persistTimeout   time.Duration
	resolveServer    ServerResolver
	writer           EventWriter

	captured         atomic.Int64
	clientNoResponse atomic.Int64
	persistFailures  atomic.Int64
	rejected         atomic.Int64
	unattributed     atomic.Int64
	unmatched        atomic.Int64

	instruments  instruments
	unmatchedLog rateLimitedLog
}

// instruments are the OpenTelemetry counters and the persist-duration
// histogram. Their attributes are the role and the ecosystem, never an id.
type instruments struct {
	captured        metric.Int64Counter
	persistDuration metric.Float64Histogram
	persistFailures metric.Int64Counter
	rejected        metric.Int64Counter
	unattributed    metric.Int64Counter
	unmatched       metric.Int64Counter
}

// New returns a Recorder. It fails when Writer is missing or an instrument
// cannot be created.
func New(cfg Config) (*Recorder, error) {
	if cfg.Writer == nil {
		return nil, errors.New("capture: Config.Writer is required")
	}
	if cfg.Allowlist == nil {
		cfg.Allowlist = ofb.PrivateReportsAllowlist()
	}
	if cfg.Ecosystem == "" {
		cfg.Ecosystem = outbox.EcosystemOFB
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBufferedBytes <= 0 {
		cfg.MaxBufferedBytes = DefaultMaxBufferedBytes
	}
	if cfg.Meter == nil {
		cfg.Meter = otel.Meter(InstrumentationName)
	}
	if cfg.PersistTimeout <= 0 {
		cfg.PersistTimeout = DefaultPersistTimeout
	}

	r := &Recorder{
		allowlist:        cfg.Allowlist,
		durability:       cfg.Durability,
		ecosystem:        cfg.Ecosystem,
		logger:           cfg.Logger,
		maxBufferedBytes: cfg.MaxBufferedBytes,
		onResult:         cfg.OnResult,
		persistTimeout:   cfg.PersistTimeout,
		resolveServer:    cfg.ResolveServer,
		writer:           cfg.Writer,
		unmatchedLog:     rateLimitedLog{every: 10 * time.Second},
	}
	if err := r.instruments.create(cfg.Meter); err != nil {
		return nil, err
	}
	return r, nil
}

func (i *instruments) create(meter metric.Meter) error {
	var errs []error
	counter := func(name, description string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithDescription(description), metric.WithUnit("{call}"))
		errs = append(errs, err)
		return c
	}
	i.captured = counter("eventruntime.capture.captured",
		"Captured calls whose event is durable in the outbox.")
	i.persistFailures = counter("eventruntime.capture.persist_failures",
		"Captured calls whose event could not be made durable.")
	i.rejected = counter("eventruntime.capture.rejected",
		"Served calls answered with 503 because their capture failed and the tenant is fail_closed.")
	i.unattributed = counter("eventruntime.capture.unattributed",
		"Calls to a listed endpoint that belong to no tenant, not reported.")
	i.unmatched = counter("eventruntime.capture.unmatched_routes",
		"Calls whose path matches no endpoint of the allow-list, not reported.")
	var err error
	i.persistDuration, err = meter.Float64Histogram("eventruntime.capture.persist.duration",
		metric.WithDescription("Time a call waited for its capture to become durable."), metric.WithUnit("s"))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("capture: create OpenTelemetry instruments: %w", err)
	}
	return nil
}

// Stats returns the counters.
func (r *Recorder) Stats() Stats {
	return Stats{
		Captured:         r.captured.Load(),
		ClientNoResponse: r.clientNoResponse.Load(),
		PersistFailures:  r.persistFailures.Load(),
		Rejected:         r.rejected.Load(),
		Unattributed:     r.unattributed.Load(),
		UnmatchedRoutes:  r.unmatched.Load(),
	}
}

// newEvent builds the outbox event of an interaction. Its id is generated
// here so that a failure can be logged with it.
func (r *Recorder) newEvent(ctx context.Context, tenantID string, interaction *outbox.Interaction,
	header http.Header) (*outbox.Event, error) {
	payload, err := json.Marshal(interaction)
	if err != nil {
		return nil, fmt.Errorf("encode interaction: %w", err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("generate event id: %w", err)
	}
	return &outbox.Event{
		ID:          id,
		TenantID:    tenantID,
		Ecosystem:   r.ecosystem,
		Type:        outbox.TypeInteractionRecorded,
		Version:     1,
		AggregateID: interaction.FAPIInteractionID,
		Payload:     payload,
		TraceParent: traceParent(ctx, header),
		OccurredAt:  interaction.Timestamp,
	}, nil
}

// persist writes the interaction's event and counts and logs the outcome. It
// returns nil only when the event is durable.
func (r *Recorder) persist(ctx context.Context, tenantID string, interaction *outbox.Interaction,
	header http.Header) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.persistTimeout)
	defer cancel()
	attributes := metricRole(interaction.Role, r.ecosystem)

	started := time.Now()
	event, err := r.newEvent(ctx, tenantID, interaction, header)
	if err == nil {
		err = r.writer.Write(ctx, event)
	}
	r.instruments.persistDuration.Record(ctx, time.Since(started).Seconds(), attributes)

	if err != nil {
		r.persistFailures.Add(1)
		r.instruments.persistFailures.Add(ctx, 1, attributes)
		var eventID any
		if event != nil {
			eventID = event.ID
		}
		r.logger.Error("capture not persisted", "event", "capture.persist_failed", "event_id", eventID,
			"tenant_id", tenantID, "role", interaction.Role, "endpoint", interaction.Endpoint, "error", err)
	} else {
		r.captured.Add(1)
		r.instruments.captured.Add(ctx, 1, attributes)
	}
	if r.onResult != nil {
		r.onResult(Result{Err: err, Event: event, Interaction: *interaction})
	}
	return err
}

// metricRole returns the attributes of every capture measurement. They
// never include an id.
func metricRole(role, ecosystem string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("role", role), attribute.String("ecosystem", ecosystem))
}

// failClosed reports whether a failed capture of tenantID must fail the call.
// Without a DurabilityLookup every tenant is fail_closed.
func (r *Recorder) failClosed(ctx context.Context, tenantID string) bool {
	if r.durability == nil {
		return true
	}
	return r.durability.CaptureDurability(ctx, tenantID, r.ecosystem) != DurabilityFailOpen
}

// traceParent returns the W3C traceparent of the span in ctx, or else of the
// request's traceparent header, or else "".
func traceParent(ctx context.Context, header http.Header) string {
	spanContext := trace.SpanContextFromContext(ctx)
	if !spanContext.IsValid() && header != nil {
		spanContext = trace.SpanContextFromContext(
			propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier(header)))
	}
	if !spanContext.IsValid() {
		return ""
	}
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), spanContext), carrier)
	return carrier.Get("traceparent")
}

// processTimespan returns elapsed in whole milliseconds, at least 1, because
// the regulator requires processTimespan > 0.
func processTimespan(elapsed time.Duration) int64 {
	return max(1, elapsed.Milliseconds())
}

// rateLimitedLog lets one line through per period and counts the others.
type rateLimitedLog struct {
	every      time.Duration
	mu         sync.Mutex
	last       time.Time
	suppressed int64
}

// allow reports whether to log now, and how many lines were suppressed since
// the last one.
func (l *rateLimitedLog) allow(now time.Time) (ok bool, suppressed int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return false, 0
	}
	suppressed = l.suppressed
	l.last = now
	l.suppressed = 0
	return true, suppressed
}
