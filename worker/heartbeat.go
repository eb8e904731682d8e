package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/finnest/eventruntime/outbox"
)

// Heartbeat event fields. Heartbeats are ordinary outbox rows of a tenant no
// customer has, so consumers record them like any event and no job or
// webhook matches them.
const (
	HeartbeatTenant = "_heartbeat"
	HeartbeatType   = "eventruntime.heartbeat"
)

// HeartbeatArgs requests one heartbeat row in the outbox.
type HeartbeatArgs struct{}

// Kind returns the job kind.
func (HeartbeatArgs) Kind() string { return "heartbeat" }

// InsertOpts puts heartbeat jobs on the control queue.
func (HeartbeatArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: "control"} }

// HeartbeatWorker appends a heartbeat event to the outbox. A quiet outbox
// still moves its replication slot forward this way, so the slot does not
// pin WAL written by other tables, and the heartbeat's arrival at each
// consumer proves the CDC path works end to end; a lost heartbeat is
// re-driven and counted like any lost event.
type HeartbeatWorker struct {
	river.WorkerDefaults[HeartbeatArgs]
	Pool *pgxpool.Pool
}

// Work appends the heartbeat.
func (w *HeartbeatWorker) Work(ctx context.Context, job *river.Job[HeartbeatArgs]) error {
	payload, _ := json.Marshal(map[string]string{"at": time.Now().UTC().Format(time.RFC3339Nano)})
	event := &outbox.Event{
		TenantID:    HeartbeatTenant,
		Ecosystem:   outbox.EcosystemOFB,
		Type:        HeartbeatType,
		Version:     1,
		AggregateID: HeartbeatTenant,
		Payload:     payload,
	}
	if err := pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error { return outbox.Append(ctx, tx, event) }); err != nil {
		return fmt.Errorf("append heartbeat: %w", err)
	}
	return nil
}
