package chaos_test

import (
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/regulator/ofbfake"
)

// The regulator responds to every report POST with 429 and Retry-After: 1 for
// durations.Throttle while producers keep writing, then responds normally.
// Every event must be accepted exactly once afterwards.
func TestRegulatorThrottles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.startService(serviceOptions{})
	e.startStandIn()

	var throttled atomic.Int64
	var throttling atomic.Bool
	throttling.Store(true)
	e.fake.SetResponder(func(r *http.Request, reports []json.RawMessage) *ofbfake.Fault {
		if r.Method != http.MethodPost || !throttling.Load() {
			return nil
		}
		throttled.Add(1)
		return &ofbfake.Fault{Status: http.StatusTooManyRequests, RetryAfter: "1"}
	})

	producer := e.startLoad(101, durations.LoadRate)
	time.Sleep(durations.Throttle)
	throttling.Store(false)
	faultEnded := time.Now()
	time.Sleep(durations.Load)
	producer.stop()

	result := e.settle(faultEnded, producer.committedIDs())
	attempts429 := e.count("SELECT count(*) FROM submission_attempts WHERE http_status = 429")
	e.verdict("regulator-429", result, formatDetails("throttled_requests", throttled.Load(), "attempts_429", attempts429))
	require.Positive(t, attempts429, "the 429 answers are recorded as attempts")
}
