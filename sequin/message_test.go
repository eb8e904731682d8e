package sequin_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/sequin"
)

// insertBody is an insert as Sequin v0.14 sends it: compact JSON, keys of
// each object in the order Elixir's small maps encode them (sorted).
const insertBody = `{"action":"insert","changes":null,"metadata":{"commit_idx":0,"commit_lsn":27547336,"commit_timestamp":"2025-03-14T09:26:53.602811Z","consumer":{"annotations":{},"id":"8f1d6b0e-3c1a-4d6e-9a57-2b7c8e4f1a90","name":"outbox-nats"},"database":{"annotations":{},"database":"eventruntime","hostname":"db.internal","id":"c2b1f7a4-5e3d-4b8a-8f6c-1d9e0a7b3c52","name":"eventruntime"},"database_name":"eventruntime","enrichment":null,"idempotency_key":"Mjc1NDczMzY6MA==","record_pks":["0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04","tenant-a","2025-03-14T09:26:53.581204Z"],"table_name":"outbox","table_schema":"public","transaction_annotations":null},"record":{"aggregate_id":"consent-7781","created_at":"2025-03-14T09:26:53.581204Z","ecosystem":"ofb","event_type":"pcm.interaction.recorded","event_version":1,"id":"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04","occurred_at":"2025-03-14T09:26:52.100000Z","payload":{"endpoint":"/open-banking/consents/v3/consents","fapi_interaction_id":"5b0f8c1e-2d3a-4f6b-9c8d-7e1a2b3c4d5e","status_code":201},"tenant_id":"tenant-a","trace_parent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}`

// nullTraceBody is the second change of the same transaction, with a null
// trace_parent.
const nullTraceBody = `{"action":"insert","changes":null,"metadata":{"commit_idx":2,"commit_lsn":27547336,"commit_timestamp":"2025-03-14T09:26:53.602811Z","consumer":{"annotations":{},"id":"8f1d6b0e-3c1a-4d6e-9a57-2b7c8e4f1a90","name":"outbox-nats"},"database":{"annotations":{},"database":"eventruntime","hostname":"db.internal","id":"c2b1f7a4-5e3d-4b8a-8f6c-1d9e0a7b3c52","name":"eventruntime"},"database_name":"eventruntime","enrichment":null,"idempotency_key":"Mjc1NDczMzY6Mg==","record_pks":["0195947c-6b1f-7a02-8c44-9f0e1d2c3b4a","tenant-b","2025-03-14T09:26:53.581204Z"],"table_name":"outbox","table_schema":"public","transaction_annotations":null},"record":{"aggregate_id":"claim-12","created_at":"2025-03-14T09:26:53.581204Z","ecosystem":"opin","event_type":"claim.approved","event_version":2,"id":"0195947c-6b1f-7a02-8c44-9f0e1d2c3b4a","occurred_at":"2025-03-14T09:26:53.000000Z","payload":{"amount":"1520.35","currency":"BRL"},"tenant_id":"tenant-b","trace_parent":null}}`

// readBody is a backfill read: commit_lsn and commit_idx are null and the
// idempotency key is the base64 of "<backfill id>:<primary key>".
const readBody = `{"action":"read","changes":null,"metadata":{"commit_idx":null,"commit_lsn":null,"commit_timestamp":"2025-03-15T12:00:01.004512Z","consumer":{"annotations":{},"id":"8f1d6b0e-3c1a-4d6e-9a57-2b7c8e4f1a90","name":"outbox-nats"},"database":{"annotations":{},"database":"eventruntime","hostname":"db.internal","id":"c2b1f7a4-5e3d-4b8a-8f6c-1d9e0a7b3c52","name":"eventruntime"},"database_name":"eventruntime","enrichment":null,"idempotency_key":"M2YwYzlkMmUtOGE3MS00YjVjLWE2ZTQtMWQyZjdiOWMwZTUzOjAxOTU5NDdjLTdkMjAtN2YxYi04ZTZhLTRjM2QyYjFhMGY5OA==","record_pks":["0195947c-7d20-7f1b-8e6a-4c3d2b1a0f98","tenant-a","2025-03-14T09:27:11.000001Z"],"table_name":"outbox","table_schema":"public","transaction_annotations":null},"record":{"aggregate_id":"consent-7781","created_at":"2025-03-14T09:27:11.000001Z","ecosystem":"ofb","event_type":"pcm.interaction.recorded","event_version":1,"id":"0195947c-7d20-7f1b-8e6a-4c3d2b1a0f98","occurred_at":"2025-03-14T09:27:10.999000Z","payload":{"status_code":200},"tenant_id":"tenant-a","trace_parent":null}}`

// reorderedBody is insertBody with every object's keys in another order, and
// transaction annotations set.
const reorderedBody = `{"record":{"trace_parent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tenant_id":"tenant-a","payload":{"status_code":201,"fapi_interaction_id":"5b0f8c1e-2d3a-4f6b-9c8d-7e1a2b3c4d5e","endpoint":"/open-banking/consents/v3/consents"},"occurred_at":"2025-03-14T09:26:52.100000Z","id":"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04","event_version":1,"event_type":"pcm.interaction.recorded","ecosystem":"ofb","created_at":"2025-03-14T09:26:53.581204Z","aggregate_id":"consent-7781"},"metadata":{"transaction_annotations":{"actor":"batch-import"},"table_schema":"public","table_name":"outbox","record_pks":["0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04","tenant-a","2025-03-14T09:26:53.581204Z"],"idempotency_key":"Mjc1NDczMzY6MA==","enrichment":null,"database_name":"eventruntime","database":{"name":"eventruntime","id":"c2b1f7a4-5e3d-4b8a-8f6c-1d9e0a7b3c52","hostname":"db.internal","database":"eventruntime","annotations":{}},"consumer":{"name":"outbox-nats","id":"8f1d6b0e-3c1a-4d6e-9a57-2b7c8e4f1a90","annotations":{}},"commit_timestamp":"2025-03-14T09:26:53.602811Z","commit_lsn":27547336,"commit_idx":0},"changes":null,"action":"insert"}`

const insertSubject = "sequin.eventruntime.public.outbox.insert"

func msgIDHeader(key string) nats.Header {
	return nats.Header{sequin.MsgIDHeader: []string{key}}
}

func TestDecodeInsert(t *testing.T) {
	t.Parallel()

	msg, err := sequin.Decode(insertSubject, msgIDHeader("Mjc1NDczMzY6MA=="), []byte(insertBody))
	require.NoError(t, err)

	require.Equal(t, sequin.ActionInsert, msg.Action)
	require.Equal(t, insertSubject, msg.Subject)
	require.Equal(t, "Mjc1NDczMzY6MA==", msg.MsgID)
	require.Nil(t, msg.Changes)

	event := msg.Event
	require.Equal(t, uuid.MustParse("0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04"), event.ID)
	require.Equal(t, "tenant-a", event.TenantID)
	require.Equal(t, outbox.EcosystemOFB, event.Ecosystem)
	require.Equal(t, "pcm.interaction.recorded", event.Type)
	require.Equal(t, 1, event.Version)
	require.Equal(t, "consent-7781", event.AggregateID)
	require.Equal(t,
		`{"endpoint":"/open-banking/consents/v3/consents","fapi_interaction_id":"5b0f8c1e-2d3a-4f6b-9c8d-7e1a2b3c4d5e","status_code":201}`,
		string(event.Payload))
	require.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", event.TraceParent)
	require.Equal(t, time.Date(2025, 3, 14, 9, 26, 52, 100000000, time.UTC), event.OccurredAt)
	require.Equal(t, time.Date(2025, 3, 14, 9, 26, 53, 581204000, time.UTC), event.CreatedAt)

	metadata := msg.Metadata
	require.Equal(t, "public", metadata.TableSchema)
	require.Equal(t, "outbox", metadata.TableName)
	require.Equal(t, time.Date(2025, 3, 14, 9, 26, 53, 602811000, time.UTC), metadata.CommitTimestamp.UTC())
	require.NotNil(t, metadata.CommitLSN)
	require.Equal(t, int64(27547336), *metadata.CommitLSN)
	require.NotNil(t, metadata.CommitIdx)
	require.Equal(t, 0, *metadata.CommitIdx)
	require.Equal(t, "eventruntime", metadata.DatabaseName)
	require.Equal(t, sequin.IdempotencyKey(27547336, 0), metadata.IdempotencyKey)
	require.Equal(t, []string{"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04", "tenant-a", "2025-03-14T09:26:53.581204Z"}, metadata.RecordPKs)
	require.Nil(t, metadata.TransactionAnnotations)
	require.Nil(t, metadata.Enrichment)
	require.Equal(t, sequin.Consumer{
		ID:          "8f1d6b0e-3c1a-4d6e-9a57-2b7c8e4f1a90",
		Name:        "outbox-nats",
		Annotations: json.RawMessage(`{}`),
	}, metadata.Consumer)
	require.Equal(t, sequin.Database{
		ID:          "c2b1f7a4-5e3d-4b8a-8f6c-1d9e0a7b3c52",
		Name:        "eventruntime",
		Annotations: json.RawMessage(`{}`),
		Database:    "eventruntime",
		Hostname:    "db.internal",
	}, metadata.Database)
}

func TestDecodeNullTraceParent(t *testing.T) {
	t.Parallel()

	msg, err := sequin.Decode(insertSubject, msgIDHeader("Mjc1NDczMzY6Mg=="), []byte(nullTraceBody))
	require.NoError(t, err)

	require.Empty(t, msg.Event.TraceParent)
	require.Equal(t, outbox.EcosystemOPIN, msg.Event.Ecosystem)
	require.Equal(t, 2, msg.Event.Version)
	require.Equal(t, 2, *msg.Metadata.CommitIdx)
	require.Equal(t, sequin.IdempotencyKey(27547336, 2), msg.Metadata.IdempotencyKey)
}

func TestDecodeBackfillRead(t *testing.T) {
	t.Parallel()

	const key = "M2YwYzlkMmUtOGE3MS00YjVjLWE2ZTQtMWQyZjdiOWMwZTUzOjAxOTU5NDdjLTdkMjAtN2YxYi04ZTZhLTRjM2QyYjFhMGY5OA=="
	msg, err := sequin.Decode("sequin.eventruntime.public.outbox.read", msgIDHeader(key), []byte(readBody))
	require.NoError(t, err)

	require.Equal(t, sequin.ActionRead, msg.Action)
	require.Nil(t, msg.Metadata.CommitLSN)
	require.Nil(t, msg.Metadata.CommitIdx)
	require.Equal(t, key, msg.Metadata.IdempotencyKey)
	require.Equal(t, key, msg.MsgID)

	plain, err := base64.StdEncoding.DecodeString(msg.Metadata.IdempotencyKey)
	require.NoError(t, err)
	require.Equal(t, "3f0c9d2e-8a71-4b5c-a6e4-1d2f7b9c0e53:"+msg.Event.ID.String(), string(plain))
	require.Equal(t, time.Date(2025, 3, 14, 9, 27, 11, 1000, time.UTC), msg.Event.CreatedAt)
}

func TestDecodeKeyOrderDoesNotMatter(t *testing.T) {
	t.Parallel()

	sorted, err := sequin.Decode(insertSubject, nil, []byte(insertBody))
	require.NoError(t, err)
	reordered, err := sequin.Decode(insertSubject, nil, []byte(reorderedBody))
	require.NoError(t, err)

	require.Equal(t, sorted.Event.ID, reordered.Event.ID)
	require.Equal(t, sorted.Event.CreatedAt, reordered.Event.CreatedAt)
	require.Equal(t, sorted.Metadata.IdempotencyKey, reordered.Metadata.IdempotencyKey)
	require.JSONEq(t, string(sorted.Event.Payload), string(reordered.Event.Payload))
	require.JSONEq(t, `{"actor":"batch-import"}`, string(reordered.Metadata.TransactionAnnotations))

	reordered.Event.Payload = sorted.Event.Payload
	require.Equal(t, sorted.Event, reordered.Event)
}

func TestDecodeCompactsPayload(t *testing.T) {
	t.Parallel()

	body := strings.Replace(insertBody,
		`"payload":{"endpoint":"/open-banking/consents/v3/consents",`,
		`"payload": {"endpoint": "/open-banking/consents/v3/consents",`+"\n ", 1)
	require.NotEqual(t, insertBody, body)

	msg, err := sequin.Decode(insertSubject, nil, []byte(body))
	require.NoError(t, err)
	require.Equal(t,
		`{"endpoint":"/open-banking/consents/v3/consents","fapi_interaction_id":"5b0f8c1e-2d3a-4f6b-9c8d-7e1a2b3c4d5e","status_code":201}`,
		string(msg.Event.Payload))
}

func TestDecodeToleratesChangesOnInsert(t *testing.T) {
	t.Parallel()

	body := strings.Replace(insertBody, `"changes":null`, `"changes":{}`, 1)
	msg, err := sequin.Decode(insertSubject, nil, []byte(body))
	require.NoError(t, err)
	require.Equal(t, `{}`, string(msg.Changes))
}

func TestDecodeMalformed(t *testing.T) {
	t.Parallel()

	const eventID = "0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04"
	replace := func(old, replacement string) string {
		t.Helper()
		require.Contains(t, insertBody, old)
		return strings.Replace(insertBody, old, replacement, 1)
	}

	cases := []struct {
		name       string
		subject    string
		body       string
		reason     string
		eventID    string
		notInvalid bool
	}{
		{name: "NotJSON", body: `{"action":"insert",`, reason: "not valid JSON"},
		{name: "Empty", body: ``, reason: "not valid JSON"},
		{name: "Array", body: `[]`, reason: "want an object"},
		{name: "MissingRecord", body: `{"action":"insert","changes":null,"metadata":{}}`, reason: "record is missing"},
		{name: "NullRecord", body: replace(`"record":{`, `"record":null,"x":{`), reason: "record is missing"},
		{name: "RecordNotObject", body: `{"action":"insert","record":"row"}`, reason: "record is a JSON string"},
		{name: "MissingAction", body: replace(`"action":"insert",`, ``), reason: "action is missing", eventID: eventID},
		{name: "UnknownAction", body: replace(`"action":"insert"`, `"action":"upsert"`), reason: `action "upsert" is unknown`, eventID: eventID},
		{name: "SubjectActionMismatch", subject: "sequin.eventruntime.public.outbox.delete", body: insertBody, reason: `names action "delete"`, eventID: eventID},
		{name: "MissingMetadata", body: replace(`"metadata":{`, `"other":{`), reason: "metadata is missing", eventID: eventID},
		{name: "CommitLSNString", body: replace(`"commit_lsn":27547336`, `"commit_lsn":"27547336"`), reason: "metadata.commit_lsn is a JSON string", eventID: eventID},
		{name: "MissingID", body: replace(`"id":"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04","occurred_at"`, `"occurred_at"`), reason: "record.id is missing"},
		{name: "InvalidUUID", body: replace(`"id":"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04"`, `"id":"0195947c-6b1e-7c4a"`), reason: "not a valid UUID"},
		{name: "NilUUID", body: replace(`"id":"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04"`, `"id":"00000000-0000-0000-0000-000000000000"`), reason: "nil UUID"},
		{name: "IDNumber", body: replace(`"id":"0195947c-6b1e-7c4a-9d3f-2a8b5e1c7f04"`, `"id":7`), reason: "record.id is a JSON number"},
		{name: "MissingTenant", body: replace(`"tenant_id":"tenant-a",`, ``), reason: "record.tenant_id is missing", eventID: eventID},
		{name: "EmptyTenant", body: replace(`"tenant_id":"tenant-a"`, `"tenant_id":""`), reason: "tenant_id is missing", eventID: eventID},
		{name: "UnknownEcosystem", body: replace(`"ecosystem":"ofb"`, `"ecosystem":"ofx"`), reason: `ecosystem "ofx" is unknown`, eventID: eventID},
		{name: "VersionString", body: replace(`"event_version":1`, `"event_version":"1"`), reason: "record.event_version is a JSON string", eventID: eventID},
		{name: "VersionFraction", body: replace(`"event_version":1`, `"event_version":1.5`), reason: "record.event_version is a JSON number 1.5", eventID: eventID},
		{name: "VersionZero", body: replace(`"event_version":1`, `"event_version":0`), reason: "event_version 0 must be 1 or more", eventID: eventID},
		{name: "MissingVersion", body: replace(`"event_version":1,`, ``), reason: "record.event_version is missing", eventID: eventID},
		{name: "NullEventType", body: replace(`"event_type":"pcm.interaction.recorded"`, `"event_type":null`), reason: "record.event_type is missing", eventID: eventID},
		{name: "MissingAggregate", body: replace(`"aggregate_id":"consent-7781",`, ``), reason: "record.aggregate_id is missing", eventID: eventID},
		{name: "NullPayload", body: replace(`"payload":{"endpoint":"/open-banking/consents/v3/consents","fapi_interaction_id":"5b0f8c1e-2d3a-4f6b-9c8d-7e1a2b3c4d5e","status_code":201}`, `"payload":null`), reason: "record.payload is missing", eventID: eventID},
		{name: "PayloadString", body: replace(`"payload":{"endpoint":"/open-banking/consents/v3/consents","fapi_interaction_id":"5b0f8c1e-2d3a-4f6b-9c8d-7e1a2b3c4d5e","status_code":201}`, `"payload":"{\"a\":1}"`), reason: "must be a JSON object", eventID: eventID},
		{name: "PayloadNUL", body: replace(`"status_code":201}`, `"status_code":201,"note":"a\u0000b"}`), reason: `\u0000`, eventID: eventID},
		{name: "TraceParentNumber", body: replace(`"trace_parent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"`, `"trace_parent":1`), reason: "record.trace_parent is a JSON number", eventID: eventID},
		{name: "MissingCreatedAt", body: replace(`"created_at":"2025-03-14T09:26:53.581204Z",`, ``), reason: "record.created_at is missing", eventID: eventID},
		{name: "BadOccurredAt", body: replace(`"occurred_at":"2025-03-14T09:26:52.100000Z"`, `"occurred_at":"2025-03-14 09:26:52.1+00"`), reason: "record.occurred_at", eventID: eventID},
		{name: "TenantNUL", body: replace(`"tenant_id":"tenant-a"`, `"tenant_id":"tenant\u0000a"`), reason: "NUL byte", eventID: eventID},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			subject := tc.subject
			if subject == "" {
				subject = insertSubject
			}

			msg, err := sequin.Decode(subject, nil, []byte(tc.body))
			require.Nil(t, msg)
			require.ErrorIs(t, err, sequin.ErrMalformed)
			require.ErrorContains(t, err, tc.reason)

			var decodeErr *sequin.DecodeError
			require.True(t, errors.As(err, &decodeErr))
			wantID := uuid.Nil
			if tc.eventID != "" {
				wantID = uuid.MustParse(tc.eventID)
			}
			require.Equal(t, wantID, decodeErr.EventID)
		})
	}
}

func TestDecodeValidationWrapsInvalidEvent(t *testing.T) {
	t.Parallel()

	body := strings.Replace(insertBody, `"ecosystem":"ofb"`, `"ecosystem":"ofx"`, 1)
	_, err := sequin.Decode(insertSubject, nil, []byte(body))
	require.ErrorIs(t, err, sequin.ErrMalformed)
	require.ErrorIs(t, err, outbox.ErrInvalidEvent)
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()

	require.Equal(t, "Mjc1NDczMzY6MA==", sequin.IdempotencyKey(27547336, 0))
	require.Equal(t, base64.StdEncoding.EncodeToString([]byte("9223372036854775807:12345")),
		sequin.IdempotencyKey(9223372036854775807, 12345))
	require.NotEqual(t, sequin.IdempotencyKey(1, 23), sequin.IdempotencyKey(12, 3))
}

func TestSubject(t *testing.T) {
	t.Parallel()

	require.Equal(t, "sequin.appdb.public.outbox.insert", sequin.Subject("appdb", "public", "outbox", "insert"))
}

func BenchmarkDecode(b *testing.B) {
	body := []byte(insertBody)
	header := msgIDHeader("Mjc1NDczMzY6MA==")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sequin.Decode(insertSubject, header, body); err != nil {
			b.Fatal(err)
		}
	}
}
