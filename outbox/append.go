package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
)

// Execer is the part of pgx.Tx that Append uses. A pgx.Tx, *pgx.Conn or
// *pgxpool.Pool satisfies it, but only a transaction ties the events to the
// business change.
type Execer interface {
	Exec(ctx context.Context, sql string, arguments ...any) (pgconn.CommandTag, error)
}

// Appender appends events to the outbox. The zero value uses the defaults.
type Appender struct {
	// MaxPayloadBytes caps each event's payload. Zero means
	// DefaultMaxPayloadBytes.
	MaxPayloadBytes int
}

// Append validates events and inserts them with one statement through tx,
// which should be the caller's transaction. It fills in zero IDs with new
// UUIDv7s and zero OccurredAt with the current time, in place. When any event
// is invalid it inserts nothing and returns an error wrapping ErrInvalidEvent
// that names the event's index, so the caller can roll back.
func (a *Appender) Append(ctx context.Context, tx Execer, events ...*Event) error {
	if len(events) == 0 {
		return nil
	}

	var (
		ids          = make([]uuid.UUID, len(events))
		tenants      = make([]string, len(events))
		ecosystems   = make([]string, len(events))
		types        = make([]string, len(events))
		versions     = make([]int32, len(events))
		aggregates   = make([]string, len(events))
		payloads     = make([]string, len(events))
		traceParents = make([]*string, len(events))
		occurredAts  = make([]time.Time, len(events))
	)
	now := time.Now().UTC()
	for i, event := range events {
		if err := event.Validate(a.MaxPayloadBytes); err != nil {
			return fmt.Errorf("event %d of %d (id %s): %w", i+1, len(events), event.ID, err)
		}
		if event.ID == uuid.Nil {
			id, err := uuid.NewV7()
			if err != nil {
				return fmt.Errorf("generate event id: %w", err)
			}
			event.ID = id
		}
		if event.OccurredAt.IsZero() {
			event.OccurredAt = now
		}
		ids[i] = event.ID
		tenants[i] = event.TenantID
		ecosystems[i] = event.Ecosystem
		types[i] = event.Type
		versions[i] = int32(event.Version)
		aggregates[i] = event.AggregateID
		payloads[i] = string(event.Payload)
		if event.TraceParent != "" {
			traceParents[i] = &event.TraceParent
		}
		occurredAts[i] = event.OccurredAt
	}

	_, err := tx.Exec(ctx, `
		INSERT INTO outbox (id, tenant_id, ecosystem, event_type, event_version, aggregate_id,
		                    payload, trace_parent, occurred_at)
		SELECT id, tenant_id, ecosystem, event_type, event_version, aggregate_id,
		       payload::jsonb, trace_parent, occurred_at
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
		            $7::text[], $8::text[], $9::timestamptz[])
		     AS e(id, tenant_id, ecosystem, event_type, event_version, aggregate_id,
		          payload, trace_parent, occurred_at)`,
		ids, tenants, ecosystems, types, versions, aggregates, payloads, traceParents, occurredAts)
	if err != nil {
		return fmt.Errorf("insert %d events into outbox (first id %s): %w", len(events), ids[0], err)
	}
	return nil
}

// Append appends events with a zero Appender; see Appender.Append.
func Append(ctx context.Context, tx Execer, events ...*Event) error {
	var appender Appender
	return appender.Append(ctx, tx, events...)
}
