package worker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/finnest/eventruntime/outbox"
)

// Re-drive defaults.
const (
	// DefaultRedriveAfter is how old an outbox event must be before a
	// consumer that has not recorded it is taken to have lost it. It must
	// exceed the longest time an event spends between commit and consumer
	// under normal load.
	DefaultRedriveAfter = 2 * time.Minute

	// DefaultRedriveLookback is how far back the first pass of a consumer
	// checks when it has no watermark yet.
	DefaultRedriveLookback = 24 * time.Hour

	redriveBatchSize = 1000
)

// RedriveArgs requests one re-drive pass over every durable consumer.
type RedriveArgs struct{}

// Kind returns the job kind.
func (RedriveArgs) Kind() string { return "redrive" }

// InsertOpts puts re-drive jobs on the control queue.
func (RedriveArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: "control"} }

// redriveTarget is a consumer that re-drive feeds: its name and the handler
// its batches go through.
type redriveTarget struct {
	consumer *Consumer
	name     string
	handler  BatchHandler
}

// RedriveWorker finds outbox events that a durable consumer never recorded,
// because the CDC connector publishes without acknowledgement and a message
// can be lost between it and JetStream, and feeds them to the consumer's
// handler as if they had arrived. Each one is counted as a transport loss.
type RedriveWorker struct {
	river.WorkerDefaults[RedriveArgs]

	// After is how old an unrecorded event must be. Zero means
	// DefaultRedriveAfter.
	After time.Duration

	Logger *slog.Logger
	Pool   *pgxpool.Pool

	lost    metric.Int64Counter
	targets []redriveTarget
}

func newRedriveWorker(logger *slog.Logger, pool *pgxpool.Pool, after time.Duration) *RedriveWorker {
	lost, _ := otel.Meter("github.com/finnest/eventruntime/worker").Int64Counter("eventruntime.transport.lost_events",
		metric.WithDescription("Outbox events a durable consumer never received from NATS and re-drive delivered."))
	return &RedriveWorker{After: after, Logger: logger, Pool: pool, lost: lost}
}

// Work runs one pass for every consumer.
func (w *RedriveWorker) Work(ctx context.Context, job *river.Job[RedriveArgs]) error {
	after := w.After
	if after == 0 {
		after = DefaultRedriveAfter
	}
	for _, target := range w.targets {
		for {
			more, err := w.pass(ctx, target, after)
			if err != nil {
				return fmt.Errorf("re-drive for consumer %s: %w", target.name, err)
			}
			if !more {
				break
			}
		}
	}
	return nil
}

// streamHorizon returns when the oldest message the consumer has not yet
// acknowledged was stored in the stream, or the zero time when it has none.
// An event created before that, less the re-drive age, would already have
// been consumed had it reached the stream, so during a backlog re-drive
// waits for the consumer instead of taking queued events for lost ones.
func streamHorizon(ctx context.Context, consumer *Consumer) time.Time {
	if consumer == nil {
		return time.Time{}
	}
	info, err := consumer.consumer.Info(ctx)
	if err != nil || info.NumPending+uint64(info.NumAckPending) == 0 {
		return time.Time{}
	}
	msg, err := consumer.cfg.Stream.GetMsg(ctx, info.AckFloor.Stream+1)
	if err != nil {
		return time.Time{}
	}
	return msg.Time
}

// pass re-drives up to redriveBatchSize events for one consumer in one
// transaction and reports whether more may remain.
func (w *RedriveWorker) pass(ctx context.Context, target redriveTarget, after time.Duration) (bool, error) {
	var more bool
	backlogSince := streamHorizon(ctx, target.consumer)
	var redriven []*outbox.Event
	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		// The watermark row serializes passes across processes.
		if _, err := tx.Exec(ctx, `
			INSERT INTO redrive_watermarks (consumer, checked_until) VALUES ($1, now() - $2::interval)
			ON CONFLICT DO NOTHING`, target.name, DefaultRedriveLookback.String()); err != nil {
			return err
		}
		var checkedUntil time.Time
		if err := tx.QueryRow(ctx, `SELECT checked_until FROM redrive_watermarks WHERE consumer = $1 FOR UPDATE`,
			target.name).Scan(&checkedUntil); err != nil {
			return err
		}
		var horizon time.Time
		if err := tx.QueryRow(ctx, `SELECT now() - $1::interval`, after.String()).Scan(&horizon); err != nil {
			return err
		}
		if !backlogSince.IsZero() && backlogSince.Add(-after).Before(horizon) {
			horizon = backlogSince.Add(-after)
		}
		if !horizon.After(checkedUntil) {
			return nil
		}

		rows, err := tx.Query(ctx, `
			SELECT id, tenant_id, ecosystem, event_type, event_version, aggregate_id, payload,
			       coalesce(trace_parent, ''), occurred_at, created_at
			FROM outbox o
			WHERE o.created_at >= $2 AND o.created_at < $3
			  AND NOT EXISTS (SELECT 1 FROM consumer_idempotency c WHERE c.consumer = $1 AND c.event_id = o.id)
			ORDER BY o.created_at
			LIMIT $4`, target.name, checkedUntil, horizon, redriveBatchSize)
		if err != nil {
			return err
		}
		events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*outbox.Event, error) {
			var e outbox.Event
			err := row.Scan(&e.ID, &e.TenantID, &e.Ecosystem, &e.Type, &e.Version, &e.AggregateID, &e.Payload,
				&e.TraceParent, &e.OccurredAt, &e.CreatedAt)
			return &e, err
		})
		if err != nil {
			return err
		}

		newWatermark := horizon
		if len(events) == redriveBatchSize {
			more = true
			newWatermark = events[len(events)-1].CreatedAt
		}
		if len(events) > 0 {
			if redriven, err = recordAndHandle(ctx, tx, target.name, events, target.handler); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE redrive_watermarks SET checked_until = $2, updated_at = now() WHERE consumer = $1`,
			target.name, newWatermark)
		return err
	})
	if err != nil {
		return false, err
	}
	if len(redriven) > 0 {
		w.lost.Add(ctx, int64(len(redriven)), metric.WithAttributes(attribute.String("consumer", target.name)))
		ids := make([]string, 0, min(len(redriven), 10))
		for _, event := range redriven[:min(len(redriven), 10)] {
			ids = append(ids, event.ID.String())
		}
		w.Logger.Warn("outbox events lost in transport were re-driven", "event", "redrive.transport_loss",
			"consumer", target.name, "events", len(redriven), "first_event_ids", ids)
	}
	return more, nil
}

// recordAndHandle records events in consumer_idempotency for the consumer
// and passes those not recorded before to handler, inside tx. It returns the
// events handled. The consumer's batches and re-drive share it, so an event
// that arrives late after a re-drive is skipped as a duplicate.
func recordAndHandle(ctx context.Context, tx pgx.Tx, consumer string, events []*outbox.Event, handler BatchHandler,
) ([]*outbox.Event, error) {
	ids := make([]uuid.UUID, len(events))
	tenants := make([]string, len(events))
	ecosystems := make([]string, len(events))
	for i, event := range events {
		ids[i], tenants[i], ecosystems[i] = event.ID, event.TenantID, event.Ecosystem
	}
	rows, err := tx.Query(ctx, `
		INSERT INTO consumer_idempotency (consumer, event_id, tenant_id, ecosystem)
		SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[])
		ON CONFLICT DO NOTHING
		RETURNING event_id`, consumer, ids, tenants, ecosystems)
	if err != nil {
		return nil, fmt.Errorf("record %d event ids: %w", len(events), err)
	}
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("record %d event ids: %w", len(events), err)
	}
	if len(inserted) == 0 {
		return nil, nil
	}
	fresh := events
	if len(inserted) < len(events) {
		isNew := make(map[uuid.UUID]bool, len(inserted))
		for _, id := range inserted {
			isNew[id] = true
		}
		fresh = make([]*outbox.Event, 0, len(inserted))
		for _, event := range events {
			if isNew[event.ID] {
				fresh = append(fresh, event)
			}
		}
	}
	if err := handler(ctx, tx, fresh); err != nil {
		return nil, fmt.Errorf("handle %d events: %w", len(fresh), err)
	}
	return fresh, nil
}
