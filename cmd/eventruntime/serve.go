package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/finnest/eventruntime/internal/telemetry"
	"github.com/finnest/eventruntime/migrations"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/regulator/ofb"
	"github.com/finnest/eventruntime/regulator/opin"
	"github.com/finnest/eventruntime/riverui"
	"github.com/finnest/eventruntime/worker"
)

// serviceConfig reads the service's settings from the environment.
func serviceConfig(logger *slog.Logger) (worker.Config, error) {
	cfg := worker.Config{
		DatabaseURL: os.Getenv("DATABASE_URL"),
		Decoder:     worker.DecodeSequin,
		HTTPAddr:    envOr("HTTP_ADDR", "127.0.0.1:8080"),
		Logger:      logger,
		NATSURL:     os.Getenv("NATS_URL"),
	}
	if cfg.DatabaseURL == "" {
		return cfg, fmt.Errorf("DATABASE_URL is not set")
	}
	if cfg.NATSURL == "" {
		return cfg, fmt.Errorf("NATS_URL is not set")
	}
	var err error
	if cfg.FlushEvery, err = durationEnv("FLUSH_EVERY", time.Second); err != nil {
		return cfg, err
	}
	if cfg.ShutdownTimeout, err = durationEnv("SHUTDOWN_TIMEOUT", 30*time.Second); err != nil {
		return cfg, err
	}
	if cfg.ConsumerBatchSize, err = intEnv("CONSUMER_BATCH_SIZE", 256); err != nil {
		return cfg, err
	}
	if cfg.ConsumerLinger, err = durationEnv("CONSUMER_LINGER", 100*time.Millisecond); err != nil {
		return cfg, err
	}
	if cfg.DatabaseMaxConns, err = intEnv("DATABASE_MAX_CONNS", 0); err != nil {
		return cfg, err
	}
	// Zero durations leave the worker package's defaults in place.
	if cfg.JobTimeout, err = durationEnv("JOB_TIMEOUT", 0); err != nil {
		return cfg, err
	}
	if cfg.RescueStuckJobsAfter, err = durationEnv("RESCUE_STUCK_JOBS_AFTER", 0); err != nil {
		return cfg, err
	}
	if cfg.RescueStuckJobsAfter != 0 && cfg.RescueStuckJobsAfter < cfg.JobTimeout {
		return cfg, fmt.Errorf("RESCUE_STUCK_JOBS_AFTER=%s is below JOB_TIMEOUT=%s; set it to at least the job timeout",
			cfg.RescueStuckJobsAfter, cfg.JobTimeout)
	}
	if cfg.ReadBackDelay, err = durationEnv("READ_BACK_DELAY", 0); err != nil {
		return cfg, err
	}
	cfg.ReplicationSlot = envOr("REPLICATION_SLOT", "eventruntime_sequin")
	if cfg.RiverUIUsers, err = riverui.ParseUsers(os.Getenv("RIVERUI_USERS")); err != nil {
		return cfg, fmt.Errorf("RIVERUI_USERS: %w", err)
	}
	if subjects := os.Getenv("NATS_STREAM_SUBJECT"); subjects != "" {
		cfg.Stream.Subjects = []string{subjects}
	}
	cfg.Stream.Name = envOr("NATS_STREAM", "OUTBOX")

	var rootCAs *x509.CertPool
	if caFile := os.Getenv("REGULATOR_CA_FILE"); caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return cfg, fmt.Errorf("read REGULATOR_CA_FILE: %w", err)
		}
		rootCAs = x509.NewCertPool()
		if !rootCAs.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("REGULATOR_CA_FILE %s contains no PEM certificate: point it at a PEM file of CA certificates", caFile)
		}
	}
	ofbAdapter, err := ofb.NewAdapter(ofb.AdapterConfig{
		BaseURL:  os.Getenv("OFB_REPORT_URL"),
		RootCAs:  rootCAs,
		TokenURL: os.Getenv("OFB_TOKEN_URL"),
	})
	if err != nil {
		return cfg, err
	}
	opinAdapter, err := opin.NewAdapter(opin.AdapterConfig{
		BaseURL: os.Getenv("OPIN_REPORT_URL"),
		Logger:  logger,
		RootCAs: rootCAs,
	})
	if err != nil {
		return cfg, err
	}
	cfg.Adapters = map[string]regulator.Adapter{outbox.EcosystemOFB: ofbAdapter, outbox.EcosystemOPIN: opinAdapter}

	webhooks, err := webhookExtension(cfg.DatabaseURL, logger)
	if err != nil {
		return cfg, err
	}
	if webhooks != nil {
		cfg.Extensions = append(cfg.Extensions, *webhooks)
	}
	return cfg, nil
}

func runServe(ctx context.Context, logger *slog.Logger) error {
	cfg, err := serviceConfig(logger)
	if err != nil {
		return err
	}
	if os.Getenv("MIGRATE_ON_START") == "true" {
		if err := migrate(ctx, cfg.DatabaseURL, logger); err != nil {
			return err
		}
	}
	shutdown, err := setupTelemetry(ctx, &cfg)
	if err != nil {
		return err
	}
	defer shutdown()
	service, err := worker.New(ctx, cfg)
	if err != nil {
		return err
	}
	if addr := os.Getenv("PPROF_ADDR"); addr != "" {
		if err := servePprof(addr, logger); err != nil {
			return err
		}
	}
	return service.Run(ctx)
}

// servePprof serves net/http/pprof on addr, for profiling a running service.
// It is off unless PPROF_ADDR is set, because profiles expose internals and
// cost CPU while they run. The listener lives as long as the process.
func servePprof(addr string, logger *slog.Logger) error {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on PPROF_ADDR %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	logger.Info("pprof listening", "event", "pprof.started", "addr", listener.Addr().String())
	go func() {
		server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		if err := server.Serve(listener); err != nil {
			logger.Error("pprof server stopped", "event", "pprof.failed", "error", err)
		}
	}()
	return nil
}

// setupTelemetry installs the OpenTelemetry providers and serves their
// metrics on the service's /metrics. The returned function flushes them.
func setupTelemetry(ctx context.Context, cfg *worker.Config) (func(), error) {
	t, err := telemetry.Setup(ctx, "eventruntime")
	if err != nil {
		return nil, err
	}
	cfg.MetricsHandler = t.MetricsHandler
	return func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := t.Shutdown(flushCtx); err != nil {
			cfg.Logger.Warn("telemetry flush failed", "event", "telemetry.flush_failed", "error", err)
		}
	}, nil
}

func migrate(ctx context.Context, databaseURL string, logger *slog.Logger) error {
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer pool.Close()
	return migrations.Up(ctx, pool, logger)
}

func runMigrate(ctx context.Context, logger *slog.Logger, args []string) error {
	databaseURL := os.Getenv("DATABASE_URL")
	if databaseURL == "" {
		return fmt.Errorf("DATABASE_URL is not set")
	}
	if len(args) != 1 {
		return fmt.Errorf("want `migrate up` or `migrate status`")
	}
	switch args[0] {
	case "up":
		return migrate(ctx, databaseURL, logger)
	case "status":
		pool, err := pgxpool.New(ctx, databaseURL)
		if err != nil {
			return fmt.Errorf("connect to postgres: %w", err)
		}
		defer pool.Close()
		statuses, err := migrations.ListStatus(ctx, pool)
		if err != nil {
			return err
		}
		for _, status := range statuses {
			state := "pending"
			if status.Applied {
				state = "applied"
			}
			fmt.Printf("%-13s %5d  %s\n", status.Source, status.Version, state)
		}
		return nil
	default:
		return fmt.Errorf("unknown migrate command %q: want up or status", args[0])
	}
}

func durationEnv(name string, fallback time.Duration) (time.Duration, error) {
	value := os.Getenv(name)
	if value == "" {
		return fallback, nil
	}
	d, err := time.ParseDuration(value)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s=%q is not a positive duration such as 5s", name, value)
	}
	return d, nil
}

func intEnv(name string, fallback int) (int, error) {
	value := os.Getenv(name)
	if value == "" {
		return fallback, nil
	}
	n, err := strconv.Atoi(value)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s=%q is not a positive integer", name, value)
	}
	return n, nil
}
