GO ?= go

.PHONY: run test build bench chaos clean

# Start the whole pipeline locally: private Postgres, embedded NATS, the Sequin
# stand-in, a fake regulator, the service and a demo producer. Ctrl-C stops it.
run: build
	./bin/eventruntime dev

test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...

build:
	$(GO) build -o bin/eventruntime ./cmd/eventruntime

# Extra flags for bench/pipeline, such as -backlog=0 to skip the
# one-million-event drain (about 10 minutes on 2 cores).
BENCH_PIPELINE_FLAGS ?=

# Measure capture throughput and latency against a private PostgreSQL with
# fsync on (group commit, one transaction per event, and the raw insert
# ceiling, 10 s each), then the whole pipeline end to end: single-row insert
# baseline, near-real-time latency at 1,000 events/s, the drain of a backlog
# of one million events, and 60 s at an offered 12,000 events/s. Figures and
# the machine they came from: BENCHMARKS.md.
bench:
	$(GO) run ./bench/capture -duration 10s
	$(GO) run ./bench/pipeline $(BENCH_PIPELINE_FLAGS)

# Run the chaos scenarios with faults lasting minutes (build tag chaos): worker
# SIGKILL mid-POST and mid-flush, PostgreSQL and NATS restarts, a stalled
# Sequin stand-in, a stalled customer endpoint, regulator 429s and poison
# events. Each prints a `chaos: <scenario>: PASS|FAIL ...` verdict line.
# `make test` runs the same scenarios with faults lasting seconds.
chaos:
	$(GO) test -tags chaos -count=1 -v -run . -timeout 60m ./chaos/ | grep -E '^(chaos:|--- |ok|FAIL|PASS)'

clean:
	rm -rf .data bin
