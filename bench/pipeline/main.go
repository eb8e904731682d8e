// Command pipeline measures the whole regulator pipeline end to end, from an
// outbox commit to a report accepted by the fake OFB regulator, on one
// machine. It starts its own PostgreSQL with fsync on, an embedded NATS
// server with JetStream, the strict fake regulator, the Sequin stand-in and
// the producers in this process, and runs `eventruntime serve` as a
// subprocess so that its CPU time and peak resident memory are its own.
//
// Phases, each printed as it ends:
//
//  1. baseline: single-row INSERTs into the outbox, one autocommit
//     transaction each, on several connections. Every rate below is also
//     printed as a ratio to this one.
//  2. nrt: a steady near-real-time load (1,000 events/s by default), with
//     the time from each event's commit to its acceptance by the regulator.
//  3. backlog: the service is stopped, 1,000,000 events are copied into the
//     outbox, the service is started again and the drain is timed.
//  4. sustained: an offered load of 12,000 events/s by default for 60 s,
//     appended in batched transactions, with the accepted rate, the backlog
//     and the service's memory. It runs last because what it leaves
//     undrained is abandoned.
//
// Run it with `make bench` or `go run ./bench/pipeline`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"
)

type options struct {
	backlog            int
	backlogTimeout     time.Duration
	baselineConns      int
	baselineDuration   time.Duration
	binary             string
	consumerBatchSize  int
	drainTimeout       time.Duration
	flushEvery         time.Duration
	flushInterval      time.Duration
	nrtDuration        time.Duration
	nrtRate            int
	profileDir         string
	stages             bool
	sustainDuration    time.Duration
	sustainRate        int
	sustainSampleEvery int
	validateRequests   bool
}

func main() {
	var opts options
	flag.IntVar(&opts.backlog, "backlog", 1_000_000, "events in the backlog phase; 0 skips the phase")
	flag.DurationVar(&opts.backlogTimeout, "backlog-timeout", 20*time.Minute,
		"how long the backlog phase may take to drain before it is reported as not drained")
	flag.IntVar(&opts.baselineConns, "baseline-conns", 16, "connections inserting in the baseline phase")
	flag.DurationVar(&opts.baselineDuration, "baseline-duration", 10*time.Second, "length of the baseline phase")
	flag.StringVar(&opts.binary, "binary", "", "eventruntime binary to run; empty builds ./cmd/eventruntime")
	flag.IntVar(&opts.consumerBatchSize, "consumer-batch-size", 0,
		"CONSUMER_BATCH_SIZE of the service; 0 keeps the service default")
	flag.DurationVar(&opts.drainTimeout, "drain-timeout", 3*time.Minute,
		"how long the nrt and sustained phases wait for the pipeline to drain after the load stops")
	flag.DurationVar(&opts.flushEvery, "flush-every", 250*time.Millisecond, "FLUSH_EVERY of the service")
	flag.DurationVar(&opts.flushInterval, "flush-interval", 250*time.Millisecond,
		"the tenants' near-real-time flush interval")
	flag.DurationVar(&opts.nrtDuration, "nrt-duration", 30*time.Second, "length of the nrt phase")
	flag.IntVar(&opts.nrtRate, "nrt-rate", 1000, "events per second in the nrt phase")
	flag.StringVar(&opts.profileDir, "profile-dir", "",
		"folder for CPU profiles of the service and of this process during the sustained phase; empty takes none")
	flag.BoolVar(&opts.stages, "stages", false,
		"print per-stage counts in the progress lines; the count(*) queries cost PostgreSQL about a second each on large tables")
	flag.DurationVar(&opts.sustainDuration, "sustain-duration", 60*time.Second, "length of the sustained phase")
	flag.IntVar(&opts.sustainRate, "sustain-rate", 12000, "offered events per second in the sustained phase")
	flag.IntVar(&opts.sustainSampleEvery, "sustain-sample-every", 20,
		"record the commit-to-accepted latency of one event in this many in the sustained phase")
	flag.BoolVar(&opts.validateRequests, "validate-requests", false,
		"make the fake regulator validate every request against the OpenAPI spec (costs CPU on the same machine)")
	flag.Parse()

	ctx := context.Background()
	if err := run(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "bench pipeline:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, opts options) error {
	env, err := startEnvironment(ctx, opts)
	if err != nil {
		return err
	}
	defer env.close()
	env.printMachine()

	var report summary
	baseline, err := runBaseline(ctx, env, opts)
	if err != nil {
		return fmt.Errorf("baseline phase: %w", err)
	}
	report.baseline = baseline
	fmt.Printf("\n[baseline] %d single-row INSERTs in %s on %d connections: %.0f rows/s\n",
		baseline.rows, baseline.elapsed.Round(time.Millisecond), opts.baselineConns, baseline.rate())

	if err := env.startStandIn(ctx); err != nil {
		return err
	}

	nrt, err := runLoadPhase(ctx, env, opts, loadPhase{
		name: "nrt", rate: opts.nrtRate, duration: opts.nrtDuration, sampleEvery: 1,
	})
	if err != nil {
		return fmt.Errorf("nrt phase: %w", err)
	}
	report.nrt = nrt
	nrt.print(baseline.rate())

	// The backlog phase runs before the sustained one, because an offered
	// load above what the pipeline drains leaves a backlog that would be
	// counted in the next phase.
	if opts.backlog > 0 {
		backlog, err := runBacklog(ctx, env, opts)
		if err != nil {
			return fmt.Errorf("backlog phase: %w", err)
		}
		report.backlog = &backlog
		backlog.print(baseline.rate())
	}

	sustained, err := runLoadPhase(ctx, env, opts, loadPhase{
		name: "sustained", rate: opts.sustainRate, duration: opts.sustainDuration,
		sampleEvery: opts.sustainSampleEvery, profile: opts.profileDir != "",
	})
	if err != nil {
		return fmt.Errorf("sustained phase: %w", err)
	}
	report.sustained = sustained
	sustained.print(baseline.rate())

	report.print(opts)
	return nil
}
