package sequin_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/natsembed"
	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/sequin"
)

type standInBundle struct {
	db         *pgtest.Database
	natsServer *natsembed.Server
	publisher  *nats.Conn
	messages   chan *nats.Msg
	subject    string

	// slot is unique per test: slots belong to the whole cluster, which
	// parallel tests share.
	slot string
}

func setupStandIn(t *testing.T) *standInBundle {
	t.Helper()

	db := pgtest.NewDatabase(t)
	server, err := natsembed.Start(natsembed.Config{})
	require.NoError(t, err)
	t.Cleanup(server.Shutdown)

	publisher, err := nats.Connect(server.ClientURL())
	require.NoError(t, err)
	t.Cleanup(publisher.Close)
	subscriber, err := nats.Connect(server.ClientURL())
	require.NoError(t, err)
	t.Cleanup(subscriber.Close)

	bundle := &standInBundle{
		db:         db,
		natsServer: server,
		publisher:  publisher,
		messages:   make(chan *nats.Msg, 200_000),
		subject:    sequin.Subject(db.Name, "public", "outbox", "insert"),
		slot:       "standin_" + strings.TrimPrefix(db.Name, "test_"),
	}
	subscription, err := subscriber.Subscribe(bundle.subject, func(msg *nats.Msg) { bundle.messages <- msg })
	require.NoError(t, err)
	require.NoError(t, subscription.SetPendingLimits(-1, -1))
	require.NoError(t, subscriber.Flush())
	return bundle
}

// start runs a stand-in until the returned stop function is called, and
// waits until its slot is streaming.
func (b *standInBundle) start(t *testing.T, config sequin.StandInConfig) (stop func()) {
	t.Helper()

	config.DatabaseURL = b.db.URL
	config.Slot = b.slot
	config.NATS = b.publisher
	if config.StatusInterval == 0 {
		config.StatusInterval = 200 * time.Millisecond
	}
	config.RetryInterval = 50 * time.Millisecond
	config.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	standIn, err := sequin.NewStandIn(config)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- standIn.Run(ctx) }()

	select {
	case <-standIn.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("stand-in was not ready within 15s")
	}

	// A slot is also active while it is being created, before its consistent
	// point, and rows committed then are never streamed. The walsender's
	// state leaves "startup" only after START_REPLICATION.
	require.Eventually(t, func() bool {
		var state string
		err := b.db.Pool.QueryRow(context.Background(), `
			SELECT replication.state
			FROM pg_replication_slots slot
			JOIN pg_stat_replication replication ON replication.pid = slot.active_pid
			WHERE slot.slot_name = $1`, b.slot).Scan(&state)
		return err == nil && (state == "catchup" || state == "streaming")
	}, 15*time.Second, 20*time.Millisecond, "slot %s never started streaming", b.slot)

	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(15 * time.Second):
				t.Fatal("stand-in did not stop within 15s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// receive waits for count messages.
func (b *standInBundle) receive(t *testing.T, count int) []*nats.Msg {
	t.Helper()
	received := make([]*nats.Msg, 0, count)
	timeout := time.After(30 * time.Second)
	for len(received) < count {
		select {
		case msg := <-b.messages:
			received = append(received, msg)
		case <-timeout:
			t.Fatalf("received %d of %d messages within 30s", len(received), count)
		}
	}
	return received
}

// requireNoMore checks that no message arrives within wait.
func (b *standInBundle) requireNoMore(t *testing.T, wait time.Duration) {
	t.Helper()
	select {
	case msg := <-b.messages:
		t.Fatalf("unexpected message: %s", msg.Data)
	case <-time.After(wait):
	}
}

// insertTransactions inserts one transaction per size and returns the rows
// of each transaction in insert order, with created_at read back.
func insertTransactions(t *testing.T, db *pgtest.Database, aggregate string, sizes ...int) [][]outbox.Event {
	t.Helper()
	ctx := context.Background()
	transactions := make([][]outbox.Event, 0, len(sizes))
	for txIndex, size := range sizes {
		var events []outbox.Event
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			for i := range size {
				event := outbox.Event{
					ID:          uuid.Must(uuid.NewV7()),
					TenantID:    "tenant-" + strconv.Itoa(i%2),
					Ecosystem:   outbox.EcosystemOFB,
					Type:        "pcm.interaction.recorded",
					Version:     1,
					AggregateID: aggregate,
					Payload:     []byte(fmt.Sprintf(`{"tx": %d, "row": %d, "note": "a \"quoted\" line\nnext"}`, txIndex, i)),
					OccurredAt:  time.Now().UTC().Truncate(time.Microsecond),
				}
				if i%2 == 0 {
					event.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
				}
				var traceParent *string
				if event.TraceParent != "" {
					traceParent = &event.TraceParent
				}
				err := tx.QueryRow(ctx, `
					INSERT INTO outbox (id, tenant_id, ecosystem, event_type, event_version, aggregate_id, payload, trace_parent, occurred_at)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
					RETURNING created_at`,
					event.ID, event.TenantID, event.Ecosystem, event.Type, event.Version, event.AggregateID,
					string(event.Payload), traceParent, event.OccurredAt).Scan(&event.CreatedAt)
				if err != nil {
					return err
				}
				event.CreatedAt = event.CreatedAt.UTC()
				events = append(events, event)
			}
			return nil
		})
		require.NoError(t, err)
		transactions = append(transactions, events)
	}
	return transactions
}

func (b *standInBundle) confirmedFlushLSN(t *testing.T) string {
	t.Helper()
	var lsn string
	require.NoError(t, b.db.Pool.QueryRow(context.Background(),
		"SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", b.slot).Scan(&lsn))
	return lsn
}

func TestStandInPublishesRows(t *testing.T) {
	t.Parallel()
	bundle := setupStandIn(t)
	bundle.start(t, sequin.StandInConfig{})

	transactions := insertTransactions(t, bundle.db, "consent-1", 1, 3, 2, 1)
	received := bundle.receive(t, 7)

	seenKeys := make(map[string]bool)
	previousLSN := int64(0)
	next := 0
	for txIndex, events := range transactions {
		var txLSN int64
		for idx, want := range events {
			raw := received[next]
			next++
			require.Equal(t, bundle.subject, raw.Subject)

			msg, err := sequin.Decode(raw.Subject, raw.Header, raw.Data)
			require.NoError(t, err, "body: %s", raw.Data)

			require.Equal(t, sequin.ActionInsert, msg.Action)
			require.JSONEq(t, string(want.Payload), string(msg.Event.Payload))
			require.NotContains(t, string(msg.Event.Payload), ", ", "payload must be compact")
			got := msg.Event
			got.Payload, want.Payload = nil, nil
			require.Equal(t, want, got, "transaction %d row %d", txIndex, idx)

			metadata := msg.Metadata
			require.Equal(t, "public", metadata.TableSchema)
			require.Equal(t, "outbox", metadata.TableName)
			require.Equal(t, bundle.db.Name, metadata.DatabaseName)
			require.Equal(t, sequin.StandInConsumerName, metadata.Consumer.Name)
			require.Equal(t, bundle.db.Name, metadata.Database.Database)
			require.Equal(t, []string{
				want.ID.String(), want.TenantID, want.CreatedAt.Format(sequin.TimestampLayout),
			}, metadata.RecordPKs)
			require.False(t, metadata.CommitTimestamp.IsZero())
			require.NotNil(t, metadata.CommitLSN)
			require.NotNil(t, metadata.CommitIdx)
			require.Equal(t, idx, *metadata.CommitIdx, "commit_idx counts within the transaction")

			if idx == 0 {
				txLSN = *metadata.CommitLSN
				require.Greater(t, txLSN, previousLSN, "commit LSNs grow with each transaction")
				previousLSN = txLSN
			}
			require.Equal(t, txLSN, *metadata.CommitLSN, "rows of one transaction share its commit LSN")

			msgID := raw.Header.Get(sequin.MsgIDHeader)
			require.Equal(t, metadata.IdempotencyKey, msgID)
			plain, err := base64.StdEncoding.DecodeString(msgID)
			require.NoError(t, err)
			require.Equal(t, fmt.Sprintf("%d:%d", txLSN, idx), string(plain))
			require.False(t, seenKeys[msgID], "Nats-Msg-Id %s repeated", msgID)
			seenKeys[msgID] = true
		}
	}
	bundle.requireNoMore(t, 300*time.Millisecond)
}

func TestStandInResumesAfterRestart(t *testing.T) {
	t.Parallel()
	bundle := setupStandIn(t)

	stop := bundle.start(t, sequin.StandInConfig{})
	first := insertTransactions(t, bundle.db, "first", 2, 1)
	bundle.receive(t, 3)
	stop()
	confirmedAtStop := bundle.confirmedFlushLSN(t)

	// Rows committed while the stand-in is stopped must arrive after restart.
	whileStopped := insertTransactions(t, bundle.db, "while-stopped", 1, 2)

	bundle.start(t, sequin.StandInConfig{})
	after := insertTransactions(t, bundle.db, "after", 2)

	var want []uuid.UUID
	for _, events := range append(whileStopped, after...) {
		for _, event := range events {
			want = append(want, event.ID)
		}
	}
	var got []uuid.UUID
	for _, raw := range bundle.receive(t, len(want)) {
		msg, err := sequin.Decode(raw.Subject, raw.Header, raw.Data)
		require.NoError(t, err)
		require.NotEqual(t, "first", msg.Event.AggregateID,
			"a row confirmed before the stop (confirmed_flush_lsn %s) was sent again", confirmedAtStop)
		got = append(got, msg.Event.ID)
	}
	require.Equal(t, want, got)
	require.Len(t, first, 2)
	bundle.requireNoMore(t, 300*time.Millisecond)
}

func TestStandInDropHook(t *testing.T) {
	t.Parallel()
	bundle := setupStandIn(t)

	var mu sync.Mutex
	var dropped []uuid.UUID
	bundle.start(t, sequin.StandInConfig{
		Drop: func(event outbox.Event) bool {
			if event.AggregateID != "drop" {
				return false
			}
			mu.Lock()
			defer mu.Unlock()
			dropped = append(dropped, event.ID)
			return true
		},
	})

	lost := insertTransactions(t, bundle.db, "drop", 2)
	kept := insertTransactions(t, bundle.db, "keep", 1, 1)

	received := bundle.receive(t, 2)
	for i, raw := range received {
		msg, err := sequin.Decode(raw.Subject, raw.Header, raw.Data)
		require.NoError(t, err)
		require.Equal(t, kept[i][0].ID, msg.Event.ID)
	}
	bundle.requireNoMore(t, 300*time.Millisecond)

	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []uuid.UUID{lost[0][0].ID, lost[0][1].ID}, dropped)
}

func TestStandInKeyValueDatabaseURL(t *testing.T) {
	t.Parallel()

	standIn, err := sequin.NewStandIn(sequin.StandInConfig{
		DatabaseURL: "host=127.0.0.1 port=5432 user=postgres dbname=appdb",
		NATS:        &nats.Conn{},
	})
	require.NoError(t, err)
	require.NotNil(t, standIn)
}

func TestNewStandInRejectsInvalidConfig(t *testing.T) {
	t.Parallel()

	cases := []struct {
		name   string
		config sequin.StandInConfig
		reason string
	}{
		{"MissingURL", sequin.StandInConfig{NATS: &nats.Conn{}}, "DatabaseURL is missing"},
		{"MissingNATS", sequin.StandInConfig{DatabaseURL: "postgres://127.0.0.1/appdb"}, "NATS connection is missing"},
		{"BadSlot", sequin.StandInConfig{DatabaseURL: "postgres://127.0.0.1/appdb", NATS: &nats.Conn{}, Slot: "Bad-Slot"}, "slot name"},
		{"BadPublication", sequin.StandInConfig{DatabaseURL: "postgres://127.0.0.1/appdb", NATS: &nats.Conn{}, Publication: "pub'; drop"}, "publication name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := sequin.NewStandIn(tc.config)
			require.ErrorContains(t, err, tc.reason)
		})
	}
}

// TestStandInThroughput measures rows per second from a backlog: the rows are
// committed while the stand-in is stopped, then it publishes all of them.
func TestStandInThroughput(t *testing.T) {
	if testing.Short() {
		t.Skip("throughput measurement skipped in -short mode")
	}
	bundle := setupStandIn(t)
	stop := bundle.start(t, sequin.StandInConfig{StatusInterval: time.Second})
	stop()

	const transactions, rowsPerTransaction = 60, 1000
	ctx := context.Background()
	for range transactions {
		_, err := bundle.db.Pool.Exec(ctx, `
			INSERT INTO outbox (id, tenant_id, ecosystem, event_type, event_version, aggregate_id, payload, trace_parent, occurred_at)
			SELECT gen_random_uuid(), 'tenant-' || (n % 7), 'ofb', 'pcm.interaction.recorded', 1, 'consent-' || n,
			       jsonb_build_object('endpoint', '/open-banking/consents/v3/consents', 'status_code', 201,
			                          'fapi_interaction_id', gen_random_uuid(), 'process_timespan', n, 'role', 'SERVER'),
			       '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', now()
			FROM generate_series(1, $1) AS n`, rowsPerTransaction)
		require.NoError(t, err)
	}
	total := transactions * rowsPerTransaction

	started := time.Now()
	bundle.start(t, sequin.StandInConfig{StatusInterval: time.Second})
	received := bundle.receive(t, total)
	elapsed := time.Since(started)

	msg, err := sequin.Decode(received[total-1].Subject, received[total-1].Header, received[total-1].Data)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(msg.Event.AggregateID, "consent-"))
	t.Logf("stand-in published %d rows in %v: %.0f rows/s (including slot start and decoding in PostgreSQL)",
		total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())
}

// testWriter sends log lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestStandInWaitsForNATS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDatabase(t)
	storeDir := t.TempDir()

	server, err := natsembed.Start(natsembed.Config{StoreDir: storeDir})
	require.NoError(t, err)
	serverURL, err := url.Parse(server.ClientURL())
	require.NoError(t, err)
	port, err := strconv.Atoi(serverURL.Port())
	require.NoError(t, err)

	publisher, err := nats.Connect(server.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(publisher.Close)

	// A JetStream stream captures the subject, as in production, so messages
	// published while no subscriber is connected are kept.
	subject := sequin.Subject(db.Name, "public", "outbox", "insert")
	streamConfig := jetstream.StreamConfig{Name: "OUTBOX", Subjects: []string{subject}, Storage: jetstream.FileStorage}
	js, err := jetstream.New(publisher)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, streamConfig)
	require.NoError(t, err)

	bundle := &standInBundle{db: db, publisher: publisher, slot: "standin_" + strings.TrimPrefix(db.Name, "test_")}
	bundle.start(t, sequin.StandInConfig{})

	// streamEventIDs returns the event ids stored in the stream, or nil while
	// the server is not reachable.
	streamEventIDs := func() []uuid.UUID {
		stream, err := js.Stream(ctx, "OUTBOX")
		if err != nil {
			t.Logf("look up stream: %v", err)
			return nil
		}
		info, err := stream.Info(ctx)
		if err != nil {
			t.Logf("read stream info: %v", err)
			return nil
		}
		var ids []uuid.UUID
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			raw, err := stream.GetMsg(ctx, seq)
			if err != nil {
				t.Logf("read stream message %d: %v", seq, err)
				return nil
			}
			msg, err := sequin.Decode(raw.Subject, nats.Header(raw.Header), raw.Data)
			require.NoError(t, err)
			ids = append(ids, msg.Event.ID)
		}
		return ids
	}

	var coreCount atomic.Int64
	_, err = publisher.Subscribe(subject, func(*nats.Msg) { coreCount.Add(1) })
	require.NoError(t, err)
	before := insertTransactions(t, db, "before", 2)
	require.Eventually(t, func() bool { return len(streamEventIDs()) == 2 }, 15*time.Second, 50*time.Millisecond,
		"stream has %d, core subscription saw %d", len(streamEventIDs()), coreCount.Load())
	require.Eventually(t, func() bool { return bundle.confirmedFlushLSN(t) != "" }, 5*time.Second, 50*time.Millisecond)

	server.Shutdown()
	// Let the stand-in confirm what it published before the outage.
	time.Sleep(500 * time.Millisecond)
	confirmedBefore := bundle.confirmedFlushLSN(t)

	during := insertTransactions(t, db, "during", 3)
	time.Sleep(time.Second)
	require.Equal(t, confirmedBefore, bundle.confirmedFlushLSN(t), "slot advanced while NATS was down")

	server, err = natsembed.Start(natsembed.Config{Port: port, StoreDir: storeDir})
	require.NoError(t, err)
	t.Cleanup(server.Shutdown)

	want := []uuid.UUID{before[0][0].ID, before[0][1].ID, during[0][0].ID, during[0][1].ID, during[0][2].ID}
	require.Eventually(t, func() bool {
		ids := streamEventIDs()
		seen := make(map[uuid.UUID]bool)
		for _, id := range ids {
			seen[id] = true
		}
		for _, id := range want {
			if !seen[id] {
				return false
			}
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "rows published during the outage never reached the stream")
	require.Eventually(t, func() bool { return bundle.confirmedFlushLSN(t) != confirmedBefore },
		15*time.Second, 50*time.Millisecond, "slot did not advance after NATS came back")
}
