package capture_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/outbox/capture"
	"github.com/finnest/eventruntime/tenant"
)

const (
	participantOrgID = "5ec47c83-9010-4540-91ad-b820ef0df04a"
	softwareID       = "f0b5419b-2b5f-4f59-9862-6d2a8e23be26"
)

func clientCall() capture.ClientCall {
	return capture.ClientCall{
		AdditionalInfo: map[string]any{"personType": "PF", "consentId": "urn:bank:c1"},
		ClientOrgID:    serverOrgID,
		ClientSSID:     softwareID,
		CorrelationID:  "corr-1",
		ServerOrgID:    participantOrgID,
		TenantID:       tenantID,
	}
}

func TestTransport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("CapturesClientReport", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		writer := outbox.NewWriter(db.Pool, outbox.WriterConfig{})
		t.Cleanup(writer.Close)
		recorder := newRecorder(t, capture.Config{Writer: writer})
		var seenID string
		participant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seenID = r.Header.Get("x-fapi-interaction-id")
			w.WriteHeader(http.StatusAccepted)
		}))
		t.Cleanup(participant.Close)
		client := &http.Client{Transport: recorder.Transport(nil)}

		req, err := http.NewRequestWithContext(capture.WithClientCall(ctx, clientCall()), "GET",
			participant.URL+"/prefix/open-banking/accounts/v2/accounts/acc-9/balances", nil)
		require.NoError(t, err)
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
		require.Empty(t, req.Header.Get("x-fapi-interaction-id"), "the caller's request is not changed")

		stored := readInteractions(t, db)
		require.Len(t, stored, 1)
		s, ok := stored[seenID]
		require.True(t, ok, "the event carries the interaction id the participant received")
		require.Equal(t, "/open-banking/accounts/v2/accounts/{accountId}/balances", s.interaction.Endpoint)
		require.Equal(t, outbox.RoleClient, s.interaction.Role)
		require.Equal(t, http.StatusAccepted, s.interaction.StatusCode)
		require.Equal(t, "GET", s.interaction.HTTPMethod)
		require.Equal(t, participant.URL+"/prefix/", s.interaction.EndpointURIPrefix)
		require.Equal(t, softwareID, s.interaction.ClientSSID)
		require.Equal(t, serverOrgID, s.interaction.ClientOrgID)
		require.Equal(t, participantOrgID, s.interaction.ServerOrgID)
		require.Equal(t, "corr-1", s.interaction.CorrelationID)
		require.Equal(t, map[string]any{"personType": "PF", "consentId": "urn:bank:c1"}, s.interaction.AdditionalInfo)
		require.Equal(t, int64(1), recorder.Stats().Captured)
	})

	t.Run("TimeoutIsReportedAs408", func(t *testing.T) {
		t.Parallel()
		writer := &memoryWriter{}
		var got results
		recorder := newRecorder(t, capture.Config{OnResult: got.add, Writer: writer})
		release := make(chan struct{})
		participant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		t.Cleanup(participant.Close)
		t.Cleanup(func() { close(release) })
		client := &http.Client{Transport: recorder.Transport(nil), Timeout: 200 * time.Millisecond}

		req, err := http.NewRequestWithContext(capture.WithClientCall(ctx, clientCall()), "GET",
			participant.URL+"/open-banking/accounts/v2/accounts", nil)
		require.NoError(t, err)
		_, err = client.Do(req)
		require.Error(t, err)

		require.Len(t, got.all(), 1)
		interaction := got.all()[0].Interaction
		require.Equal(t, http.StatusRequestTimeout, interaction.StatusCode)
		require.GreaterOrEqual(t, interaction.ProcessTimespan, int64(200))
		require.Less(t, interaction.ProcessTimespan, int64(5000))
	})

	t.Run("RefusedConnectionIsNotReported", func(t *testing.T) {
		t.Parallel()
		writer := &memoryWriter{}
		recorder := newRecorder(t, capture.Config{Writer: writer})
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		address := listener.Addr().String()
		require.NoError(t, listener.Close())
		client := &http.Client{Transport: recorder.Transport(nil)}

		req, err := http.NewRequestWithContext(capture.WithClientCall(ctx, clientCall()), "GET",
			"http://"+address+"/open-banking/accounts/v2/accounts", nil)
		require.NoError(t, err)
		_, err = client.Do(req)
		require.Error(t, err)
		require.Zero(t, writer.count())
		require.Equal(t, int64(1), recorder.Stats().ClientNoResponse)
	})

	t.Run("CallWithoutClientCallIsUnattributed", func(t *testing.T) {
		t.Parallel()
		writer := &memoryWriter{}
		recorder := newRecorder(t, capture.Config{Writer: writer})
		participant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "{}")
		}))
		t.Cleanup(participant.Close)
		client := &http.Client{Transport: recorder.Transport(nil)}

		resp, err := client.Get(participant.URL + "/open-banking/accounts/v2/accounts")
		require.NoError(t, err)
		resp.Body.Close()
		resp, err = client.Get(participant.URL + "/not-regulated")
		require.NoError(t, err)
		resp.Body.Close()

		require.Zero(t, writer.count())
		require.Equal(t, int64(1), recorder.Stats().Unattributed)
		require.Equal(t, int64(1), recorder.Stats().UnmatchedRoutes)
	})

	t.Run("PersistFailureStillReturnsTheResponse", func(t *testing.T) {
		t.Parallel()
		recorder := newRecorder(t, capture.Config{Writer: failingWriter{}})
		participant := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, `{"data":{}}`)
		}))
		t.Cleanup(participant.Close)
		client := &http.Client{Transport: recorder.Transport(nil)}

		req, err := http.NewRequestWithContext(capture.WithClientCall(ctx, clientCall()), "POST",
			participant.URL+"/open-banking/payments/v4/consents", nil)
		require.NoError(t, err)
		resp, err := client.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, `{"data":{}}`, string(body))
		require.Equal(t, int64(1), recorder.Stats().PersistFailures)
	})
}

func TestTenantDurability(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDatabase(t)
	config := &tenant.Config{
		TenantID: tenantID, Ecosystem: outbox.EcosystemOFB, Enabled: true, OrganisationID: serverOrgID,
		CaptureDurability: capture.DurabilityFailOpen,
	}
	require.NoError(t, tenant.Upsert(ctx, db.Pool, config))
	durability := capture.NewTenantDurability(db.Pool, 100*time.Millisecond, nil)

	require.Equal(t, capture.DurabilityFailOpen, durability.CaptureDurability(ctx, tenantID, outbox.EcosystemOFB))
	require.Equal(t, capture.DurabilityFailClosed, durability.CaptureDurability(ctx, "unknown", outbox.EcosystemOFB),
		"a tenant without settings is fail_closed")

	config.CaptureDurability = capture.DurabilityFailClosed
	require.NoError(t, tenant.Upsert(ctx, db.Pool, config))
	require.Equal(t, capture.DurabilityFailOpen, durability.CaptureDurability(ctx, tenantID, outbox.EcosystemOFB),
		"the cached value is served until it expires")
	require.Eventually(t, func() bool {
		return durability.CaptureDurability(ctx, tenantID, outbox.EcosystemOFB) == capture.DurabilityFailClosed
	}, 5*time.Second, 20*time.Millisecond)

	// With the database gone, the last value read stays in use.
	db.Pool.Close()
	time.Sleep(150 * time.Millisecond)
	for range 3 {
		require.Equal(t, capture.DurabilityFailClosed, durability.CaptureDurability(ctx, tenantID, outbox.EcosystemOFB))
		time.Sleep(60 * time.Millisecond)
	}
}
