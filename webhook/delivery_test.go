package webhook_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/audit"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/webhook"
)

func TestDeliveryEndToEnd(t *testing.T) {
	t.Parallel()
	h := setup(t, webhook.Config{})
	ctx := context.Background()

	healthy := newReceiver(t, func(*http.Request) int { return http.StatusOK })

	// flaky returns 500 until two seconds after its first request.
	var flakyStart atomic.Int64
	flaky := newReceiver(t, func(*http.Request) int {
		flakyStart.CompareAndSwap(0, time.Now().UnixNano())
		if time.Since(time.Unix(0, flakyStart.Load())) < 2*time.Second {
			return http.StatusInternalServerError
		}
		return http.StatusNoContent
	})
	gone := newReceiver(t, func(*http.Request) int { return http.StatusGone })
	var forbid atomic.Bool
	forbid.Store(true)
	forbidden := newReceiver(t, func(*http.Request) int {
		if forbid.Load() {
			return http.StatusForbidden
		}
		return http.StatusOK
	})

	healthySub := h.subscribe(t, healthy.URL(), []string{"claim.*"}, webhook.RetryPolicy{})
	// Rotation: both secrets sign until the old one expires.
	rotated, err := h.store.RotateSecret(ctx, healthySub.ID, "test", "", time.Hour)
	require.NoError(t, err)
	require.Len(t, rotated.Secrets, 2)
	healthy.setSecrets(rotated.Secrets[0].Value, rotated.Secrets[1].Value)

	flakySub := h.subscribe(t, flaky.URL(), []string{"claim.approved", "claim.updated"}, jitterFree(repeat(300*time.Millisecond, 19)...))
	flaky.setSecrets(flakySub.Secrets[0].Value)
	goneSub := h.subscribe(t, gone.URL(), []string{"account.closed"}, webhook.RetryPolicy{})
	gone.setSecrets(goneSub.Secrets[0].Value)
	forbiddenSub := h.subscribe(t, forbidden.URL(), []string{"invoice.issued"}, jitterFree(100*time.Millisecond, 100*time.Millisecond))
	forbidden.setSecrets(forbiddenSub.Secrets[0].Value)

	var claims []*outbox.Event
	for i := range 30 {
		eventType := "claim.updated"
		if i%3 == 0 {
			eventType = "claim.approved"
		}
		claims = append(claims, newEvent(eventType, fmt.Sprintf("claim-%d", i%3), i))
	}
	closed := []*outbox.Event{newEvent("account.closed", "account-1", 1), newEvent("account.closed", "account-1", 2)}
	invoices := []*outbox.Event{newEvent("invoice.issued", "invoice-1", 1), newEvent("invoice.issued", "invoice-1", 2)}
	h.appendOne(t, claims[:10]...)
	h.appendOne(t, closed...)
	h.appendOne(t, invoices...)
	h.appendOne(t, claims[10:]...)

	require.Eventually(t, func() bool {
		return len(healthy.accepted()) >= len(claims) && len(flaky.accepted()) >= len(claims) &&
			h.count(t, "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'") == 0
	}, 60*time.Second, 100*time.Millisecond, "healthy %d, flaky %d of %d",
		len(healthy.accepted()), len(flaky.accepted()), len(claims))

	t.Run("HealthyGetsEverySignedEventInOrder", func(t *testing.T) {
		requireInOrder(t, claims, healthy.accepted())
		require.Len(t, healthy.requests(), len(claims), "no retries were needed")
		for _, got := range healthy.requests() {
			require.Equal(t, got.eventID, got.header.Get("webhook-id"))
			for secret, err := range got.verifyErr {
				require.NoError(t, err, "signature for secret %s...", secret[:10])
			}
			require.Len(t, strings.Fields(got.header.Get("webhook-signature")), 2, "one v1 signature per active secret")
			require.Equal(t, "application/json", got.header.Get("Content-Type"))
		}
	})

	t.Run("FlakyGetsEveryEventAfterRecovery", func(t *testing.T) {
		requireInOrder(t, claims, flaky.accepted())
		requests := flaky.requests()
		failed := 0
		ids := map[string]bool{}
		for _, event := range claims {
			ids[event.ID.String()] = true
		}
		for _, got := range requests {
			if got.status == http.StatusInternalServerError {
				failed++
			}
			require.True(t, ids[got.header.Get("webhook-id")], "webhook-id is the event id on every attempt")
			require.NoError(t, got.verifyErr[flakySub.Secrets[0].Value])
		}
		require.Positive(t, failed, "the receiver failed for a while")
		require.Equal(t, len(requests), h.count(t,
			"SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.subscription_id = $1",
			flakySub.ID), "every attempt is logged")
		require.Equal(t, failed, h.count(t, `
			SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
			WHERE d.subscription_id = $1 AND a.status_code = 500 AND a.outcome = 'failed'
			  AND a.response_body = '{"status":500}'::bytea AND a.latency_ms > 0 AND a.finished_at IS NOT NULL`,
			flakySub.ID), "failed attempts carry status, latency and response body")
		require.Equal(t, len(claims), h.count(t,
			"SELECT count(*) FROM webhook_deliveries WHERE subscription_id = $1 AND state = 'delivered'", flakySub.ID))
	})

	t.Run("GoneDisablesAfterOneAttempt", func(t *testing.T) {
		require.Len(t, gone.requests(), 1)
		sub, err := h.store.Get(ctx, goneSub.ID)
		require.NoError(t, err)
		require.Equal(t, webhook.StateDisabled, sub.State)
		require.Contains(t, sub.DisabledReason, "410")
		require.Equal(t, 2, h.count(t,
			"SELECT count(*) FROM webhook_deliveries WHERE subscription_id = $1 AND state = 'dead_lettered'", goneSub.ID))
		require.Equal(t, 1, h.count(t, `SELECT count(*) FROM audit_ledger
			WHERE subject = $1 AND action = 'webhook.subscription.disabled' AND actor = $2`,
			"webhook_subscription:"+goneSub.ID.String(), webhook.SystemActor))
	})

	t.Run("ForbiddenGetsExactAttemptsThenReplay", func(t *testing.T) {
		requests := forbidden.requests()
		require.Len(t, requests, 6, "3 attempts for each of 2 deliveries")
		for i, got := range requests {
			require.Equal(t, 1+i/3, got.seq, "request %d: the second event waits until the first is dead-lettered", i)
		}
		require.Equal(t, 2, h.count(t,
			"SELECT count(*) FROM webhook_deliveries WHERE subscription_id = $1 AND state = 'dead_lettered' AND attempts = 3",
			forbiddenSub.ID))
		require.Equal(t, 2, h.count(t,
			"SELECT count(*) FROM dead_letters WHERE source = 'webhooks' AND event_id = ANY($1)",
			[]string{invoices[0].ID.String(), invoices[1].ID.String()}))

		forbid.Store(false)
		result, err := webhook.Replay(ctx, h.db.Pool, newInsertClient(t, h),
			webhook.ReplayFilter{SubscriptionID: forbiddenSub.ID, DeadLettered: true}, "test")
		require.NoError(t, err)
		require.Equal(t, webhook.ReplayResult{Matched: 2, Queued: 2}, result)

		require.Eventually(t, func() bool { return len(forbidden.accepted()) == 2 }, 20*time.Second, 50*time.Millisecond)
		requireInOrder(t, invoices, forbidden.accepted())
		require.Equal(t, 2, h.count(t, `SELECT count(*) FROM webhook_deliveries
			WHERE subscription_id = $1 AND state = 'delivered' AND run = 2 AND attempts = 1`, forbiddenSub.ID))
	})

	t.Run("ReplayByDeliveryAndTimeRange", func(t *testing.T) {
		var deliveryID int64
		require.NoError(t, h.db.Pool.QueryRow(ctx,
			"SELECT id FROM webhook_deliveries WHERE subscription_id = $1 AND event_id = $2",
			healthySub.ID, claims[0].ID).Scan(&deliveryID))
		client := newInsertClient(t, h)

		result, err := webhook.Replay(ctx, h.db.Pool, client, webhook.ReplayFilter{DeliveryID: deliveryID}, "test")
		require.NoError(t, err)
		require.Equal(t, 1, result.Queued)
		require.Eventually(t, func() bool { return len(healthy.accepted()) == len(claims)+1 }, 20*time.Second, 50*time.Millisecond)
		last := healthy.accepted()[len(claims)]
		require.Equal(t, claims[0].ID.String(), last.header.Get("webhook-id"), "a replay keeps the webhook-id")

		future := time.Now().Add(time.Hour)
		result, err = webhook.Replay(ctx, h.db.Pool, client, webhook.ReplayFilter{
			SubscriptionID: healthySub.ID, Since: future, Until: future.Add(time.Hour),
		}, "test")
		require.NoError(t, err)
		require.Equal(t, webhook.ReplayResult{}, result, "no delivery in a future range")

		result, err = webhook.Replay(ctx, h.db.Pool, client, webhook.ReplayFilter{
			SubscriptionID: goneSub.ID, DeadLettered: true,
		}, "test")
		require.NoError(t, err)
		require.Equal(t, webhook.ReplayResult{Matched: 2, Skipped: 2}, result, "a disabled subscription is not replayed")
	})

	t.Run("AuditLedgerIntact", func(t *testing.T) {
		result, err := audit.Verify(ctx, h.db.Pool)
		require.NoError(t, err)
		require.True(t, result.Intact(), "first broken row %d: %s", result.FirstBrokenID, result.Reason)
		require.Positive(t, h.count(t, "SELECT count(*) FROM audit_ledger WHERE action = 'webhook.deliveries.replayed'"))
	})
}

func TestSlowEndpointDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	h := setup(t, webhook.Config{EndpointConcurrency: 3})

	unblock := make(chan struct{})
	var inFlight, maxInFlight atomic.Int64
	slow := newReceiver(t, func(r *http.Request) int {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			current := maxInFlight.Load()
			if n <= current || maxInFlight.CompareAndSwap(current, n) {
				break
			}
		}
		select {
		case <-time.After(30 * time.Second):
		case <-unblock:
		case <-r.Context().Done():
		}
		return http.StatusOK
	})
	fast := newReceiver(t, func(*http.Request) int { return http.StatusOK })
	// Registered last, so it runs first: the slow handlers return before the
	// servers close and the service stops.
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(unblock) }) })

	h.subscribe(t, slow.URL(), []string{"*"}, webhook.RetryPolicy{})
	fastSub := h.subscribe(t, fast.URL(), []string{"*"}, webhook.RetryPolicy{})
	fast.setSecrets(fastSub.Secrets[0].Value)

	var events []*outbox.Event
	for i := range 40 {
		events = append(events, newEvent("claim.updated", fmt.Sprintf("claim-%d", i%10), i))
	}
	start := time.Now()
	h.appendOne(t, events...)
	appended := time.Since(start)

	require.Eventually(t, func() bool { return len(fast.accepted()) == len(events) }, 20*time.Second, 20*time.Millisecond,
		"fast receiver got %d of %d", len(fast.accepted()), len(events))
	elapsed := time.Since(start)
	requireInOrder(t, events, fast.accepted())
	t.Logf("fast receiver got all %d events %s after the first append (appends took %s, first receipt at %s), "+
		"while the slow one held %d requests", len(events), elapsed.Round(time.Millisecond),
		appended.Round(time.Millisecond), fast.accepted()[0].at.Sub(start).Round(time.Millisecond), maxInFlight.Load())
	require.Less(t, elapsed, 15*time.Second, "the slow receiver must not hold the fast one back")
	require.Positive(t, inFlight.Load(), "the slow receiver is still holding requests")
	require.LessOrEqual(t, maxInFlight.Load(), int64(3), "per-endpoint concurrency limit")
}

func TestSubscriptionChangesWithoutRestart(t *testing.T) {
	t.Parallel()
	h := setup(t, webhook.Config{MaxBodyBytes: 2048})
	ctx := context.Background()

	first := newReceiver(t, func(*http.Request) int { return http.StatusOK })
	second := newReceiver(t, func(*http.Request) int { return http.StatusOK })
	sub := h.subscribe(t, first.URL(), []string{"claim.approved"}, webhook.RetryPolicy{})

	approved := newEvent("claim.approved", "claim-1", 1)
	h.appendOne(t, approved)
	require.Eventually(t, func() bool { return len(first.accepted()) == 1 }, 20*time.Second, 20*time.Millisecond)

	newURL := second.URL()
	_, err := h.store.Update(ctx, sub.ID, "test", webhook.UpdateParams{URL: &newURL, EventTypes: []string{"claim.*"}})
	require.NoError(t, err)
	updated := newEvent("claim.updated", "claim-1", 2)
	h.appendOne(t, updated)
	require.Eventually(t, func() bool { return len(second.accepted()) == 1 }, 20*time.Second, 20*time.Millisecond)
	require.Equal(t, updated.ID.String(), second.accepted()[0].eventID)

	t.Run("OversizedBodyDeadLettered", func(t *testing.T) {
		big := newEvent("claim.updated", "claim-2", 1)
		big.Payload = []byte(`{"blob":"` + strings.Repeat("x", 4096) + `"}`)
		small := newEvent("claim.updated", "claim-2", 2)
		h.appendOne(t, big, small)
		require.Eventually(t, func() bool { return len(second.accepted()) == 2 }, 20*time.Second, 20*time.Millisecond)
		require.Equal(t, small.ID.String(), second.accepted()[1].eventID, "the oversized event is never sent")
		require.Equal(t, 1, h.count(t, `SELECT count(*) FROM webhook_deliveries
			WHERE event_id = $1 AND state = 'dead_lettered' AND attempts = 0 AND dead_letter_reason LIKE '%2048-byte limit%'`,
			big.ID))
		require.Equal(t, 1, h.count(t, "SELECT count(*) FROM dead_letters WHERE event_id = $1", big.ID))
	})

	_, err = h.store.Disable(ctx, sub.ID, "test", "customer asked")
	require.NoError(t, err)
	h.appendOne(t, newEvent("claim.updated", "claim-1", 3))
	marker := newEvent("claim.updated", "claim-1", 4)
	markerReceiver := newReceiver(t, func(*http.Request) int { return http.StatusOK })
	h.subscribe(t, markerReceiver.URL(), []string{"claim.updated"}, webhook.RetryPolicy{})
	h.appendOne(t, marker)
	// Event 3 may reach the marker subscription too when the fan-out runs
	// after it was created, so wait for the marker itself.
	require.Eventually(t, func() bool {
		for _, delivery := range markerReceiver.accepted() {
			if delivery.eventID == marker.ID.String() {
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond)
	require.Len(t, second.requests(), 2, "a disabled subscription gets nothing")

	var actions []string
	rows, err := h.db.Pool.Query(ctx, "SELECT action FROM audit_ledger WHERE subject = $1 ORDER BY id",
		"webhook_subscription:"+sub.ID.String())
	require.NoError(t, err)
	for rows.Next() {
		var action string
		require.NoError(t, rows.Scan(&action))
		actions = append(actions, action)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{
		"webhook.subscription.created", "webhook.subscription.updated", "webhook.subscription.disabled",
	}, actions)
	result, err := audit.Verify(ctx, h.db.Pool)
	require.NoError(t, err)
	require.True(t, result.Intact(), result.Reason)
}

func TestLoopbackBlockedWithoutAllowList(t *testing.T) {
	t.Parallel()
	h := setup(t, webhook.Config{})
	ctx := context.Background()
	rec := newReceiver(t, func(*http.Request) int { return http.StatusOK })

	// The harness allows 127.0.0.1/32 only; a store without the allow-list
	// rejects the literal address at once.
	plain := &webhook.Store{Pool: h.db.Pool, Secrets: h.store.Secrets}
	_, err := plain.Create(ctx, webhook.CreateParams{
		Actor: "test", Ecosystem: outbox.EcosystemOFB, EventTypes: []string{"*"}, TenantID: testTenant, URL: rec.URL(),
	})
	require.ErrorIs(t, err, webhook.ErrInvalidSubscription)

	// 127.0.0.2 is loopback but outside the allow-list. The row is changed
	// directly in the database, so only the dial-time check can stop the
	// request.
	sub := h.subscribe(t, rec.URL(), []string{"*"}, jitterFree(50*time.Millisecond))
	_, err = h.db.Pool.Exec(ctx, "UPDATE webhook_subscriptions SET url = $2 WHERE id = $1",
		sub.ID, strings.Replace(rec.URL(), "127.0.0.1", "127.0.0.2", 1))
	require.NoError(t, err)
	h.appendOne(t, newEvent("claim.updated", "claim-1", 1))
	require.Eventually(t, func() bool {
		return h.count(t, "SELECT count(*) FROM webhook_deliveries WHERE subscription_id = $1 AND state = 'dead_lettered'", sub.ID) == 1
	}, 20*time.Second, 20*time.Millisecond)
	require.Equal(t, 2, h.count(t, `SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
		WHERE d.subscription_id = $1 AND a.outcome = 'error' AND a.error LIKE '%blocked%' AND a.status_code IS NULL`, sub.ID))
	require.Empty(t, rec.requests())
}
