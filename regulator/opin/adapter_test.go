package opin_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/regulator/opin"
	"github.com/finnest/eventruntime/regulator/opinfake"
	"github.com/finnest/eventruntime/tenant"
)

const (
	organisationID = "c1ddd896-1145-4177-9b58-8a6e310557e2"
	counterpartOrg = "1fb79963-4bff-4204-9370-93aceb8a2f0d"
	authServerID   = "f8cd7b48-197d-419b-8680-f42226111b6f"
	softwareID     = "2a59c2a3-529f-41c6-97e3-77395e9951ca"
	keyID          = "kid-tenant"
)

// testKey is generated once because 2048-bit generation is slow.
var testKey = sync.OnceValue(func() *rsa.PrivateKey {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return key
})

func pkcs8PEM(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

type adapterBundle struct {
	adapter *opin.Adapter
	config  *tenant.Config
	fake    *opinfake.Server
}

// setupAdapter starts a fake with the test key registered and returns an
// adapter and a tenant whose key is read from a file.
func setupAdapter(t *testing.T) *adapterBundle {
	t.Helper()
	fake, err := opinfake.New(opinfake.Config{})
	require.NoError(t, err)
	require.NoError(t, fake.Start())
	t.Cleanup(func() { _ = fake.Close() })
	fake.RegisterKey(organisationID, keyID, &testKey().PublicKey)

	keyFile := filepath.Join(t.TempDir(), "signing.pem")
	require.NoError(t, os.WriteFile(keyFile, pkcs8PEM(t, testKey()), 0o600))
	adapter, err := opin.NewAdapter(opin.AdapterConfig{BaseURL: fake.URL(), RootCAs: fake.RootCAs()})
	require.NoError(t, err)
	return &adapterBundle{
		adapter: adapter,
		fake:    fake,
		config: &tenant.Config{
			TenantID: "tenant-opin", Ecosystem: outbox.EcosystemOPIN, OrganisationID: organisationID,
			SigningKeyID: keyID, Credentials: map[string]string{"signing_key": "file:" + keyFile},
			UpdatedAt: time.Now(),
		},
	}
}

func interaction(role string) outbox.Interaction {
	in := outbox.Interaction{
		AdditionalInfo:    map[string]any{"consentId": "urn:seguradora:" + uuid.NewString()},
		CorrelationID:     uuid.NewString(),
		Endpoint:          "/open-insurance/insurance-auto/v1/insurance-auto/{policyId}/claim",
		FAPIInteractionID: uuid.NewString(),
		HTTPMethod:        "GET",
		ProcessTimespan:   80,
		Role:              role,
		StatusCode:        200,
		Timestamp:         time.Now(),
		URL:               "/open-insurance/insurance-auto/v1/insurance-auto/p-1/claim",
	}
	if role == outbox.RoleServer {
		in.ServerOrgID, in.ServerASID = organisationID, authServerID
		in.ClientOrgID, in.ClientSSID = counterpartOrg, softwareID
	} else {
		in.ClientOrgID, in.ClientSSID = organisationID, softwareID
		in.ServerOrgID, in.ServerASID = counterpartOrg, authServerID
	}
	return in
}

func mapAll(t *testing.T, adapter *opin.Adapter, interactions ...outbox.Interaction) []json.RawMessage {
	t.Helper()
	items := make([]json.RawMessage, len(interactions))
	for i, in := range interactions {
		item, err := adapter.Map(in)
		require.NoError(t, err)
		items[i] = item
	}
	return items
}

func TestReportSplitsRolesAndKeepsOrder(t *testing.T) {
	t.Parallel()
	b := setupAdapter(t)
	interactions := []outbox.Interaction{
		interaction(outbox.RoleClient), interaction(outbox.RoleServer),
		interaction(outbox.RoleClient), interaction(outbox.RoleServer),
	}

	result, err := b.adapter.Report(t.Context(), b.config, mapAll(t, b.adapter, interactions...))

	require.NoError(t, err)
	require.Equal(t, http.StatusOK, result.StatusCode)
	require.Equal(t, 2, b.fake.Requests(), "one request per role")
	require.Len(t, result.Items, 4)
	for i, in := range interactions {
		require.Equal(t, regulator.StatusAccepted, result.Items[i].Status, "item %d", i)
		require.Equal(t, in.CorrelationID, result.Items[i].CorrelationID, "item %d", i)
		require.NotEmpty(t, result.Items[i].ReportID, "item %d", i)
	}
	accepted := b.fake.Accepted()
	require.Len(t, accepted, 4)
	require.Equal(t, opin.RoleServer, accepted[0].Role, "SERVER is sent first")
	require.Equal(t, interactions[1].FAPIInteractionID, accepted[0].Event.FAPIInteractionID)
	require.Equal(t, interactions[3].FAPIInteractionID, accepted[1].Event.FAPIInteractionID)
	require.Equal(t, opin.RoleClient, accepted[2].Role)
	require.Equal(t, interactions[0].FAPIInteractionID, accepted[2].Event.FAPIInteractionID)
	require.Empty(t, b.fake.Violations())

	var payloads []struct {
		OrganisationID string       `json:"organisationId"`
		Events         []opin.Event `json:"events"`
	}
	require.NoError(t, json.Unmarshal(result.RequestBody, &payloads))
	require.Len(t, payloads, 2, "RequestBody is the array of the signed payloads")
	require.Equal(t, organisationID, payloads[0].OrganisationID)
	require.Len(t, payloads[0].Events, 2)
	require.Equal(t, interactions[1].FAPIInteractionID, payloads[0].Events[0].FAPIInteractionID)
	require.Equal(t, interactions[0].FAPIInteractionID, payloads[1].Events[0].FAPIInteractionID)
}

func TestReportOneRoleSendsOneRequest(t *testing.T) {
	t.Parallel()
	b := setupAdapter(t)

	result, err := b.adapter.Report(t.Context(), b.config,
		mapAll(t, b.adapter, interaction(outbox.RoleClient), interaction(outbox.RoleClient)))

	require.NoError(t, err)
	require.Len(t, result.Items, 2)
	require.Equal(t, 1, b.fake.Requests())
}

func TestReportMultiStatus(t *testing.T) {
	t.Parallel()
	b := setupAdapter(t)
	foreign := interaction(outbox.RoleServer)
	foreign.ServerOrgID = counterpartOrg // not the tenant's organisation, so the fake discards it
	interactions := []outbox.Interaction{interaction(outbox.RoleClient), foreign, interaction(outbox.RoleServer)}

	result, err := b.adapter.Report(t.Context(), b.config, mapAll(t, b.adapter, interactions...))

	require.NoError(t, err)
	require.Equal(t, http.StatusMultiStatus, result.StatusCode)
	require.Equal(t, regulator.StatusAccepted, result.Items[0].Status)
	require.NotEmpty(t, result.Items[0].ReportID, "the CLIENT request got 200")
	require.Equal(t, regulator.StatusDiscarded, result.Items[1].Status)
	require.Contains(t, result.Items[1].Message, "SERVER organisation")
	require.Equal(t, regulator.StatusAccepted, result.Items[2].Status)
	require.Empty(t, result.Items[2].ReportID, "a 207 entry has no reportId")
	require.Empty(t, b.fake.Violations())
}

// TestReportWrongKey also reads the key from an environment variable, so it
// does not run in parallel.
func TestReportWrongKey(t *testing.T) {
	b := setupAdapter(t)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	t.Setenv("OPIN_TEST_WRONG_KEY", string(pkcs8PEM(t, other)))
	b.config.Credentials = map[string]string{"signing_key": "env:OPIN_TEST_WRONG_KEY"}
	b.config.UpdatedAt = b.config.UpdatedAt.Add(time.Second)

	_, err = b.adapter.Report(t.Context(), b.config, mapAll(t, b.adapter, interaction(outbox.RoleServer)))

	statusErr := regulator.AsStatusError(err)
	require.NotNil(t, statusErr, "error: %v", err)
	require.Equal(t, http.StatusUnauthorized, statusErr.StatusCode)
	require.Contains(t, b.fake.Violations()[0], "does not verify")
}

func TestReportWrongKeyID(t *testing.T) {
	t.Parallel()
	b := setupAdapter(t)
	b.config.SigningKeyID = "kid-unregistered"

	_, err := b.adapter.Report(t.Context(), b.config, mapAll(t, b.adapter, interaction(outbox.RoleServer)))

	statusErr := regulator.AsStatusError(err)
	require.NotNil(t, statusErr, "error: %v", err)
	require.Equal(t, http.StatusUnauthorized, statusErr.StatusCode)
	require.Contains(t, b.fake.Violations()[0], `kid "kid-unregistered" is not registered`)
}

func TestReportServerError(t *testing.T) {
	t.Parallel()
	b := setupAdapter(t)
	b.fake.QueueFaults(opinfake.Fault{}, opinfake.Fault{Status: http.StatusInternalServerError, Message: "down"})

	_, err := b.adapter.Report(t.Context(), b.config,
		mapAll(t, b.adapter, interaction(outbox.RoleServer), interaction(outbox.RoleClient)))

	statusErr := regulator.AsStatusError(err)
	require.NotNil(t, statusErr, "error: %v", err)
	require.Equal(t, http.StatusInternalServerError, statusErr.StatusCode)
	require.Contains(t, statusErr.Message, "POST /report-api/v1/client-batch: down")
}

func TestReportResponseMismatch(t *testing.T) {
	t.Parallel()
	b := setupAdapter(t)
	b.fake.QueueFaults(opinfake.Fault{Status: http.StatusOK, Body: json.RawMessage(`[]`)})

	_, err := b.adapter.Report(t.Context(), b.config, mapAll(t, b.adapter, interaction(outbox.RoleServer)))

	require.ErrorIs(t, err, opin.ErrResponseMismatch)
}

func TestReportMissingCredential(t *testing.T) {
	t.Parallel()
	b := setupAdapter(t)
	b.config.Credentials = nil

	_, err := b.adapter.Report(t.Context(), b.config, mapAll(t, b.adapter, interaction(outbox.RoleServer)))

	require.ErrorIs(t, err, tenant.ErrCredentialMissing)
	require.Zero(t, b.fake.Requests())
}

func TestReportBatchSize(t *testing.T) {
	t.Parallel()
	b := setupAdapter(t)
	item := mapAll(t, b.adapter, interaction(outbox.RoleServer))[0]
	items := make([]json.RawMessage, opin.MaxBatchSize+1)
	for i := range items {
		items[i] = item
	}

	_, err := b.adapter.Report(t.Context(), b.config, items)

	require.ErrorIs(t, err, opin.ErrBatchSize)
	require.Zero(t, b.fake.Requests(), "nothing is sent")
}

func TestSignerHeaderAndSaltLength(t *testing.T) {
	t.Parallel()
	signer, err := opin.NewSigner(testKey(), keyID)
	require.NoError(t, err)

	compact, err := signer.Sign([]byte(`{"organisationId":"x","events":[]}`))
	require.NoError(t, err)

	parts := strings.Split(compact, ".")
	require.Len(t, parts, 3)
	header, err := base64.RawURLEncoding.DecodeString(parts[0])
	require.NoError(t, err)
	require.JSONEq(t, `{"alg":"PS256","kid":"kid-tenant","typ":"JWT"}`, string(header))
	signature, err := base64.RawURLEncoding.DecodeString(parts[2])
	require.NoError(t, err)
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	require.NoError(t, rsa.VerifyPSS(&testKey().PublicKey, crypto.SHA256, digest[:], signature,
		&rsa.PSSOptions{SaltLength: 32}), "the salt is exactly the 32-byte hash length")
}

func TestParseSigningKey(t *testing.T) {
	t.Parallel()
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(testKey())})
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)

	_, err = opin.ParseSigningKey(pkcs1)
	require.NoError(t, err)
	_, err = opin.ParseSigningKey(pkcs8PEM(t, testKey()))
	require.NoError(t, err)
	_, err = opin.ParseSigningKey(pkcs8PEM(t, small))
	require.ErrorContains(t, err, "has 1024 bits, want at least 2048")
	_, err = opin.ParseSigningKey([]byte("not pem"))
	require.ErrorContains(t, err, "not PEM-encoded")
}
