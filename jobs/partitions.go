package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// PartitionDaysAhead is how many daily outbox partitions exist ahead of
// today, so a missed run or two never sends rows to the default partition.
const PartitionDaysAhead = 7

// partitionDropLockTimeout bounds how long a DROP waits for its locks.
// Dropping a partition locks the whole outbox, and inserts queue behind a
// waiting DROP, so a partition that cannot be locked quickly is kept for the
// next run rather than stalling producers.
const partitionDropLockTimeout = time.Second

// maxUnaccountedCounted caps the count of unaccounted events reported for a
// kept-back partition, so the check stops early on a large partition.
const maxUnaccountedCounted = 1000

// partitionName matches the daily partitions that outbox_ensure_partitions
// creates. The default partition, outbox_default, never matches.
var partitionName = regexp.MustCompile(`^outbox_p([0-9]{8})$`)

// PartitionsArgs are the arguments of the job that creates the outbox's daily
// partitions ahead and drops partitions past retention.
type PartitionsArgs struct{}

// Kind returns the job kind.
func (PartitionsArgs) Kind() string { return "partitions" }

// InsertOpts puts partition jobs on the control queue.
func (PartitionsArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: QueueControl} }

// PartitionsWorker creates the outbox partitions from today (UTC) to
// PartitionDaysAhead days ahead, and drops partitions past retention whose
// events are all accounted for.
//
// Retention comes from the retention_policy row of table "outbox", lengthened
// by the longest "outbox" entry of any tenant's tenant_config.retention (an
// interval such as "90 days"), because partitions are shared by all tenants.
// Without a policy row nothing is dropped. A day's partition is past
// retention once its whole range is older than the retention.
//
// An event is accounted for when every consumer in the policy's
// required_consumers has a consumer_idempotency row for it and, for a
// pcm.interaction.recorded event, its report item is in a final state
// (accepted, discarded or quarantined) or the event was dead-lettered. A
// partition holding any other event is kept back, logged and counted, and
// checked again on the next run. A tenant whose items never reach a final
// state (a disabled or dry-run tenant, for example) therefore keeps its
// partitions until an operator resolves the items.
type PartitionsWorker struct {
	river.WorkerDefaults[PartitionsArgs]
	Logger *slog.Logger
	Pool   *pgxpool.Pool
}

// PartitionsResult is the outcome of one run of PartitionsWorker.
type PartitionsResult struct {
	// Created counts the partitions created ahead.
	Created int

	// Dropped names the partitions dropped, oldest first.
	Dropped []string

	// KeptBack lists the partitions past retention that were not dropped,
	// oldest first.
	KeptBack []KeptPartition

	// Retain is the retention applied, as PostgreSQL prints the interval, or
	// empty when there is no policy.
	Retain string
}

// KeptPartition is a partition past retention that a run did not drop.
type KeptPartition struct {
	// Name is the partition's table name.
	Name string

	// Reason is the cause of keeping the partition, for logs.
	Reason string

	// Unaccounted counts its events not yet accounted for, up to 1,000.
	Unaccounted int64
}

// partitionInstruments count the retention outcomes. They have no attributes.
type partitionInstruments struct {
	dropped  metric.Int64Counter
	keptBack metric.Int64Counter
}

var partitionMetrics = func() partitionInstruments {
	meter := otel.Meter("github.com/finnest/eventruntime/jobs")
	var i partitionInstruments
	i.dropped, _ = meter.Int64Counter("eventruntime.outbox.partitions.dropped",
		metric.WithDescription("Outbox partitions dropped after retention."))
	i.keptBack, _ = meter.Int64Counter("eventruntime.outbox.partitions.kept_back",
		metric.WithDescription("Checks of outbox partitions past retention that were kept because events are not yet accounted for or the partition could not be locked."))
	return i
}()

// Work creates missing partitions and applies retention.
func (w *PartitionsWorker) Work(ctx context.Context, job *river.Job[PartitionsArgs]) error {
	_, err := w.Run(ctx, time.Now())
	return err
}

// Run does one run as of now: it creates partitions ahead, then drops those
// past retention whose events are all accounted for.
func (w *PartitionsWorker) Run(ctx context.Context, now time.Time) (PartitionsResult, error) {
	logger := w.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var result PartitionsResult

	err := w.Pool.QueryRow(ctx, `SELECT outbox_ensure_partitions(($1::timestamptz AT TIME ZONE 'UTC')::date, $2)`,
		now, PartitionDaysAhead+1).Scan(&result.Created)
	if err != nil {
		return result, fmt.Errorf("create outbox partitions: %w", err)
	}
	if result.Created > 0 {
		logger.Info("outbox partitions created", "event", "partitions.created", "count", result.Created)
	}

	var defaultHasRows bool
	if err := w.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM outbox_default)`).Scan(&defaultHasRows); err != nil {
		return result, fmt.Errorf("check the outbox default partition: %w", err)
	}
	if defaultHasRows {
		logger.Warn("outbox default partition has rows: daily partitions were missing when they were inserted",
			"event", "partitions.default_not_empty")
	}

	policy, err := readOutboxRetention(ctx, w.Pool, now)
	if err != nil {
		return result, err
	}
	if policy == nil {
		logger.Info("no retention policy for the outbox; keeping every partition", "event", "partitions.no_policy")
		return result, nil
	}
	result.Retain = policy.retain

	candidates, err := partitionsEndingBefore(ctx, w.Pool, policy.cutoff)
	if err != nil {
		return result, err
	}
	for _, name := range candidates {
		kept, err := dropIfAccounted(ctx, w.Pool, name, policy.requiredConsumers)
		if err != nil {
			return result, err
		}
		if kept != nil {
			result.KeptBack = append(result.KeptBack, *kept)
			partitionMetrics.keptBack.Add(ctx, 1)
			logger.Warn("outbox partition past retention kept back", "event", "partitions.kept_back",
				"partition", name, "reason", kept.Reason, "unaccounted_events", kept.Unaccounted,
				"retain", policy.retain)
			continue
		}
		result.Dropped = append(result.Dropped, name)
		partitionMetrics.dropped.Add(ctx, 1)
		logger.Info("outbox partition dropped after retention", "event", "partitions.dropped",
			"partition", name, "retain", policy.retain)
	}
	return result, nil
}

// outboxRetention is the retention in force for the outbox.
type outboxRetention struct {
	cutoff            time.Time
	requiredConsumers []string
	retain            string
}

// readOutboxRetention returns the outbox's retention, or nil without a
// policy row. A tenant entry that is not a valid interval fails the run, so
// nothing is dropped on a misread setting.
func readOutboxRetention(ctx context.Context, pool *pgxpool.Pool, now time.Time) (*outboxRetention, error) {
	var policy outboxRetention
	err := pool.QueryRow(ctx, `
		WITH effective AS (
			SELECT greatest(p.retain,
			                (SELECT max((t.retention->>'outbox')::interval)
			                 FROM tenant_config t WHERE t.retention ? 'outbox')) AS retain,
			       p.required_consumers
			FROM retention_policy p
			WHERE p.table_name = 'outbox')
		SELECT $1::timestamptz - retain, retain::text, required_consumers FROM effective`,
		now).Scan(&policy.cutoff, &policy.retain, &policy.requiredConsumers)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read outbox retention from retention_policy and tenant_config.retention "+
			"(each tenant's \"outbox\" entry must be an interval such as \"90 days\"): %w", err)
	}
	return &policy, nil
}

// partitionsEndingBefore returns the daily outbox partitions whose whole range
// (one UTC day) ends at or before cutoff, oldest first.
func partitionsEndingBefore(ctx context.Context, pool *pgxpool.Pool, cutoff time.Time) ([]string, error) {
	rows, err := pool.Query(ctx, `
		SELECT c.relname
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'outbox'::regclass
		ORDER BY c.relname`)
	if err != nil {
		return nil, fmt.Errorf("list outbox partitions: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list outbox partitions: %w", err)
	}

	var due []string
	for _, name := range names {
		match := partitionName.FindStringSubmatch(name)
		if match == nil {
			continue
		}
		day, err := time.Parse("20060102", match[1])
		if err != nil {
			continue
		}
		if !day.AddDate(0, 0, 1).After(cutoff) {
			due = append(due, name)
		}
	}
	return due, nil
}

// dropIfAccounted drops the partition when all its events are accounted for
// and returns nil, or returns why it was kept.
func dropIfAccounted(ctx context.Context, pool *pgxpool.Pool, name string,
	requiredConsumers []string) (*KeptPartition, error) {
	table := pgx.Identifier{name}.Sanitize()
	var unaccounted int64
	err := pool.QueryRow(ctx, `
		SELECT count(*) FROM (
			SELECT 1 FROM `+table+` o
			WHERE EXISTS (
			          SELECT 1 FROM unnest($1::text[]) AS required(consumer)
			          WHERE NOT EXISTS (
			              SELECT 1 FROM consumer_idempotency ci
			              WHERE ci.consumer = required.consumer AND ci.event_id = o.id))
			   OR (o.event_type = 'pcm.interaction.recorded'
			       AND NOT EXISTS (
			           SELECT 1 FROM report_items r
			           WHERE r.tenant_id = o.tenant_id AND r.event_id = o.id
			             AND r.state IN ('accepted', 'discarded', 'quarantined'))
			       AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.event_id = o.id))
			LIMIT $2) AS unaccounted`,
		requiredConsumers, maxUnaccountedCounted).Scan(&unaccounted)
	if err != nil {
		return nil, fmt.Errorf("check events of outbox partition %s: %w", name, err)
	}
	if unaccounted > 0 {
		return &KeptPartition{Name: name, Reason: "events not yet accounted for", Unaccounted: unaccounted}, nil
	}

	// No row can enter a past day's partition (created_at defaults to now()),
	// and consumers only add rows, so the check still holds at the DROP.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", partitionDropLockTimeout.Milliseconds()))
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "DROP TABLE "+table)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
		return &KeptPartition{Name: name, Reason: "lock not acquired within " + partitionDropLockTimeout.String()}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("drop outbox partition %s: %w", name, err)
	}
	return nil, nil
}
