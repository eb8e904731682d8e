package opin

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
)

func serverInteraction() outbox.Interaction {
	return outbox.Interaction{
		AdditionalInfo:    map[string]any{"consentId": "urn:seguradora:C1DD33123", "personType": "PF"},
		ClientOrgID:       "1fb79963-4bff-4204-9370-93aceb8a2f0d",
		ClientSSID:        "2a59c2a3-529f-41c6-97e3-77395e9951ca",
		CorrelationID:     "577869e5-4c63-4b19-9235-a18d22c80986",
		Endpoint:          "/open-insurance/insurance-rural/v1/insurance-rural/{policyId}/claim",
		FAPIInteractionID: "731d7aa0-09c3-4fa5-b024-905934d794e7",
		HTTPMethod:        "GET",
		ProcessTimespan:   120,
		Role:              outbox.RoleServer,
		ServerASID:        "f8cd7b48-197d-419b-8680-f42226111b6f",
		ServerOrgID:       "ff66b95a-d817-4fbe-949a-c5912e240189",
		StatusCode:        200,
		Timestamp:         time.Date(2022, 11, 7, 14, 26, 32, 987_654_321, time.FixedZone("BRT", -3*3600)),
		URL:               "/open-insurance/insurance-rural/v1/insurance-rural/12345/claim",
	}
}

func TestNewItemServer(t *testing.T) {
	item, err := NewItem(serverInteraction())
	require.NoError(t, err)

	require.Equal(t, RoleServer, item.Role)
	require.Equal(t, "2022-11-07T17:26:32Z", item.Event.Timestamp, "UTC, truncated to the second")
	require.Len(t, item.Event.Timestamp, 20, "the spec's maxLength")
	require.Equal(t, "/open-insurance/insurance-rural/v1/insurance-rural/12345/claim", item.Event.URL)
	require.Equal(t, "f8cd7b48-197d-419b-8680-f42226111b6f", item.Event.ServerASID)
	require.Equal(t, &AdditionalInfo{ConsentID: "urn:seguradora:C1DD33123"}, item.Event.AdditionalInfo,
		"only the keys the spec defines are sent")

	encoded, err := json.Marshal(item)
	require.NoError(t, err)
	require.JSONEq(t, `{"role":"SERVER","event":{
		"additionalInfo":{"consentId":"urn:seguradora:C1DD33123"},
		"clientOrgId":"1fb79963-4bff-4204-9370-93aceb8a2f0d",
		"clientSSId":"2a59c2a3-529f-41c6-97e3-77395e9951ca",
		"correlationId":"577869e5-4c63-4b19-9235-a18d22c80986",
		"endpoint":"/open-insurance/insurance-rural/v1/insurance-rural/{policyId}/claim",
		"fapiInteractionId":"731d7aa0-09c3-4fa5-b024-905934d794e7",
		"httpMethod":"GET","processTimespan":120,
		"serverASId":"f8cd7b48-197d-419b-8680-f42226111b6f",
		"serverOrgId":"ff66b95a-d817-4fbe-949a-c5912e240189",
		"statusCode":200,"timestamp":"2022-11-07T17:26:32Z",
		"url":"/open-insurance/insurance-rural/v1/insurance-rural/12345/claim"}}`, string(encoded))
}

func TestNewItemPhase1WithoutIDs(t *testing.T) {
	in := serverInteraction()
	in.Endpoint = "/open-insurance/channels/v1/branches"
	in.URL = "/open-insurance/channels/v1/branches"
	in.FAPIInteractionID, in.ClientOrgID, in.ClientSSID, in.AdditionalInfo = "", "", "", nil

	item, err := NewItem(in)

	require.NoError(t, err)
	require.Empty(t, item.Event.FAPIInteractionID)
}

func TestNewItemRejects(t *testing.T) {
	tests := []struct {
		name   string
		change func(*outbox.Interaction)
		want   string
	}{
		{"MissingCorrelationID", func(in *outbox.Interaction) { in.CorrelationID = "" }, "missing correlationId"},
		{"MissingURL", func(in *outbox.Interaction) { in.URL = "" }, "missing url"},
		{"MissingServerASID", func(in *outbox.Interaction) { in.ServerASID = "" }, "missing serverASId"},
		{"MissingTimestamp", func(in *outbox.Interaction) { in.Timestamp = time.Time{} }, "missing timestamp"},
		{"InvalidRole", func(in *outbox.Interaction) { in.Role = "PROXY" }, `invalid role "PROXY"`},
		{"MissingFAPIInteractionID", func(in *outbox.Interaction) { in.FAPIInteractionID = "" },
			"missing fapiInteractionId, required outside phase 1"},
		{"MissingClientSSID", func(in *outbox.Interaction) { in.ClientSSID = "" }, "missing clientSSId"},
		{"MissingConsentIDOn2xx", func(in *outbox.Interaction) { in.AdditionalInfo = nil },
			"missing additionalInfo.consentId"},
		{"EndpointNotInSpec", func(in *outbox.Interaction) { in.Endpoint = "/open-banking/accounts/v2/accounts" },
			`Error at "/endpoint"`},
		{"URLPattern", func(in *outbox.Interaction) { in.URL = "open-insurance/x" }, `Error at "/url"`},
		{"InvalidServerASID", func(in *outbox.Interaction) { in.ServerASID = "not-a-uuid" }, `Error at "/serverASId"`},
		{"InvalidConsentID", func(in *outbox.Interaction) { in.AdditionalInfo = map[string]any{"consentId": "C1"} },
			`Error at "/additionalInfo/consentId"`},
		{"ZeroProcessTimespan", func(in *outbox.Interaction) { in.ProcessTimespan = 0 }, `Error at "/processTimespan"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := serverInteraction()
			tt.change(&in)

			_, err := NewItem(in)

			require.ErrorIs(t, err, ErrInvalidEvent)
			require.ErrorIs(t, err, regulator.ErrInvalidItem)
			require.ErrorContains(t, err, tt.want)
			require.NotContains(t, err.Error(), "12345", "errors never quote the real url")
		})
	}
}

func TestNewItemMissingConsentIDOnErrorStatus(t *testing.T) {
	in := serverInteraction()
	in.AdditionalInfo = nil
	in.StatusCode = 404

	_, err := NewItem(in)

	require.NoError(t, err, "consentId is required only for 2xx")
}

func TestCheckEventRulesTimestampForm(t *testing.T) {
	item, err := NewItem(serverInteraction())
	require.NoError(t, err)
	for _, timestamp := range []string{"2022-11-07T17:26:32", "2022-11-07T17:26:32.1Z", "2022-11-07 17:26:32Z"} {
		event := item.Event
		event.Timestamp = timestamp
		require.ErrorContains(t, CheckEventRules(event), "invalid timestamp", timestamp)
	}
}

func TestAdapterCheck(t *testing.T) {
	adapter, err := NewAdapter(AdapterConfig{})
	require.NoError(t, err)
	item, err := adapter.Map(serverInteraction())
	require.NoError(t, err)

	require.NoError(t, adapter.Check(item, time.Now()))
	require.ErrorIs(t, adapter.Check(json.RawMessage(`{"role":"SERVER","event":{}}`), time.Now()), ErrInvalidEvent)
	require.ErrorIs(t, adapter.Check(json.RawMessage(`[1]`), time.Now()), regulator.ErrInvalidItem)
}

func TestAdapterLookupUnsupported(t *testing.T) {
	adapter, err := NewAdapter(AdapterConfig{})
	require.NoError(t, err)

	_, _, err = adapter.Lookup(t.Context(), nil, nil)

	require.True(t, errors.Is(err, regulator.ErrLookupUnsupported))
}

func TestNewAdapterRejectsPlainHTTP(t *testing.T) {
	_, err := NewAdapter(AdapterConfig{BaseURL: "http://127.0.0.1:1"})

	require.ErrorContains(t, err, "want an https URL")
}

func TestSpecEndpoints(t *testing.T) {
	spec, err := EmbeddedSpec()
	require.NoError(t, err)
	require.NoError(t, spec.ValidationErr)

	endpoints := spec.Endpoints()

	require.Len(t, endpoints, 328)
	require.Contains(t, endpoints, "/open-insurance/consents/v3/consents/{consentId}")
}
