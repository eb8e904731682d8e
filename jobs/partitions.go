package jobs

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
)

// PartitionDaysAhead is how many daily outbox partitions exist ahead of
// today, so a missed run or two never sends rows to the default partition.
const PartitionDaysAhead = 7

// PartitionsArgs asks for the outbox's daily partitions to be created ahead.
type PartitionsArgs struct{}

// Kind returns the job kind.
func (PartitionsArgs) Kind() string { return "partitions" }

// InsertOpts puts partition jobs on the control queue.
func (PartitionsArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: QueueControl} }

// PartitionsWorker creates the outbox partitions from today (UTC) to
// PartitionDaysAhead days ahead.
type PartitionsWorker struct {
	river.WorkerDefaults[PartitionsArgs]
	Logger *slog.Logger
	Pool   *pgxpool.Pool
}

// Work creates missing partitions.
func (w *PartitionsWorker) Work(ctx context.Context, job *river.Job[PartitionsArgs]) error {
	var created int
	err := w.Pool.QueryRow(ctx, `SELECT outbox_ensure_partitions((now() AT TIME ZONE 'UTC')::date, $1)`,
		PartitionDaysAhead+1).Scan(&created)
	if err != nil {
		return fmt.Errorf("create outbox partitions: %w", err)
	}
	if created > 0 {
		w.Logger.Info("outbox partitions created", "event", "partitions.created", "count", created)
	}
	return nil
}
