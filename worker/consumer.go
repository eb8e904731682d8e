package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/finnest/eventruntime/internal/telemetry"
	"github.com/finnest/eventruntime/outbox"
)

// Decoder turns one NATS message into an outbox event. Any error means the
// message can never be decoded: the consumer terminates it and writes it to
// the dead-letter table with the error as the reason.
type Decoder func(subject string, header nats.Header, data []byte) (*outbox.Event, error)

// BatchHandler does a consumer's work for the events of one fetched batch that
// it has not seen before, inside the batch's transaction. It typically inserts
// River jobs with tx. An error rolls the whole batch back and the messages are
// redelivered later.
type BatchHandler func(ctx context.Context, tx pgx.Tx, events []*outbox.Event) error

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	// AckWait is how long NATS waits for an ack before redelivering. Zero
	// means 60 seconds.
	AckWait time.Duration

	// BatchSize is the most messages fetched and committed together. Zero
	// means 256.
	BatchSize int

	// Decoder decodes messages. Required.
	Decoder Decoder

	// FetchMaxWait is how long a fetch waits for a message when none is
	// available. Zero means 500 milliseconds.
	FetchMaxWait time.Duration

	// Linger is how long a batch that is not full waits for more messages
	// after its first. Zero means 100 milliseconds.
	Linger time.Duration

	// Handler does the consumer's work. Required.
	Handler BatchHandler

	// Logger receives structured logs. Nil discards them.
	Logger *slog.Logger

	// MaxAckPending is the most unacknowledged messages NATS hands out. Zero
	// means 8 times BatchSize.
	MaxAckPending int

	// Name is the durable consumer's name, also the key of its rows in
	// consumer_idempotency. Required.
	Name string

	// Pool is the database. Required.
	Pool *pgxpool.Pool

	// Stream is the stream to consume. Required.
	Stream jetstream.Stream
}

// ConsumerStats counts what a Consumer has done since it started.
type ConsumerStats struct {
	Batches      atomic.Int64
	DeadLettered atomic.Int64
	Duplicates   atomic.Int64
	Failures     atomic.Int64
	Received     atomic.Int64
}

// Consumer reads a JetStream stream through a durable pull consumer and, for
// each fetched batch, records the event ids in consumer_idempotency, runs the
// handler and commits in one transaction, then acknowledges.
type Consumer struct {
	cfg       ConsumerConfig
	consumer  jetstream.Consumer
	lastFetch atomic.Int64 // Unix nanoseconds of the last completed fetch
	logger    *slog.Logger
	Stats     ConsumerStats
}

// Healthy reports whether the consumer completed a fetch recently, so a
// stuck or stopped fetch loop makes the service unready.
func (c *Consumer) Healthy() bool {
	last := c.lastFetch.Load()
	return last != 0 && time.Since(time.Unix(0, last)) < 2*c.cfg.FetchMaxWait+30*time.Second
}

// NewConsumer creates or updates the durable consumer on the stream.
func NewConsumer(ctx context.Context, cfg ConsumerConfig) (*Consumer, error) {
	if cfg.Name == "" || cfg.Pool == nil || cfg.Stream == nil || cfg.Decoder == nil || cfg.Handler == nil {
		return nil, errors.New("consumer name, pool, stream, decoder and handler are required")
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 60 * time.Second
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 256
	}
	if cfg.FetchMaxWait == 0 {
		cfg.FetchMaxWait = 500 * time.Millisecond
	}
	if cfg.Linger == 0 {
		cfg.Linger = 100 * time.Millisecond
	}
	if cfg.MaxAckPending == 0 {
		cfg.MaxAckPending = 8 * cfg.BatchSize
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("consumer", cfg.Name)

	consumer, err := cfg.Stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       cfg.Name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: cfg.MaxAckPending,
		MaxDeliver:    -1,
	})
	if err != nil {
		return nil, fmt.Errorf("create durable consumer %s: %w", cfg.Name, err)
	}
	return &Consumer{cfg: cfg, consumer: consumer, logger: logger}, nil
}

// Run fetches and processes batches until ctx is done. Once ctx is
// cancelled it starts no new fetch, and a fetch under way ends within
// FetchMaxWait plus Linger. It finishes the current batch with a context
// that is not cancelled, so no committed batch goes unacknowledged.
func (c *Consumer) Run(ctx context.Context) error {
	c.logger.Info("consumer started", "event", "consumer.started")
	defer c.logger.Info("consumer stopped", "event", "consumer.stopped")

	for ctx.Err() == nil {
		// Take the messages available now, or wait up to FetchMaxWait for
		// one. Then, unless the batch is full, wait up to Linger for more.
		// A steady flow thus becomes a few large map jobs a second instead
		// of many small ones. River fetches a queue's jobs at most every
		// 100 ms (FetchCooldown), which caps the jobs it runs per second.
		messages, err := c.fetch(c.cfg.BatchSize, 0)
		if err == nil && len(messages) == 0 {
			messages, err = c.fetch(1, c.cfg.FetchMaxWait)
		}
		if err == nil && len(messages) > 0 && len(messages) < c.cfg.BatchSize {
			var more []jetstream.Msg
			more, err = c.fetch(c.cfg.BatchSize-len(messages), c.cfg.Linger)
			messages = append(messages, more...)
		}
		if err != nil {
			c.logger.Warn("fetch failed", "event", "consumer.fetch_failed", "error", err, "messages", len(messages))
		}
		if len(messages) > 0 {
			c.process(context.WithoutCancel(ctx), messages)
		}
		if err != nil {
			sleep(ctx, time.Second)
		}
	}
	return nil
}

// fetch pulls up to n messages. A zero wait returns only the messages
// available now, and otherwise the pull waits up to wait for n messages. It
// returns the messages received before an error along with the error. Only
// a fetch without an error counts for Healthy.
func (c *Consumer) fetch(n int, wait time.Duration) ([]jetstream.Msg, error) {
	var batch jetstream.MessageBatch
	var err error
	if wait == 0 {
		batch, err = c.consumer.FetchNoWait(n)
	} else {
		batch, err = c.consumer.Fetch(n, jetstream.FetchMaxWait(wait))
	}
	if err != nil {
		return nil, err
	}
	var messages []jetstream.Msg
	for msg := range batch.Messages() {
		messages = append(messages, msg)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, jetstream.ErrNoMessages) {
		return messages, err
	}
	c.lastFetch.Store(time.Now().UnixNano())
	return messages, nil
}

type deadLetter struct {
	event   *outbox.Event
	msg     jetstream.Msg
	reason  string
	msgID   string
	subject string
}

// process handles one batch: decode, then one transaction, then acks.
func (c *Consumer) process(ctx context.Context, messages []jetstream.Msg) {
	var (
		events  []*outbox.Event
		good    []jetstream.Msg
		poison  []deadLetter
		inBatch = make(map[uuid.UUID]bool, len(messages))
	)
	for _, msg := range messages {
		event, err := c.cfg.Decoder(msg.Subject(), msg.Headers(), msg.Data())
		if err != nil {
			poison = append(poison, deadLetter{
				event: event, msg: msg, reason: err.Error(),
				msgID: msg.Headers().Get(nats.MsgIdHdr), subject: msg.Subject(),
			})
			continue
		}
		good = append(good, msg)
		if inBatch[event.ID] {
			c.Stats.Duplicates.Add(1)
			continue
		}
		inBatch[event.ID] = true
		events = append(events, event)
	}

	traceParents := make([]string, 0, len(events))
	for _, event := range events {
		traceParents = append(traceParents, event.TraceParent)
	}
	ctx, span := telemetry.Tracer().Start(ctx, "consumer.batch", trace.WithLinks(telemetry.Links(traceParents)...),
		trace.WithAttributes(attribute.String("consumer", c.cfg.Name), attribute.Int("messages", len(messages))))
	defer span.End()

	fresh, err := c.commit(ctx, events, poison)
	if err != nil {
		span.SetStatus(codes.Error, "batch failed")
		c.Stats.Failures.Add(1)
		c.nakAll(messages, err)
		return
	}

	for _, msg := range good {
		if err := msg.Ack(); err != nil {
			c.logger.Warn("ack failed; the message will be redelivered and skipped as a duplicate",
				"event", "consumer.ack_failed", "error", err)
		}
	}
	for _, letter := range poison {
		if err := letter.msg.TermWithReason("dead-lettered: " + truncate(letter.reason, 200)); err != nil {
			c.logger.Warn("term failed", "event", "consumer.term_failed", "error", err, "message_id", letter.msgID)
		}
		c.logger.Error("message dead-lettered", "event", "consumer.dead_lettered",
			"message_id", letter.msgID, "subject", letter.subject, "reason", letter.reason)
	}

	c.Stats.Batches.Add(1)
	c.Stats.Received.Add(int64(fresh))
	c.Stats.Duplicates.Add(int64(len(events) - fresh))
	c.Stats.DeadLettered.Add(int64(len(poison)))
}

// commit writes the batch's dead letters and idempotency rows, runs the
// handler on the events not seen before, and commits. It returns how many
// events were new.
func (c *Consumer) commit(ctx context.Context, events []*outbox.Event, poison []deadLetter) (int, error) {
	var fresh int
	err := pgx.BeginFunc(ctx, c.cfg.Pool, func(tx pgx.Tx) error {
		if err := c.insertDeadLetters(ctx, tx, poison); err != nil {
			return err
		}
		if len(events) == 0 {
			return nil
		}

		handled, err := recordAndHandle(ctx, tx, c.cfg.Name, events, c.cfg.Handler)
		fresh = len(handled)
		return err
	})
	return fresh, err
}

func (c *Consumer) insertDeadLetters(ctx context.Context, tx pgx.Tx, poison []deadLetter) error {
	if len(poison) == 0 {
		return nil
	}
	batch := &pgx.Batch{}
	for _, letter := range poison {
		// Every text column gets valid UTF-8 without NUL bytes, because a
		// poison message's subject, header or record may carry either, and
		// a failing dead-letter insert would fail the whole batch forever.
		var tenantID, ecosystem *string
		var eventID *uuid.UUID
		if letter.event != nil {
			tenantID = nonEmptyText(letter.event.TenantID)
			ecosystem = nonEmptyText(letter.event.Ecosystem)
			if letter.event.ID != uuid.Nil {
				eventID = &letter.event.ID
			}
		}
		batch.Queue(`
			INSERT INTO dead_letters (tenant_id, ecosystem, source, subject, message_id, event_id, reason, payload)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			tenantID, ecosystem, c.cfg.Name, cleanText(letter.subject), cleanText(letter.msgID), eventID,
			cleanText(letter.reason), letter.msg.Data())
		if eventID != nil {
			// A dead-lettered event counts as received, so re-drive does not
			// feed it to the handler as a transport loss.
			batch.Queue(`
				INSERT INTO consumer_idempotency (consumer, event_id, tenant_id, ecosystem)
				VALUES ($1, $2, coalesce($3, ''), coalesce($4, '')) ON CONFLICT DO NOTHING`,
				c.cfg.Name, *eventID, tenantID, ecosystem)
		}
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("write %d dead letters: %w", len(poison), err)
	}
	return nil
}

// nakAll requests redelivery of every message of a failed batch after a
// delay that grows with the number of deliveries, up to one minute.
func (c *Consumer) nakAll(messages []jetstream.Msg, cause error) {
	var deliveries uint64 = 1
	if meta, err := messages[0].Metadata(); err == nil {
		deliveries = meta.NumDelivered
	}
	delay := time.Duration(math.Min(float64(time.Second)*math.Pow(2, float64(deliveries-1)), float64(time.Minute)))
	c.logger.Error("batch failed; messages will be redelivered", "event", "consumer.batch_failed",
		"error", cause, "messages", len(messages), "deliveries", deliveries, "retry_in", delay)
	for _, msg := range messages {
		_ = msg.NakWithDelay(delay)
	}
}

func truncate(text string, max int) string {
	if len(text) <= max {
		return text
	}
	return text[:max]
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// cleanText returns text as valid UTF-8 without NUL bytes, which PostgreSQL
// text columns reject.
func cleanText(text string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(text, "\uFFFD"), "\x00", "")
}

func nonEmptyText(text string) *string {
	if text == "" {
		return nil
	}
	cleaned := cleanText(text)
	return &cleaned
}
