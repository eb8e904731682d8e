package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
)

// MapArgs carries the interaction events of one consumed batch to be mapped
// to regulator report items.
type MapArgs struct {
	Events []*outbox.Event `json:"events"`
}

// Kind returns the job kind.
func (MapArgs) Kind() string { return "map" }

// InsertOpts puts map jobs on the map queue.
func (MapArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: QueueMap} }

// MapWorker turns interaction events into report items. An event that cannot
// become a valid item is kept as a quarantined item with its reason, and an
// event of an unknown version is dead-lettered; neither fails the job.
type MapWorker struct {
	river.WorkerDefaults[MapArgs]
	Adapters map[string]regulator.Adapter
	Logger   *slog.Logger
	Pool     *pgxpool.Pool

	prompt *promptFlush // nil: items wait for the periodic flush
}

type mappedItem struct {
	event             *outbox.Event
	fapiInteractionID string
	role              string
	body              []byte
	reportedAt        time.Time
	state             string
	reason            *string
}

// Work maps every event of the job and commits the items with the job's
// completion. Re-running it is harmless: items are unique per event.
func (w *MapWorker) Work(ctx context.Context, job *river.Job[MapArgs]) error {
	var items []mappedItem
	var unknown []*outbox.Event
	for _, event := range job.Args.Events {
		if event.Type != outbox.TypeInteractionRecorded {
			continue
		}
		if event.Version != 1 {
			unknown = append(unknown, event)
			continue
		}
		items = append(items, mapInteraction(w.Adapters[event.Ecosystem], event))
	}

	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if err := insertItems(ctx, tx, items); err != nil {
			return err
		}
		for _, event := range unknown {
			_, err := tx.Exec(ctx, `
				INSERT INTO dead_letters (tenant_id, ecosystem, source, event_id, reason, payload)
				VALUES ($1, $2, 'map', $3, $4, $5)`,
				event.TenantID, event.Ecosystem, event.ID,
				fmt.Sprintf("unknown version %d of event type %s", event.Version, event.Type), []byte(event.Payload))
			if err != nil {
				return fmt.Errorf("dead-letter event %s: %w", event.ID, err)
			}
		}
		_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	if err != nil {
		return fmt.Errorf("map %d events: %w", len(job.Args.Events), err)
	}

	if w.prompt != nil {
		keys := make(map[tenantKey]bool)
		for _, item := range items {
			if item.state == itemPending {
				keys[tenantKey{item.event.TenantID, item.event.Ecosystem}] = true
			}
		}
		w.prompt.mapped(ctx, keys)
	}
	for _, item := range items {
		if item.state == itemQuarantined {
			w.Logger.Warn("report item quarantined", "event", "map.item_quarantined",
				"tenant_id", item.event.TenantID, "ecosystem", item.event.Ecosystem,
				"event_id", item.event.ID, "reason", *item.reason)
		}
	}
	for _, event := range unknown {
		w.Logger.Error("event dead-lettered: unknown version", "event", "map.dead_lettered",
			"tenant_id", event.TenantID, "event_id", event.ID, "event_type", event.Type, "event_version", event.Version)
	}
	return nil
}

// Report item states.
const (
	itemPending     = "pending"
	itemQuarantined = "quarantined"
)

// mapInteraction builds the report item of one interaction event in its
// ecosystem's format, or a quarantined item saying why it cannot be built.
func mapInteraction(adapter regulator.Adapter, event *outbox.Event) mappedItem {
	item := mappedItem{event: event, state: itemPending, reportedAt: event.OccurredAt, body: []byte("{}"), role: outbox.RoleServer}
	quarantine := func(reason string) mappedItem {
		item.state = itemQuarantined
		item.reason = &reason
		return item
	}

	var interaction outbox.Interaction
	if err := json.Unmarshal(event.Payload, &interaction); err != nil {
		item.fapiInteractionID = event.ID.String()
		return quarantine("payload is not a valid interaction: " + err.Error())
	}
	item.fapiInteractionID = interaction.FAPIInteractionID
	if item.fapiInteractionID == "" {
		item.fapiInteractionID = event.ID.String()
	}
	if interaction.Role == outbox.RoleClient {
		item.role = outbox.RoleClient
	}
	if !interaction.Timestamp.IsZero() {
		item.reportedAt = interaction.Timestamp
	}

	if adapter == nil {
		return quarantine(fmt.Sprintf("no regulator adapter for ecosystem %s", event.Ecosystem))
	}
	body, err := adapter.Map(interaction)
	if err != nil {
		return quarantine(err.Error())
	}
	item.body = body
	return item
}

func insertItems(ctx context.Context, tx pgx.Tx, items []mappedItem) error {
	if len(items) == 0 {
		return nil
	}
	var (
		tenants    = make([]string, len(items))
		ecosystems = make([]string, len(items))
		eventIDs   = make([]uuid.UUID, len(items))
		fapiIDs    = make([]string, len(items))
		roles      = make([]string, len(items))
		bodies     = make([]string, len(items))
		reported   = make([]time.Time, len(items))
		states     = make([]string, len(items))
		reasons    = make([]*string, len(items))
		traces     = make([]*string, len(items))
		sizes      = make([]int32, len(items))
	)
	for i, item := range items {
		tenants[i] = item.event.TenantID
		ecosystems[i] = item.event.Ecosystem
		eventIDs[i] = item.event.ID
		fapiIDs[i] = item.fapiInteractionID
		roles[i] = item.role
		bodies[i] = string(item.body)
		reported[i] = item.reportedAt
		states[i] = item.state
		reasons[i] = item.reason
		sizes[i] = int32(len(item.body))
		if item.event.TraceParent != "" {
			traces[i] = &item.event.TraceParent
		}
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO report_items (tenant_id, ecosystem, event_id, fapi_interaction_id, role, body,
		                          reported_at, state, state_reason, trace_parent, body_bytes)
		SELECT tenant_id, ecosystem, event_id, fapi_interaction_id, role, body::jsonb,
		       reported_at, state, state_reason, trace_parent, body_bytes
		FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
		            $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::int[])
		     AS i(tenant_id, ecosystem, event_id, fapi_interaction_id, role, body,
		          reported_at, state, state_reason, trace_parent, body_bytes)
		ON CONFLICT (tenant_id, event_id) DO NOTHING`,
		tenants, ecosystems, eventIDs, fapiIDs, roles, bodies, reported, states, reasons, traces, sizes)
	if err != nil {
		return fmt.Errorf("insert %d report items: %w", len(items), err)
	}
	return nil
}
