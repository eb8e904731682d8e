package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/internal/pgtest"
	"github.com/finnest/eventruntime/outbox"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func validEvent() *outbox.Event {
	return &outbox.Event{
		TenantID:    "tenant-a",
		Ecosystem:   outbox.EcosystemOFB,
		Type:        "claim.approved",
		Version:     1,
		AggregateID: "claim-1",
		Payload:     json.RawMessage(`{"amount": 10}`),
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()

	cases := []struct {
		name   string
		mutate func(*outbox.Event)
		want   string
	}{
		{"MissingTenant", func(e *outbox.Event) { e.TenantID = "" }, "tenant_id is missing"},
		{"MissingType", func(e *outbox.Event) { e.Type = "" }, "event_type is missing"},
		{"MissingAggregate", func(e *outbox.Event) { e.AggregateID = "" }, "aggregate_id is missing"},
		{"UnknownEcosystem", func(e *outbox.Event) { e.Ecosystem = "ofx" }, `ecosystem "ofx" is unknown`},
		{"ZeroVersion", func(e *outbox.Event) { e.Version = 0 }, "event_version 0"},
		{"MissingPayload", func(e *outbox.Event) { e.Payload = nil }, "payload is missing"},
		{"PayloadNotObject", func(e *outbox.Event) { e.Payload = json.RawMessage(`[1]`) }, "must be a JSON object"},
		{"PayloadInvalidJSON", func(e *outbox.Event) { e.Payload = json.RawMessage(`{"a":`) }, "not valid JSON"},
		{"PayloadNulEscape", func(e *outbox.Event) { e.Payload = json.RawMessage(`{"a":"x\u0000y"}`) }, `\u0000`},
		{"PayloadInvalidUTF8", func(e *outbox.Event) { e.Payload = json.RawMessage("{\"a\":\"\xff\"}") }, "not valid UTF-8"},
		{"PayloadLoneHighSurrogate", func(e *outbox.Event) { e.Payload = json.RawMessage(`{"a":"\ud800"}`) }, "unpaired high surrogate"},
		{"PayloadLoneLowSurrogate", func(e *outbox.Event) { e.Payload = json.RawMessage(`{"a":"\udc00x"}`) }, "unpaired low surrogate"},
		{"TenantWithNul", func(e *outbox.Event) { e.TenantID = "a\x00b" }, "NUL byte"},
		{"AggregateInvalidUTF8", func(e *outbox.Event) { e.AggregateID = "\xc3" }, "not valid UTF-8"},
		{"TenantTooLong", func(e *outbox.Event) { e.TenantID = strings.Repeat("t", 257) }, "above the 256-byte limit"},
		{"HugeExponent", func(e *outbox.Event) { e.Payload = json.RawMessage(`{"n":1e200000}`) }, "exponent beyond 1000"},
		{"NumbersExpandPastTheCap", func(e *outbox.Event) {
			e.Payload = json.RawMessage(`{"n":[` + strings.Repeat("1e900,", 400) + `1]}`)
		}, "once PostgreSQL writes its numbers in full"},
		{"PayloadTooLarge", func(e *outbox.Event) {
			e.Payload = json.RawMessage(`{"a":"` + strings.Repeat("x", outbox.DefaultMaxPayloadBytes) + `"}`)
		}, "above the 262144-byte limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			event := validEvent()
			tc.mutate(event)
			err := event.Validate(0)
			require.ErrorIs(t, err, outbox.ErrInvalidEvent)
			require.ErrorContains(t, err, tc.want)
		})
	}

	t.Run("AcceptsPairedSurrogatesAndEscapes", func(t *testing.T) {
		t.Parallel()
		event := validEvent()
		event.Payload = json.RawMessage(`{"emoji":"\ud83d\ude00","quote":"\"\\u0000 is text here","tab":"\t","e":"1e999999","n":2.5E+3}`)
		require.NoError(t, event.Validate(0))
	})
}

func TestAppend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("InsertsAllEventsInTheCallersTransaction", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)

		first, second := validEvent(), validEvent()
		second.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		second.Payload = json.RawMessage(`{"emoji":"\ud83d\ude00"}`)
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			return outbox.Append(ctx, tx, first, second)
		})
		require.NoError(t, err)
		require.NotEqual(t, uuid.Nil, first.ID)
		require.Equal(t, uuid.Version(7), first.ID.Version())
		require.False(t, first.OccurredAt.IsZero())

		var count int
		var traceParent *string
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&count))
		require.Equal(t, 2, count)
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT trace_parent FROM outbox WHERE id = $1", first.ID).Scan(&traceParent))
		require.Nil(t, traceParent)
		var payload string
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT payload->>'emoji' FROM outbox WHERE id = $1", second.ID).Scan(&payload))
		require.Equal(t, "😀", payload)
	})

	t.Run("RejectsTheWholeCallWhenOneEventIsInvalid", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)

		bad := validEvent()
		bad.Payload = json.RawMessage(`{"a":"\u0000"}`)
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "CREATE TABLE business (id int)"); err != nil {
				return err
			}
			return outbox.Append(ctx, tx, validEvent(), bad)
		})
		require.ErrorIs(t, err, outbox.ErrInvalidEvent)
		require.ErrorContains(t, err, "event 2 of 2")

		var count int
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&count))
		require.Zero(t, count)
		var businessExists bool
		require.NoError(t, db.Pool.QueryRow(ctx, "SELECT to_regclass('business') IS NOT NULL").Scan(&businessExists))
		require.False(t, businessExists, "the business change must roll back with the event")
	})

	t.Run("DatabaseErrorIsNotInvalidEvent", func(t *testing.T) {
		t.Parallel()
		db := pgtest.NewDatabase(t)

		event := validEvent()
		event.ID = uuid.Must(uuid.NewV7())
		event.OccurredAt = time.Now()
		err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
			if err := outbox.Append(ctx, tx, event); err != nil {
				return err
			}
			// The same id in the same partition violates the primary key.
			return outbox.Append(ctx, tx, event)
		})
		require.Error(t, err)
		require.False(t, errors.Is(err, outbox.ErrInvalidEvent))
	})
}
