package outbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/outbox"
)

// blockOutbox holds a lock that makes every INSERT into outbox wait, and
// returns the function that releases it.
func blockOutbox(t *testing.T, db *pgtest.Database) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "LOCK TABLE outbox IN SHARE MODE")
	require.NoError(t, err)
	return func() { require.NoError(t, tx.Commit(ctx)) }
}

// waitForLockWaiters waits until n sessions wait for a lock.
func waitForLockWaiters(t *testing.T, db *pgtest.Database, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		var waiting int
		err := db.Pool.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'").
			Scan(&waiting)
		return err == nil && waiting >= n
	}, 10*time.Second, 10*time.Millisecond)
}

func TestWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ConcurrentWritesShareOneCommit", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		writer := outbox.NewWriter(db.Pool, outbox.WriterConfig{})
		t.Cleanup(writer.Close)

		release := blockOutbox(t, db)
		first := validEvent()
		firstDone := make(chan error, 1)
		go func() { firstDone <- writer.Write(ctx, first) }()
		waitForLockWaiters(t, db, 1)

		// These callers arrive while the first batch waits, so they must all
		// go out together in the next one.
		const callers = 50
		var wg sync.WaitGroup
		errs := make([]error, callers)
		events := make([]*outbox.Event, callers)
		for i := range callers {
			events[i] = validEvent()
			events[i].AggregateID = fmt.Sprintf("claim-%d", i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = writer.Write(ctx, events[i])
			}()
		}
		time.Sleep(300 * time.Millisecond)
		release()
		wg.Wait()
		require.NoError(t, <-firstDone)
		for i, err := range errs {
			require.NoError(t, err, "caller %d", i)
		}

		var rows, transactions int
		err := db.Pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT xmin::text) FROM outbox").Scan(&rows, &transactions)
		require.NoError(t, err)
		require.Equal(t, callers+1, rows)
		require.Equal(t, 2, transactions, "the first event alone, then all waiting callers in one transaction")
		for _, event := range events {
			require.Equal(t, uuid.Version(7), event.ID.Version())
		}
	})

	t.Run("InvalidEventFailsOnlyItsCaller", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		writer := outbox.NewWriter(db.Pool, outbox.WriterConfig{})
		t.Cleanup(writer.Close)

		bad := validEvent()
		bad.Payload = []byte(`{"a":"\u0000"}`)
		err := writer.Write(ctx, bad)
		require.ErrorIs(t, err, outbox.ErrInvalidEvent)
		require.NoError(t, writer.Write(ctx, validEvent()))

		var rows int
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&rows))
		require.Equal(t, 1, rows)
	})

	t.Run("RejectedRowFailsOnlyItsCaller", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		_, err := db.Pool.Exec(ctx, "ALTER TABLE outbox ADD CONSTRAINT reject_poison CHECK (aggregate_id <> 'poison')")
		require.NoError(t, err)
		var logs bytes.Buffer
		var logsMu sync.Mutex
		logger := slog.New(slog.NewJSONHandler(&lockedWriter{buffer: &logs, mu: &logsMu}, nil))
		writer := outbox.NewWriter(db.Pool, outbox.WriterConfig{Logger: logger})
		t.Cleanup(writer.Close)

		release := blockOutbox(t, db)
		firstDone := make(chan error, 1)
		go func() { firstDone <- writer.Write(ctx, validEvent()) }()
		waitForLockWaiters(t, db, 1)

		names := []string{"good-1", "poison", "good-2", "good-3"}
		errs := make([]error, len(names))
		var wg sync.WaitGroup
		for i, name := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				event := validEvent()
				event.AggregateID = name
				errs[i] = writer.Write(ctx, event)
			}()
		}
		time.Sleep(300 * time.Millisecond)
		release()
		wg.Wait()
		require.NoError(t, <-firstDone)

		for i, name := range names {
			if name == "poison" {
				var pgErr *pgconn.PgError
				require.ErrorAs(t, errs[i], &pgErr)
				require.Equal(t, "23514", pgErr.Code)
				continue
			}
			require.NoError(t, errs[i], name)
		}
		var rows int
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&rows))
		require.Equal(t, 4, rows)
		logsMu.Lock()
		require.Contains(t, logs.String(), `"event":"outbox.writer.batch_split"`)
		logsMu.Unlock()
	})

	t.Run("CancelledCallerIsNotWritten", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		writer := outbox.NewWriter(db.Pool, outbox.WriterConfig{})
		t.Cleanup(writer.Close)

		release := blockOutbox(t, db)
		firstDone := make(chan error, 1)
		go func() { firstDone <- writer.Write(ctx, validEvent()) }()
		waitForLockWaiters(t, db, 1)

		cancelled, cancel := context.WithCancel(ctx)
		leftDone := make(chan error, 1)
		go func() { leftDone <- writer.Write(cancelled, validEvent()) }()
		time.Sleep(100 * time.Millisecond)
		cancel()
		require.ErrorIs(t, <-leftDone, context.Canceled)
		release()
		require.NoError(t, <-firstDone)

		var rows int
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&rows))
		require.Equal(t, 1, rows)
	})

	t.Run("WriteAfterCloseFails", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		writer := outbox.NewWriter(db.Pool, outbox.WriterConfig{})
		writer.Close()

		err := writer.Write(ctx, validEvent())
		require.ErrorIs(t, err, outbox.ErrWriterClosed)
	})

	t.Run("DatabaseDownFailsCallers", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		config := db.Pool.Config().Copy()
		config.ConnConfig.Port = 1 // nothing listens on port 1 of 127.0.0.1
		config.ConnConfig.Host = "127.0.0.1"
		config.ConnConfig.ConnectTimeout = time.Second
		pool, err := pgxpool.NewWithConfig(ctx, config)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		writer := outbox.NewWriter(pool, outbox.WriterConfig{BatchTimeout: 5 * time.Second})
		t.Cleanup(writer.Close)

		err = writer.Write(ctx, validEvent())
		require.Error(t, err)
		require.False(t, errors.Is(err, outbox.ErrInvalidEvent))
		require.ErrorContains(t, err, "first attempt")
	})
}

type lockedWriter struct {
	buffer *bytes.Buffer
	mu     *sync.Mutex
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buffer.Write(p)
}
