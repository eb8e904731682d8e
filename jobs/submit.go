package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/finnest/eventruntime/internal/canonicaljson"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/tenant"
)

// SubmitArgs asks for one export batch to be posted to its regulator.
type SubmitArgs struct {
	BatchID int64 `json:"batch_id"`
}

// Kind returns the job kind.
func (SubmitArgs) Kind() string { return "submit" }

// InsertOpts makes submit jobs unique per batch while one is pending, running
// or retrying, so two workers never post the same batch at once.
func (SubmitArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		Queue:      QueueSubmit,
		UniqueOpts: river.UniqueOpts{ByArgs: true},
	}
}

// SubmitWorker posts a sealed batch and records the regulator's verdict on
// each item. It commits a posting marker and a submission attempt before the
// request leaves, and records receipts, evidence, item states, the batch's
// final state and the job's completion in one transaction after it returns.
type SubmitWorker struct {
	river.WorkerDefaults[SubmitArgs]
	Adapters map[string]regulator.Adapter
	Logger   *slog.Logger
	Pool     *pgxpool.Pool
}

// Batch states.
const (
	batchAccepted           = "accepted"
	batchPartiallyDiscarded = "partially_discarded"
	batchPosting            = "posting"
	batchRejected           = "rejected"
	batchRetry              = "retry"
)

type batchItem struct {
	id                int64
	fapiInteractionID string
	body              json.RawMessage
}

// Work posts the batch once.
func (w *SubmitWorker) Work(ctx context.Context, job *river.Job[SubmitArgs]) error {
	batchID := job.Args.BatchID
	logger := w.Logger.With("batch_id", batchID)

	config, attemptID, items, done, err := w.claim(ctx, job)
	if err != nil || done {
		return err
	}
	logger = logger.With("tenant_id", config.TenantID, "ecosystem", config.Ecosystem)

	adapter := w.Adapters[config.Ecosystem]
	if adapter == nil {
		return w.recordFailure(ctx, batchID, attemptID, fmt.Errorf("no regulator adapter for ecosystem %s", config.Ecosystem))
	}

	bodies := make([]json.RawMessage, len(items))
	for i, item := range items {
		bodies[i] = item.body
	}
	started := time.Now()
	result, err := adapter.Report(ctx, config, bodies)
	if err != nil {
		logger.Warn("submission failed", "event", "submit.failed", "error", err, "items", len(items),
			"attempt", job.Attempt)
		return w.recordFailure(ctx, batchID, attemptID, err)
	}

	state, accepted, discarded, err := w.recordResult(ctx, job, config, attemptID, items, result)
	if err != nil {
		return err
	}
	logger.Info("batch submitted", "event", "submit.batch_"+state, "items", len(items),
		"accepted", accepted, "discarded", discarded, "status_code", result.StatusCode,
		"duration_ms", time.Since(started).Milliseconds())
	return nil
}

// claim locks the batch, marks it posting and opens an attempt, committing
// before any request leaves. done is true when the batch needs no request.
func (w *SubmitWorker) claim(ctx context.Context, job *river.Job[SubmitArgs]) (
	config *tenant.Config, attemptID int64, items []batchItem, done bool, err error,
) {
	batchID := job.Args.BatchID
	err = pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		var tenantID, ecosystem, state string
		err := tx.QueryRow(ctx, `SELECT tenant_id, ecosystem, state FROM export_batches WHERE id = $1 FOR UPDATE`,
			batchID).Scan(&tenantID, &ecosystem, &state)
		if errors.Is(err, pgx.ErrNoRows) {
			return river.JobCancel(fmt.Errorf("batch %d does not exist", batchID))
		}
		if err != nil {
			return fmt.Errorf("lock batch %d: %w", batchID, err)
		}
		switch state {
		case batchAccepted, batchPartiallyDiscarded, batchRejected:
			done = true
			_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
			return err
		}
		// NOTE: a batch found in state posting was interrupted after its
		// request may have left; it is posted again here, which the regulator
		// may count twice.

		if config, err = tenant.Get(ctx, tx, tenantID, ecosystem); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			SELECT id, fapi_interaction_id, body FROM report_items
			WHERE batch_id = $1 AND state = 'batched' ORDER BY id`, batchID)
		if err != nil {
			return fmt.Errorf("read items of batch %d: %w", batchID, err)
		}
		items, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (batchItem, error) {
			var item batchItem
			err := row.Scan(&item.id, &item.fapiInteractionID, &item.body)
			return item, err
		})
		if err != nil {
			return fmt.Errorf("read items of batch %d: %w", batchID, err)
		}

		if _, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = 'posting', posted_at = now(), updated_at = now()
			WHERE id = $1`, batchID); err != nil {
			return fmt.Errorf("mark batch %d posting: %w", batchID, err)
		}
		return tx.QueryRow(ctx, `
			INSERT INTO submission_attempts (tenant_id, ecosystem, batch_id, attempt, item_count)
			VALUES ($1, $2, $3, (SELECT count(*) + 1 FROM submission_attempts WHERE batch_id = $3), $4)
			RETURNING id`, tenantID, ecosystem, batchID, len(items)).Scan(&attemptID)
	})
	return config, attemptID, items, done, err
}

// recordFailure closes the attempt and moves the batch to retry, then returns
// cause so River retries the job with backoff.
func (w *SubmitWorker) recordFailure(ctx context.Context, batchID, attemptID int64, cause error) error {
	var statusCode *int
	if statusErr := regulator.AsStatusError(cause); statusErr != nil {
		statusCode = &statusErr.StatusCode
	}
	err := pgx.BeginFunc(context.WithoutCancel(ctx), w.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			UPDATE submission_attempts SET finished_at = now(), http_status = $2, outcome = 'failed', error = $3
			WHERE id = $1`, attemptID, statusCode, cause.Error()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = 'retry', last_error = $2, updated_at = now() WHERE id = $1`,
			batchID, cause.Error())
		return err
	})
	if err != nil {
		return fmt.Errorf("submit batch %d: %w (and recording the failure failed: %v)", batchID, cause, err)
	}
	return fmt.Errorf("submit batch %d: %w", batchID, cause)
}

// recordResult stores the regulator's verdict and completes the job in one
// transaction.
func (w *SubmitWorker) recordResult(ctx context.Context, job *river.Job[SubmitArgs], config *tenant.Config,
	attemptID int64, items []batchItem, result *regulator.Result,
) (state string, accepted, discarded int, err error) {
	batchID := job.Args.BatchID
	if len(result.Items) != len(items) {
		return "", 0, 0, w.recordFailure(ctx, batchID, attemptID,
			fmt.Errorf("regulator returned %d results for %d items", len(result.Items), len(items)))
	}

	requestCanonical, err := canonicaljson.Marshal(result.RequestBody)
	if err != nil {
		return "", 0, 0, fmt.Errorf("canonicalize request of batch %d: %w", batchID, err)
	}
	requestSHA := canonicaljson.SHA256(requestCanonical)

	var (
		evidence = &pgx.Batch{}
		n        = len(items)
		itemIDs  = make([]int64, n)
		fapiIDs  = make([]string, n)
		reports  = make([]*string, n)
		statuses = make([]string, n)
		messages = make([]*string, n)
		evidIDs  = make([]*uuid.UUID, n)
	)
	evidence.Queue(`
		INSERT INTO payload_evidence (id, tenant_id, ecosystem, kind, batch_id, sha256, canonical)
		VALUES ($1, $2, $3, 'request', $4, $5, $6)`,
		uuid.Must(uuid.NewV7()), config.TenantID, config.Ecosystem, batchID, requestSHA, requestCanonical)
	for i, item := range items {
		verdict := result.Items[i]
		itemIDs[i], fapiIDs[i], statuses[i] = item.id, item.fapiInteractionID, verdict.Status
		if verdict.ReportID != "" {
			reports[i] = &verdict.ReportID
		}
		if verdict.Message != "" {
			messages[i] = &verdict.Message
		}
		if verdict.Status != regulator.StatusAccepted {
			discarded++
			continue
		}
		accepted++
		canonical, err := canonicaljson.Marshal(item.body)
		if err != nil {
			return "", 0, 0, fmt.Errorf("canonicalize item %d: %w", item.id, err)
		}
		id := uuid.Must(uuid.NewV7())
		evidIDs[i] = &id
		evidence.Queue(`
			INSERT INTO payload_evidence (id, tenant_id, ecosystem, kind, batch_id, report_item_id, sha256, canonical)
			VALUES ($1, $2, $3, 'item', $4, $5, $6, $7)`,
			id, config.TenantID, config.Ecosystem, batchID, item.id, canonicaljson.SHA256(canonical), canonical)
	}

	state = batchAccepted
	if discarded > 0 {
		state = batchPartiallyDiscarded
	}
	if accepted == 0 {
		state = batchRejected
	}

	err = pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if err := tx.SendBatch(ctx, evidence).Close(); err != nil {
			return fmt.Errorf("store evidence: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO submission_receipts (tenant_id, ecosystem, batch_id, report_item_id, fapi_interaction_id,
			                                 report_id, status, message, evidence_id)
			SELECT $1, $2, $3, * FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::uuid[])`,
			config.TenantID, config.Ecosystem, batchID, itemIDs, fapiIDs, reports, statuses, messages, evidIDs); err != nil {
			return fmt.Errorf("store receipts: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE report_items i SET state = CASE r.status WHEN 'ACCEPTED' THEN 'accepted' ELSE 'discarded' END,
			       state_reason = r.message, updated_at = now()
			FROM unnest($1::bigint[], $2::text[], $3::text[]) AS r(id, status, message)
			WHERE i.id = r.id`, itemIDs, statuses, messages); err != nil {
			return fmt.Errorf("update item states: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = $2, item_count = $3, accepted_count = $4, discarded_count = $5,
			       last_error = NULL, finished_at = now(), updated_at = now()
			WHERE id = $1`, batchID, state, n, accepted, discarded); err != nil {
			return fmt.Errorf("finish batch: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE submission_attempts SET finished_at = now(), http_status = $2, outcome = $3, request_sha256 = $4
			WHERE id = $1`, attemptID, result.StatusCode, state, requestSHA); err != nil {
			return fmt.Errorf("finish attempt: %w", err)
		}
		_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	if err != nil {
		return "", 0, 0, fmt.Errorf("record result of batch %d: %w", batchID, err)
	}
	return state, accepted, discarded, nil
}
