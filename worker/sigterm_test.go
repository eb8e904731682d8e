package worker_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/internal/testbin"
	"github.com/finnest/eventruntime/outbox"
)

// startServe runs `eventruntime serve` against the pipeline's servers.
func startServe(t *testing.T, p *pipeline, output *bytes.Buffer) *exec.Cmd {
	t.Helper()
	caFile := filepath.Join(t.TempDir(), "regulator-ca.pem")
	require.NoError(t, os.WriteFile(caFile, p.fake.CACertPEM(), 0o600))
	cmd := exec.Command(testbin.Path(t), "serve")
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+p.db.URL,
		"NATS_URL="+p.nats.ClientURL(),
		"HTTP_ADDR=127.0.0.1:0",
		"OFB_REPORT_URL="+p.fake.URL(),
		"OFB_TOKEN_URL="+p.fake.URL(),
		"REGULATOR_CA_FILE="+caFile,
		"NATS_STREAM=OUTBOX",
		"NATS_STREAM_SUBJECT=sequin."+p.db.Name+".public.outbox.*",
		"REPLICATION_SLOT=standin_"+p.db.Name,
		"FLUSH_EVERY=200ms",
		"SHUTDOWN_TIMEOUT=20s",
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

func TestServeDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{skipService: true})

	var firstOutput, secondOutput bytes.Buffer
	first := startServe(t, p, &firstOutput)

	// Producers keep writing while the first process is stopped.
	generator := demo.NewGenerator(51, testTenants)
	var events []*outbox.Event
	produce := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			batch := make([]*outbox.Event, 10)
			for i := range batch {
				batch[i] = generator.Event()
			}
			appendEvents(t, p, batch, func(int) int { return 10 })
			events = append(events, batch...)
			time.Sleep(20 * time.Millisecond)
		}
	}
	produce(3 * time.Second)
	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM submission_receipts") > 0
	}, 30*time.Second, 100*time.Millisecond, "the first process must be working before it is stopped")

	require.NoError(t, first.Process.Signal(syscall.SIGTERM))
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	produce(time.Second)
	select {
	case err := <-exited:
		require.NoError(t, err, "serve must exit cleanly on SIGTERM:\n%s", firstOutput.String())
	case <-time.After(40 * time.Second):
		t.Fatalf("serve did not exit within 40s of SIGTERM:\n%s", firstOutput.String())
	}
	require.Contains(t, firstOutput.String(), `"event":"service.stopped"`)
	require.Zero(t, count(t, p, "SELECT count(*) FROM river_job WHERE state = 'running'"),
		"no job may be left running by a clean stop")

	startServe(t, p, &secondOutput)
	produce(time.Second)
	waitSettled(t, p, events)
	requireEachAcceptedOnce(t, p, events)
	require.Equal(t, len(events), count(t, p, "SELECT count(*) FROM consumer_idempotency WHERE consumer = 'regulator'"))
}
