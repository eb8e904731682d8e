// Package pgtest gives each test its own migrated PostgreSQL database.
//
// With TEST_DATABASE_URL set, databases are created on that server (the URL's
// user needs CREATEDB). Otherwise Main starts a private cluster for the test
// binary and stops it when the tests finish.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/finnest/eventruntime/internal/pgcluster"
	"github.com/finnest/eventruntime/migrations"
)

var (
	adminURL     string
	cluster      *pgcluster.Cluster
	templateOnce sync.Once
	templateName string
	templateErr  error
)

// Main runs the package's tests with a server available and returns the exit
// code for os.Exit. Call it from TestMain.
func Main(m *testing.M) int {
	adminURL = os.Getenv("TEST_DATABASE_URL")
	if adminURL == "" {
		var err error
		cluster, err = pgcluster.Start(context.Background(), pgcluster.Config{})
		if err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: start private postgres: %v\n", err)
			return 1
		}
		adminURL = cluster.URL("postgres")
	}
	code := m.Run()
	if cluster != nil {
		if err := cluster.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop private postgres: %v\n", err)
		}
	}
	return code
}

// Database is a migrated database created for one test.
type Database struct {
	Name string
	Pool *pgxpool.Pool
	URL  string
}

// NewDatabase creates a database from the migrated template, returns a pool on
// it and drops it when the test ends.
func NewDatabase(t testing.TB) *Database {
	t.Helper()
	db, drop, err := create()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Logf("pgtest: %v", err)
		}
	})
	return db
}

// NewExampleDatabase is NewDatabase for runnable examples, which have no
// testing.TB: it panics on failure, and the caller calls drop when done.
func NewExampleDatabase() (db *Database, drop func()) {
	db, dropDatabase, err := create()
	if err != nil {
		panic(fmt.Sprintf("pgtest: %v", err))
	}
	return db, func() { _ = dropDatabase() }
}

func create() (*Database, func() error, error) {
	if adminURL == "" {
		return nil, nil, fmt.Errorf("Main was not called from TestMain")
	}
	ctx := context.Background()

	templateOnce.Do(func() { templateName, templateErr = createTemplate(ctx) })
	if templateErr != nil {
		return nil, nil, fmt.Errorf("create template database: %w", templateErr)
	}

	name := "test_" + randomSuffix()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", redact(adminURL), err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, templateName)); err != nil {
		return nil, nil, fmt.Errorf("create database %s: %w", name, err)
	}

	databaseURL := withDatabase(adminURL, name)
	pool, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to database %s: %w", name, err)
	}
	drop := func() error {
		pool.Close()
		admin, err := pgx.Connect(context.Background(), adminURL)
		if err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		defer admin.Close(context.Background())
		// Replication slots keep a database in use; drop them first.
		_, _ = admin.Exec(context.Background(),
			"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active", name)
		if _, err := admin.Exec(context.Background(), fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	}
	return &Database{Name: name, Pool: pool, URL: databaseURL}, drop, nil
}

// AdminURL returns the URL of the server's maintenance database.
func AdminURL() string { return adminURL }

// createTemplate creates, once per server and schema version, a database with
// every migration applied, which NewDatabase copies.
func createTemplate(ctx context.Context) (string, error) {
	name := "template_eventruntime_" + schemaDigest()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", err
	}
	defer admin.Close(ctx)

	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(728301)"); err != nil {
		return "", err
	}
	defer admin.Exec(ctx, "SELECT pg_advisory_unlock(728301)")

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}

	building := name + "_building"
	_, _ = admin.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", building))
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+building); err != nil {
		return "", err
	}
	pool, err := pgxpool.New(ctx, withDatabase(adminURL, building))
	if err != nil {
		return "", err
	}
	err = migrations.Up(ctx, pool, slog.New(slog.DiscardHandler))
	pool.Close()
	if err != nil {
		return "", err
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s RENAME TO %s", building, name)); err != nil {
		return "", err
	}
	return name, nil
}

// schemaDigest names the template after the migrations and the UTC day, since
// the migrations create partitions relative to the day they run.
func schemaDigest() string {
	hash := sha256.New()
	entries, _ := fs.Glob(migrations.Files(), "*.sql")
	sort.Strings(entries)
	for _, entry := range entries {
		content, _ := fs.ReadFile(migrations.Files(), entry)
		hash.Write([]byte(entry))
		hash.Write(content)
	}
	hash.Write([]byte(time.Now().UTC().Format("20060102")))
	return hex.EncodeToString(hash.Sum(nil))[:12]
}

func withDatabase(rawURL, database string) string {
	parsed, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	parsed.Path = "/" + database
	return parsed.String()
}

func redact(rawURL string) string {
	parsed, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return parsed.Redacted()
}

func randomSuffix() string {
	buf := make([]byte, 6)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}
