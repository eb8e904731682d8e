package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/finnest/eventruntime/audit"
)

const auditUsage = `usage: eventruntime audit verify

verify recomputes the audit ledger's hash chain and exits non-zero, naming
the first broken row, when a row was altered, removed, inserted or
reordered. DATABASE_URL is read from the environment.
`

// runAudit runs the audit commands.
func runAudit(ctx context.Context, logger *slog.Logger, args []string) error {
	if len(args) != 1 || args[0] != "verify" {
		fmt.Fprint(os.Stderr, auditUsage)
		return fmt.Errorf("want `audit verify`")
	}
	pool, err := connectFromEnv(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	return auditVerify(ctx, pool, logger, os.Stdout)
}

// auditVerify returns an error naming the first broken row when the chain
// is broken, and prints how many rows it checked otherwise.
func auditVerify(ctx context.Context, q audit.Querier, logger *slog.Logger, out io.Writer) error {
	result, err := audit.Verify(ctx, q)
	if err != nil {
		return err
	}
	if !result.Intact() {
		logger.Error("audit ledger is broken", "event", "audit.verify_failed",
			"first_broken_id", result.FirstBrokenID, "reason", result.Reason, "rows_checked", result.Rows)
		return fmt.Errorf("audit ledger broken at row %d: %s", result.FirstBrokenID, result.Reason)
	}
	logger.Info("audit ledger intact", "event", "audit.verified", "rows", result.Rows)
	_, err = fmt.Fprintf(out, "audit ledger intact: %d rows checked\n", result.Rows)
	return err
}
