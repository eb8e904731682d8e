package chaos_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// PostgreSQL crashes (immediate shutdown, no checkpoint) under load, stays
// down for durations.Outage and restarts from WAL on the same port. The
// producers, the Sequin stand-in, the consumer and River all reconnect.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{ownCluster: true})
	e.startService(serviceOptions{})
	e.startStandIn()

	producer := e.startLoad(201, durations.LoadRate)
	time.Sleep(durations.Load)
	require.NoError(t, e.cluster.Kill())
	time.Sleep(durations.Outage)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, e.cluster.Restart(ctx))
	faultEnded := time.Now()
	time.Sleep(durations.Load)
	producer.stop()

	result := e.settle(faultEnded, producer.committedIDs())
	e.verdict("postgres-restart", result, formatDetails("outage", durations.Outage,
		"failed_appends", producer.appendFailures()))
}

// NATS shuts down under load, stays down for durations.Outage and starts
// again on the same port and JetStream store. The stand-in confirms rows to
// PostgreSQL only after a NATS flush, so rows written during the outage wait
// in the replication slot.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.startService(serviceOptions{})
	e.startStandIn()

	producer := e.startLoad(301, durations.LoadRate)
	time.Sleep(durations.Load)
	e.stopNATS()
	time.Sleep(durations.Outage)
	e.startNATS()
	faultEnded := time.Now()
	time.Sleep(durations.Load)
	producer.stop()

	result := e.settle(faultEnded, producer.committedIDs())
	e.verdict("nats-restart", result, formatDetails("outage", durations.Outage))
}
