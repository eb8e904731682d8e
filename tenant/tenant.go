// Package tenant reads and writes each tenant's settings per ecosystem, kept
// in the tenant_config table. Callers read the table on each use, so a change
// takes effect without a restart.
package tenant

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Submission modes.
const (
	ModeNearRealTime = "near_real_time"
	ModeScheduled    = "scheduled"
)

// ErrNotFound is returned when a tenant has no settings for an ecosystem.
var ErrNotFound = errors.New("tenant configuration not found")

// Querier is the part of pgx that this package uses; a pool, connection or
// transaction satisfies it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Config is one tenant's settings for one ecosystem.
type Config struct {
	ApprovalRequired  bool
	CaptureDurability string
	ClientID          string
	// Credentials maps a credential name ("certificate", "private_key") to a
	// reference: "file:/path" or "env:NAME". Never a secret value.
	Credentials    map[string]string
	DryRun         bool
	Ecosystem      string
	Enabled        bool
	Environment    string
	FlushInterval  time.Duration
	OrganisationID string
	SubmissionMode string
	TenantID       string
	UpdatedAt      time.Time
}

const selectColumns = `tenant_id, ecosystem, enabled, environment, organisation_id, client_id, credentials,
	submission_mode, flush_interval, dry_run, approval_required, capture_durability, updated_at`

// Get returns the settings of tenantID for ecosystem, or ErrNotFound.
func Get(ctx context.Context, q Querier, tenantID, ecosystem string) (*Config, error) {
	rows, err := q.Query(ctx, `SELECT `+selectColumns+` FROM tenant_config WHERE tenant_id = $1 AND ecosystem = $2`,
		tenantID, ecosystem)
	if err != nil {
		return nil, fmt.Errorf("read configuration of tenant %s (%s): %w", tenantID, ecosystem, err)
	}
	configs, err := collect(rows)
	if err != nil {
		return nil, fmt.Errorf("read configuration of tenant %s (%s): %w", tenantID, ecosystem, err)
	}
	if len(configs) == 0 {
		return nil, fmt.Errorf("%w: tenant %s, ecosystem %s", ErrNotFound, tenantID, ecosystem)
	}
	return configs[0], nil
}

// ListEnabled returns the settings of every enabled tenant and ecosystem.
func ListEnabled(ctx context.Context, q Querier) ([]*Config, error) {
	rows, err := q.Query(ctx, `SELECT `+selectColumns+` FROM tenant_config WHERE enabled ORDER BY tenant_id, ecosystem`)
	if err != nil {
		return nil, fmt.Errorf("list tenant configurations: %w", err)
	}
	return collect(rows)
}

func collect(rows pgx.Rows) ([]*Config, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Config, error) {
		var c Config
		var credentials []byte
		err := row.Scan(&c.TenantID, &c.Ecosystem, &c.Enabled, &c.Environment, &c.OrganisationID, &c.ClientID,
			&credentials, &c.SubmissionMode, &c.FlushInterval, &c.DryRun, &c.ApprovalRequired,
			&c.CaptureDurability, &c.UpdatedAt)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(credentials, &c.Credentials); err != nil {
			return nil, fmt.Errorf("credentials of tenant %s are not a JSON object: %w", c.TenantID, err)
		}
		return &c, nil
	})
}

// Upsert writes c, creating or replacing the tenant's settings for c's
// ecosystem. A zero FlushInterval, SubmissionMode, Environment or
// CaptureDurability takes the column default.
func Upsert(ctx context.Context, q Querier, c *Config) error {
	credentials, err := json.Marshal(c.Credentials)
	if err != nil {
		return err
	}
	if c.Credentials == nil {
		credentials = []byte("{}")
	}
	var flushInterval *time.Duration
	if c.FlushInterval > 0 {
		flushInterval = &c.FlushInterval
	}
	row := q.QueryRow(ctx, `
		INSERT INTO tenant_config (tenant_id, ecosystem, enabled, environment, organisation_id, client_id,
		                           credentials, submission_mode, flush_interval, dry_run, approval_required,
		                           capture_durability)
		VALUES ($1, $2, $3, coalesce(nullif($4, ''), 'sandbox'), $5, $6, $7,
		        coalesce(nullif($8, ''), 'near_real_time'), coalesce($9, interval '5 seconds'), $10, $11,
		        coalesce(nullif($12, ''), 'fail_closed'))
		ON CONFLICT (tenant_id, ecosystem) DO UPDATE SET
			enabled = excluded.enabled, environment = excluded.environment,
			organisation_id = excluded.organisation_id, client_id = excluded.client_id,
			credentials = excluded.credentials, submission_mode = excluded.submission_mode,
			flush_interval = excluded.flush_interval, dry_run = excluded.dry_run,
			approval_required = excluded.approval_required,
			capture_durability = excluded.capture_durability, updated_at = now()
		RETURNING updated_at`,
		c.TenantID, c.Ecosystem, c.Enabled, c.Environment, c.OrganisationID, c.ClientID, credentials,
		c.SubmissionMode, flushInterval, c.DryRun, c.ApprovalRequired, c.CaptureDurability)
	if err := row.Scan(&c.UpdatedAt); err != nil {
		return fmt.Errorf("write configuration of tenant %s (%s): %w", c.TenantID, c.Ecosystem, err)
	}
	return nil
}
