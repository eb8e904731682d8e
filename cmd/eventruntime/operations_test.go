package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/jobs"
	"github.com/finnest/eventruntime/tenant"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func setupOperations(t *testing.T) *pgtest.Database {
	t.Helper()
	db := pgtest.NewDatabase(t)
	require.NoError(t, tenant.Upsert(context.Background(), db.Pool, &tenant.Config{
		TenantID: "tenant-a", Ecosystem: "ofb", Enabled: true, OrganisationID: "org-a",
	}))
	return db
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// tamperAuditRow alters an audit row by hand, as a superuser who disables
// the append-only trigger would.
func tamperAuditRow(t *testing.T, db *pgtest.Database, id int64) {
	t.Helper()
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, "ALTER TABLE audit_ledger DISABLE TRIGGER audit_ledger_append_only")
	require.NoError(t, err)
	_, err = db.Pool.Exec(ctx, "UPDATE audit_ledger SET actor = 'mallory' WHERE id = $1", id)
	require.NoError(t, err)
	_, err = db.Pool.Exec(ctx, "ALTER TABLE audit_ledger ENABLE TRIGGER audit_ledger_append_only")
	require.NoError(t, err)
}

func TestConfigSetThenGet(t *testing.T) {
	t.Parallel()
	db := setupOperations(t)
	ctx := context.Background()

	var out bytes.Buffer
	err := configSet(ctx, db.Pool, discardLogger(), &out, []string{
		"--tenant", "tenant-a", "--ecosystem", "ofb", "submission_mode=scheduled",
		"--actor", "alice", "credentials.certificate=file:/etc/eventruntime/a.crt",
	})
	require.NoError(t, err)
	require.Contains(t, out.String(), `submission_mode: "near_real_time" -> "scheduled"`)
	require.Contains(t, out.String(), `credentials.certificate: "" -> "file:/etc/eventruntime/a.crt"`)

	out.Reset()
	require.NoError(t, configGet(ctx, db.Pool, &out, []string{"--tenant", "tenant-a", "--ecosystem", "ofb"}))
	var snapshot tenant.Snapshot
	require.NoError(t, json.Unmarshal(out.Bytes(), &snapshot))
	require.Equal(t, "scheduled", snapshot.Settings["submission_mode"])
	require.Equal(t, "file:/etc/eventruntime/a.crt", snapshot.Settings["credentials.certificate"])
	require.Equal(t, "tenant-a", snapshot.TenantID)

	var actor, action, subject string
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT actor, action, subject FROM audit_ledger").
		Scan(&actor, &action, &subject))
	require.Equal(t, "alice", actor)
	require.Equal(t, "config.set", action)
	require.Equal(t, "tenant/tenant-a/ofb", subject)
}

func TestConfigSetRejects(t *testing.T) {
	t.Parallel()
	db := setupOperations(t)
	ctx := context.Background()
	base := []string{"--tenant", "tenant-a", "--ecosystem", "ofb", "--actor", "alice"}

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"UnknownKey", []string{"colour=blue"}, `unknown key "colour"`},
		{"BadDuration", []string{"flush_interval=soon"}, "not a duration"},
		{"UnknownMode", []string{"submission_mode=hourly"}, "unknown value"},
		{"BadZone", []string{"regulator_zone=Nowhere/City"}, "unknown time zone"},
		{"NotKeyValue", []string{"hunter2"}, "not key=value"},
		{"Repeated", []string{"dry_run=true", "dry_run=false"}, "given twice"},
		{"NoChanges", nil, "no key=value"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := configSet(ctx, db.Pool, discardLogger(), &bytes.Buffer{}, append(append([]string{}, base...), c.args...))
			require.ErrorContains(t, err, c.want)
			require.NotContains(t, err.Error(), "hunter2")
		})
	}

	t.Run("MissingTenant", func(t *testing.T) {
		err := configSet(ctx, db.Pool, discardLogger(), &bytes.Buffer{}, []string{"--actor", "alice", "dry_run=true"})
		require.ErrorContains(t, err, "--tenant and --ecosystem are required")
	})
}

func TestAuditVerifyAfterTampering(t *testing.T) {
	t.Parallel()
	db := setupOperations(t)
	ctx := context.Background()

	for _, value := range []string{"true", "false"} {
		require.NoError(t, configSet(ctx, db.Pool, discardLogger(), &bytes.Buffer{}, []string{
			"--tenant", "tenant-a", "--ecosystem", "ofb", "--actor", "alice", "dry_run=" + value,
		}))
	}
	var out bytes.Buffer
	require.NoError(t, auditVerify(ctx, db.Pool, discardLogger(), &out))
	require.Contains(t, out.String(), "intact: 2 rows")

	var firstID int64
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT min(id) FROM audit_ledger").Scan(&firstID))
	tamperAuditRow(t, db, firstID)

	err := auditVerify(ctx, db.Pool, discardLogger(), &bytes.Buffer{})
	require.Error(t, err)
	require.Contains(t, err.Error(), "broken at row "+formatID(firstID))
	require.Contains(t, err.Error(), "altered")
}

func formatID(id int64) string { return strconv.FormatInt(id, 10) }

func TestBatchesApproveAndList(t *testing.T) {
	t.Parallel()
	db := setupOperations(t)
	ctx := context.Background()

	var batchID int64
	require.NoError(t, db.Pool.QueryRow(ctx, `
		INSERT INTO export_batches (tenant_id, ecosystem, state, sealed_at, item_count)
		VALUES ('tenant-a', 'ofb', 'awaiting_approval', now(), 3) RETURNING id`).Scan(&batchID))
	id := formatID(batchID)

	var out bytes.Buffer
	require.NoError(t, batchesList(ctx, db.Pool, &out, []string{"--state", "awaiting_approval"}))
	require.Contains(t, out.String(), "awaiting_approval")
	require.Equal(t, 2, strings.Count(out.String(), "\n"), "header and one batch")

	out.Reset()
	require.NoError(t, batchesApprove(ctx, db.Pool, discardLogger(), &out, []string{id, "--actor", "bob"}))
	require.Contains(t, out.String(), "approved")

	var state, approvedBy string
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT state, approved_by FROM export_batches WHERE id = $1", batchID).
		Scan(&state, &approvedBy))
	require.Equal(t, "sealed", state)
	require.Equal(t, "bob", approvedBy)

	var submitJobs int
	require.NoError(t, db.Pool.QueryRow(ctx,
		"SELECT count(*) FROM river_job WHERE kind = 'submit' AND (args->>'batch_id')::bigint = $1", batchID).Scan(&submitJobs))
	require.Equal(t, 1, submitJobs)

	var action, subject, actor string
	require.NoError(t, db.Pool.QueryRow(ctx, "SELECT action, subject, actor FROM audit_ledger").
		Scan(&action, &subject, &actor))
	require.Equal(t, jobs.ActionBatchApprove, action)
	require.Equal(t, "batch/"+id, subject)
	require.Equal(t, "bob", actor)

	err := batchesApprove(ctx, db.Pool, discardLogger(), &bytes.Buffer{}, []string{"--actor", "bob", id})
	require.ErrorIs(t, err, jobs.ErrNotAwaitingApproval)

	err = batchesApprove(ctx, db.Pool, discardLogger(), &bytes.Buffer{}, []string{"999999", "--actor", "bob"})
	require.ErrorContains(t, err, "not found")

	err = batchesApprove(ctx, db.Pool, discardLogger(), &bytes.Buffer{}, []string{"abc", "--actor", "bob"})
	require.ErrorContains(t, err, "not a positive integer")

	out.Reset()
	require.NoError(t, batchesList(ctx, db.Pool, &out, []string{"--state", "awaiting_approval"}))
	require.Equal(t, 1, strings.Count(out.String(), "\n"), "only the header")
}

func TestRiverUIHashPassword(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	require.NoError(t, runRiverUI([]string{"hash-password"}, strings.NewReader("correct horse\n"), &out))
	hash := strings.TrimSpace(out.String())
	require.NoError(t, bcrypt.CompareHashAndPassword([]byte(hash), []byte("correct horse")))
	require.NotContains(t, hash, ":", "the hash fits a name:tier:hash entry")

	require.ErrorContains(t, runRiverUI([]string{"hash-password"}, strings.NewReader("\n"), &bytes.Buffer{}),
		"no password")
}
