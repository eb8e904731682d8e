// Package jobs holds the River job args and workers of the regulator
// pipeline: map turns interaction events into report items, flush seals
// pending items into export batches, submit posts a batch to its regulator,
// and partitions keeps the outbox's daily partitions ahead of time.
package jobs

import (
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/finnest/eventruntime/regulator"
)

// River queues of the pipeline. Each stage has its own queue so a backlog in
// one does not starve the others.
const (
	QueueControl = "control"
	QueueMap     = "map"
	QueueSubmit  = "submit"
)

// PeriodicUnique makes a periodic job unique per period of every (at least
// one second, River's minimum), so runs do not pile up behind a slow one. A
// run left running by a killed process blocks only its own period, not
// every later run until River rescues it.
func PeriodicUnique(every time.Duration) river.UniqueOpts {
	return river.UniqueOpts{ByPeriod: max(every, time.Second)}
}

// notFinished are the job states in which a job blocks another with the
// same arguments.
var notFinished = []rivertype.JobState{
	rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable,
	rivertype.JobStateRunning, rivertype.JobStateScheduled,
}

// errRollback ends a transaction function without an error for the caller.
var errRollback = errors.New("roll back")

// Config configures the pipeline's workers and periodic jobs.
type Config struct {
	// FlushEvery is how often the flush job runs. Zero means one second.
	// Each tenant's own flush interval decides whether a run seals anything.
	FlushEvery time.Duration

	// Logger receives structured logs. Required.
	Logger *slog.Logger

	// Pool is the database. Required.
	Pool *pgxpool.Pool

	// Adapters maps an ecosystem to its regulator adapter.
	Adapters map[string]regulator.Adapter

	// Now returns the current time for the flush policy's deadlines and
	// schedules. Nil means time.Now; tests move it to cross deadlines.
	Now func() time.Time

	// ReadBackDelay is how long after an interrupted request the submit job
	// waits before reading items back. Zero means one minute.
	ReadBackDelay time.Duration

	// SubmitCrash is SubmitWorker.Crash, a hook for fault-injection tests.
	SubmitCrash func(stage SubmitStage, batchID int64) error
}

// Register adds the pipeline's workers to workers and returns its periodic
// jobs and queue settings for the River client.
func Register(workers *river.Workers, cfg Config) ([]*river.PeriodicJob, map[string]river.QueueConfig) {
	if cfg.FlushEvery == 0 {
		cfg.FlushEvery = time.Second
	}
	flush := &FlushWorker{Logger: cfg.Logger, Now: cfg.Now, Pool: cfg.Pool, UnconfiguredEvery: max(10*cfg.FlushEvery, time.Second)}
	river.AddWorker(workers, &MapWorker{Adapters: cfg.Adapters, Logger: cfg.Logger, Pool: cfg.Pool, prompt: newPromptFlush(flush)})
	river.AddWorker(workers, flush)
	river.AddWorker(workers, &SubmitWorker{
		Adapters: cfg.Adapters, Crash: cfg.SubmitCrash, Logger: cfg.Logger, Pool: cfg.Pool, ReadBackDelay: cfg.ReadBackDelay,
	})
	river.AddWorker(workers, &PartitionsWorker{Logger: cfg.Logger, Pool: cfg.Pool})
	river.AddWorker(workers, &ReconcileWorker{Adapters: cfg.Adapters, Logger: cfg.Logger, Pool: cfg.Pool})
	river.AddWorker(workers, &ReconcileScheduleWorker{Logger: cfg.Logger, Pool: cfg.Pool})

	periodic := []*river.PeriodicJob{
		river.NewPeriodicJob(river.PeriodicInterval(cfg.FlushEvery),
			func() (river.JobArgs, *river.InsertOpts) {
				return FlushArgs{}, &river.InsertOpts{UniqueOpts: PeriodicUnique(cfg.FlushEvery)}
			},
			&river.PeriodicJobOpts{ID: "flush", RunOnStart: true}),
		river.NewPeriodicJob(river.PeriodicInterval(time.Hour),
			func() (river.JobArgs, *river.InsertOpts) {
				return PartitionsArgs{}, &river.InsertOpts{UniqueOpts: PeriodicUnique(time.Hour)}
			},
			&river.PeriodicJobOpts{ID: "partitions", RunOnStart: true}),
		river.NewPeriodicJob(river.PeriodicInterval(15*time.Minute),
			func() (river.JobArgs, *river.InsertOpts) {
				return ReconcileScheduleArgs{}, &river.InsertOpts{UniqueOpts: PeriodicUnique(15 * time.Minute)}
			},
			&river.PeriodicJobOpts{ID: "reconcile_schedule", RunOnStart: true}),
	}
	queues := map[string]river.QueueConfig{
		river.QueueDefault: {MaxWorkers: 2},
		QueueControl:       {MaxWorkers: 2},
		QueueMap:           {MaxWorkers: 4},
		QueueSubmit:        {MaxWorkers: 4},
	}
	return periodic, queues
}
