package jobs_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertest"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/internal/testlog"
	"github.com/finnest/eventruntime/jobs"
	"github.com/finnest/eventruntime/tenant"
)

func TestFlushReportsUnconfiguredTenants(t *testing.T) {
	ctx := context.Background()
	db := pgtest.NewDatabase(t)
	require.NoError(t, tenant.Upsert(ctx, db.Pool, &tenant.Config{
		TenantID: "configured", Ecosystem: "ofb", Enabled: true, Environment: "test",
		OrganisationID: "org", ClientID: "client", SubmissionMode: tenant.ModeScheduled,
		ScheduleCadence: 24 * time.Hour,
	}))
	// Flushed a moment ago, so its next scheduled flush is a day away.
	_, err := db.Pool.Exec(ctx, `UPDATE tenant_config SET last_flushed_at = now()`)
	require.NoError(t, err)
	insert := func(tenantID, ecosystem string, n int) {
		for range n {
			_, err := db.Pool.Exec(ctx, `
				INSERT INTO report_items (tenant_id, ecosystem, event_id, fapi_interaction_id, role, body, reported_at)
				VALUES ($1, $2, $3, $4, 'SERVER', '{}', now())`,
				tenantID, ecosystem, uuid.New(), uuid.NewString())
			require.NoError(t, err)
		}
	}
	insert("configured", "ofb", 2)  // scheduled, not due for a day: waits by design
	insert("configured", "opin", 3) // no configuration for this ecosystem
	insert("missing", "ofb", 4)     // no configuration at all

	var logs testlog.Buffer
	worker := &jobs.FlushWorker{
		Logger:            slog.New(slog.NewJSONHandler(&logs, nil)),
		Pool:              db.Pool,
		UnconfiguredEvery: time.Nanosecond,
	}
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	_, err = rivertest.NewWorker(t, riverpgxv5.New(db.Pool), &river.Config{}, worker).
		Work(ctx, t, tx, jobs.FlushArgs{}, nil)
	require.NoError(t, err)

	var reported []string
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, `"event":"flush.unconfigured_tenant"`) {
			reported = append(reported, line)
		}
	}
	require.Len(t, reported, 2, "logs:\n%s", logs.String())
	require.Contains(t, reported[0], `"tenant_id":"configured","ecosystem":"opin","items":3`)
	require.Contains(t, reported[1], `"tenant_id":"missing","ecosystem":"ofb","items":4`)
	var waiting int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM report_items
		WHERE tenant_id = 'configured' AND ecosystem = 'ofb' AND state = 'pending'`).Scan(&waiting))
	require.Equal(t, 2, waiting, "the configured tenant's items wait for their schedule, unreported")
}
