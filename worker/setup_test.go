package worker_test

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/internal/natsembed"
	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/internal/telemetry"
	"github.com/finnest/eventruntime/internal/testbin"
	"github.com/finnest/eventruntime/jobs"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/regulator/ofb"
	"github.com/finnest/eventruntime/regulator/ofbfake"
	"github.com/finnest/eventruntime/sequin"
	"github.com/finnest/eventruntime/tenant"
	"github.com/finnest/eventruntime/worker"
)

// testTelemetry holds the OpenTelemetry providers every pipeline of this
// package reports to, so tests can read metrics and spans.
var (
	testTelemetry *telemetry.Telemetry
	testSpans     = tracetest.NewInMemoryExporter()
)

func TestMain(m *testing.M) {
	var err error
	testTelemetry, err = telemetry.SetupWith(context.Background(), "eventruntime-test",
		telemetry.Options{SpanExporter: testSpans})
	if err != nil {
		panic(err)
	}
	code := pgtest.Main(m)
	testbin.Remove()
	os.Exit(code)
}

// scrape returns the service's /metrics text.
func scrape(t *testing.T, p *pipeline) string {
	t.Helper()
	response, err := http.Get("http://" + p.service.Addr() + "/metrics")
	require.NoError(t, err)
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	require.NoError(t, err)
	return string(body)
}

var testTenants = []demo.Tenant{
	{ID: "tenant-a", OrganisationID: "0b5a8d4e-6c3f-4f7e-9a51-2d1c7e3b8a10", SoftwareStatementID: "5f0c2b7e-1d4a-4c8b-9e2f-7a6d3c1b0e91"},
	{ID: "tenant-b", OrganisationID: "7d2e9c41-3b8f-4a06-b5d7-e1f0a2c39b84", SoftwareStatementID: "c3a1e7d9-8b2f-4f60-a4c5-1e9d7b3f2a06"},
}

// pipeline is a whole running pipeline on a private database and NATS
// server, with the strict fake regulator.
type pipeline struct {
	// startStandIn starts the Sequin stand-in and waits until it streams;
	// stopStandIn stops it. Both are nil with skipStandIn.
	startStandIn func()
	stopStandIn  func()

	db      *pgtest.Database
	fake    *ofbfake.Server
	nats    *natsembed.Server
	service *worker.Service
	subject string
}

type pipelineOpts struct {
	// extraServices runs this many more services against the same
	// database and NATS server, as several serve processes would.
	extraServices int

	// heartbeatEvery sets the heartbeat period. Zero means an hour, so
	// heartbeats stay out of tests that count outbox rows.
	heartbeatEvery time.Duration

	// skipService leaves the in-process service out, for tests that run
	// the eventruntime binary instead.
	skipService bool

	// redriveAfter and redriveEvery set the re-drive job's timing. Zero
	// means long enough that re-drive never runs in a test.
	redriveAfter time.Duration
	redriveEvery time.Duration

	// slotLagLimit and slotStallLimit set the readiness limits of the
	// replication slot. Zero means the service defaults.
	slotLagLimit   int64
	slotStallLimit time.Duration

	// drop makes the Sequin stand-in lose the events it returns true for,
	// as a transport failure would.
	drop func(outbox.Event) bool

	// flushEvery sets the periodic flush's period. Zero means 200 ms.
	flushEvery time.Duration

	// now is the flush policy's clock. Nil means time.Now.
	now func() time.Time

	// crash is the submit job's fault-injection hook.
	crash func(stage jobs.SubmitStage, batchID int64) error

	// regulatorTimeout bounds each regulator request. Zero means the
	// adapter's default.
	regulatorTimeout time.Duration

	// skipStandIn leaves the Sequin stand-in out, for tests that publish
	// messages themselves.
	skipStandIn bool
}

func setupPipeline(t *testing.T, opts pipelineOpts) *pipeline {
	t.Helper()
	ctx := context.Background()
	p := &pipeline{db: pgtest.NewDatabase(t)}

	var err error
	p.nats, err = natsembed.Start(natsembed.Config{})
	require.NoError(t, err)
	t.Cleanup(p.nats.Shutdown)

	p.fake, err = ofbfake.New(ofbfake.Config{})
	require.NoError(t, err)
	require.NoError(t, p.fake.Start())
	t.Cleanup(func() { _ = p.fake.Close() })

	certDir := t.TempDir()
	for _, tt := range testTenants {
		_, certPEM, keyPEM, err := p.fake.IssueClientCertificate(tt.OrganisationID)
		require.NoError(t, err)
		certFile := filepath.Join(certDir, tt.ID+".crt")
		keyFile := filepath.Join(certDir, tt.ID+".key")
		require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
		require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
		require.NoError(t, tenant.Upsert(ctx, p.db.Pool, &tenant.Config{
			TenantID: tt.ID, Ecosystem: outbox.EcosystemOFB, Enabled: true, Environment: "test",
			OrganisationID: tt.OrganisationID, ClientID: tt.SoftwareStatementID,
			Credentials:   map[string]string{"certificate": "file:" + certFile, "private_key": "file:" + keyFile},
			FlushInterval: 200 * time.Millisecond,
		}))
	}

	adapter, err := ofb.NewAdapter(ofb.AdapterConfig{
		BaseURL: p.fake.URL(), TokenURL: p.fake.URL(), RootCAs: p.fake.RootCAs(), Timeout: opts.regulatorTimeout,
	})
	require.NoError(t, err)
	p.subject = sequin.Subject(p.db.Name, "public", "outbox", "insert")
	serviceConfig := worker.Config{
		DatabaseURL:     p.db.URL,
		Decoder:         worker.DecodeSequin,
		FlushEvery:      cmp.Or(opts.flushEvery, 200*time.Millisecond),
		HTTPAddr:        "127.0.0.1:0",
		Logger:          slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		NATSURL:         p.nats.ClientURL(),
		ObserveEvery:    500 * time.Millisecond,
		ReplicationSlot: "standin_" + p.db.Name,
		ReadBackDelay:   200 * time.Millisecond,
		SubmitCrash:     opts.crash,
		Now:             opts.now,
		MetricsHandler:  testTelemetry.MetricsHandler,
		HeartbeatEvery:  cmp.Or(opts.heartbeatEvery, time.Hour),
		RedriveAfter:    cmp.Or(opts.redriveAfter, time.Hour),
		RedriveEvery:    cmp.Or(opts.redriveEvery, time.Hour),
		SlotLagLimit:    opts.slotLagLimit,
		SlotStallLimit:  opts.slotStallLimit,
		Adapters:        map[string]regulator.Adapter{outbox.EcosystemOFB: adapter},
		Stream:          worker.StreamConfig{Name: "OUTBOX", Subjects: []string{"sequin." + p.db.Name + ".public.outbox.*"}},
	}
	p.service, err = worker.New(ctx, serviceConfig)
	require.NoError(t, err)

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	for range opts.extraServices {
		extra, err := worker.New(ctx, serviceConfig)
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = extra.Run(runCtx)
		}()
	}
	if opts.skipService {
		// The service created the stream and consumers; the test runs the
		// binary against them.
		t.Cleanup(p.service.Close)
	} else {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = p.service.Run(runCtx)
		}()
	}

	if !opts.skipStandIn {
		conn, err := nats.Connect(p.nats.ClientURL())
		require.NoError(t, err)
		t.Cleanup(conn.Close)
		// Replication slots belong to the whole cluster, so each test needs
		// its own.
		var standInCancel context.CancelFunc
		var standInDone chan struct{}
		p.startStandIn = func() {
			standIn, err := sequin.NewStandIn(sequin.StandInConfig{
				DatabaseURL: p.db.URL, Drop: opts.drop, NATS: conn, Slot: "standin_" + p.db.Name,
			})
			require.NoError(t, err)
			var standInCtx context.Context
			standInCtx, standInCancel = context.WithCancel(runCtx)
			standInDone = make(chan struct{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(standInDone)
				_ = standIn.Run(standInCtx)
			}()
			// Rows committed before the slot exists are never streamed.
			select {
			case <-standIn.Ready():
			case <-time.After(30 * time.Second):
				t.Fatal("Sequin stand-in not ready after 30s")
			}
		}
		p.stopStandIn = func() {
			standInCancel()
			<-standInDone
		}
		p.startStandIn()
	}
	return p
}

// appendEvents appends events in transactions of the given sizes.
func appendEvents(t *testing.T, p *pipeline, events []*outbox.Event, sizes func(i int) int) {
	t.Helper()
	ctx := context.Background()
	for i, tx := 0, 0; i < len(events); tx++ {
		n := min(sizes(tx), len(events)-i)
		chunk := events[i : i+n]
		require.NoError(t, pgx.BeginFunc(ctx, p.db.Pool, func(tx pgx.Tx) error {
			return outbox.Append(ctx, tx, chunk...)
		}))
		i += n
	}
}

// count runs a count query on the pipeline's database.
func count(t *testing.T, p *pipeline, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, p.db.Pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}
