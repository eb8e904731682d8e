package webhook

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/worker"
)

// riverMaxAttempts bounds how often River retries a delivery job that failed
// inside this service (database errors, a secret that cannot be decrypted).
// HTTP attempts are counted separately, in webhook_deliveries.attempts.
const riverMaxAttempts = 25

// DeliveryArgs are the arguments of a delivery job.
type DeliveryArgs struct {
	// DeliveryID is the webhook_deliveries row.
	DeliveryID int64 `json:"delivery_id"`

	// Run is the delivery's run when the job was inserted. A replay starts a
	// new run with a new job, and a job of an older run does nothing.
	Run int `json:"run"`
}

// Kind returns the River job kind of delivery jobs.
func (DeliveryArgs) Kind() string { return "webhook_delivery" }

// InsertOpts puts delivery jobs on the webhooks queue.
func (DeliveryArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueName, MaxAttempts: riverMaxAttempts}
}

// Extension returns the webhook extension of the service: the "webhooks"
// durable consumer that fans events out to deliveries, and the delivery
// worker on the "webhooks" queue.
func Extension(cfg Config) (worker.Extension, error) {
	if err := cfg.setDefaults(); err != nil {
		return worker.Extension{}, err
	}
	fanout := &fanOut{cfg: &cfg}
	deliverer := newDeliveryWorker(&cfg)
	return worker.Extension{
		ConsumerName: ConsumerName,
		Handler: func(client *river.Client[pgx.Tx]) worker.BatchHandler {
			return func(ctx context.Context, tx pgx.Tx, events []*outbox.Event) error {
				return fanout.handle(ctx, client, tx, events)
			}
		},
		Register: func(workers *river.Workers) ([]*river.PeriodicJob, map[string]river.QueueConfig) {
			river.AddWorker(workers, deliverer)
			return nil, map[string]river.QueueConfig{
				QueueName: {MaxWorkers: cfg.MaxWorkers, FetchPollInterval: cfg.FetchPollInterval},
			}
		},
	}, nil
}

// fanOut turns a batch of new events into deliveries.
type fanOut struct {
	cfg *Config
}

// target is an enabled subscription as the fan-out needs it; the fan-out
// never decrypts secrets.
type target struct {
	id         uuid.UUID
	tenantID   string
	ecosystem  string
	eventTypes []string
}

func (t *target) matches(eventType string) bool {
	sub := Subscription{EventTypes: t.eventTypes}
	return sub.Matches(eventType)
}

type scope struct{ tenantID, ecosystem string }

// newDelivery is one delivery row the fan-out inserts.
type newDelivery struct {
	event   *outbox.Event
	target  *target
	tooBig  bool
	bodyLen int
}

// handle runs in the consumer's batch transaction. It reads the enabled
// subscriptions of the batch's tenants, stores the body of each matched
// event once, and inserts a delivery row and a River job per match, in the
// batch's event order so delivery ids follow the stream order.
//
// NOTE: with several service processes, two batches can commit at the same
// time, so ids follow stream order only within a batch and within one
// process. Events of one aggregate split across concurrent batches may then
// be delivered in commit order of the fan-out, not of the outbox.
func (f *fanOut) handle(ctx context.Context, client *river.Client[pgx.Tx], tx pgx.Tx, events []*outbox.Event) error {
	targets, err := enabledTargets(ctx, tx, events)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		return nil
	}

	messages := &pgx.Batch{}
	var deliveries []newDelivery
	for _, event := range events {
		var matched []*target
		for _, t := range targets[scope{event.TenantID, event.Ecosystem}] {
			if t.matches(event.Type) {
				matched = append(matched, t)
			}
		}
		if len(matched) == 0 {
			continue
		}
		body, err := encodeMessage(event)
		if err != nil {
			return err
		}
		messages.Queue(`
			INSERT INTO webhook_messages (event_id, tenant_id, ecosystem, event_type, aggregate_id, body)
			VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING`,
			event.ID, event.TenantID, event.Ecosystem, event.Type, event.AggregateID, body)
		for _, t := range matched {
			deliveries = append(deliveries, newDelivery{
				event: event, target: t, tooBig: len(body) > f.cfg.MaxBodyBytes, bodyLen: len(body),
			})
		}
	}
	if len(deliveries) == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, messages).Close(); err != nil {
		return fmt.Errorf("store %d webhook messages: %w", messages.Len(), err)
	}

	ids, err := f.insertDeliveries(ctx, tx, deliveries)
	if err != nil {
		return err
	}

	var (
		params      []river.InsertManyParams
		jobDelivery []int64
		oversized   int
	)
	for i, delivery := range deliveries {
		if ids[i] == 0 || delivery.tooBig {
			if delivery.tooBig {
				oversized++
			}
			continue
		}
		params = append(params, river.InsertManyParams{Args: DeliveryArgs{DeliveryID: ids[i], Run: 1}})
		jobDelivery = append(jobDelivery, ids[i])
	}
	if err := insertJobs(ctx, client, tx, params, jobDelivery); err != nil {
		return err
	}

	for _, delivery := range deliveries {
		count(ctx, metrics.fannedOut, 1, delivery.event.Ecosystem)
	}
	f.cfg.Logger.Info("events fanned out to webhook deliveries", "event", "webhook.fanned_out",
		"events", len(events), "deliveries", len(deliveries), "jobs", len(params), "oversized", oversized)
	return nil
}

// enabledTargets reads the enabled subscriptions of the tenants and
// ecosystems in events.
func enabledTargets(ctx context.Context, tx pgx.Tx, events []*outbox.Event) (map[scope][]*target, error) {
	seen := map[scope]bool{}
	var tenants, ecosystems []string
	for _, event := range events {
		key := scope{event.TenantID, event.Ecosystem}
		if seen[key] {
			continue
		}
		seen[key] = true
		tenants = append(tenants, event.TenantID)
		ecosystems = append(ecosystems, event.Ecosystem)
	}
	rows, err := tx.Query(ctx, `
		SELECT s.id, s.tenant_id, s.ecosystem, s.event_types
		FROM webhook_subscriptions s
		JOIN unnest($1::text[], $2::text[]) AS wanted(tenant_id, ecosystem)
		  ON wanted.tenant_id = s.tenant_id AND wanted.ecosystem = s.ecosystem
		WHERE s.state = 'enabled'
		ORDER BY s.created_at, s.id`, tenants, ecosystems)
	if err != nil {
		return nil, fmt.Errorf("read webhook subscriptions of %d tenants: %w", len(tenants), err)
	}
	defer rows.Close()
	targets := map[scope][]*target{}
	for rows.Next() {
		t := &target{}
		if err := rows.Scan(&t.id, &t.tenantID, &t.ecosystem, &t.eventTypes); err != nil {
			return nil, fmt.Errorf("read webhook subscription: %w", err)
		}
		key := scope{t.tenantID, t.ecosystem}
		targets[key] = append(targets[key], t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read webhook subscriptions: %w", err)
	}
	return targets, nil
}

// insertDeliveries inserts the delivery rows one statement each, in order,
// in one round trip, so ids follow the order of deliveries. It returns each
// row's id, or zero where the delivery already existed. An oversized body's
// delivery is inserted dead-lettered, with a dead_letters row.
func (f *fanOut) insertDeliveries(ctx context.Context, tx pgx.Tx, deliveries []newDelivery) ([]int64, error) {
	batch := &pgx.Batch{}
	ids := make([]int64, len(deliveries))
	for i, delivery := range deliveries {
		event := delivery.event
		state, reason := "pending", ""
		if delivery.tooBig {
			state = "dead_lettered"
			reason = fmt.Sprintf("webhook body is %d bytes, above the %d-byte limit; no request was sent",
				delivery.bodyLen, f.cfg.MaxBodyBytes)
		}
		batch.Queue(`
			INSERT INTO webhook_deliveries (tenant_id, ecosystem, subscription_id, event_id, event_type, aggregate_id,
			                                state, dead_letter_reason, finished_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, nullif($8, ''), CASE WHEN $7 = 'pending' THEN NULL ELSE now() END)
			ON CONFLICT (subscription_id, event_id) DO NOTHING
			RETURNING id`,
			event.TenantID, event.Ecosystem, delivery.target.id, event.ID, event.Type, event.AggregateID, state, reason,
		).QueryRow(func(row pgx.Row) error {
			err := row.Scan(&ids[i])
			if err == pgx.ErrNoRows {
				return nil
			}
			return err
		})
		if delivery.tooBig {
			batch.Queue(`
				INSERT INTO dead_letters (tenant_id, ecosystem, source, event_id, reason)
				VALUES ($1, $2, $3, $4, $5)`,
				event.TenantID, event.Ecosystem, ConsumerName, event.ID, reason)
		}
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("insert %d webhook deliveries: %w", len(deliveries), err)
	}
	for i, delivery := range deliveries {
		if delivery.tooBig && ids[i] != 0 {
			count(ctx, metrics.deadLetters, 1, delivery.event.Ecosystem, reasonAttr("body_too_large"))
			f.cfg.Logger.Warn("webhook body too large; delivery dead-lettered", "event", "webhook.dead_lettered",
				"delivery_id", ids[i], "event_id", delivery.event.ID, "subscription_id", delivery.target.id,
				"body_bytes", delivery.bodyLen, "max_body_bytes", f.cfg.MaxBodyBytes)
		}
	}
	return ids, nil
}

// insertJobs inserts the delivery jobs with tx and records each job's id on
// its delivery, so a finished delivery can wake the next one.
func insertJobs(ctx context.Context, client *river.Client[pgx.Tx], tx pgx.Tx, params []river.InsertManyParams,
	deliveryIDs []int64) error {
	if len(params) == 0 {
		return nil
	}
	results, err := client.InsertManyTx(ctx, tx, params)
	if err != nil {
		return fmt.Errorf("insert %d webhook delivery jobs: %w", len(params), err)
	}
	jobIDs := make([]int64, len(results))
	for i, result := range results {
		jobIDs[i] = result.Job.ID
	}
	_, err = tx.Exec(ctx, `
		UPDATE webhook_deliveries d SET job_id = j.job_id
		FROM unnest($1::bigint[], $2::bigint[]) AS j(delivery_id, job_id)
		WHERE d.id = j.delivery_id`, deliveryIDs, jobIDs)
	if err != nil {
		return fmt.Errorf("record job ids of %d webhook deliveries: %w", len(deliveryIDs), err)
	}
	return nil
}
