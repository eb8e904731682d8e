package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/finnest/eventruntime/jobs"
)

const batchesUsage = `usage: eventruntime batches list [--state S] [--tenant T] [--limit N]
       eventruntime batches approve ID [--actor NAME]

list prints export batches, newest first; --state awaiting_approval shows
the batches of tenants with approval_required that wait for an approver.
approve moves such a batch to sealed, appends a batch.approve row to the
audit ledger and enqueues its submission, in one transaction; the running
service then submits it. --actor defaults to $USER. DATABASE_URL is read
from the environment.
`

// runBatches runs the batches commands.
func runBatches(ctx context.Context, logger *slog.Logger, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Print(batchesUsage)
		return nil
	}
	pool, err := connectFromEnv(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch args[0] {
	case "list":
		return batchesList(ctx, pool, os.Stdout, args[1:])
	case "approve":
		return batchesApprove(ctx, pool, logger, os.Stdout, args[1:])
	default:
		return fmt.Errorf("unknown batches command %q\n\n%s", args[0], batchesUsage)
	}
}

func batchesList(ctx context.Context, pool *pgxpool.Pool, out io.Writer, args []string) error {
	flags := flag.NewFlagSet("batches list", flag.ContinueOnError)
	state := flags.String("state", "", "only batches in this state, such as awaiting_approval")
	tenantID := flags.String("tenant", "", "only batches of this tenant")
	limit := flags.Int("limit", 100, "the most batches to print")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *limit <= 0 {
		return fmt.Errorf("--limit %d is not a positive number", *limit)
	}
	rows, err := pool.Query(ctx, `
		SELECT id, tenant_id, ecosystem, state, item_count, sealed_at, coalesce(approved_by, '')
		FROM export_batches
		WHERE ($1 = '' OR state = $1) AND ($2 = '' OR tenant_id = $2)
		ORDER BY id DESC LIMIT $3`, *state, *tenantID, *limit)
	if err != nil {
		return fmt.Errorf("list batches: %w", err)
	}
	table := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(table, "ID\tTENANT\tECOSYSTEM\tSTATE\tITEMS\tSEALED AT\tAPPROVED BY")
	var (
		id                              int64
		tenant, ecosystem, st, approver string
		items                           int
		sealedAt                        *time.Time
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &tenant, &ecosystem, &st, &items, &sealedAt, &approver}, func() error {
		sealed := ""
		if sealedAt != nil {
			sealed = sealedAt.UTC().Format(time.RFC3339)
		}
		_, err := fmt.Fprintf(table, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", id, tenant, ecosystem, st, items, sealed, approver)
		return err
	})
	if err != nil {
		return fmt.Errorf("list batches: %w", err)
	}
	return table.Flush()
}

func batchesApprove(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger, out io.Writer, args []string) error {
	flags := flag.NewFlagSet("batches approve", flag.ContinueOnError)
	actor := flags.String("actor", os.Getenv("USER"), "who approves, for the audit ledger")
	positional, err := parseInterspersed(flags, args)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return errors.New("want exactly one batch ID: eventruntime batches approve ID --actor NAME")
	}
	batchID, err := strconv.ParseInt(positional[0], 10, 64)
	if err != nil || batchID <= 0 {
		return fmt.Errorf("batch ID %q is not a positive integer", positional[0])
	}
	if err := requireActor(*actor); err != nil {
		return err
	}

	// An insert-only client: it enqueues, and the running service works.
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		return fmt.Errorf("create River client: %w", err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return jobs.ApproveBatchTx(ctx, tx, client, *actor, batchID)
	})
	if err != nil {
		return err
	}
	logger.Info("batch approved", "event", "batch.approved", "batch_id", batchID, "actor", *actor)
	_, err = fmt.Fprintf(out, "batch %d approved; its submission is enqueued\n", batchID)
	return err
}
