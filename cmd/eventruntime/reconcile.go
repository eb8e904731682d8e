package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/finnest/eventruntime/internal/businessday"
	"github.com/finnest/eventruntime/jobs"
)

const reconcileUsage = `usage: eventruntime reconcile --tenant T --ecosystem ofb|opin --day YYYY-MM-DD [--force] [--wait DURATION]
       eventruntime reconcile show --tenant T --ecosystem ofb|opin --day YYYY-MM-DD

The first form enqueues a reconcile of the tenant's business day and prints
its job id; enqueueing the same day twice returns the first job. The running
service does the work; --wait waits for the result and prints it. The second
form prints the newest stored result.
`

// runReconcile enqueues a reconcile job, or shows a stored result.
func runReconcile(ctx context.Context, args []string) error {
	show := len(args) > 0 && args[0] == "show"
	if show {
		args = args[1:]
	}
	flags := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	flags.Usage = func() { fmt.Fprint(os.Stderr, reconcileUsage) }
	tenantID := flags.String("tenant", "", "tenant id")
	ecosystem := flags.String("ecosystem", "ofb", "ecosystem: ofb or opin")
	dayText := flags.String("day", "", "business day, YYYY-MM-DD, in the tenant's regulator zone")
	force := flags.Bool("force", false, "enqueue a new reconcile even if one for the day exists")
	wait := flags.Duration("wait", 0, "wait up to this long for the result, such as 30s")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *tenantID == "" || *dayText == "" {
		flags.Usage()
		return errors.New("--tenant and --day are required")
	}
	day, err := businessday.ParseDate(*dayText)
	if err != nil {
		return err
	}

	databaseURL := os.Getenv("DATABASE_URL")
	if databaseURL == "" {
		return errors.New("DATABASE_URL is not set")
	}
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer pool.Close()

	if show {
		return printReconcile(ctx, pool, *tenantID, *ecosystem, day)
	}

	// An insert-only client: it enqueues, and the running service works.
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		return err
	}
	startedAt := time.Now()
	var jobID int64
	var duplicate bool
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		result, err := jobs.EnqueueReconcileTx(ctx, client, tx, *tenantID, *ecosystem, day, *force)
		if err != nil {
			return err
		}
		jobID, duplicate = result.Job.ID, result.UniqueSkippedAsDuplicate
		return nil
	})
	if err != nil {
		return err
	}
	if duplicate {
		fmt.Printf("reconcile job %d (already enqueued for %s %s %s; --force enqueues another)\n",
			jobID, *tenantID, *ecosystem, day)
	} else {
		fmt.Printf("reconcile job %d enqueued for %s %s %s\n", jobID, *tenantID, *ecosystem, day)
	}
	if *wait == 0 {
		return nil
	}

	deadline := time.Now().Add(*wait)
	for time.Now().Before(deadline) {
		result, err := jobs.LatestReconcile(ctx, pool, *tenantID, *ecosystem, day)
		if err != nil {
			return err
		}
		if result != nil && (duplicate || !result.CreatedAt.Before(startedAt)) {
			return printReconcile(ctx, pool, *tenantID, *ecosystem, day)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("no result after %s: is `eventruntime serve` running against this database?", *wait)
}

func printReconcile(ctx context.Context, pool *pgxpool.Pool, tenantID, ecosystem string, day businessday.Date) error {
	result, err := jobs.LatestReconcile(ctx, pool, tenantID, ecosystem, day)
	if err != nil {
		return err
	}
	if result == nil {
		return fmt.Errorf("no reconcile result for %s %s %s", tenantID, ecosystem, day)
	}
	verdict := "no gap"
	if result.Gap {
		verdict = "GAP"
	}
	if provisional, _ := result.Details["provisional"].(bool); provisional {
		verdict += " (provisional: the day's deadline has not passed, so events may still be in flight)"
	}
	fmt.Printf("%s %s %s (%s, %s): %s\n", result.TenantID, result.Ecosystem, result.BusinessDay, result.Trigger,
		result.CreatedAt.Format(time.RFC3339), verdict)
	fmt.Printf("  captured=%d mapped=%d quarantined=%d submitted=%d accepted=%d discarded=%d unsubmitted=%d\n",
		result.Captured, result.Mapped, result.Quarantined, result.Submitted, result.Accepted, result.Discarded,
		result.Unsubmitted)
	fmt.Printf("  read-back sample: %d checked, %d missing\n", result.SampleChecked, result.SampleMissing)
	if gaps, ok := result.Details["gaps"].([]any); ok && len(gaps) > 0 {
		var lines []string
		for _, gap := range gaps {
			lines = append(lines, fmt.Sprint(gap))
		}
		fmt.Printf("  gaps: %s\n", strings.Join(lines, "; "))
	}
	return nil
}
