package webhook_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/natsembed"
	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/sequin"
	"github.com/finnest/eventruntime/webhook"
	"github.com/finnest/eventruntime/worker"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const testTenant = "tenant-a"

// harness is a whole running service with the webhook extension, on a
// private database and NATS server, fed by the Sequin stand-in.
type harness struct {
	db      *pgtest.Database
	service *worker.Service
	store   *webhook.Store
}

func setup(t *testing.T, cfg webhook.Config) *harness {
	t.Helper()
	ctx := context.Background()
	h := &harness{db: pgtest.NewDatabase(t)}

	natsServer, err := natsembed.Start(natsembed.Config{})
	require.NoError(t, err)
	t.Cleanup(natsServer.Shutdown)

	key := make([]byte, 32)
	_, _ = rand.Read(key)
	box, err := webhook.NewSecretBox(key)
	require.NoError(t, err)

	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: testLogLevel()}))
	cfg.Pool = h.db.Pool
	cfg.Secrets = box
	cfg.Logger = logger
	// Receivers listen on 127.0.0.1, which is blocked unless allowed.
	cfg.AllowedPrefixes = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	if cfg.FetchPollInterval == 0 {
		cfg.FetchPollInterval = 100 * time.Millisecond
	}
	extension, err := webhook.Extension(cfg)
	require.NoError(t, err)
	h.store = &webhook.Store{Pool: h.db.Pool, Secrets: box, AllowedPrefixes: cfg.AllowedPrefixes}

	h.service, err = worker.New(ctx, worker.Config{
		DatabaseURL: h.db.URL,
		Decoder:     worker.DecodeSequin,
		Extensions:  []worker.Extension{extension},
		HTTPAddr:    "127.0.0.1:0",
		Logger:      logger,
		NATSURL:     natsServer.ClientURL(),
		Stream:      worker.StreamConfig{Name: "OUTBOX", Subjects: []string{"sequin." + h.db.Name + ".public.outbox.*"}},
	})
	require.NoError(t, err)

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = h.service.Run(runCtx)
	}()

	conn, err := nats.Connect(natsServer.ClientURL())
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	// Replication slots belong to the whole cluster, so each test needs its
	// own.
	standIn, err := sequin.NewStandIn(sequin.StandInConfig{
		DatabaseURL: h.db.URL, NATS: conn, Slot: "standin_" + h.db.Name,
	})
	require.NoError(t, err)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = standIn.Run(runCtx)
	}()
	select {
	case <-standIn.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("Sequin stand-in not ready after 30s")
	}
	return h
}

// subscribe creates an enabled subscription of testTenant.
func (h *harness) subscribe(t *testing.T, url string, types []string, policy webhook.RetryPolicy) *webhook.Subscription {
	t.Helper()
	sub, err := h.store.Create(context.Background(), webhook.CreateParams{
		Actor: "test", Ecosystem: outbox.EcosystemOFB, EventTypes: types, RetryPolicy: policy,
		TenantID: testTenant, URL: url,
	})
	require.NoError(t, err)
	return sub
}

// appendOne appends each event in its own transaction, so commit order is
// the slice order.
func (h *harness) appendOne(t *testing.T, events ...*outbox.Event) {
	t.Helper()
	ctx := context.Background()
	for _, event := range events {
		require.NoError(t, pgx.BeginFunc(ctx, h.db.Pool, func(tx pgx.Tx) error {
			return outbox.Append(ctx, tx, event)
		}))
	}
}

func (h *harness) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, h.db.Pool.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

// newEvent returns an event whose payload carries its position within its
// aggregate.
func newEvent(eventType, aggregate string, seq int) *outbox.Event {
	payload, _ := json.Marshal(map[string]any{"aggregate": aggregate, "seq": seq})
	return &outbox.Event{
		TenantID: testTenant, Ecosystem: outbox.EcosystemOFB, Type: eventType, Version: 1,
		AggregateID: aggregate, Payload: payload,
	}
}

// received is one request a receiver got.
type received struct {
	aggregate string
	at        time.Time
	header    http.Header
	body      []byte
	eventID   string
	seq       int
	status    int
	verifyErr map[string]error // by secret
}

// receiver is a customer endpoint on 127.0.0.1 that verifies every request
// with the upstream Standard Webhooks library and responds with the status
// that status returns.
type receiver struct {
	server  *httptest.Server
	mu      sync.Mutex
	secrets []string
	got     []received
	status  func(r *http.Request) int
}

func newReceiver(t *testing.T, status func(r *http.Request) int) *receiver {
	t.Helper()
	rec := &receiver{status: status}
	rec.server = httptest.NewServer(http.HandlerFunc(rec.serve))
	t.Cleanup(rec.server.Close)
	return rec
}

func (rec *receiver) URL() string { return rec.server.URL + "/hooks?token=abc" }

func (rec *receiver) setSecrets(secrets ...string) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.secrets = secrets
}

func (rec *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var message struct {
		ID          string `json:"id"`
		AggregateID string `json:"aggregate_id"`
		Data        struct {
			Seq int `json:"seq"`
		} `json:"data"`
	}
	_ = json.Unmarshal(body, &message)
	got := received{
		aggregate: message.AggregateID, at: time.Now(), header: r.Header.Clone(), body: body,
		eventID: message.ID, seq: message.Data.Seq, verifyErr: map[string]error{},
	}
	rec.mu.Lock()
	for _, secret := range rec.secrets {
		verifier, err := standardwebhooks.NewWebhook(secret)
		if err == nil {
			err = verifier.Verify(body, r.Header)
		}
		got.verifyErr[secret] = err
	}
	rec.mu.Unlock()

	got.status = rec.status(r)
	rec.mu.Lock()
	rec.got = append(rec.got, got)
	rec.mu.Unlock()
	w.WriteHeader(got.status)
	_, _ = fmt.Fprintf(w, `{"status":%d}`, got.status)
}

func (rec *receiver) requests() []received {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]received(nil), rec.got...)
}

// accepted returns the requests that got a 2xx response.
func (rec *receiver) accepted() []received {
	var out []received
	for _, got := range rec.requests() {
		if got.status >= 200 && got.status < 300 {
			out = append(out, got)
		}
	}
	return out
}

// requireInOrder checks that accepted holds each event of want exactly once
// and, per aggregate, in the order of want.
func requireInOrder(t *testing.T, want []*outbox.Event, accepted []received) {
	t.Helper()
	seen := map[string]int{}
	perAggregate := map[string][]int{}
	for _, got := range accepted {
		seen[got.eventID]++
		perAggregate[got.aggregate] = append(perAggregate[got.aggregate], got.seq)
	}
	wantPerAggregate := map[string][]int{}
	for _, event := range want {
		require.Equal(t, 1, seen[event.ID.String()], "event %s accepted %d times", event.ID, seen[event.ID.String()])
		var payload struct{ Seq int }
		require.NoError(t, json.Unmarshal(event.Payload, &payload))
		wantPerAggregate[event.AggregateID] = append(wantPerAggregate[event.AggregateID], payload.Seq)
	}
	require.Len(t, accepted, len(want))
	for aggregate, seqs := range wantPerAggregate {
		require.Equal(t, seqs, perAggregate[aggregate], "order of aggregate %s", aggregate)
	}
}

func jitterFree(delays ...time.Duration) webhook.RetryPolicy {
	zero := 0.0
	return webhook.RetryPolicy{Delays: delays, Jitter: &zero}
}

func repeat(delay time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = delay
	}
	return out
}

// newInsertClient returns an insert-only River client, as the CLI uses.
func newInsertClient(t *testing.T, h *harness) *river.Client[pgx.Tx] {
	t.Helper()
	client, err := river.NewClient(riverpgxv5.New(h.db.Pool), &river.Config{})
	require.NoError(t, err)
	return client
}

func mustUUID(t *testing.T, text string) uuid.UUID {
	t.Helper()
	id, err := uuid.Parse(text)
	require.NoError(t, err)
	return id
}

// testLogLevel returns the level in WEBHOOK_TEST_LOG_LEVEL, or warn.
func testLogLevel() slog.Level {
	level := slog.LevelWarn
	_ = level.UnmarshalText([]byte(os.Getenv("WEBHOOK_TEST_LOG_LEVEL")))
	return level
}
