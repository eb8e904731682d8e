package worker_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/outbox"
)

func TestPipelineEndToEnd(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{})

	const total = 10_000
	generator := demo.NewGenerator(42, testTenants)
	events := make([]*outbox.Event, total)
	for i := range events {
		events[i] = generator.Event()
	}
	// Most transactions append one event; every seventh appends five.
	appendEvents(t, p, events, func(tx int) int {
		if tx%7 == 0 {
			return 5
		}
		return 1
	})

	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM submission_receipts") >= total
	}, 3*time.Minute, 250*time.Millisecond, "receipts: %d of %d",
		count(t, p, "SELECT count(*) FROM submission_receipts"), total)

	seen := p.fake.SeenCounts()
	require.Empty(t, p.fake.Violations(), "every request must be valid against the spec")
	require.Len(t, seen, total, "the regulator must see every interaction")
	for _, event := range events {
		var fapiID string
		fapiID = interactionID(t, event)
		require.Equal(t, 1, seen[fapiID], "interaction %s of event %s", fapiID, event.ID)
	}
	require.Len(t, p.fake.Accepted(), total)
	require.Equal(t, total, count(t, p, "SELECT count(*) FROM report_items WHERE state = 'accepted'"))
	require.Equal(t, total, count(t, p, "SELECT count(*) FROM submission_receipts WHERE status = 'ACCEPTED' AND report_id IS NOT NULL"))
	require.Equal(t, total, count(t, p, "SELECT count(*) FROM payload_evidence WHERE kind = 'item'"))
	require.Zero(t, count(t, p, "SELECT count(*) FROM dead_letters"))
	require.Zero(t, count(t, p, "SELECT count(*) FROM export_batches WHERE state <> 'accepted'"))
	require.Equal(t, 2, count(t, p, "SELECT count(DISTINCT tenant_id) FROM export_batches"))
}

func TestPipelineRecordsDiscardedAndQuarantinedItems(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{})

	generator := demo.NewGenerator(7, testTenants[:1])
	modify := func(event *outbox.Event, change func(*outbox.Interaction)) {
		var interaction outbox.Interaction
		require.NoError(t, json.Unmarshal(event.Payload, &interaction))
		change(&interaction)
		event.Payload, _ = json.Marshal(interaction)
	}
	fresh := generator.Event()
	// The regulator discards reports older than seven days, so the check
	// before sending keeps this one back.
	stale := generator.Event()
	modify(stale, func(in *outbox.Interaction) { in.Timestamp = time.Now().Add(-8 * 24 * time.Hour) })
	// The regulator discards a report filed for another organisation.
	foreign := generator.Event()
	modify(foreign, func(in *outbox.Interaction) {
		in.Role, in.ServerOrgID, in.ClientOrgID = outbox.RoleServer, testTenants[1].OrganisationID, testTenants[0].OrganisationID
		in.ClientSSID, in.EndpointURIPrefix, in.AdditionalInfo = "", "", nil
	})
	appendEvents(t, p, []*outbox.Event{fresh, stale, foreign}, func(int) int { return 3 })

	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM export_batches WHERE finished_at IS NOT NULL") == 1
	}, time.Minute, 100*time.Millisecond)

	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM export_batches WHERE state = 'partially_discarded'"))
	require.Equal(t, 1, count(t, p,
		"SELECT count(*) FROM report_items WHERE state = 'quarantined' AND state_reason LIKE '%too old%' AND event_id = $1",
		stale.ID))
	require.Equal(t, 1, count(t, p,
		"SELECT count(*) FROM report_items WHERE state = 'discarded' AND event_id = $1", foreign.ID))
	require.Equal(t, 1, count(t, p,
		"SELECT count(*) FROM submission_receipts WHERE status = 'DISCARDED' AND message <> '' AND evidence_id IS NULL"))
	require.Equal(t, 2, count(t, p, "SELECT count(*) FROM submission_receipts"), "the quarantined item is never sent")
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM payload_evidence WHERE kind = 'item'"),
		"only the accepted item gets evidence")
	require.Zero(t, p.fake.Seen(interactionID(t, stale)))
	require.Empty(t, p.fake.Violations())
}

func TestPromptSealBetweenPeriodicFlushes(t *testing.T) {
	t.Parallel()
	// The periodic flush runs once at start and then not for an hour, so
	// only the prompt flush after each map job can seal these items.
	p := setupPipeline(t, pipelineOpts{flushEvery: time.Hour})
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM river_job WHERE kind = 'flush' AND state = 'completed'") > 0
	}, 30*time.Second, 50*time.Millisecond, "the flush run at start")

	generator := demo.NewGenerator(11, testTenants)
	for round := range 3 {
		events := make([]*outbox.Event, 20)
		for i := range events {
			events[i] = generator.Event()
		}
		appendEvents(t, p, events, func(int) int { return 4 })
		require.Eventually(t, func() bool {
			return count(t, p, "SELECT count(*) FROM report_items WHERE state = 'accepted'") == 20*(round+1)
		}, 30*time.Second, 50*time.Millisecond, "round %d: accepted %d", round,
			count(t, p, "SELECT count(*) FROM report_items WHERE state = 'accepted'"))
	}
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM river_job WHERE kind = 'flush'"),
		"no periodic flush may have run after the first")
	require.Len(t, p.fake.Accepted(), 60)
}

func TestPromptSealRetriesSkippedItem(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{flushEvery: time.Hour})
	ctx := t.Context()
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM river_job WHERE kind = 'flush' AND state = 'completed'") > 0
	}, 30*time.Second, 50*time.Millisecond, "the flush run at start")
	// Long enough for the test to lock an item before the seal, even on a
	// loaded machine.
	_, err := p.db.Pool.Exec(ctx, `UPDATE tenant_config SET flush_interval = interval '5 seconds'`)
	require.NoError(t, err)

	generator := demo.NewGenerator(12, testTenants[:1])
	events := make([]*outbox.Event, 10)
	for i := range events {
		events[i] = generator.Event()
	}
	appendEvents(t, p, events, func(int) int { return 10 })
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM report_items WHERE state = 'pending'") == 10
	}, 30*time.Second, 20*time.Millisecond)

	// The test locks one item as another sealer would, so the prompt flush
	// seals the other nine and finds one still pending.
	tx, err := p.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	var heldItemID int64
	require.NoError(t, tx.QueryRow(ctx,
		`SELECT id FROM report_items WHERE state = 'pending' ORDER BY id LIMIT 1 FOR UPDATE`).Scan(&heldItemID))
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM report_items WHERE state = 'accepted'") == 9
	}, 30*time.Second, 50*time.Millisecond)
	require.NoError(t, tx.Rollback(ctx))

	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM report_items WHERE id = $1 AND state = 'accepted'", heldItemID) == 1
	}, 30*time.Second, 50*time.Millisecond, "the held item must be sealed without a periodic flush")
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM river_job WHERE kind = 'flush'"))
}
