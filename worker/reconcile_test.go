package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/businessday"
	"github.com/finnest/eventruntime/jobs"
	"github.com/finnest/eventruntime/outbox"
)

func reconcileDay(t *testing.T, p *pipeline, day businessday.Date) *jobs.ReconcileResult {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, p.db.Pool, func(tx pgx.Tx) error {
		_, err := jobs.EnqueueReconcileTx(ctx, p.service.River(), tx, testTenants[0].ID, outbox.EcosystemOFB, day, false)
		return err
	}))
	var result *jobs.ReconcileResult
	require.Eventually(t, func() bool {
		var err error
		result, err = jobs.LatestReconcile(ctx, p.db.Pool, testTenants[0].ID, outbox.EcosystemOFB, day)
		require.NoError(t, err)
		return result != nil
	}, 30*time.Second, 100*time.Millisecond)
	return result
}

func TestReconcile(t *testing.T) {
	t.Parallel()

	t.Run("CountsEveryStageAndFindsNoGap", func(t *testing.T) {
		t.Parallel()
		p := setupPipeline(t, pipelineOpts{})
		events := appendInteractions(t, p, 25, 31)
		waitSettled(t, p, events)

		calendar, err := businessday.NewCalendar("")
		require.NoError(t, err)
		result := reconcileDay(t, p, calendar.Day(events[0].OccurredAt))

		require.False(t, result.Gap, "gaps: %v", result.Details["gaps"])
		require.Equal(t, int64(25), result.Captured)
		require.Equal(t, int64(25), result.Mapped)
		require.Equal(t, int64(25), result.Submitted)
		require.Equal(t, int64(25), result.Accepted)
		require.Zero(t, result.Unsubmitted)
		require.Equal(t, jobs.ReconcileSampleSize, result.SampleChecked)
		require.Zero(t, result.SampleMissing)
	})

	t.Run("FlagsAnEventLostInTransport", func(t *testing.T) {
		t.Parallel()
		var lost uuid.UUID
		p := setupPipeline(t, pipelineOpts{drop: func(event outbox.Event) bool { return event.ID == lost }})
		events := appendInteractions(t, p, 5, 32)
		waitSettled(t, p, events)

		missing := appendInteractionsWith(t, p, 1, 33, func(e *outbox.Event) {
			lost = uuid.Must(uuid.NewV7())
			e.ID = lost
		})
		// The stand-in has confirmed the dropped row once a later row arrives.
		waitSettled(t, p, append(events, appendInteractions(t, p, 1, 34)...))

		calendar, err := businessday.NewCalendar("")
		require.NoError(t, err)
		result := reconcileDay(t, p, calendar.Day(missing[0].OccurredAt))
		require.True(t, result.Gap)
		require.Equal(t, result.Mapped+1, result.Captured)
		require.Contains(t, result.Details["gaps"], "captured 7 events but mapped 6 items")
	})
}

// appendInteractionsWith is appendInteractions with a change applied to each
// event before it is appended.
func appendInteractionsWith(t *testing.T, p *pipeline, n int, seed uint64, change func(*outbox.Event)) []*outbox.Event {
	t.Helper()
	events := make([]*outbox.Event, n)
	for i := range events {
		events[i] = demoEvent(seed + uint64(i))
		change(events[i])
	}
	appendEvents(t, p, events, func(int) int { return n })
	return events
}
