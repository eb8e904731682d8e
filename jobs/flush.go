package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/finnest/eventruntime/tenant"
)

// MaxBatchItems is the most items one regulator request may carry; both
// regulators answer 413 above it.
const MaxBatchItems = 5000

// FlushArgs asks for one pass of the flush policy over every enabled tenant.
type FlushArgs struct{}

// Kind returns the job kind.
func (FlushArgs) Kind() string { return "flush" }

// InsertOpts puts flush jobs on the control queue.
func (FlushArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: QueueControl} }

// FlushWorker seals pending report items into export batches of at most
// MaxBatchItems per tenant and ecosystem, and enqueues a submit job for each
// batch in the same transaction. A tenant in near-real-time mode is flushed
// once it has a full batch or its oldest pending item has waited its flush
// interval. The database, not the scheduler, records what was flushed, so a
// missed or repeated run loses nothing and seals nothing twice.
type FlushWorker struct {
	river.WorkerDefaults[FlushArgs]
	Logger *slog.Logger
	Pool   *pgxpool.Pool
}

// Work runs one flush pass.
func (w *FlushWorker) Work(ctx context.Context, job *river.Job[FlushArgs]) error {
	configs, err := tenant.ListEnabled(ctx, w.Pool)
	if err != nil {
		return err
	}
	for _, config := range configs {
		for {
			sealed, err := w.sealOne(ctx, config)
			if err != nil {
				return fmt.Errorf("flush tenant %s (%s): %w", config.TenantID, config.Ecosystem, err)
			}
			if !sealed {
				break
			}
		}
	}
	return nil
}

// sealOne seals one batch for the tenant when its policy says so, and reports
// whether it did.
func (w *FlushWorker) sealOne(ctx context.Context, config *tenant.Config) (bool, error) {
	var sealed bool
	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		var pending int
		var oldest *time.Time
		err := tx.QueryRow(ctx, `
			SELECT count(*), min(created_at) FROM (
				SELECT created_at FROM report_items
				WHERE tenant_id = $1 AND ecosystem = $2 AND state = 'pending'
				ORDER BY id LIMIT $3) p`,
			config.TenantID, config.Ecosystem, MaxBatchItems).Scan(&pending, &oldest)
		if err != nil {
			return fmt.Errorf("count pending items: %w", err)
		}
		if pending == 0 {
			return nil
		}
		if pending < MaxBatchItems && time.Since(*oldest) < config.FlushInterval {
			return nil
		}

		var batchID int64
		err = tx.QueryRow(ctx, `
			INSERT INTO export_batches (tenant_id, ecosystem, state, sealed_at)
			VALUES ($1, $2, 'sealed', now()) RETURNING id`, config.TenantID, config.Ecosystem).Scan(&batchID)
		if err != nil {
			return fmt.Errorf("create batch: %w", err)
		}
		tag, err := tx.Exec(ctx, `
			UPDATE report_items SET state = 'batched', batch_id = $1, updated_at = now()
			WHERE id IN (
				SELECT id FROM report_items
				WHERE tenant_id = $2 AND ecosystem = $3 AND state = 'pending'
				ORDER BY id LIMIT $4
				FOR UPDATE SKIP LOCKED)`,
			batchID, config.TenantID, config.Ecosystem, MaxBatchItems)
		if err != nil {
			return fmt.Errorf("assign items to batch %d: %w", batchID, err)
		}
		if tag.RowsAffected() == 0 {
			// Another flush took the items between the count and the update.
			return errRollback
		}
		if _, err := tx.Exec(ctx, `UPDATE export_batches SET item_count = $1 WHERE id = $2`,
			tag.RowsAffected(), batchID); err != nil {
			return fmt.Errorf("count items of batch %d: %w", batchID, err)
		}
		client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
		if err != nil {
			return err
		}
		if _, err := client.InsertTx(ctx, tx, SubmitArgs{BatchID: batchID}, nil); err != nil {
			return fmt.Errorf("enqueue submit of batch %d: %w", batchID, err)
		}
		sealed = true
		w.Logger.Info("batch sealed", "event", "flush.batch_sealed", "tenant_id", config.TenantID,
			"ecosystem", config.Ecosystem, "batch_id", batchID, "items", tag.RowsAffected())
		return nil
	})
	if err == errRollback {
		return false, nil
	}
	return sealed, err
}
