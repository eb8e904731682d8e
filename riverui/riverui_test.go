package riverui_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
	riveruihandler "riverqueue.com/riverui"

	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/internal/testlog"
	"github.com/finnest/eventruntime/riverui"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

type noopArgs struct{}

func (noopArgs) Kind() string { return "noop" }

const (
	viewerPassword   = "viewer-password-1"
	approverPassword = "approver-password-2"
)

type uiBundle struct {
	client *river.Client[pgx.Tx]
	db     *pgtest.Database
	logs   *testlog.Buffer
	server *httptest.Server
}

// setupUI serves the real River UI handler, on a River client over a private
// database, behind Protect with one viewer and one approver.
func setupUI(t *testing.T) *uiBundle {
	t.Helper()
	ctx := context.Background()
	db := pgtest.NewDatabase(t)
	client, err := river.NewClient(riverpgxv5.New(db.Pool), &river.Config{})
	require.NoError(t, err)

	handler, err := riveruihandler.NewHandler(&riveruihandler.HandlerOpts{
		Endpoints: riveruihandler.NewEndpoints(client, nil),
		Logger:    slog.New(slog.DiscardHandler),
		Prefix:    "/riverui",
	})
	require.NoError(t, err)
	handlerCtx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	require.NoError(t, handler.Start(handlerCtx))

	users := []riverui.User{
		{Name: "vera", Tier: riverui.TierViewer, PasswordHash: hash(t, viewerPassword)},
		{Name: "arno", Tier: riverui.TierApprover, PasswordHash: hash(t, approverPassword)},
	}
	logs := &testlog.Buffer{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	mux := http.NewServeMux()
	mux.Handle("/riverui/", riverui.Protect(handler, users, logger))
	server := httptest.NewServer(mux)
	t.Cleanup(server.Close)
	return &uiBundle{client: client, db: db, logs: logs, server: server}
}

func hash(t *testing.T, password string) []byte {
	t.Helper()
	// The minimum cost keeps the test fast, and Protect accepts any bcrypt cost.
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	return h
}

func (b *uiBundle) do(t *testing.T, method, path, user, password, body string) (int, http.Header, string) {
	t.Helper()
	request, err := http.NewRequest(method, b.server.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	if user != "" {
		request.SetBasicAuth(user, password)
	}
	if body != "" {
		request.Header.Set("Content-Type", "application/json")
	}
	response, err := http.DefaultClient.Do(request)
	require.NoError(t, err)
	defer response.Body.Close()
	data, err := io.ReadAll(response.Body)
	require.NoError(t, err)
	return response.StatusCode, response.Header, string(data)
}

func (b *uiBundle) insertJob(t *testing.T) int64 {
	t.Helper()
	result, err := b.client.Insert(context.Background(), noopArgs{}, nil)
	require.NoError(t, err)
	return result.Job.ID
}

func (b *uiBundle) jobState(t *testing.T, id int64) string {
	t.Helper()
	var state string
	err := b.db.Pool.QueryRow(context.Background(), "SELECT state FROM river_job WHERE id = $1", id).Scan(&state)
	if err == pgx.ErrNoRows {
		return "deleted"
	}
	require.NoError(t, err)
	return state
}

func (b *uiBundle) createQueue(t *testing.T, name string) {
	t.Helper()
	_, err := b.db.Pool.Exec(context.Background(), `
		INSERT INTO river_queue (name, created_at, metadata, updated_at) VALUES ($1, now(), '{}', now())`, name)
	require.NoError(t, err)
}

func (b *uiBundle) queuePaused(t *testing.T, name string) bool {
	t.Helper()
	var paused bool
	require.NoError(t, b.db.Pool.QueryRow(context.Background(),
		"SELECT paused_at IS NOT NULL FROM river_queue WHERE name = $1", name).Scan(&paused))
	return paused
}

func TestProtectAuthentication(t *testing.T) {
	t.Parallel()
	b := setupUI(t)

	cases := []struct {
		name, user, password string
	}{
		{"NoCredentials", "", ""},
		{"WrongPassword", "vera", "not-the-password"},
		{"UnknownUser", "mallory", viewerPassword},
		{"OtherUsersPassword", "vera", approverPassword},
		{"EmptyPassword", "arno", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, header, _ := b.do(t, http.MethodGet, "/riverui/api/jobs?state=available", c.user, c.password, "")
			require.Equal(t, http.StatusUnauthorized, status)
			require.Contains(t, header.Get("WWW-Authenticate"), `Basic realm="River UI"`)
		})
	}

	t.Run("PasswordNeverLogged", func(t *testing.T) {
		require.NotContains(t, b.logs.String(), viewerPassword)
		require.NotContains(t, b.logs.String(), approverPassword)
		require.NotContains(t, b.logs.String(), "not-the-password")
	})
}

func TestProtectViewerReads(t *testing.T) {
	t.Parallel()
	b := setupUI(t)
	id := b.insertJob(t)

	for _, path := range []string{
		"/riverui/",
		"/riverui/api/jobs?state=available",
		fmt.Sprintf("/riverui/api/jobs/%d", id),
		"/riverui/api/queues",
		"/riverui/api/states",
		"/riverui/api/features",
	} {
		t.Run(path, func(t *testing.T) {
			status, _, body := b.do(t, http.MethodGet, path, "vera", viewerPassword, "")
			require.Equal(t, http.StatusOK, status, "body: %s", body)
		})
	}

	status, _, body := b.do(t, http.MethodGet, "/riverui/api/jobs?state=available", "vera", viewerPassword, "")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, fmt.Sprintf(`"id":%d,`, id), "the viewer sees the job")

	status, _, _ = b.do(t, http.MethodHead, "/riverui/api/queues", "vera", viewerPassword, "")
	require.Equal(t, http.StatusOK, status)
}

// mutation is a request to a River UI v0.22.0 endpoint that changes state.
type mutation struct {
	method, path, body string
}

func mutations(jobID int64) []mutation {
	ids := fmt.Sprintf(`{"ids":["%d"]}`, jobID)
	return []mutation{
		{http.MethodPost, "/riverui/api/jobs/cancel", ids},
		{http.MethodPost, "/riverui/api/jobs/delete", ids},
		{http.MethodPost, "/riverui/api/jobs/retry", ids},
		{http.MethodPut, "/riverui/api/queues/default/pause", ""},
		{http.MethodPut, "/riverui/api/queues/default/resume", ""},
		{http.MethodPatch, "/riverui/api/queues/default", `{"concurrency":null}`},
	}
}

func TestProtectViewerMutationForbidden(t *testing.T) {
	t.Parallel()
	b := setupUI(t)
	id := b.insertJob(t)
	b.createQueue(t, "default")

	for _, m := range mutations(id) {
		t.Run(m.method+m.path, func(t *testing.T) {
			status, _, _ := b.do(t, m.method, m.path, "vera", viewerPassword, m.body)
			require.Equal(t, http.StatusForbidden, status)
		})
	}
	require.Equal(t, "available", b.jobState(t, id))
	require.False(t, b.queuePaused(t, "default"))

	logs := b.logs.String()
	require.Equal(t, len(mutations(id)), strings.Count(logs, `"event":"riverui.mutation_denied"`))
	require.Contains(t, logs, `"user":"vera"`)
	require.NotContains(t, logs, viewerPassword)
}

func TestProtectMutationsUnreachableWithGet(t *testing.T) {
	t.Parallel()
	b := setupUI(t)
	id := b.insertJob(t)
	b.createQueue(t, "default")

	// A GET to a mutation path reaches a read endpoint or the UI's index
	// page, never the mutation, even for an approver.
	for _, m := range mutations(id) {
		for _, user := range []struct{ name, password string }{{"vera", viewerPassword}, {"arno", approverPassword}} {
			path := m.path
			if m.body != "" && strings.HasPrefix(m.path, "/riverui/api/jobs/") {
				path += fmt.Sprintf("?ids=%d", id)
			}
			status, _, _ := b.do(t, http.MethodGet, path, user.name, user.password, "")
			require.NotEqual(t, http.StatusForbidden, status, "GET %s by %s", path, user.name)
			require.Equal(t, "available", b.jobState(t, id), "GET %s by %s", path, user.name)
			require.False(t, b.queuePaused(t, "default"), "GET %s by %s", path, user.name)
		}
	}
}

func TestProtectApproverMutates(t *testing.T) {
	t.Parallel()
	b := setupUI(t)
	b.createQueue(t, "default")

	cancelled := b.insertJob(t)
	status, _, body := b.do(t, http.MethodPost, "/riverui/api/jobs/cancel", "arno", approverPassword,
		fmt.Sprintf(`{"ids":["%d"]}`, cancelled))
	require.Equal(t, http.StatusOK, status, "body: %s", body)
	require.Equal(t, "cancelled", b.jobState(t, cancelled))

	status, _, body = b.do(t, http.MethodPost, "/riverui/api/jobs/retry", "arno", approverPassword,
		fmt.Sprintf(`{"ids":["%d"]}`, cancelled))
	require.Equal(t, http.StatusOK, status, "body: %s", body)
	require.Equal(t, "available", b.jobState(t, cancelled))

	deleted := b.insertJob(t)
	status, _, body = b.do(t, http.MethodPost, "/riverui/api/jobs/delete", "arno", approverPassword,
		fmt.Sprintf(`{"ids":["%d"]}`, deleted))
	require.Equal(t, http.StatusOK, status, "body: %s", body)
	require.Equal(t, "deleted", b.jobState(t, deleted))

	status, _, body = b.do(t, http.MethodPut, "/riverui/api/queues/default/pause", "arno", approverPassword, "")
	require.Equal(t, http.StatusOK, status, "body: %s", body)
	require.True(t, b.queuePaused(t, "default"))

	require.NotContains(t, b.logs.String(), "riverui.mutation_denied")
}

func TestProtectWithoutUsersIsDisabled(t *testing.T) {
	t.Parallel()
	called := false
	next := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true })
	server := httptest.NewServer(riverui.Protect(next, nil, nil))
	t.Cleanup(server.Close)

	request, err := http.NewRequest(http.MethodGet, server.URL+"/riverui/", nil)
	require.NoError(t, err)
	request.SetBasicAuth("anyone", "anything")
	response, err := http.DefaultClient.Do(request)
	require.NoError(t, err)
	require.NoError(t, response.Body.Close())
	require.Equal(t, http.StatusNotFound, response.StatusCode)
	require.False(t, called)
}

func TestParseUsers(t *testing.T) {
	t.Parallel()
	viewerHash := string(hash(t, "a"))
	approverHash := string(hash(t, "b"))

	users, err := riverui.ParseUsers(" vera:viewer:" + viewerHash + ", arno:approver:" + approverHash + ",")
	require.NoError(t, err)
	require.Len(t, users, 2)
	require.Equal(t, "vera", users[0].Name)
	require.Equal(t, riverui.TierViewer, users[0].Tier)
	require.Equal(t, viewerHash, string(users[0].PasswordHash))
	require.Equal(t, riverui.TierApprover, users[1].Tier)

	users, err = riverui.ParseUsers("")
	require.NoError(t, err)
	require.Empty(t, users)

	for _, c := range []struct{ name, spec, want string }{
		{"MissingHash", "vera:viewer", "want name:tier:bcrypt-hash"},
		{"UnknownTier", "vera:admin:" + viewerHash, `unknown tier "admin"`},
		{"PlainPassword", "vera:viewer:hunter2", "not a bcrypt hash"},
		{"EmptyName", ":viewer:" + viewerHash, "empty name"},
		{"Duplicate", "vera:viewer:" + viewerHash + ",vera:approver:" + approverHash, "appears twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := riverui.ParseUsers(c.spec)
			require.ErrorContains(t, err, c.want)
			require.NotContains(t, err.Error(), "hunter2", "the error never echoes a password")
		})
	}
}

func TestHashPasswordVerifies(t *testing.T) {
	t.Parallel()
	h, err := riverui.HashPassword([]byte("correct horse"))
	require.NoError(t, err)
	require.NoError(t, bcrypt.CompareHashAndPassword(h, []byte("correct horse")))
	cost, err := bcrypt.Cost(h)
	require.NoError(t, err)
	require.Equal(t, riverui.HashCost, cost)

	_, err = riverui.HashPassword(nil)
	require.Error(t, err)
}
