package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/finnest/eventruntime/internal/businessday"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/tenant"
)

// Reconcile triggers, stored with each result.
const (
	// TriggerAfterCutoff runs once the deadline of day D, 08:00 on D+1, has
	// passed.
	TriggerAfterCutoff = "after_d1"
	// TriggerAfterFinal runs at 08:00 on D+7, as the regulator's 7-day
	// limit for day D's reports approaches.
	TriggerAfterFinal = "after_d7"
	// TriggerManual is a reconcile an operator or script asked for.
	TriggerManual = "manual"
)

// ReconcileSampleSize is how many accepted items a reconcile reads back from
// the regulator.
const ReconcileSampleSize = 10

// ReconcileArgs requests one reconciliation of a tenant's business day.
type ReconcileArgs struct {
	// Day is the business day, "2006-01-02", in the tenant's regulator zone.
	Day       string `json:"day"`
	Ecosystem string `json:"ecosystem"`
	// Nonce distinguishes a forced rerun from an earlier reconcile of the
	// same day and trigger; empty otherwise.
	Nonce    string `json:"nonce,omitempty"`
	TenantID string `json:"tenant_id"`
	Trigger  string `json:"trigger"`
}

// Kind returns the job kind.
func (ReconcileArgs) Kind() string { return "reconcile" }

// InsertOpts makes reconcile jobs unique by their arguments in every state
// but cancelled and discarded, so a script that enqueues the same day twice
// gets the first job back instead of a second one.
func (ReconcileArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueControl, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// EnqueueReconcileTx enqueues a reconcile of a tenant's business day inside
// the caller's transaction, through an insert-only or running River client.
// When an identical reconcile is already queued, running or done, it returns
// that job with UniqueSkippedAsDuplicate set instead of adding one; force
// adds a new one anyway.
func EnqueueReconcileTx(ctx context.Context, client *river.Client[pgx.Tx], tx pgx.Tx, tenantID, ecosystem string,
	day businessday.Date, force bool,
) (*rivertype.JobInsertResult, error) {
	if tenantID == "" {
		return nil, errors.New("reconcile: tenant id is missing")
	}
	if ecosystem != outbox.EcosystemOFB && ecosystem != outbox.EcosystemOPIN {
		return nil, fmt.Errorf("reconcile: ecosystem %q is unknown (want %q or %q)",
			ecosystem, outbox.EcosystemOFB, outbox.EcosystemOPIN)
	}
	args := ReconcileArgs{Day: day.String(), Ecosystem: ecosystem, TenantID: tenantID, Trigger: TriggerManual}
	if force {
		args.Nonce = time.Now().UTC().Format(time.RFC3339Nano)
	}
	result, err := client.InsertTx(ctx, tx, args, nil)
	if err != nil {
		return nil, fmt.Errorf("enqueue reconcile of tenant %s (%s) day %s: %w", tenantID, ecosystem, day, err)
	}
	return result, nil
}

// ReconcileResult is one stored reconciliation.
type ReconcileResult struct {
	Accepted      int64
	BusinessDay   string
	Captured      int64
	CreatedAt     time.Time
	Details       map[string]any
	Discarded     int64
	Ecosystem     string
	Gap           bool
	Mapped        int64
	Quarantined   int64
	SampleChecked int
	SampleMissing int
	Submitted     int64
	TenantID      string
	Trigger       string
	Unsubmitted   int64
}

// ReconcileWorker counts a tenant's business day at every stage: captured
// (outbox), mapped, quarantined, submitted, accepted and discarded, reads a
// sample of accepted items back from the regulator, stores the result in
// reconcile_results and flags any gap.
type ReconcileWorker struct {
	river.WorkerDefaults[ReconcileArgs]
	Adapters map[string]regulator.Adapter
	Logger   *slog.Logger
	Pool     *pgxpool.Pool
}

// Work reconciles one day.
func (w *ReconcileWorker) Work(ctx context.Context, job *river.Job[ReconcileArgs]) error {
	args := job.Args
	day, err := businessday.ParseDate(args.Day)
	if err != nil {
		return river.JobCancel(err)
	}
	config, err := tenant.Get(ctx, w.Pool, args.TenantID, args.Ecosystem)
	if errors.Is(err, tenant.ErrNotFound) {
		return river.JobCancel(err)
	}
	if err != nil {
		return err
	}
	calendar, err := businessday.NewCalendar(config.RegulatorZone)
	if err != nil {
		return river.JobCancel(err)
	}
	from, to := calendar.Start(day), calendar.Start(day.AddDays(1))

	result := ReconcileResult{BusinessDay: args.Day, Ecosystem: args.Ecosystem, TenantID: args.TenantID,
		Trigger: args.Trigger, Details: map[string]any{}}
	var rejected int64
	err = w.Pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM outbox
		        WHERE tenant_id = $1 AND ecosystem = $2 AND event_type = $5
		          AND occurred_at >= $3 AND occurred_at < $4),
		       count(*),
		       count(*) FILTER (WHERE state = 'quarantined'),
		       count(*) FILTER (WHERE state IN ('accepted', 'discarded')),
		       count(*) FILTER (WHERE state = 'accepted'),
		       count(*) FILTER (WHERE state = 'discarded'),
		       count(*) FILTER (WHERE state IN ('pending', 'batched')),
		       count(*) FILTER (WHERE state = 'rejected')
		FROM report_items
		WHERE tenant_id = $1 AND ecosystem = $2 AND reported_at >= $3 AND reported_at < $4`,
		args.TenantID, args.Ecosystem, from, to, outbox.TypeInteractionRecorded).
		Scan(&result.Captured, &result.Mapped, &result.Quarantined, &result.Submitted, &result.Accepted,
			&result.Discarded, &result.Unsubmitted, &rejected)
	if err != nil {
		return fmt.Errorf("count day %s of tenant %s: %w", args.Day, args.TenantID, err)
	}

	if err := w.sample(ctx, config, from, to, &result); err != nil {
		return err
	}

	var reasons []string
	if result.Captured != result.Mapped {
		reasons = append(reasons, fmt.Sprintf("captured %d events but mapped %d items", result.Captured, result.Mapped))
	}
	if result.Unsubmitted > 0 && time.Now().After(calendar.Cutoff(day)) {
		reasons = append(reasons, fmt.Sprintf("%d items not submitted after the deadline", result.Unsubmitted))
	}
	if rejected > 0 {
		reasons = append(reasons, fmt.Sprintf("%d items in batches the regulator rejected", rejected))
	}
	if result.SampleMissing > 0 {
		reasons = append(reasons, fmt.Sprintf("%d of %d sampled accepted items not found at the regulator",
			result.SampleMissing, result.SampleChecked))
	}
	result.Gap = len(reasons) > 0
	// Before the deadline, events of the day may still be on their way.
	result.Details["provisional"] = time.Now().Before(calendar.Cutoff(day))
	result.Details["gaps"] = reasons
	result.Details["rejected"] = rejected
	details, _ := json.Marshal(result.Details)

	err = pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO reconcile_results (tenant_id, ecosystem, business_day, trigger, captured, mapped,
			    quarantined, submitted, accepted, discarded, unsubmitted, sample_checked, sample_missing, gap, details)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
			args.TenantID, args.Ecosystem, args.Day, args.Trigger, result.Captured, result.Mapped,
			result.Quarantined, result.Submitted, result.Accepted, result.Discarded, result.Unsubmitted,
			result.SampleChecked, result.SampleMissing, result.Gap, details)
		if err != nil {
			return fmt.Errorf("store reconcile result: %w", err)
		}
		_, err = river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	if err != nil {
		return err
	}

	attrs := []any{"event", "reconcile.completed", "tenant_id", args.TenantID, "ecosystem", args.Ecosystem,
		"business_day", args.Day, "trigger", args.Trigger, "captured", result.Captured, "mapped", result.Mapped,
		"quarantined", result.Quarantined, "submitted", result.Submitted, "accepted", result.Accepted,
		"discarded", result.Discarded, "unsubmitted", result.Unsubmitted}
	if result.Gap {
		metrics.reconcileGaps.Add(ctx, 1, ecosystemAttr(args.Ecosystem))
		w.Logger.Error("reconcile found a gap", append(attrs, "event", "reconcile.gap", "gaps", reasons)...)
		return nil
	}
	w.Logger.Info("reconcile found no gap", attrs...)
	return nil
}

// sample reads a random sample of the day's accepted items back from the
// regulator and counts those it does not hold.
func (w *ReconcileWorker) sample(ctx context.Context, config *tenant.Config, from, to time.Time,
	result *ReconcileResult,
) error {
	adapter := w.Adapters[config.Ecosystem]
	if adapter == nil {
		result.Details["sample"] = "no regulator adapter configured"
		return nil
	}
	rows, err := w.Pool.Query(ctx, `
		SELECT body FROM report_items
		WHERE tenant_id = $1 AND ecosystem = $2 AND reported_at >= $3 AND reported_at < $4 AND state = 'accepted'
		ORDER BY random() LIMIT $5`, config.TenantID, config.Ecosystem, from, to, ReconcileSampleSize)
	if err != nil {
		return fmt.Errorf("sample accepted items: %w", err)
	}
	bodies, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return fmt.Errorf("sample accepted items: %w", err)
	}
	for _, body := range bodies {
		found, _, err := adapter.Lookup(ctx, config, body)
		if errors.Is(err, regulator.ErrLookupUnsupported) {
			result.Details["sample"] = "regulator has no read-back operation"
			return nil
		}
		if err != nil {
			return fmt.Errorf("read back a sampled item: %w", err)
		}
		result.SampleChecked++
		if !found {
			result.SampleMissing++
		}
	}
	return nil
}

// ReconcileCatchUpDays is how many days back the automatic reconcile
// schedule looks for a missing result.
const ReconcileCatchUpDays = 10

// ReconcileScheduleArgs requests the automatic reconciles that are due.
type ReconcileScheduleArgs struct{}

// Kind returns the job kind.
func (ReconcileScheduleArgs) Kind() string { return "reconcile_schedule" }

// InsertOpts puts the job on the control queue.
func (ReconcileScheduleArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueControl}
}

// ReconcileScheduleWorker enqueues, for every enabled tenant, the reconcile
// of each day whose D+1 deadline has passed and of each day whose D+7 limit
// has come, over the last ReconcileCatchUpDays days, unless
// reconcile_results already holds it.
type ReconcileScheduleWorker struct {
	river.WorkerDefaults[ReconcileScheduleArgs]
	Logger *slog.Logger
	Pool   *pgxpool.Pool
}

// Work enqueues the due reconciles.
func (w *ReconcileScheduleWorker) Work(ctx context.Context, job *river.Job[ReconcileScheduleArgs]) error {
	configs, err := tenant.ListEnabled(ctx, w.Pool)
	if err != nil {
		return err
	}
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, config := range configs {
		calendar, err := businessday.NewCalendar(config.RegulatorZone)
		if err != nil {
			w.Logger.Error("invalid regulator zone", "event", "reconcile.schedule_failed",
				"tenant_id", config.TenantID, "error", err)
			continue
		}
		afterCutoff := calendar.Day(now).AddDays(-1)
		if now.Before(calendar.Cutoff(afterCutoff)) {
			afterCutoff = afterCutoff.AddDays(-1)
		}
		// Days whose reconcile was missed while no service ran are caught
		// up, as far back as ReconcileCatchUpDays.
		type dueReconcile struct {
			trigger string
			day     businessday.Date
		}
		var due []dueReconcile
		for back := range ReconcileCatchUpDays {
			due = append(due,
				dueReconcile{TriggerAfterCutoff, afterCutoff.AddDays(-back)},
				dueReconcile{TriggerAfterFinal, afterCutoff.AddDays(-6 - back)})
		}
		for _, next := range due {
			trigger, day := next.trigger, next.day
			err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
				var done bool
				if err := tx.QueryRow(ctx, `
					SELECT EXISTS (SELECT 1 FROM reconcile_results
					               WHERE tenant_id = $1 AND ecosystem = $2 AND business_day = $3 AND trigger = $4)`,
					config.TenantID, config.Ecosystem, day.String(), trigger).Scan(&done); err != nil || done {
					return err
				}
				_, err := client.InsertTx(ctx, tx, ReconcileArgs{Day: day.String(), Ecosystem: config.Ecosystem,
					TenantID: config.TenantID, Trigger: trigger}, nil)
				return err
			})
			if err != nil {
				return fmt.Errorf("enqueue %s reconcile of tenant %s day %s: %w", trigger, config.TenantID, day, err)
			}
		}
	}
	return nil
}

// LatestReconcile returns the newest stored reconciliation of a tenant's
// day, or nil when there is none.
func LatestReconcile(ctx context.Context, q tenant.Querier, tenantID, ecosystem string, day businessday.Date,
) (*ReconcileResult, error) {
	var r ReconcileResult
	var details []byte
	var businessDay time.Time
	err := q.QueryRow(ctx, `
		SELECT tenant_id, ecosystem, business_day, trigger, captured, mapped, quarantined, submitted, accepted,
		       discarded, unsubmitted, sample_checked, sample_missing, gap, details, created_at
		FROM reconcile_results WHERE tenant_id = $1 AND ecosystem = $2 AND business_day = $3
		ORDER BY id DESC LIMIT 1`, tenantID, ecosystem, day.String()).
		Scan(&r.TenantID, &r.Ecosystem, &businessDay, &r.Trigger, &r.Captured, &r.Mapped, &r.Quarantined,
			&r.Submitted, &r.Accepted, &r.Discarded, &r.Unsubmitted, &r.SampleChecked, &r.SampleMissing, &r.Gap,
			&details, &r.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read reconcile result: %w", err)
	}
	r.BusinessDay = businessDay.Format(time.DateOnly)
	_ = json.Unmarshal(details, &r.Details)
	return &r, nil
}
