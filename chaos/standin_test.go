package chaos_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// readiness returns the service's /readyz status and body.
func readiness(t *testing.T, addr string) (int, string) {
	t.Helper()
	response, err := http.Get("http://" + addr + "/readyz")
	require.NoError(t, err)
	defer response.Body.Close()
	body, _ := io.ReadAll(response.Body)
	return response.StatusCode, string(body)
}

// The Sequin stand-in stops for durations.Stall while producers keep
// writing, on a cluster with max_slot_wal_keep_size = 64MB. The scenario
// forces more WAL than that (segment switches and a checkpoint), so
// PostgreSQL invalidates the slot instead of filling the disk: the slot's
// wal_status becomes lost and the service reports itself unready. An
// operator then drops the lost slot and restarts the stand-in, which starts
// a new slot at the current position, and the re-drive job delivers the
// events written during the stall.
func TestStandInStalled(t *testing.T) {
	t.Parallel()
	const keepSize = 64 << 20
	e := newEnv(t, envOptions{ownCluster: true, clusterSettings: map[string]string{
		"max_slot_wal_keep_size": "64MB",
		"max_wal_size":           "64MB",
		"min_wal_size":           "32MB",
	}})
	service := e.startService(serviceOptions{
		redriveAfter:   durations.Stall + 5*time.Second,
		redriveEvery:   time.Second,
		slotLagLimit:   8 << 20,
		slotStallLimit: 5 * time.Second,
	})
	standIn := e.startStandIn()
	require.Eventually(t, func() bool {
		status, _ := readiness(t, service.Addr())
		return status == http.StatusOK
	}, 60*time.Second, 200*time.Millisecond, "the service must be ready before the stall")

	producer := e.startLoad(701, durations.LoadRate)
	time.Sleep(durations.Load)
	standIn.stop()
	stallStarted := time.Now()

	// Push WAL past the bound: each switch ends a 16 MB segment.
	ctx := context.Background()
	var walBytes, maxWALBytes int64
	for time.Since(stallStarted) < durations.Stall || e.slotStatus() != "lost" {
		require.Less(t, time.Since(stallStarted), durations.Stall+2*time.Minute, "the slot was never invalidated")
		_, err := e.pool.Exec(ctx, "SELECT pg_switch_wal()")
		require.NoError(t, err)
		if e.slotStatus() != "lost" {
			time.Sleep(200 * time.Millisecond)
			if (keepSize * 2) < e.retainedBytes() {
				_, err = e.pool.Exec(ctx, "CHECKPOINT")
				require.NoError(t, err)
			}
		} else {
			time.Sleep(500 * time.Millisecond)
		}
		require.NoError(t, e.pool.QueryRow(ctx, "SELECT sum(size) FROM pg_ls_waldir()").Scan(&walBytes))
		maxWALBytes = max(maxWALBytes, walBytes)
	}
	var status int
	var body string
	require.Eventually(t, func() bool {
		status, body = readiness(t, service.Addr())
		return status == http.StatusServiceUnavailable && strings.Contains(body, "wal_status lost")
	}, 30*time.Second, 200*time.Millisecond, "readiness must report the lost slot")

	// The operator's recovery: drop the lost slot and restart the stand-in.
	_, err := e.pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", e.slot)
	require.NoError(t, err)
	e.startStandIn()
	faultEnded := time.Now()
	time.Sleep(durations.Load)
	producer.stop()

	result := e.settle(faultEnded, producer.committedIDs())
	redriven := e.count(`SELECT count(*) FROM outbox o JOIN consumer_idempotency c ON c.event_id = o.id
		WHERE c.consumer = 'regulator' AND o.created_at BETWEEN $1 AND $2`, stallStarted, faultEnded)
	e.verdict("standin-stalled", result, formatDetails("stall", faultEnded.Sub(stallStarted).Round(time.Second),
		"slot", "lost", "max_pg_wal_mb", maxWALBytes>>20, "keep_size_mb", keepSize>>20, "stall_events", redriven))
	// pg_wal holds at most the slot's bound plus what max_wal_size lets
	// checkpoints keep, plus the segment being written.
	require.LessOrEqual(t, maxWALBytes, int64(keepSize+64<<20+16<<20), "pg_wal stays bounded")
	require.Eventually(t, func() bool {
		status, _ := readiness(t, service.Addr())
		return status == http.StatusOK
	}, 60*time.Second, 200*time.Millisecond, "readiness must recover on the new slot")
}

// slotStatus returns the scenario slot's wal_status, or "" when it is
// missing.
func (e *env) slotStatus() string {
	var status string
	_ = e.pool.QueryRow(context.Background(),
		"SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&status)
	return status
}

// retainedBytes returns the WAL the scenario slot holds back.
func (e *env) retainedBytes() int64 {
	var retained int64
	_ = e.pool.QueryRow(context.Background(), `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&retained)
	return retained
}
