package worker_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/jobs"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator/ofbfake"
)

// appendInteractions appends n interaction events for the first test tenant
// in one transaction and returns them.
func appendInteractions(t *testing.T, p *pipeline, n int, seed uint64) []*outbox.Event {
	t.Helper()
	generator := demo.NewGenerator(seed, testTenants[:1])
	events := make([]*outbox.Event, n)
	for i := range events {
		events[i] = generator.Event()
	}
	appendEvents(t, p, events, func(int) int { return n })
	return events
}

// demoEvent returns one interaction event of the first test tenant.
func demoEvent(seed uint64) *outbox.Event {
	return demo.NewGenerator(seed, testTenants[:1]).Event()
}

// waitSettled waits until every item of events has a final state.
func waitSettled(t *testing.T, p *pipeline, events []*outbox.Event) {
	t.Helper()
	require.Eventually(t, func() bool {
		return count(t, p, `SELECT count(*) FROM report_items
			WHERE state IN ('accepted', 'discarded', 'quarantined', 'rejected')`) == len(events) &&
			count(t, p, `SELECT count(*) FROM export_batches WHERE finished_at IS NULL`) == 0
	}, 90*time.Second, 100*time.Millisecond, "items settled: %d of %d", count(t, p,
		`SELECT count(*) FROM report_items WHERE state IN ('accepted', 'discarded', 'quarantined', 'rejected')`), len(events))
}

// requireEachAcceptedOnce checks that the regulator saw every event's
// interaction exactly once and that each item has exactly one receipt.
func requireEachAcceptedOnce(t *testing.T, p *pipeline, events []*outbox.Event) {
	t.Helper()
	for _, event := range events {
		id := interactionID(t, event)
		require.Equal(t, 1, p.fake.Seen(id), "regulator saw interaction %s", id)
	}
	require.Equal(t, len(events), count(t, p, "SELECT count(*) FROM report_items WHERE state = 'accepted'"))
	require.Equal(t, len(events), count(t, p, "SELECT count(DISTINCT report_item_id) FROM submission_receipts"))
	require.Equal(t, len(events), count(t, p, "SELECT count(*) FROM submission_receipts WHERE status = 'ACCEPTED'"))
	require.Equal(t, len(events), count(t, p, "SELECT count(*) FROM payload_evidence WHERE kind = 'item'"))
	require.Empty(t, p.fake.Violations())
}

func TestSubmitResponseCodes(t *testing.T) {
	t.Parallel()

	t.Run("TooManyRequestsRetriesAfterRetryAfter", func(t *testing.T) {
		t.Parallel()
		p := setupPipeline(t, pipelineOpts{})
		p.fake.QueueFaults(ofbfake.Fault{Status: 429, RetryAfter: "1"})
		events := appendInteractions(t, p, 20, 1)
		waitSettled(t, p, events)

		requireEachAcceptedOnce(t, p, events)
		require.Equal(t, 1, count(t, p, "SELECT count(*) FROM submission_attempts WHERE http_status = 429"))
		require.Equal(t, 1, count(t, p, "SELECT count(*) FROM export_batches WHERE state = 'accepted'"))
	})

	t.Run("ServerErrorReadsBackThenResends", func(t *testing.T) {
		t.Parallel()
		p := setupPipeline(t, pipelineOpts{})
		p.fake.QueueFaults(ofbfake.Fault{Status: 500})
		events := appendInteractions(t, p, 20, 2)
		waitSettled(t, p, events)

		requireEachAcceptedOnce(t, p, events)
		require.Equal(t, 1, count(t, p, "SELECT count(*) FROM submission_attempts WHERE http_status = 500"))
		require.Zero(t, count(t, p, "SELECT count(*) FROM submission_receipts WHERE source = 'read_back'"))
	})

	t.Run("LostResponseIsReadBackNotResent", func(t *testing.T) {
		t.Parallel()
		p := setupPipeline(t, pipelineOpts{})
		p.fake.QueueFaults(ofbfake.Fault{LoseResponse: true})
		events := appendInteractions(t, p, 20, 3)
		waitSettled(t, p, events)

		requireEachAcceptedOnce(t, p, events)
		require.Equal(t, len(events), count(t, p, "SELECT count(*) FROM submission_receipts WHERE source = 'read_back'"))
	})

	t.Run("TimeoutReadsBackThenResends", func(t *testing.T) {
		t.Parallel()
		p := setupPipeline(t, pipelineOpts{regulatorTimeout: 500 * time.Millisecond})
		// The fake responds after the client has given up, and drops the
		// request when the client goes away.
		p.fake.QueueFaults(ofbfake.Fault{Delay: time.Second})
		events := appendInteractions(t, p, 20, 4)
		waitSettled(t, p, events)

		requireEachAcceptedOnce(t, p, events)
		require.Equal(t, 1, count(t, p,
			"SELECT count(*) FROM submission_attempts WHERE outcome = 'failed' AND http_status IS NULL AND error <> ''"))
	})

	t.Run("PayloadTooLargeSplitsTheBatch", func(t *testing.T) {
		t.Parallel()
		p := setupPipeline(t, pipelineOpts{})
		p.fake.QueueFaults(ofbfake.Fault{Status: 413})
		events := appendInteractions(t, p, 20, 5)
		waitSettled(t, p, events)

		requireEachAcceptedOnce(t, p, events)
		require.Equal(t, 1, count(t, p, "SELECT count(*) FROM export_batches WHERE state = 'split'"))
		require.Equal(t, 2, count(t, p,
			"SELECT count(*) FROM export_batches WHERE state = 'accepted' AND parent_batch_id IS NOT NULL AND item_count = 10"))
	})

	t.Run("UnauthorizedRefreshesTheTokenOnce", func(t *testing.T) {
		t.Parallel()
		p := setupPipeline(t, pipelineOpts{})
		events := appendInteractions(t, p, 10, 6)
		waitSettled(t, p, events)
		p.fake.RevokeTokens()
		more := appendInteractions(t, p, 10, 7)
		waitSettled(t, p, append(events, more...))

		requireEachAcceptedOnce(t, p, append(events, more...))
		require.Equal(t, 1, p.fake.FreshTokenRequests())
	})

	for _, status := range []int{400, 403, 415} {
		t.Run(fmt.Sprintf("Status%dRejectsTheBatch", status), func(t *testing.T) {
			t.Parallel()
			p := setupPipeline(t, pipelineOpts{})
			p.fake.QueueFaults(ofbfake.Fault{Status: status})
			events := appendInteractions(t, p, 5, uint64(status))
			waitSettled(t, p, events)

			require.Equal(t, 1, count(t, p, "SELECT count(*) FROM export_batches WHERE state = 'rejected'"))
			require.Equal(t, 5, count(t, p, "SELECT count(*) FROM report_items WHERE state = 'rejected' AND state_reason <> ''"))
			require.Equal(t, 1, count(t, p, "SELECT count(*) FROM submission_attempts"), "a rejected batch is not retried")
			require.Zero(t, count(t, p, "SELECT count(*) FROM submission_receipts"))
			require.Zero(t, count(t, p, "SELECT count(*) FROM payload_evidence"), "an error never creates evidence")
		})
	}
}

var errCrash = errors.New("worker stopped by the test")

// crashOnce stops each batch's submit job the first time it reaches stage.
func crashOnce(stage jobs.SubmitStage) func(jobs.SubmitStage, int64) error {
	var mu sync.Mutex
	crashed := map[int64]bool{}
	return func(at jobs.SubmitStage, batchID int64) error {
		mu.Lock()
		defer mu.Unlock()
		if at != stage || crashed[batchID] {
			return nil
		}
		crashed[batchID] = true
		return errCrash
	}
}

func TestSubmitSurvivesStopAtEachStep(t *testing.T) {
	t.Parallel()

	for _, stage := range []jobs.SubmitStage{jobs.StageAfterMarker, jobs.StageAfterResponse, jobs.StageBeforeReceiptCommit} {
		t.Run(string(stage), func(t *testing.T) {
			t.Parallel()
			p := setupPipeline(t, pipelineOpts{crash: crashOnce(stage)})
			events := appendInteractions(t, p, 30, 11)
			waitSettled(t, p, events)

			requireEachAcceptedOnce(t, p, events)
			require.Zero(t, count(t, p, "SELECT count(*) FROM export_batches WHERE state <> 'accepted'"))
		})
	}

	t.Run("AfterRequestLeft", func(t *testing.T) {
		t.Parallel()
		p := setupPipeline(t, pipelineOpts{})
		// The request reaches the regulator and the connection drops before
		// the response arrives.
		p.fake.QueueFaults(ofbfake.Fault{LoseResponse: true})
		events := appendInteractions(t, p, 30, 12)
		waitSettled(t, p, events)

		requireEachAcceptedOnce(t, p, events)
	})
}
