// Package migrations owns the database schema: River's own tables and this
// project's goose migrations, applied together by Up.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

//go:embed *.sql
var files embed.FS

// Up applies River's migrations, then this project's, and logs what it
// applied. It is safe to run concurrently and repeatedly: both tools take
// their own locks and skip what is already applied.
func Up(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: logger})
	if err != nil {
		return fmt.Errorf("create River migrator: %w", err)
	}
	riverResult, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return fmt.Errorf("apply River migrations: %w", err)
	}
	for _, version := range riverResult.Versions {
		logger.Info("migration applied", "event", "migrate.applied", "source", "river", "version", version.Version)
	}

	provider, db, err := newProvider(pool)
	if err != nil {
		return err
	}
	defer db.Close()
	results, err := provider.Up(ctx)
	if err != nil {
		return fmt.Errorf("apply eventruntime migrations: %w", err)
	}
	for _, result := range results {
		logger.Info("migration applied", "event", "migrate.applied", "source", "eventruntime",
			"version", result.Source.Version, "file", result.Source.Path)
	}
	return nil
}

// Status describes one migration and whether it is applied.
type Status struct {
	Applied bool
	Source  string
	Version int64
}

// ListStatus returns every known migration of River and of this project, in
// order, with whether the database has it.
func ListStatus(ctx context.Context, pool *pgxpool.Pool) ([]Status, error) {
	var statuses []Status

	migrator, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return nil, fmt.Errorf("create River migrator: %w", err)
	}
	applied := map[int]bool{}
	if riverApplied, err := migrator.ExistingVersions(ctx); err == nil {
		for _, version := range riverApplied {
			applied[version.Version] = true
		}
	}
	for _, version := range migrator.AllVersions() {
		statuses = append(statuses, Status{Applied: applied[version.Version], Source: "river", Version: int64(version.Version)})
	}

	provider, db, err := newProvider(pool)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	gooseStatuses, err := provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("read eventruntime migration status: %w", err)
	}
	for _, status := range gooseStatuses {
		statuses = append(statuses, Status{
			Applied: status.State == goose.StateApplied,
			Source:  "eventruntime",
			Version: status.Source.Version,
		})
	}
	return statuses, nil
}

func newProvider(pool *pgxpool.Pool) (*goose.Provider, *sql.DB, error) {
	db := stdlib.OpenDBFromPool(pool)
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("create migration lock: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, files, goose.WithSessionLocker(locker))
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("load eventruntime migrations: %w", err)
	}
	return provider, db, nil
}

// Files returns the embedded SQL migrations.
func Files() fs.FS { return files }
