package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/internal/natsembed"
	"github.com/finnest/eventruntime/internal/pgcluster"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator/ofbfake"
	"github.com/finnest/eventruntime/riverui"
	"github.com/finnest/eventruntime/sequin"
	"github.com/finnest/eventruntime/tenant"
	"github.com/finnest/eventruntime/worker"
)

// devTenants are the demo's tenants; their organisation ids appear in the
// fake regulator's transport certificates.
var devTenants = []demo.Tenant{
	{ID: "tenant-a", OrganisationID: "0b5a8d4e-6c3f-4f7e-9a51-2d1c7e3b8a10", SoftwareStatementID: "5f0c2b7e-1d4a-4c8b-9e2f-7a6d3c1b0e91"},
	{ID: "tenant-b", OrganisationID: "7d2e9c41-3b8f-4a06-b5d7-e1f0a2c39b84", SoftwareStatementID: "c3a1e7d9-8b2f-4f60-a4c5-1e9d7b3f2a06"},
}

// runDev starts everything the pipeline needs on this machine and runs it
// until interrupted, then stops what it started in reverse order.
func runDev(ctx context.Context, logger *slog.Logger) error {
	dataDir, err := filepath.Abs(envOr("DEV_DATA_DIR", ".data"))
	if err != nil {
		return err
	}
	rate, err := intEnv("DEV_RATE", 50)
	if err != nil {
		return err
	}
	// The data folder holds the Postgres cluster, which runs as an
	// unprivileged user when this runs as root, so that user must be able to
	// pass through it.
	if err := os.MkdirAll(dataDir, 0o711); err != nil {
		return err
	}
	if err := os.Chmod(dataDir, 0o711); err != nil {
		return err
	}
	// Logs go to a file so the progress lines stay readable; LOG_FILE=-
	// keeps them on stderr.
	logPath := envOr("LOG_FILE", filepath.Join(dataDir, "dev", "eventruntime.log"))
	if logPath != "-" {
		if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
			return err
		}
		logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open log file: %w", err)
		}
		defer logFile.Close()
		logger = newLoggerTo(logFile)
		fmt.Fprintf(os.Stderr, "eventruntime dev: starting; logs in %s\n", logPath)
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	databaseURL := os.Getenv("DATABASE_URL")
	if databaseURL == "" {
		cluster, err := startDevPostgres(ctx, dataDir, logger)
		if err != nil {
			return err
		}
		cleanups = append(cleanups, func() { _ = cluster.Stop() })
		databaseURL = cluster.URL("eventruntime")
	}

	natsURL := os.Getenv("NATS_URL")
	if natsURL == "" {
		storeDir := filepath.Join(dataDir, "nats")
		if err := resetDevData(storeDir); err != nil {
			return err
		}
		server, err := natsembed.Start(natsembed.Config{StoreDir: storeDir})
		if err != nil {
			return err
		}
		cleanups = append(cleanups, server.Shutdown)
		natsURL = server.ClientURL()
		logger.Info("embedded NATS started", "event", "dev.nats_started", "url", natsURL)
	}

	if err := migrate(ctx, databaseURL, logger); err != nil {
		return err
	}

	fake, err := ofbfake.New(ofbfake.Config{})
	if err != nil {
		return err
	}
	if err := fake.Start(); err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _ = fake.Close() })
	if err := configureDevTenants(ctx, databaseURL, dataDir, fake); err != nil {
		return err
	}
	caFile := filepath.Join(dataDir, "dev", "regulator-ca.pem")
	if err := os.WriteFile(caFile, fake.CACertPEM(), 0o644); err != nil {
		return err
	}
	for name, value := range map[string]string{
		"DATABASE_URL": databaseURL, "NATS_URL": natsURL, "REGULATOR_CA_FILE": caFile,
		"OFB_REPORT_URL": fake.URL(), "OFB_TOKEN_URL": fake.URL(),
	} {
		os.Setenv(name, value)
	}
	opinDemo, err := startDevOPIN(ctx, logger, databaseURL, dataDir, caFile)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, opinDemo.Close)
	if os.Getenv("RIVERUI_USERS") == "" {
		// A local approver for River UI: user dev, password dev.
		hash, err := riverui.HashPassword([]byte("dev"))
		if err != nil {
			return err
		}
		os.Setenv("RIVERUI_USERS", "dev:approver:"+string(hash))
	}
	if os.Getenv("FLUSH_EVERY") == "" {
		os.Setenv("FLUSH_EVERY", "1s")
	}
	logger.Info("fake regulator started", "event", "dev.regulator_started", "url", fake.URL())

	cfg, err := serviceConfig(logger)
	if err != nil {
		return err
	}
	shutdownTelemetry, err := setupTelemetry(ctx, &cfg)
	if err != nil {
		return err
	}
	defer shutdownTelemetry()
	service, err := worker.New(ctx, cfg)
	if err != nil {
		return err
	}

	natsConn, err := nats.Connect(natsURL, nats.Name("eventruntime-sequin-standin"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect the Sequin stand-in to NATS: %w", err)
	}
	cleanups = append(cleanups, natsConn.Close)

	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, pool.Close)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	run := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(runCtx); err != nil && !errors.Is(err, context.Canceled) {
				logger.Error(name+" failed", "event", "dev.component_failed", "component", name, "error", err)
				errOnce.Do(func() { firstErr = fmt.Errorf("%s: %w", name, err) })
				stop()
			}
		}()
	}

	standIn, err := sequin.NewStandIn(sequin.StandInConfig{
		DatabaseURL: databaseURL,
		Logger:      logger,
		NATS:        natsConn,
	})
	if err != nil {
		return err
	}
	producer := &demo.Producer{
		Generator: demo.NewGenerator(uint64(time.Now().UnixNano()), devTenants),
		Logger:    logger,
		Pool:      pool,
		Rate:      rate,
	}
	run("service", service.Run)
	run("sequin stand-in", standIn.Run)
	// Rows committed before the replication slot exists are never streamed,
	// so the producer waits for it.
	select {
	case <-standIn.Ready():
	case <-runCtx.Done():
	}
	run("demo producer", producer.Run)
	run("demo OPIN producer", opinDemo.Run)
	run("progress", func(ctx context.Context) error {
		return printProgress(ctx, pool, func() (int, int) { return len(fake.Accepted()), len(opinDemo.fake.Accepted()) })
	})

	envFile := filepath.Join(dataDir, "dev", "env")
	envText := fmt.Sprintf("export DATABASE_URL='%s'\nexport NATS_URL='%s'\n", databaseURL, natsURL)
	if err := os.WriteFile(envFile, []byte(envText), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "\neventruntime dev: pipeline running; River UI at http://%s/riverui/ (user dev, password dev); Ctrl-C stops it\n"+
		"  from another shell: . %s && ./bin/eventruntime reconcile --tenant %s --ecosystem ofb --day %s --wait 30s\n\n",
		service.Addr(), envFile, devTenants[0].ID, time.Now().In(saoPaulo()).Format(time.DateOnly))
	<-runCtx.Done()
	fmt.Fprintln(os.Stderr, "\neventruntime dev: stopping")
	stop()
	wg.Wait()
	return firstErr
}

func startDevPostgres(ctx context.Context, dataDir string, logger *slog.Logger) (*pgcluster.Cluster, error) {
	cfg := pgcluster.Config{DataDir: filepath.Join(dataDir, "postgres"), Durable: true, Logger: logger}
	if err := resetDevData(cfg.DataDir); err != nil {
		return nil, err
	}
	cluster, err := pgcluster.Start(ctx, cfg)
	if errors.Is(err, pgcluster.ErrNotTraversable) {
		// Running as root in a folder the unprivileged postgres user cannot
		// enter (such as under /root): keep the cluster in /tmp instead.
		cfg.DataDir = filepath.Join(os.TempDir(), "eventruntime-dev-"+strings.ReplaceAll(strings.Trim(dataDir, "/"), "/", "-"), "postgres")
		logger.Warn("data folder not reachable by the postgres user; using a folder under /tmp",
			"event", "dev.postgres_data_moved", "data_dir", cfg.DataDir)
		if err := resetDevData(cfg.DataDir); err != nil {
			return nil, err
		}
		cluster, err = pgcluster.Start(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, cluster.URL("postgres"))
	if err != nil {
		_ = cluster.Stop()
		return nil, err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'eventruntime')").Scan(&exists); err != nil {
		_ = cluster.Stop()
		return nil, err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE eventruntime"); err != nil {
			_ = cluster.Stop()
			return nil, err
		}
	}
	return cluster, nil
}

// configureDevTenants issues each demo tenant a transport certificate from
// the fake regulator, writes it under dataDir/dev, and points the tenant's
// configuration at the files.
func configureDevTenants(ctx context.Context, databaseURL, dataDir string, fake *ofbfake.Server) error {
	certDir := filepath.Join(dataDir, "dev", "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, t := range devTenants {
		_, certPEM, keyPEM, err := fake.IssueClientCertificate(t.OrganisationID)
		if err != nil {
			return err
		}
		certFile := filepath.Join(certDir, t.ID+".crt")
		keyFile := filepath.Join(certDir, t.ID+".key")
		if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
			return err
		}
		err = tenant.Upsert(ctx, conn, &tenant.Config{
			TenantID:       t.ID,
			Ecosystem:      outbox.EcosystemOFB,
			Enabled:        true,
			Environment:    "dev",
			OrganisationID: t.OrganisationID,
			ClientID:       t.SoftwareStatementID,
			Credentials:    map[string]string{"certificate": "file:" + certFile, "private_key": "file:" + keyFile},
			FlushInterval:  2 * time.Second,
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// printProgress prints one line every five seconds with how far events have
// gone through the pipeline, read from the database and the fake regulator.
func printProgress(ctx context.Context, pool *pgxpool.Pool, regulatorCounts func() (ofb, opin int)) error {
	ticker := time.NewTicker(5 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		var appended, received, mapped, batched, submitted, accepted, deadLettered int64
		err := pool.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM outbox),
			       (SELECT count(*) FROM consumer_idempotency WHERE consumer = 'regulator'),
			       (SELECT count(*) FROM report_items),
			       (SELECT count(*) FROM report_items WHERE batch_id IS NOT NULL),
			       (SELECT count(*) FROM submission_receipts),
			       (SELECT count(*) FROM submission_receipts WHERE status = 'ACCEPTED'),
			       (SELECT count(*) FROM dead_letters)`).
			Scan(&appended, &received, &mapped, &batched, &submitted, &accepted, &deadLettered)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(os.Stderr, "progress: %v\n", err)
			continue
		}
		ofbAccepted, opinAccepted := regulatorCounts()
		fmt.Fprintf(os.Stderr,
			"%s appended=%d received=%d mapped=%d batched=%d submitted=%d accepted=%d dead-lettered=%d ofb-regulator=%d opin-regulator=%d\n",
			time.Now().Format("15:04:05"), appended, received, mapped, batched, submitted, accepted, deadLettered,
			ofbAccepted, opinAccepted)
	}
}

// saoPaulo returns the demo tenants' regulator zone.
func saoPaulo() *time.Location {
	location, err := time.LoadLocation("America/Sao_Paulo")
	if err != nil {
		return time.UTC
	}
	return location
}

// resetDevData empties a server's data folder, because the fake regulators
// keep what they accepted in memory only: a pipeline that remembered earlier
// runs would report items the new fakes never saw. DEV_KEEP_DATA=true keeps
// the data.
func resetDevData(dir string) error {
	if os.Getenv("DEV_KEEP_DATA") == "true" {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("reset %s: %w", dir, err)
	}
	return nil
}
