package chaos_test

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/testbin"
	"github.com/finnest/eventruntime/regulator/ofbfake"
)

// startServe runs `eventruntime serve` against the scenario's servers. The
// process is killed when the test ends if it is still running.
func (e *env) startServe(output *lockedBuffer) *exec.Cmd {
	t := e.t
	caFile := filepath.Join(t.TempDir(), "regulator-ca.pem")
	require.NoError(t, os.WriteFile(caFile, e.fake.CACertPEM(), 0o600))
	cmd := exec.Command(testbin.Path(t), "serve")
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+e.dbURL,
		"NATS_URL="+e.natsURL(),
		"HTTP_ADDR=127.0.0.1:0",
		"OFB_REPORT_URL="+e.fake.URL(),
		"OFB_TOKEN_URL="+e.fake.URL(),
		"REGULATOR_CA_FILE="+caFile,
		"NATS_STREAM=OUTBOX",
		"NATS_STREAM_SUBJECT=sequin."+e.dbName+".public.outbox.*",
		"REPLICATION_SLOT="+e.slot,
		"FLUSH_EVERY=200ms",
		"JOB_TIMEOUT="+durations.JobTimeout.String(),
		"RESCUE_STUCK_JOBS_AFTER="+durations.RescueAfter.String(),
		"READ_BACK_DELAY="+durations.ReadBackDelay.String(),
		"SHUTDOWN_TIMEOUT=10s",
		"LOG_LEVEL=info",
	)
	cmd.Stdout = output
	cmd.Stderr = output
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

// kill sends SIGKILL and waits for the process to exit.
func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
}

// The process is killed with SIGKILL while report POSTs are in flight. The
// fake regulator holds each POST until the kill. It then stores the items
// of every other held request, as when the response is lost, and drops the
// rest, as when the request never arrived. A new process must rescue the
// submit jobs the dead one left running, read the held batches back, resend
// only what the regulator lacks, and leave no batch unfinished.
func TestWorkerKilledMidPost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.startStandIn()

	killed := make(chan struct{})
	entered := make(chan struct{}, 64)
	var mu sync.Mutex
	heldPosts := 0
	e.fake.SetResponder(func(r *http.Request, reports []json.RawMessage) *ofbfake.Fault {
		if r.Method != http.MethodPost {
			return nil
		}
		select {
		case <-killed:
			return nil
		default:
		}
		mu.Lock()
		heldPosts++
		keep := heldPosts%2 == 1
		mu.Unlock()
		entered <- struct{}{}
		<-killed
		if keep {
			return nil
		}
		return &ofbfake.Fault{Status: http.StatusServiceUnavailable}
	})

	var firstOutput, secondOutput lockedBuffer
	first := e.startServe(&firstOutput)
	e.waitForStream()
	producer := e.startLoad(401, durations.LoadRate)
	select {
	case <-entered:
	case <-time.After(60 * time.Second):
		t.Fatalf("no report POST reached the regulator within 60s:\n%s", firstOutput.String())
	}
	// Let more submit jobs reach the regulator while producers keep writing.
	time.Sleep(500 * time.Millisecond)
	kill(t, first)
	close(killed)
	running := e.count("SELECT count(*) FROM river_job WHERE kind = 'submit' AND state = 'running'")
	posting := e.count("SELECT count(*) FROM export_batches WHERE state = 'posting'")

	e.startServe(&secondOutput)
	faultEnded := time.Now()
	time.Sleep(durations.Load)
	producer.stop()

	result := e.settle(faultEnded, producer.committedIDs())
	mu.Lock()
	heldRequests := heldPosts
	mu.Unlock()
	readBack := e.count("SELECT count(*) FROM submission_receipts WHERE source = 'read_back'")
	e.verdict("sigkill-mid-post", result, formatDetails("held_posts", heldRequests,
		"submit_jobs_left_running", running, "batches_left_posting", posting, "read_back_receipts", readBack))
	require.Positive(t, running, "the kill left submit jobs running")
	require.Positive(t, readBack, "items the regulator stored before the kill are read back, not resent")
}

// The process is killed with SIGKILL right after the flush job sealed the
// first batch of a burst spread over six tenants, so the flush job is left
// running with other tenants' items unsealed. A new process must seal the
// rest without waiting for River to rescue the dead process's flush job
// (the periodic flush is unique per period, not while one is running), and
// submit every batch once.
func TestWorkerKilledMidFlush(t *testing.T) {
	t.Parallel()
	// Scheduled tenants, so the periodic flush job seals every batch and
	// the kill leaves it running. Near-real-time items are sealed by the
	// process that mapped them, and the mid-POST scenario kills such a
	// process.
	e := newEnv(t, envOptions{tenants: 6, flushInterval: 2 * time.Second, scheduled: true})
	e.startStandIn()

	var firstOutput, secondOutput lockedBuffer
	sealed := make(chan struct{}, 1)
	firstOutput.watch(func(line string) {
		if strings.Contains(line, `"event":"flush.batch_sealed"`) {
			select {
			case sealed <- struct{}{}:
			default:
			}
		}
	})
	first := e.startServe(&firstOutput)
	e.waitForStream()

	// One burst per tenant, all appended before the flush interval ends.
	events := e.interactionEvents(e.loadGenerator(501), durations.FlushBurstPerTenant*len(e.tenants))
	for start := 0; start < len(events); start += 500 {
		require.NoError(t, e.appendEvents(events[start:min(start+500, len(events))]...))
	}
	select {
	case <-sealed:
	case <-time.After(60 * time.Second):
		t.Fatalf("no batch sealed within 60s:\n%s", firstOutput.String())
	}
	kill(t, first)
	flushRunning := e.count("SELECT count(*) FROM river_job WHERE kind = 'flush' AND state = 'running'")
	batchesAtKill := e.count("SELECT count(*) FROM export_batches")

	producer := e.startLoad(502, durations.LoadRate)
	e.startServe(&secondOutput)
	faultEnded := time.Now()
	time.Sleep(durations.Load)
	producer.stop()
	if os.Getenv("CHAOS_DEBUG") != "" {
		e.logTransportState()
	}

	result := e.settle(faultEnded, append(producer.committedIDs(), idsOf(events)...))
	e.verdict("sigkill-mid-flush", result, formatDetails("burst", len(events),
		"batches_at_kill", batchesAtKill, "flush_jobs_left_running", flushRunning))
	// The seal is logged just before its transaction commits, so the kill
	// may land before the first batch committed.
	require.GreaterOrEqual(t, flushRunning, 1, "the kill left a flush job running")
	require.Less(t, batchesAtKill, len(e.tenants), "the kill landed before every tenant's batch was sealed")
}
