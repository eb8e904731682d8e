package capture_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/outbox/capture"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const (
	tenantID    = "tenant-a"
	serverOrgID = "b8e34d5a-2ed5-451e-8ddb-45a1edc76243"
	clientOrgID = "082ff90b-9d65-46bb-b123-b88eb47fd61c"
)

func resolveTenantA(*http.Request) (capture.ServerParties, bool) {
	return capture.ServerParties{ClientOrgID: clientOrgID, ServerOrgID: serverOrgID, TenantID: tenantID}, true
}

// results collects the Recorder's OnResult calls.
type results struct {
	mu   sync.Mutex
	list []capture.Result
}

func (r *results) add(result capture.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, result)
}

func (r *results) all() []capture.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]capture.Result(nil), r.list...)
}

// storedInteraction is one outbox row of a captured call.
type storedInteraction struct {
	event       outbox.Event
	interaction outbox.Interaction
	rawPayload  map[string]any
}

func readInteractions(t *testing.T, db *pgtest.Database) map[string]storedInteraction {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(),
		`SELECT id, tenant_id, ecosystem, event_type, event_version, aggregate_id, payload FROM outbox`)
	require.NoError(t, err)
	defer rows.Close()
	stored := map[string]storedInteraction{}
	for rows.Next() {
		var s storedInteraction
		var payload []byte
		require.NoError(t, rows.Scan(&s.event.ID, &s.event.TenantID, &s.event.Ecosystem, &s.event.Type,
			&s.event.Version, &s.event.AggregateID, &payload))
		require.NoError(t, json.Unmarshal(payload, &s.interaction))
		require.NoError(t, json.Unmarshal(payload, &s.rawPayload))
		stored[s.interaction.FAPIInteractionID] = s
	}
	require.NoError(t, rows.Err())
	return stored
}

func newRecorder(t *testing.T, cfg capture.Config) *capture.Recorder {
	t.Helper()
	if cfg.ResolveServer == nil {
		cfg.ResolveServer = resolveTenantA
	}
	recorder, err := capture.New(cfg)
	require.NoError(t, err)
	return recorder
}

func TestMiddleware(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("CapturesListedRoutesWithTheirTemplates", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		writer := outbox.NewWriter(db.Pool, outbox.WriterConfig{})
		t.Cleanup(writer.Close)
		reader := sdkmetric.NewManualReader()
		provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		var got results
		recorder := newRecorder(t, capture.Config{
			Meter:    provider.Meter(capture.InstrumentationName),
			OnResult: got.add,
			Writer:   writer,
		})

		mux := http.NewServeMux()
		mux.HandleFunc("GET /open-banking/accounts/v2/accounts", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, `{"data":[]}`)
		})
		mux.HandleFunc("GET /open-banking/accounts/v2/accounts/{accountId}/transactions",
			func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = io.WriteString(w, `{"data":[{"amount":1}]}`)
			})
		mux.HandleFunc("POST /open-banking/payments/v4/consents", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"data":{}}`)
		})
		mux.HandleFunc("GET /open-banking/customers/v2/personal/financial-relations",
			func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "not found", http.StatusNotFound)
			})
		mux.HandleFunc("GET /internal/widgets/{id}", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "ok")
		})
		server := httptest.NewServer(recorder.Middleware(mux))
		t.Cleanup(server.Close)

		sentID := uuid.NewString()
		calls := []struct {
			method, path, fapiID string
			wantStatus           int
			wantTemplate         string
		}{
			{"GET", "/open-banking/accounts/v2/accounts", sentID, 200, "/open-banking/accounts/v2/accounts"},
			{"GET", "/open-banking/accounts/v2/accounts/acc-123/transactions", "", 200,
				"/open-banking/accounts/v2/accounts/{accountId}/transactions"},
			{"POST", "/open-banking/payments/v4/consents", "", 201, "/open-banking/payments/v4/consents"},
			{"GET", "/open-banking/customers/v2/personal/financial-relations", "", 404,
				"/open-banking/customers/v2/personal/financial-relations"},
			{"GET", "/internal/widgets/42", "", 200, ""},
		}
		responseIDs := make([]string, len(calls))
		for i, call := range calls {
			req, err := http.NewRequestWithContext(ctx, call.method, server.URL+call.path, nil)
			require.NoError(t, err)
			if call.fapiID != "" {
				req.Header.Set("x-fapi-interaction-id", call.fapiID)
			}
			resp, err := server.Client().Do(req)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, call.wantStatus, resp.StatusCode, "%s %s: %s", call.method, call.path, body)
			responseIDs[i] = resp.Header.Get("x-fapi-interaction-id")
		}
		require.Equal(t, sentID, responseIDs[0], "a sent interaction id is echoed")
		require.NoError(t, uuid.Validate(responseIDs[1]), "a missing interaction id is generated")
		require.Empty(t, responseIDs[4], "an unlisted route is not touched")

		stored := readInteractions(t, db)
		require.Len(t, stored, 4)
		for i, call := range calls[:4] {
			s, ok := stored[responseIDs[i]]
			require.True(t, ok, "no event for %s %s", call.method, call.path)
			require.Equal(t, call.wantTemplate, s.interaction.Endpoint)
			require.Equal(t, call.method, s.interaction.HTTPMethod)
			require.Equal(t, call.wantStatus, s.interaction.StatusCode)
			require.Equal(t, outbox.RoleServer, s.interaction.Role)
			require.Equal(t, serverOrgID, s.interaction.ServerOrgID)
			require.Equal(t, clientOrgID, s.interaction.ClientOrgID)
			require.Equal(t, call.path, s.interaction.URL)
			require.GreaterOrEqual(t, s.interaction.ProcessTimespan, int64(1))
			require.Equal(t, s.interaction.Timestamp, s.interaction.Timestamp.Truncate(time.Millisecond),
				"timestamp has millisecond precision")
			require.WithinDuration(t, time.Now(), s.interaction.Timestamp, time.Minute)
			require.Equal(t, tenantID, s.event.TenantID)
			require.Equal(t, outbox.EcosystemOFB, s.event.Ecosystem)
			require.Equal(t, outbox.TypeInteractionRecorded, s.event.Type)
			require.Equal(t, 1, s.event.Version)
			require.Equal(t, responseIDs[i], s.event.AggregateID)
			require.NotContains(t, s.rawPayload, "clientSSId", "SERVER reports have no CLIENT fields")
		}

		stats := recorder.Stats()
		require.Equal(t, int64(4), stats.Captured)
		require.Equal(t, int64(1), stats.UnmatchedRoutes)
		require.Zero(t, stats.PersistFailures)
		require.Len(t, got.all(), 4)
		for _, result := range got.all() {
			require.NoError(t, result.Err)
		}

		var collected metricdata.ResourceMetrics
		require.NoError(t, reader.Collect(ctx, &collected))
		sums := counterSums(t, collected)
		require.Equal(t, int64(4), sums["eventruntime.capture.captured"])
		require.Equal(t, int64(1), sums["eventruntime.capture.unmatched_routes"])
	})

	t.Run("FailClosedTenantGets503", func(t *testing.T) {
		t.Parallel()
		var got results
		recorder := newRecorder(t, capture.Config{
			Durability: fixedDurability(capture.DurabilityFailClosed),
			OnResult:   got.add,
			Writer:     failingWriter{},
		})
		server := httptest.NewServer(recorder.Middleware(accountsHandler(`{"data":"secret business answer"}`)))
		t.Cleanup(server.Close)

		resp, body := get(t, server, "/open-banking/accounts/v2/accounts")
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.NotContains(t, body, "secret business answer")
		require.Contains(t, body, "CAPTURE_UNAVAILABLE")
		require.Empty(t, resp.Header.Get("X-Business"), "the handler's headers are dropped")
		require.NotEmpty(t, resp.Header.Get("x-fapi-interaction-id"))

		stats := recorder.Stats()
		require.Equal(t, int64(1), stats.PersistFailures)
		require.Equal(t, int64(1), stats.Rejected)
		require.Zero(t, stats.Captured)
		require.Len(t, got.all(), 1)
		require.Error(t, got.all()[0].Err)
	})

	t.Run("FailOpenTenantGetsTheResponse", func(t *testing.T) {
		t.Parallel()
		recorder := newRecorder(t, capture.Config{
			Durability: fixedDurability(capture.DurabilityFailOpen),
			Writer:     failingWriter{},
		})
		server := httptest.NewServer(recorder.Middleware(accountsHandler(`{"data":"business answer"}`)))
		t.Cleanup(server.Close)

		resp, body := get(t, server, "/open-banking/accounts/v2/accounts")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, `{"data":"business answer"}`, body)
		require.Equal(t, "yes", resp.Header.Get("X-Business"))

		stats := recorder.Stats()
		require.Equal(t, int64(1), stats.PersistFailures)
		require.Zero(t, stats.Rejected)
		require.Zero(t, stats.Captured)
	})

	t.Run("LargeBodyIsCapturedBeforeItIsSent", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)
		writer := outbox.NewWriter(db.Pool, outbox.WriterConfig{})
		t.Cleanup(writer.Close)
		recorder := newRecorder(t, capture.Config{MaxBufferedBytes: 1024, Writer: writer})
		chunk := strings.Repeat("x", 1000)
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for range 5 {
				_, _ = io.WriteString(w, chunk)
			}
		})
		server := httptest.NewServer(recorder.Middleware(handler))
		t.Cleanup(server.Close)

		resp, body := get(t, server, "/open-banking/accounts/v2/accounts")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, strings.Repeat(chunk, 5), body)
		require.Len(t, readInteractions(t, db), 1)
		require.Equal(t, int64(1), recorder.Stats().Captured)
	})

	t.Run("LargeBodyFailClosedStopsTheHandler", func(t *testing.T) {
		t.Parallel()
		recorder := newRecorder(t, capture.Config{MaxBufferedBytes: 1024, Writer: failingWriter{}})
		writeErrs := make(chan error, 5)
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for range 5 {
				_, err := io.WriteString(w, strings.Repeat("x", 1000))
				writeErrs <- err
			}
		})
		server := httptest.NewServer(recorder.Middleware(handler))
		t.Cleanup(server.Close)

		resp, body := get(t, server, "/open-banking/accounts/v2/accounts")
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.NotContains(t, body, "xxx")
		require.NoError(t, <-writeErrs, "the first write is held")
		require.ErrorIs(t, <-writeErrs, capture.ErrCaptureRejected)
	})

	t.Run("PanickingHandlerIsCapturedAs500", func(t *testing.T) {
		t.Parallel()
		var got results
		recorder := newRecorder(t, capture.Config{OnResult: got.add, Writer: &memoryWriter{}})
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			panic(http.ErrAbortHandler)
		})
		server := httptest.NewServer(recorder.Middleware(handler))
		t.Cleanup(server.Close)

		_, err := server.Client().Get(server.URL + "/open-banking/accounts/v2/accounts")
		require.Error(t, err, "net/http closes the connection of a panicking handler")
		require.Eventually(t, func() bool { return len(got.all()) == 1 }, 5*time.Second, 10*time.Millisecond)
		require.Equal(t, http.StatusInternalServerError, got.all()[0].Interaction.StatusCode)
	})

	t.Run("UnattributedCallIsNotCaptured", func(t *testing.T) {
		t.Parallel()
		writer := &memoryWriter{}
		recorder := newRecorder(t, capture.Config{
			ResolveServer: func(*http.Request) (capture.ServerParties, bool) { return capture.ServerParties{}, false },
			Writer:        writer,
		})
		server := httptest.NewServer(recorder.Middleware(accountsHandler(`{}`)))
		t.Cleanup(server.Close)

		resp, _ := get(t, server, "/open-banking/accounts/v2/accounts")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, int64(1), recorder.Stats().Unattributed)
		require.Zero(t, writer.count())
	})
}

func counterSums(t *testing.T, collected metricdata.ResourceMetrics) map[string]int64 {
	t.Helper()
	sums := map[string]int64{}
	for _, scope := range collected.ScopeMetrics {
		for _, m := range scope.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, point := range sum.DataPoints {
				for _, kv := range point.Attributes.ToSlice() {
					require.Contains(t, []string{"role", "ecosystem"}, string(kv.Key), "metric %s", m.Name)
				}
				sums[m.Name] += point.Value
			}
		}
	}
	return sums
}

func accountsHandler(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Business", "yes")
		_, _ = io.WriteString(w, body)
	})
}

func get(t *testing.T, server *httptest.Server, path string) (*http.Response, string) {
	t.Helper()
	resp, err := server.Client().Get(server.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

type fixedDurability string

func (d fixedDurability) CaptureDurability(context.Context, string, string) string { return string(d) }

type failingWriter struct{}

func (failingWriter) Write(context.Context, *outbox.Event) error {
	return errors.New("database unavailable")
}

// memoryWriter accepts every event without a database.
type memoryWriter struct {
	mu     sync.Mutex
	events []*outbox.Event
}

func (w *memoryWriter) Write(_ context.Context, event *outbox.Event) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, event)
	return nil
}

func (w *memoryWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.events)
}
