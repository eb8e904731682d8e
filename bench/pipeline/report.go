package main

import (
	"fmt"
	"time"
)

// Targets of the pipeline on a 2-core machine.
const (
	targetRate           = 12000
	targetMemory         = 256 << 20
	targetLatency        = 2 * time.Second
	targetLatencyPercent = 99.0
)

// summary holds every phase's outcome for the final table.
type summary struct {
	baseline  baselineResult
	nrt       loadResult
	sustained loadResult
	backlog   *backlogResult
}

func (r loadResult) committedRate() float64 { return float64(r.committed) / r.loadElapsed.Seconds() }

func (r loadResult) acceptedRate() float64 {
	return float64(r.acceptedInWindow) / r.loadElapsed.Seconds()
}

func (r loadResult) percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(p*float64(len(r.latencies))))]
}

// withinPercent returns the share of sampled events accepted within d of
// their commit, counting events never accepted as late.
func (r loadResult) withinPercent(d time.Duration) float64 {
	if r.samples == 0 {
		return 0
	}
	within := 0
	for _, latency := range r.latencies {
		if latency <= d {
			within++
		}
	}
	return 100 * float64(within) / float64(r.samples)
}

// backlogGrowth returns how fast committed-but-not-accepted events grew
// between the first and the last progress sample of the load window, in
// events per second.
func (r loadResult) backlogGrowth() float64 {
	var window []progressSample
	for _, sample := range r.progress {
		if sample.at <= r.loadElapsed+time.Second {
			window = append(window, sample)
		}
	}
	if len(window) < 2 {
		return 0
	}
	first, last := window[0], window[len(window)-1]
	return float64((last.committed-last.accepted)-(first.committed-first.accepted)) / (last.at - first.at).Seconds()
}

func (r loadResult) print(baseline float64) {
	fmt.Printf("\n[%s] offered %d events/s for %s\n", r.phase.name, r.phase.rate, r.loadElapsed.Round(time.Millisecond))
	fmt.Printf("  committed        %9d events, %8.0f events/s  %6.3fx baseline (producer ticks with every worker busy: %d)\n",
		r.committed, r.committedRate(), r.committedRate()/baseline, r.busyTicks)
	fmt.Printf("  accepted in load %9d events, %8.0f events/s  %6.3fx baseline\n",
		r.acceptedInWindow, r.acceptedRate(), r.acceptedRate()/baseline)
	fmt.Printf("  backlog growth   %9.0f events/s during the load\n", r.backlogGrowth())
	drained := "drained"
	if !r.drained {
		drained = "NOT drained"
	}
	fmt.Printf("  after the load   %s in %s\n", drained, r.drainTime.Round(time.Millisecond))
	fmt.Printf("  commit to accepted (%d sampled, %d never accepted): p50 %s, p99 %s, max %s, within 2s %.2f%%\n",
		r.samples, r.missing, r.percentile(0.50).Round(time.Millisecond), r.percentile(0.99).Round(time.Millisecond),
		r.percentile(1).Round(time.Millisecond), r.withinPercent(targetLatency))
	fmt.Printf("  service peak RSS %.0f MiB (%.2fx of 256 MiB)\n", float64(r.peakRSS)/(1<<20),
		float64(r.peakRSS)/targetMemory)
	printCPU(r.cpu, r.loadElapsed)
	fmt.Printf("  events re-driven from the outbox by the service: %d\n", r.redriven)
	for _, path := range r.profiles {
		fmt.Printf("  CPU profile: %s\n", path)
	}
}

func printCPU(cpu cpuTimes, wall time.Duration) {
	seconds := wall.Seconds()
	fmt.Printf("  CPU in cores: service %.2f, PostgreSQL %.2f, bench process (fake regulator, NATS, stand-in, "+
		"producers) %.2f, total %.2f\n", cpu.service/seconds, cpu.postgres/seconds, cpu.bench/seconds,
		(cpu.service+cpu.postgres+cpu.bench)/seconds)
}

func (b backlogResult) insertRate() float64 { return float64(b.events) / b.insertElapsed.Seconds() }

func (b backlogResult) drainRate() float64 { return float64(b.accepted) / b.drainTime.Seconds() }

func (b backlogResult) print(baseline float64) {
	fmt.Printf("\n[backlog] %d events\n", b.events)
	fmt.Printf("  COPY into outbox %8.0f events/s  %6.3fx baseline\n", b.insertRate(), b.insertRate()/baseline)
	fmt.Printf("  in the stream    %s after the first COPY\n", b.publishTime.Round(time.Millisecond))
	drained := "drained"
	if !b.drained {
		drained = fmt.Sprintf("NOT drained (%d accepted)", b.accepted)
	}
	fmt.Printf("  drain            %s in %s, %8.0f events/s  %6.3fx baseline\n", drained,
		b.drainTime.Round(time.Millisecond), b.drainRate(), b.drainRate()/baseline)
	fmt.Printf("  service peak RSS %.0f MiB (%.2fx of 256 MiB)\n", float64(b.peakRSS)/(1<<20),
		float64(b.peakRSS)/targetMemory)
	printCPU(b.cpu, b.drainTime)
	fmt.Printf("  events re-driven from the outbox by the service: %d\n", b.redriven)
}

func (s summary) print(opts options) {
	base := s.baseline.rate()
	fmt.Printf("\n%-44s %14s %12s %s\n", "figure", "value", "vs baseline", "target")
	row := func(name, value string, ratio float64, target string) {
		ratioText := "-"
		if ratio > 0 {
			ratioText = fmt.Sprintf("%.3fx", ratio)
		}
		fmt.Printf("%-44s %14s %12s %s\n", name, value, ratioText, target)
	}
	rate := func(r float64) string { return fmt.Sprintf("%.0f/s", r) }
	mib := func(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

	row("baseline: single-row INSERT, autocommit", rate(base), 1, "")
	row(fmt.Sprintf("nrt: committed (offered %d/s)", opts.nrtRate), rate(s.nrt.committedRate()),
		s.nrt.committedRate()/base, "")
	row("nrt: accepted during load", rate(s.nrt.acceptedRate()), s.nrt.acceptedRate()/base, "")
	row("nrt: commit to accepted p50", s.nrt.percentile(0.5).Round(time.Millisecond).String(), 0, "")
	row("nrt: commit to accepted p99", s.nrt.percentile(0.99).Round(time.Millisecond).String(), 0, "p99 <= 2s")
	row("nrt: accepted within 2s", fmt.Sprintf("%.2f%%", s.nrt.withinPercent(targetLatency)), 0,
		fmt.Sprintf(">= %.0f%%", targetLatencyPercent))
	row("nrt: service peak RSS", mib(s.nrt.peakRSS), 0, "< 256 MiB")
	row(fmt.Sprintf("sustained: committed (offered %d/s)", opts.sustainRate), rate(s.sustained.committedRate()),
		s.sustained.committedRate()/base, "")
	row("sustained: accepted end to end", rate(s.sustained.acceptedRate()), s.sustained.acceptedRate()/base,
		fmt.Sprintf(">= %d/s", targetRate))
	row("sustained: backlog growth", rate(s.sustained.backlogGrowth()), 0, "about 0/s")
	row("sustained: commit to accepted p99", s.sustained.percentile(0.99).Round(time.Millisecond).String(), 0, "")
	row("sustained: service peak RSS", mib(s.sustained.peakRSS), 0, "< 256 MiB")
	if s.backlog != nil {
		row(fmt.Sprintf("backlog: COPY %d events", s.backlog.events), rate(s.backlog.insertRate()),
			s.backlog.insertRate()/base, "")
		row("backlog: drain", rate(s.backlog.drainRate()), s.backlog.drainRate()/base, "")
		row("backlog: drain time", s.backlog.drainTime.Round(time.Second).String(), 0, "")
		row("backlog: service peak RSS", mib(s.backlog.peakRSS), 0, "< 256 MiB")
	}
}
