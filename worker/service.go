package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"github.com/riverqueue/rivercontrib/otelriver"
	"riverqueue.com/riverui"

	"github.com/finnest/eventruntime/jobs"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
	riveruiaccess "github.com/finnest/eventruntime/riverui"
	"github.com/finnest/eventruntime/sequin"
)

// DefaultDatabaseMaxConns is the minimum default connection limit. The
// consumers, River's fetching and completion, and up to a dozen running jobs
// each use a connection at times. With pgxpool's default (the number of
// CPUs, at least four) they waited for connections on two CPUs.
const DefaultDatabaseMaxConns = 16

// Config configures the service that `eventruntime serve` runs.
type Config struct {
	// ConsumerBatchSize is the most messages a consumer commits together.
	// Zero means 256.
	ConsumerBatchSize int

	// ConsumerLinger is how long a consumer's batch that is not full waits
	// for more messages after its first. Zero means 100 milliseconds.
	ConsumerLinger time.Duration

	// DatabaseURL is the PostgreSQL connection string. Required.
	DatabaseURL string

	// DatabaseMaxConns is the maximum number of connections the service
	// opens. Zero means pool_max_conns of DatabaseURL if set, else the
	// larger of DefaultDatabaseMaxConns and pgxpool's default.
	DatabaseMaxConns int

	// Decoder decodes the CDC connector's messages. Required.
	Decoder Decoder

	// FlushEvery is how often the flush job runs. Zero means one second.
	FlushEvery time.Duration

	// HTTPAddr is where /livez, /readyz and River UI listen. Empty means
	// 127.0.0.1:8080.
	HTTPAddr string

	// Logger receives structured logs. Nil discards them.
	Logger *slog.Logger

	// MetricsHandler serves /metrics. Nil serves no /metrics.
	MetricsHandler http.Handler

	// NATSURL is the NATS server URL. Required.
	NATSURL string

	// HeartbeatEvery is how often a heartbeat event is appended to the
	// outbox. Zero means one minute.
	HeartbeatEvery time.Duration

	// ObserveEvery is how often slot lag, consumer lag, outbox depth and
	// the oldest unsubmitted item are measured. Zero means 10 seconds.
	ObserveEvery time.Duration

	// RedriveAfter is how old an outbox event a consumer never recorded must
	// be before re-drive delivers it. Zero means DefaultRedriveAfter.
	RedriveAfter time.Duration

	// RedriveEvery is how often re-drive runs. Zero means one minute.
	RedriveEvery time.Duration

	// ReplicationSlot is the CDC connector's slot on the outbox. Empty means
	// sequin.DefaultSlot.
	ReplicationSlot string

	// SlotLagLimit is the retained WAL above which the service reports
	// itself unready. Zero means 1 GiB.
	SlotLagLimit int64

	// SlotStallLimit is how long the slot's confirmed position may stand
	// still while WAL is written before the service reports itself unready.
	// Zero means 5 minutes.
	SlotStallLimit time.Duration

	// RegulatorConsumer is the durable consumer that feeds the regulator
	// pipeline. Empty means "regulator".
	RegulatorConsumer string

	// Adapters maps an ecosystem to its regulator adapter.
	Adapters map[string]regulator.Adapter

	// Extensions add workers, periodic jobs, queues and durable consumers
	// beyond the regulator pipeline, such as customer webhooks.
	Extensions []Extension

	// Now returns the current time for the flush policy. Nil means
	// time.Now; tests move it to cross deadlines.
	Now func() time.Time

	// JobTimeout is how long a River job may run before its context is
	// cancelled. Zero means River's default, one minute.
	JobTimeout time.Duration

	// ReadBackDelay is how long after an interrupted regulator request the
	// submit job waits before reading its items back. Zero means one minute.
	ReadBackDelay time.Duration

	// RescueStuckJobsAfter is how long a job may stay in state running before
	// River's rescuer makes it retryable. A process killed mid-job (SIGKILL,
	// OOM) leaves its jobs running, so this bounds how long such a crash
	// delays the batches of its map and submit jobs. It must be at least
	// JobTimeout. Zero means JobTimeout plus one minute (two minutes with the
	// default timeout), far below River's own default of one hour.
	RescueStuckJobsAfter time.Duration

	// RiverUIUsers are the accounts allowed into River UI under /riverui/.
	// With none, /riverui/ responds with 404.
	RiverUIUsers []riveruiaccess.User

	// SubmitCrash is a hook for fault-injection tests; see
	// jobs.SubmitWorker.Crash.
	SubmitCrash func(stage jobs.SubmitStage, batchID int64) error

	// ShutdownTimeout is how long in-flight jobs get to finish after a stop
	// is requested before they are cancelled. Zero means 30 seconds.
	ShutdownTimeout time.Duration

	// Stream configures the JetStream stream that captures the outbox
	// subjects. A zero Name means "OUTBOX" and no Subjects means
	// "sequin.*.public.outbox.*".
	Stream StreamConfig
}

// Service is a running `eventruntime serve`.
type Service struct {
	cfg       Config
	consumer  *Consumer
	consumers []*Consumer
	http      *http.Server
	listener  net.Listener
	logger    *slog.Logger
	nats      *nats.Conn
	observer  *observer
	pool      *pgxpool.Pool
	river     *river.Client[pgx.Tx]
	riverUI   *riverui.Handler
	startedAt time.Time
}

// New connects to PostgreSQL and NATS, creates the stream and durable
// consumer, and builds the River client and HTTP server. Start runs them.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.DatabaseURL == "" || cfg.NATSURL == "" || cfg.Decoder == nil {
		return nil, errors.New("database URL, NATS URL and decoder are required")
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:8080"
	}
	if cfg.RegulatorConsumer == "" {
		cfg.RegulatorConsumer = "regulator"
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	if cfg.ObserveEvery == 0 {
		cfg.ObserveEvery = 10 * time.Second
	}
	if cfg.ReplicationSlot == "" {
		cfg.ReplicationSlot = sequin.DefaultSlot
	}
	if cfg.SlotLagLimit == 0 {
		cfg.SlotLagLimit = 1 << 30
	}
	if cfg.SlotStallLimit == 0 {
		cfg.SlotStallLimit = 5 * time.Minute
	}
	if cfg.Stream.Name == "" {
		cfg.Stream.Name = "OUTBOX"
	}
	if len(cfg.Stream.Subjects) == 0 {
		cfg.Stream.Subjects = []string{"sequin.*.public.outbox.*"}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, logger: logger}

	var err error
	success := false
	defer func() {
		if !success {
			s.close()
		}
	}()

	poolConfig, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("invalid DATABASE_URL: %w", err)
	}
	if cfg.DatabaseMaxConns > 0 {
		poolConfig.MaxConns = int32(cfg.DatabaseMaxConns)
	} else if !strings.Contains(cfg.DatabaseURL, "pool_max_conns") {
		poolConfig.MaxConns = max(poolConfig.MaxConns, DefaultDatabaseMaxConns)
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, poolConfig); err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	if err := s.pool.Ping(ctx); err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}

	s.nats, err = nats.Connect(cfg.NATSURL, nats.Name("eventruntime"), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // a deliberate close
			}
			logger.Warn("NATS disconnected", "event", "nats.disconnected", "error", err)
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			logger.Info("NATS reconnected", "event", "nats.reconnected")
		}))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", cfg.NATSURL, err)
	}
	js, err := jetstream.New(s.nats)
	if err != nil {
		return nil, fmt.Errorf("open JetStream: %w", err)
	}
	stream, err := EnsureStream(ctx, js, cfg.Stream)
	if err != nil {
		return nil, err
	}

	workers := river.NewWorkers()
	periodic, queues := jobs.Register(workers, jobs.Config{
		Adapters: cfg.Adapters, FlushEvery: cfg.FlushEvery, Logger: logger, Pool: s.pool,
		Now: cfg.Now, ReadBackDelay: cfg.ReadBackDelay, SubmitCrash: cfg.SubmitCrash,
	})
	river.AddWorker(workers, &HeartbeatWorker{Pool: s.pool})
	periodic = append(periodic, river.NewPeriodicJob(river.PeriodicInterval(cmp.Or(cfg.HeartbeatEvery, time.Minute)),
		func() (river.JobArgs, *river.InsertOpts) {
			return HeartbeatArgs{}, &river.InsertOpts{UniqueOpts: jobs.PeriodicUnique(cmp.Or(cfg.HeartbeatEvery, time.Minute))}
		}, &river.PeriodicJobOpts{ID: "heartbeat"}))

	redrive := newRedriveWorker(logger, s.pool, cfg.RedriveAfter)
	river.AddWorker(workers, redrive)
	redriveEvery := cfg.RedriveEvery
	if redriveEvery == 0 {
		redriveEvery = time.Minute
	}
	periodic = append(periodic, river.NewPeriodicJob(river.PeriodicInterval(redriveEvery),
		func() (river.JobArgs, *river.InsertOpts) {
			return RedriveArgs{}, &river.InsertOpts{UniqueOpts: jobs.PeriodicUnique(redriveEvery)}
		}, &river.PeriodicJobOpts{ID: "redrive"}))
	for _, extension := range cfg.Extensions {
		if extension.Register == nil {
			continue
		}
		morePeriodic, moreQueues := extension.Register(workers)
		periodic = append(periodic, morePeriodic...)
		for name, queue := range moreQueues {
			queues[name] = queue
		}
	}
	jobTimeout := cmp.Or(cfg.JobTimeout, river.JobTimeoutDefault)
	s.river, err = river.NewClient(riverpgxv5.New(s.pool), &river.Config{
		JobTimeout:           jobTimeout,
		Logger:               logger,
		Middleware:           []rivertype.Middleware{otelriver.NewMiddleware(&otelriver.MiddlewareConfig{EnableTracePropagation: true})},
		PeriodicJobs:         periodic,
		Queues:               queues,
		RescueStuckJobsAfter: cmp.Or(cfg.RescueStuckJobsAfter, jobTimeout+time.Minute),
		Workers:              workers,
	})
	if err != nil {
		return nil, fmt.Errorf("create River client: %w", err)
	}

	riverClient := s.river
	s.consumer, err = NewConsumer(ctx, ConsumerConfig{
		BatchSize: cfg.ConsumerBatchSize,
		Decoder:   cfg.Decoder,
		Linger:    cfg.ConsumerLinger,
		Handler: func(ctx context.Context, tx pgx.Tx, events []*outbox.Event) error {
			return insertMapJobs(ctx, riverClient, tx, events)
		},
		Logger: logger,
		Name:   cfg.RegulatorConsumer,
		Pool:   s.pool,
		Stream: stream,
	})
	if err != nil {
		return nil, err
	}
	s.consumers = append(s.consumers, s.consumer)
	for _, extension := range cfg.Extensions {
		if extension.ConsumerName == "" {
			continue
		}
		consumer, err := NewConsumer(ctx, ConsumerConfig{
			BatchSize: cfg.ConsumerBatchSize,
			Decoder:   cfg.Decoder,
			Handler:   extension.Handler(riverClient),
			Linger:    cfg.ConsumerLinger,
			Logger:    logger,
			Name:      extension.ConsumerName,
			Pool:      s.pool,
			Stream:    stream,
		})
		if err != nil {
			return nil, err
		}
		s.consumers = append(s.consumers, consumer)
	}

	for _, consumer := range s.consumers {
		redrive.targets = append(redrive.targets, redriveTarget{consumer: consumer, name: consumer.cfg.Name, handler: consumer.cfg.Handler})
	}

	s.riverUI, err = riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints: riverui.NewEndpoints(s.river, nil),
		Logger:    logger,
		Prefix:    "/riverui",
	})
	if err != nil {
		return nil, fmt.Errorf("create River UI: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", s.handleLive)
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.Handle("/riverui/", riveruiaccess.Protect(s.riverUI, cfg.RiverUIUsers, logger))
	if cfg.MetricsHandler != nil {
		mux.Handle("GET /metrics", cfg.MetricsHandler)
	}

	s.observer = &observer{consumers: s.consumers, every: cfg.ObserveEvery, logger: logger, pool: s.pool,
		slot: &sequin.SlotMonitor{Pool: s.pool, Slot: cfg.ReplicationSlot}}
	if err := registerObserverMetrics(s.observer); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if s.listener, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}

	success = true
	return s, nil
}

// insertMapJobs enqueues one map job for the interaction events of a batch.
// Other event types need no regulator work; the idempotency row records that
// they were received.
func insertMapJobs(ctx context.Context, client *river.Client[pgx.Tx], tx pgx.Tx, events []*outbox.Event) error {
	var interactions []*outbox.Event
	for _, event := range events {
		if event.Type == outbox.TypeInteractionRecorded {
			interactions = append(interactions, event)
		}
	}
	if len(interactions) == 0 {
		return nil
	}
	_, err := client.InsertManyFastTx(ctx, tx, []river.InsertManyParams{{Args: jobs.MapArgs{Events: interactions}}})
	if err != nil {
		return fmt.Errorf("insert map job for %d events: %w", len(interactions), err)
	}
	return nil
}

// Addr returns the HTTP listener's address.
func (s *Service) Addr() string { return s.listener.Addr().String() }

// Pool returns the service's database pool.
func (s *Service) Pool() *pgxpool.Pool { return s.pool }

// River returns the service's River client.
func (s *Service) River() *river.Client[pgx.Tx] { return s.river }

// Consumer returns the regulator pipeline's consumer.
func (s *Service) Consumer() *Consumer { return s.consumer }

// Run starts the workers and HTTP server and blocks until ctx is done, then
// stops: it stops fetching from NATS, lets in-flight jobs finish within
// ShutdownTimeout (River's soft stop), cancels what remains, and closes
// connections.
func (s *Service) Run(ctx context.Context) error {
	s.startedAt = time.Now()
	if err := s.river.Start(ctx); err != nil {
		s.close()
		return fmt.Errorf("start River: %w", err)
	}
	if err := s.riverUI.Start(ctx); err != nil {
		s.close()
		return fmt.Errorf("start River UI: %w", err)
	}

	var wg sync.WaitGroup
	consumerCtx, stopConsumer := context.WithCancel(ctx)
	defer stopConsumer()
	for _, consumer := range s.consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = consumer.Run(consumerCtx)
		}()
	}
	observerCtx, stopObserver := context.WithCancel(ctx)
	defer stopObserver()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.observer.run(observerCtx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.http.Serve(s.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("HTTP server failed", "event", "http.failed", "error", err)
		}
	}()
	s.logger.Info("service started", "event", "service.started", "http_addr", s.Addr())

	<-ctx.Done()
	s.logger.Info("service stopping", "event", "service.stopping", "timeout", s.cfg.ShutdownTimeout)
	stopConsumer()

	stopCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := s.river.Stop(stopCtx); err != nil {
		s.logger.Warn("jobs still running at the shutdown timeout; cancelling them", "event", "service.stop_timeout",
			"error", err)
		hardCtx, hardCancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = s.river.StopAndCancel(hardCtx)
		hardCancel()
	}
	_ = s.http.Shutdown(stopCtx)
	wg.Wait()
	s.close()
	s.logger.Info("service stopped", "event", "service.stopped")
	return nil
}

// Close releases the connections of a service that was created but never
// run. Run closes them itself.
func (s *Service) Close() { s.close() }

func (s *Service) close() {
	if s.nats != nil {
		_ = s.nats.Drain()
	}
	if s.pool != nil {
		s.pool.Close()
	}
	if s.listener != nil {
		_ = s.listener.Close()
	}
}

func (s *Service) handleLive(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// handleReady responds with 200 when PostgreSQL and NATS are reachable, and 503
// with the failing checks otherwise.
func (s *Service) handleReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var failures []string
	if err := s.pool.Ping(ctx); err != nil {
		failures = append(failures, "postgres: "+err.Error())
	}
	if !s.nats.IsConnected() {
		failures = append(failures, "nats: "+s.nats.Status().String())
	}
	failures = append(failures, s.readinessFailures()...)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(failures) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, failure := range failures {
			_, _ = fmt.Fprintln(w, failure)
		}
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// readinessFailures lists what makes the service unready beyond its
// connections: a consumer whose fetch loop stopped, and a replication slot
// that is missing, lost, retaining more WAL than SlotLagLimit, or stalled
// for longer than SlotStallLimit.
func (s *Service) readinessFailures() []string {
	var failures []string
	for _, consumer := range s.consumers {
		if !consumer.Healthy() {
			failures = append(failures, fmt.Sprintf("consumer %s: no fetch completed recently", consumer.cfg.Name))
		}
	}
	reading := s.observer.latest()
	if !reading.takenAtLeast1 {
		return failures
	}
	slot := s.cfg.ReplicationSlot
	switch {
	case reading.slotErr != nil:
		failures = append(failures, "replication slot: "+reading.slotErr.Error())
	case reading.slot.WALStatus == "lost" || reading.slot.WALStatus == "unreserved":
		failures = append(failures, fmt.Sprintf("replication slot %s: wal_status %s", slot, reading.slot.WALStatus))
	case reading.slot.RetainedBytes > s.cfg.SlotLagLimit:
		failures = append(failures, fmt.Sprintf("replication slot %s: retains %d bytes of WAL, above the %d-byte limit",
			slot, reading.slot.RetainedBytes, s.cfg.SlotLagLimit))
	case reading.slot.ConfirmedAge > s.cfg.SlotStallLimit:
		failures = append(failures, fmt.Sprintf("replication slot %s: confirmed position unchanged for %s",
			slot, reading.slot.ConfirmedAge.Round(time.Second)))
	}
	return failures
}
