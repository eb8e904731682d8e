package chaos_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/sequin"
)

// sequinBody encodes a valid Sequin message for event on the scenario's
// subject, as Sequin's NATS sink would publish it.
func (e *env) sequinBody(t *testing.T, event *outbox.Event, lsn int64) string {
	t.Helper()
	idx := 0
	event.CreatedAt = time.Now().UTC()
	body, err := sequin.Encode(&sequin.Message{
		Action: sequin.ActionInsert,
		Event:  *event,
		Metadata: sequin.Metadata{
			TableSchema: "public", TableName: "outbox", CommitTimestamp: event.CreatedAt,
			CommitLSN: &lsn, CommitIdx: &idx, DatabaseName: e.dbName, IdempotencyKey: sequin.IdempotencyKey(lsn, idx),
			RecordPKs: []string{event.TenantID, event.ID.String(), event.CreatedAt.Format(time.RFC3339Nano)},
		},
	})
	require.NoError(t, err)
	return string(body)
}

// Poison events are mixed into normal traffic. The producer API rejects
// four kinds up front, so those are published as raw Sequin messages on the
// outbox subject, as a faulty CDC path would deliver them. An unknown event
// version is valid for the producer and is appended through the outbox. Each
// poison event must land in dead_letters with its reason while every normal
// event is accepted once.
func TestPoisonAmongNormalTraffic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.startService(serviceOptions{})
	e.startStandIn()
	generator := e.loadGenerator(601)

	withPayload := func(payload string) *outbox.Event {
		event := generator.Event()
		event.ID = uuid.Must(uuid.NewV7())
		event.Payload = []byte(payload)
		return event
	}
	oversized := `{"note":"` + strings.Repeat("x", outbox.DefaultMaxPayloadBytes) + `"}`
	producerRejects := []struct {
		name    string
		payload string
	}{
		{"NulEscape", `{"note":"a\u0000b"}`},
		{"InvalidUTF8", "{\"note\":\"a\xff\xfeb\"}"},
		{"Oversized", oversized},
		{"MalformedJSON", `{"note":`},
	}
	for _, poison := range producerRejects {
		err := e.appendEvents(withPayload(poison.payload))
		require.ErrorIs(t, err, outbox.ErrInvalidEvent, "the producer API must reject %s", poison.name)
	}

	// The raw messages start from a valid body whose payload is then
	// corrupted, as the producer check would have prevented.
	valid := func(lsn int64) string { return e.sequinBody(t, withPayload(`{"note":"ok"}`), lsn) }
	rawPoison := []struct {
		name   string
		body   string
		reason string
	}{
		{"NulEscape", strings.Replace(valid(1), `{"note":"ok"}`, `{"note":"a\u0000b"}`, 1), `u0000`},
		{"InvalidUTF8", strings.Replace(valid(2), `{"note":"ok"}`, "{\"note\":\"a\xff\xfeb\"}", 1), "UTF-8"},
		{"Oversized", strings.Replace(valid(3), `{"note":"ok"}`, oversized, 1), "limit"},
		{"MalformedJSON", valid(4)[:60], ""},
	}
	conn, err := nats.Connect(e.natsURL())
	require.NoError(t, err)
	defer conn.Close()

	producer := e.startLoad(602, durations.LoadRate)
	unknownVersion := generator.Event()
	unknownVersion.Version = 2
	for _, poison := range rawPoison {
		time.Sleep(durations.Load / time.Duration(len(rawPoison)+1))
		require.NoError(t, conn.Publish(e.subject, []byte(poison.body)), "publish %s", poison.name)
	}
	require.NoError(t, e.appendEvents(unknownVersion))
	time.Sleep(durations.Load / time.Duration(len(rawPoison)+1))
	producer.stop()
	faultEnded := time.Now()

	result := e.settle(faultEnded, producer.committedIDs())
	ctx := context.Background()
	require.Eventually(t, func() bool {
		return e.count("SELECT count(*) FROM dead_letters") >= len(rawPoison)+1
	}, 30*time.Second, 100*time.Millisecond)
	for _, poison := range rawPoison {
		var reason string
		require.NoError(t, e.pool.QueryRow(ctx, `SELECT reason FROM dead_letters
			WHERE source = 'regulator' AND payload = $1`, []byte(poison.body)).Scan(&reason), "dead letter of %s", poison.name)
		require.NotEmpty(t, reason, "reason of %s", poison.name)
		require.Contains(t, reason, poison.reason, "reason of %s", poison.name)
	}
	require.Equal(t, 1, e.count(`SELECT count(*) FROM dead_letters
		WHERE source = 'map' AND event_id = $1 AND reason LIKE 'unknown version 2%'`, unknownVersion.ID))
	deadLetters := e.count("SELECT count(*) FROM dead_letters")
	require.Equal(t, len(rawPoison)+1, deadLetters, "only the poison events are dead-lettered")
	e.verdict("poison", result, formatDetails("producer_rejected", len(producerRejects), "dead_letters", deadLetters))
}
