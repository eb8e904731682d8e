package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/webhook"
	"github.com/finnest/eventruntime/worker"
)

// A customer endpoint stalls: for durations.Stall it holds every request,
// then responds 204 to each. Regulator traffic must keep flowing meanwhile,
// and afterwards every customer event must have exactly one delivered
// record and at least one 2xx from the endpoint. Webhook delivery is at
// least once: a request the client gave up on (RequestTimeout) and the
// endpoint still processed is sent again, and receivers deduplicate by
// webhook-id. Such repeats are reported as endpoint_repeats, not failed.
func TestCustomerEndpointStalled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	extension, store := e.webhookExtension(webhook.Config{
		FetchPollInterval: 100 * time.Millisecond, RequestTimeout: durations.WebhookTimeout,
	})
	e.startService(serviceOptions{extensions: []worker.Extension{extension}})
	e.startStandIn()

	var stalling atomic.Bool
	stalling.Store(true)
	var mu sync.Mutex
	accepted := map[string]int{}
	var abandoned atomic.Int64
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for stalling.Load() {
			select {
			case <-r.Context().Done():
				abandoned.Add(1)
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		mu.Lock()
		accepted[r.Header.Get("webhook-id")]++
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(endpoint.Close)
	// Subscriptions allow at most 20 attempts, so the 19 gaps together
	// outlast the stall.
	delays := make([]time.Duration, 19)
	for i := range delays {
		delays[i] = max(time.Second, durations.Stall/15)
	}
	zero := 0.0
	_, err := store.Create(context.Background(), webhook.CreateParams{
		Actor: "chaos", Ecosystem: outbox.EcosystemOFB, EventTypes: []string{"claim.*"},
		RetryPolicy: webhook.RetryPolicy{Delays: delays, Jitter: &zero}, TenantID: e.tenants[0].ID, URL: endpoint.URL + "/hooks",
	})
	require.NoError(t, err)

	producer := e.startLoad(801, durations.LoadRate)
	var claims []*outbox.Event
	stallEnds := time.Now().Add(durations.Stall)
	for i := 0; time.Now().Before(stallEnds); i++ {
		payload, _ := json.Marshal(map[string]any{"seq": i})
		claim := &outbox.Event{TenantID: e.tenants[0].ID, Ecosystem: outbox.EcosystemOFB, Type: "claim.approved",
			Version: 1, AggregateID: fmt.Sprintf("claim-%d", i%5), Payload: payload}
		require.NoError(t, e.appendEvents(claim))
		claims = append(claims, claim)
		time.Sleep(100 * time.Millisecond)
	}
	// Regulator items keep being accepted while the endpoint stalls.
	acceptedDuringStall := e.count("SELECT count(*) FROM report_items WHERE state = 'accepted'")
	stalling.Store(false)
	faultEnded := time.Now()
	producer.stop()

	result := e.settle(faultEnded, producer.committedIDs())
	require.Eventually(t, func() bool {
		return e.count("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'") == len(claims)
	}, durations.SettleTimeout, 200*time.Millisecond, "every customer event is delivered")
	webhookRecovery := time.Since(faultEnded)
	mu.Lock()
	defer mu.Unlock()
	repeats := 0
	for _, claim := range claims {
		require.Positive(t, accepted[claim.ID.String()], "endpoint never accepted event %s", claim.ID)
		repeats += max(accepted[claim.ID.String()]-1, 0)
	}
	deliveryRows := e.count(`SELECT count(*) FROM (SELECT event_id FROM webhook_deliveries
		GROUP BY subscription_id, event_id HAVING count(*) > 1) d`)
	e.verdict("customer-endpoint-stalled", result, formatDetails("webhook_events", len(claims),
		"duplicate_delivery_rows", deliveryRows, "endpoint_repeats", repeats, "webhook_recovery", webhookRecovery.Round(100*time.Millisecond),
		"abandoned_requests", abandoned.Load(), "regulator_accepted_during_stall", acceptedDuringStall))
	require.Zero(t, deliveryRows, "events with more than one delivery record")
	require.Positive(t, acceptedDuringStall, "regulator traffic flowed during the stall")
}
