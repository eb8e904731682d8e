package worker_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/demo"
	"github.com/finnest/eventruntime/internal/testlog"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/sequin"
	"github.com/finnest/eventruntime/worker"
)

// sequinMessage encodes an event as Sequin's NATS sink would publish it.
func sequinMessage(t *testing.T, p *pipeline, lsn int64, idx int) (*nats.Msg, uuid.UUID) {
	t.Helper()
	event := demo.NewGenerator(uint64(lsn), testTenants).Event()
	event.ID = uuid.Must(uuid.NewV7())
	event.CreatedAt = time.Now().UTC()
	key := sequin.IdempotencyKey(lsn, idx)
	body, err := sequin.Encode(&sequin.Message{
		Action: sequin.ActionInsert,
		Event:  *event,
		Metadata: sequin.Metadata{
			TableSchema: "public", TableName: "outbox", CommitTimestamp: event.CreatedAt,
			CommitLSN: &lsn, CommitIdx: &idx, DatabaseName: p.db.Name, IdempotencyKey: key,
			RecordPKs: []string{event.TenantID, event.ID.String(), event.CreatedAt.Format(time.RFC3339Nano)},
		},
	})
	require.NoError(t, err)
	msg := nats.NewMsg(p.subject)
	msg.Data = body
	msg.Header.Set(nats.MsgIdHdr, key)
	return msg, event.ID
}

func TestConsumerDeduplicates(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{skipStandIn: true})

	conn, err := nats.Connect(p.nats.ClientURL())
	require.NoError(t, err)
	defer conn.Close()

	msg, eventID := sequinMessage(t, p, 27547336, 0)
	require.NoError(t, conn.PublishMsg(msg))
	require.NoError(t, conn.PublishMsg(msg))
	withoutHeaders := nats.NewMsg(p.subject)
	withoutHeaders.Data = msg.Data
	require.NoError(t, conn.PublishMsg(withoutHeaders))
	require.NoError(t, conn.Flush())

	stats := &p.service.Consumer().Stats
	require.Eventually(t, func() bool {
		return stats.Received.Load()+stats.Duplicates.Load() >= 2
	}, 30*time.Second, 50*time.Millisecond)

	require.Equal(t, int64(1), stats.Received.Load())
	require.Equal(t, int64(1), stats.Duplicates.Load(), "the header-less copy passes JetStream and is skipped by the consumer")
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM consumer_idempotency WHERE event_id = $1", eventID))
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM river_job WHERE kind = 'map'"))
	require.Equal(t, 1, count(t, p,
		"SELECT count(*) FROM river_job, jsonb_array_elements(args->'events') e WHERE kind = 'map' AND e->>'id' = $1",
		eventID.String()))
}

func TestConsumerDeadLettersPoison(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{skipStandIn: true})

	conn, err := nats.Connect(p.nats.ClientURL())
	require.NoError(t, err)
	defer conn.Close()

	good, goodID := sequinMessage(t, p, 100, 0)
	nul, nulID := sequinMessage(t, p, 101, 0)
	nulBody := strings.Replace(string(nul.Data), `"payload":{`, `"payload":{"note":"a\u0000b",`, 1)
	require.NotEqual(t, string(nul.Data), nulBody)
	poison := []struct {
		name string
		body string
	}{
		{"MalformedJSON", `{"action":"insert","record":`},
		{"NulEscape", nulBody},
		{"NotAnObject", `[1,2,3]`},
	}
	for _, message := range poison {
		require.NoError(t, conn.Publish(p.subject, []byte(message.body)))
	}
	// A header PostgreSQL cannot store as text must not block the batch.
	badHeader := nats.NewMsg(p.subject)
	badHeader.Data = []byte(`{"action":"insert"`)
	badHeader.Header.Set(nats.MsgIdHdr, "bad-\xff\xfe-id")
	require.NoError(t, conn.PublishMsg(badHeader))
	require.NoError(t, conn.PublishMsg(good))
	require.NoError(t, conn.Flush())

	stats := &p.service.Consumer().Stats
	require.Eventually(t, func() bool {
		return stats.DeadLettered.Load() >= int64(len(poison)+1) && stats.Received.Load() >= 1
	}, 30*time.Second, 50*time.Millisecond)

	require.Equal(t, len(poison)+1, count(t, p, "SELECT count(*) FROM dead_letters WHERE source = 'regulator' AND reason <> ''"))
	require.Zero(t, stats.Failures.Load(), "no batch fails because of a poison message")
	require.Equal(t, 1, count(t, p,
		"SELECT count(*) FROM dead_letters WHERE event_id = $1 AND tenant_id LIKE 'tenant-_' AND reason LIKE '%u0000%'", nulID))
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM consumer_idempotency WHERE event_id = $1", nulID),
		"a dead-lettered event counts as received, so re-drive leaves it alone")
	require.Equal(t, 1, count(t, p, "SELECT count(*) FROM consumer_idempotency WHERE event_id = $1", goodID))
}

func TestConsumerRedeliversAfterDatabaseError(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{skipStandIn: true})
	ctx := context.Background()

	// A constraint that rejects every idempotency row makes each batch's
	// transaction fail, as an outage would.
	_, err := p.db.Pool.Exec(ctx, `ALTER TABLE consumer_idempotency ADD CONSTRAINT reject_all CHECK (false) NOT VALID`)
	require.NoError(t, err)

	conn, err := nats.Connect(p.nats.ClientURL())
	require.NoError(t, err)
	defer conn.Close()
	msg, eventID := sequinMessage(t, p, 200, 0)
	require.NoError(t, conn.PublishMsg(msg))

	stats := &p.service.Consumer().Stats
	require.Eventually(t, func() bool { return stats.Failures.Load() >= 1 }, 30*time.Second, 20*time.Millisecond)
	require.Zero(t, count(t, p, "SELECT count(*) FROM consumer_idempotency"))

	_, err = p.db.Pool.Exec(ctx, `ALTER TABLE consumer_idempotency DROP CONSTRAINT reject_all`)
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		return count(t, p, "SELECT count(*) FROM consumer_idempotency WHERE event_id = $1", eventID) == 1
	}, 30*time.Second, 50*time.Millisecond, "the nakked message must be redelivered")
	require.Zero(t, count(t, p, "SELECT count(*) FROM dead_letters"), "a database error is not poison")
}

func TestConsumerBatchesAvailableMessages(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{skipStandIn: true})
	ctx := t.Context()

	conn, err := nats.Connect(p.nats.ClientURL())
	require.NoError(t, err)
	defer conn.Close()
	js, err := jetstream.New(conn)
	require.NoError(t, err)
	stream, err := js.Stream(ctx, "OUTBOX")
	require.NoError(t, err)

	// 300 messages wait in the stream before the consumer starts.
	for i := range 300 {
		msg, _ := sequinMessage(t, p, int64(5000+i), 0)
		require.NoError(t, conn.PublishMsg(msg))
	}
	require.NoError(t, conn.Flush())

	batches := make(chan int, 16)
	consumer, err := worker.NewConsumer(ctx, worker.ConsumerConfig{
		BatchSize: 256,
		Decoder:   worker.DecodeSequin,
		// Far longer than the test waits, so a fetch that waited this long
		// to fill its batch would fail the test.
		FetchMaxWait: 5 * time.Minute,
		Linger:       200 * time.Millisecond,
		Handler: func(_ context.Context, _ pgx.Tx, events []*outbox.Event) error {
			batches <- len(events)
			return nil
		},
		Name:   "batch-sizes",
		Pool:   p.db.Pool,
		Stream: stream,
	})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- consumer.Run(runCtx) }()
	defer func() {
		stop()
		// The last fetch returns when a message arrives or its wait ends,
		// so publish one message to end it now.
		msg, _ := sequinMessage(t, p, 9999, 0)
		_ = conn.PublishMsg(msg)
		<-done
	}()

	receive := func() int {
		select {
		case n := <-batches:
			return n
		case <-time.After(time.Minute):
			t.Fatal("timed out after a minute waiting for a batch")
			return 0
		}
	}
	require.Equal(t, 256, receive(), "a full batch of what was waiting")
	require.Equal(t, 44, receive(), "the rest after the linger, without waiting to fill the batch")

	// A single message is processed alone once the linger ends.
	msg, _ := sequinMessage(t, p, 7000, 0)
	require.NoError(t, conn.PublishMsg(msg))
	require.Equal(t, 1, receive())
}

func TestConsumerPausesAfterFailedFetch(t *testing.T) {
	t.Parallel()
	p := setupPipeline(t, pipelineOpts{skipStandIn: true})
	ctx := t.Context()

	conn, err := nats.Connect(p.nats.ClientURL())
	require.NoError(t, err)
	defer conn.Close()
	js, err := jetstream.New(conn)
	require.NoError(t, err)
	stream, err := js.Stream(ctx, "OUTBOX")
	require.NoError(t, err)

	var logs testlog.Buffer
	consumer, err := worker.NewConsumer(ctx, worker.ConsumerConfig{
		Decoder:      worker.DecodeSequin,
		FetchMaxWait: 100 * time.Millisecond,
		Handler:      func(context.Context, pgx.Tx, []*outbox.Event) error { return nil },
		Logger:       slog.New(slog.NewJSONHandler(&logs, nil)),
		Name:         "deleted-while-running",
		Pool:         p.db.Pool,
		Stream:       stream,
	})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- consumer.Run(runCtx) }()
	require.Eventually(t, consumer.Healthy, 10*time.Second, 20*time.Millisecond)

	// Every fetch fails once the durable consumer is gone.
	require.NoError(t, stream.DeleteConsumer(ctx, "deleted-while-running"))
	time.Sleep(3 * time.Second)
	stop()
	<-done

	failures := strings.Count(logs.String(), `"event":"consumer.fetch_failed"`)
	require.Positive(t, failures, "the failing fetches must be logged")
	require.LessOrEqual(t, failures, 8, "a failing fetch must be followed by a pause, not retried at once")
}
