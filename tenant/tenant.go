// Package tenant reads and writes each tenant's settings per ecosystem, kept
// in the tenant_config table. Callers read the table on each use, so a change
// takes effect without a restart. Set is the audited way for operators to
// change settings.
package tenant

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/finnest/eventruntime/audit"
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

// ActionConfigSet is the audit_ledger action of a change made by Set.
const ActionConfigSet = "config.set"

// ErrInvalidSetting is returned by Set for an unknown key or a value the key
// does not accept.
var ErrInvalidSetting = errors.New("invalid setting")

// Snapshot is a tenant's settings for one ecosystem, each in the text form
// that Set accepts.
type Snapshot struct {
	Ecosystem string `json:"ecosystem"`
	// Settings maps each key Set accepts to its current value. Credentials
	// and retention have one key per entry: "credentials.<name>" and
	// "retention.<table>".
	Settings  map[string]string `json:"settings"`
	TenantID  string            `json:"tenant_id"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// Change is what Set changed: the old and new values of each key it was
// given, in Snapshot form. A key that had no value maps to "".
type Change struct {
	New map[string]string
	Old map[string]string
}

// scalarSetting is a key stored in one column of tenant_config.
type scalarSetting struct {
	column string
	// parse validates a value and returns what to write to the column.
	parse func(value string) (any, error)
}

var (
	credentialNamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	envNamePattern        = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	tableNamePattern      = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	tokenPattern          = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
)

var scalarSettings = map[string]scalarSetting{
	"approval_required":     {"approval_required", parseBool},
	"capture_durability":    {"capture_durability", oneOf("fail_closed", "fail_open")},
	"client_id":             {"client_id", anyText},
	"deadline_margin":       {"deadline_margin", parseDuration(false)},
	"dry_run":               {"dry_run", parseBool},
	"eligibility":           {"eligibility", parseJSONObject},
	"enabled":               {"enabled", parseBool},
	"environment":           {"environment", parseToken},
	"flush_interval":        {"flush_interval", parseDuration(true)},
	"organisation_id":       {"organisation_id", nonEmptyText},
	"regulator_zone":        {"regulator_zone", parseZone},
	"schedule_cadence":      {"schedule_cadence", parseDuration(true)},
	"schedule_window_end":   {"schedule_window_end", parseTimeOfDay},
	"schedule_window_start": {"schedule_window_start", parseTimeOfDay},
	"signing_key_id":        {"signing_key_id", anyText},
	"submission_mode":       {"submission_mode", oneOf(ModeNearRealTime, ModeScheduled)},
}

// Keys returns the keys Set accepts, sorted. "credentials.<name>" and
// "retention.<table>" stand for one key per credential and per table.
func Keys() []string {
	keys := slices.Sorted(maps.Keys(scalarSettings))
	keys = append(keys, "credentials.<name>", "retention.<table>")
	slices.Sort(keys)
	return keys
}

// ReadSettings returns the settings of tenantID for ecosystem, or an error
// wrapping ErrNotFound.
func ReadSettings(ctx context.Context, q Querier, tenantID, ecosystem string) (*Snapshot, error) {
	config, err := Get(ctx, q, tenantID, ecosystem)
	if err != nil {
		return nil, err
	}
	var retention map[string]any
	var eligibility []byte
	err = q.QueryRow(ctx, `SELECT retention, eligibility FROM tenant_config WHERE tenant_id = $1 AND ecosystem = $2`,
		tenantID, ecosystem).Scan(&retention, &eligibility)
	if err != nil {
		return nil, fmt.Errorf("read retention and eligibility of tenant %s (%s): %w", tenantID, ecosystem, err)
	}

	settings := map[string]string{
		"approval_required":     strconv.FormatBool(config.ApprovalRequired),
		"capture_durability":    config.CaptureDurability,
		"client_id":             config.ClientID,
		"deadline_margin":       config.DeadlineMargin.String(),
		"dry_run":               strconv.FormatBool(config.DryRun),
		"eligibility":           compactJSON(eligibility),
		"enabled":               strconv.FormatBool(config.Enabled),
		"environment":           config.Environment,
		"flush_interval":        config.FlushInterval.String(),
		"organisation_id":       config.OrganisationID,
		"regulator_zone":        config.RegulatorZone,
		"schedule_cadence":      config.ScheduleCadence.String(),
		"schedule_window_end":   formatTimeOfDay(config.ScheduleWindowEnd),
		"schedule_window_start": formatTimeOfDay(config.ScheduleWindowStart),
		"signing_key_id":        config.SigningKeyID,
		"submission_mode":       config.SubmissionMode,
	}
	for name, reference := range config.Credentials {
		settings["credentials."+name] = reference
	}
	for table, value := range retention {
		settings["retention."+table] = fmt.Sprint(value)
	}
	return &Snapshot{Ecosystem: ecosystem, Settings: settings, TenantID: tenantID, UpdatedAt: config.UpdatedAt}, nil
}

// Set applies changes, a map from key (see Keys) to value, to the settings of
// tenantID for ecosystem inside tx, and appends one audit_ledger row with
// action ActionConfigSet, subject "tenant/<tenantID>/<ecosystem>" and the old
// and new values of the changed keys. tx must be READ COMMITTED, as
// audit.Append requires. Every value is validated before anything is
// written, and the first invalid one fails the whole call with an error
// wrapping ErrInvalidSetting. An empty value for "credentials.<name>" or
// "retention.<table>" removes that entry.
//
// Credentials are references, "file:/absolute/path" or "env:NAME". Any other
// value is rejected without being echoed, since it may be a secret.
func Set(ctx context.Context, tx pgx.Tx, actor, tenantID, ecosystem string, changes map[string]string) (*Change, error) {
	if strings.TrimSpace(actor) == "" {
		return nil, errors.New("set tenant configuration: actor is missing")
	}
	if len(changes) == 0 {
		return nil, fmt.Errorf("%w: no key=value given; keys are %s", ErrInvalidSetting, strings.Join(Keys(), ", "))
	}

	tag, err := tx.Exec(ctx, `SELECT 1 FROM tenant_config WHERE tenant_id = $1 AND ecosystem = $2 FOR UPDATE`,
		tenantID, ecosystem)
	if err != nil {
		return nil, fmt.Errorf("lock configuration of tenant %s (%s): %w", tenantID, ecosystem, err)
	}
	if tag.RowsAffected() == 0 {
		return nil, fmt.Errorf("%w: tenant %s, ecosystem %s", ErrNotFound, tenantID, ecosystem)
	}
	before, err := ReadSettings(ctx, tx, tenantID, ecosystem)
	if err != nil {
		return nil, err
	}

	update, err := buildUpdate(before, changes)
	if err != nil {
		return nil, err
	}
	args := append([]any{tenantID, ecosystem}, update.values...)
	if _, err := tx.Exec(ctx, `UPDATE tenant_config SET `+strings.Join(update.assignments, ", ")+
		`, updated_at = now() WHERE tenant_id = $1 AND ecosystem = $2`, args...); err != nil {
		return nil, fmt.Errorf("update configuration of tenant %s (%s): %w", tenantID, ecosystem, err)
	}

	after, err := ReadSettings(ctx, tx, tenantID, ecosystem)
	if err != nil {
		return nil, err
	}
	change := &Change{New: map[string]string{}, Old: map[string]string{}}
	for key := range changes {
		change.Old[key] = before.Settings[key]
		change.New[key] = after.Settings[key]
	}
	err = audit.Append(ctx, tx, audit.Entry{
		Action:    ActionConfigSet,
		Actor:     actor,
		Ecosystem: ecosystem,
		New:       change.New,
		Old:       change.Old,
		Subject:   "tenant/" + tenantID + "/" + ecosystem,
		TenantID:  tenantID,
	})
	if err != nil {
		return nil, err
	}
	return change, nil
}

// update is the SET list of one UPDATE of tenant_config, with placeholders
// from $3 because $1 and $2 are the tenant and ecosystem.
type update struct {
	assignments []string
	values      []any
}

func (u *update) add(column string, value any) {
	u.values = append(u.values, value)
	u.assignments = append(u.assignments, fmt.Sprintf("%s = $%d", column, len(u.values)+2))
}

func buildUpdate(before *Snapshot, changes map[string]string) (*update, error) {
	u := &update{}
	credentials := map[string]string{}
	retention := map[string]string{}
	for key, value := range before.Settings {
		if name, ok := strings.CutPrefix(key, "credentials."); ok {
			credentials[name] = value
		}
		if table, ok := strings.CutPrefix(key, "retention."); ok {
			retention[table] = value
		}
	}
	credentialsChanged, retentionChanged := false, false

	for _, key := range slices.Sorted(maps.Keys(changes)) {
		value := changes[key]
		if setting, ok := scalarSettings[key]; ok {
			parsed, err := setting.parse(value)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrInvalidSetting, key, err)
			}
			u.add(setting.column, parsed)
			continue
		}
		if name, ok := strings.CutPrefix(key, "credentials."); ok {
			if !credentialNamePattern.MatchString(name) {
				return nil, fmt.Errorf("%w: %s: credential name must match %s", ErrInvalidSetting, key, credentialNamePattern)
			}
			if value == "" {
				delete(credentials, name)
			} else if err := checkCredentialReference(value); err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrInvalidSetting, key, err)
			} else {
				credentials[name] = value
			}
			credentialsChanged = true
			continue
		}
		if table, ok := strings.CutPrefix(key, "retention."); ok {
			if !tableNamePattern.MatchString(table) {
				return nil, fmt.Errorf("%w: %s: table name must match %s", ErrInvalidSetting, key, tableNamePattern)
			}
			if value == "" {
				delete(retention, table)
			} else {
				interval, err := parseRetention(value)
				if err != nil {
					return nil, fmt.Errorf("%w: %s: %v", ErrInvalidSetting, key, err)
				}
				retention[table] = interval
			}
			retentionChanged = true
			continue
		}
		return nil, fmt.Errorf("%w: unknown key %q; keys are %s", ErrInvalidSetting, key, strings.Join(Keys(), ", "))
	}

	if credentialsChanged {
		encoded, err := json.Marshal(credentials)
		if err != nil {
			return nil, err
		}
		u.add("credentials", encoded)
	}
	if retentionChanged {
		encoded, err := json.Marshal(retention)
		if err != nil {
			return nil, err
		}
		u.add("retention", encoded)
	}
	return u, nil
}

// checkCredentialReference accepts "file:/absolute/path" and "env:NAME".
// Its errors never contain the value, which may be a pasted secret.
func checkCredentialReference(value string) error {
	const want = "want file:/absolute/path or env:NAME (the value is not shown, since it may be a secret)"
	kind, target, ok := strings.Cut(value, ":")
	if !ok {
		return errors.New("not a credential reference; " + want)
	}
	switch kind {
	case "file":
		if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, "\x00\n\r") {
			return errors.New("a file reference needs an absolute path; " + want)
		}
		return nil
	case "env":
		if !envNamePattern.MatchString(target) {
			return errors.New("an env reference needs a variable name of letters, digits and underscores; " + want)
		}
		return nil
	default:
		return errors.New("not a credential reference; " + want)
	}
}

func parseBool(value string) (any, error) {
	b, err := strconv.ParseBool(value)
	if err != nil {
		return nil, fmt.Errorf("%q is not a boolean: want true or false", value)
	}
	return b, nil
}

func oneOf(allowed ...string) func(string) (any, error) {
	return func(value string) (any, error) {
		if !slices.Contains(allowed, value) {
			return nil, fmt.Errorf("unknown value %q: want one of %s", value, strings.Join(allowed, ", "))
		}
		return value, nil
	}
}

func anyText(value string) (any, error) { return value, nil }

func nonEmptyText(value string) (any, error) {
	if strings.TrimSpace(value) == "" {
		return nil, errors.New("value is empty")
	}
	return value, nil
}

func parseToken(value string) (any, error) {
	if !tokenPattern.MatchString(value) {
		return nil, fmt.Errorf("%q is invalid: want lower-case letters, digits, _ and -, such as sandbox or production", value)
	}
	return value, nil
}

// parseDuration parses a Go duration such as 5s or 1h30m. With positive,
// zero is rejected as well as negative values.
func parseDuration(positive bool) func(string) (any, error) {
	return func(value string) (any, error) {
		d, err := time.ParseDuration(value)
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration: want a value such as 5s, 10m or 1h30m", value)
		}
		if d < 0 || (positive && d == 0) {
			return nil, fmt.Errorf("duration %s must be positive", value)
		}
		return d, nil
	}
}

// parseZone accepts an IANA zone name that time.LoadLocation finds. "Local"
// and "" are rejected, because they depend on the host.
func parseZone(value string) (any, error) {
	if value == "" || value == "Local" {
		return nil, fmt.Errorf("%q is not an IANA zone name such as America/Sao_Paulo", value)
	}
	if _, err := time.LoadLocation(value); err != nil {
		return nil, fmt.Errorf("unknown time zone %q: %v", value, err)
	}
	return value, nil
}

// parseTimeOfDay parses HH:MM or HH:MM:SS into a PostgreSQL time.
func parseTimeOfDay(value string) (any, error) {
	var parsed time.Time
	var err error
	for _, layout := range []string{"15:04", "15:04:05"} {
		if parsed, err = time.Parse(layout, value); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%q is not a time of day: want HH:MM or HH:MM:SS, such as 06:30", value)
	}
	offset := time.Duration(parsed.Hour())*time.Hour + time.Duration(parsed.Minute())*time.Minute +
		time.Duration(parsed.Second())*time.Second
	return pgtype.Time{Microseconds: offset.Microseconds(), Valid: true}, nil
}

func formatTimeOfDay(offset time.Duration) string {
	hours, minutes, seconds := int(offset.Hours()), int(offset.Minutes())%60, int(offset.Seconds())%60
	if seconds != 0 {
		return fmt.Sprintf("%02d:%02d:%02d", hours, minutes, seconds)
	}
	return fmt.Sprintf("%02d:%02d", hours, minutes)
}

func parseJSONObject(value string) (any, error) {
	var object map[string]any
	if err := json.Unmarshal([]byte(value), &object); err != nil || object == nil {
		return nil, errors.New("value is not a JSON object, such as {\"event_types\":[\"pcm.interaction.recorded\"]}")
	}
	return []byte(value), nil
}

// parseRetention parses "60d", "60 days" or a Go duration of at least one
// day, and returns a PostgreSQL interval such as "60 days", the form that
// the partitions job casts with ::interval.
func parseRetention(value string) (string, error) {
	var d time.Duration
	trimmed := strings.TrimSpace(value)
	days, unit, _ := strings.Cut(strings.TrimSuffix(trimmed, "d"), " ")
	if n, err := strconv.Atoi(days); err == nil && (unit == "" || unit == "days" || unit == "day") {
		d = time.Duration(n) * 24 * time.Hour
	} else if d, err = time.ParseDuration(trimmed); err != nil {
		return "", fmt.Errorf("%q is not a retention: want days such as 60d or 60 days, or a duration such as 1440h", value)
	}
	if d < 24*time.Hour {
		return "", fmt.Errorf("retention %s is shorter than one day", value)
	}
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour)), nil
	}
	return fmt.Sprintf("%d seconds", int64(d/time.Second)), nil
}

func compactJSON(data []byte) string {
	var object any
	if err := json.Unmarshal(data, &object); err != nil {
		return string(data)
	}
	compact, err := json.Marshal(object)
	if err != nil {
		return string(data)
	}
	return string(compact)
}
