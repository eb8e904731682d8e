package webhook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/finnest/eventruntime/audit"
)

// ReplayFilter selects the deliveries to send again. Exactly one of
// DeliveryID, SubscriptionID or DeadLettered (alone) selects; the other
// fields narrow.
type ReplayFilter struct {
	// DeadLettered limits the replay to dead-lettered deliveries. On its own
	// it selects every dead-lettered delivery (of TenantID, when set).
	DeadLettered bool

	// DeliveryID selects one delivery.
	DeliveryID int64

	// Since and Until bound the deliveries' creation time, [Since, Until).
	// A zero value leaves that side open. Only with SubscriptionID or
	// DeadLettered.
	Since time.Time
	Until time.Time

	// SubscriptionID selects the deliveries of one subscription.
	SubscriptionID uuid.UUID

	// TenantID limits the replay to one tenant.
	TenantID string
}

func (f ReplayFilter) validate() error {
	switch {
	case f.DeliveryID != 0 && (f.SubscriptionID != uuid.Nil || !f.Since.IsZero() || !f.Until.IsZero()):
		return errors.New("replay: a delivery id cannot be combined with a subscription or a time range")
	case f.DeliveryID == 0 && f.SubscriptionID == uuid.Nil && !f.DeadLettered:
		return errors.New("replay: choose a delivery id, a subscription, or dead-lettered deliveries")
	case !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until):
		return fmt.Errorf("replay: since %s is not before until %s", f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))
	}
	return nil
}

// ReplayResult counts what a replay did.
type ReplayResult struct {
	// Matched is how many deliveries the filter selected.
	Matched int

	// Queued is how many were reset to pending with a new job.
	Queued int

	// Skipped is how many were left alone: still pending, or their
	// subscription is disabled.
	Skipped int
}

// Replay resets the finished deliveries that filter selects to pending, in a
// new run with a fresh attempt budget, and queues a job for each, in one
// transaction. Deliveries keep their ids, so among one aggregate's pending
// deliveries the older still goes first. Deliveries still pending and those
// of disabled subscriptions are skipped. Each subscription touched gets one
// audit ledger row.
func Replay(ctx context.Context, pool *pgxpool.Pool, client *river.Client[pgx.Tx], filter ReplayFilter,
	actor string) (ReplayResult, error) {
	var result ReplayResult
	if err := filter.validate(); err != nil {
		return result, err
	}
	if actor == "" {
		return result, errors.New("replay: an actor is required for the audit ledger")
	}
	var since, until *time.Time
	if !filter.Since.IsZero() {
		since = &filter.Since
	}
	if !filter.Until.IsZero() {
		until = &filter.Until
	}
	subscriptionID := &filter.SubscriptionID
	if filter.SubscriptionID == uuid.Nil {
		subscriptionID = nil
	}
	const where = `
		($1::bigint = 0 OR d.id = $1)
		AND ($2::uuid IS NULL OR d.subscription_id = $2)
		AND ($3::timestamptz IS NULL OR d.created_at >= $3)
		AND ($4::timestamptz IS NULL OR d.created_at < $4)
		AND (NOT $5 OR d.state = 'dead_lettered')
		AND ($6 = '' OR d.tenant_id = $6)`
	args := []any{filter.DeliveryID, subscriptionID, since, until, filter.DeadLettered, filter.TenantID}

	type replayed struct{ subscription, tenant, ecosystem string }
	var perSub map[replayed]int
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		perSub = map[replayed]int{}
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM webhook_deliveries d WHERE `+where, args...).Scan(&result.Matched); err != nil {
			return fmt.Errorf("replay: count deliveries: %w", err)
		}
		rows, err := tx.Query(ctx, `
			UPDATE webhook_deliveries d
			SET state = 'pending', run = d.run + 1, attempts = 0, next_attempt_at = NULL, last_error = NULL,
			    dead_letter_reason = NULL, finished_at = NULL, updated_at = now()
			FROM webhook_subscriptions s
			WHERE s.id = d.subscription_id AND s.state = 'enabled' AND d.state <> 'pending' AND `+where+`
			RETURNING d.id, d.run, d.subscription_id, d.tenant_id, d.ecosystem`, args...)
		if err != nil {
			return fmt.Errorf("replay: reset deliveries: %w", err)
		}
		var (
			params      []river.InsertManyParams
			deliveryIDs []int64
		)
		for rows.Next() {
			var (
				id             int64
				run            int
				subscriptionID uuid.UUID
				key            replayed
			)
			if err := rows.Scan(&id, &run, &subscriptionID, &key.tenant, &key.ecosystem); err != nil {
				rows.Close()
				return fmt.Errorf("replay: read reset delivery: %w", err)
			}
			key.subscription = subscriptionID.String()
			perSub[key]++
			params = append(params, river.InsertManyParams{Args: DeliveryArgs{DeliveryID: id, Run: run}})
			deliveryIDs = append(deliveryIDs, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("replay: reset deliveries: %w", err)
		}
		result.Queued = len(params)
		result.Skipped = result.Matched - result.Queued

		const chunk = 1000
		for start := 0; start < len(params); start += chunk {
			end := min(start+chunk, len(params))
			if err := insertJobs(ctx, client, tx, params[start:end], deliveryIDs[start:end]); err != nil {
				return err
			}
		}
		for key, n := range perSub {
			err := audit.Append(ctx, tx, audit.Entry{
				TenantID: key.tenant, Ecosystem: key.ecosystem, Actor: actor,
				Action: "webhook.deliveries.replayed", Subject: "webhook_subscription:" + key.subscription,
				New: map[string]any{
					"deliveries": n, "delivery_id": filter.DeliveryID, "dead_lettered": filter.DeadLettered,
					"since": formatOptionalTime(filter.Since), "until": formatOptionalTime(filter.Until),
				},
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return ReplayResult{}, err
	}
	for key, n := range perSub {
		count(ctx, metrics.replayed, int64(n), key.ecosystem)
	}
	return result, nil
}
