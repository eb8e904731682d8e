package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/finnest/eventruntime/sequin"
)

// observation is one reading of the pipeline's backlogs, taken by the
// observer every ObserveEvery.
type observation struct {
	at            time.Time
	consumerLag   map[string]int64
	oldestAge     map[string]float64
	heartbeatAge  float64
	outboxDepth   int64
	slot          sequin.SlotStatus
	slotErr       error
	takenAtLeast1 bool
}

// observer samples slot lag, consumer lag, outbox depth and the age of the
// oldest unsubmitted item on a timer, so metric scrapes and the slot check
// of /readyz read the last sample instead of querying the database.
type observer struct {
	consumers []*Consumer
	every     time.Duration
	logger    *slog.Logger
	pool      *pgxpool.Pool
	slot      *sequin.SlotMonitor

	mu      sync.Mutex
	last    observation
	samples int
}

func (o *observer) latest() observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last
}

func (o *observer) run(ctx context.Context) {
	o.sample(ctx)
	ticker := time.NewTicker(o.every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			o.sample(ctx)
		}
	}
}

func (o *observer) sample(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, o.every)
	defer cancel()
	next := observation{at: time.Now(), consumerLag: map[string]int64{}, oldestAge: map[string]float64{},
		takenAtLeast1: true}

	if o.slot != nil {
		next.slot, next.slotErr = o.slot.Sample(ctx)
	}
	for _, consumer := range o.consumers {
		info, err := consumer.consumer.Info(ctx)
		if err != nil {
			continue
		}
		next.consumerLag[consumer.cfg.Name] = int64(info.NumPending) + int64(info.NumAckPending)
	}

	// Outbox depth: events of the last 15 minutes that the regulator
	// consumer has not recorded yet. Older unrecorded events are re-drive's
	// business. The query scans recent outbox rows, so it runs only every
	// sixth sample and the last value is kept in between.
	o.samples++
	next.outboxDepth = o.last.outboxDepth
	if o.samples%6 == 1 {
		err := o.pool.QueryRow(ctx, `
			SELECT count(*) FROM outbox o
			WHERE o.created_at > now() - interval '15 minutes'
			  AND NOT EXISTS (SELECT 1 FROM consumer_idempotency c WHERE c.consumer = 'regulator' AND c.event_id = o.id)`).
			Scan(&next.outboxDepth)
		if err != nil && ctx.Err() == nil {
			o.logger.Warn("outbox depth not measured", "event", "observer.query_failed", "error", err)
		}
	}

	// Heartbeat age: how long ago the newest heartbeat that the regulator
	// consumer recorded was appended.
	var heartbeatAge *float64
	if err := o.pool.QueryRow(ctx, `
		SELECT extract(epoch FROM now() - max(o.created_at))::float8 FROM outbox o
		WHERE o.tenant_id = '_heartbeat' AND o.created_at > now() - interval '1 day'
		  AND EXISTS (SELECT 1 FROM consumer_idempotency c WHERE c.consumer = 'regulator' AND c.event_id = o.id)`).
		Scan(&heartbeatAge); err == nil && heartbeatAge != nil {
		next.heartbeatAge = *heartbeatAge
	}

	// Oldest unsubmitted item per deadline window: due (reported before
	// today in the regulator's zone, so its D+1 deadline is today or past),
	// current (reported today) and final (older than six days, near the
	// 7-day limit).
	rows, err := o.pool.Query(ctx, `
		SELECT window_name, extract(epoch FROM now() - min(reported_at))::float8
		FROM (
			SELECT reported_at,
			       CASE WHEN reported_at < now() - interval '6 days' THEN 'final'
			            WHEN (reported_at AT TIME ZONE 'America/Sao_Paulo')::date
			                 < (now() AT TIME ZONE 'America/Sao_Paulo')::date THEN 'due'
			            ELSE 'current' END AS window_name
			FROM report_items WHERE state IN ('pending', 'batched')) i
		GROUP BY window_name`)
	if err == nil {
		for rows.Next() {
			var window string
			var age float64
			if rows.Scan(&window, &age) == nil {
				next.oldestAge[window] = age
			}
		}
		rows.Close()
	}

	o.mu.Lock()
	o.last = next
	o.mu.Unlock()
}

// registerObserverMetrics exposes the observer's readings as gauges.
func registerObserverMetrics(o *observer) error {
	meter := otel.Meter("github.com/finnest/eventruntime/worker")
	depth, err1 := meter.Int64ObservableGauge("eventruntime.outbox.depth",
		metric.WithDescription("Interaction events of the last day not yet recorded by the regulator consumer."))
	lag, err2 := meter.Int64ObservableGauge("eventruntime.consumer.lag",
		metric.WithDescription("Messages pending or unacknowledged on a durable consumer."))
	retained, err3 := meter.Int64ObservableGauge("eventruntime.replication_slot.retained_bytes",
		metric.WithDescription("WAL the outbox replication slot keeps on disk."), metric.WithUnit("By"))
	confirmedLag, err4 := meter.Int64ObservableGauge("eventruntime.replication_slot.confirmed_lag_bytes",
		metric.WithDescription("WAL written after the slot's confirmed position."), metric.WithUnit("By"))
	confirmedAge, err5 := meter.Float64ObservableGauge("eventruntime.replication_slot.confirmed_age",
		metric.WithDescription("Time the slot's confirmed position has not moved while WAL was written."),
		metric.WithUnit("s"))
	slotHealthy, err6 := meter.Int64ObservableGauge("eventruntime.replication_slot.healthy",
		metric.WithDescription("1 when the slot exists and its WAL is reserved or extended; 0 when it is missing, unreserved or lost."))
	oldest, err7 := meter.Float64ObservableGauge("eventruntime.report_items.oldest_unsubmitted_age",
		metric.WithDescription("Age of the oldest report item not yet submitted, by deadline window."),
		metric.WithUnit("s"))
	heartbeat, err8 := meter.Float64ObservableGauge("eventruntime.transport.heartbeat_age",
		metric.WithDescription("Time since the newest heartbeat event that reached the regulator consumer was appended; it grows when the CDC path is broken."),
		metric.WithUnit("s"))
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7, err8); err != nil {
		return err
	}
	_, err := meter.RegisterCallback(func(_ context.Context, observer metric.Observer) error {
		reading := o.latest()
		if !reading.takenAtLeast1 {
			return nil
		}
		observer.ObserveInt64(depth, reading.outboxDepth)
		if reading.heartbeatAge > 0 {
			observer.ObserveFloat64(heartbeat, reading.heartbeatAge)
		}
		for name, value := range reading.consumerLag {
			observer.ObserveInt64(lag, value, metric.WithAttributes(attribute.String("consumer", name)))
		}
		for window, age := range reading.oldestAge {
			observer.ObserveFloat64(oldest, age, metric.WithAttributes(attribute.String("window", window)))
		}
		if o.slot != nil {
			healthy := int64(0)
			if reading.slotErr == nil && (reading.slot.WALStatus == "reserved" || reading.slot.WALStatus == "extended") {
				healthy = 1
			}
			observer.ObserveInt64(slotHealthy, healthy)
			if reading.slotErr == nil {
				observer.ObserveInt64(retained, reading.slot.RetainedBytes)
				observer.ObserveInt64(confirmedLag, reading.slot.ConfirmedLagBytes)
				observer.ObserveFloat64(confirmedAge, reading.slot.ConfirmedAge.Seconds())
			}
		}
		return nil
	}, depth, lag, retained, confirmedLag, confirmedAge, slotHealthy, oldest, heartbeat)
	return err
}
