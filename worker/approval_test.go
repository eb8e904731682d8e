package worker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/audit"
	"github.com/finnest/eventruntime/internal/canonicaljson"
	"github.com/finnest/eventruntime/jobs"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/tenant"
)

// setConfig changes the first test tenant's settings through tenant.Set,
// the code path of `eventruntime config set`.
func setConfig(t *testing.T, p *pipeline, changes map[string]string) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, p.db.Pool, func(tx pgx.Tx) error {
		_, err := tenant.Set(ctx, tx, "operator", testTenants[0].ID, outbox.EcosystemOFB, changes)
		return err
	}))
}

// tamperFirstAuditRow alters the oldest audit row by hand, as a superuser
// who disables the append-only trigger would.
func tamperFirstAuditRow(t *testing.T, p *pipeline) {
	t.Helper()
	ctx := context.Background()
	_, err := p.db.Pool.Exec(ctx, "ALTER TABLE audit_ledger DISABLE TRIGGER audit_ledger_append_only")
	require.NoError(t, err)
	_, err = p.db.Pool.Exec(ctx, "UPDATE audit_ledger SET actor = 'someone-else' WHERE id = (SELECT min(id) FROM audit_ledger)")
	require.NoError(t, err)
	_, err = p.db.Pool.Exec(ctx, "ALTER TABLE audit_ledger ENABLE TRIGGER audit_ledger_append_only")
	require.NoError(t, err)
}

func TestDryRunSendsNothing(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{})
	setConfig(t, p, map[string]string{"dry_run": "true"})

	events := appendInteractions(t, p, 10, 21)
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM report_items WHERE state = 'dry_run'") == len(events) &&
			count(t, p, "SELECT count(*) FROM export_batches WHERE finished_at IS NULL") == 0
	}, 60*time.Second, 100*time.Millisecond)

	for _, event := range events {
		id := interactionID(t, event)
		require.Zero(t, p.fake.Seen(id), "regulator saw interaction %s", id)
	}
	require.Zero(t, count(t, p, "SELECT count(*) FROM submission_receipts"))
	require.Zero(t, count(t, p, "SELECT count(*) FROM payload_evidence"), "only a real receipt creates evidence")
	require.Zero(t, count(t, p, "SELECT count(*) FROM export_batches WHERE state <> 'dry_run'"))
	batches := count(t, p, "SELECT count(*) FROM export_batches")
	require.Equal(t, batches, count(t, p,
		"SELECT count(*) FROM submission_attempts WHERE outcome = 'dry_run' AND http_status IS NULL"))

	// The recorded hash is of the canonical JSON array of each batch's items.
	ctx := context.Background()
	rows, err := p.db.Pool.Query(ctx, `
		SELECT a.request_sha256, json_agg(i.body ORDER BY i.id)::text
		FROM submission_attempts a JOIN report_items i ON i.batch_id = a.batch_id
		GROUP BY a.id, a.request_sha256`)
	require.NoError(t, err)
	type hashed struct{ recorded, items string }
	checked, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (hashed, error) {
		var h hashed
		return h, row.Scan(&h.recorded, &h.items)
	})
	require.NoError(t, err)
	require.Len(t, checked, batches)
	for _, h := range checked {
		canonical, err := canonicaljson.Marshal([]byte(h.items))
		require.NoError(t, err)
		require.Equal(t, canonicaljson.SHA256(canonical), h.recorded)
	}
}

func TestApprovalWaitsForApprover(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{})
	setConfig(t, p, map[string]string{"approval_required": "true"})
	ctx := context.Background()

	events := appendInteractions(t, p, 10, 22)
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM report_items WHERE state = 'batched'") == len(events)
	}, 60*time.Second, 100*time.Millisecond)
	// Several flush runs pass, and nothing is submitted before approval.
	time.Sleep(time.Second)
	require.Zero(t, count(t, p, "SELECT count(*) FROM export_batches WHERE state <> 'awaiting_approval'"))
	require.Zero(t, count(t, p, "SELECT count(*) FROM river_job WHERE kind = 'submit'"))
	require.Zero(t, count(t, p, "SELECT count(*) FROM submission_attempts"))
	for _, event := range events {
		require.Zero(t, p.fake.Seen(interactionID(t, event)))
	}

	rows, err := p.db.Pool.Query(ctx, "SELECT id FROM export_batches WHERE state = 'awaiting_approval' ORDER BY id")
	require.NoError(t, err)
	batchIDs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.NotEmpty(t, batchIDs)
	for _, batchID := range batchIDs {
		require.NoError(t, pgx.BeginFunc(ctx, p.db.Pool, func(tx pgx.Tx) error {
			return jobs.ApproveBatchTx(ctx, tx, p.service.River(), "approver-1", batchID)
		}))
	}

	waitSettled(t, p, events)
	requireEachAcceptedOnce(t, p, events)
	require.Equal(t, len(batchIDs), count(t, p,
		"SELECT count(*) FROM export_batches WHERE state = 'accepted' AND approved_by = 'approver-1' AND approved_at IS NOT NULL"))
	require.Equal(t, len(batchIDs), count(t, p, "SELECT count(*) FROM river_job WHERE kind = 'submit'"),
		"one submit job per batch")
	for _, batchID := range batchIDs {
		require.Equal(t, 1, count(t, p, `SELECT count(*) FROM audit_ledger
			WHERE action = 'batch.approve' AND actor = 'approver-1' AND subject = $1`, fmt.Sprintf("batch/%d", batchID)))
	}

	result, err := audit.Verify(ctx, p.db.Pool)
	require.NoError(t, err)
	require.True(t, result.Intact(), result.Reason)
}

// clockInZone returns HH:MM of now plus offset in zone.
func clockInZone(t *testing.T, zone string, offset time.Duration) string {
	t.Helper()
	location, err := time.LoadLocation(zone)
	require.NoError(t, err)
	return time.Now().Add(offset).In(location).Format("15:04")
}

func TestModeChangeAppliesWhileServing(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{})
	ctx := context.Background()

	// Near real time: the first events are submitted within moments.
	first := appendInteractions(t, p, 5, 23)
	waitSettled(t, p, first)

	// Scheduled, with a daily window that opens in two hours: the running
	// service must hold new items back instead of sealing them.
	setConfig(t, p, map[string]string{
		"submission_mode":       "scheduled",
		"schedule_window_start": clockInZone(t, "America/Sao_Paulo", 2*time.Hour),
		"schedule_window_end":   clockInZone(t, "America/Sao_Paulo", 3*time.Hour),
	})
	batchesBefore := count(t, p, "SELECT count(*) FROM export_batches")
	second := appendInteractions(t, p, 5, 24)
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM report_items WHERE state = 'pending'") == len(second)
	}, 60*time.Second, 100*time.Millisecond)
	time.Sleep(1500 * time.Millisecond) // several flush runs at 200 ms
	require.Equal(t, len(second), count(t, p, "SELECT count(*) FROM report_items WHERE state = 'pending'"))
	require.Equal(t, batchesBefore, count(t, p, "SELECT count(*) FROM export_batches"))

	// A window covering the whole day: the next scheduled flush seals them.
	setConfig(t, p, map[string]string{"schedule_window_start": "00:00", "schedule_window_end": "00:00"})
	all := append(first, second...)
	waitSettled(t, p, all)
	requireEachAcceptedOnce(t, p, all)
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM tenant_config WHERE tenant_id = $1 AND last_flushed_at IS NOT NULL",
		testTenants[0].ID))

	require.Equal(t, 2, count(t, p, `SELECT count(*) FROM audit_ledger
		WHERE action = 'config.set' AND subject = 'tenant/tenant-a/ofb' AND actor = 'operator'`))
	wantNew, err := audit.ValueHash(map[string]string{"schedule_window_start": "00:00", "schedule_window_end": "00:00"})
	require.NoError(t, err)
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM audit_ledger WHERE new_hash = $1", wantNew),
		"the ledger row hashes the new values")

	result, err := audit.Verify(ctx, p.db.Pool)
	require.NoError(t, err)
	require.True(t, result.Intact(), result.Reason)

	tamperFirstAuditRow(t, p)
	result, err = audit.Verify(ctx, p.db.Pool)
	require.NoError(t, err)
	require.False(t, result.Intact())
	var firstID int64
	require.NoError(t, p.db.Pool.QueryRow(ctx, "SELECT min(id) FROM audit_ledger").Scan(&firstID))
	require.Equal(t, firstID, result.FirstBrokenID)
}
