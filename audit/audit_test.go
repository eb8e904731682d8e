package audit_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/audit"
	"github.com/finnest/eventruntime/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func appendEntry(t *testing.T, db *pgtest.Database, entry audit.Entry) {
	t.Helper()
	require.NoError(t, pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
		return audit.Append(context.Background(), tx, entry)
	}))
}

func sampleEntry(n int) audit.Entry {
	return audit.Entry{
		TenantID: "tenant-a", Ecosystem: "ofb", Actor: "alice", Action: "webhook.subscription.updated",
		Subject: fmt.Sprintf("webhook_subscription:%d", n),
		Old:     map[string]any{"url": "https://example.com/a", "n": n},
		New:     map[string]any{"url": "https://example.com/b", "n": n},
	}
}

func TestAppendBuildsChain(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	ctx := context.Background()

	for i := range 5 {
		appendEntry(t, db, sampleEntry(i))
	}
	appendEntry(t, db, audit.Entry{
		TenantID: "tenant-a", Ecosystem: "ofb", Actor: "alice", Action: "webhook.subscription.created",
		Subject: "webhook_subscription:new", New: map[string]any{"url": "https://example.com"},
	})

	result, err := audit.Verify(ctx, db.Pool)
	require.NoError(t, err)
	require.True(t, result.Intact(), "reason: %s", result.Reason)
	require.Equal(t, int64(6), result.Rows)

	var prev string
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT prev_hash FROM audit_ledger ORDER BY id LIMIT 1").Scan(&prev))
	require.Equal(t, audit.GenesisHash, prev)

	var oldHash *string
	require.NoError(t, db.Pool.QueryRow(ctx,
		"SELECT old_hash FROM audit_ledger WHERE action = 'webhook.subscription.created'").Scan(&oldHash))
	require.Nil(t, oldHash, "a creation has no old value")

	want, err := audit.ValueHash(map[string]any{"n": 0, "url": "https://example.com/b"})
	require.NoError(t, err)
	var newHash string
	require.NoError(t, db.Pool.QueryRow(ctx,
		"SELECT new_hash FROM audit_ledger WHERE subject = 'webhook_subscription:0'").Scan(&newHash))
	require.Equal(t, want, newHash, "the stored hash is of the canonical JSON, whatever the key order")
}

func TestAppendConcurrentKeepsOneChain(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	ctx := context.Background()

	const writers, perWriter = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				errs <- pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
					return audit.Append(ctx, tx, sampleEntry(w*100+i))
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	result, err := audit.Verify(ctx, db.Pool)
	require.NoError(t, err)
	require.True(t, result.Intact(), "first broken row %d: %s", result.FirstBrokenID, result.Reason)
	require.Equal(t, int64(writers*perWriter), result.Rows)

	var distinctPrev int
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(DISTINCT prev_hash) FROM audit_ledger").Scan(&distinctPrev))
	require.Equal(t, writers*perWriter, distinctPrev, "no two rows may share a predecessor")
}

func TestAppendRollbackLeavesChainIntact(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	ctx := context.Background()

	appendEntry(t, db, sampleEntry(1))
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if err := audit.Append(ctx, tx, sampleEntry(2)); err != nil {
			return err
		}
		return fmt.Errorf("roll back on purpose")
	})
	require.Error(t, err)
	appendEntry(t, db, sampleEntry(3))

	result, err := audit.Verify(ctx, db.Pool)
	require.NoError(t, err)
	require.True(t, result.Intact(), "a gap in ids from a rollback is not a break: %s", result.Reason)
	require.Equal(t, int64(2), result.Rows)
}

func TestAppendRejectsRepeatableRead(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	ctx := context.Background()

	tx, err := db.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	err = audit.Append(ctx, tx, sampleEntry(1))
	require.ErrorIs(t, err, audit.ErrIsolation)
}

func TestAppendRejectsMissingFields(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	ctx := context.Background()

	entry := sampleEntry(1)
	entry.Actor = ""
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error { return audit.Append(ctx, tx, entry) })
	require.ErrorContains(t, err, "actor is missing")
}

func TestLedgerRejectsUpdate(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	appendEntry(t, db, sampleEntry(1))
	_, err := db.Pool.Exec(context.Background(), "UPDATE audit_ledger SET actor = 'mallory'")
	require.ErrorContains(t, err, "append-only")
}

// tamper runs statement with the append-only trigger disabled, as a superuser
// could, and enables it again.
func tamper(t *testing.T, db *pgtest.Database, statement string) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "ALTER TABLE audit_ledger DISABLE TRIGGER audit_ledger_append_only"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, statement); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "ALTER TABLE audit_ledger ENABLE TRIGGER audit_ledger_append_only")
		return err
	}))
}

func TestVerifyDetectsAlteredRow(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	ctx := context.Background()
	for i := range 4 {
		appendEntry(t, db, sampleEntry(i))
	}
	var thirdID int64
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT id FROM audit_ledger ORDER BY id OFFSET 2 LIMIT 1").Scan(&thirdID))

	tamper(t, db, fmt.Sprintf("UPDATE audit_ledger SET actor = 'mallory' WHERE id = %d", thirdID))

	result, err := audit.Verify(ctx, db.Pool)
	require.NoError(t, err)
	require.False(t, result.Intact())
	require.Equal(t, thirdID, result.FirstBrokenID)
	require.Contains(t, result.Reason, "altered")
}

func TestVerifyDetectsForgedRowHash(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	ctx := context.Background()
	for i := range 3 {
		appendEntry(t, db, sampleEntry(i))
	}
	var ids []int64
	rows, err := db.Pool.Query(ctx, "SELECT id FROM audit_ledger ORDER BY id")
	require.NoError(t, err)
	ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)

	tamper(t, db, fmt.Sprintf("UPDATE audit_ledger SET row_hash = repeat('a', 64) WHERE id = %d", ids[1]))

	result, err := audit.Verify(ctx, db.Pool)
	require.NoError(t, err)
	require.Equal(t, ids[1], result.FirstBrokenID, "the row's own hash no longer matches")
}

func TestVerifyDetectsDeletedRow(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	ctx := context.Background()
	for i := range 4 {
		appendEntry(t, db, sampleEntry(i))
	}
	rows, err := db.Pool.Query(ctx, "SELECT id FROM audit_ledger ORDER BY id")
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)

	tamper(t, db, fmt.Sprintf("DELETE FROM audit_ledger WHERE id = %d", ids[1]))

	result, err := audit.Verify(ctx, db.Pool)
	require.NoError(t, err)
	require.Equal(t, ids[2], result.FirstBrokenID)
	require.Contains(t, result.Reason, "prev_hash")
}

func TestVerifyEmptyLedger(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)
	result, err := audit.Verify(context.Background(), db.Pool)
	require.NoError(t, err)
	require.True(t, result.Intact())
	require.Zero(t, result.Rows)
}
