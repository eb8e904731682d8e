package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"go.opentelemetry.io/otel/attribute"

	"github.com/finnest/eventruntime/internal/canonicaljson"
	"github.com/finnest/eventruntime/regulator"
)

// finish records the regulator's response (nil when every item was settled
// without a request), sets the batch's final state from its items' states,
// and completes the job, all in one transaction.
func (w *SubmitWorker) finish(ctx context.Context, job *river.Job[SubmitArgs], sub *submission,
	result *regulator.Result, logger *slog.Logger,
) error {
	if result != nil && len(result.Items) != len(sub.items) {
		cause := fmt.Errorf("regulator returned %d results for %d items", len(result.Items), len(sub.items))
		return w.handleFailure(ctx, job, sub, cause, logger)
	}

	var counts itemCounts
	var discardClasses map[string]int
	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if result != nil {
			var err error
			if discardClasses, err = w.recordResult(ctx, tx, sub, result); err != nil {
				return err
			}
		}
		var err error
		if counts, err = countItems(ctx, tx, sub.batchID); err != nil {
			return err
		}
		if counts.batched > 0 {
			return fmt.Errorf("batch %d still has %d items without an outcome", sub.batchID, counts.batched)
		}
		counts.state = counts.finalState()
		if _, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = $2, accepted_count = $3, discarded_count = $4,
			       last_error = NULL, finished_at = now(), updated_at = now()
			WHERE id = $1`, sub.batchID, counts.state, counts.accepted, counts.discarded); err != nil {
			return fmt.Errorf("finish batch %d: %w", sub.batchID, err)
		}
		if err := w.crash(StageBeforeReceiptCommit, sub.batchID); err != nil {
			return err
		}
		_, err = river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	if err != nil {
		return fmt.Errorf("record result of batch %d: %w", sub.batchID, err)
	}

	ecosystem := sub.config.Ecosystem
	metrics.batches.Add(ctx, 1, metricAttrs(ecosystem, attribute.String("outcome", counts.state)))
	for class, n := range discardClasses {
		metrics.discardedItems.Add(ctx, int64(n), metricAttrs(ecosystem, attribute.String("reason", class)))
	}
	statusCode := 0
	if result != nil {
		statusCode = result.StatusCode
	}
	level := slog.LevelInfo
	if counts.state != batchAccepted {
		level = slog.LevelWarn
	}
	logger.Log(ctx, level, "batch finished", "event", "submit.batch_"+counts.state,
		"sent", len(sub.items), "accepted", counts.accepted, "discarded", counts.discarded,
		"quarantined", counts.quarantined, "status_code", statusCode, "attempt", sub.attempt)
	return nil
}

// recordResult stores receipts, evidence and item states for the items of
// one request the regulator responded to, and closes its attempt. It returns the number of
// discarded items per reason class.
func (w *SubmitWorker) recordResult(ctx context.Context, tx pgx.Tx, sub *submission, result *regulator.Result,
) (map[string]int, error) {
	requestCanonical, err := canonicaljson.Marshal(result.RequestBody)
	if err != nil {
		return nil, fmt.Errorf("canonicalize request of batch %d: %w", sub.batchID, err)
	}
	requestSHA := canonicaljson.SHA256(requestCanonical)

	receipts := newReceiptRows(len(sub.items))
	evidence := evidenceRows{{
		uuid.Must(uuid.NewV7()), sub.config.TenantID, sub.config.Ecosystem, "request", sub.batchID, nil,
		requestSHA, requestCanonical,
	}}

	discardClasses := map[string]int{}
	for i, item := range sub.items {
		verdict := result.Items[i]
		var evidenceID *uuid.UUID
		if verdict.Status == regulator.StatusAccepted {
			id, err := evidence.addItem(sub, item)
			if err != nil {
				return nil, err
			}
			evidenceID = &id
		} else {
			discardClasses[discardClass(verdict.Message)]++
			w.Logger.Warn("report item discarded by the regulator", "event", "submit.item_discarded",
				"batch_id", sub.batchID, "tenant_id", sub.config.TenantID, "report_item_id", item.id,
				"reason", discardClass(verdict.Message), "message", verdict.Message)
		}
		receipts.add(item, verdict.ReportID, verdict.Status, verdict.Message, evidenceID)
	}

	if err := evidence.insert(ctx, tx, sub); err != nil {
		return nil, err
	}
	if err := receipts.insert(ctx, tx, sub, "response"); err != nil {
		return nil, err
	}
	_, err = tx.Exec(ctx, `
		UPDATE submission_attempts SET finished_at = now(), http_status = $2, outcome = 'answered',
		       request_sha256 = $3
		WHERE id = $1`, sub.attemptID, result.StatusCode, requestSHA)
	if err != nil {
		return nil, fmt.Errorf("finish attempt of batch %d: %w", sub.batchID, err)
	}
	return discardClasses, nil
}

// evidenceRows collects payload_evidence rows for one COPY.
type evidenceRows [][]any

// addItem adds the canonical form and hash of an accepted item, and returns
// the evidence id.
func (e *evidenceRows) addItem(sub *submission, item batchItem) (uuid.UUID, error) {
	canonical, err := canonicaljson.Marshal(item.body)
	if err != nil {
		return uuid.Nil, fmt.Errorf("canonicalize item %d: %w", item.id, err)
	}
	id := uuid.Must(uuid.NewV7())
	*e = append(*e, []any{
		id, sub.config.TenantID, sub.config.Ecosystem, "item", sub.batchID, &item.id,
		canonicaljson.SHA256(canonical), canonical,
	})
	return id, nil
}

// insert stores the rows with one COPY instead of one INSERT per item.
func (e evidenceRows) insert(ctx context.Context, tx pgx.Tx, sub *submission) error {
	if len(e) == 0 {
		return nil
	}
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"payload_evidence"},
		[]string{"id", "tenant_id", "ecosystem", "kind", "batch_id", "report_item_id", "sha256", "canonical"},
		pgx.CopyFromRows(e))
	if err != nil {
		return fmt.Errorf("store evidence of batch %d: %w", sub.batchID, err)
	}
	return nil
}

type readBackItem struct {
	batchItem
	reportID string
}

// recordReadBack stores receipts and evidence for items the regulator was
// found to hold already.
func (w *SubmitWorker) recordReadBack(ctx context.Context, sub *submission, found []readBackItem) error {
	return pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		receipts := newReceiptRows(len(found))
		evidence := make(evidenceRows, 0, len(found))
		for _, item := range found {
			id, err := evidence.addItem(sub, item.batchItem)
			if err != nil {
				return err
			}
			receipts.add(item.batchItem, item.reportID, regulator.StatusAccepted, "", &id)
		}
		if err := evidence.insert(ctx, tx, sub); err != nil {
			return err
		}
		return receipts.insert(ctx, tx, sub, "read_back")
	})
}

// receiptRows collects receipts for one multi-row insert.
type receiptRows struct {
	itemIDs     []int64
	fapiIDs     []string
	reportIDs   []*string
	statuses    []string
	messages    []*string
	evidenceIDs []*uuid.UUID
}

func newReceiptRows(n int) *receiptRows {
	return &receiptRows{
		itemIDs: make([]int64, 0, n), fapiIDs: make([]string, 0, n), reportIDs: make([]*string, 0, n),
		statuses: make([]string, 0, n), messages: make([]*string, 0, n), evidenceIDs: make([]*uuid.UUID, 0, n),
	}
}

func (r *receiptRows) add(item batchItem, reportID, status, message string, evidenceID *uuid.UUID) {
	r.itemIDs = append(r.itemIDs, item.id)
	r.fapiIDs = append(r.fapiIDs, item.fapiInteractionID)
	r.reportIDs = append(r.reportIDs, nonEmpty(reportID))
	r.statuses = append(r.statuses, status)
	r.messages = append(r.messages, nonEmpty(message))
	r.evidenceIDs = append(r.evidenceIDs, evidenceID)
}

// insert writes the receipts and moves each item to accepted or discarded.
func (r *receiptRows) insert(ctx context.Context, tx pgx.Tx, sub *submission, source string) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO submission_receipts (tenant_id, ecosystem, batch_id, source, report_item_id,
		                                 fapi_interaction_id, report_id, status, message, evidence_id)
		SELECT $1, $2, $3, $4, * FROM unnest($5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::uuid[])`,
		sub.config.TenantID, sub.config.Ecosystem, sub.batchID, source,
		r.itemIDs, r.fapiIDs, r.reportIDs, r.statuses, r.messages, r.evidenceIDs)
	if err != nil {
		return fmt.Errorf("store receipts of batch %d: %w", sub.batchID, err)
	}
	_, err = tx.Exec(ctx, `
		UPDATE report_items i SET state = CASE r.status WHEN 'ACCEPTED' THEN 'accepted' ELSE 'discarded' END,
		       state_reason = r.message, updated_at = now()
		FROM unnest($1::bigint[], $2::text[], $3::text[]) AS r(id, status, message)
		WHERE i.id = r.id`, r.itemIDs, r.statuses, r.messages)
	if err != nil {
		return fmt.Errorf("update item states of batch %d: %w", sub.batchID, err)
	}
	return nil
}

func nonEmpty(text string) *string {
	if text == "" {
		return nil
	}
	return &text
}

// itemCounts counts a batch's items by state.
type itemCounts struct {
	accepted, batched, discarded, quarantined, rejected int
	state                                               string
}

func countItems(ctx context.Context, tx pgx.Tx, batchID int64) (itemCounts, error) {
	var c itemCounts
	err := tx.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE state = 'accepted'), count(*) FILTER (WHERE state = 'batched'),
		       count(*) FILTER (WHERE state = 'discarded'), count(*) FILTER (WHERE state = 'quarantined'),
		       count(*) FILTER (WHERE state = 'rejected')
		FROM report_items WHERE batch_id = $1`, batchID).
		Scan(&c.accepted, &c.batched, &c.discarded, &c.quarantined, &c.rejected)
	if err != nil {
		return c, fmt.Errorf("count items of batch %d: %w", batchID, err)
	}
	return c, nil
}

// finalState is accepted when every item was accepted, partially_discarded
// when some were, quarantined when every item failed the check before
// sending, and rejected otherwise.
func (c itemCounts) finalState() string {
	switch {
	case c.accepted > 0 && c.discarded == 0 && c.quarantined == 0 && c.rejected == 0:
		return batchAccepted
	case c.accepted > 0:
		return batchPartiallyDiscarded
	case c.discarded == 0 && c.rejected == 0 && c.quarantined > 0:
		return batchQuarantined
	default:
		return batchRejected
	}
}

// reject ends the batch as rejected after a response that resending cannot
// change (400, 403, 415 and similar). Its unsent items end as rejected with
// the regulator's message, for an operator to inspect and re-drive.
func (w *SubmitWorker) reject(ctx context.Context, job *river.Job[SubmitArgs], sub *submission, cause error,
	logger *slog.Logger,
) error {
	status := regulator.AsStatusError(cause).StatusCode
	ids := make([]int64, len(sub.items))
	for i, item := range sub.items {
		ids[i] = item.id
	}
	// Items accepted earlier, by a read-back after an interrupted request,
	// keep their outcome, so the batch's state comes from its items' counts.
	var counts itemCounts
	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			UPDATE report_items SET state = 'rejected', state_reason = $2, updated_at = now()
			WHERE id = ANY($1)`, ids, cause.Error()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			UPDATE submission_attempts SET finished_at = now(), http_status = $2, outcome = 'rejected', error = $3
			WHERE id = $1`, sub.attemptID, status, cause.Error()); err != nil {
			return err
		}
		var err error
		if counts, err = countItems(ctx, tx, sub.batchID); err != nil {
			return err
		}
		counts.state = counts.finalState()
		if _, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = $3, last_error = $2, accepted_count = $4, discarded_count = $5,
			       finished_at = now(), updated_at = now()
			WHERE id = $1`, sub.batchID, cause.Error(), counts.state, counts.accepted, counts.discarded); err != nil {
			return err
		}
		_, err = river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	if err != nil {
		return fmt.Errorf("reject batch %d: %w", sub.batchID, err)
	}
	ecosystem := sub.config.Ecosystem
	metrics.rejectedBatches.Add(ctx, 1, metricAttrs(ecosystem, attribute.String("status_code", strconv.Itoa(status))))
	metrics.batches.Add(ctx, 1, metricAttrs(ecosystem, attribute.String("outcome", counts.state)))
	logger.Error("regulator rejected the batch; its items need an operator", "event", "submit.batch_rejected",
		"status_code", status, "items", len(sub.items), "accepted_before", counts.accepted, "state", counts.state,
		"error", cause)
	return nil
}

// split ends a batch the regulator refused as too large (413) and seals its
// items into two new batches, each with its own submit job. A single item
// that is too large is rejected.
func (w *SubmitWorker) split(ctx context.Context, job *river.Job[SubmitArgs], sub *submission, cause error,
	logger *slog.Logger,
) error {
	if len(sub.items) <= 1 {
		return w.reject(ctx, job, sub, cause, logger)
	}
	half := len(sub.items) / 2
	parts := [][]batchItem{sub.items[:half], sub.items[half:]}
	var children []int64
	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
		if err != nil {
			return err
		}
		for _, part := range parts {
			ids := make([]int64, len(part))
			for i, item := range part {
				ids[i] = item.id
			}
			var childID int64
			if err := tx.QueryRow(ctx, `
				INSERT INTO export_batches (tenant_id, ecosystem, state, sealed_at, item_count, parent_batch_id)
				VALUES ($1, $2, 'sealed', now(), $3, $4) RETURNING id`,
				sub.config.TenantID, sub.config.Ecosystem, len(part), sub.batchID).Scan(&childID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE report_items SET batch_id = $1, updated_at = now() WHERE id = ANY($2)`,
				childID, ids); err != nil {
				return err
			}
			if _, err := client.InsertTx(ctx, tx, SubmitArgs{BatchID: childID}, nil); err != nil {
				return err
			}
			children = append(children, childID)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE submission_attempts SET finished_at = now(), http_status = 413, outcome = 'split', error = $2
			WHERE id = $1`, sub.attemptID, cause.Error()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			UPDATE export_batches SET state = 'split', last_error = $2, finished_at = now(), updated_at = now()
			WHERE id = $1`, sub.batchID, cause.Error()); err != nil {
			return err
		}
		_, err = river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	if err != nil {
		return fmt.Errorf("split batch %d: %w", sub.batchID, err)
	}
	logger.Warn("regulator rejected the batch as too large (413); split it in two", "event", "submit.batch_split",
		"items", len(sub.items), "child_batch_ids", children)
	return nil
}
