package capture_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/pgcluster"
	"github.com/finnest/eventruntime/migrations"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/outbox/capture"
	"github.com/finnest/eventruntime/tenant"
)

// TestPostgresCrashMidFlight kills PostgreSQL while requests are in flight and
// checks, after a restart, that every capture reported durable is in the
// outbox and every other one was counted as a persist failure.
func TestPostgresCrashMidFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills its own PostgreSQL")
	}
	ctx := context.Background()
	cluster, err := pgcluster.Start(ctx, pgcluster.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cluster.Stop() })

	poolConfig, err := pgxpool.ParseConfig(cluster.URL("postgres"))
	require.NoError(t, err)
	poolConfig.MaxConns = 8
	poolConfig.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, poolConfig)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, migrations.Up(ctx, pool, nil))
	require.NoError(t, tenant.Upsert(ctx, pool, &tenant.Config{
		TenantID: tenantID, Ecosystem: outbox.EcosystemOFB, Enabled: true, OrganisationID: serverOrgID,
		CaptureDurability: capture.DurabilityFailClosed,
	}))

	writer := outbox.NewWriter(pool, outbox.WriterConfig{BatchTimeout: 3 * time.Second})
	t.Cleanup(writer.Close)
	var got results
	recorder := newRecorder(t, capture.Config{
		Durability:     capture.NewTenantDurability(pool, time.Minute, nil),
		OnResult:       got.add,
		PersistTimeout: 3 * time.Second,
		Writer:         writer,
	})
	server := httptest.NewServer(recorder.Middleware(accountsHandler(`{"data":[]}`)))
	t.Cleanup(server.Close)

	// Callers send requests until stop closes, each with its own interaction
	// id, and note the status they got.
	var (
		statusMu sync.Mutex
		statuses = map[string]int{}
		stop     = make(chan struct{})
		callers  sync.WaitGroup
	)
	client := &http.Client{Timeout: 10 * time.Second}
	for range 16 {
		callers.Add(1)
		go func() {
			defer callers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				fapiID := uuid.NewString()
				req, _ := http.NewRequest("GET", server.URL+"/open-banking/accounts/v2/accounts", nil)
				req.Header.Set("x-fapi-interaction-id", fapiID)
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("request %s: %v", fapiID, err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statusMu.Lock()
				statuses[fapiID] = resp.StatusCode
				statusMu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}

	require.Eventually(t, func() bool { return recorder.Stats().Captured >= 200 }, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, cluster.Kill())
	require.Eventually(t, func() bool { return recorder.Stats().PersistFailures >= 20 }, 30*time.Second, 10*time.Millisecond)
	close(stop)
	callers.Wait()
	require.NoError(t, cluster.Restart(ctx))

	durable := map[string]bool{}
	failed := map[string]bool{}
	for _, result := range got.all() {
		if result.Err == nil {
			durable[result.Interaction.FAPIInteractionID] = true
		} else {
			failed[result.Interaction.FAPIInteractionID] = true
		}
	}
	stored := map[string]bool{}
	rows, err := pool.Query(ctx, "SELECT aggregate_id FROM outbox")
	require.NoError(t, err)
	for rows.Next() {
		var fapiID string
		require.NoError(t, rows.Scan(&fapiID))
		stored[fapiID] = true
	}
	require.NoError(t, rows.Err())

	stats := recorder.Stats()
	t.Logf("requests %d, durable %d, persist failures %d, rows %d", len(statuses), len(durable), len(failed), len(stored))
	require.Equal(t, int64(len(durable)), stats.Captured)
	require.Equal(t, int64(len(failed)), stats.PersistFailures)
	require.Equal(t, len(statuses), len(durable)+len(failed), "each answered request has exactly one outcome")

	var missing []string
	for fapiID := range durable {
		if !stored[fapiID] {
			missing = append(missing, fapiID)
		}
	}
	require.Empty(t, missing, "captures reported durable but not in the outbox")

	for fapiID, status := range statuses {
		switch status {
		case http.StatusOK:
			require.True(t, durable[fapiID], "request %s got 200 without a durable capture", fapiID)
		case http.StatusServiceUnavailable:
			require.True(t, failed[fapiID], "request %s got 503 without a persist failure", fapiID)
		default:
			require.Fail(t, fmt.Sprintf("request %s got status %d", fapiID, status))
		}
	}

	// The pool and the writer recover once PostgreSQL is back.
	require.Eventually(t, func() bool {
		resp, err := client.Get(server.URL + "/open-banking/accounts/v2/accounts")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 100*time.Millisecond)
}
