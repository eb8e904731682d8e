package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/outbox"
)

const (
	// producerWorkers is how many transactions the producers keep in flight.
	producerWorkers = 8
	// producerTick is how often the pacer hands out the events that are due.
	// Events due while every worker is busy go into the next, larger
	// transaction, as with group commit.
	producerTick = 10 * time.Millisecond
	// maxProducerBatch caps the events of one producer transaction.
	maxProducerBatch = 2000
	// backlogCopyBatch is the events per COPY transaction in the backlog
	// phase.
	backlogCopyBatch = 10_000
)

// baselineResult is the outcome of the baseline phase.
type baselineResult struct {
	rows    int64
	elapsed time.Duration
}

func (b baselineResult) rate() float64 { return float64(b.rows) / b.elapsed.Seconds() }

// runBaseline inserts one outbox row per autocommit statement on
// opts.baselineConns connections, before the replication slot exists, then
// empties the outbox again.
func runBaseline(ctx context.Context, env *environment, opts options) (baselineResult, error) {
	var (
		rows     atomic.Int64
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	started := time.Now()
	deadline := started.Add(opts.baselineDuration)
	for connection := range opts.baselineConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			generator := demo.NewGenerator(uint64(1000+connection), benchTenants)
			for time.Now().Before(deadline) {
				event := generator.Event()
				_, err := env.pool.Exec(ctx, `
					INSERT INTO outbox (id, tenant_id, ecosystem, event_type, event_version, aggregate_id,
					                    payload, occurred_at)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
					uuid.Must(uuid.NewV7()), event.TenantID, event.Ecosystem, event.Type, event.Version,
					event.AggregateID, string(event.Payload), event.OccurredAt)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				rows.Add(1)
			}
		}()
	}
	wg.Wait()
	result := baselineResult{rows: rows.Load(), elapsed: time.Since(started)}
	if firstErr != nil {
		return result, firstErr
	}
	if _, err := env.pool.Exec(ctx, "TRUNCATE outbox"); err != nil {
		return result, err
	}
	_, err := env.pool.Exec(ctx, "CHECKPOINT")
	return result, err
}

// commitSample is one event whose commit-to-accepted latency is measured.
type commitSample struct {
	fapiInteractionID string
	committed         time.Time
}

// producer appends generated events at a steady offered rate in batched
// transactions.
type producer struct {
	env         *environment
	rate        int
	sampleEvery int
	seed        uint64

	committed atomic.Int64
	// busyTicks counts ticks at which every worker was still committing, so
	// the due events waited for the next tick.
	busyTicks atomic.Int64

	mu      sync.Mutex
	samples []commitSample
}

// run offers the load for d and returns once every transaction handed out
// has finished.
func (p *producer) run(ctx context.Context, d time.Duration) error {
	work := make(chan int, producerWorkers)
	var (
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	for worker := range producerWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			generator := demo.NewGenerator(p.seed+uint64(worker), benchTenants)
			var own []commitSample
			var index int
			for n := range work {
				events := make([]*outbox.Event, n)
				for i := range events {
					events[i] = generator.Event()
				}
				err := pgx.BeginFunc(ctx, p.env.pool, func(tx pgx.Tx) error {
					return outbox.Append(ctx, tx, events...)
				})
				committedAt := time.Now()
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					continue
				}
				p.committed.Add(int64(n))
				for _, event := range events {
					if index%p.sampleEvery == 0 {
						own = append(own, commitSample{fapiInteractionID: event.AggregateID, committed: committedAt})
					}
					index++
				}
			}
			p.mu.Lock()
			p.samples = append(p.samples, own...)
			p.mu.Unlock()
		}()
	}

	ticker := time.NewTicker(producerTick)
	defer ticker.Stop()
	started := time.Now()
	var handedOut int64
	for now := range ticker.C {
		elapsed := now.Sub(started)
		if elapsed >= d {
			break
		}
		due := int64(float64(p.rate)*elapsed.Seconds()) - handedOut
	handOut:
		for due > 0 {
			n := min(due, maxProducerBatch)
			select {
			case work <- int(n):
				handedOut += n
				due -= n
			default:
				p.busyTicks.Add(1)
				break handOut
			}
		}
	}
	close(work)
	wg.Wait()
	return firstErr
}

// loadPhase describes a phase with a steady offered load.
type loadPhase struct {
	name        string
	rate        int
	duration    time.Duration
	sampleEvery int
	profile     bool
	seed        uint64
}

// progressSample is the pipeline's state at one moment of a phase.
type progressSample struct {
	at        time.Duration
	committed int64
	accepted  int64
	rss       int64
}

// loadResult is the outcome of a load phase.
type loadResult struct {
	phase loadPhase

	committed        int64
	loadElapsed      time.Duration
	acceptedInWindow int64
	busyTicks        int64
	progress         []progressSample

	drained   bool
	drainTime time.Duration

	latencies []time.Duration
	samples   int
	missing   int

	peakRSS  int64
	cpu      cpuTimes
	redriven int64
	profiles []string
}

func runLoadPhase(ctx context.Context, env *environment, opts options, phase loadPhase) (loadResult, error) {
	result := loadResult{phase: phase}
	svc, err := env.startService(ctx, phase.name)
	if err != nil {
		return result, err
	}
	defer svc.stop()

	_, _ = env.pool.Exec(ctx, "SELECT pg_stat_statements_reset()")
	acceptedBase := int64(env.fake.AcceptedCount())
	prod := &producer{env: env, rate: phase.rate, sampleEvery: max(phase.sampleEvery, 1),
		seed: uint64(time.Now().UnixNano())}
	cpuStart := env.cpuTimes(svc)
	started := time.Now()

	monitorCtx, stopMonitor := context.WithCancel(ctx)
	monitorDone := make(chan []progressSample)
	go func() {
		monitorDone <- monitor(monitorCtx, env, phase.name, started, svc, func() (int64, int64) {
			return prod.committed.Load(), int64(env.fake.AcceptedCount()) - acceptedBase
		})
	}()

	var profileWait sync.WaitGroup
	var profileErr error
	if phase.profile {
		profileWait.Add(1)
		go func() {
			defer profileWait.Done()
			result.profiles, profileErr = takeProfiles(ctx, opts.profileDir, svc, phase.duration)
		}()
	}

	if err := prod.run(ctx, phase.duration); err != nil {
		stopMonitor()
		<-monitorDone
		return result, fmt.Errorf("producer: %w", err)
	}
	result.loadElapsed = time.Since(started)
	result.committed = prod.committed.Load()
	result.acceptedInWindow = int64(env.fake.AcceptedCount()) - acceptedBase
	result.busyTicks = prod.busyTicks.Load()
	result.cpu = env.cpuTimes(svc).sub(cpuStart)
	profileWait.Wait()
	if profileErr != nil {
		fmt.Fprintf(os.Stderr, "[%s] profile not taken: %v\n", phase.name, profileErr)
	}

	drainStarted := time.Now()
	drainDeadline := drainStarted.Add(opts.drainTimeout)
	for int64(env.fake.AcceptedCount())-acceptedBase < result.committed && time.Now().Before(drainDeadline) {
		time.Sleep(50 * time.Millisecond)
	}
	result.drainTime = time.Since(drainStarted)
	result.drained = int64(env.fake.AcceptedCount())-acceptedBase >= result.committed
	env.printTopStatements(ctx, phase.name, 10)
	stopMonitor()
	result.progress = <-monitorDone
	_, result.peakRSS = svc.memory()
	svc.stop()
	_, result.redriven = svc.countLogEvents("redrive.transport_loss", "events")

	prod.mu.Lock()
	samples := prod.samples
	prod.mu.Unlock()
	result.samples = len(samples)
	for _, sample := range samples {
		acceptedAt, ok := env.fake.AcceptedAt(sample.fapiInteractionID)
		if !ok {
			result.missing++
			continue
		}
		result.latencies = append(result.latencies, acceptedAt.Sub(sample.committed))
	}
	slices.Sort(result.latencies)
	return result, nil
}

// monitor prints the pipeline's progress every five seconds until ctx is
// done and returns the samples.
func monitor(ctx context.Context, env *environment, name string, started time.Time, svc *service,
	counts func() (committed, accepted int64)) []progressSample {
	ticker := time.NewTicker(5 * time.Second)
	defer ticker.Stop()
	var samples []progressSample
	for {
		select {
		case <-ctx.Done():
			return samples
		case <-ticker.C:
		}
		committed, accepted := counts()
		rss, _ := svc.memory()
		sample := progressSample{at: time.Since(started), committed: committed, accepted: accepted, rss: rss}
		samples = append(samples, sample)
		fmt.Printf("  [%s] %5.0fs committed=%d %s accepted=%d backlog=%d service RSS=%.0f MiB\n", name,
			sample.at.Seconds(), committed, stages(ctx, env), accepted, committed-accepted, float64(rss)/(1<<20))
	}
}

// stages returns how many events each stage of the service has taken in,
// read from the stream and the database, to show where a backlog waits:
// published into the stream by the stand-in (all phases together), received by the
// consumer, mapped to report items, sealed into batches, and map jobs not
// yet run.
func stages(ctx context.Context, env *environment) string {
	if !env.opts.stages {
		return "stages=off"
	}
	var received, mapped, batched, mapJobs int64
	err := env.pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM consumer_idempotency WHERE consumer = 'regulator'),
		       (SELECT count(*) FROM report_items),
		       (SELECT count(*) FROM report_items WHERE batch_id IS NOT NULL),
		       (SELECT count(*) FROM river_job WHERE kind = 'map' AND state IN ('available', 'running'))`).
		Scan(&received, &mapped, &batched, &mapJobs)
	if err != nil {
		return "stages unknown"
	}
	inStream, _ := env.streamLastSequence(ctx)
	return fmt.Sprintf("in-stream=%d received=%d mapped=%d batched=%d map-jobs-waiting=%d", inStream, received, mapped, batched, mapJobs)
}

// takeProfiles waits a quarter of the phase, then profiles the service and
// this process for half of it.
func takeProfiles(ctx context.Context, dir string, svc *service, phase time.Duration) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	select {
	case <-time.After(phase / 4):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	length := max(phase/2, time.Second)
	benchPath := filepath.Join(dir, "bench.pprof")
	servicePath := filepath.Join(dir, "service.pprof")
	file, err := os.Create(benchPath)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	if err := pprof.StartCPUProfile(file); err != nil {
		return nil, err
	}
	serviceErr := svc.profileCPU(servicePath, length)
	pprof.StopCPUProfile()
	if serviceErr != nil {
		return []string{benchPath}, serviceErr
	}
	return []string{servicePath, benchPath}, nil
}

// backlogResult is the outcome of the backlog phase.
type backlogResult struct {
	events        int
	insertElapsed time.Duration
	publishTime   time.Duration
	drainTime     time.Duration
	drained       bool
	accepted      int64
	peakRSS       int64
	cpu           cpuTimes
	redriven      int64
}

// runBacklog copies opts.backlog events into the outbox while the service is
// stopped, waits until the stand-in has published them all to the stream,
// then starts the service and times the drain.
func runBacklog(ctx context.Context, env *environment, opts options) (backlogResult, error) {
	result := backlogResult{events: opts.backlog}
	lastSequence, err := env.streamLastSequence(ctx)
	if err != nil {
		return result, err
	}
	acceptedBase := int64(env.fake.AcceptedCount())

	fmt.Printf("\n[backlog] copying %d events into the outbox with the service stopped\n", opts.backlog)
	started := time.Now()
	if err := copyEvents(ctx, env, opts.backlog); err != nil {
		return result, err
	}
	result.insertElapsed = time.Since(started)
	for {
		sequence, err := env.streamLastSequence(ctx)
		if err != nil {
			return result, err
		}
		if sequence >= lastSequence+uint64(opts.backlog) {
			break
		}
		if time.Since(started) > opts.backlogTimeout {
			return result, fmt.Errorf("the stand-in published %d of %d events within %s",
				sequence-lastSequence, opts.backlog, opts.backlogTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	result.publishTime = time.Since(started)
	fmt.Printf("  [backlog] inserted in %s, all in the stream after %s; starting the service\n",
		result.insertElapsed.Round(time.Millisecond), result.publishTime.Round(time.Millisecond))

	svc, err := env.startService(ctx, "backlog")
	if err != nil {
		return result, err
	}
	defer svc.stop()
	_, _ = env.pool.Exec(ctx, "SELECT pg_stat_statements_reset()")
	cpuStart := env.cpuTimes(svc)
	drainStarted := time.Now()
	monitorCtx, stopMonitor := context.WithCancel(ctx)
	monitorDone := make(chan []progressSample)
	go func() {
		monitorDone <- monitor(monitorCtx, env, "backlog", drainStarted, svc, func() (int64, int64) {
			return int64(opts.backlog), int64(env.fake.AcceptedCount()) - acceptedBase
		})
	}()
	deadline := drainStarted.Add(opts.backlogTimeout)
	for int64(env.fake.AcceptedCount())-acceptedBase < int64(opts.backlog) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	result.drainTime = time.Since(drainStarted)
	result.accepted = int64(env.fake.AcceptedCount()) - acceptedBase
	result.drained = result.accepted >= int64(opts.backlog)
	result.cpu = env.cpuTimes(svc).sub(cpuStart)
	env.printTopStatements(ctx, "backlog", 10)
	stopMonitor()
	<-monitorDone
	_, result.peakRSS = svc.memory()
	svc.stop()
	_, result.redriven = svc.countLogEvents("redrive.transport_loss", "events")
	return result, nil
}

// copyEvents writes n generated events into the outbox with COPY, in
// transactions of backlogCopyBatch events.
func copyEvents(ctx context.Context, env *environment, n int) error {
	generator := demo.NewGenerator(uint64(time.Now().UnixNano()), benchTenants)
	columns := []string{"id", "tenant_id", "ecosystem", "event_type", "event_version", "aggregate_id", "payload",
		"occurred_at"}
	for written := 0; written < n; {
		size := min(backlogCopyBatch, n-written)
		rows := make([][]any, size)
		for i := range rows {
			event := generator.Event()
			if err := event.Validate(0); err != nil {
				return err
			}
			rows[i] = []any{uuid.Must(uuid.NewV7()), event.TenantID, event.Ecosystem, event.Type,
				int32(event.Version), event.AggregateID, string(event.Payload), event.OccurredAt}
		}
		err := pgx.BeginFunc(ctx, env.pool, func(tx pgx.Tx) error {
			copied, err := tx.CopyFrom(ctx, pgx.Identifier{"outbox"}, columns, pgx.CopyFromRows(rows))
			if err == nil && copied != int64(size) {
				err = errors.New("COPY wrote fewer rows than sent")
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("copy events %d to %d: %w", written+1, written+size, err)
		}
		written += size
	}
	return nil
}
