package chaos_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/internal/natsembed"
	"github.com/finnest/eventruntime/internal/pgcluster"
	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/internal/testbin"
	"github.com/finnest/eventruntime/migrations"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	"github.com/finnest/eventruntime/regulator/ofb"
	"github.com/finnest/eventruntime/regulator/ofbfake"
	"github.com/finnest/eventruntime/sequin"
	"github.com/finnest/eventruntime/tenant"
	"github.com/finnest/eventruntime/webhook"
	"github.com/finnest/eventruntime/worker"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	testbin.Remove()
	os.Exit(code)
}

// scenarioDurations sets how long faults and load last. The build tag chaos
// selects the long set, and its absence the short one.
type scenarioDurations struct {
	// Mode is "short" or "long", printed in each verdict.
	Mode string

	// Load is how long producers write before and after a fault.
	Load time.Duration

	// LoadRate is the producers' rate in events per second.
	LoadRate int

	// Outage is how long PostgreSQL or NATS stays down.
	Outage time.Duration

	// Stall is how long the Sequin stand-in or a customer endpoint stalls.
	Stall time.Duration

	// Throttle is how long the regulator responds with 429.
	Throttle time.Duration

	// SettleTimeout bounds the wait for every event to reach a final state
	// after the fault ends.
	SettleTimeout time.Duration

	// JobTimeout, RescueAfter and ReadBackDelay are the service's River job
	// timeout, stuck-job rescue window and read-back delay.
	JobTimeout    time.Duration
	RescueAfter   time.Duration
	ReadBackDelay time.Duration

	// WebhookTimeout bounds each request to a customer endpoint.
	WebhookTimeout time.Duration

	// FlushBurstPerTenant is how many events each tenant gets in the burst that
	// the flush scenario seals.
	FlushBurstPerTenant int
}

// envOptions configures a scenario's environment.
type envOptions struct {
	// ownCluster starts a private PostgreSQL cluster for the scenario, with
	// clusterSettings added to postgresql.conf, instead of a database on
	// the test binary's shared cluster.
	ownCluster      bool
	clusterSettings map[string]string

	// tenants is the number of OFB tenants. Zero means 2.
	tenants int

	// flushInterval is each tenant's near-real-time flush interval, or with
	// scheduled its schedule cadence. Zero means 200 milliseconds.
	flushInterval time.Duration

	// scheduled puts the tenants in scheduled mode with a window that is
	// always open, so only the periodic flush job seals their items.
	scheduled bool
}

// env is one scenario's servers: PostgreSQL, embedded NATS with a fixed
// port and store, the fake regulator and the tenants it issued certificates to.
type env struct {
	t        *testing.T
	cluster  *pgcluster.Cluster
	dbName   string
	dbURL    string
	pool     *pgxpool.Pool
	fake     *ofbfake.Server
	certDir  string
	tenants  []demo.Tenant
	natsMu   sync.Mutex
	nats     *natsembed.Server
	natsCfg  natsembed.Config
	slot     string
	subject  string
	logLevel slog.Level
}

func newEnv(t *testing.T, opts envOptions) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, logLevel: slog.LevelError}
	_ = e.logLevel.UnmarshalText([]byte(os.Getenv("CHAOS_LOG_LEVEL")))

	if opts.ownCluster {
		e.startCluster(opts.clusterSettings)
	} else {
		db := pgtest.NewDatabase(t)
		e.dbName, e.dbURL, e.pool = db.Name, db.URL, db.Pool
	}
	e.slot = "chaos_" + e.dbName
	e.subject = sequin.Subject(e.dbName, "public", "outbox", "insert")

	// A fixed port and store let a scenario restart NATS where it was.
	e.natsCfg = natsembed.Config{Port: freePort(t), StoreDir: t.TempDir()}
	var err error
	e.nats, err = natsembed.Start(e.natsCfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		e.natsMu.Lock()
		defer e.natsMu.Unlock()
		if e.nats != nil {
			e.nats.Shutdown()
		}
	})

	e.fake, err = ofbfake.New(ofbfake.Config{})
	require.NoError(t, err)
	require.NoError(t, e.fake.Start())
	t.Cleanup(func() { _ = e.fake.Close() })

	e.certDir = t.TempDir()
	for i := range cmp.Or(opts.tenants, 2) {
		tt := demo.Tenant{
			ID:                  fmt.Sprintf("tenant-%c", 'a'+i),
			OrganisationID:      uuid.NewString(),
			SoftwareStatementID: uuid.NewString(),
		}
		e.tenants = append(e.tenants, tt)
		_, certPEM, keyPEM, err := e.fake.IssueClientCertificate(tt.OrganisationID)
		require.NoError(t, err)
		certFile := filepath.Join(e.certDir, tt.ID+".crt")
		keyFile := filepath.Join(e.certDir, tt.ID+".key")
		require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
		require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
		config := &tenant.Config{
			TenantID: tt.ID, Ecosystem: outbox.EcosystemOFB, Enabled: true, Environment: "test",
			OrganisationID: tt.OrganisationID, ClientID: tt.SoftwareStatementID,
			Credentials:   map[string]string{"certificate": "file:" + certFile, "private_key": "file:" + keyFile},
			FlushInterval: cmp.Or(opts.flushInterval, 200*time.Millisecond),
		}
		if opts.scheduled {
			config.SubmissionMode = tenant.ModeScheduled
			config.ScheduleCadence = config.FlushInterval
		}
		require.NoError(t, tenant.Upsert(ctx, e.pool, config))
	}
	return e
}

// startCluster starts a private PostgreSQL cluster and migrates a database
// on it. Its data directory survives Kill, so Restart recovers from WAL.
func (e *env) startCluster(settings map[string]string) {
	t := e.t
	ctx := context.Background()
	parent, err := os.MkdirTemp("", "eventruntime-chaos-pg-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(parent) })
	// The unprivileged postgres user must be able to enter the folder.
	require.NoError(t, os.Chmod(parent, 0o711))

	e.cluster, err = pgcluster.Start(ctx, pgcluster.Config{DataDir: filepath.Join(parent, "data"), Settings: settings})
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.cluster.Stop() })

	admin, err := pgx.Connect(ctx, e.cluster.URL("postgres"))
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "CREATE DATABASE chaos")
	require.NoError(t, err)
	require.NoError(t, admin.Close(ctx))

	e.dbName, e.dbURL = "chaos", e.cluster.URL("chaos")
	e.pool, err = pgxpool.New(ctx, e.dbURL)
	require.NoError(t, err)
	t.Cleanup(e.pool.Close)
	require.NoError(t, migrations.Up(ctx, e.pool, slog.New(slog.DiscardHandler)))
}

func (e *env) natsURL() string {
	return fmt.Sprintf("nats://127.0.0.1:%d", e.natsCfg.Port)
}

// stopNATS shuts NATS down cleanly, and startNATS starts it again on the same
// port and store.
func (e *env) stopNATS() {
	e.natsMu.Lock()
	defer e.natsMu.Unlock()
	e.nats.Shutdown()
	e.nats = nil
}

func (e *env) startNATS() {
	e.natsMu.Lock()
	defer e.natsMu.Unlock()
	var err error
	e.nats, err = natsembed.Start(e.natsCfg)
	require.NoError(e.t, err)
}

func (e *env) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(e.t.Output(), &slog.HandlerOptions{Level: e.logLevel}))
}

// serviceOptions configures an in-process service.
type serviceOptions struct {
	redriveAfter   time.Duration
	redriveEvery   time.Duration
	slotLagLimit   int64
	slotStallLimit time.Duration
	extensions     []worker.Extension
}

// startService runs the service in this process until the test ends.
func (e *env) startService(opts serviceOptions) *worker.Service {
	t := e.t
	ctx := context.Background()
	adapter, err := ofb.NewAdapter(ofb.AdapterConfig{BaseURL: e.fake.URL(), TokenURL: e.fake.URL(), RootCAs: e.fake.RootCAs()})
	require.NoError(t, err)
	service, err := worker.New(ctx, worker.Config{
		Adapters:             map[string]regulator.Adapter{outbox.EcosystemOFB: adapter},
		DatabaseURL:          e.dbURL,
		Decoder:              worker.DecodeSequin,
		Extensions:           opts.extensions,
		FlushEvery:           200 * time.Millisecond,
		HTTPAddr:             "127.0.0.1:0",
		JobTimeout:           durations.JobTimeout,
		Logger:               e.logger(),
		NATSURL:              e.natsURL(),
		ObserveEvery:         500 * time.Millisecond,
		ReadBackDelay:        durations.ReadBackDelay,
		RedriveAfter:         cmp.Or(opts.redriveAfter, time.Hour),
		RedriveEvery:         cmp.Or(opts.redriveEvery, time.Hour),
		ReplicationSlot:      e.slot,
		RescueStuckJobsAfter: durations.RescueAfter,
		ShutdownTimeout:      10 * time.Second,
		SlotLagLimit:         opts.slotLagLimit,
		SlotStallLimit:       opts.slotStallLimit,
		Stream:               worker.StreamConfig{Name: "OUTBOX", Subjects: []string{"sequin." + e.dbName + ".public.outbox.*"}},
	})
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = service.Run(runCtx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return service
}

// webhookExtension returns the webhook extension, allowed to reach
// 127.0.0.1 only, and the store of its subscriptions.
func (e *env) webhookExtension(cfg webhook.Config) (worker.Extension, *webhook.Store) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	box, err := webhook.NewSecretBox(key)
	require.NoError(e.t, err)
	cfg.Pool = e.pool
	cfg.Secrets = box
	cfg.Logger = e.logger()
	cfg.AllowedPrefixes = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	extension, err := webhook.Extension(cfg)
	require.NoError(e.t, err)
	return extension, &webhook.Store{Pool: e.pool, Secrets: box, AllowedPrefixes: cfg.AllowedPrefixes}
}

// standIn is a running Sequin stand-in on the scenario's slot.
type standIn struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startStandIn starts the Sequin stand-in and waits until it streams. Its
// NATS connection reconnects for ever, so it outlives a NATS restart.
func (e *env) startStandIn() *standIn {
	t := e.t
	conn, err := nats.Connect(e.natsURL(), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))
	require.NoError(t, err)
	s, err := sequin.NewStandIn(sequin.StandInConfig{
		DatabaseName: e.dbName, DatabaseURL: e.dbURL, Logger: e.logger(), NATS: conn, Slot: e.slot,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	run := &standIn{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(run.done)
		defer conn.Close()
		_ = s.Run(ctx)
	}()
	t.Cleanup(run.stop)
	select {
	case <-s.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("Sequin stand-in not ready after 30s")
	}
	return run
}

func (s *standIn) stop() {
	s.cancel()
	<-s.done
}

// count runs a count query on the scenario's database.
func (e *env) count(query string, args ...any) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, e.pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

// tryCount is count for polling loops that run while the database may be
// down: it returns -1 on error.
func (e *env) tryCount(query string, args ...any) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n int
	if err := e.pool.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		return -1
	}
	return n
}

// appendEvents appends events in one transaction.
func (e *env) appendEvents(events ...*outbox.Event) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		return outbox.Append(ctx, tx, events...)
	})
}

// interactionEvents returns n interaction events spread over the tenants,
// with event ids set so a retried append can be checked for.
func (e *env) interactionEvents(generator *demo.Generator, n int) []*outbox.Event {
	events := make([]*outbox.Event, n)
	for i := range events {
		events[i] = generator.Event()
		events[i].ID = uuid.Must(uuid.NewV7())
	}
	return events
}

// loadGenerator returns a demo event generator over the scenario's tenants.
func (e *env) loadGenerator(seed uint64) *demo.Generator {
	return demo.NewGenerator(seed, e.tenants)
}

// idsOf returns the ids of events.
func idsOf(events []*outbox.Event) []uuid.UUID {
	ids := make([]uuid.UUID, len(events))
	for i, event := range events {
		ids[i] = event.ID
	}
	return ids
}

// logTransportState logs the slot's position and the stream's and the
// regulator consumer's counters, for diagnosing events that stop short of
// the consumer. CHAOS_DEBUG turns it on.
func (e *env) logTransportState() {
	conn, err := nats.Connect(e.natsURL())
	require.NoError(e.t, err)
	defer conn.Close()
	js, _ := jetstream.New(conn)
	stream, err := js.Stream(context.Background(), "OUTBOX")
	require.NoError(e.t, err)
	si, _ := stream.Info(context.Background())
	c, err := stream.Consumer(context.Background(), "regulator")
	require.NoError(e.t, err)
	info, _ := c.Info(context.Background())
	var active bool
	var confirmed, current, sent string
	var state string
	_ = e.pool.QueryRow(context.Background(), `SELECT s.active, s.confirmed_flush_lsn::text, pg_current_wal_lsn()::text,
		coalesce(r.sent_lsn::text, ''), coalesce(r.state, '') FROM pg_replication_slots s
		LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1`, e.slot).Scan(&active, &confirmed, &current, &sent, &state)
	e.t.Logf("slot active=%v confirmed=%s current=%s sent=%s state=%s", active, confirmed, current, sent, state)
	e.t.Logf("stream msgs=%d last=%d consumer delivered=%d ackfloor=%d pending=%d ackpending=%d waiting=%d redelivered=%d idem=%d outbox=%d",
		si.State.Msgs, si.State.LastSeq, info.Delivered.Stream, info.AckFloor.Stream, info.NumPending, info.NumAckPending,
		info.NumWaiting, info.NumRedelivered, e.count("SELECT count(*) FROM consumer_idempotency"), e.count("SELECT count(*) FROM outbox"))
}

// waitForStream waits until a service has created the stream. The stand-in
// publishes without acknowledgement, as Sequin does. Rows it publishes before
// the stream exists are lost in transport until re-drive, minutes later.
func (e *env) waitForStream() {
	conn, err := nats.Connect(e.natsURL())
	require.NoError(e.t, err)
	defer conn.Close()
	js, err := jetstream.New(conn)
	require.NoError(e.t, err)
	require.Eventually(e.t, func() bool {
		_, err := js.Stream(context.Background(), "OUTBOX")
		return err == nil
	}, 60*time.Second, 50*time.Millisecond, "no service created the stream within 60s")
}

func freePort(t *testing.T) int {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := listener.Addr().(*net.TCPAddr).Port
	require.NoError(t, listener.Close())
	return port
}

// lockedBuffer collects a subprocess's output lines and passes each line
// to its watchers.
type lockedBuffer struct {
	mu       sync.Mutex
	text     strings.Builder
	partial  string // the unfinished last line of the previous write
	watchers []func(line string)
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.text.Write(p)
	lines := strings.Split(b.partial+string(p), "\n")
	b.partial = lines[len(lines)-1]
	for _, line := range lines[:len(lines)-1] {
		for _, watch := range b.watchers {
			watch(line)
		}
	}
	return len(p), nil
}

func (b *lockedBuffer) watch(watcher func(line string)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.watchers = append(b.watchers, watcher)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.text.String()
}
