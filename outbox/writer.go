package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Writer defaults.
const (
	DefaultWriterBatchTimeout = 10 * time.Second
	DefaultWriterMaxBatch     = 500
	DefaultWriterMaxBytes     = 8 << 20
)

// Errors that Writer.Write wraps, for errors.Is.
var (
	// ErrWriterClosed is returned by Write after Close.
	ErrWriterClosed = errors.New("outbox writer is closed")

	// ErrOutcomeUnknown marks a batch whose COMMIT was sent but whose reply
	// never arrived, usually because the connection or the server died. The
	// events may or may not be in the outbox. Callers must treat them as not
	// durable, but a later reader may still find them.
	ErrOutcomeUnknown = errors.New("outcome of the outbox commit is unknown")
)

// WriterConfig configures a Writer. The zero value of each field means its
// default.
type WriterConfig struct {
	// Appender validates and inserts each batch. The zero value uses
	// DefaultMaxPayloadBytes.
	Appender Appender

	// BatchTimeout bounds one batch: acquire, insert, commit and the retry.
	// Zero means DefaultWriterBatchTimeout.
	BatchTimeout time.Duration

	// Concurrency is how many batches may be in flight at once, each on its
	// own connection. Zero means 1, which gives the largest batches.
	Concurrency int

	// Logger receives batch failures and retries. Nil discards them.
	Logger *slog.Logger

	// MaxBatch is the maximum number of events in one batch. Zero means
	// DefaultWriterMaxBatch.
	MaxBatch int

	// MaxBatchBytes caps the summed payload size of one batch, so one
	// statement stays small. A single event larger than the cap still goes
	// out alone. Zero means DefaultWriterMaxBytes.
	MaxBatchBytes int
}

// Writer appends single events to the outbox outside any business
// transaction, with group commit: events that arrive while a commit is running
// share the next INSERT and COMMIT. Write blocks until the commit that holds
// its event returns, so a nil error means the event is durable.
//
// Writer keeps no buffer of its own. Each event stays with the goroutine that
// called Write until a batch takes it. If the process dies, no Write has
// returned nil for an event that was not committed.
//
// A Writer is safe for concurrent use. Close stops it.
type Writer struct {
	cfg      WriterConfig
	logger   *slog.Logger
	pool     *pgxpool.Pool
	requests chan *writeRequest
	stop     chan struct{}
	stopOnce sync.Once
	loops    sync.WaitGroup
}

// writeRequest is one caller waiting in Write. result is buffered, so the
// batch never blocks on a caller that stopped waiting.
type writeRequest struct {
	ctx    context.Context
	event  *Event
	result chan error
}

// NewWriter starts a Writer on pool. The pool should allow at least
// cfg.Concurrency connections for the writer besides its other users.
func NewWriter(pool *pgxpool.Pool, cfg WriterConfig) *Writer {
	if cfg.BatchTimeout <= 0 {
		cfg.BatchTimeout = DefaultWriterBatchTimeout
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultWriterMaxBatch
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = DefaultWriterMaxBytes
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	w := &Writer{
		cfg:      cfg,
		logger:   logger,
		pool:     pool,
		requests: make(chan *writeRequest),
		stop:     make(chan struct{}),
	}
	for range cfg.Concurrency {
		w.loops.Add(1)
		go w.loop()
	}
	return w
}

// Write validates event, fills in a zero ID and OccurredAt in place, and
// blocks until the batch that holds it has committed or failed, or ctx ends.
// It returns nil only when the event is durable in the outbox.
//
// An invalid event fails at once with an error wrapping ErrInvalidEvent and
// never joins a batch. When ctx ends after a batch took the event, Write
// returns ctx's error, and the event may still be committed.
func (w *Writer) Write(ctx context.Context, event *Event) error {
	if err := event.Validate(w.cfg.Appender.MaxPayloadBytes); err != nil {
		return fmt.Errorf("event %s: %w", event.ID, err)
	}
	if event.ID == uuid.Nil {
		id, err := uuid.NewV7()
		if err != nil {
			return fmt.Errorf("generate event id: %w", err)
		}
		event.ID = id
	}
	if event.OccurredAt.IsZero() {
		event.OccurredAt = time.Now().UTC()
	}

	request := &writeRequest{ctx: ctx, event: event, result: make(chan error, 1)}
	select {
	case w.requests <- request:
	case <-w.stop:
		return ErrWriterClosed
	case <-ctx.Done():
		return fmt.Errorf("wait to write event %s: %w", event.ID, ctx.Err())
	}

	select {
	case err := <-request.result:
		return err
	case <-ctx.Done():
		return fmt.Errorf("wait for commit of event %s: %w", event.ID, ctx.Err())
	}
}

// Close stops taking events and waits for the batches in flight to finish.
// Writes that have not joined a batch return ErrWriterClosed.
func (w *Writer) Close() {
	w.stopOnce.Do(func() { close(w.stop) })
	w.loops.Wait()
}

// loop runs batches one after another: it waits for one caller, takes every
// other caller already waiting up to the batch limits, and commits them.
func (w *Writer) loop() {
	defer w.loops.Done()
	var carry *writeRequest
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-w.requests:
			case <-w.stop:
				return
			}
		}

		batch := []*writeRequest{first}
		size := len(first.event.Payload)
	drain:
		for len(batch) < w.cfg.MaxBatch {
			select {
			case request := <-w.requests:
				if size+len(request.event.Payload) > w.cfg.MaxBatchBytes {
					carry = request
					break drain
				}
				batch = append(batch, request)
				size += len(request.event.Payload)
			default:
				break drain
			}
		}
		w.commitBatch(batch)
	}
}

// commitBatch writes the callers' events that are still awaited and sends each
// caller its own result.
func (w *Writer) commitBatch(batch []*writeRequest) {
	live := batch[:0]
	for _, request := range batch {
		if err := request.ctx.Err(); err != nil {
			request.result <- fmt.Errorf("event %s left before its batch: %w", request.event.ID, err)
			continue
		}
		live = append(live, request)
	}
	if len(live) == 0 {
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.BatchTimeout)
	defer cancel()

	events := make([]*Event, len(live))
	for i, request := range live {
		events[i] = request.event
	}
	err := w.insertWithRetry(ctx, events)
	if err != nil && isDataError(err) && len(live) > 1 {
		// One event broke the statement for all. Write each alone, so only
		// the caller of the bad event gets the error.
		w.logger.Warn("outbox batch rejected; writing its events one by one", "event", "outbox.writer.batch_split",
			"batch_size", len(live), "first_event_id", events[0].ID, "error", err)
		for _, request := range live {
			request.result <- w.insertWithRetry(ctx, []*Event{request.event})
		}
		return
	}
	if err != nil {
		w.logger.Error("outbox batch failed", "event", "outbox.writer.batch_failed",
			"batch_size", len(live), "first_event_id", events[0].ID, "error", err)
	}
	for _, request := range live {
		request.result <- err
	}
}

// insertWithRetry inserts events in one transaction. When the attempt fails
// before COMMIT was sent for a reason other than the data, nothing was
// written, so it retries once on a new connection.
func (w *Writer) insertWithRetry(ctx context.Context, events []*Event) error {
	err, committing := w.insertPooled(ctx, events)
	if err == nil || committing || isDataError(err) || ctx.Err() != nil {
		return err
	}

	w.logger.Warn("outbox batch failed before commit; retrying on a new connection",
		"event", "outbox.writer.batch_retry", "batch_size", len(events), "first_event_id", events[0].ID,
		"error", err)
	retryErr := w.insertNewConnection(ctx, events)
	if retryErr != nil {
		return fmt.Errorf("%w (first attempt: %v)", retryErr, err)
	}
	return nil
}

// insertPooled runs one attempt on a pooled connection. committing reports
// that the error came from COMMIT.
func (w *Writer) insertPooled(ctx context.Context, events []*Event) (err error, committing bool) {
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection for %d outbox events: %w", len(events), err), false
	}
	defer conn.Release()
	return w.insertOn(ctx, conn.Conn(), events)
}

// insertNewConnection runs one attempt on a connection opened for it, because
// the pool's idle connections may be as dead as the one that just failed.
func (w *Writer) insertNewConnection(ctx context.Context, events []*Event) error {
	conn, err := pgx.ConnectConfig(ctx, w.pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect for retry of %d outbox events: %w", len(events), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err, _ = w.insertOn(ctx, conn, events)
	return err
}

func (w *Writer) insertOn(ctx context.Context, conn *pgx.Conn, events []*Event) (err error, committing bool) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction for %d outbox events: %w", len(events), err), false
	}
	if err := w.cfg.Appender.Append(ctx, tx, events...); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return err, false
	}
	if err := tx.Commit(ctx); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return fmt.Errorf("commit %d outbox events (first id %s): %w", len(events), events[0].ID, err), true
		}
		return fmt.Errorf("commit %d outbox events (first id %s): %w: %w",
			len(events), events[0].ID, ErrOutcomeUnknown, err), true
	}
	return nil, false
}

// isDataError reports whether PostgreSQL rejected the statement because of
// the values in it (SQLSTATE class 22, data exception, or 23, integrity
// constraint violation), and whether the event failed validation.
func isDataError(err error) bool {
	if errors.Is(err, ErrInvalidEvent) {
		return true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return len(pgErr.Code) == 5 && (pgErr.Code[:2] == "22" || pgErr.Code[:2] == "23")
}
