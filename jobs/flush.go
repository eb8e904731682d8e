package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/finnest/eventruntime/internal/businessday"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/tenant"
)

// Batch limits. Both regulators respond with 413 above MaxBatchItems; the byte cap
// keeps a request well inside what HTTP servers and proxies usually accept.
const (
	MaxBatchItems = 5000
	MaxBatchBytes = 4 << 20
)

// MaxReportAge is how old a report may be before the regulators discard it.
const MaxReportAge = 7 * 24 * time.Hour

// DefaultEscalationLead is how long before an item's business day reaches
// MaxReportAge that an unsubmitted item raises an escalation.
const DefaultEscalationLead = 24 * time.Hour

// FlushArgs requests one pass of the flush policy over every enabled tenant.
type FlushArgs struct{}

// Kind returns the job kind.
func (FlushArgs) Kind() string { return "flush" }

// InsertOpts puts flush jobs on the control queue.
func (FlushArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: QueueControl} }

// FlushWorker seals pending report items into export batches per tenant and
// ecosystem, at most MaxBatchItems and MaxBatchBytes each, and enqueues a
// submit job for each batch in the same transaction. For a tenant with
// approval_required the batch is left in state awaiting_approval with no
// submit job.
//
// The tenant's policy, read from tenant_config on every run, decides when:
// near_real_time seals once a full batch is pending or the oldest pending
// item has waited flush_interval; scheduled seals everything every
// schedule_cadence inside the daily window. Either way, items of business day
// D are sealed as soon as the deadline of D (08:00 on D+1 in the regulator's
// zone) is less than deadline_margin away. The database records what was
// sealed and when the schedule last ran, so a missed, repeated or restarted
// run loses nothing and seals nothing twice.
type FlushWorker struct {
	river.WorkerDefaults[FlushArgs]

	// EscalationLead is how long before the D+7 limit unsubmitted items
	// raise an escalation. Zero means DefaultEscalationLead.
	EscalationLead time.Duration

	Logger *slog.Logger

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	Pool *pgxpool.Pool

	// UnconfiguredEvery is how often a run counts pending items of tenants
	// without an enabled configuration. Zero means every minute. Register
	// sets ten flush periods.
	UnconfiguredEvery time.Duration

	calendars sync.Map // zone name to businessday.Calendar

	unconfiguredMu   sync.Mutex
	unconfiguredNext time.Time
}

// Work runs one flush pass.
func (w *FlushWorker) Work(ctx context.Context, job *river.Job[FlushArgs]) error {
	configs, err := tenant.ListEnabled(ctx, w.Pool)
	if err != nil {
		return err
	}
	now := w.now()
	var failures []error
	escalated := map[string]int64{outbox.EcosystemOFB: 0, outbox.EcosystemOPIN: 0}
	for _, config := range configs {
		if err := w.flushTenant(ctx, config, now); err != nil {
			// One tenant's failure must not hold back the others.
			w.Logger.Error("flush failed", "event", "flush.failed", "tenant_id", config.TenantID,
				"ecosystem", config.Ecosystem, "error", err)
			failures = append(failures, err)
		}
		n, err := w.escalate(ctx, config, now)
		if err != nil {
			failures = append(failures, err)
		}
		escalated[config.Ecosystem] += n
	}
	// One reading per ecosystem, summed over its tenants.
	for ecosystem, n := range escalated {
		metrics.escalatedItems.Record(ctx, n, ecosystemAttr(ecosystem))
	}
	if err := w.resumeStranded(ctx); err != nil {
		failures = append(failures, err)
	}
	// A failed count is logged and does not fail the run, which has sealed
	// its batches already.
	if err := w.reportUnconfigured(ctx); err != nil {
		w.Logger.Error("count of unconfigured tenants' items failed; the next run tries again",
			"event", "flush.unconfigured_check_failed", "error", err)
	}
	return errors.Join(failures...)
}

// reportUnconfigured logs an error per tenant and sets the unconfigured-items
// gauge for pending items without an enabled configuration for their tenant
// and ecosystem, which no flush seals. It runs at most every
// UnconfiguredEvery, because it reads every pending item.
func (w *FlushWorker) reportUnconfigured(ctx context.Context) error {
	w.unconfiguredMu.Lock()
	if time.Now().Before(w.unconfiguredNext) {
		w.unconfiguredMu.Unlock()
		return nil
	}
	w.unconfiguredNext = time.Now().Add(cmp.Or(w.UnconfiguredEvery, time.Minute))
	w.unconfiguredMu.Unlock()

	rows, err := w.Pool.Query(ctx, `
		SELECT r.tenant_id, r.ecosystem, count(*), min(r.created_at) FROM report_items r
		WHERE r.state = 'pending' AND NOT EXISTS (
		    SELECT 1 FROM tenant_config c
		    WHERE c.tenant_id = r.tenant_id AND c.ecosystem = r.ecosystem AND c.enabled)
		GROUP BY r.tenant_id, r.ecosystem ORDER BY r.tenant_id, r.ecosystem`)
	if err != nil {
		return fmt.Errorf("count items of unconfigured tenants: %w", err)
	}
	totals := map[string]int64{outbox.EcosystemOFB: 0, outbox.EcosystemOPIN: 0}
	var tenantID, ecosystem string
	var items int64
	var oldest time.Time
	_, err = pgx.ForEachRow(rows, []any{&tenantID, &ecosystem, &items, &oldest}, func() error {
		totals[ecosystem] += items
		w.Logger.Error("report items are pending for a tenant without an enabled configuration, so no flush seals them; add or enable its tenant_config row",
			"event", "flush.unconfigured_tenant", "tenant_id", tenantID, "ecosystem", ecosystem,
			"items", items, "oldest_created_at", oldest)
		return nil
	})
	if err != nil {
		return fmt.Errorf("count items of unconfigured tenants: %w", err)
	}
	for ecosystem, n := range totals {
		metrics.unconfiguredItems.Record(ctx, n, ecosystemAttr(ecosystem))
	}
	return nil
}

// resumeStranded re-enqueues the submit job of every batch that is not in a
// final state and has no submit job left to run, as when River discarded one
// after its last attempt. The database decides what still needs sending.
func (w *FlushWorker) resumeStranded(ctx context.Context) error {
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return err
	}
	rows, err := w.Pool.Query(ctx, `
		SELECT b.id FROM export_batches b
		WHERE b.state IN ('sealed', 'posting', 'retry') AND b.updated_at < now() - interval '1 minute'
		  AND NOT EXISTS (
		      SELECT 1 FROM river_job j
		      WHERE j.kind = 'submit' AND (j.args->>'batch_id')::bigint = b.id
		        AND j.state IN ('available', 'pending', 'retryable', 'running', 'scheduled'))
		ORDER BY b.id LIMIT 100`)
	if err != nil {
		return fmt.Errorf("find stranded batches: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("find stranded batches: %w", err)
	}
	for _, id := range ids {
		result, err := client.Insert(ctx, SubmitArgs{BatchID: id}, &river.InsertOpts{
			// A completed or discarded job of the batch must not block this one.
			UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: notFinished},
		})
		if err != nil {
			return fmt.Errorf("resume batch %d: %w", id, err)
		}
		if !result.UniqueSkippedAsDuplicate {
			w.Logger.Warn("batch had no submit job left; enqueued a new one", "event", "submit.batch_resumed",
				"batch_id", id)
		}
	}
	return nil
}

func (w *FlushWorker) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

func (w *FlushWorker) calendar(zone string) (businessday.Calendar, error) {
	if cached, ok := w.calendars.Load(zone); ok {
		return cached.(businessday.Calendar), nil
	}
	calendar, err := businessday.NewCalendar(zone)
	if err != nil {
		return calendar, err
	}
	w.calendars.Store(zone, calendar)
	return calendar, nil
}

// UrgentBefore returns the instant before which pending items must be
// sealed now: the end of the latest business day whose deadline, less
// margin, has come.
func UrgentBefore(calendar businessday.Calendar, margin time.Duration, now time.Time) time.Time {
	day := calendar.Day(now)
	for calendar.Cutoff(day).Add(-margin).After(now) {
		day = day.AddDays(-1)
	}
	return calendar.Start(day.AddDays(1))
}

func (w *FlushWorker) flushTenant(ctx context.Context, config *tenant.Config, now time.Time) error {
	calendar, err := w.calendar(config.RegulatorZone)
	if err != nil {
		return err
	}
	urgentBefore := UrgentBefore(calendar, config.DeadlineMargin, now)

	switch config.SubmissionMode {
	case tenant.ModeScheduled:
		if scheduleDue(calendar, config, now) {
			if err := w.sealAll(ctx, config, sealFilter{}); err != nil {
				return err
			}
			if _, err := w.Pool.Exec(ctx, `
				UPDATE tenant_config SET last_flushed_at = $3 WHERE tenant_id = $1 AND ecosystem = $2`,
				config.TenantID, config.Ecosystem, now); err != nil {
				return fmt.Errorf("record scheduled flush: %w", err)
			}
		} else if err := w.sealAll(ctx, config, sealFilter{reportedBefore: &urgentBefore}); err != nil {
			return err
		}
	default:
		if err := w.sealAll(ctx, config, sealFilter{nearRealTime: true, urgentBefore: urgentBefore}); err != nil {
			return err
		}
	}
	return nil
}

// scheduleDue reports whether a scheduled tenant's window is open at now and
// its cadence has passed since the last scheduled flush.
func scheduleDue(calendar businessday.Calendar, config *tenant.Config, now time.Time) bool {
	local := now.In(calendar.Location)
	sinceMidnight := time.Duration(local.Hour())*time.Hour + time.Duration(local.Minute())*time.Minute +
		time.Duration(local.Second())*time.Second
	start, end := config.ScheduleWindowStart, config.ScheduleWindowEnd
	var open bool
	switch {
	case start == end:
		open = true
	case start < end:
		open = sinceMidnight >= start && sinceMidnight < end
	default: // the window wraps past midnight
		open = sinceMidnight >= start || sinceMidnight < end
	}
	if !open {
		return false
	}
	return config.LastFlushedAt.IsZero() || now.Sub(config.LastFlushedAt) >= config.ScheduleCadence
}

// sealFilter selects which pending items a seal takes.
type sealFilter struct {
	// nearRealTime seals only when a batch is due under the near-real-time
	// policy or an item is urgent.
	nearRealTime bool
	urgentBefore time.Time

	// reportedBefore, when set, takes only items reported before it.
	reportedBefore *time.Time
}

func (w *FlushWorker) sealAll(ctx context.Context, config *tenant.Config, filter sealFilter) error {
	for {
		sealed, err := w.sealOne(ctx, config, filter)
		if err != nil || !sealed {
			return err
		}
	}
}

// sealOne seals one batch when the filter calls for it, and reports whether it
// did.
func (w *FlushWorker) sealOne(ctx context.Context, config *tenant.Config, filter sealFilter) (bool, error) {
	reportedBefore := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	if filter.reportedBefore != nil {
		reportedBefore = *filter.reportedBefore
	}
	var sealed bool
	err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if filter.nearRealTime {
			// The database clock, which stamped created_at, decides whether
			// the oldest item has waited long enough.
			var pending int
			var due, urgent bool
			err := tx.QueryRow(ctx, `
				SELECT count(*), coalesce(min(created_at) <= now() - $5 * interval '1 microsecond', false),
				       coalesce(bool_or(reported_at < $4), false) FROM (
					SELECT created_at, reported_at FROM report_items
					WHERE tenant_id = $1 AND ecosystem = $2 AND state = 'pending'
					ORDER BY id LIMIT $3) p`,
				config.TenantID, config.Ecosystem, MaxBatchItems, filter.urgentBefore,
				config.FlushInterval.Microseconds()).Scan(&pending, &due, &urgent)
			if err != nil {
				return fmt.Errorf("count pending items: %w", err)
			}
			if pending == 0 {
				return nil
			}
			if pending < MaxBatchItems && !urgent && !due {
				return nil
			}
		}

		// A tenant that requires approval gets its batch without a submit
		// job, and ApproveBatchTx enqueues the job once an approver agrees.
		state := "sealed"
		if config.ApprovalRequired {
			state = batchAwaitingApproval
		}
		var batchID int64
		err := tx.QueryRow(ctx, `
			INSERT INTO export_batches (tenant_id, ecosystem, state, sealed_at)
			VALUES ($1, $2, $3, now()) RETURNING id`, config.TenantID, config.Ecosystem, state).Scan(&batchID)
		if err != nil {
			return fmt.Errorf("create batch: %w", err)
		}
		// Take pending items in id order up to the item and byte caps.
		tag, err := tx.Exec(ctx, `
			UPDATE report_items SET state = 'batched', batch_id = $1, updated_at = now()
			WHERE id IN (
				SELECT id FROM (
					SELECT id, sum(body_bytes + 1) OVER (ORDER BY id) AS total
					FROM (
						SELECT id, body_bytes FROM report_items
						WHERE tenant_id = $2 AND ecosystem = $3 AND state = 'pending' AND reported_at < $6
						ORDER BY id LIMIT $4
						FOR UPDATE SKIP LOCKED) candidates
				) sized
				WHERE total <= $5 OR id = (SELECT min(id) FROM report_items
				                           WHERE tenant_id = $2 AND ecosystem = $3 AND state = 'pending'
				                             AND reported_at < $6))`,
			batchID, config.TenantID, config.Ecosystem, MaxBatchItems, MaxBatchBytes, reportedBefore)
		if err != nil {
			return fmt.Errorf("assign items to batch %d: %w", batchID, err)
		}
		if tag.RowsAffected() == 0 {
			// Nothing to seal, or another flush took the items first.
			return errRollback
		}
		if _, err := tx.Exec(ctx, `UPDATE export_batches SET item_count = $1 WHERE id = $2`,
			tag.RowsAffected(), batchID); err != nil {
			return fmt.Errorf("count items of batch %d: %w", batchID, err)
		}
		if config.ApprovalRequired {
			sealed = true
			w.Logger.Info("batch sealed; awaiting approval", "event", "flush.batch_awaiting_approval",
				"tenant_id", config.TenantID, "ecosystem", config.Ecosystem, "batch_id", batchID,
				"items", tag.RowsAffected())
			return nil
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
	if errors.Is(err, errRollback) {
		return false, nil
	}
	return sealed, err
}

// escalate counts the tenant's items that are not yet submitted and whose
// report age comes within EscalationLead of MaxReportAge, after which the
// regulator discards them, and logs an error when there are any.
func (w *FlushWorker) escalate(ctx context.Context, config *tenant.Config, now time.Time) (int64, error) {
	lead := w.EscalationLead
	if lead == 0 {
		lead = DefaultEscalationLead
	}
	threshold := now.Add(-MaxReportAge + lead)
	var count int64
	var oldest *time.Time
	err := w.Pool.QueryRow(ctx, `
		SELECT count(*), min(reported_at) FROM report_items
		WHERE tenant_id = $1 AND ecosystem = $2 AND state IN ('pending', 'batched') AND reported_at < $3`,
		config.TenantID, config.Ecosystem, threshold).Scan(&count, &oldest)
	if err != nil {
		return 0, fmt.Errorf("count items near the final deadline: %w", err)
	}
	if count > 0 {
		w.Logger.Error("report items are close to the regulator's 7-day limit and not yet submitted",
			"event", "deadline.escalation", "tenant_id", config.TenantID, "ecosystem", config.Ecosystem,
			"items", count, "oldest_reported_at", oldest, "limit", oldest.Add(MaxReportAge))
	}
	return count, nil
}
