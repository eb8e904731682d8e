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

# Measure capture throughput and latency against a private PostgreSQL with
# fsync on: group commit, one transaction per event, and the raw insert
# ceiling, 10 s each. Figures and the machine they came from: BENCHMARKS.md.
bench:
	$(GO) run ./bench/capture -duration 10s

clean:
	rm -rf .data bin
