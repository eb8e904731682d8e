package worker_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/outbox"
)

// readiness returns the /readyz status code and body.
func readiness(t *testing.T, p *pipeline) (int, string) {
	t.Helper()
	response, err := http.Get("http://" + p.service.Addr() + "/readyz")
	require.NoError(t, err)
	defer response.Body.Close()
	body, _ := io.ReadAll(response.Body)
	return response.StatusCode, string(body)
}

func TestRedriveDeliversEventsLostInTransport(t *testing.T) {
	t.Parallel()
	dropped := map[string]bool{}
	var droppedIDs []string
	p := setupPipeline(t, pipelineOpts{
		// The stand-in loses every fourth event between the outbox and NATS.
		drop: func(event outbox.Event) bool {
			if event.ID[15]%4 == 0 {
				return true
			}
			return false
		},
		redriveAfter: time.Second,
		redriveEvery: time.Second,
	})
	events := appendInteractions(t, p, 40, 41)
	for _, event := range events {
		if event.ID[15]%4 == 0 {
			dropped[event.ID.String()] = true
			droppedIDs = append(droppedIDs, event.ID.String())
		}
	}
	require.NotEmpty(t, droppedIDs, "the test needs some dropped events")

	waitSettled(t, p, events)
	requireEachAcceptedOnce(t, p, events)
	// Every event is recorded once, whether it came through NATS or re-drive.
	require.Equal(t, len(events), count(t, p, "SELECT count(*) FROM consumer_idempotency WHERE consumer = 'regulator'"))
	require.Equal(t, len(events)-len(droppedIDs), int(p.service.Consumer().Stats.Received.Load()),
		"the consumer received only what NATS carried")
}

func TestReadinessFollowsTheReplicationSlot(t *testing.T) {
	t.Parallel()
	// Other tests write WAL on the same cluster, so the slot only keeps up
	// when outbox traffic moves it: the heartbeat provides that traffic.
	p := setupPipeline(t, pipelineOpts{
		heartbeatEvery: 200 * time.Millisecond, slotLagLimit: 8 << 20, slotStallLimit: 15 * time.Second,
	})

	require.Eventually(t, func() bool {
		status, _ := readiness(t, p)
		return status == http.StatusOK
	}, time.Minute, 200*time.Millisecond)

	// With the stand-in stopped, writes pile up WAL behind the slot.
	p.stopStandIn()
	deadline := time.Now().Add(90 * time.Second)
	var body string
	for time.Now().Before(deadline) {
		appendInteractions(t, p, 200, uint64(time.Now().UnixNano()))
		var status int
		status, body = readiness(t, p)
		if status == http.StatusServiceUnavailable && strings.Contains(body, "replication slot") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	require.Contains(t, body, "replication slot")
	metrics := scrape(t, p)
	require.Contains(t, metrics, "eventruntime_replication_slot_retained_bytes")

	p.startStandIn()
	require.Eventually(t, func() bool {
		status, _ := readiness(t, p)
		return status == http.StatusOK
	}, time.Minute, 200*time.Millisecond, "readiness must recover once the stand-in catches up")
}

func TestHeartbeatReachesTheConsumer(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{heartbeatEvery: 200 * time.Millisecond})

	require.Eventually(t, func() bool {
		return count(t, p, `SELECT count(*) FROM consumer_idempotency
			WHERE consumer = 'regulator' AND tenant_id = '_heartbeat'`) >= 2
	}, 30*time.Second, 100*time.Millisecond)
	require.Zero(t, count(t, p, "SELECT count(*) FROM report_items"), "a heartbeat is not a report")
	require.Eventually(t, func() bool {
		return strings.Contains(scrape(t, p), "eventruntime_transport_heartbeat_age_seconds")
	}, 30*time.Second, 200*time.Millisecond)
}

func TestSeveralServicesShareTheWork(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{extraServices: 2})

	generator := demo.NewGenerator(71, testTenants)
	events := make([]*outbox.Event, 600)
	for i := range events {
		events[i] = generator.Event()
	}
	appendEvents(t, p, events, func(int) int { return 3 })
	waitSettled(t, p, events)

	requireEachAcceptedOnce(t, p, events)
	require.Equal(t, len(events), count(t, p, "SELECT count(*) FROM consumer_idempotency WHERE consumer = 'regulator'"))
	require.Zero(t, count(t, p, `SELECT count(*) FROM (SELECT batch_id FROM submission_attempts
		GROUP BY batch_id HAVING count(*) > 1) twice`), "no batch is posted twice")
}
