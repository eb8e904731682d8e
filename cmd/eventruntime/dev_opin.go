package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator/opin"
	"github.com/finnest/eventruntime/regulator/opinfake"
	"github.com/finnest/eventruntime/tenant"
)

// devOPINTenant is the demo's Open Insurance tenant.
var devOPINTenant = demo.OPINTenant{
	AuthorisationServerID: "3e8f1c52-9a4d-4b7e-8c16-5d2a9f0b7e43",
	ID:                    "tenant-opin",
	OrganisationID:        "a4c7e2d9-5b1f-4e8a-9d36-8f2b1c7e0a55",
	SoftwareStatementID:   "6b9d3f18-2e7c-4a51-b8e4-0c5f9a2d7b16",
}

// devOPINKeyID is the kid of the demo tenant's signing key.
const devOPINKeyID = "dev-opin-signing-key"

// devOPINEventInterval is the time between two demo OPIN events.
const devOPINEventInterval = 200 * time.Millisecond

// devOPIN is the demo's Open Insurance part: a fake ingestion API and a
// producer of the demo tenant's events.
type devOPIN struct {
	databaseURL string
	fake        *opinfake.Server
	generator   *demo.OPINGenerator
	logger      *slog.Logger
}

// startDevOPIN starts the fake ingestion API, gives the demo OPIN tenant a
// new signing key under dataDir/dev/certs, registers its public half with
// the fake, writes the tenant's configuration, appends the fake's
// certificate to caFile and sets OPIN_REPORT_URL for serviceConfig.
func startDevOPIN(ctx context.Context, logger *slog.Logger, databaseURL, dataDir, caFile string) (*devOPIN, error) {
	fake, err := opinfake.New(opinfake.Config{})
	if err != nil {
		return nil, err
	}
	if err := fake.Start(); err != nil {
		return nil, err
	}
	dev := &devOPIN{databaseURL: databaseURL, fake: fake, logger: logger}
	if err := dev.configure(ctx, dataDir, caFile); err != nil {
		_ = fake.Close()
		return nil, err
	}
	if dev.generator, err = demo.NewOPINGenerator(uint64(time.Now().UnixNano()), []demo.OPINTenant{devOPINTenant}); err != nil {
		_ = fake.Close()
		return nil, err
	}
	os.Setenv("OPIN_REPORT_URL", fake.URL())
	logger.Info("fake OPIN ingestion API started", "event", "dev.opin_regulator_started", "url", fake.URL())
	return dev, nil
}

func (d *devOPIN) configure(ctx context.Context, dataDir, caFile string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate demo OPIN signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode demo OPIN signing key: %w", err)
	}
	certDir := filepath.Join(dataDir, "dev", "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	keyFile := filepath.Join(certDir, devOPINTenant.ID+"-signing.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	d.fake.RegisterKey(devOPINTenant.OrganisationID, devOPINKeyID, &key.PublicKey)

	ca, err := os.OpenFile(caFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open regulator CA file: %w", err)
	}
	_, err = ca.Write(d.fake.CACertPEM())
	if closeErr := ca.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return fmt.Errorf("append the fake OPIN certificate to %s: %w", caFile, err)
	}

	conn, err := pgx.Connect(ctx, d.databaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return tenant.Upsert(ctx, conn, &tenant.Config{
		TenantID:       devOPINTenant.ID,
		Ecosystem:      outbox.EcosystemOPIN,
		Enabled:        true,
		Environment:    "dev",
		OrganisationID: devOPINTenant.OrganisationID,
		SigningKeyID:   devOPINKeyID,
		Credentials:    map[string]string{opin.SigningKeyCredential: "file:" + keyFile},
		FlushInterval:  2 * time.Second,
	})
}

// Run appends one demo OPIN event every devOPINEventInterval until ctx is
// done. A failed append is logged and skipped.
func (d *devOPIN) Run(ctx context.Context) error {
	pool, err := pgxpool.New(ctx, d.databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	ticker := time.NewTicker(devOPINEventInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		event := d.generator.Event()
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return outbox.Append(ctx, tx, event) })
		if err != nil && ctx.Err() == nil {
			d.logger.Warn("demo OPIN append failed", "event", "demo.opin_append_failed", "error", err)
		}
	}
}

// Close stops the fake ingestion API.
func (d *devOPIN) Close() { _ = d.fake.Close() }
