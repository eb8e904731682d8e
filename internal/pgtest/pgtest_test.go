package pgtest_test

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestNewDatabaseIsMigrated(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDatabase(t)

	var walLevel string
	require.NoError(t, db.Pool.QueryRow(context.Background(), "SHOW wal_level").Scan(&walLevel))
	require.Equal(t, "logical", walLevel)

	var tables int
	require.NoError(t, db.Pool.QueryRow(context.Background(),
		"SELECT count(*) FROM pg_tables WHERE tablename IN ('outbox', 'river_job', 'export_batches')").Scan(&tables))
	require.Equal(t, 3, tables)
}

func TestDatabasesAreSeparate(t *testing.T) {
	t.Parallel()
	first := pgtest.NewDatabase(t)
	second := pgtest.NewDatabase(t)
	require.NotEqual(t, first.Name, second.Name)
}
