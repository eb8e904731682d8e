package worker

import (
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
)

// Extension adds a purpose to the service beside the regulator pipeline:
// River workers, periodic jobs and queues, and optionally a durable consumer
// of its own on the outbox stream.
type Extension struct {
	// ConsumerName is the durable consumer's name, also its key in
	// consumer_idempotency. Empty means the extension consumes nothing.
	ConsumerName string

	// Handler builds the consumer's batch handler from the River client, to
	// insert jobs in the batch's transaction. Required with ConsumerName.
	Handler func(client *river.Client[pgx.Tx]) BatchHandler

	// Register adds the extension's workers and returns its periodic jobs
	// and queues. Nil adds nothing.
	Register func(workers *river.Workers) ([]*river.PeriodicJob, map[string]river.QueueConfig)
}
