package jobs

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/pgcluster"
	"github.com/finnest/eventruntime/migrations"
)

// partitionFixture is a migrated database on a private cluster. The test
// starts its own cluster so that it needs no TestMain in this package.
type partitionFixture struct {
	pool  *pgxpool.Pool
	today time.Time
}

func newPartitionFixture(t *testing.T) *partitionFixture {
	t.Helper()
	ctx := context.Background()
	cluster, err := pgcluster.Start(ctx, pgcluster.Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cluster.Stop() })
	pool, err := pgxpool.New(ctx, cluster.URL("postgres"))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, migrations.Up(ctx, pool, nil))
	return &partitionFixture{pool: pool, today: time.Now().UTC().Truncate(24 * time.Hour)}
}

func (f *partitionFixture) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	_, err := f.pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err)
}

// name returns the partition name of the day offset days from today.
func (f *partitionFixture) name(offset int) string {
	return "outbox_p" + f.today.AddDate(0, 0, offset).Format("20060102")
}

// insertEvent inserts an event created at noon of the day offset days from
// today and returns its id.
func (f *partitionFixture) insertEvent(t *testing.T, offset int, eventType string) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	createdAt := f.today.AddDate(0, 0, offset).Add(12 * time.Hour)
	f.exec(t, `
		INSERT INTO outbox (id, tenant_id, ecosystem, event_type, event_version, aggregate_id, payload,
		                    occurred_at, created_at)
		VALUES ($1, 'tenant-a', 'ofb', $2, 1, $3, '{}', $4, $4)`, id, eventType, id.String(), createdAt)
	return id
}

func (f *partitionFixture) received(t *testing.T, consumer string, id uuid.UUID) {
	t.Helper()
	f.exec(t, `INSERT INTO consumer_idempotency (consumer, event_id, tenant_id, ecosystem)
	           VALUES ($1, $2, 'tenant-a', 'ofb')`, consumer, id)
}

func (f *partitionFixture) reportItem(t *testing.T, id uuid.UUID, state string) {
	t.Helper()
	f.exec(t, `
		INSERT INTO report_items (tenant_id, ecosystem, event_id, fapi_interaction_id, role, body, reported_at, state)
		VALUES ('tenant-a', 'ofb', $1, $2, 'SERVER', '{}', now(), $3)`, id, id.String(), state)
}

func (f *partitionFixture) exists(t *testing.T, name string) bool {
	t.Helper()
	var exists bool
	err := f.pool.QueryRow(context.Background(), "SELECT to_regclass($1) IS NOT NULL", name).Scan(&exists)
	require.NoError(t, err)
	return exists
}

func keptNames(result PartitionsResult) []string {
	var names []string
	for _, kept := range result.KeptBack {
		names = append(names, kept.Name)
	}
	return names
}

func TestPartitionsRetention(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own PostgreSQL")
	}
	t.Parallel()
	ctx := context.Background()
	f := newPartitionFixture(t)
	worker := &PartitionsWorker{Pool: f.pool}

	// Days 41 to 36 ago are past the default 30-day retention, day 20 ago is
	// not.
	var created int
	require.NoError(t, f.pool.QueryRow(ctx, "SELECT outbox_ensure_partitions($1::date, 6)",
		f.today.AddDate(0, 0, -41)).Scan(&created))
	require.Equal(t, 6, created)
	require.NoError(t, f.pool.QueryRow(ctx, "SELECT outbox_ensure_partitions($1::date, 1)",
		f.today.AddDate(0, 0, -20)).Scan(&created))
	f.exec(t, `UPDATE retention_policy SET required_consumers = '{regulator,webhooks}' WHERE table_name = 'outbox'`)

	// Day -41: received by the regulator only, not by webhooks.
	id := f.insertEvent(t, -41, "claim.approved")
	f.received(t, "regulator", id)
	// Day -40: empty.
	// Day -39: received by both consumers.
	id = f.insertEvent(t, -39, "claim.approved")
	f.received(t, "regulator", id)
	f.received(t, "webhooks", id)
	// Day -38: never received.
	f.insertEvent(t, -38, "claim.approved")
	// Day -37: received, but its report item is still pending.
	id = f.insertEvent(t, -37, "pcm.interaction.recorded")
	f.received(t, "regulator", id)
	f.received(t, "webhooks", id)
	f.reportItem(t, id, "pending")
	// Day -36: one item accepted, one quarantined, one event dead-lettered.
	for _, state := range []string{"accepted", "quarantined"} {
		id = f.insertEvent(t, -36, "pcm.interaction.recorded")
		f.received(t, "regulator", id)
		f.received(t, "webhooks", id)
		f.reportItem(t, id, state)
	}
	id = f.insertEvent(t, -36, "pcm.interaction.recorded")
	f.received(t, "regulator", id)
	f.received(t, "webhooks", id)
	f.exec(t, `INSERT INTO dead_letters (tenant_id, ecosystem, source, event_id, reason)
	           VALUES ('tenant-a', 'ofb', 'map', $1, 'unknown version')`, id)

	t.Run("TenantRetentionLengthensThePolicy", func(t *testing.T) {
		f.exec(t, `INSERT INTO tenant_config (tenant_id, ecosystem, organisation_id, retention)
		           VALUES ('tenant-long', 'ofb', 'org', '{"outbox": "60 days"}')`)
		result, err := worker.Run(ctx, time.Now())
		require.NoError(t, err)
		require.Empty(t, result.Dropped)
		require.Empty(t, result.KeptBack)
		require.Equal(t, "60 days", result.Retain)
		f.exec(t, `DELETE FROM tenant_config WHERE tenant_id = 'tenant-long'`)
	})

	t.Run("InvalidTenantRetentionDropsNothing", func(t *testing.T) {
		f.exec(t, `INSERT INTO tenant_config (tenant_id, ecosystem, organisation_id, retention)
		           VALUES ('tenant-bad', 'ofb', 'org', '{"outbox": "forever"}')`)
		_, err := worker.Run(ctx, time.Now())
		require.ErrorContains(t, err, "must be an interval")
		require.True(t, f.exists(t, f.name(-40)))
		f.exec(t, `DELETE FROM tenant_config WHERE tenant_id = 'tenant-bad'`)
	})

	t.Run("DropsOnlyAccountedPartitions", func(t *testing.T) {
		result, err := worker.Run(ctx, time.Now())
		require.NoError(t, err)
		require.Equal(t, "30 days", result.Retain)
		require.Equal(t, []string{f.name(-40), f.name(-39), f.name(-36)}, result.Dropped)
		require.Equal(t, []string{f.name(-41), f.name(-38), f.name(-37)}, keptNames(result))
		for _, kept := range result.KeptBack {
			require.Equal(t, int64(1), kept.Unaccounted, kept.Name)
			require.Equal(t, "events not yet accounted for", kept.Reason, kept.Name)
		}

		for _, offset := range []int{-40, -39, -36} {
			require.False(t, f.exists(t, f.name(offset)), "partition of day %d must be dropped", offset)
		}
		for _, offset := range []int{-41, -38, -37, -20, 0, PartitionDaysAhead} {
			require.True(t, f.exists(t, f.name(offset)), "partition of day %d must exist", offset)
		}
		require.True(t, f.exists(t, "outbox_default"))
	})

	t.Run("DropsOnceTheEventsAreAccounted", func(t *testing.T) {
		var pendingID uuid.UUID
		require.NoError(t, f.pool.QueryRow(ctx, "SELECT id FROM "+f.name(-37)).Scan(&pendingID))
		f.exec(t, `UPDATE report_items SET state = 'discarded' WHERE event_id = $1`, pendingID)

		result, err := worker.Run(ctx, time.Now())
		require.NoError(t, err)
		require.Equal(t, []string{f.name(-37)}, result.Dropped)
		require.Equal(t, []string{f.name(-41), f.name(-38)}, keptNames(result))
	})

	t.Run("NoPolicyKeepsEverything", func(t *testing.T) {
		f.exec(t, `DELETE FROM retention_policy WHERE table_name = 'outbox'`)
		result, err := worker.Run(ctx, time.Now())
		require.NoError(t, err)
		require.Empty(t, result.Dropped)
		require.Empty(t, result.Retain)
		require.True(t, f.exists(t, f.name(-41)))
	})

	t.Run("LockedPartitionIsKeptBack", func(t *testing.T) {
		f.exec(t, `INSERT INTO retention_policy (table_name, retain, required_consumers)
		           VALUES ('outbox', interval '30 days', '{regulator}')`)
		tx, err := f.pool.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx)
		_, err = tx.Exec(ctx, fmt.Sprintf("LOCK TABLE %s IN ACCESS SHARE MODE", f.name(-41)))
		require.NoError(t, err)

		result, err := worker.Run(ctx, time.Now())
		require.NoError(t, err)
		require.Empty(t, result.Dropped)
		require.Len(t, result.KeptBack, 2)
		require.Equal(t, f.name(-41), result.KeptBack[0].Name)
		require.Contains(t, result.KeptBack[0].Reason, "lock not acquired")
		require.True(t, f.exists(t, f.name(-41)))
	})
}
