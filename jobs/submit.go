package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/finnest/eventruntime/audit"
	"github.com/finnest/eventruntime/internal/canonicaljson"
	"github.com/finnest/eventruntime/internal/telemetry"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/tenant"
)

// SubmitArgs requests one export batch to be posted to its regulator.
type SubmitArgs struct {
	BatchID int64 `json:"batch_id"`
}

// Kind returns the job kind.
func (SubmitArgs) Kind() string { return "submit" }

// SubmitMaxAttempts is how many failed runs a submit job gets. With
// NextRetry's five-minute cap it outlasts a regulator outage of about three
// days; the flush job's sweep re-enqueues a batch whose job ran out anyway.
const SubmitMaxAttempts = 1000

// InsertOpts makes submit jobs unique per batch, so two workers never post
// the same batch at once and a batch is never enqueued twice.
func (SubmitArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		MaxAttempts: SubmitMaxAttempts,
		Queue:       QueueSubmit,
		UniqueOpts:  river.UniqueOpts{ByArgs: true},
	}
}

// Batch states. A batch goes from sealed to posting to a final state
// (accepted, partially_discarded, rejected or split), or from posting to
// retry and back. A tenant that requires approval seals into
// awaiting_approval, and ApproveBatchTx moves the batch to sealed. A tenant
// in dry run ends the batch as dry_run instead of posting it.
const (
	batchAccepted           = "accepted"
	batchAwaitingApproval   = "awaiting_approval"
	batchDryRun             = "dry_run"
	batchPartiallyDiscarded = "partially_discarded"
	batchPosting            = "posting"
	batchRejected           = "rejected"
	batchRetry              = "retry"
	batchQuarantined        = "quarantined"
	batchSplit              = "split"
)

// SubmitStage names a point of the submission at which a test can stop the
// worker as if its process died there.
type SubmitStage string

// Stages at which SubmitWorker.Crash is consulted.
const (
	// StageAfterMarker is after the posting marker committed and before the
	// request leaves.
	StageAfterMarker SubmitStage = "after_marker"
	// StageAfterResponse is after the regulator responded and before anything
	// about the response is recorded.
	StageAfterResponse SubmitStage = "after_response"
	// StageBeforeReceiptCommit is inside the transaction that records the
	// response, just before it commits. Stopping there rolls it back.
	StageBeforeReceiptCommit SubmitStage = "before_receipt_commit"
)

// SubmitWorker posts a sealed batch and records the regulator's verdict on
// each item.
//
// Every step is a transaction of its own: a posting marker and a submission
// attempt commit before the request leaves, and receipts, evidence, item
// states, the batch's final state and the job's completion commit together
// after the response. A batch found in state posting was interrupted after a
// request may have left, so its items are first read back from the regulator
// and only the missing ones are sent again.
type SubmitWorker struct {
	river.WorkerDefaults[SubmitArgs]

	// Adapters maps an ecosystem to its regulator.
	Adapters map[string]regulator.Adapter

	// Crash, when set, is called at each SubmitStage; a non-nil error stops
	// the job at once, recording nothing more, as a process death would. It
	// is a hook for fault-injection tests.
	Crash func(stage SubmitStage, batchID int64) error

	Logger *slog.Logger

	// MaxRetryAfter caps a regulator's Retry-After. Zero means 15 minutes.
	MaxRetryAfter time.Duration

	Pool *pgxpool.Pool

	// ReadBackDelay is how long after an interrupted request the worker waits
	// before reading items back, because the regulator stores reports
	// asynchronously. Zero means one minute.
	ReadBackDelay time.Duration
}

type batchItem struct {
	id                int64
	fapiInteractionID string
	body              json.RawMessage
	traceParent       string
}

// submission is what one run of the job records about its batch.
type submission struct {
	attempt   int
	attemptID int64
	batchID   int64
	config    *tenant.Config
	items     []batchItem
	postedAt  *time.Time
	state     string
}

// Work drives the batch one step towards a final state.
func (w *SubmitWorker) Work(ctx context.Context, job *river.Job[SubmitArgs]) error {
	sub, done, err := w.prepare(ctx, job)
	if err != nil || done {
		return err
	}
	logger := w.Logger.With("batch_id", sub.batchID, "tenant_id", sub.config.TenantID,
		"ecosystem", sub.config.Ecosystem)
	adapter := w.Adapters[sub.config.Ecosystem]
	if adapter == nil {
		return fmt.Errorf("submit batch %d: no regulator adapter for ecosystem %s", sub.batchID, sub.config.Ecosystem)
	}

	if sub.state == batchPosting {
		// An earlier run stopped after its request may have left.
		if wait := w.readBackDelay() - time.Since(*sub.postedAt); wait > 0 {
			return river.JobSnooze(wait)
		}
		if err := w.readBack(ctx, adapter, sub, logger); err != nil {
			return err
		}
	}
	if len(sub.items) == 0 {
		return w.finish(ctx, job, sub, nil, logger)
	}
	// A batch in state posting may already be at the regulator, so it is
	// resolved by the path above even when the tenant is now in dry run.
	if sub.config.DryRun && sub.state != batchPosting {
		return w.dryRun(ctx, job, sub, logger)
	}

	if err := w.markPosting(ctx, sub); err != nil {
		return err
	}
	if err := w.crash(StageAfterMarker, sub.batchID); err != nil {
		return err
	}

	bodies := make([]json.RawMessage, len(sub.items))
	traceParents := make([]string, len(sub.items))
	for i, item := range sub.items {
		bodies[i] = item.body
		traceParents[i] = item.traceParent
	}
	// The request's span links back to the captures of its items.
	postCtx, span := telemetry.Tracer().Start(ctx, "regulator.report",
		trace.WithLinks(telemetry.Links(traceParents)...),
		trace.WithAttributes(attribute.String("ecosystem", sub.config.Ecosystem), attribute.Int("items", len(bodies))))
	started := time.Now()
	result, postErr := adapter.Report(postCtx, sub.config, bodies)
	metrics.submitDuration.Record(ctx, time.Since(started).Seconds(), ecosystemAttr(sub.config.Ecosystem))
	if postErr != nil {
		span.SetStatus(codes.Error, "request failed")
	}
	span.End()
	if err := w.crash(StageAfterResponse, sub.batchID); err != nil {
		return err
	}
	if postErr == nil {
		return w.finish(ctx, job, sub, result, logger)
	}
	return w.handleFailure(ctx, job, sub, postErr, logger)
}

func (w *SubmitWorker) crash(stage SubmitStage, batchID int64) error {
	if w.Crash == nil {
		return nil
	}
	return w.Crash(stage, batchID)
}

func (w *SubmitWorker) readBackDelay() time.Duration {
	if w.ReadBackDelay == 0 {
		return time.Minute
	}
	return w.ReadBackDelay
}

// prepare locks the batch, quarantines items that fail the adapter's check,
// and loads the items still to send. done is true when the batch is already
// final.
func (w *SubmitWorker) prepare(ctx context.Context, job *river.Job[SubmitArgs]) (*submission, bool, error) {
	sub := &submission{batchID: job.Args.BatchID}
	done := false
	var quarantined []quarantinedItem
	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		var tenantID, ecosystem string
		err := tx.QueryRow(ctx, `
			SELECT tenant_id, ecosystem, state, posted_at,
			       (SELECT count(*) FROM submission_attempts WHERE batch_id = b.id)
			FROM export_batches b WHERE id = $1 FOR UPDATE`,
			sub.batchID).Scan(&tenantID, &ecosystem, &sub.state, &sub.postedAt, &sub.attempt)
		if errors.Is(err, pgx.ErrNoRows) {
			return river.JobCancel(fmt.Errorf("batch %d does not exist", sub.batchID))
		}
		if err != nil {
			return fmt.Errorf("lock batch %d: %w", sub.batchID, err)
		}
		switch sub.state {
		case batchAccepted, batchDryRun, batchPartiallyDiscarded, batchQuarantined, batchRejected, batchSplit:
			done = true
			_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
			return err
		case batchAwaitingApproval:
			// Cancelled, not completed: a completed job would make
			// ApproveBatchTx's unique insert a duplicate that never runs.
			return river.JobCancel(fmt.Errorf("batch %d is awaiting approval", sub.batchID))
		}

		if sub.config, err = tenant.Get(ctx, tx, tenantID, ecosystem); err != nil {
			return err
		}
		items, err := loadItems(ctx, tx, sub.batchID)
		if err != nil {
			return err
		}
		adapter := w.Adapters[ecosystem]
		now := time.Now()
		for _, item := range items {
			if adapter != nil {
				if err := adapter.Check(item.body, now); err != nil {
					quarantined = append(quarantined, quarantinedItem{id: item.id, reason: err.Error(),
						expired: errors.Is(err, regulator.ErrItemExpired)})
					continue
				}
			}
			sub.items = append(sub.items, item)
		}
		return quarantineItems(ctx, tx, quarantined)
	})
	if err != nil {
		return nil, false, err
	}
	for _, item := range quarantined {
		class := "invalid"
		if item.expired {
			class = "expired"
		}
		metrics.quarantinedItems.Add(ctx, 1, metricAttrs(sub.config.Ecosystem, attribute.String("reason", class)))
		w.Logger.Warn("report item quarantined before sending", "event", "submit.item_quarantined",
			"batch_id", sub.batchID, "tenant_id", sub.config.TenantID, "report_item_id", item.id, "reason", item.reason)
	}
	return sub, done, nil
}

type quarantinedItem struct {
	id      int64
	reason  string
	expired bool
}

func quarantineItems(ctx context.Context, tx pgx.Tx, items []quarantinedItem) error {
	if len(items) == 0 {
		return nil
	}
	ids := make([]int64, len(items))
	reasons := make([]string, len(items))
	for i, item := range items {
		ids[i], reasons[i] = item.id, item.reason
	}
	_, err := tx.Exec(ctx, `
		UPDATE report_items i SET state = 'quarantined', state_reason = q.reason, updated_at = now()
		FROM unnest($1::bigint[], $2::text[]) AS q(id, reason) WHERE i.id = q.id`, ids, reasons)
	if err != nil {
		return fmt.Errorf("quarantine %d items: %w", len(items), err)
	}
	return nil
}

func loadItems(ctx context.Context, tx pgx.Tx, batchID int64) ([]batchItem, error) {
	rows, err := tx.Query(ctx, `
		SELECT id, fapi_interaction_id, body, coalesce(trace_parent, '') FROM report_items
		WHERE batch_id = $1 AND state = 'batched' ORDER BY id`, batchID)
	if err != nil {
		return nil, fmt.Errorf("read items of batch %d: %w", batchID, err)
	}
	items, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (batchItem, error) {
		var item batchItem
		err := row.Scan(&item.id, &item.fapiInteractionID, &item.body, &item.traceParent)
		return item, err
	})
	if err != nil {
		return nil, fmt.Errorf("read items of batch %d: %w", batchID, err)
	}
	return items, nil
}

// markPosting commits the posting marker and a new attempt before the
// request leaves.
func (w *SubmitWorker) markPosting(ctx context.Context, sub *submission) error {
	sub.attempt++
	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = 'posting', posted_at = now(), updated_at = now()
			WHERE id = $1`, sub.batchID); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `
			INSERT INTO submission_attempts (tenant_id, ecosystem, batch_id, attempt, item_count)
			VALUES ($1, $2, $3, $4, $5) RETURNING id`,
			sub.config.TenantID, sub.config.Ecosystem, sub.batchID, sub.attempt, len(sub.items)).Scan(&sub.attemptID)
	})
	if err != nil {
		return fmt.Errorf("mark batch %d posting: %w", sub.batchID, err)
	}
	return nil
}

// dryRun records what would have been sent, without sending it: one attempt
// with outcome dry_run and the SHA-256 of the canonical JSON array of the
// items, and the batch and its items in state dry_run. It writes no receipt
// and no evidence, since only a real regulator receipt creates evidence.
//
// NOTE: the array of items is the OFB request body. The OPIN request is a
// JWS over {organisationId, events}, which is randomized, so for OPIN the
// hash covers the events before wrapping and signing.
func (w *SubmitWorker) dryRun(ctx context.Context, job *river.Job[SubmitArgs], sub *submission,
	logger *slog.Logger,
) error {
	bodies := make([]json.RawMessage, len(sub.items))
	for i, item := range sub.items {
		bodies[i] = item.body
	}
	request, err := json.Marshal(bodies)
	if err != nil {
		return fmt.Errorf("encode dry-run request of batch %d: %w", sub.batchID, err)
	}
	canonical, err := canonicaljson.Marshal(request)
	if err != nil {
		return fmt.Errorf("canonicalize dry-run request of batch %d: %w", sub.batchID, err)
	}
	requestSHA := canonicaljson.SHA256(canonical)

	err = pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			INSERT INTO submission_attempts (tenant_id, ecosystem, batch_id, attempt, item_count, request_sha256,
			                                 outcome, finished_at)
			VALUES ($1, $2, $3, $4, $5, $6, 'dry_run', now())`,
			sub.config.TenantID, sub.config.Ecosystem, sub.batchID, sub.attempt+1, len(sub.items), requestSHA); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			UPDATE report_items SET state = 'dry_run', updated_at = now() WHERE batch_id = $1 AND state = 'batched'`,
			sub.batchID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = 'dry_run', last_error = NULL, finished_at = now(), updated_at = now()
			WHERE id = $1`, sub.batchID); err != nil {
			return err
		}
		_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	if err != nil {
		return fmt.Errorf("record dry run of batch %d: %w", sub.batchID, err)
	}
	logger.Info("dry run: batch built and hashed, not sent", "event", "submit.batch_dry_run",
		"items", len(sub.items), "request_sha256", requestSHA)
	return nil
}

// ActionBatchApprove is the audit_ledger action of ApproveBatchTx.
const ActionBatchApprove = "batch.approve"

// ErrNotAwaitingApproval is returned by ApproveBatchTx for a batch that is
// not in state awaiting_approval.
var ErrNotAwaitingApproval = errors.New("batch is not awaiting approval")

// ApproveBatchTx approves batch batchID on behalf of actor inside tx, which
// must be READ COMMITTED: it moves the batch from awaiting_approval to
// sealed, records approved_by and approved_at, appends an audit_ledger row
// with action ActionBatchApprove and subject "batch/<id>", and enqueues the
// batch's submit job with client. Nothing is written unless tx commits.
func ApproveBatchTx(ctx context.Context, tx pgx.Tx, client *river.Client[pgx.Tx], actor string, batchID int64) error {
	if strings.TrimSpace(actor) == "" {
		return errors.New("approve batch: actor is missing")
	}
	var tenantID, ecosystem, state string
	err := tx.QueryRow(ctx, `SELECT tenant_id, ecosystem, state FROM export_batches WHERE id = $1 FOR UPDATE`,
		batchID).Scan(&tenantID, &ecosystem, &state)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("approve batch %d: batch not found", batchID)
	}
	if err != nil {
		return fmt.Errorf("approve batch %d: %w", batchID, err)
	}
	if state != batchAwaitingApproval {
		return fmt.Errorf("approve batch %d: %w: its state is %s", batchID, ErrNotAwaitingApproval, state)
	}
	if _, err := tx.Exec(ctx, `
		UPDATE export_batches SET state = 'sealed', approved_by = $2, approved_at = now(), updated_at = now()
		WHERE id = $1`, batchID, actor); err != nil {
		return fmt.Errorf("approve batch %d: %w", batchID, err)
	}
	err = audit.Append(ctx, tx, audit.Entry{
		Action:    ActionBatchApprove,
		Actor:     actor,
		Ecosystem: ecosystem,
		New:       map[string]any{"approved_by": actor, "batch_id": batchID, "state": "sealed"},
		Old:       map[string]any{"batch_id": batchID, "state": batchAwaitingApproval},
		Subject:   "batch/" + strconv.FormatInt(batchID, 10),
		TenantID:  tenantID,
	})
	if err != nil {
		return fmt.Errorf("approve batch %d: %w", batchID, err)
	}
	if _, err := client.InsertTx(ctx, tx, SubmitArgs{BatchID: batchID}, nil); err != nil {
		return fmt.Errorf("approve batch %d: enqueue submit: %w", batchID, err)
	}
	return nil
}

// readBack queries the regulator for which of the batch's items it already holds,
// records those as accepted, and leaves only the missing ones in sub.items.
// When the regulator cannot read back, every item is sent again and the
// regulator's own duplicate detection applies.
func (w *SubmitWorker) readBack(ctx context.Context, adapter regulator.Adapter, sub *submission, logger *slog.Logger) error {
	var missing []batchItem
	found := 0
	// Items are read back in chunks, and each chunk's finds are recorded at
	// once, so a run that times out keeps its progress and the next run
	// reads back only the items still batched.
	for start := 0; start < len(sub.items); start += readBackChunk {
		chunk := sub.items[start:min(start+readBackChunk, len(sub.items))]
		results := make([]readBackResult, len(chunk))
		var wg sync.WaitGroup
		slots := make(chan struct{}, readBackConcurrency)
		for i, item := range chunk {
			wg.Add(1)
			slots <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				results[i].found, results[i].reportID, results[i].err = adapter.Lookup(ctx, sub.config, item.body)
			}()
		}
		wg.Wait()

		var chunkFound []readBackItem
		for i, result := range results {
			if errors.Is(result.err, regulator.ErrLookupUnsupported) {
				logger.Warn("regulator cannot read back; resending the interrupted batch",
					"event", "submit.read_back_unsupported", "items", len(sub.items))
				return nil
			}
			if result.err != nil {
				return fmt.Errorf("read back item %d of batch %d: %w", chunk[i].id, sub.batchID, result.err)
			}
			if result.found {
				chunkFound = append(chunkFound, readBackItem{batchItem: chunk[i], reportID: result.reportID})
			} else {
				missing = append(missing, chunk[i])
			}
		}
		if len(chunkFound) > 0 {
			if err := w.recordReadBack(ctx, sub, chunkFound); err != nil {
				return err
			}
			found += len(chunkFound)
			metrics.readBackRecovered.Add(ctx, int64(len(chunkFound)), ecosystemAttr(sub.config.Ecosystem))
		}
	}
	logger.Info("interrupted batch read back", "event", "submit.read_back", "found", found, "missing", len(missing))
	sub.items = missing
	return nil
}

// Read-back limits: items per recorded chunk, and lookups in flight.
const (
	readBackChunk       = 100
	readBackConcurrency = 8
)

type readBackResult struct {
	err      error
	found    bool
	reportID string
}

// handleFailure records a failed request and decides what happens next:
// 413 splits the batch; 400, 403, 415 and other client errors reject it;
// 429 and 401 retry with the batch known not to be stored; 5xx, 408 and
// transport errors retry with the batch left in state posting, because the
// regulator may have stored it.
func (w *SubmitWorker) handleFailure(ctx context.Context, job *river.Job[SubmitArgs], sub *submission,
	cause error, logger *slog.Logger,
) error {
	statusErr := regulator.AsStatusError(cause)
	status := 0
	if statusErr != nil {
		status = statusErr.StatusCode
	}

	switch {
	case status == http.StatusRequestEntityTooLarge:
		return w.split(ctx, job, sub, cause, logger)
	case status >= 400 && status < 500 && status != http.StatusUnauthorized &&
		status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
		return w.reject(ctx, job, sub, cause, logger)
	}

	nextState := batchPosting
	if status == http.StatusTooManyRequests || status == http.StatusUnauthorized {
		nextState = batchRetry
	}
	if err := w.recordAttemptFailure(ctx, sub, status, cause, nextState); err != nil {
		return err
	}
	logger.Warn("submission failed; will retry", "event", "submit.retry", "error", cause,
		"status_code", status, "attempt", sub.attempt, "items", len(sub.items), "next_state", nextState)

	if statusErr != nil && statusErr.RetryAfter > 0 {
		wait := min(statusErr.RetryAfter, w.maxRetryAfter())
		if nextState == batchPosting {
			wait = max(wait, w.readBackDelay())
		}
		return river.JobSnooze(wait)
	}
	return fmt.Errorf("submit batch %d: %w", sub.batchID, cause)
}

func (w *SubmitWorker) maxRetryAfter() time.Duration {
	if w.MaxRetryAfter == 0 {
		return 15 * time.Minute
	}
	return w.MaxRetryAfter
}

func (w *SubmitWorker) recordAttemptFailure(ctx context.Context, sub *submission, status int, cause error,
	nextState string,
) error {
	var statusCode *int
	if status != 0 {
		statusCode = &status
	}
	err := pgx.BeginFunc(context.WithoutCancel(ctx), w.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			UPDATE submission_attempts SET finished_at = now(), http_status = $2, outcome = 'failed', error = $3
			WHERE id = $1`, sub.attemptID, statusCode, cause.Error()); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = $2, last_error = $3, updated_at = now() WHERE id = $1`,
			sub.batchID, nextState, cause.Error())
		return err
	})
	if err != nil {
		return fmt.Errorf("record failure of batch %d (%v): %w", sub.batchID, cause, err)
	}
	return nil
}

// NextRetry backs off exponentially from one second to five minutes, with
// jitter, instead of River's default, which waits hours by the tenth
// attempt: regulator outages are usually short and deadlines are daily.
func (w *SubmitWorker) NextRetry(job *river.Job[SubmitArgs]) time.Time {
	backoff := time.Second << min(job.Attempt-1, 9)
	backoff = min(backoff, 5*time.Minute)
	jitter := time.Duration(rand.Int64N(int64(backoff)/4 + 1))
	return time.Now().Add(backoff + jitter)
}
