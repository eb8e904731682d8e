package opin_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/internal/natsembed"
	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/regulator/ofb"
	"github.com/finnest/eventruntime/regulator/ofbfake"
	"github.com/finnest/eventruntime/regulator/opin"
	"github.com/finnest/eventruntime/regulator/opinfake"
	"github.com/finnest/eventruntime/sequin"
	"github.com/finnest/eventruntime/tenant"
	"github.com/finnest/eventruntime/worker"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var (
	ofbTenant  = demo.Tenant{ID: "tenant-ofb", OrganisationID: "0b5a8d4e-6c3f-4f7e-9a51-2d1c7e3b8a10", SoftwareStatementID: "5f0c2b7e-1d4a-4c8b-9e2f-7a6d3c1b0e91"}
	opinTenant = demo.OPINTenant{ID: "tenant-opin", OrganisationID: organisationID,
		SoftwareStatementID: softwareID, AuthorisationServerID: authServerID}
)

// sideBySide is the service of `eventruntime serve` with an OFB and an OPIN
// tenant, each reporting to its own strict fake.
type sideBySide struct {
	db       *pgtest.Database
	ofbFake  *ofbfake.Server
	opinFake *opinfake.Server
}

func setupSideBySide(t *testing.T) *sideBySide {
	t.Helper()
	ctx := context.Background()
	p := &sideBySide{db: pgtest.NewDatabase(t)}

	natsServer, err := natsembed.Start(natsembed.Config{})
	require.NoError(t, err)
	t.Cleanup(natsServer.Shutdown)

	p.ofbFake, err = ofbfake.New(ofbfake.Config{})
	require.NoError(t, err)
	require.NoError(t, p.ofbFake.Start())
	t.Cleanup(func() { _ = p.ofbFake.Close() })
	p.opinFake, err = opinfake.New(opinfake.Config{})
	require.NoError(t, err)
	require.NoError(t, p.opinFake.Start())
	t.Cleanup(func() { _ = p.opinFake.Close() })

	dir := t.TempDir()
	_, certPEM, keyPEM, err := p.ofbFake.IssueClientCertificate(ofbTenant.OrganisationID)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, "ofb.crt"), filepath.Join(dir, "ofb.key")
	require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
	require.NoError(t, tenant.Upsert(ctx, p.db.Pool, &tenant.Config{
		TenantID: ofbTenant.ID, Ecosystem: outbox.EcosystemOFB, Enabled: true, Environment: "test",
		OrganisationID: ofbTenant.OrganisationID, ClientID: ofbTenant.SoftwareStatementID,
		Credentials:   map[string]string{"certificate": "file:" + certFile, "private_key": "file:" + keyFile},
		FlushInterval: 200 * time.Millisecond,
	}))

	signingKeyFile := filepath.Join(dir, "opin-signing.pem")
	require.NoError(t, os.WriteFile(signingKeyFile, pkcs8PEM(t, testKey()), 0o600))
	p.opinFake.RegisterKey(opinTenant.OrganisationID, keyID, &testKey().PublicKey)
	require.NoError(t, tenant.Upsert(ctx, p.db.Pool, &tenant.Config{
		TenantID: opinTenant.ID, Ecosystem: outbox.EcosystemOPIN, Enabled: true, Environment: "test",
		OrganisationID: opinTenant.OrganisationID, SigningKeyID: keyID,
		Credentials:   map[string]string{opin.SigningKeyCredential: "file:" + signingKeyFile},
		FlushInterval: 200 * time.Millisecond,
	}))

	ofbAdapter, err := ofb.NewAdapter(ofb.AdapterConfig{
		BaseURL: p.ofbFake.URL(), TokenURL: p.ofbFake.URL(), RootCAs: p.ofbFake.RootCAs(),
	})
	require.NoError(t, err)
	opinAdapter, err := opin.NewAdapter(opin.AdapterConfig{BaseURL: p.opinFake.URL(), RootCAs: p.opinFake.RootCAs()})
	require.NoError(t, err)
	service, err := worker.New(ctx, worker.Config{
		DatabaseURL: p.db.URL,
		Decoder:     worker.DecodeSequin,
		FlushEvery:  200 * time.Millisecond,
		HTTPAddr:    "127.0.0.1:0",
		Logger:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		NATSURL:     natsServer.ClientURL(),
		Adapters: map[string]regulator.Adapter{
			outbox.EcosystemOFB:  ofbAdapter,
			outbox.EcosystemOPIN: opinAdapter,
		},
		Stream: worker.StreamConfig{Name: "OUTBOX", Subjects: []string{"sequin." + p.db.Name + ".public.outbox.*"}},
	})
	require.NoError(t, err)

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	wg.Go(func() { _ = service.Run(runCtx) })

	conn, err := nats.Connect(natsServer.ClientURL())
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	// Replication slots belong to the whole cluster, so each test needs its
	// own.
	standIn, err := sequin.NewStandIn(sequin.StandInConfig{DatabaseURL: p.db.URL, NATS: conn, Slot: "standin_" + p.db.Name})
	require.NoError(t, err)
	wg.Go(func() { _ = standIn.Run(runCtx) })
	// Rows committed before the slot exists are never streamed.
	select {
	case <-standIn.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("Sequin stand-in not ready after 30s")
	}
	return p
}

func (p *sideBySide) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, p.db.Pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

func fapiInteractionID(t *testing.T, event *outbox.Event) string {
	t.Helper()
	var in outbox.Interaction
	require.NoError(t, json.Unmarshal(event.Payload, &in))
	return in.FAPIInteractionID
}

func TestServeOFBAndOPINSideBySide(t *testing.T) {
	p := setupSideBySide(t)
	ctx := context.Background()

	const perEcosystem = 400
	ofbGenerator := demo.NewGenerator(11, []demo.Tenant{ofbTenant})
	opinGenerator, err := demo.NewOPINGenerator(12, []demo.OPINTenant{opinTenant})
	require.NoError(t, err)
	var ofbEvents, opinEvents []*outbox.Event
	for range perEcosystem {
		ofbEvents = append(ofbEvents, ofbGenerator.Event())
		opinEvents = append(opinEvents, opinGenerator.Event())
	}
	// Each transaction appends one event of each ecosystem.
	for i := range perEcosystem {
		require.NoError(t, pgx.BeginFunc(ctx, p.db.Pool, func(tx pgx.Tx) error {
			return outbox.Append(ctx, tx, ofbEvents[i], opinEvents[i])
		}))
	}

	require.Eventually(t, func() bool {
		return p.count(t, "SELECT count(*) FROM submission_receipts") >= 2*perEcosystem
	}, 45*time.Second, 100*time.Millisecond, "receipts: %d of %d",
		p.count(t, "SELECT count(*) FROM submission_receipts"), 2*perEcosystem)

	require.Empty(t, p.ofbFake.Violations(), "every OFB request must be valid")
	require.Empty(t, p.opinFake.Violations(), "every OPIN request must be verified and valid")

	ofbSeen := p.ofbFake.SeenCounts()
	require.Len(t, ofbSeen, perEcosystem, "the OFB fake sees only the OFB tenant's events")
	for _, event := range ofbEvents {
		id := fapiInteractionID(t, event)
		require.Equal(t, 1, ofbSeen[id], "OFB interaction %s", id)
	}
	opinSeen := p.opinFake.SeenCounts()
	require.Len(t, opinSeen, perEcosystem, "the OPIN fake sees only the OPIN tenant's events")
	for _, event := range opinEvents {
		id := fapiInteractionID(t, event)
		require.Equal(t, 1, opinSeen[id], "OPIN interaction %s", id)
	}

	require.Len(t, p.ofbFake.Accepted(), perEcosystem)
	accepted := p.opinFake.Accepted()
	require.Len(t, accepted, perEcosystem)
	roles := map[string]int{}
	for _, event := range accepted {
		require.Equal(t, opinTenant.OrganisationID, event.OrganisationID)
		require.Equal(t, keyID, event.KeyID)
		roles[event.Role]++
	}
	require.Positive(t, roles[opin.RoleClient], "CLIENT events reach the client batch path")
	require.Positive(t, roles[opin.RoleServer], "SERVER events reach the server batch path")

	for _, ecosystem := range []string{outbox.EcosystemOFB, outbox.EcosystemOPIN} {
		require.Equal(t, perEcosystem, p.count(t,
			"SELECT count(*) FROM submission_receipts WHERE ecosystem = $1 AND status = 'ACCEPTED'", ecosystem),
			"accepted receipts of %s", ecosystem)
		require.Equal(t, perEcosystem, p.count(t,
			"SELECT count(*) FROM payload_evidence WHERE ecosystem = $1 AND kind = 'item'", ecosystem),
			"item evidence of %s", ecosystem)
	}
	require.Zero(t, p.count(t, "SELECT count(*) FROM report_items WHERE state <> 'accepted'"))
	require.Zero(t, p.count(t, "SELECT count(*) FROM dead_letters"))
	require.Zero(t, p.count(t, "SELECT count(*) FROM export_batches WHERE state <> 'accepted'"))
	require.Zero(t, p.count(t, `SELECT count(*) FROM submission_receipts
		WHERE ecosystem = 'opin' AND tenant_id <> $1`, opinTenant.ID))
}
