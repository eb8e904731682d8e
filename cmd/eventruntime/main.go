// Command eventruntime runs the event runtime: `serve` runs the workers,
// `migrate` manages the schema, and `dev` starts a whole local pipeline with
// a demo producer.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: eventruntime <command> [arguments]

commands:
  serve            run the NATS consumers, River workers and HTTP endpoints
  migrate up       apply River's and eventruntime's migrations
  migrate status   list migrations and whether each is applied
  reconcile        enqueue or show a reconcile of a tenant's business day
  dev              start a private Postgres, embedded NATS, the Sequin
                   stand-in, a fake regulator, serve and a demo producer
  webhooks         manage webhook subscriptions and replay deliveries;
                   see eventruntime webhooks help
  config           print or change a tenant's settings; see eventruntime config help
  batches          list export batches and approve those awaiting approval;
                   see eventruntime batches help
  audit verify     check the audit ledger's hash chain; non-zero exit when broken
  riverui hash-password
                   print the bcrypt hash of a River UI password read from stdin

Configuration comes from environment variables; see README.md.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	logger := newLogger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var err error
	switch os.Args[1] {
	case "serve":
		err = runServe(ctx, logger)
	case "migrate":
		err = runMigrate(ctx, logger, os.Args[2:])
	case "dev":
		err = runDev(ctx, logger)
	case "webhooks":
		err = runWebhooks(ctx, logger, os.Args[2:])
	case "reconcile":
		err = runReconcile(ctx, os.Args[2:])
	case "config":
		err = runConfig(ctx, logger, os.Args[2:])
	case "batches":
		err = runBatches(ctx, logger, os.Args[2:])
	case "audit":
		err = runAudit(ctx, logger, os.Args[2:])
	case "riverui":
		err = runRiverUI(os.Args[2:], os.Stdin, os.Stdout)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		err = fmt.Errorf("unknown command %q\n\n%s", os.Args[1], usage)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("command failed", "event", "command.failed", "command", os.Args[1], "error", err)
		fmt.Fprintf(os.Stderr, "eventruntime %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func newLogger() *slog.Logger { return newLoggerTo(os.Stderr) }

// newLoggerTo returns a JSON logger writing to w at the level in LOG_LEVEL.
func newLoggerTo(w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if err := level.UnmarshalText([]byte(envOr("LOG_LEVEL", "info"))); err != nil {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
