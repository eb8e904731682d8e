package worker_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/businessday"
	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/tenant"
)

// TestScheduledTenantMeetsDeadline runs a scheduled tenant whose window
// never opens, and moves the flush policy's clock across the deadline of
// business day D (08:00 on D+1, São Paulo time, less a two-hour margin):
// nothing is sealed before the margin starts, and all of D is accepted once
// it does, while the clock still reads before 08:00.
func TestScheduledTenantMeetsDeadline(t *testing.T) {
	t.Parallel()
	calendar, err := businessday.NewCalendar("America/Sao_Paulo")
	require.NoError(t, err)
	day := calendar.Day(time.Now()).AddDays(-1)
	cutoff := calendar.Cutoff(day)

	var clock atomic.Int64
	clock.Store(cutoff.Add(-3 * time.Hour).UnixNano()) // 05:00 on D+1
	p := setupPipeline(t, pipelineOpts{now: func() time.Time { return time.Unix(0, clock.Load()) }})
	ctx := context.Background()

	config, err := tenant.Get(ctx, p.db.Pool, testTenants[0].ID, outbox.EcosystemOFB)
	require.NoError(t, err)
	config.SubmissionMode = tenant.ModeScheduled
	config.ScheduleWindowStart = 23 * time.Hour // 23:00-23:30 local: closed all test long
	config.ScheduleWindowEnd = 23*time.Hour + 30*time.Minute
	config.DeadlineMargin = 2 * time.Hour
	require.NoError(t, tenant.Upsert(ctx, p.db.Pool, config))

	// Interactions spread over day D, the last one a minute before midnight.
	generator := demo.NewGenerator(21, testTenants[:1])
	start := calendar.Start(day)
	events := make([]*outbox.Event, 24)
	for i := range events {
		event := generator.Event()
		var interaction outbox.Interaction
		require.NoError(t, json.Unmarshal(event.Payload, &interaction))
		interaction.Timestamp = start.Add(time.Duration(i) * time.Hour).Add(59 * time.Minute)
		event.Payload, _ = json.Marshal(interaction)
		event.OccurredAt = interaction.Timestamp
		events[i] = event
	}
	// Only interactions older than seven days are discarded by the
	// regulator; keep those out of the test on days when D started earlier.
	appendEvents(t, p, events, func(int) int { return 6 })
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM report_items") == len(events)
	}, 30*time.Second, 50*time.Millisecond)

	// Before the margin starts, several flush passes seal nothing.
	time.Sleep(time.Second)
	require.Zero(t, count(t, p, "SELECT count(*) FROM export_batches"))
	require.Equal(t, len(events), count(t, p, "SELECT count(*) FROM report_items WHERE state = 'pending'"))

	// 06:00:01 on D+1: inside the margin, still two hours before the cut-off.
	clock.Store(cutoff.Add(-2*time.Hour + time.Second).UnixNano())
	waitSettled(t, p, events)
	requireEachAcceptedOnce(t, p, events)
	require.True(t, time.Unix(0, clock.Load()).Before(cutoff))
}
