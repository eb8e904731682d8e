package jobs_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/finnest/eventruntime/internal/businessday"
	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/jobs"
)

// Enqueue a reconcile of a tenant's business day from a script, inside the
// script's own transaction. A second call for the same day returns the first
// job instead of adding another.
func ExampleEnqueueReconcileTx() {
	ctx := context.Background()
	db, drop := pgtest.NewExampleDatabase()
	defer drop()

	// An insert-only client: the running service works the job.
	client, err := river.NewClient(riverpgxv5.New(db.Pool), &river.Config{})
	if err != nil {
		panic(err)
	}
	day, err := businessday.ParseDate("2026-12-03")
	if err != nil {
		panic(err)
	}

	for range 2 {
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			result, err := jobs.EnqueueReconcileTx(ctx, client, tx, "tenant-a", "ofb", day, false)
			if err != nil {
				return err
			}
			fmt.Printf("kind=%s duplicate=%t\n", result.Job.Kind, result.UniqueSkippedAsDuplicate)
			return nil
		})
		if err != nil {
			panic(err)
		}
	}

	var queued int
	if err := db.Pool.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE kind = 'reconcile'").Scan(&queued); err != nil {
		panic(err)
	}
	fmt.Println("queued:", queued)

	// Output:
	// kind=reconcile duplicate=false
	// kind=reconcile duplicate=true
	// queued: 1
}
