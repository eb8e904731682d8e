// Command capture measures how fast captured events become durable in the
// outbox. It starts a private PostgreSQL with fsync on, so each COMMIT costs
// a real WAL flush, and runs each mode for a fixed time:
//
//   - group-commit: producers call outbox.Writer.Write, which shares one
//     INSERT and one COMMIT among the events that arrive together.
//   - per-event: producers each run one transaction per event on a pool with
//     one connection per producer.
//   - ceiling-insert and ceiling-copy: one connection inserts large batches,
//     one transaction per batch, with the multi-row INSERT of outbox.Append
//     or with COPY. The faster of the two is the raw insert ceiling.
//
// Producer latency is the time one Write or one transaction took. Ceiling
// latency is per batch. Run it with `make bench` or `go run ./bench/capture`.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/internal/pgcluster"
	"github.com/finnest/eventruntime/migrations"
	"github.com/finnest/eventruntime/outbox"
)

type options struct {
	batch       int
	concurrency int
	duration    time.Duration
	producers   int
}

// measurement is one mode's outcome.
type measurement struct {
	mode      string
	events    int
	elapsed   time.Duration
	latencies []time.Duration
	unit      string
}

func (m measurement) rate() float64 { return float64(m.events) / m.elapsed.Seconds() }

func (m measurement) percentile(p float64) time.Duration {
	if len(m.latencies) == 0 {
		return 0
	}
	return m.latencies[min(len(m.latencies)-1, int(p*float64(len(m.latencies))))]
}

func main() {
	var opts options
	flag.IntVar(&opts.batch, "batch", 1000, "events per transaction in the ceiling modes")
	flag.IntVar(&opts.concurrency, "group-concurrency", 1, "batches the group-commit writer keeps in flight")
	flag.DurationVar(&opts.duration, "duration", 10*time.Second, "how long each mode runs")
	flag.IntVar(&opts.producers, "producers", 64, "concurrent producers in the group-commit and per-event modes")
	flag.Parse()

	if err := run(context.Background(), opts); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, opts options) error {
	cluster, err := pgcluster.Start(ctx, pgcluster.Config{Durable: true})
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	defer cluster.Stop()

	poolConfig, err := pgxpool.ParseConfig(cluster.URL("postgres"))
	if err != nil {
		return err
	}
	poolConfig.MaxConns = int32(opts.producers + 4)
	pool, err := pgxpool.NewWithConfig(ctx, poolConfig)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		return err
	}

	var version string
	if err := pool.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		return err
	}
	var fsync, synchronousCommit string
	_ = pool.QueryRow(ctx, "SHOW fsync").Scan(&fsync)
	_ = pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&synchronousCommit)
	fmt.Printf("machine: %d CPUs (GOMAXPROCS %d), %s, %s/%s, Go %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0),
		memoryTotal(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Printf("postgres: %s, fsync=%s, synchronous_commit=%s, data in %s\n",
		version, fsync, synchronousCommit, cluster.DataDir())
	fmt.Printf("run: %s per mode, %d producers, ceiling batches of %d events, group-commit concurrency %d\n\n",
		opts.duration, opts.producers, opts.batch, opts.concurrency)

	modes := []struct {
		name string
		run  func(context.Context, *pgxpool.Pool, options) (measurement, error)
	}{
		{"group-commit", runGroupCommit},
		{"per-event", runPerEvent},
		{"ceiling-insert", runCeilingInsert},
		{"ceiling-copy", runCeilingCopy},
	}
	var results []measurement
	for _, mode := range modes {
		if _, err := pool.Exec(ctx, "TRUNCATE outbox"); err != nil {
			return err
		}
		if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil {
			return err
		}
		result, err := mode.run(ctx, pool, opts)
		if err != nil {
			return fmt.Errorf("mode %s: %w", mode.name, err)
		}
		result.mode = mode.name
		slices.Sort(result.latencies)
		results = append(results, result)
		fmt.Printf("  %-15s done: %d events\n", mode.name, result.events)
	}

	printTable(results)
	return nil
}

func printTable(results []measurement) {
	ceiling := 0.0
	for _, r := range results {
		if strings.HasPrefix(r.mode, "ceiling") {
			ceiling = max(ceiling, r.rate())
		}
	}
	perEvent := results[1].rate()

	fmt.Printf("\n%-15s %10s %12s %12s %12s %16s %14s\n",
		"mode", "events", "events/s", "p50", "p99", "latency of", "vs ceiling")
	for _, r := range results {
		fmt.Printf("%-15s %10d %12.0f %12s %12s %16s %13.3fx\n", r.mode, r.events, r.rate(),
			r.percentile(0.50).Round(10*time.Microsecond), r.percentile(0.99).Round(10*time.Microsecond),
			r.unit, r.rate()/ceiling)
	}
	fmt.Printf("\ngroup-commit vs per-event throughput: %.2fx\n", results[0].rate()/perEvent)
}

// produce runs producers that each call write until the duration ends, and
// records each call's latency.
func produce(ctx context.Context, opts options,
	write func(ctx context.Context, event *outbox.Event) error) (measurement, error) {
	var (
		mu        sync.Mutex
		total     int
		latencies []time.Duration
		firstErr  error
		wg        sync.WaitGroup
	)
	tenants := []demo.Tenant{{ID: "tenant-bench", OrganisationID: "b8e34d5a-2ed5-451e-8ddb-45a1edc76243",
		SoftwareStatementID: "f0b5419b-2b5f-4f59-9862-6d2a8e23be26"}}
	started := time.Now()
	deadline := started.Add(opts.duration)
	for producer := range opts.producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			generator := demo.NewGenerator(uint64(producer+1), tenants)
			var own []time.Duration
			for time.Now().Before(deadline) {
				event := generator.Event()
				callStarted := time.Now()
				if err := write(ctx, event); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				own = append(own, time.Since(callStarted))
			}
			mu.Lock()
			total += len(own)
			latencies = append(latencies, own...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return measurement{events: total, elapsed: time.Since(started), latencies: latencies, unit: "one event"},
		firstErr
}

func runGroupCommit(ctx context.Context, pool *pgxpool.Pool, opts options) (measurement, error) {
	writer := outbox.NewWriter(pool, outbox.WriterConfig{Concurrency: opts.concurrency})
	defer writer.Close()
	return produce(ctx, opts, writer.Write)
}

func runPerEvent(ctx context.Context, pool *pgxpool.Pool, opts options) (measurement, error) {
	return produce(ctx, opts, func(ctx context.Context, event *outbox.Event) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return outbox.Append(ctx, tx, event) })
	})
}

// runBatches runs insert on one connection, one transaction per batch of
// opts.batch events, until the duration ends.
func runBatches(ctx context.Context, pool *pgxpool.Pool, opts options,
	insert func(ctx context.Context, tx pgx.Tx, events []*outbox.Event) error) (measurement, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return measurement{}, err
	}
	defer conn.Release()

	generator := demo.NewGenerator(1, []demo.Tenant{{ID: "tenant-bench", OrganisationID: "org",
		SoftwareStatementID: "ss"}})
	result := measurement{unit: fmt.Sprintf("%d-event batch", opts.batch)}
	started := time.Now()
	deadline := started.Add(opts.duration)
	for time.Now().Before(deadline) {
		events := make([]*outbox.Event, opts.batch)
		for i := range events {
			events[i] = generator.Event()
		}
		batchStarted := time.Now()
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return insert(ctx, tx, events) })
		if err != nil {
			return result, err
		}
		result.latencies = append(result.latencies, time.Since(batchStarted))
		result.events += len(events)
	}
	result.elapsed = time.Since(started)
	return result, nil
}

func runCeilingInsert(ctx context.Context, pool *pgxpool.Pool, opts options) (measurement, error) {
	return runBatches(ctx, pool, opts, func(ctx context.Context, tx pgx.Tx, events []*outbox.Event) error {
		return outbox.Append(ctx, tx, events...)
	})
}

func runCeilingCopy(ctx context.Context, pool *pgxpool.Pool, opts options) (measurement, error) {
	return runBatches(ctx, pool, opts, func(ctx context.Context, tx pgx.Tx, events []*outbox.Event) error {
		rows := make([][]any, len(events))
		for i, event := range events {
			if err := event.Validate(0); err != nil {
				return err
			}
			event.ID = uuid.Must(uuid.NewV7())
			rows[i] = []any{event.ID, event.TenantID, event.Ecosystem, event.Type, int32(event.Version),
				event.AggregateID, string(event.Payload), event.OccurredAt}
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"outbox"},
			[]string{"id", "tenant_id", "ecosystem", "event_type", "event_version", "aggregate_id", "payload",
				"occurred_at"},
			pgx.CopyFromRows(rows))
		return err
	})
}

// memoryTotal returns MemTotal from /proc/meminfo, or "memory unknown".
func memoryTotal() string {
	file, err := os.Open("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			var kib int64
			fmt.Sscan(fields[1], &kib)
			return fmt.Sprintf("%.1f GiB RAM", float64(kib)/(1<<20))
		}
	}
	return "memory unknown"
}
