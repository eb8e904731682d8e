package tenant_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/audit"
	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/tenant"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func setupTenant(t *testing.T) *pgtest.Database {
	t.Helper()
	db := pgtest.NewDatabase(t)
	require.NoError(t, tenant.Upsert(context.Background(), db.Pool, &tenant.Config{
		TenantID: "tenant-a", Ecosystem: "ofb", Enabled: true, OrganisationID: "org-a",
		Credentials: map[string]string{"certificate": "file:/etc/eventruntime/a.crt"},
	}))
	return db
}

func set(t *testing.T, db *pgtest.Database, changes map[string]string) (*tenant.Change, error) {
	t.Helper()
	var change *tenant.Change
	err := pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
		var err error
		change, err = tenant.Set(context.Background(), tx, "alice", "tenant-a", "ofb", changes)
		return err
	})
	return change, err
}

func TestSetAppliesAndAudits(t *testing.T) {
	t.Parallel()
	db := setupTenant(t)
	ctx := context.Background()

	change, err := set(t, db, map[string]string{
		"submission_mode":         "scheduled",
		"schedule_cadence":        "30m",
		"schedule_window_start":   "06:30",
		"schedule_window_end":     "22:00",
		"dry_run":                 "true",
		"approval_required":       "true",
		"regulator_zone":          "UTC",
		"flush_interval":          "2s",
		"capture_durability":      "fail_open",
		"credentials.private_key": "env:TENANT_A_KEY",
		"retention.outbox":        "60d",
		"eligibility":             `{"event_types": ["pcm.interaction.recorded"]}`,
	})
	require.NoError(t, err)
	require.Equal(t, "near_real_time", change.Old["submission_mode"])
	require.Equal(t, "scheduled", change.New["submission_mode"])
	require.Equal(t, "", change.Old["credentials.private_key"])
	require.Equal(t, "60 days", change.New["retention.outbox"])

	config, err := tenant.Get(ctx, db.Pool, "tenant-a", "ofb")
	require.NoError(t, err)
	require.Equal(t, tenant.ModeScheduled, config.SubmissionMode)
	require.Equal(t, 30*time.Minute, config.ScheduleCadence)
	require.Equal(t, 6*time.Hour+30*time.Minute, config.ScheduleWindowStart)
	require.Equal(t, 22*time.Hour, config.ScheduleWindowEnd)
	require.True(t, config.DryRun)
	require.True(t, config.ApprovalRequired)
	require.Equal(t, "UTC", config.RegulatorZone)
	require.Equal(t, 2*time.Second, config.FlushInterval)
	require.Equal(t, "fail_open", config.CaptureDurability)
	require.Equal(t, "env:TENANT_A_KEY", config.Credentials["private_key"])
	require.Equal(t, "file:/etc/eventruntime/a.crt", config.Credentials["certificate"], "other credentials stay")

	snapshot, err := tenant.ReadSettings(ctx, db.Pool, "tenant-a", "ofb")
	require.NoError(t, err)
	require.Equal(t, "60 days", snapshot.Settings["retention.outbox"])
	require.Equal(t, `{"event_types":["pcm.interaction.recorded"]}`, snapshot.Settings["eligibility"])
	require.Equal(t, "06:30", snapshot.Settings["schedule_window_start"])
	require.Equal(t, "30m0s", snapshot.Settings["schedule_cadence"])

	var action, subject, actor, oldHash, newHash string
	require.NoError(t, db.Pool.QueryRow(ctx,
		"SELECT action, subject, actor, old_hash, new_hash FROM audit_ledger").
		Scan(&action, &subject, &actor, &oldHash, &newHash))
	require.Equal(t, tenant.ActionConfigSet, action)
	require.Equal(t, "tenant/tenant-a/ofb", subject)
	require.Equal(t, "alice", actor)
	wantOld, err := audit.ValueHash(change.Old)
	require.NoError(t, err)
	require.Equal(t, wantOld, oldHash)
	wantNew, err := audit.ValueHash(change.New)
	require.NoError(t, err)
	require.Equal(t, wantNew, newHash)

	result, err := audit.Verify(ctx, db.Pool)
	require.NoError(t, err)
	require.True(t, result.Intact(), result.Reason)
}

func TestSetRemovesEntries(t *testing.T) {
	t.Parallel()
	db := setupTenant(t)

	_, err := set(t, db, map[string]string{"retention.outbox": "45 days"})
	require.NoError(t, err)
	change, err := set(t, db, map[string]string{"credentials.certificate": "", "retention.outbox": ""})
	require.NoError(t, err)
	require.Equal(t, "file:/etc/eventruntime/a.crt", change.Old["credentials.certificate"])
	require.Equal(t, "", change.New["credentials.certificate"])

	snapshot, err := tenant.ReadSettings(context.Background(), db.Pool, "tenant-a", "ofb")
	require.NoError(t, err)
	require.NotContains(t, snapshot.Settings, "credentials.certificate")
	require.NotContains(t, snapshot.Settings, "retention.outbox")
}

func TestSetRejectsInvalid(t *testing.T) {
	t.Parallel()
	db := setupTenant(t)

	cases := []struct {
		name, key, value, want string
	}{
		{"UnknownKey", "colour", "blue", `unknown key "colour"`},
		{"BadDuration", "flush_interval", "soon", "not a duration"},
		{"ZeroFlushInterval", "flush_interval", "0s", "must be positive"},
		{"NegativeMargin", "deadline_margin", "-1h", "must be positive"},
		{"UnknownMode", "submission_mode", "hourly", `unknown value "hourly"`},
		{"BadZone", "regulator_zone", "Mars/Olympus_Mons", "unknown time zone"},
		{"LocalZone", "regulator_zone", "Local", "not an IANA zone"},
		{"BadBool", "dry_run", "maybe", "not a boolean"},
		{"BadTimeOfDay", "schedule_window_start", "25:00", "not a time of day"},
		{"BadDurability", "capture_durability", "best_effort", "unknown value"},
		{"EmptyOrganisation", "organisation_id", " ", "empty"},
		{"BadEnvironment", "environment", "Prod Env", "invalid"},
		{"EligibilityNotObject", "eligibility", "[1]", "not a JSON object"},
		{"ShortRetention", "retention.outbox", "12h", "shorter than one day"},
		{"BadRetention", "retention.outbox", "forever", "not a retention"},
		{"BadCredentialName", "credentials.Private Key", "env:X", "credential name"},
		{"RelativeCredentialFile", "credentials.certificate", "file:certs/a.crt", "absolute path"},
		{"BadCredentialEnv", "credentials.certificate", "env:A-B", "variable name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := set(t, db, map[string]string{c.key: c.value})
			require.ErrorIs(t, err, tenant.ErrInvalidSetting)
			require.ErrorContains(t, err, c.want)
		})
	}

	t.Run("SecretValueRejectedUnechoed", func(t *testing.T) {
		secret := "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBg"
		_, err := set(t, db, map[string]string{"credentials.private_key": secret})
		require.ErrorIs(t, err, tenant.ErrInvalidSetting)
		require.NotContains(t, err.Error(), "MIIEvQIBADANBg")

		_, err = set(t, db, map[string]string{"credentials.private_key": "s3cr3t:value"})
		require.ErrorIs(t, err, tenant.ErrInvalidSetting)
		require.NotContains(t, err.Error(), "s3cr3t")
	})

	t.Run("NothingWrittenOnError", func(t *testing.T) {
		_, err := set(t, db, map[string]string{"dry_run": "true", "flush_interval": "soon"})
		require.Error(t, err)
		config, err := tenant.Get(context.Background(), db.Pool, "tenant-a", "ofb")
		require.NoError(t, err)
		require.False(t, config.DryRun)
		var rows int
		require.NoError(t, db.Pool.QueryRow(context.Background(), "SELECT count(*) FROM audit_ledger").Scan(&rows))
		require.Zero(t, rows)
	})

	t.Run("UnknownTenant", func(t *testing.T) {
		err := pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
			_, err := tenant.Set(context.Background(), tx, "alice", "tenant-z", "ofb", map[string]string{"dry_run": "true"})
			return err
		})
		require.ErrorIs(t, err, tenant.ErrNotFound)
	})

	t.Run("MissingActor", func(t *testing.T) {
		err := pgx.BeginFunc(context.Background(), db.Pool, func(tx pgx.Tx) error {
			_, err := tenant.Set(context.Background(), tx, " ", "tenant-a", "ofb", map[string]string{"dry_run": "true"})
			return err
		})
		require.ErrorContains(t, err, "actor is missing")
	})
}
