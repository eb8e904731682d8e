package sequin_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/sequin"
)

func sampleMessage() *sequin.Message {
	commitLSN := int64(27547336)
	commitIdx := 3
	return &sequin.Message{
		Action: sequin.ActionInsert,
		Event: outbox.Event{
			ID:          uuid.MustParse("0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04"),
			TenantID:    "tenant \"a\"\n",
			Ecosystem:   outbox.EcosystemOPIN,
			Type:        "claim.approved",
			Version:     3,
			AggregateID: "claim-ção-\u2028-\x01",
			Payload:     json.RawMessage("{\"amount\": \"1520.35\",\n \"nested\": {\"list\": [1, 2]}}"),
			OccurredAt:  time.Date(2025, 3, 14, 9, 26, 52, 0, time.UTC),
			CreatedAt:   time.Date(2025, 3, 14, 6, 26, 53, 581204999, time.FixedZone("BRT", -3*3600)),
		},
		Metadata: sequin.Metadata{
			TableSchema:     "public",
			TableName:       "outbox",
			CommitTimestamp: time.Date(2025, 3, 14, 9, 26, 53, 602811000, time.UTC),
			CommitLSN:       &commitLSN,
			CommitIdx:       &commitIdx,
			DatabaseName:    "eventruntime",
			IdempotencyKey:  sequin.IdempotencyKey(commitLSN, commitIdx),
			RecordPKs:       []string{"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04", "tenant-a", "2025-03-14T09:26:53.581204Z"},
			Consumer:        sequin.Consumer{ID: "8f1d6b0e-3c1a-4d6e-9a57-2b7c8e4f1a90", Name: "outbox-nats", Annotations: json.RawMessage(`{}`)},
			Database: sequin.Database{
				ID: "c2b1f7a4-5e3d-4b8a-8f6c-1d9e0a7b3c52", Name: "eventruntime", Annotations: json.RawMessage(`{}`),
				Database: "eventruntime", Hostname: "db.internal",
			},
		},
	}
}

func TestEncodeExactBody(t *testing.T) {
	t.Parallel()

	msg := sampleMessage()
	msg.Event.TenantID = "tenant-a"
	msg.Event.AggregateID = "claim-12"
	msg.Event.Payload = json.RawMessage(`{"amount": "1520.35"}`)
	msg.Event.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

	body, err := sequin.Encode(msg)
	require.NoError(t, err)
	require.Equal(t, `{"action":"insert",`+
		`"record":{"id":"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04","tenant_id":"tenant-a","ecosystem":"opin",`+
		`"event_type":"claim.approved","event_version":3,"aggregate_id":"claim-12","payload":{"amount":"1520.35"},`+
		`"trace_parent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",`+
		`"occurred_at":"2025-03-14T09:26:52.000000Z","created_at":"2025-03-14T09:26:53.581204Z"},`+
		`"changes":null,`+
		`"metadata":{"table_schema":"public","table_name":"outbox","commit_timestamp":"2025-03-14T09:26:53.602811Z",`+
		`"commit_lsn":27547336,"commit_idx":3,"database_name":"eventruntime","idempotency_key":"Mjc1NDczMzY6Mw==",`+
		`"record_pks":["0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04","tenant-a","2025-03-14T09:26:53.581204Z"],`+
		`"transaction_annotations":null,"enrichment":null,`+
		`"consumer":{"id":"8f1d6b0e-3c1a-4d6e-9a57-2b7c8e4f1a90","name":"outbox-nats","annotations":{}},`+
		`"database":{"id":"c2b1f7a4-5e3d-4b8a-8f6c-1d9e0a7b3c52","name":"eventruntime","annotations":{},`+
		`"database":"eventruntime","hostname":"db.internal"}}}`, string(body))
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	t.Parallel()

	msg := sampleMessage()
	body, err := sequin.Encode(msg)
	require.NoError(t, err)
	require.True(t, json.Valid(body), "body: %s", body)
	require.NotContains(t, string(body), "\n", "body must be compact")
	require.Contains(t, string(body), `"trace_parent":null`)
	require.Contains(t, string(body), `"created_at":"2025-03-14T09:26:53.581204Z"`)

	subject := sequin.Subject("eventruntime", "public", "outbox", "insert")
	decoded, err := sequin.Decode(subject, msgIDHeader(msg.Metadata.IdempotencyKey), body)
	require.NoError(t, err)

	want := msg.Event
	want.Payload = json.RawMessage(`{"amount":"1520.35","nested":{"list":[1,2]}}`)
	want.CreatedAt = time.Date(2025, 3, 14, 9, 26, 53, 581204000, time.UTC)
	require.Equal(t, want, decoded.Event)
	require.Equal(t, msg.Metadata.IdempotencyKey, decoded.MsgID)

	decoded.Metadata.CommitTimestamp = decoded.Metadata.CommitTimestamp.UTC()
	require.Equal(t, msg.Metadata, decoded.Metadata)
}

func TestEncodeRejectsInvalidPayload(t *testing.T) {
	t.Parallel()

	msg := sampleMessage()
	msg.Event.Payload = json.RawMessage(`{"a":`)
	_, err := sequin.Encode(msg)
	require.ErrorContains(t, err, "payload")

	msg.Event.Payload = nil
	_, err = sequin.Encode(msg)
	require.ErrorContains(t, err, "payload is empty")
}

func TestEncodeEscapesControlCharacters(t *testing.T) {
	t.Parallel()

	msg := sampleMessage()
	body, err := sequin.Encode(msg)
	require.NoError(t, err)
	require.True(t, strings.Contains(string(body), `"tenant_id":"tenant \"a\"\n"`))
	require.True(t, strings.Contains(string(body), `\u0001`))
}

func BenchmarkEncode(b *testing.B) {
	msg := sampleMessage()
	buffer := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buffer, err = sequin.AppendEncode(buffer[:0], msg); err != nil {
			b.Fatal(err)
		}
	}
}
