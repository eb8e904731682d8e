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
	"github.com/jackc/pgx/v5/pgtype"
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
	Credentials map[string]string
	// DeadlineMargin is how long before a business day's deadline its items
	// are flushed whatever the submission mode.
	DeadlineMargin time.Duration
	DryRun         bool
	Ecosystem      string
	Enabled        bool
	Environment    string
	// FlushInterval is, in near-real-time mode, how long the oldest pending
	// item may wait before its batch is sealed.
	FlushInterval time.Duration
	// LastFlushedAt is when a scheduled flush last ran, or zero.
	LastFlushedAt  time.Time
	OrganisationID string
	// RegulatorZone is the IANA zone of the regulator's business days and
	// deadlines, such as America/Sao_Paulo.
	RegulatorZone string
	// ScheduleCadence is, in scheduled mode, the time between flushes inside
	// the window.
	ScheduleCadence time.Duration
	// ScheduleWindowEnd and ScheduleWindowStart bound, as offsets from local
	// midnight in RegulatorZone, when a scheduled tenant is flushed. Equal
	// values mean the whole day.
	ScheduleWindowEnd   time.Duration
	ScheduleWindowStart time.Duration
	// SigningKeyID is the key id (JWS kid) of the tenant's registered signing
	// key, for regulators that take signed reports.
	SigningKeyID   string
	SubmissionMode string
	TenantID       string
	UpdatedAt      time.Time
}

const selectColumns = `tenant_id, ecosystem, enabled, environment, organisation_id, client_id, credentials,
	submission_mode, flush_interval, dry_run, approval_required, capture_durability, updated_at,
	regulator_zone, schedule_window_start, schedule_window_end, schedule_cadence, deadline_margin,
	last_flushed_at, signing_key_id`

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
		var windowStart, windowEnd pgtype.Time
		var lastFlushed *time.Time
		err := row.Scan(&c.TenantID, &c.Ecosystem, &c.Enabled, &c.Environment, &c.OrganisationID, &c.ClientID,
			&credentials, &c.SubmissionMode, &c.FlushInterval, &c.DryRun, &c.ApprovalRequired,
			&c.CaptureDurability, &c.UpdatedAt, &c.RegulatorZone, &windowStart, &windowEnd,
			&c.ScheduleCadence, &c.DeadlineMargin, &lastFlushed, &c.SigningKeyID)
		if err != nil {
			return nil, err
		}
		c.ScheduleWindowStart = time.Duration(windowStart.Microseconds) * time.Microsecond
		c.ScheduleWindowEnd = time.Duration(windowEnd.Microseconds) * time.Microsecond
		if lastFlushed != nil {
			c.LastFlushedAt = *lastFlushed
		}
		if err := json.Unmarshal(credentials, &c.Credentials); err != nil {
			return nil, fmt.Errorf("credentials of tenant %s are not a JSON object: %w", c.TenantID, err)
		}
		return &c, nil
	})
}

// Upsert writes c, creating or replacing the tenant's settings for c's
// ecosystem. A zero FlushInterval, SubmissionMode, Environment,
// CaptureDurability, RegulatorZone, ScheduleCadence or DeadlineMargin takes
// the column default. It does not write LastFlushedAt.
func Upsert(ctx context.Context, q Querier, c *Config) error {
	credentials, err := json.Marshal(c.Credentials)
	if err != nil {
		return err
	}
	if c.Credentials == nil {
		credentials = []byte("{}")
	}
	positive := func(d time.Duration) *time.Duration {
		if d > 0 {
			return &d
		}
		return nil
	}
	windowStart := pgtype.Time{Microseconds: c.ScheduleWindowStart.Microseconds(), Valid: true}
	windowEnd := pgtype.Time{Microseconds: c.ScheduleWindowEnd.Microseconds(), Valid: true}
	row := q.QueryRow(ctx, `
		INSERT INTO tenant_config (tenant_id, ecosystem, enabled, environment, organisation_id, client_id,
		                           credentials, submission_mode, flush_interval, dry_run, approval_required,
		                           capture_durability, regulator_zone, schedule_window_start,
		                           schedule_window_end, schedule_cadence, deadline_margin, signing_key_id)
		VALUES ($1, $2, $3, coalesce(nullif($4, ''), 'sandbox'), $5, $6, $7,
		        coalesce(nullif($8, ''), 'near_real_time'), coalesce($9, interval '5 seconds'), $10, $11,
		        coalesce(nullif($12, ''), 'fail_closed'), coalesce(nullif($13, ''), 'America/Sao_Paulo'),
		        $14, $15, coalesce($16, interval '1 hour'), coalesce($17, interval '2 hours'), $18)
		ON CONFLICT (tenant_id, ecosystem) DO UPDATE SET
			enabled = excluded.enabled, environment = excluded.environment,
			organisation_id = excluded.organisation_id, client_id = excluded.client_id,
			credentials = excluded.credentials, submission_mode = excluded.submission_mode,
			flush_interval = excluded.flush_interval, dry_run = excluded.dry_run,
			approval_required = excluded.approval_required,
			capture_durability = excluded.capture_durability, regulator_zone = excluded.regulator_zone,
			schedule_window_start = excluded.schedule_window_start,
			schedule_window_end = excluded.schedule_window_end, schedule_cadence = excluded.schedule_cadence,
			deadline_margin = excluded.deadline_margin, signing_key_id = excluded.signing_key_id,
			updated_at = now()
		RETURNING updated_at`,
		c.TenantID, c.Ecosystem, c.Enabled, c.Environment, c.OrganisationID, c.ClientID, credentials,
		c.SubmissionMode, positive(c.FlushInterval), c.DryRun, c.ApprovalRequired, c.CaptureDurability,
		c.RegulatorZone, windowStart, windowEnd, positive(c.ScheduleCadence), positive(c.DeadlineMargin),
		c.SigningKeyID)
	if err := row.Scan(&c.UpdatedAt); err != nil {
		return fmt.Errorf("write configuration of tenant %s (%s): %w", c.TenantID, c.Ecosystem, err)
	}
	return nil
}
